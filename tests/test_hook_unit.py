"""The hook's own promises, over fixture roots: exit 0 always, one line per error, no traceback."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from restart import hook, transaction
from restart.cli import main
from restart.roots import Roots


def test_journal_parsing_keeps_only_complete_well_formed_lines() -> None:
    data = (b"1700000000 apt upgrade libc6:amd64\n"
            b"1700000001 dpkg error rctl-failpost\n"
            b"garbage\n"
            b"1700000002 evil upgrade $(reboot)\n"
            b"1700000003 dpkg upgrade ../../etc/passwd\n"
            b"1700000004 dpkg upgrade half-writ")
    events, used = transaction.parse_journal(data)
    assert events == [("apt", "upgrade", "libc6:amd64"), ("dpkg", "error", "rctl-failpost")]
    assert used == data.rfind(b"\n") + 1


def test_cursor_consumes_each_event_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    (run / "journal").write_bytes(b"1 apt upgrade a:amd64\n2 dpkg remove b\n")
    first = transaction.read(run)
    assert first.packages == {"a:amd64", "b"} and first.removed == {"b"}
    transaction.consume(run, first)
    assert transaction.read(run).packages == frozenset()
    with open(run / "journal", "ab") as f:
        f.write(b"3 dpkg upgrade c\n4 dpkg error c\n")
    second = transaction.read(run)
    assert second.packages == {"c"} and second.failed == {"c"}


def test_world_writable_run_directory_is_not_trusted(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    os.chmod(run, 0o777)
    (run / "journal").write_bytes(b"1 apt upgrade a\n")
    assert transaction.read(run).packages == frozenset()


def test_symlinked_journal_is_not_followed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    (tmp_path / "elsewhere").write_bytes(b"1 apt upgrade a\n")
    (run / "journal").symlink_to(tmp_path / "elsewhere")
    assert transaction.read(run).packages == frozenset()


def test_errors_are_one_line_and_the_hook_still_exits_zero(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    (run / "restartctl").mkdir(parents=True, mode=0o755)
    (run / "restartctl" / "journal").write_bytes(b"1 dpkg upgrade libc6\n")
    code = main(["hook", "--trigger", "dpkg", "--run", str(run), "--state", str(tmp_path / "state"),
                 "--data", str(tmp_path / "no-such-data")])
    out, err = capsys.readouterr()
    assert code == 0
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("restartctl: error: ")
    assert "Traceback" not in err


def test_budget_is_enforced(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    def forever(*args: object) -> None:
        while True:
            pass
    monkeypatch.setattr(hook, "_run", forever)
    assert hook.run(Roots(run=tmp_path), "manual", budget=0.2) == 0
    assert "gave up after" in capsys.readouterr().err


def test_shutdown_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "systemd" / "system").mkdir(parents=True)
    monkeypatch.setattr(hook, "system_state", lambda: "stopping")
    assert hook.shutting_down(Roots(run=tmp_path))
    monkeypatch.setattr(hook, "system_state", lambda: "running")
    assert not hook.shutting_down(Roots(run=tmp_path))
    assert not hook.shutting_down(Roots(run=tmp_path / "no-systemd"))


def test_unattended_upgrades_is_found_among_the_ancestors(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    chain = {300: (200, b"sh\0-c\0restartctl hook\0"),
             200: (100, b"/usr/bin/python3\0/usr/bin/unattended-upgrade\0-v\0"),
             100: (1, b"/usr/bin/python3\0/usr/bin/unattended-upgrade\0")}
    for pid, (ppid, cmdline) in chain.items():
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(cmdline)
        (proc / str(pid) / "stat").write_bytes(
            f"{pid} (a) b) S {ppid} 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 {pid * 10} 0\n".encode())
    # u-u may fork for a step: the outermost unattended-upgrade is the run to wait for.
    assert hook.unattended_upgrades_ancestor(proc, tmp_path, 300) == hook.Process(100, 1000)
    (proc / "200" / "cmdline").write_bytes(b"/home/eve/unattended-upgrade\0")
    (proc / "100" / "cmdline").write_bytes(b"python3\0/tmp/usr/bin/unattended-upgrade\0")
    assert hook.unattended_upgrades_ancestor(proc, tmp_path, 300) is None
    (tmp_path / "unattended-upgrades.pid").write_text("100\n")
    assert hook.unattended_upgrades_ancestor(proc, tmp_path, 300) == hook.Process(100, 1000)


def test_a_scan_cut_short_keeps_the_whole_transaction_pending(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The hook's scan gets half the time left; what it could not look at is said and stays pending."""
    from restart import state
    from tests.test_cli import Host

    host = Host(tmp_path, systemd=True)
    host.add(10)
    argv = host.argv("scan")
    roots = Roots(proc=Path(argv[argv.index("--proc") + 1]), root=host.root, admindir=tmp_path / "admin",
                  run=tmp_path / "run", etc=host.root / "etc", state=tmp_path / "state")
    log = hook.Log(sys.stdout, sys.stderr, quiet=False)
    hook.act(roots, "apt", log, scope=["demod", "libdemo1"], old_files=None, failed=[], mode="list",
             deadline=time.monotonic() - 1)
    err = capsys.readouterr().err
    assert "1 process was not scanned before the time ran out" in err
    record = state.read_json(roots.state, state.PENDING)
    assert record is not None and sorted(record["packages"]) == ["demod", "libdemo1"]


def test_package_names_are_read_tolerantly_and_strictly() -> None:
    assert transaction.package_name("libc6") == "libc6"
    assert transaction.package_name("libc6:amd64") == "libc6:amd64"
    assert transaction.package_name("libc6:amd64:amd64") == "libc6:amd64"  # an older pre-install hook's line
    for bad in ("libc6:amd64:i386", "libc6:a:b:c", "Libc6", "../x", "a b", ""):
        assert transaction.package_name(bad) is None, bad
    events, _ = transaction.parse_journal(b"1 apt upgrade rctl-libdemo1:amd64:amd64\n")
    assert events == [("apt", "upgrade", "rctl-libdemo1:amd64")]
