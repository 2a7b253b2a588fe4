"""The executor's pure parts and its small I/O helpers, without systemd (the real restarts are in
test_apply.py)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from restart import execute, notify, runner, unitstate, verify
from restart.plan import Action
from restart.policy import Act, Settings
from restart.processes import Confidence, Evidence, FileKind, ProcessInfo, StaleFile
from restart.units import INIT, SYSTEM, USER, USER_MANAGER, Affected, OwnedFile, Unit, UnitGroup, UnitKind, group


def test_parse_show_blocks_follow_the_argument_order() -> None:
    text = "ActiveState=active\nMainPID=5\n\nActiveState=inactive\nMainPID=0\n"
    assert unitstate.parse_show(text, ["a.service", "b.service"]) == {
        "a.service": {"ActiveState": "active", "MainPID": "5"},
        "b.service": {"ActiveState": "inactive", "MainPID": "0"}}
    assert unitstate.parse_show("", ["a.service"]) == {}


def test_programs_run_by_fixed_path() -> None:
    assert execute.resolved(("systemctl", "restart", "--", "x.service")) == [
        "/usr/bin/systemctl", "restart", "--", "x.service"]
    assert execute.resolved(("invoke-rc.d", "x", "restart")) == ["/usr/sbin/invoke-rc.d", "x", "restart"]
    assert execute.resolved(("/usr/local/sbin/mine", "x")) == ["/usr/local/sbin/mine", "x"]


def test_desktop_notification_uses_the_bus_of_the_uid() -> None:
    argv, env = notify.desktop_argv(1000, "alice", "t", "b")
    assert argv == ["/usr/sbin/runuser", "-u", "alice", "--", "/usr/bin/notify-send", "--app-name=restartctl",
                    "--", "t", "b"]
    assert env["DBUS_SESSION_BUS_ADDRESS"] == "unix:path=/run/user/1000/bus"
    assert set(env) == {"PATH", "LANG", "DBUS_SESSION_BUS_ADDRESS"}


def test_application_names_come_from_desktop_entries(tmp_path: Path) -> None:
    (tmp_path / "firefox.desktop").write_text(
        "[Desktop Entry]\nType=Application\nName=Firefox Web Browser\nExec=/usr/lib/firefox-esr/firefox-esr %u\n")
    (tmp_path / "broken.desktop").write_text("this is not a desktop entry\n\x00")
    (tmp_path / "term.desktop").write_text("[Desktop Entry]\nType=Application\nName=Terminal\nExec=xterm\n")
    names = notify.app_names({"/usr/lib/firefox-esr/firefox-esr", "/usr/bin/xterm", "/usr/bin/vim"}, tmp_path)
    assert names == {"firefox-esr": "Firefox Web Browser", "xterm": "Terminal"}


def test_sessions_from_logind_records(tmp_path: Path) -> None:
    d = tmp_path / "systemd" / "sessions"
    d.mkdir(parents=True)
    (d / "3").write_text("UID=1000\nUSER=alice\nTTY=pts/2\nTYPE=tty\n")
    (d / "4").write_text("UID=1001\nUSER=bob\nTYPE=wayland\n")
    (d / "5.ref").write_text("")
    (d / "6").write_text("UID=evil\nTTY=../../etc/passwd\n")
    assert notify.sessions(tmp_path) == [notify.Session(1000, "alice", "pts/2", False, "3"),
                                          notify.Session(1001, "bob", "", True, "4")]


def test_terminal_writes_only_to_the_users_own_terminal(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        name = Path(os.ttyname(slave))
        owner = os.fstat(slave).st_uid
        assert not notify.write_to_tty(name, owner + 4242, "nope")
        assert notify.write_to_tty(name, owner, "hello\n")
        assert b"hello" in os.read(master, 100)
        plain = tmp_path / "file"
        plain.write_text("")
        assert not notify.write_to_tty(plain, os.getuid(), "not a terminal")
        assert plain.read_text() == ""
        link = tmp_path / "link"
        link.symlink_to(name)
        assert not notify.write_to_tty(link, owner, "through a symlink")
    finally:
        os.close(master)
        os.close(slave)


def test_own_ancestry_is_never_restarted(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, ppid, cg in ((30, 20, "0::/system.slice/apt-daily-upgrade.service\n"),
                          (20, 1, "0::/system.slice/admin-job.service\n"),
                          (1, 0, "0::/init.scope\n")):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cgroup").write_text(cg)
        (proc / str(pid) / "stat").write_bytes(f"{pid} (x) S {ppid} 0 0\n".encode())
    assert unitstate.ancestor_units(proc, 30) == {"apt-daily-upgrade.service", "admin-job.service"}


@pytest.mark.parametrize("layout", ["", "unified", "systemd"])  # cgroup v2, hybrid, v1's name=systemd
def test_a_units_processes_come_from_its_cgroup_and_the_cgroups_below(tmp_path: Path, layout: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    top = tmp_path.joinpath(*filter(None, [layout, "system.slice", "demo.service"]))
    (top / "worker").mkdir(parents=True)
    (top / "cgroup.procs").write_text("10\n11\n")
    (top / "worker" / "cgroup.procs").write_text("12\n")
    (tmp_path.joinpath(*filter(None, [layout, "system.slice"])) / "cgroup.procs").write_text("99\n")
    # (issue 14: a unit's directory in each layout is a string, not three pathlib joins for each unit)
    monkeypatch.setattr(Path, "joinpath", lambda *a: pytest.fail("a pathlib join"))
    assert sorted(unitstate.unit_pids(tmp_path, "/system.slice/demo.service") or []) == [10, 11, 12]
    if layout != "systemd":  # cgroup v2 counts the cgroups below: a leaf's processes are read without a walk
        (top / "cgroup.stat").write_text("nr_descendants 1\nnr_dying_descendants 0\n")
        assert sorted(unitstate.unit_pids(tmp_path, "/system.slice/demo.service") or []) == [10, 11, 12]
        (top / "cgroup.stat").write_text("nr_descendants 0\nnr_dying_descendants 0\n")  # (the worker is not one)
        assert sorted(unitstate.unit_pids(tmp_path, "/system.slice/demo.service") or []) == [10, 11]
    for odd in ("", "system.slice/demo.service", "/system.slice/../system.slice/demo.service", "/gone.service"):
        assert unitstate.unit_pids(tmp_path, odd) is None, odd


def test_an_action_that_cannot_be_recorded_first_is_not_taken(tmp_path: Path) -> None:
    """Why: a run killed during a restart nobody recorded would leave no trace of it."""
    from restart.plan import Action
    from restart.policy import Act, Settings
    from restart.units import UnitGroup

    group = UnitGroup(UnitKind.NONE, None, 0, False, True, (1,), ("p",), ())  # no unit: nothing to ask systemd
    action = Action(group, Act.EXEC, ("/bin/true",), "test")

    def full(a: list[Action]) -> None:
        raise OSError("cannot write /var/lib/restartctl/actions.json: No space left on device")
    executor = execute.Executor(Settings(verify=False), proc=tmp_path, deadline=float("inf"),
                                still_stale=lambda checks, until: [verify.Recheck([]) for _ in checks], intend=full)
    outcome = executor.one(action)
    assert (outcome.status, outcome.detail) == (verify.SKIPPED, "not recorded before acting (cannot write "
                                                "/var/lib/restartctl/actions.json: No space left on device)")
    taken: list[Action] = []
    executor = execute.Executor(Settings(verify=False), proc=tmp_path, deadline=float("inf"),
                                still_stale=lambda checks, until: [verify.Recheck([]) for _ in checks],
                                intend=taken.extend)
    assert executor.one(action).status == verify.DONE and taken == [action]


def _member(pid: int, unit: Unit) -> Affected:
    return Affected(ProcessInfo(pid, 0, 0, "x", "/usr/lib/systemd/systemd", f"0::{unit.cgroup}\n", None, ()),
                    unit, (OwnedFile(StaleFile(FileKind.CODE, "/usr/lib/libc.so.6", Confidence.CERTAIN,
                                               Evidence.REPLACED), "libc6"),), ())


def test_the_check_after_a_restart_looks_only_at_what_was_restarted(tmp_path: Path) -> None:
    """Why: after a daemon-reexec there is no ControlGroup to ask for; a check of every process let a
    user's slow processes stall the run (issue 20, point 1).  PID 1, a user's manager: the processes
    re-executed and their cgroup's; a guessed unit: root's and system accounts' processes (None)."""
    (tmp_path / "init.scope").mkdir()
    (tmp_path / "init.scope" / "cgroup.procs").write_text("1\n")
    manager = tmp_path / "user.slice" / "user-1000.slice" / "user@1000.service" / "init.scope"
    manager.mkdir(parents=True)
    (manager / "cgroup.procs").write_text("400\n")
    (tmp_path / "system.slice" / "demo.service").mkdir(parents=True)
    (tmp_path / "system.slice" / "demo.service" / "cgroup.procs").write_text("70\n71\n")
    ex = execute.Executor(Settings(), proc=tmp_path / "no-proc", deadline=0.0, cgroupfs=tmp_path,
                          still_stale=lambda checks, until: [verify.Recheck([]) for _ in checks])
    pid1 = group([_member(1, Unit(INIT, "init.scope", cgroup="/init.scope"))])[0]
    assert ex._check_scope(pid1, {}) == [1]
    mgr = group([_member(400, Unit(USER_MANAGER, "user@1000.service", 1000,
                                   cgroup="/user.slice/user-1000.slice/user@1000.service/init.scope"))])[0]
    assert ex._check_scope(mgr, {}) == [400]
    service = group([_member(60, Unit(SYSTEM, "demo.service", cgroup="/system.slice/demo.service"))])[0]
    assert ex._check_scope(service, {"ControlGroup": "/system.slice/demo.service"}) == [70, 71]
    guessed = group([_member(60, Unit(SYSTEM, "demo", guessed=True))])[0]
    assert ex._check_scope(guessed, {}) is None


