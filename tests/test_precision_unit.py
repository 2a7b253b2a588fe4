"""Precision (issue 12) over fixture trees: the pure parts of what is and is not a finding."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from restart import transaction
from restart.packages import DpkgDatabase

A = "0123456789abcdef0123456789abcdef"
B = "fedcba9876543210fedcba9876543210"


def _tree(tmp_path: Path) -> tuple[Path, DpkgDatabase]:
    admin = tmp_path / "dpkg"
    (admin / "info").mkdir(parents=True)
    run = tmp_path / "run" / "restartctl"
    (run / "lists").mkdir(parents=True)
    for d in (run, run / "lists"):
        os.chmod(d, 0o755)
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    os.symlink("usr/lib", tmp_path / "lib")
    return run, DpkgDatabase(admin, tmp_path)


def test_only_files_with_the_same_checksum_before_and_after_are_unchanged(tmp_path: Path) -> None:
    run, db = _tree(tmp_path)
    info, lists = db.admindir / "info", run / "lists"
    (info / "libx1:amd64.list").write_text("/.\n/lib/libx.so.1\n/usr/lib/liby.so.1\n")
    (info / "libx1:amd64.md5sums").write_text(f"{A}  lib/libx.so.1\n{A}  usr/lib/liby.so.1\n")
    (lists / "libx1:amd64.md5sums").write_text(f"{A}  lib/libx.so.1\n{B}  usr/lib/liby.so.1\n")
    # the merged-/usr spelling of the database is the one maps show
    assert set(transaction.unchanged(run, db, ["libx1:amd64"])) == {"/usr/lib/libx.so.1"}
    assert set(transaction.unchanged(run, db, None)) == {"/usr/lib/libx.so.1"}
    assert not transaction.unchanged(run, db, ["other"])


def test_unknown_old_content_is_never_unchanged(tmp_path: Path) -> None:
    """An empty snapshot (a plain dpkg run changed the package first), a missing one, a
    symlinked or others-writable directory: nothing is unchanged."""
    run, db = _tree(tmp_path)
    info, lists = db.admindir / "info", run / "lists"
    (info / "liba.list").write_text("/usr/lib/liba.so\n")
    (info / "liba.md5sums").write_text(f"{A}  usr/lib/liba.so\n")
    (lists / "liba.md5sums").write_text("")
    assert not transaction.unchanged(run, db, ["liba"])
    (lists / "liba.md5sums").write_text(f"{A}  usr/lib/liba.so\n")
    assert set(transaction.unchanged(run, db, ["liba"])) == {"/usr/lib/liba.so"}
    os.chmod(lists, 0o777)
    assert not transaction.unchanged(run, db, ["liba"])



def test_unchanged_says_since_when_that_content_was_on_disk(tmp_path: Path) -> None:
    """The snapshot's mtime (cp -p keeps dpkg's: when the older version was unpacked) is the time
    after which a process can only have loaded that content; the caller compares start times."""
    run, db = _tree(tmp_path)
    info, lists = db.admindir / "info", run / "lists"
    (info / "liba.list").write_text("/usr/lib/liba.so\n")
    (info / "liba.md5sums").write_text(f"{A}  usr/lib/liba.so\n")
    (lists / "liba.md5sums").write_text(f"{A}  usr/lib/liba.so\n")
    os.utime(lists / "liba.md5sums", (1_700_000_000, 1_700_000_000))
    assert transaction.unchanged(run, db, ["liba"]) == {"/usr/lib/liba.so": 1_700_000_000}


def test_status_drops_pending_units_whose_processes_have_exited(tmp_path: Path) -> None:
    """PID and start time name a process for good: a unit whose every process is gone (or
    whose PID now names another process) is no longer pending; one still running stays."""
    import subprocess

    from restart import state

    child = subprocess.Popen(["/usr/bin/sleep", "60"])
    try:
        proc = Path("/proc")
        units = state.with_processes([
            {"unit": "a.service", "pids": [child.pid], "status": "listed"},
            {"unit": "b.service", "pids": [os.getpid()], "status": "listed"},
            {"unit": "c.service", "pids": [child.pid], "status": "done"},
        ], proc)
        assert units[0]["processes"][0][0] == child.pid
        units[1]["processes"] = [[os.getpid(), units[1]["processes"][0][1] + 1]]  # a reused PID
        legacy = {"unit": "d.service", "pids": [1], "status": "listed"}
        record = {"units": [*units, legacy]}
        kept = state.still_true(record, proc)
        assert [u["unit"] for u in kept["units"]] == ["a.service", "c.service", "d.service"]
        assert kept["exited"] == 1
    finally:
        child.kill()
        child.wait()
    assert [u["unit"] for u in state.still_true(record, proc)["units"]] == ["c.service", "d.service"]


# ---- notices: sessions found as loginctl finds them, and logs that say what happened

def _utmp_record(kind: int, pid: int, line: bytes, user: bytes = b"bob") -> bytes:
    from restart.notify import UTMP_RECORD

    return UTMP_RECORD.pack(kind, pid, line, b"ts/0", user, b"10.0.0.1", 0, 0, 0, 0, 0, b"", b"")


def _session_tree(tmp_path: Path, cgroups: dict[int, str], records: list[bytes], sessions: dict[str, str]) -> Path:
    run = tmp_path / "run"
    (run / "systemd" / "sessions").mkdir(parents=True)
    for name, text in sessions.items():
        (run / "systemd" / "sessions" / name).write_text(text)
    (run / "utmp").write_bytes(b"".join(records))
    for pid, cg in cgroups.items():
        (tmp_path / "proc" / str(pid)).mkdir(parents=True)
        (tmp_path / "proc" / str(pid) / "cgroup").write_text(f"0::{cg}\n")
    return run


def test_an_ssh_sessions_terminal_comes_from_utmp(tmp_path: Path) -> None:
    """logind's record of an ssh login has no TTY= line (loginctl shows pts/1 all the same)."""
    from restart import notify

    assert notify.UTMP_RECORD.size == 384  # glibc's struct utmp
    run = _session_tree(tmp_path, {
        40: "/user.slice/user-1000.slice/session-5.scope",
        41: "/user.slice/user-1000.slice/user@1000.service/app.slice/x.service",  # not a session: ignored
    }, [
        _utmp_record(8, 39, b"pts/0"),              # DEAD_PROCESS: a login that is over
        _utmp_record(7, 41, b"pts/9"),
        _utmp_record(7, 40, b"pts/1"),
        _utmp_record(7, 42, b"../../etc/passwd"),  # never a terminal name
        _utmp_record(7, 43, b"pts/4"),              # its process is gone
    ], {"5": "UID=1000\nUSER=bob\nTYPE=tty\nCLASS=user\nREMOTE=1\n",
        "c1": "UID=1000\nUSER=bob\nTYPE=unspecified\nCLASS=manager\n"})
    got = notify.sessions(run, tmp_path / "proc")
    assert got == [notify.Session(1000, "bob", "pts/1", False, "5", "user"),
                   notify.Session(1000, "bob", "", False, "c1", "manager")]
    (run / "utmp").write_bytes(b"\0" * 100)  # a torn file: no whole record, nothing found
    assert notify.utmp_terminals(run, tmp_path / "proc") == {}


