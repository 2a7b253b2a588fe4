"""The hook's own promises, over fixture roots: exit 0 always, one line per error, no traceback."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from restart import apply, hook, runs, transaction
from restart.cli import main
from restart.roots import Roots
from tests.support.fixturehost import Host


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
    first = transaction.read(run, None)
    assert first.packages == {"a:amd64", "b"} and first.removed == {"b"}
    assert first.journal == ((run / "journal").stat().st_ino, 38) and first.incomplete == ()
    assert transaction.read(run, first.journal).packages == frozenset()
    with open(run / "journal", "ab") as f:
        f.write(b"3 dpkg upgrade c\n4 dpkg error c\n5 dpkg upgrade d")  # d: still being appended
    second = transaction.read(run, first.journal)
    assert second.packages == {"c"} and second.failed == {"c"}
    assert second.journal[1] == 38 + 32
    (run / "journal").unlink()
    (run / "journal").write_bytes(b"6 dpkg upgrade e\n")  # recreated: another inode, read from the start
    assert transaction.read(run, second.journal).packages == {"e"}
    (run / "cursor").write_text("17\n")  # an earlier version's cursor, when the state has none
    assert transaction.read(run, None).packages == frozenset()


def test_a_journal_that_lost_events_or_grew_too_large_says_so(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    # A failed append (a full disk) left half a line, which the next append completed into junk.
    (run / "journal").write_bytes(b"1 apt upgrade a\n2 dpkg upgr3 dpkg upgrade b\n4 dpkg upgrade c\n")
    txn = transaction.read(run, None)
    assert txn.packages == {"a", "c"} and txn.invalid == 1
    assert txn.incomplete == ("1 journal line was no valid event",)
    monkeypatch.setattr(transaction, "MAX_PACKAGES", 1)
    txn = transaction.read(run, None)
    assert txn.packages == frozenset() and txn.journal[1] == (run / "journal").stat().st_size
    assert txn.incomplete[0] == "the journal names more than 1 packages"
    monkeypatch.setattr(transaction, "MAX_PACKAGES", 4096)
    monkeypatch.setattr(transaction, "MAX_READ", 20)
    txn = transaction.read(run, None)
    assert txn.incomplete[0] == "the journal grew by more than 0 MiB"
    assert txn.journal[1] == (run / "journal").stat().st_size


def test_markers_are_claimed_then_released(tmp_path: Path) -> None:
    run, lib = tmp_path / "run", tmp_path / "lib"
    for d in (run, lib):
        d.mkdir(mode=0o755)
    (lib / "incomplete").touch()
    assert transaction.claim_markers([run, lib]) == [lib / "incomplete"]
    (lib / "incomplete").touch()  # the hooks lose another event meanwhile: kept for the next run
    transaction.release_markers([run, lib])
    assert transaction.claim_markers([run, lib]) == [lib / "incomplete"]
    assert transaction.claim_markers([run, lib]) == [lib / "incomplete"]  # claimed, not yet released
    transaction.release_markers([run, lib])
    assert transaction.claim_markers([run, lib]) == []


def test_world_writable_run_directory_is_not_trusted(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    os.chmod(run, 0o777)
    (run / "journal").write_bytes(b"1 apt upgrade a\n")
    assert transaction.read(run, None).packages == frozenset()


def test_symlinked_journal_is_not_followed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    (tmp_path / "elsewhere").write_bytes(b"1 apt upgrade a\n")
    (run / "journal").symlink_to(tmp_path / "elsewhere")
    assert transaction.read(run, None).packages == frozenset()


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
    """Only a proven run counts: the script's own interpreter, the script as first argument, uid 0,
    not from another user's session or manager (issue 20 point 3)."""
    proc, root = tmp_path / "proc", tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/python3.11").write_bytes(b"ELF")
    (root / "usr/bin/python3").symlink_to("python3.11")
    (root / "usr/bin/unattended-upgrade").write_bytes(b"#!/usr/bin/python3\nimport apt\n")
    os.chmod(root / "usr/bin/unattended-upgrade", 0o755)
    (root / "home").mkdir()
    (root / "home/eve-python3").write_bytes(b"ELF")
    uu = b"/usr/bin/python3\0/usr/bin/unattended-upgrade\0"
    chain = {300: (200, b"sh\0-c\0restartctl hook\0", 0, "/usr/bin/python3", "/system.slice/x.service"),
             200: (100, uu + b"-v\0", 0, "/usr/bin/python3.11", "/system.slice/apt-daily-upgrade.service"),
             100: (1, uu, 0, "/usr/bin/python3", "/system.slice/apt-daily-upgrade.service")}

    def make(pid: int, ppid: int, cmdline: bytes, uid: int, exe: str, cgroup: str) -> None:
        d = proc / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        (d / "cmdline").write_bytes(cmdline)
        (d / "stat").write_bytes(f"{pid} (a) b) S {ppid} 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 {pid * 10} 0\n".encode())
        (d / "status").write_bytes(f"Name:\ta\nPPid:\t{ppid}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n".encode())
        (d / "cgroup").write_text(f"0::{cgroup}\n")
        (d / "exe").unlink(missing_ok=True)
        (d / "exe").symlink_to(root / exe.lstrip("/"))

    for pid, fields in chain.items():
        make(pid, *fields)
    # u-u may fork for a step: the outermost unattended-upgrade is the run to wait for.
    assert hook.unattended_upgrades_ancestor(proc, tmp_path, 300, root) == runs.Process(100, 1000)
    (tmp_path / "unattended-upgrades.pid").write_text("200\n")
    assert hook.unattended_upgrades_ancestor(proc, tmp_path, 300, root) == runs.Process(200, 2000)
    (tmp_path / "unattended-upgrades.pid").unlink()
    # Look-alikes: her uid; her copy of python; argv[0] only; from her session; from her manager.
    for fake in [(1, uu, 1001, "/usr/bin/python3", "/system.slice/apt-daily-upgrade.service"),
                 (1, uu, 0, "/home/eve-python3", "/system.slice/apt-daily-upgrade.service"),
                 (1, b"/usr/bin/unattended-upgrade\0", 0, "/usr/bin/python3", "/init.scope"),
                 (1, uu, 0, "/usr/bin/python3", "/user.slice/user-1001.slice/session-3.scope"),
                 (1, uu, 0, "/usr/bin/python3", "/user.slice/user-1001.slice/user@1001.service/app.slice/u.service")]:
        make(200, *fake)
        assert hook.unattended_upgrades_ancestor(proc, tmp_path, 300, root) is None, fake
    make(200, 1, uu, 0, "/usr/bin/python3", "/user.slice/user-0.slice/session-1.scope")  # root's own session
    assert hook.unattended_upgrades_ancestor(proc, tmp_path, 300, root) == runs.Process(200, 2000)
    (root / "usr/bin/unattended-upgrade").unlink()  # not installed: nothing is a run of it
    assert hook.unattended_upgrades_ancestor(proc, tmp_path, 300, root) is None