def test_a_check_that_runs_out_of_time_is_not_a_verified_restart(tmp_path: Path) -> None:
    """Why: what the check could not look at is never taken for clean; and it is given a deadline."""
    deadlines: list[float] = []

    def check(checks: list[tuple[UnitGroup, list[int] | None]], until: float) -> list[verify.Recheck]:
        deadlines.append(until)
        return [verify.Recheck([], unscanned=2) for _ in checks]
    ex = execute.Executor(Settings(timeout=5), proc=tmp_path, deadline=time.monotonic() + 60, cgroupfs=tmp_path,
                          still_stale=check)
    g = group([_member(1, Unit(INIT, "init.scope", cgroup="/init.scope"))])[0]
    action = Action(g, Act.REEXEC, ("systemctl", "daemon-reexec"), "")
    found: list[verify.Outcome] = []
    ex._verify([(action, {})], time.monotonic() + 5, found.append)
    [outcome] = found
    assert outcome.status == verify.FAILED and "2 of its processes could not be looked at" in outcome.detail
    assert deadlines and deadlines[0] <= time.monotonic() + 5


def test_users_processes_inside_a_system_unit_are_theirs_not_the_services() -> None:
    """Why: a cron job (no pam_systemd), an at job, an MTA's pipe or su live in a system unit's cgroup;
    a process of a user account counts for the unit only if it runs as the main process does, or is the
    main process or its child (a service with User=alice, or one whose main process forks her worker)."""
    def member(pid: int, ppid: int, uid: int) -> Affected:
        return Affected(ProcessInfo(pid, ppid, uid, "x", "/usr/sbin/x", "", None, ()),
                        Unit(SYSTEM, "cron.service"), (), ())
    cron_job, root_child, worker, users_own = member(30, 21, 1001), member(21, 20, 0), member(40, 20, 1002), \
        member(50, 1, 1001)
    assert verify.guests([cron_job, root_child, worker, users_own], 20, 0) == [cron_job, users_own]
    assert verify.guests([cron_job, users_own], 50, 1001) == []  # the unit runs as her (User=)