def test_the_log_says_told_only_for_notices_that_went_out(tmp_path: Path) -> None:
    """A manager session (a lingering user's, systemd >= 256) gets nothing and is not logged
    as told; a session whose terminal cannot be written is logged as not told, with why."""
    from restart import notify
    from restart.processes import Confidence, Evidence, FileKind, ProcessInfo, StaleFile
    from restart.units import SESSION, Affected, OwnedFile, Unit, UnitGroup

    run = _session_tree(tmp_path, {}, [], {
        "c1": "UID=1000\nUSER=bob\nCLASS=manager\n",
        "7": "UID=1000\nUSER=bob\nTTY=pts/4242\nCLASS=user\n",  # no such terminal
    })
    stale = StaleFile(FileKind.CODE, "/usr/lib/libx.so.1", Confidence.CERTAIN, Evidence.REPLACED)
    proc = ProcessInfo(10, 1, 1000, "demo", "/usr/bin/demo", "", None, (stale,))
    unit = Unit(SESSION, "session-7.scope", 1000)
    group = UnitGroup(SESSION, "session-7.scope", 1000, False, True, (10,), ("libx1",),
                      (Affected(proc, unit, (OwnedFile(stale, "libx1"),), ()),))
    lines: list[str] = []
    assert notify.notify([group], run, lines.append, tmp_path / "no-apps", tmp_path / "proc") == 0
    assert lines == ["could not tell user bob (session 7) to restart demo: could not write to /dev/pts/4242"]
    (run / "systemd" / "sessions" / "7").unlink()  # only the lingering manager's session is left
    lines.clear()
    assert notify.notify([group], run, lines.append, tmp_path / "no-apps", tmp_path / "proc") == 0
    assert lines == ["could not tell user 1000: no login session a person sits at (a lingering manager or "
                     "background sessions only); it stays pending"]