def test_a_scan_cut_short_makes_the_next_run_look_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The hook's scan gets half the time left; what it could not look at is said, and recorded as
    incomplete (not as an unbounded package list): the next run looks at every package changed since."""
    from restart import state

    host = Host(tmp_path, systemd=True)
    host.add(10)
    roots = host.roots()
    log = apply.Log(sys.stdout, sys.stderr, quiet=False)
    apply.act(roots, "apt", log, scope=["demod", "libdemo1"], old_files=None, failed=[], mode="list",
              deadline=time.monotonic() - 1, progress=apply.Progress((1, 10), 1000.0))
    err = capsys.readouterr().err
    assert "1 process was not scanned before the time ran out" in err
    record = state.read_json(roots.state, state.PENDING)
    assert record is not None and record["packages"] == [] and record["journal"] == {"inode": 1, "offset": 10}
    assert "complete" not in record and record["incomplete"][0].startswith("1 process was not scanned")


def test_the_watchdog_is_never_swallowed_by_a_scan(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: the scan counts an odd process's error and goes on; the watchdog must not be such an error.

    A 0.3 s budget over 60 processes that take 0.05 s each: the run ends at the budget, not after 3 s."""
    from restart import processes
    from tests.fakeproc import FakeProcess, build

    proc = build(tmp_path / "proc", [FakeProcess(pid, maps=b"x\n") for pid in range(10, 70)])

    def slow(*args: object) -> tuple[None, None]:
        time.sleep(0.05)
        return None, None
    monkeypatch.setattr(processes._Scanner, "scan_process", slow)
    monkeypatch.setattr(hook, "_run", lambda *args: processes.scan(proc, processes.Selection()))
    started = time.monotonic()
    assert hook.run(Roots(run=tmp_path), "manual", budget=0.3) == 0
    assert time.monotonic() - started < 1.0
    assert "gave up after 0.3 s" in capsys.readouterr().err


def test_package_names_are_read_tolerantly_and_strictly() -> None:
    assert transaction.package_name("libc6") == "libc6"
    assert transaction.package_name("libc6:amd64") == "libc6:amd64"
    assert transaction.package_name("libc6:amd64:amd64") == "libc6:amd64"  # an older pre-install hook's line
    for bad in ("libc6:amd64:i386", "libc6:a:b:c", "Libc6", "../x", "a b", ""):
        assert transaction.package_name(bad) is None, bad
    events, _ = transaction.parse_journal(b"1 apt upgrade rctl-libdemo1:amd64:amd64\n")
    assert events == [("apt", "upgrade", "rctl-libdemo1:amd64")]


HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.pwrite(fd, f"{os.getpid()} hook --trigger apt\\n".encode(), 0)
print("held", flush=True)
sys.stdin.read()  # holds the lock until the test closes our stdin (or kills us)
"""


@pytest.fixture
def lock_holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """Another run, a real process, that holds /run/restartctl/lock until its stdin is closed."""
    rundir = tmp_path / "run" / "restartctl"
    rundir.mkdir(parents=True, mode=0o755)
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(rundir / runs.LOCK)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "held\n"
        yield p, rundir / runs.LOCK
    finally:
        p.kill()
        p.wait(timeout=10)


def reports_under_the_lock(monkeypatch: pytest.MonkeyPatch, lock: Path) -> list[bool]:
    """Replaces the run's work: records, each time it runs, whether the lock was really held then."""
    calls: list[bool] = []

    def report(*args: object) -> None:
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            calls.append(False)  # nobody held it
        except BlockingIOError:
            calls.append(True)
        finally:
            os.close(fd)
    monkeypatch.setattr(hook, "_report", report)
    monkeypatch.setattr(hook, "unattended_upgrades_ancestor", lambda *args: None)
    monkeypatch.setattr(hook, "shutting_down", lambda roots: False)
    return calls