def test_a_unit_whose_check_failed_is_not_restarted_again_for_the_same_processes(tmp_path: Path) -> None:
    """Why: a restart that leaves the same processes stale fails every time; repeating it every run is a
    restart loop that also feeds the circuit breaker.  Skipped, pending, with the reason."""
    g = group([_member(60, Unit(SYSTEM, "leaky.service", cgroup="/system.slice/leaky.service"))])[0]
    action = Action(g, Act.RESTART, ("systemctl", "restart", "--", "leaky.service"), "")
    ex = execute.Executor(Settings(), proc=tmp_path, deadline=time.monotonic() + 60, cgroupfs=tmp_path,
                          still_stale=lambda checks, until: [verify.Recheck([]) for _ in checks],
                          earlier={(SYSTEM, "leaky.service", None): frozenset({60, 61})})
    outcome = ex.one(action)  # no systemctl here: it would fail if the executor tried to run one
    assert outcome.status == verify.SKIPPED and outcome.left == (60,)
    assert "check failed in an earlier run for these same processes (pid 60)" in outcome.detail
    # The record of this run keeps what is left, so the run after it skips it too.
    from restart import report, state
    state.save_pending(tmp_path, "boot", trigger="apt", packages=frozenset({"libc6"}),
                       units=report.run_units([action], [outcome]))
    record = state.read_json(tmp_path, state.PENDING)
    assert state.failed_checks(record, "boot") == {(SYSTEM, "leaky.service", None): frozenset({60})}
    assert state.failed_checks(record, "another boot") == {}