def test_without_utmp_an_ssh_login_is_told_on_the_terminal_its_program_runs_on(tmp_path: Path) -> None:
    """Debian 13: logind names no terminal for an ssh login and nothing writes /run/utmp; the stale
    program's controlling terminal (the kernel's tty_nr) is written, and only if it is the user's."""
    import pty

    from restart import notify
    from restart.processes import Confidence, Evidence, FileKind, ProcessInfo, StaleFile
    from restart.units import SESSION, Affected, OwnedFile, Unit, UnitGroup

    run = _session_tree(tmp_path, {}, [], {"c2": "UID=1000\nUSER=bob\nTYPE=tty\nCLASS=user\nREMOTE=1\n"})
    (run / "utmp").unlink()
    master, slave = pty.openpty()
    try:
        rdev = os.fstat(slave).st_rdev
        name = os.ttyname(slave).removeprefix("/dev/")
        major, minor = os.major(rdev), os.minor(rdev)
        tty_nr = (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)  # the kernel's encoding
        stat = tmp_path / "proc" / "10" / "stat"
        stat.parent.mkdir(parents=True)
        stat.write_text(f"10 (demo) S 1 10 10 {tty_nr} 10 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0\n")
        stale = StaleFile(FileKind.CODE, "/usr/lib/libx.so.1", Confidence.CERTAIN, Evidence.REPLACED)
        proc = ProcessInfo(10, 1, 1000, "demo", "/usr/bin/demo", "", None, (stale,))
        group = UnitGroup(SESSION, "session-c2.scope", 1000, False, True, (10,), ("libx1",),
                          (Affected(proc, Unit(SESSION, "session-c2.scope", 1000), (OwnedFile(stale, "libx1"),), ()),))
        lines: list[str] = []
        # Not bob's terminal (root's here): nothing is written, and the log says where it was not.
        assert notify.notify([group], run, lines.append, tmp_path / "no-apps", tmp_path / "proc") == 0
        assert lines == [f"could not tell user bob (session c2) to restart demo: could not write to /dev/{name}"]
        os.fchown(slave, 1000, -1)
        lines.clear()
        assert notify.notify([group], run, lines.append, tmp_path / "no-apps", tmp_path / "proc") == 1
        assert lines == [f"told user bob (session c2) on {name} to restart: demo"]
        assert b"software update replaced files" in os.read(master, 4096)
    finally:
        os.close(master)
        os.close(slave)


def test_a_controlling_terminal_is_only_a_terminal(tmp_path: Path) -> None:
    """tty_nr names pts/N (majors 136-143) and the virtual consoles tty1-tty63; anything else
    (none, a serial line, a hostile or torn stat) names no terminal."""
    from restart.notify import controlling_terminal

    (tmp_path / "1").mkdir()
    for tty_nr, want in [("34816", "pts/0"), ("34823", "pts/7"), (str(136 << 8 | 44 | 256 << 12), "pts/300"),
                         (str(137 << 8 | 2), "pts/258"), ("1026", "tty2"), ("0", ""), ("-1", ""),
                         (str(4 << 8 | 64), ""), (str(5 << 8 | 1), ""), ("x", ""), ("99999999999999999999", "")]:
        (tmp_path / "1" / "stat").write_text(f"1 (a) b) S 0 1 1 {tty_nr} 1 0\n")
        assert controlling_terminal(tmp_path, 1) == want, tty_nr
    assert controlling_terminal(tmp_path, 2) == ""


# ---- the transaction's own processes