def test_a_second_hook_waits_half_its_budget_then_leaves_the_transaction_pending(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        lock_holder: tuple[subprocess.Popen[str], Path]) -> None:
    """Why: two runs acting at once would restart units twice and race on the state; the second one
    waits for the lock (README: up to half its budget), then says who holds it and does nothing."""
    holder, lock = lock_holder
    calls = reports_under_the_lock(monkeypatch, lock)
    started = time.monotonic()
    assert hook.run(Roots(run=tmp_path / "run"), "apt", budget=2.0) == 0
    waited = time.monotonic() - started
    err = capsys.readouterr().err
    assert calls == []
    assert 1.0 <= waited < 2.0, waited
    assert f"another restartctl run (pid {holder.pid} (hook --trigger apt)) holds {lock}" in err
    assert "stays pending" in err


def test_a_second_hook_runs_once_the_first_lets_go_and_holds_the_lock_while_it_works(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        lock_holder: tuple[subprocess.Popen[str], Path]) -> None:
    holder, lock = lock_holder
    calls = reports_under_the_lock(monkeypatch, lock)
    assert holder.stdin is not None
    release = threading.Timer(0.5, holder.stdin.close)
    release.start()
    started = time.monotonic()
    try:
        assert hook.run(Roots(run=tmp_path / "run"), "apt", budget=10.0) == 0
    finally:
        release.join()
    assert calls == [True]  # it ran, once, and with the lock held: a third run would have waited
    assert 0.4 <= time.monotonic() - started < 5.0
    assert "holds" not in capsys.readouterr().err


def test_the_journal_time_is_dates_or_a_second_earlier_without_a_fork() -> None:
    """Why: ``dpkg-hook`` wrote ``$(date +%s)`` for every event, a fork per package on apt's time;
    it now adds /proc/uptime to the kernel's btime.  That time must never be later than date's
    (a module package's install recorded late would hide it from a process started just before),
    and without /proc (a chroot) it is date's."""
    script = (Path(__file__).resolve().parent.parent / "hook" / "dpkg-hook").read_text(encoding="utf-8")
    functions = script[script.index("BTIME=\n"):script.index("own_dir() {")]
    env = {"PATH": "/usr/bin:/bin"}
    for _ in range(20):
        out = subprocess.run(["/bin/sh", "-c", functions + 'a=$(date +%s); now; b=$(date +%s); echo "$a $NOW $b"'],
                             capture_output=True, text=True, check=True, env=env).stdout.split()
        before, now, after = map(int, out)
        assert before - 1 <= now <= after
    out = subprocess.run(["/bin/sh", "-c", functions + 'BTIME=-; now; echo "$NOW $(date +%s)"'],
                         capture_output=True, text=True, check=True, env=env).stdout.split()
    assert int(out[1]) - 1 <= int(out[0]) <= int(out[1])