def test_notification_bodies_are_markup_escaped() -> None:
    """Why: notification servers read the body as markup; a program's name is its own choice."""
    argv, _ = notify.desktop_argv(1000, "alice", "t", 'restart <a href="x">me</a> & <b>now</b>')
    assert argv[-1] == 'restart &lt;a href="x"&gt;me&lt;/a&gt; &amp; &lt;b&gt;now&lt;/b&gt;'


def test_what_a_program_writes_is_kept_only_up_to_a_bound_and_in_time() -> None:
    """Why: a user who can reach a program's pipes (notify-send runs as her; pidfd_getfd) wrote 5.7 GB
    into root's capture_output within its 5 s timeout.  Output is read with a bound, and a program that
    never stops writing is ended at its timeout."""
    big = runner.run(["/usr/bin/head", "-c", str(3 * runner.OUTPUT_LIMIT), "/dev/zero"], 30)
    assert big.returncode == 0 and len(big.stdout) == runner.OUTPUT_LIMIT
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        runner.run(["/usr/bin/yes"], 0.5)
    assert time.monotonic() - started < 3
    both = runner.run(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], 10)
    assert (both.returncode, both.stdout, both.stderr) == (3, "out\n", "err\n")
    assert runner.run(["/bin/sh", "-c", "echo out; echo err >&2"], 10, quiet=True).stdout == ""