def _proc(tmp_path: Path, procs: dict[int, tuple[int, str, dict[str, str]]]) -> Path:
    """A /proc fixture: pid -> (ppid, exe, {fd: target}), locks in fdinfo for the lock files."""
    proc = tmp_path / "proc"
    for pid, (ppid, exe, fds) in procs.items():
        d = proc / str(pid)
        (d / "fd").mkdir(parents=True)
        (d / "fdinfo").mkdir()
        (d / "stat").write_text(f"{pid} (x) S {ppid} 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0\n")
        (d / "exe").symlink_to(exe)
        for fd, target in fds.items():
            (d / "fd" / fd).symlink_to(target)
            lock = "lock:\t1: POSIX  ADVISORY  WRITE 7 08:01:1234 0 EOF\n" if target.endswith("lock-frontend") else ""
            (d / "fdinfo" / fd).write_text(f"pos:\t0\nflags:\t02\nmnt_id:\t1\n{lock}")
    return proc


def test_the_transactions_own_processes_are_the_hooks_ancestors_up_to_the_frontend(tmp_path: Path) -> None:
    from restart import runs

    admin = Path("/var/lib/dpkg")
    # sshd -> bash -> sudo -> apt-get (holds the frontend lock) -> sh -c -> restartctl hook (pid 60)
    proc = _proc(tmp_path, {
        10: (1, "/usr/sbin/sshd", {}), 20: (10, "/usr/bin/bash", {}), 30: (20, "/usr/bin/sudo", {}),
        40: (30, "/usr/bin/apt-get", {"3": "/dev/null", "4": "/var/lib/dpkg/lock-frontend"}),
        50: (40, "/usr/bin/dash", {}), 60: (50, "/usr/bin/python3.11", {}),
    })
    assert runs.transaction_pids(proc, admin, 60) == {40, 50}  # never the admin's shell or sshd
    # An open lock file without a lock is no frontend; a plain dpkg run is its own transaction.
    (proc / "40" / "fdinfo" / "4").write_text("pos:\t0\nflags:\t02\n")
    assert runs.transaction_pids(proc, admin, 60) == frozenset()
    (proc / "30" / "exe").unlink()
    (proc / "30" / "exe").symlink_to("/usr/bin/dpkg")
    assert runs.transaction_pids(proc, admin, 60) == {30, 40, 50}


def test_unchanged_since_the_earliest_of_the_identical_copies(tmp_path: Path) -> None:
    """Two identical transactions in a row (a reinstall, then a rebuild with the same content): the
    content has been the same since the first copy's unpack; A -> B -> A is the same only since B's."""
    run, db = _tree(tmp_path)
    info, lists = db.admindir / "info", run / "lists"
    (info / "liba.list").write_text("/usr/lib/liba.so\n")
    (info / "liba.md5sums").write_text(f"{A}  usr/lib/liba.so\n")
    (lists / "liba.md5sums.old.1700000100.7").write_text(f"{A}  usr/lib/liba.so\n")
    os.utime(lists / "liba.md5sums.old.1700000100.7", (1_700_000_000, 1_700_000_000))
    (lists / "liba.md5sums").write_text(f"{A}  usr/lib/liba.so\n")
    os.utime(lists / "liba.md5sums", (1_700_000_200, 1_700_000_200))
    assert transaction.unchanged(run, db, ["liba"]) == {"/usr/lib/liba.so": 1_700_000_000}
    (lists / "liba.md5sums.old.1700000100.7").write_text(f"{B}  usr/lib/liba.so\n")
    os.utime(lists / "liba.md5sums.old.1700000100.7", (1_700_000_000, 1_700_000_000))
    assert transaction.unchanged(run, db, ["liba"]) == {"/usr/lib/liba.so": 1_700_000_200}
    (lists / "liba.md5sums").write_text("")  # a plain dpkg upgrade since: unknown
    assert transaction.unchanged(run, db, ["liba"]) == {}


