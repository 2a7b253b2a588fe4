"""The command line end to end over a fixture host: /proc, dpkg database, /run, /etc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from restart.cli import main
from tests.fakeproc import ino, map_line
from tests.support.fixturehost import EXE, LIB, REPO, Host


def test_plan_json_for_a_stale_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host = Host(tmp_path, systemd=True)
    host.add(100, cgroup="0::/system.slice/demod.service\n", name="demod")
    host.add(101, cgroup="0::/system.slice/demod.service\n", name="demod")
    code, out = host.run(capsys, "plan", "--json")
    doc = json.loads(out)
    assert code == 1
    assert doc["schema"] == "restartctl/1"
    [p, _] = doc["processes"]
    assert {k: p[k] for k in ("pid", "ppid", "uid", "comm", "exe")} == {
        "pid": 100, "ppid": 1, "uid": 0, "comm": "demod", "exe": EXE}
    assert p["unit"] == {"kind": "system", "name": "demod.service", "uid": None, "guessed": False,
                         "valid": True, "cgroup": "/system.slice/demod.service"}
    assert p["stale"] == [{"kind": "code", "path": LIB, "package": "libdemo1:amd64", "confidence": "certain",
                           "evidence": "replaced"}]
    assert doc["units"] == [{"kind": "system", "name": "demod.service", "uid": None, "guessed": False,
                             "valid": True, "pids": [100, 101], "packages": ["libdemo1:amd64"]}]
    [a] = doc["actions"]
    assert (a["action"], a["argv"], a["unit"], a["kind"]) == (
        "restart", ["systemctl", "restart", "--", "demod.service"], "demod.service", "system")


def test_json_is_one_line_for_a_program_and_indented_at_a_terminal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: indented, CPython writes JSON with its pure-Python encoder: on a real upgrade (100 stale
    processes, 60,000 values) that took 15-20 ms of ``scan --json``, against 3 ms on one line, for
    every program that reads it.  The same document either way; on one line, byte for byte what
    ``json.dumps`` writes (restartctl writes each distinct stale file's object once: processes that
    map the same files, one with none of its own but an unowned one, names that are not ASCII)."""
    host = Host(tmp_path, systemd=True)
    host.add(100, cgroup="0::/system.slice/demod.service\n", name="demod")
    host.add(101, cgroup="0::/system.slice/demod.service\n", name="d\u00e9mod\x1b")
    host.add(102, maps=map_line(LIB, 1) + map_line("/memfd:jit (deleted)", 2, "rwxp"), name="x")
    host.add(103, maps=map_line("/memfd:jit (deleted)", 2, "rwxp") + map_line("/opt/y.so (deleted)", 3), name="y")
    for argv in (["plan", "--json"], ["scan", "--json", "--all"]):
        monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
        _, piped = host.run(capsys, *argv)
        assert piped.count("\n") == 1 and piped.endswith("}\n")
        monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
        _, shown = host.run(capsys, *argv)
        assert shown.startswith('{\n  "schema": "restartctl/1",\n')
        assert piped == json.dumps(json.loads(shown)) + "\n"
        assert len(json.loads(piped)["processes"]) == 3
    assert [len(p["stale"]) for p in json.loads(piped)["unowned"]] == [1, 2]


def test_without_systemd_the_init_script_is_guessed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host = Host(tmp_path, systemd=False)
    host.add(100, cgroup="0::/\n")
    code, out = host.run(capsys, "plan", "--json")
    [a] = json.loads(out)["actions"]
    assert code == 1
    assert (a["argv"], a["kind"]) == (["invoke-rc.d", "demod", "restart"], "system")
    assert json.loads(out)["units"][0]["guessed"] is True


def test_packages_restricts_and_all_lists_the_rest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host = Host(tmp_path, systemd=True)
    host.add(100, maps=map_line(LIB, 1) + map_line("/memfd:jit (deleted)", 2, "rwxp"))
    code, out = host.run(capsys, "scan", "--json", "--packages", "demod")
    assert code == 0 and json.loads(out)["processes"] == []
    code, out = host.run(capsys, "scan", "--json", "--packages", "libdemo1")
    assert code == 1 and json.loads(out)["processes"][0]["stale"][0]["package"] == "libdemo1:amd64"
    assert "unowned" not in json.loads(out)
    code, out = host.run(capsys, "scan", "--json", "--all")
    doc = json.loads(out)
    assert [s["path"] for s in doc["unowned"][0]["stale"]] == ["/memfd:jit"]
    assert [s["path"] for s in doc["processes"][0]["stale"]] == [LIB]