def test_whether_the_system_is_shutting_down_is_asked_only_when_a_restart_is_due(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Why (issue 15): ``systemctl is-system-running`` is a program start in every hook run; a run with
    nothing to restart never asks it, and a system that is shutting down restarts nothing (only lists)."""
    from restart import state

    host = Host(tmp_path, systemd=True)
    host.add(10, cgroup="0::/system.slice/demod.service\n", name="demod")
    roots = host.roots()
    asked: list[int] = []

    def stopping() -> bool:
        asked.append(1)
        return True

    def no_restarts(*args: object, **kwargs: object) -> str:
        raise AssertionError("a restart was attempted while the system shuts down")
    monkeypatch.setattr(apply, "_carry_out", no_restarts)
    log = apply.Log(sys.stdout, sys.stderr, quiet=False)
    apply.act(roots, "apt", log, scope=["demod"], old_files=None, failed=[], mode="auto",
              deadline=time.monotonic() + 60, shutting_down=stopping)
    assert asked == []  # demod's own files are not stale: nothing to restart, nothing asked
    apply.act(roots, "apt", log, scope=["libdemo1"], old_files=None, failed=[], mode="auto",
              deadline=time.monotonic() + 60, shutting_down=stopping)
    assert asked == [1]
    assert "the system is shutting down: restarting nothing" in capsys.readouterr().out
    record = state.read_json(roots.state, state.PENDING)
    assert record is not None and [(u["unit"], u["status"]) for u in record["units"]] == [("demod.service", "listed")]


def test_a_hook_run_with_nothing_to_restart_starts_no_program_and_imports_no_executor(tmp_path: Path) -> None:
    """Why (issue 15): in a hook run with nothing stale, the executor, its systemctl and notification code,
    ``subprocess`` and the policy's second reading were a fifth of the run's own time (and the reader of
    unowned scripts' imports and ``shlex``, for commands to show, ~1 ms more)."""
    host = Host(tmp_path, systemd=True)
    host.add(10, cgroup="0::/system.slice/demod.service\n", name="demod")
    run = tmp_path / "run" / "restartctl"
    run.mkdir(mode=0o755)
    (run / "journal").write_text("1700000000 apt upgrade demod:amd64\n")
    code = ("import sys; from restart import cli, policy; read = []; load = policy.load; "
            "policy.load = lambda *a: read.append(1) or load(*a); cli.main(sys.argv[1:]); "
            "print(len(read), sorted(m for m in sys.modules if m in ('restart.execute', 'restart.unitstate', "
            "'restart.runner', 'subprocess', 'restart.imports', 'shlex')))")
    out = subprocess.run(["/usr/bin/python3", "-c", code, *host.argv("hook", "--trigger", "apt"),
                          "--state", str(tmp_path / "state")],
                         capture_output=True, text=True, env={"PYTHONPATH": str(Path(__file__).parent.parent)},
                         cwd="/", check=False)
    assert out.stdout.splitlines()[-1] == "1 []", out.stdout + out.stderr
    assert (tmp_path / "state" / "pending.json").exists()  # the run went all the way


def test_a_hook_run_whose_policy_did_not_change_needs_no_toml_parser(tmp_path: Path) -> None:
    """Why (issue 15): importing ``tomllib`` and parsing the policy were ~15 ms of every hook run.  The
    hook keeps the parsed documents by their exact text (root only); a changed policy is parsed anew."""
    host = Host(tmp_path, systemd=True)
    host.add(10, cgroup="0::/system.slice/demod.service\n", name="demod")
    run, etc = tmp_path / "run" / "restartctl", host.root / "etc" / "restartctl"
    run.mkdir(mode=0o755)
    etc.mkdir(parents=True)
    (etc / "policy.toml").write_text("[settings]\nquiet = false\n")
    code = ("import sys; from restart import cli; cli.main(sys.argv[1:]); "
            "print('tomllib' in sys.modules)")

    def hook_run() -> str:
        out = subprocess.run(["/usr/bin/python3", "-c", code, *host.argv("hook", "--trigger", "apt"),
                              "--state", str(tmp_path / "state")], capture_output=True, text=True,
                             env={"PYTHONPATH": str(Path(__file__).parent.parent)}, cwd="/", check=False)
        return out.stdout
    (run / "journal").write_text("1700000000 apt upgrade demod:amd64\n")
    assert hook_run().splitlines()[-1] == "True"  # the first run parses (and makes the state directory)
    (run / "journal").write_text("1700000000 apt upgrade demod:amd64\n")
    assert hook_run().splitlines()[-1] == "True"  # the next one parses, and keeps what it parsed
    cache = tmp_path / "state" / "policy-cache.json"
    assert (cache.stat().st_uid, cache.stat().st_mode & 0o777) == (os.geteuid(), 0o600)
    (run / "journal").write_text("1700000001 apt upgrade demod:amd64\n")
    assert hook_run().splitlines()[-1] == "False"
    # A changed policy is parsed (and obeyed): quiet hides the listing of what is pending.
    (etc / "policy.toml").write_text("[settings]\nquiet = true\n")
    (run / "journal").write_text("1700000002 apt upgrade libdemo1:amd64\n")
    out = hook_run()
    assert out.splitlines()[-1] == "True" and "demod" not in out, out
    (etc / "policy.toml").write_text("[settings]\nquiet = false\n")
    (run / "journal").write_text("1700000003 apt upgrade libdemo1:amd64\n")
    assert "demod" in hook_run()


def test_an_apply_run_whose_policy_did_not_change_needs_no_toml_parser(tmp_path: Path) -> None:
    """Why (issue 14): importing ``tomllib`` and parsing the policy were 6-10 ms of every ``apply``
    before its first restart.  It reads the policy through the hook's cache (root's); a changed policy is
    parsed anew and obeyed."""
    host = Host(tmp_path, systemd=True)
    host.add(10, cgroup="0::/system.slice/demod.service\n", name="demod")
    etc = host.root / "etc" / "restartctl"
    etc.mkdir(parents=True)
    (etc / "policy.toml").write_text("[[rule]]\nunit = \"demod.service\"\naction = \"restart\"\n")
    code = ("import sys; from restart import cli; print('exit', cli.main(sys.argv[1:])); "
            "print('tomllib' in sys.modules)")

    def apply_run() -> list[str]:
        out = subprocess.run(["/usr/bin/python3", "-c", code, *host.argv("apply", "--dry-run"),
                              "--state", str(tmp_path / "state")], capture_output=True, text=True,
                             env={"PYTHONPATH": str(Path(__file__).parent.parent)}, cwd="/", check=False)
        return out.stdout.splitlines()
    first = apply_run()
    assert first[-1] == "True" and "demod.service" in "\n".join(first), first  # parsed
    assert apply_run() == first  # (the state directory made by the first run) parsed, and kept
    again = apply_run()
    assert again[-1] == "False" and again[:-1] == first[:-1], again  # the same run, no parser
    (etc / "policy.toml").write_text("[[rule]]\nunit = \"demod.service\"\naction = \"ignore\"\n")
    changed = apply_run()
    assert changed[-1] == "True" and changed[:-1] != first[:-1], changed  # parsed anew and obeyed


def test_the_policy_cache_stands_only_for_the_same_text_is_trusted_as_a_policy_file_and_checked_in_full(
        tmp_path: Path) -> None:
    """Why (issue 15): the cache replaces ``tomllib.loads`` only: whatever it holds is checked as the
    file's own document, for exactly the text read now, and only if nobody but root could have written it."""
    import json

    from restart import policy

    data, state = tmp_path / "data", tmp_path / "state"
    data.mkdir()
    state.mkdir(mode=0o755)
    text = "[settings]\nhook_budget = 120\n"
    (data / "policy.toml").write_text(text)
    cache = state / policy.CACHE

    def plant(docs: dict[str, object], mode: int = 0o600) -> None:
        cache.unlink(missing_ok=True)
        cache.write_text(json.dumps({"key": policy._CACHE_KEY, "docs": docs}))
        os.chmod(cache, mode)
    plant({text: {"settings": {"hook_budget": 7}}})
    assert policy.vendor(data).settings.hook_budget == 120  # no cache asked for: the file itself
    assert policy.for_host(tmp_path / "etc", data, cache).settings.hook_budget == 7  # what stands for tomllib
    plant({text: {"settings": {"hook_budget": 7}}}, mode=0o666)  # anyone could have written it: ignored
    assert policy.for_host(tmp_path / "etc", data, cache).settings.hook_budget == 120
    assert json.loads(cache.read_text())["docs"][text] == {"settings": {"hook_budget": 120}}  # and replaced
    assert cache.stat().st_mode & 0o777 == 0o600
    plant({text + " ": {"settings": {"hook_budget": 7}}})  # another text's document
    assert policy.for_host(tmp_path / "etc", data, cache).settings.hook_budget == 120
    plant({text: {"settings": {"hook_budget": "soon"}}, "x": 1})  # checked in full, as the file's own
    with pytest.raises(policy.PolicyError, match="hook_budget"):
        policy.for_host(tmp_path / "etc", data, cache)


def test_apt_pre_takes_assume_yes_from_the_configuration_and_records_every_package(tmp_path: Path) -> None:
    """Why (issue 15): apt's configuration dump (hundreds of lines) is now taken apart by one sed, not read
    line by line by sh (a byte per read() on a pipe: ~10 ms of every apt run).  Only -y counts, in
    any of apt's spellings; the packages after the empty line are all recorded, none taken for -y."""
    script = (Path(__file__).resolve().parent.parent / "hook" / "dpkg-hook").read_text(encoding="utf-8")
    functions = script[script.index("BTIME=\n"):script.index("case ${1:-} in")]
    run, admin = tmp_path / "run", tmp_path / "admin"
    (admin / "info").mkdir(parents=True)
    (admin / "info" / "liba1:amd64.list").write_text("/usr/lib/liba.so.1\n")
    run.mkdir(mode=0o755)
    os.chmod(tmp_path, 0o755)
    config = "".join(f"Dir::Item{i}=/var/lib/apt/{'x' * 40}\n" for i in range(300))
    packages = ("liba1 1.0 amd64 same < 1.1 amd64 same /var/cache/apt/archives/liba1.deb\n"
                "newpkg - - none < 2.0 all none /var/cache/apt/archives/newpkg.deb\n"
                "liba1 1.1 amd64 same < 1.1 amd64 same **CONFIGURE**\n")
    for value, assumed in (("true", True), ("1", True), ("Yes", True), ("false", False), ("truer", False)):
        (run / "journal").unlink(missing_ok=True)
        stdin = f"VERSION 3\n{config}APT::Get::Assume-Yes={value}\n\n{packages}"
        setup = f"RUNDIR={run}; ADMINDIR={admin}; STATEDIR={tmp_path}/state; "
        subprocess.run(["/bin/sh", "-c", f"{functions}{setup}apt_pre"], input=stdin, text=True, check=True,
                       env={"PATH": "/usr/bin:/bin"})
        assert (run / "assume-yes").exists() == assumed, value
        assert [line.split()[1:] for line in (run / "journal").read_text().splitlines()] == [
            ["apt", "upgrade", "liba1:amd64"], ["apt", "install", "newpkg:all"]]
        assert (run / "lists" / "liba1:amd64.list").read_text() == "/usr/lib/liba.so.1\n"
        assert not (run / "incomplete").exists()


def _apt_pre(tmp_path: Path, stdin: str, path: str = "/usr/bin:/bin") -> None:
    """``dpkg-hook apt-pre`` over ``tmp_path``'s run, admin and state directories (its functions, with
    the paths set: the script's own are fixed)."""
    script = (Path(__file__).resolve().parent.parent / "hook" / "dpkg-hook").read_text(encoding="utf-8")
    functions = script[script.index("BTIME=\n"):script.index("case ${1:-} in")]
    setup = f"RUNDIR={tmp_path}/run; ADMINDIR={tmp_path}/admin; STATEDIR={tmp_path}/state; "
    subprocess.run(["/bin/sh", "-c", f"{functions}{setup}apt_pre"], input=stdin, text=True, check=True,
                   env={"PATH": path})


def _counting(tmp_path: Path, programs: tuple[str, ...]) -> Path:
    """A directory of wrappers that log each start of ``programs`` to ``tmp_path/started``, then run them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in programs:
        real = next(p for p in (Path("/usr/bin") / name, Path("/bin") / name) if p.exists())
        (bin_dir / name).write_text(f'#!/bin/sh\necho {name} >> {tmp_path}/started\nexec {real} "$@"\n')
        (bin_dir / name).chmod(0o755)
    return bin_dir


def test_apt_pre_keeps_every_old_list_and_checksums_with_one_cp_and_one_mv(tmp_path: Path) -> None:
    """Why (issue 15): the hook kept each package's old list and checksums with its own cp and mv (five
    programs started per package, two finds besides: ~12 ms of apt's time for a one-package run, seconds
    for a large upgrade).  Now one find checks the directories, one cp copies everything into
    staging/, and one mv renames the copies into lists/ (it was two, one for the lists, one for the
    checksums: ~1.5 ms more), the previous transaction's checksums set aside by mv itself
    (NAME.md5sums.old.*, mtime kept), whatever the number of packages.  The lists it sets aside too
    (NAME.list.old.*) answer nothing: the run after removes them."""
    os.chmod(tmp_path, 0o755)
    info = tmp_path / "admin" / "info"
    info.mkdir(parents=True)
    (tmp_path / "run").mkdir(mode=0o755)
    for name in ("liba1:amd64", "libb1", "libc1:amd64"):
        (info / f"{name}.list").write_text(f"/usr/lib/{name}.so\n")
    (info / "liba1:amd64.md5sums").write_text("aaaa  usr/lib/liba1.so\n")
    os.utime(info / "liba1:amd64.md5sums", (1_600_000_000, 1_600_000_000))  # when dpkg unpacked that version
    (info / "libc1:amd64.md5sums").write_text("cccc  usr/lib/libc1.so\n")
    packages = ("liba1 1.0 amd64 same < 1.1 amd64 same /var/cache/apt/archives/liba1.deb\n"
                "libb1 1.0 amd64 none < 1.1 amd64 none /var/cache/apt/archives/libb1.deb\n"
                "libc1 1.0 amd64 same - - - - **REMOVE**\n"
                "../../../etc/x 1.0 amd64 none < 2.0 amd64 none /var/cache/apt/archives/x.deb\n"
                "newpkg - - none < 2.0 all none /var/cache/apt/archives/newpkg.deb\n")
    stdin = f"VERSION 3\nAPT::Get::Assume-Yes=true\n\n{packages}"
    bin_dir = _counting(tmp_path, ("find", "sed", "cp", "mv", "rm", "mkdir"))
    _apt_pre(tmp_path, stdin)  # the first run of a boot makes the directories
    started = tmp_path / "started"
    lists = tmp_path / "run" / "lists"
    (info / "liba1:amd64.md5sums").write_text("aaab  usr/lib/liba1.so\n")  # the next version, unpacked since
    os.utime(info / "liba1:amd64.md5sums", (1_700_000_000, 1_700_000_000))
    _apt_pre(tmp_path, stdin, path=f"{bin_dir}:/usr/bin:/bin")
    assert sorted(started.read_text().split()) == ["cp", "find", "mv", "sed"]
    assert sorted(p.name for p in lists.iterdir() if ".old." not in p.name) == [
        "liba1:amd64.list", "liba1:amd64.md5sums", "libb1.list", "libb1.md5sums", "libc1:amd64.list",
        "libc1:amd64.md5sums"]
    for name in ("liba1:amd64", "libb1", "libc1:amd64"):
        assert (lists / f"{name}.list").read_text() == f"/usr/lib/{name}.so\n"
    assert (lists / "liba1:amd64.md5sums").read_text() == "aaab  usr/lib/liba1.so\n"
    assert (lists / "liba1:amd64.md5sums").stat().st_mtime == 1_700_000_000
    assert (lists / "libb1.md5sums").read_text() == ""  # none: unknown
    [old] = lists.glob("liba1:amd64.md5sums.old.*")  # the first transaction's, set aside as it was
    assert old.read_text() == "aaaa  usr/lib/liba1.so\n" and old.stat().st_mtime == 1_600_000_000
    assert list((tmp_path / "run" / "staging").iterdir()) == []
    assert len(list(lists.glob("*.md5sums.old.*"))) == 3 and len(list(lists.glob("*.list.old.*"))) == 3
    # The run after reads the lists kept for this transaction and removes those set aside, its packages' only.
    (lists / "other.list.old.1700000000.99").write_text("/usr/lib/other.so\n")
    names = ("liba1:amd64", "libb1", "libc1:amd64")
    assert transaction.old_files(tmp_path / "run", frozenset(names), frozenset()) == {
        f"/usr/lib/{n}.so": n for n in names}
    assert sorted(p.name for p in lists.glob("*.list.old.*")) == ["other.list.old.1700000000.99"]
    assert len(list(lists.glob("*.md5sums.old.*"))) == 3
    assert not (tmp_path / "etc").exists() and not (tmp_path / "run" / "incomplete").exists()
    assert (tmp_path / "run" / "assume-yes").exists()
    # Without -y the marker goes; nothing else is started for it when there is none.
    _apt_pre(tmp_path, f"VERSION 3\n\n{packages}")
    assert not (tmp_path / "run" / "assume-yes").exists()
    started.unlink()
    _apt_pre(tmp_path, f"VERSION 3\n\n{packages}", path=f"{bin_dir}:/usr/bin:/bin")
    assert sorted(started.read_text().split()) == ["cp", "find", "mv", "sed"]


def test_apt_pre_falls_back_to_one_package_at_a_time_when_the_copy_fails(tmp_path: Path) -> None:
    """When the one cp fails (no space, a name it cannot write), each package is kept on its own as
    before: what can be kept is, what cannot is marked lost, and no partial copy is left in staging/."""
    os.chmod(tmp_path, 0o755)
    info = tmp_path / "admin" / "info"
    info.mkdir(parents=True)
    (tmp_path / "run").mkdir(mode=0o755)
    (info / "liba1.list").write_text("/usr/lib/liba1.so\n")
    (info / "liba1.md5sums").write_text("aaaa  usr/lib/liba1.so\n")
    (info / "libb1.list").write_text("/usr/lib/libb1.so\n")
    stdin = ("VERSION 3\n\nliba1 1.0 amd64 none < 1.1 amd64 none /a.deb\n"
             "libb1 1.0 amd64 none < 1.1 amd64 none /b.deb\n")
    _apt_pre(tmp_path, stdin)
    (tmp_path / "run" / "staging" / "liba1.list").mkdir()  # cp cannot put a file there
    (info / "libb1.list").write_text("/usr/lib/libb1.so.2\n")
    _apt_pre(tmp_path, stdin)
    lists = tmp_path / "run" / "lists"
    assert (lists / "liba1.list").read_text() == "/usr/lib/liba1.so\n"
    assert (lists / "libb1.list").read_text() == "/usr/lib/libb1.so.2\n"
    assert (lists / "liba1.md5sums").read_text() == "aaaa  usr/lib/liba1.so\n"
    assert len(list(lists.glob("liba1.md5sums.old.*"))) == 1
    assert not list(lists.glob("*.new")) and not (tmp_path / "run" / "incomplete").exists()
    _apt_pre(tmp_path, stdin)  # and the next run is back to one cp
    assert list((tmp_path / "run" / "staging").iterdir()) == []


def test_the_package_managers_hook_command_line_is_read_without_argparse_as_argparse_reads_it() -> None:
    """Why (issue 15): importing argparse and building the parser were ~5 ms of every apt run.  Exactly
    ``hook --trigger apt`` and ``hook --trigger dpkg`` (what the hooks run) are read directly, into what
    argparse makes of them; any other command line is argparse's, with its checks."""
    code = ("import sys, json; from restart import cli, hook; calls = []\n"
            "hook.run = lambda roots, trigger, **kw: calls.append([list(map(str, roots)), trigger, kw]) or 0\n"
            "cli.main(sys.argv[1:]); fast = 'argparse' not in sys.modules\n"
            "args = cli._parser(sys.argv[1:]).parse_args(sys.argv[1:])\n"
            "parsed = [list(map(str, cli._roots(args))), args.trigger, {'after': None, 'budget': args.budget}]\n"
            "print(json.dumps([fast, calls == [parsed] or [calls, parsed]]))")

    def run(*argv: str) -> list[object]:
        out = subprocess.run(["/usr/bin/python3", "-c", code, *argv], capture_output=True, text=True,
                             env={"PYTHONPATH": str(Path(__file__).parent.parent)}, cwd="/", check=False)
        return list(json.loads(out.stdout.splitlines()[-1])) if out.stdout else [out.stderr]
    assert run("hook", "--trigger", "apt") == [True, True]
    assert run("hook", "--trigger", "dpkg") == [True, True]
    assert run("hook", "--trigger", "apt", "--budget", "5") == [False, True]
    assert run("hook", "--trigger", "unattended-upgrades") == [False, True]
    assert run("hook", "--trigger=apt") == [False, True]


def test_no_garbage_collection_runs_while_the_hooks_modules_are_imported() -> None:
    """Why (issue 15): importing the hook's modules made tens of thousands of objects, none of them
    garbage, and the collector ran some 20 times over them: ~3 ms of every apt run.  It is off while
    they are imported, and on again after."""
    code = ("import gc, sys\n"
            "starts = []\n"
            "gc.callbacks.append(lambda phase, info: phase == 'start' and starts.append(info['generation']))\n"
            "from restart import cli\n"
            "with cli.Importing():\n"
            "    from restart import hook\n"
            "print(len(starts), gc.isenabled())")
    out = subprocess.run(["/usr/bin/python3", "-B", "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(Path(__file__).parent.parent)}, cwd="/").stdout.split()
    assert out[1] == "True"
    assert int(out[0]) <= 3, out  # (finding restart's directory and cli's own first lines: before it stops it)


def test_what_was_imported_is_out_of_the_collectors_way_afterwards(tmp_path: Path) -> None:
    """Why (issue 14): with the collector off while importing, its first collections after the imports
    went over all their objects again (one of the young generation, then one of the middle: 2-6 ms of
    every ``apply`` before its first restart).  They are set aside for good once imported (still freed
    by their references); apply's own modules are imported so too."""
    host = Host(tmp_path, systemd=True)
    host.add(10, cgroup="0::/system.slice/demod.service\n", name="demod")
    code = ("import gc, sys\n"
            "from restart import cli\n"
            "cli.main(sys.argv[1:])\n"
            "tracked = {id(o) for o in gc.get_objects()}\n"
            "print([id(vars(sys.modules[m])) in tracked for m in ('restart.cli', 'restart.plan', 'restart.apply', "
            "'restart.runs')], gc.isenabled(), gc.get_freeze_count() > 10000)")
    out = subprocess.run(["/usr/bin/python3", "-c", code, *host.argv("apply", "--dry-run"),
                          "--state", str(tmp_path / "state")], capture_output=True, text=True,
                         env={"PYTHONPATH": str(Path(__file__).parent.parent)}, cwd="/", check=False)
    assert out.stdout.splitlines()[-1] == "[False, False, False, False] True True", out.stdout + out.stderr


def test_dpkgs_post_invoke_starts_no_shell_under_a_frontend(tmp_path: Path) -> None:
    """Why (issue 15): under apt, dpkg runs its post-invoke twice per transaction, and each started the
    hook script only for it to see DPKG_FRONTEND_LOCKED and leave (apt's own hook reports once).  The
    snippet tests the variable itself; a plain dpkg run still starts the report."""
    snippet = (Path(__file__).resolve().parent.parent / "hook" / "dpkg.cfg.d" / "restartctl").read_text()
    command = next(line for line in snippet.splitlines() if line.startswith("post-invoke="))[len("post-invoke="):]
    hook = tmp_path / "dpkg-hook"
    hook.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/started\n")
    hook.chmod(0o755)
    command = command.replace("/usr/lib/restartctl/dpkg-hook", str(hook))
    subprocess.run(["/bin/sh", "-c", command], check=True, env={"PATH": "/usr/bin:/bin", "DPKG_FRONTEND_LOCKED": "1"})
    assert not (tmp_path / "started").exists()
    subprocess.run(["/bin/sh", "-c", command], check=True, env={"PATH": "/usr/bin:/bin"})
    assert (tmp_path / "started").read_text() == "dpkg-post\n"


def test_apts_pre_install_hook_starts_one_shell_that_becomes_the_hook(tmp_path: Path) -> None:
    """Why (issue 15): apt runs the Pre-Install-Pkgs command with ``/bin/sh -c``, and it started a second
    ``sh -c`` for the guard, which then became the hook: a shell's fork and start (~1.5 ms) in every apt
    run.  apt's shell execs the guard's, which execs the hook (no fork, no ``eval``: E6); the first word, apt's key
    for the protocol version, is unchanged; without the hook installed apt's input is still read whole."""
    snippet = (Path(__file__).resolve().parent.parent / "hook" / "apt.conf.d" / "20restartctl").read_text()
    line = next(line for line in snippet.splitlines() if "RESTARTCTL_APT_HOOK=pre-install-pkgs " in line)
    command = line.strip().removeprefix('"').removesuffix('";')
    assert command.split(" ")[0] == "RESTARTCTL_APT_HOOK=pre-install-pkgs"
    assert "DPkg::Tools::Options::RESTARTCTL_APT_HOOK=pre-install-pkgs::Version \"3\";" in snippet
    hook = tmp_path / "dpkg-hook"
    hook.write_text(f"#!/bin/sh\necho \"$$ $*\" >> {tmp_path}/started\ncat > {tmp_path}/input\n")
    hook.chmod(0o755)
    shell = subprocess.Popen(["/bin/sh", "-c", command.replace("/usr/lib/restartctl/dpkg-hook", str(hook))],
                             stdin=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})
    shell.communicate(b"VERSION 3\n")
    assert shell.returncode == 0
    assert (tmp_path / "started").read_text() == f"{shell.pid} apt-pre\n"  # apt's own shell, become the hook
    assert (tmp_path / "input").read_text() == "VERSION 3\n"
    hook.unlink()  # removed, not purged: the conffile stays, and must not get in apt's way
    shell = subprocess.Popen(["/bin/sh", "-c", command.replace("/usr/lib/restartctl/dpkg-hook", str(hook))],
                             stdin=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})
    shell.communicate(b"VERSION 3\n" * 10000)
    assert shell.returncode == 0


def test_apply_yes_is_read_without_argparse_as_argparse_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Why (issue 14): importing argparse and building apply's parser were ~4 ms before the first restart
    of ``restartctl apply --yes``.  Exactly that command line is read directly, into what argparse makes
    of it (every option, every default); any other one is argparse's, with its checks."""
    from restart import cli

    seen: list[object] = []

    def fake_apply(roots: object, args: object) -> int:
        seen.append(vars(args))
        return 0
    monkeypatch.setattr(cli, "_apply", fake_apply)
    monkeypatch.setattr(cli, "_usable", lambda roots, args: None)
    monkeypatch.setattr(cli, "_parser", lambda argv: pytest.fail(f"argparse asked for {argv}"))
    assert cli.main(["apply", "--yes"]) == 0
    monkeypatch.undo()
    parsed = vars(cli._parser(["apply", "--yes"]).parse_args(["apply", "--yes"]))
    assert seen == [parsed]
    for other in (["apply"], ["apply", "--yes", "--json"], ["apply", "--dry-run"], ["apply", "--yes=1"]):
        assert cli._plain(other) is None, other
    code = "import sys; from restart import cli; cli._plain(['apply', '--yes']); print('argparse' in sys.modules)"
    out = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(Path(__file__).parent.parent)}, cwd="/").stdout
    assert out.split() == ["False"]