def test_a_copy_equal_to_the_one_set_aside_before_it_is_removed_and_the_answer_stays(tmp_path: Path) -> None:
    """Why (issue 15): every reinstall sets one more copy aside, and each hook run read them all (twenty
    reinstalls: 12 ms).  A copy equal to the one set aside before it changes no answer: removed; a
    differing one (A -> B -> A) and the oldest of equal ones stay."""
    run, db = _tree(tmp_path)
    info, lists = db.admindir / "info", run / "lists"
    (info / "liba.list").write_text("/usr/lib/liba.so\n")
    (info / "liba.md5sums").write_text(f"{A}  usr/lib/liba.so\n")
    for when, sums in ((100, A), (200, B), (300, A), (400, A), (500, A)):
        (lists / f"liba.md5sums.old.{when}.7").write_text(f"{sums}  usr/lib/liba.so\n")
        os.utime(lists / f"liba.md5sums.old.{when}.7", (when, when))
    (lists / "liba.md5sums").write_text(f"{A}  usr/lib/liba.so\n")
    os.utime(lists / "liba.md5sums", (600, 600))
    assert transaction.unchanged(run, db, ["liba"]) == {"/usr/lib/liba.so": 300}
    assert sorted(p.name for p in lists.iterdir()) == [
        "liba.md5sums", "liba.md5sums.old.100.7", "liba.md5sums.old.200.7", "liba.md5sums.old.300.7"]
    assert transaction.unchanged(run, db, ["liba"]) == {"/usr/lib/liba.so": 300}


# The copies apt's hook keeps in lists/: one reader of their names for the lists and the checksums.
@pytest.mark.parametrize(("name", "kind", "expected"), [
    ("liba1:amd64.list", "list", ("liba1:amd64", False)),
    ("liba1:amd64.list.old.1700000000.99", "list", ("liba1:amd64", True)),
    ("liba.md5sums", "md5sums", ("liba", False)),
    ("liba.md5sums.old.1700000100.7", "md5sums", ("liba", True)),
    ("lib.list.md5sums", "md5sums", ("lib.list", False)),  # the last ".KIND" ends the name
    ("liba.md5sums.new", "md5sums", None),  # the hook's copy being written
    ("liba.md5sums.old.garbage", "md5sums", None),  # not what mv --backup --suffix=.old.<epoch>.<pid> makes
    ("liba.md5sums.old.1700000100", "md5sums", None),
    ("liba.md5sums.old.1700000100.7.x", "md5sums", None),
    ("liba.md5sums", "list", None),
    (".list", "list", None),
])
def test_a_kept_copy_is_named_by_one_reader(name: str, kind: str, expected: tuple[str, bool] | None) -> None:
    assert transaction.kept_copy(name, kind) == expected


def test_only_what_the_hook_set_aside_counts_as_an_earlier_copy(tmp_path: Path) -> None:
    """A name that is not ``.old.<epoch>.<pid>`` is no earlier transaction's checksums (``unchanged``
    read any ``.old.`` suffix as one, ``old_files`` only the hook's): it extends no "unchanged since"."""
    run, db = _tree(tmp_path)
    lists = run / "lists"

    def copy(path: Path, when: int) -> None:
        path.write_text(f"{A}  usr/lib/liba.so\n")  # the same content as this version's, in every copy
        os.utime(path, (when, when))

    (db.admindir / "info" / "liba.list").write_text("/usr/lib/liba.so\n")
    copy(db.admindir / "info" / "liba.md5sums", 1_700_000_300)
    copy(lists / "liba.md5sums", 1_700_000_200)
    copy(lists / "liba.md5sums.old.planted", 1_600_000_000)
    assert transaction.unchanged(run, db, ["liba"]) == {"/usr/lib/liba.so": 1_700_000_200}
    copy(lists / "liba.md5sums.old.1700000100.7", 1_700_000_000)
    assert transaction.unchanged(run, db, ["liba"]) == {"/usr/lib/liba.so": 1_700_000_000}
    # old_files: this transaction's list answers; the ones set aside are removed, the planted name left alone
    (lists / "liba.list").write_text("/usr/lib/liba.so.0\n")
    (lists / "liba.list.old.1700000100.7").write_text("/usr/lib/liba.so.old\n")
    (lists / "liba.list.old.planted").write_text("/usr/lib/liba.so.planted\n")
    assert transaction.old_files(run, frozenset({"liba"}), frozenset()) == {"/usr/lib/liba.so.0": "liba"}
    assert sorted(p.name for p in lists.glob("liba.list*")) == ["liba.list", "liba.list.old.planted"]