def test_nothing_stale_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host = Host(tmp_path, systemd=True)
    host.add(100, maps=map_line(LIB, ino(host.root, LIB)))
    assert host.run(capsys, "plan") == (0, "No process uses replaced package files: nothing to do.\n")


def test_text_output_is_grouped_quoted_and_stripped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host = Host(tmp_path, systemd=True)
    host.add(100, cgroup="0::/system.slice/demod.service\n", name="evil\x1b]0;pwned\x07\x1b[2J")
    host.add(200, cgroup="0::/system.slice/dbus.service\n")
    host.add(300, cgroup="0::/user.slice/user-1000.slice/user@1000.service/app.slice/x.service\n", uid=1000)
    code, out = host.run(capsys, "plan")
    assert code == 1
    assert "\x1b" not in out and "\x07" not in out
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J" in out
    assert "restart: systemctl restart -- demod.service" in out
    assert "defer: restarting the system bus" in out
    assert "suggested: systemctl --user -M 1000@ restart -- x.service" in out
    assert out.splitlines()[1:3] == [  # the summary first
        "Plan: 1 defer, 1 notify, 1 restart.",
        "Reboot needed: service (libdemo1:amd64): dbus.service: restarting the system bus disconnects "
        "every client; reboot instead"]


def test_scan_text_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host = Host(tmp_path, systemd=True)
    host.add(100, cgroup="0::/system.slice/demod.service\n")
    host.add(101, cgroup="0::/user.slice/user-1000.slice/session-4.scope\n", uid=1000)
    code, out = host.run(capsys, "scan")
    assert code == 1
    assert "demod.service  [libdemo1:amd64]" in out
    assert "session-4.scope (login session of user 1000)" in out
    assert out.splitlines()[-1] == ("2 processes in 2 units (1 system, 1 session) use replaced files of "
                                    "1 package: libdemo1:amd64.")


def test_runtime_error_exits_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host = Host(tmp_path, systemd=True)
    code = main(host.argv("scan", "--data", str(tmp_path / "nowhere")))
    assert code == 2
    assert capsys.readouterr().err.startswith("restartctl: ")


def test_usage_error_exits_two() -> None:
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2


def test_python_dash_m_entry_point_runs_from_a_checkout() -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO)}
    out = subprocess.run(["/usr/bin/python3", "-m", "restart", "--version"], env=env, cwd="/",
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("restartctl ")
    assert sys.version_info >= (3, 11) and os.path.exists("/usr/bin/python3")


def test_console_entry_keeps_mains_exit_code_and_output(tmp_path: Path) -> None:
    # run() leaves with os._exit: the code and the whole report must still get out, and a
    # reader that stops early (restartctl plan | head) gets no traceback.
    host = Host(tmp_path, systemd=True)
    for pid in range(10, 400):
        host.add(pid)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO)}
    argv = ["/usr/bin/python3", "-m", "restart", *host.argv("plan", "--json")]
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    assert done.returncode == 1 and len(json.loads(done.stdout)["processes"]) == 390
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as early:
        assert early.stdout is not None and early.stderr is not None
        early.stdout.read(10)
        early.stdout.close()
        assert early.wait(timeout=60) == 2 and early.stderr.read() == b""
    with open("/dev/full", "wb") as full:  # a full disk: one line, exit 2, no traceback
        failed = subprocess.run(argv, env=env, stdout=full, stderr=subprocess.PIPE, check=False)
    assert failed.returncode == 2 and failed.stderr.decode().startswith("restartctl: ")
    assert failed.stderr.count(b"\n") == 1, failed.stderr