def test_notify_send_writes_to_dev_null(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: notify-send runs as the user, who could take its pipes over: nothing of it is read."""
    sessions = tmp_path / "systemd" / "sessions"
    sessions.mkdir(parents=True)
    (sessions / "1").write_text("UID=1000\nUSER=alice\nTYPE=x11\n")
    calls: list[dict[str, object]] = []

    def fake_run(argv: list[str], timeout: float, **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(kwargs)
        return subprocess.CompletedProcess(argv, 0, "", "")
    monkeypatch.setattr(notify, "run", fake_run)
    monkeypatch.setattr(os, "access", lambda path, mode: True)
    g = group([_member(60, Unit(USER, "app.service", 1000, cgroup="/user.slice/x"))])[0]
    notify.notify([g], tmp_path, lambda line: None, applications=tmp_path)
    assert calls and all(c.get("quiet") is True for c in calls)


def test_a_recorded_unit_is_asked_about_only_if_systemctl_may_be_asked() -> None:
    """The state file is data: a unit it names reaches systemctl only under systemd's grammar, as a
    system unit (any uid it carries dropped) or a user unit with an integer uid; the rest is unknown."""
    from restart.units import SYSTEM, USER, UnitGroup
    from restart.unitstate import active_state, recorded_group

    assert recorded_group("system", "a.service", None) == UnitGroup(kind=SYSTEM, name="a.service", uid=None)
    assert recorded_group("system", "a.service", 1000) == UnitGroup(kind=SYSTEM, name="a.service", uid=None)
    assert recorded_group("user", "a.service", 1000) == UnitGroup(kind=USER, name="a.service", uid=1000)
    for kind, name, uid in [("user", "a.service", None), ("user", "a.service", True), ("user", "a.service", "1000"),
                            ("session", "session-1.scope", None), ("system", "a b.service", None),
                            ("system", "../a.service", None), ("system", ["a.service"], None),
                            (None, "a.service", None)]:
        assert recorded_group(kind, name, uid) is None, (kind, name, uid)
        if isinstance(kind, str) and isinstance(name, str):
            assert active_state(kind, name, uid if isinstance(uid, int) else None) == "unknown"


def _bus_message(kind: int, reply_to: int, signature: str, body: bytes) -> bytes:
    """A little-endian D-Bus message of type ``kind`` answering call ``reply_to`` (as PID 1 writes them)."""
    fields = bytearray(b"\x05\x01u\x00" + struct.pack("<I", reply_to))
    fields += b"\x08\x01g\x00" + bytes([len(signature)]) + signature.encode() + b"\x00"
    head = b"l" + bytes([kind, 1, 1]) + struct.pack("<III", len(body), 7, len(fields)) + fields
    return head + bytes(-len(head) % 8) + body


def test_pid1s_answers_on_its_bus_are_read_strictly() -> None:
    """An answer is a string, number or boolean, as ``systemctl show`` prints it; an error, another
    type or a short message raises (the caller then asks systemctl: never a verdict from half an answer)."""
    assert unitstate.bus_path("rctl-bench-000.service") == "/org/freedesktop/systemd1/unit/rctl_2dbench_2d000_2eservice"
    assert unitstate.bus_path("0x@é.service").endswith("/_30x_40_c3_a9_2eservice")  # a leading digit, UTF-8
    assert unitstate._reply(_bus_message(2, 3, "v", b"\x01u\x00\x00" + struct.pack("<I", 4242))) == (3, "4242")
    assert unitstate._reply(_bus_message(2, 4, "v", b"\x01b\x00\x00" + struct.pack("<I", 1))) == (4, "yes")
    text = b"\x01s\x00\x00" + struct.pack("<I", 6) + b"active\x00"
    assert unitstate._reply(_bus_message(2, 5, "v", text)) == (5, "active")
    assert unitstate._reply(_bus_message(4, 0, "so", b"")) == (0, None)  # a signal answers nothing
    with pytest.raises(ValueError, match="error"):
        unitstate._reply(_bus_message(3, 5, "s", struct.pack("<I", 2) + b"no\x00"))
    with pytest.raises(ValueError, match="type 'as'"):
        unitstate._reply(_bus_message(2, 5, "v", b"\x02as\x00" + struct.pack("<I", 0)))
    with pytest.raises((struct.error, IndexError)):
        unitstate._reply(_bus_message(2, 5, "v", text)[:-12])
    with pytest.raises(UnicodeDecodeError):
        unitstate._reply(_bus_message(2, 5, "v", b"\x01s\x00\x00" + struct.pack("<I", 2) + b"\xff\xfe\x00"))


def test_every_property_asked_of_pid1_is_read_by_a_check() -> None:
    """Why: each is a Get PID 1 answers for every unit of a wave, and only once all its jobs have ended
    (while it still sends their changes it writes and does not read): a property no check reads (Type
    and Result were asked from the start, never read) is time at the end of every wave."""
    import restart

    package = Path(restart.__file__).parent
    sources = "".join(f.read_text() for f in sorted(package.glob("*.py")) if f.name != "unitstate.py")
    own = (package / "unitstate.py").read_text().split("SHOW_PROPS = ", 1)[1]  # after the table itself
    unread = [p for p in unitstate.BUS_PROPS if f'"{p}"' not in sources + own and f"'{p}'" not in sources + own]
    assert unread == []


def test_a_bus_that_stops_answering_is_a_timeout_not_a_second_wait(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """PID 1 takes the connection, then says nothing (stopped, overloaded): the question ends at its
    timeout as systemctl's would (TimeoutExpired, an outcome for the executor), not in a fallback to
    systemctl that waits as long again."""
    path = tmp_path / "private"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    done = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(64)
            conn.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n")
            done.wait(5)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    monkeypatch.setattr(unitstate, "SYSTEMD_BUS", str(path))
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        unitstate.unit_states([UnitGroup(kind=SYSTEM, name="a.service", uid=None)], 0.5)
    assert time.monotonic() - started < 2
    done.set()
    thread.join()
    server.close()


def test_restart_jobs_are_asked_of_pid1_on_its_bus_and_awaited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why (issue 14): ``systemctl restart`` starts a program that connects and asks about each unit
    before enqueuing its job, one after another (a wave of 29: 94 ms against 72 ms on PID 1's socket).
    On the socket: Subscribe, then one job per unit, mode ``replace`` as systemctl's, all sent at once;
    each job's end is its own ``JobRemoved`` (not another job of the same unit, not the signals around
    it), even when it comes before the job's path; a refusal is systemd's own message."""
    from tests.support.fakebus import FakePid1

    monkeypatch.setattr(unitstate, "SYSTEMD_BUS", str(tmp_path / "private"))
    for early in (False, True):
        pid1 = FakePid1(tmp_path / "private", early=early, jobs={
            "b.service": "failed", "c.service": "refuse:Unit c.service is masked.", "d.service": "skipped"},
            units={"a.service": {"ActiveState": "active", "MainPID": "42"}})
        try:
            jobs = unitstate.bus_restart("reload-or-restart", ["a.service", "b.service", "c.service", "d.service"], 5)
        finally:
            pid1.close()
        assert jobs[:3] == ({"a.service": "done", "b.service": "failed", "d.service": "skipped"},
                            {"c.service": "Unit c.service is masked."}, "")
        # As a job ends well, its unit's properties are asked on the same connection.
        assert jobs.states is not None and sorted(jobs.states) == ["a.service", "d.service"]
        assert jobs.states["a.service"] == {**dict.fromkeys(unitstate.BUS_PROPS, ""), "ActiveState": "active",
                                            "MainPID": "42"}
        restarts = [call for call in pid1.calls if call[0] != "Get"]
        assert restarts == [("Subscribe", ()), *(("ReloadOrRestartUnit", (f"{n}.service", "replace")) for n in "abcd")]
        assert len(pid1.calls) == len(restarts) + 2 * len(unitstate.BUS_PROPS)
        (tmp_path / "private").unlink()


def test_a_job_that_does_not_end_or_is_lost_is_never_asked_again(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Once its job is enqueued, a unit is not restarted a second time: no end in time, or the socket
    closed, is said as such (the executor's verification then decides); only a socket that could not be
    used at all is BusUnavailable, for systemctl to be run instead."""
    from tests.support.fakebus import FakePid1

    path = tmp_path / "private"
    monkeypatch.setattr(unitstate, "SYSTEMD_BUS", str(path))
    with pytest.raises(unitstate.BusUnavailable):
        unitstate.bus_restart("restart", ["a.service"], 1)
    pid1 = FakePid1(path, jobs={"b.service": "hang"})
    try:
        jobs = unitstate.bus_restart("restart", ["a.service", "b.service"], 0.5)
    finally:
        pid1.close()
    assert jobs[:3] == ({"a.service": "done"}, {}, "")
    assert execute.job_trouble(jobs, "b.service", 0.5) == "the restart job of b.service did not end within 0 s"
    path.unlink()
    pid1 = FakePid1(path, jobs={"a.service": "close"})
    try:
        jobs = unitstate.bus_restart("try-restart", ["a.service", "b.service"], 5)
    finally:
        pid1.close()
    assert jobs.results == {} and jobs.waiting == "lost from view: systemd closed the connection", jobs
    assert pid1.calls == [("Subscribe", ()), ("TryRestartUnit", ("a.service", "replace"))]  # and no second try
    assert jobs.states == {}


def test_what_runs_beside_a_restart_is_told_once_pid1_starts_a_unit(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Why (issue 14): the next wave's survey (its 29 units asked of PID 1) began as soon as the canary's
    job was enqueued, while PID 1 stopped the canary and forked its start: the canary's restart took
    5-9 ms longer (medians of 12 against none at all).  Told once one of the units is ``activating``
    (its start forked: PID 1 then waits), never for ``deactivating``; at the latest when the wait ends."""
    from tests.support.fakebus import FakePid1

    path = tmp_path / "private"
    monkeypatch.setattr(unitstate, "SYSTEMD_BUS", str(path))
    told: list[float] = []
    for states, early in ((("deactivating", "inactive", "activating"), True), (("deactivating", "inactive"), False)):
        told.clear()
        pid1 = FakePid1(path, jobs={"a.service": "hang"}, states=states)
        started = time.monotonic()
        try:
            jobs = unitstate.bus_restart("restart", ["a.service"], 1.0, lambda: told.append(time.monotonic()))
        finally:
            pid1.close()
        assert jobs.results == {} and len(told) == 1, told
        assert (told[0] - started < 0.5) is early, told[0] - started  # at the end, 1 s after, without it
        path.unlink()


def test_units_whose_jobs_ended_are_told_while_other_jobs_still_run(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Why (issue 14): the executor verifies a wave's units as their jobs end, not all of them after the
    last one.  Told once nothing else is there to read, each unit once, with every property read; a
    unit one of whose properties PID 1 answered with an error is never told (nor complete: the
    executor asks again), whatever the count of its answers."""
    from tests.support.fakebus import FakePid1

    path = tmp_path / "private"
    monkeypatch.setattr(unitstate, "SYSTEMD_BUS", str(path))
    told: list[dict[str, dict[str, str]]] = []
    pid1 = FakePid1(path, jobs={"c.service": "hang"}, units={"a.service": {"ActiveState": "active", "MainPID": "42"}})
    try:
        jobs = unitstate.bus_restart("restart", ["a.service", "b.service", "c.service"], 0.5, ended=told.append)
    finally:
        pid1.close()
    assert jobs.results == {"a.service": "done", "b.service": "done"} and jobs.states is not None
    assert [n for t in told for n in t] in (["a.service", "b.service"], ["b.service", "a.service"])  # once each
    assert {n: s for t in told for n, s in t.items()} == jobs.states
    assert jobs.states["a.service"]["MainPID"] == "42" and len(jobs.states["a.service"]) == len(unitstate.BUS_PROPS)
    # All jobs ended: nothing is told meanwhile (the caller checks them all at once anyway).
    path.unlink()
    told.clear()
    pid1 = FakePid1(path)
    try:
        jobs = unitstate.bus_restart("restart", ["a.service"], 5, ended=told.append)
    finally:
        pid1.close()
    assert told == [] and jobs.states is not None and list(jobs.states) == ["a.service"]
    # An error for one property: neither told nor complete.
    path.unlink()
    pid1 = FakePid1(path, jobs={"c.service": "hang"})
    pid1.errors = {"MainPID"}
    try:
        jobs = unitstate.bus_restart("restart", ["a.service", "c.service"], 0.5, ended=told.append)
    finally:
        pid1.close()
    assert jobs.results == {"a.service": "done"} and told == [] and jobs.states == {}


def test_one_connection_to_pid1_carries_a_check_then_restarts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why (issue 14): a connection to PID 1's socket costs about 2 ms of its time, and the canary's
    check, its restart and the wave's restart came one after another, each on a new one.  A connection
    is kept a moment after a clean exchange and used for the next question: what PID 1 sent on it
    meanwhile (signals; it sends them to every connection on this socket) is dropped, neither taken for
    an answer nor counted against the next question's allowance.  One kept longer than
    ``KEEP_SECONDS`` is closed, not used."""
    from tests.support.fakebus import NOISE, FakePid1

    path = tmp_path / "private"
    monkeypatch.setattr(unitstate, "SYSTEMD_BUS", str(path))
    props = len(unitstate.BUS_PROPS)
    pid1 = FakePid1(path, units={"a.service": {"ActiveState": "active", "MainPID": "42"},
                                 "b.service": {"ActiveState": "active", "MainPID": "43"}})
    # after the first question's last answer: more signals than a question about one unit allows for
    pid1.after_get = {props: [NOISE] * (16 * props + 20)}
    try:
        assert unitstate.bus_states(["a.service"], 5)["a.service"]["MainPID"] == "42"
        assert pid1.sent.wait(5)
        assert unitstate.bus_states(["a.service"], 5)["a.service"]["MainPID"] == "42"
        assert unitstate.bus_restart("restart", ["a.service"], 5)[:3] == ({"a.service": "done"}, {}, "")
        jobs = unitstate.bus_restart("restart", ["b.service"], 5)
        assert jobs[:3] == ({"b.service": "done"}, {}, "") and jobs.states is not None
        assert jobs.states["b.service"]["MainPID"] == "43"
        assert pid1.connections == 1
        assert [c[0] for c in pid1.calls if c[0] != "Get"] == ["Subscribe", "RestartUnit"] * 2
        monkeypatch.setattr(unitstate, "KEEP_SECONDS", 0.0)
        time.sleep(0.01)
        assert unitstate.bus_states(["b.service"], 5)["b.service"]["MainPID"] == "43"
        assert pid1.connections == 2
        # What no question could read past (not a little-endian message): a new connection, not a failure.
        monkeypatch.setattr(unitstate, "KEEP_SECONDS", 5.0)
        pid1.sent.clear()
        pid1.after_get = {6 * props: [b"B" * 64]}
        assert unitstate.bus_states(["b.service"], 5)["b.service"]["MainPID"] == "43"
        assert pid1.sent.wait(5)
        assert unitstate.bus_states(["b.service"], 5)["b.service"]["MainPID"] == "43"
        assert pid1.connections == 3
    finally:
        pid1.close()


def test_pid1s_socket_can_be_connected_ahead_of_the_first_question(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Why (issue 14): the canary's check connected to PID 1's socket first (about 2 ms) on the way to its
    restart; ``prepare`` connects and sends the handshake while the run works on, and the check reads PID
    1's answer and uses that connection.  No thread: starting one and getting the interpreter back cost
    the run 0.3-2.1 ms before the canary.  A socket that cannot be used leaves nothing behind: the check
    connects (and falls back) itself; nor is one made longer than ``KEEP_SECONDS`` ago used."""
    from tests.support.fakebus import FakePid1

    path = tmp_path / "private"
    monkeypatch.setattr(unitstate, "SYSTEMD_BUS", str(path))
    unitstate.prepare(1)  # no socket yet: nothing kept
    assert unitstate._ahead == [] and unitstate._kept == []
    pid1 = FakePid1(path, units={"a.service": {"ActiveState": "active", "MainPID": "42"}})
    try:
        threads = threading.active_count()
        unitstate.prepare(5)
        assert threading.active_count() == threads and len(unitstate._ahead) == 1
        deadline = time.monotonic() + 5
        while not pid1.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pid1.connections == 1 and pid1.calls == []  # connected, nothing asked yet
        assert unitstate.bus_states(["a.service"], 5)["a.service"]["MainPID"] == "42"
        assert pid1.connections == 1 and unitstate._ahead == []
    finally:
        pid1.close()
    # A question while PID 1 is slow to answer the handshake waits for that answer instead of making a
    # second connection (which this stand-in, one connection at a time, would serve only once the first
    # is closed: never in time).
    for keep, connections in ((5.0, 1), (0.0, 2)):
        monkeypatch.setattr(unitstate, "KEEP_SECONDS", keep)
        path.unlink()
        pid1 = FakePid1(path, units={"a.service": {"ActiveState": "active", "MainPID": "42"}})
        pid1.auth_delay = 0.3
        try:
            unitstate.prepare(5)
            time.sleep(0.01)
            assert unitstate.bus_states(["a.service"], 2)["a.service"]["MainPID"] == "42"
            assert pid1.connections == connections
        finally:
            pid1.close()
    # Made ahead again: the one made before is closed, not left open until the interpreter collects it.
    path.unlink()
    pid1 = FakePid1(path, units={"a.service": {"ActiveState": "active", "MainPID": "42"}})
    try:
        unitstate.prepare(5)
        first = unitstate._ahead[0]
        unitstate.prepare(5)
        assert first.sock.fileno() == -1 and unitstate._ahead[0] is not first
        assert unitstate.bus_states(["a.service"], 2)["a.service"]["MainPID"] == "42"
    finally:
        pid1.close()


def test_properties_of_units_loaded_to_be_asked_about_are_still_read_on_the_bus(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit that is not loaded (inactive, collected) is loaded for each question and collected again:
    PID 1 sends about eight signals per question (UnitNew, UnitRemoved, PropertiesChanged) before
    its answer.  They were more than the bus allowed for, and systemctl show was run instead."""
    from tests.support.fakebus import NOISE, FakePid1

    path = tmp_path / "private"
    monkeypatch.setattr(unitstate, "SYSTEMD_BUS", str(path))
    pid1 = FakePid1(path, units={"a.service": {"ActiveState": "inactive", "SubState": "dead"}})
    pid1.before_answer = [NOISE] * 8
    try:
        states = unitstate.bus_states(["a.service"], 5)
    finally:
        pid1.close()
    assert states["a.service"]["ActiveState"] == "inactive" and states["a.service"]["SubState"] == "dead"


def test_the_executor_loads_no_subprocess_module_until_a_program_runs() -> None:
    """Why (issue 14): ``subprocess`` (with ``locale`` and ``selectors``) was 1.5 ms of every apply before its
    first restart, which PID 1's socket asks for without a program; its ``TimeoutExpired`` is still what a
    timeout raises and what the executor's modules catch, once an exception is matched against it."""
    code = ("import sys, restart.cli, restart.apply, restart.execute, restart.unitstate, restart.verify\n"
            "from restart import runner\n"
            "print(sorted({'subprocess', 'selectors', 'locale'} & set(sys.modules)))\n"
            "import subprocess\n"
            "print(runner.TimeoutExpired is subprocess.TimeoutExpired,\n"
            "      runner.FAILURES == (OSError, subprocess.TimeoutExpired))\n"
            "try:\n"
            "    runner.run(['/bin/sleep', '5'], 0.1)\n"
            "except runner.TimeoutExpired:\n"
            "    print('timed out')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.stdout.splitlines() == ["[]", "True True", "timed out"], r.stdout + r.stderr


def test_the_executor_loads_no_socket_module() -> None:
    """Why (issue 14): ``socket`` builds its enums at import, 2.5 ms of every acting run before its
    first restart; PID 1's socket needs only ``_socket``."""
    code = "import sys, restart.cli, restart.apply, restart.execute; print(sorted({'socket'} & set(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