def test_machine_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host = Host(tmp_path, systemd=True)
    host.add(100, cgroup="0::/system.slice/demod.service\n")
    code, out = host.run(capsys, "check")
    assert (code, out.split(" | ")[0]) == (1, "RESTARTCTL WARNING - 1 service needs a restart (demod.service)")
    code, out = host.run(capsys, "plan", "--format", "nagios")
    assert code == 1 and out.startswith("RESTARTCTL WARNING")
    code, out = host.run(capsys, "scan", "--format", "openmetrics", "--textfile", str(tmp_path / "m.prom"))
    assert code == 1 and out.endswith("# EOF\n")
    assert 'restartctl_pending_units{scope="system"} 1' in out
    assert (tmp_path / "m.prom").read_text() == out
    code, out = host.run(capsys, "plan", "--json")
    assert json.loads(out)["reboot"]["required"] is False
    code, out = host.run(capsys, "check", "--data", str(tmp_path / "nowhere"))
    assert code == 3 and out.startswith("RESTARTCTL UNKNOWN - ")


def test_plan_text_starts_with_the_summary_and_the_reboot_reasons(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    host = Host(tmp_path, systemd=True)
    host.add(10)
    (tmp_path / "run" / "reboot-required").write_text("*** System restart required ***\n")
    (tmp_path / "run" / "reboot-required.pkgs").write_text("libssl3\n")
    code, out = host.run(capsys, "plan")
    assert code == 1
    assert out.splitlines()[2] == f"Reboot needed: flag (libssl3): {tmp_path}/run/reboot-required.pkgs lists libssl3"
    _, scanned = host.run(capsys, "scan")
    assert "Reboot needed" not in scanned  # scan is about processes only


@pytest.mark.parametrize("argv", [["scan"], ["scan", "--json"], ["plan"], ["plan", "--json"]])
def test_plain_listings_are_read_as_argparse_reads_them(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: importing argparse and building the command's parser were ~3 ms of each ``scan --json``.  The
    four plain command lines monitoring runs are read without it, to the same namespace (every option,
    every default); any other one is argparse's, with its checks."""
    from restart import cli

    parsed = vars(cli._parser(argv).parse_args(argv))
    assert vars(cli._plain(argv)) == parsed
    monkeypatch.setattr(cli, "_parser", lambda argv: pytest.fail(f"argparse asked for {argv}"))
    monkeypatch.setattr(cli, "_usable", lambda roots, args: None)
    monkeypatch.setattr(cli, "_scan_or_plan", lambda roots, args: 0 if vars(args) == parsed else 3)
    assert cli.main(list(argv)) == 0
    for other in ([*argv, "--all"], [*argv, "--json=1"], [argv[0], "--format", "json"], ["scan", "--json", "--json"],
                  ["status", "--json"], [argv[0], "--packages", "x"]):
        assert cli._plain(other) is None, other
    code = f"import sys; from restart import cli; cli._plain({argv!r}); print('argparse' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO)}, cwd="/").stdout
    assert out.split() == ["False"]


@pytest.mark.parametrize("argv", [["scan", "--json"], ["plan"]])
def test_the_outputs_modules_are_imported_while_the_scanner_scans(tmp_path: Path, argv: list[str]) -> None:
    """Why (issue 15): the forked scanner needs none of plan, policy, report and units (what makes the
    output): imported before the fork, they were ~16 M instructions of every scan's serial start
    (``import restart.cli``: 118 -> 102 M).  The scan's caller imports them in its ``meanwhile`` (while a
    scan on two cores waits for its child), and still with the collector off and then set aside for good
    (the imports' objects out of every later collection's way)."""
    host = Host(tmp_path, systemd=True)
    host.add(100, cgroup="0::/system.slice/demod.service\n", name="demod")
    code = """if True:
        import gc, sys
        from restart import cli, processes
        OUTPUT = ("restart.plan", "restart.policy", "restart.report", "restart.units")
        def imported(): return [m for m in OUTPUT if m in sys.modules]
        def spy(*args, scan=processes.scan, **kwargs):  # the meanwhile first, as a scan on two cores calls it
            print(imported(), file=sys.stderr)
            kwargs.pop("meanwhile")()
            print(imported(), file=sys.stderr)
            return scan(*args, **kwargs)
        processes.scan = spy
        cli.main(sys.argv[1:])
        collected = {id(o) for o in gc.get_objects()}
        print([id(vars(sys.modules[m])) in collected for m in OUTPUT], file=sys.stderr)
    """
    out = subprocess.run([sys.executable, "-c", code, *host.argv(*argv)], capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO)}, cwd="/", check=False)
    assert out.stderr.splitlines() == [
        "[]", "['restart.plan', 'restart.policy', 'restart.report', 'restart.units']",
        "[False, False, False, False]"], out.stderr
