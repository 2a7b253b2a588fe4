"""Adversarial inputs a kernel will not produce on demand, through the whole CLI over fixture hosts.

Why fixtures: PID reuse between two reads, an exe swapped mid-scan, a cgroup file with a forged
line, 10,000 processes or 100,000 mappings cannot be ordered from a real kernel at will.  Each
test runs ``restartctl plan --json`` (in-process, ``restart.cli.main``) over a fixture /proc, dpkg
database and root, and checks: no exception, exit code 0 or 1, no command on a unit the process
does not belong to, and nothing unprintable in the text report.  The real-process counterparts
are in test_security.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import TraceFunction

import pytest

import restart.processes
import restart.procfs
from restart import notify, policy, state
from restart.cli import main
from restart.packages import DpkgDatabase
from restart.processes import Confidence, Evidence, FileKind, ProcessInfo, Selection, StaleFile, scan
from restart.procfs import ProcessGone
from restart.units import SESSION, Affected, OwnedFile, Unit, UnitGroup, valid_unit_name
from tests.fakeproc import FakeProcess, build, ino, map_line, rootfs

REPO = Path(__file__).resolve().parent.parent
LIB = "/usr/lib/x86_64-linux-gnu/libdemo.so.1"
EXE = "/usr/sbin/demod"
MALLORY = 1000
USER_CG = f"/user.slice/user-{MALLORY}.slice/user@{MALLORY}.service"
LINE_BREAKS = {"LF": "\n", "CR": "\r", "VT": "\x0b", "FF": "\x0c", "FS": "\x1c", "GS": "\x1d", "RS": "\x1e",
               "NEL": "\x85", "LS": "\u2028", "PS": "\u2029"}


class Host:
    """A fixture host: merged-/usr root, a dpkg database (libdemo1, demod) and a fake /proc."""

    def __init__(self, base: Path, *, systemd: bool = True) -> None:
        self.base = base
        self.root = rootfs(base / "root", {LIB: b"v2", EXE: b"bin", "/etc/init.d/demod": b"#!/bin/sh\n"})
        for name in ("bin", "sbin", "lib"):
            (self.root / "usr" / name).mkdir(parents=True, exist_ok=True)
            (self.root / name).symlink_to(f"usr/{name}")
        self.info = base / "admin" / "info"
        self.info.mkdir(parents=True)
        self.add_package("libdemo1:amd64", ["/lib", "/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu/libdemo.so.1"])
        self.add_package("demod", [EXE, "/etc/init.d/demod"])
        (base / "run").mkdir()
        if systemd:
            (base / "run" / "systemd" / "system").mkdir(parents=True)
        self.processes: list[FakeProcess] = []
        self.cgroups: dict[int, bytes] = {}  # written as bytes: names need not be UTF-8

    def add_package(self, name: str, paths: list[str]) -> None:
        (self.info / f"{name}.list").write_bytes(b"/.\n" + b"".join(os.fsencode(p) + b"\n" for p in paths))

    def stale_maps(self) -> bytes:
        """The package library, replaced: every process below is stale because of it."""
        return map_line(LIB, ino(self.root, LIB) + 1)

    def add(self, pid: int, cgroup: str, *, uid: int = MALLORY, maps: bytes | None = None, **kw: Any) -> None:
        self.cgroups[pid] = f"1:name=systemd:{cgroup}\n0::{cgroup}\n".encode("utf-8", "surrogateescape")
        self.processes.append(FakeProcess(pid, self.stale_maps() if maps is None else maps, uid=uid,
                                          cgroup="", root=self.root, **kw))

    def argv(self, *args: str) -> list[str]:
        proc = self.base / "proc"
        if not proc.exists():
            build(proc, self.processes)
            for pid, text in self.cgroups.items():
                (proc / str(pid) / "cgroup").write_bytes(text)
        return [*args, "--proc", str(proc), "--root", str(self.root), "--admindir", str(self.base / "admin"),
                "--run", str(self.base / "run"), "--etc", str(self.root / "etc")]

    def run(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
        code = main(self.argv(*args))
        captured = capsys.readouterr()
        assert code in (0, 1), (code, captured.err)
        assert captured.err == "", captured.err
        return code, captured.out

    def plan(self, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
        """``plan --json`` and ``plan`` (text): both must succeed; the text must be terminal-safe."""
        _, out = self.run(capsys, "plan", "--json", *extra)
        assert out.isascii()  # JSON escapes everything else
        doc: dict[str, Any] = json.loads(out)
        _, text = self.run(capsys, "plan", *extra)
        assert_terminal_safe(text)
        return doc


def assert_terminal_safe(text: str) -> None:
    bad = {c for c in text if c != "\n" and c != " " and unicodedata.category(c)[0] in "CZ"}
    assert not bad, sorted(map(ascii, bad))


def user_scoped(argv: list[str] | None, uid: int) -> bool:
    return argv is None or argv[1:4] == ["--user", "-M", f"{uid}@"]


def assert_users_processes_stay_theirs(doc: dict[str, Any], uid: int = MALLORY) -> None:
    """Every process of ``uid`` is classified as that user's, and no system command touches it."""
    mine = {p["pid"] for p in doc["processes"] + doc.get("unowned", []) if p["uid"] == uid}
    for p in doc["processes"] + doc.get("unowned", []):
        if p["pid"] in mine:
            assert (p["unit"]["kind"], p["unit"]["uid"]) in (("user", uid), ("user-manager", uid)), p
    for a in doc["actions"]:
        if mine & set(a["pids"]):
            assert a["kind"] in ("user", "user-manager") and a["uid"] == uid, a
            assert user_scoped(a["argv"], uid) and user_scoped(a["suggested"], uid), a


def assert_argvs_well_formed(doc: dict[str, Any]) -> None:
    for a in doc["actions"]:
        for argv in (a["argv"], a["suggested"]):
            if argv is None:
                continue
            assert argv[0] in ("systemctl", "invoke-rc.d"), a
            if argv[0] == "systemctl" and "--" in argv:
                assert all(valid_unit_name(n) for n in argv[argv.index("--") + 1:]), a


# ---------------------------------------------------------------------------------- forged cgroups

@pytest.mark.parametrize("sep", list(LINE_BREAKS.values()), ids=list(LINE_BREAKS))
def test_line_break_in_a_users_cgroup_name_cannot_forge_a_system_unit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], sep: str) -> None:
    """Why: a delegated subtree belongs to its user whatever its names contain.  (Found by this suite:
    cgroup_path() used str.splitlines(), which also ends lines at \\r, \\v, U+2028..., so a name like
    'a<CR>0::victim.service' forged a last '0::' line: 'systemctl restart -- victim.service'.)"""
    host = Host(tmp_path)
    host.add(10, f"{USER_CG}/app.slice/a{sep}0::rctl-victim.service")
    host.add(11, f"{USER_CG}/app.slice/b{sep}0::init.scope")
    host.add(12, "/system.slice/demod.service", uid=0)  # a real system service, for contrast
    doc = host.plan(capsys)
    assert [a["argv"] for a in doc["actions"] if a["argv"] and "--user" not in a["argv"]] == [
        ["systemctl", "restart", "--", "demod.service"]]
    assert_users_processes_stay_theirs(doc)


HOSTILE_UNIT_NAMES = [
    "$(touch /tmp/pwned).service", "`reboot`.service", "a;reboot.service", "a b.service", "a|b.service",
    "a&b.service", "a>b.service", "*.service", "?.service", "[ab].service", "a\x1b[2J.service", "a\tb.service",
    "\u202egnp.service", "é.service", "\udcff\udcfe.service", "foo@.service", "@foo.service", ".service",
    "foo", "foo.bogus", "x" * 256 + ".service", "foo.service.", "foo\\.service\x00",
]
ODD_BUT_VALID = ["-.service", "--help.service", "-M.service", "a:b.service", "foo@bar@baz.service",
                 "x" * 247 + ".service", "foo\\x2dbar.service"]


def test_invalid_or_shell_unit_names_never_reach_an_argv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Why: a name that is not systemd's grammar is reported, never put on a command line."""
    host = Host(tmp_path)
    pid = 100
    for name in HOSTILE_UNIT_NAMES + ODD_BUT_VALID:
        host.add(pid, f"/system.slice/{name}", uid=0)
        host.add(pid + 1, f"{USER_CG}/app.slice/{name}")
        host.add(pid + 2, f"/system.slice/system-x.slice/{name}/sub/{name}", uid=0)
        pid += 3
    doc = host.plan(capsys)
    assert_argvs_well_formed(doc)
    assert_users_processes_stay_theirs(doc)
    words = [w for a in doc["actions"] for w in (a["argv"] or []) + (a["suggested"] or [])]
    for name in HOSTILE_UNIT_NAMES:
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        assert shown not in words, name
    by_name = {(a["unit"], a["kind"]): a for a in doc["actions"]}
    for name in ODD_BUT_VALID:  # valid names are acted on, always after "--"
        assert by_name[(name, "system")]["argv"] == ["systemctl", "restart", "--", name]
    for name in HOSTILE_UNIT_NAMES:
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        if (shown, "system") in by_name:
            assert by_name[(shown, "system")]["argv"] is None


def test_forged_names_below_a_user_manager(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Why: below user@UID.service a user may mimic any system path; it all stays theirs."""
    host = Host(tmp_path)
    forged = ["system.slice/sshd.service", "app.slice/sshd.service", "user.slice/user-0.slice/session-1.scope",
              "app.slice/init.scope", "init.scope", "init.scope/dbus.service", "app.slice/user@0.service",
              "user@0.service/init.scope", "machine.slice/machine-prod.scope",
              "machine.slice/systemd-nspawn@db.service/payload", "app.slice", "-.slice/x.service",
              "system.slice/system-getty.slice/getty@tty1.service"]
    for pid, rel in enumerate(forged, 100):
        host.add(pid, f"{USER_CG}/{rel}")
    doc = host.plan(capsys)
    assert {p["pid"] for p in doc["processes"]} == set(range(100, 100 + len(forged)))
    assert_users_processes_stay_theirs(doc)


def test_a_users_own_pid_namespace_stays_the_users(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Why: the owner of a delegated subtree must not be able to pass as a machine of the host (found by
    this suite: a child PID namespace used to win over the cgroup: kind 'container', uid None, 'prod')."""
    host = Host(tmp_path)
    host.add(100, f"{USER_CG}/machine.slice/machine-prod.scope", nspid=(100, 1), pidns="pid:[4026532999]")
    [p] = host.plan(capsys)["processes"]
    assert p["unit"]["uid"] == MALLORY and p["unit"]["name"] != "prod"


# ---------------------------------------------------------------------------------- races

@contextmanager
def after_reading(name: str, pid_dir: Path, action: Callable[[], None]) -> Iterator[None]:
    """Run ``action`` right after the scanner read ``name`` of the process in ``pid_dir``."""
    real, real_lines = restart.procfs.read_proc, restart.procfs.read_lines
    target = os.stat(pid_dir).st_ino

    def spy(dfd: int, what: str) -> bytes:
        data = real(dfd, what)
        if what == name and os.fstat(dfd).st_ino == target:
            action()
        return data

    def spy_lines(dfd: int, what: str, budget: restart.procfs.Budget,
                  split: Callable[[bytes], list[bytes]]) -> Iterator[tuple[bytes, list[bytes]]]:
        yield from real_lines(dfd, what, budget, split)
        if what == name and os.fstat(dfd).st_ino == target:
            action()

    restart.procfs.read_proc = spy  # type: ignore[assignment]
    restart.procfs.read_lines = spy_lines  # type: ignore[assignment]
    try:
        yield
    finally:
        restart.procfs.read_proc, restart.procfs.read_lines = real, real_lines


def test_pid_reuse_mid_scan_never_mixes_two_processes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Why: the PID of a user's process may be reused by a root daemon between two reads; the facts
    (uid, cgroup) must all come from the process whose maps were read."""
    host = Host(tmp_path)
    host.add(10, f"{USER_CG}/app.slice/x.service", name="mallory-thing")
    argv = host.argv("plan", "--json")
    proc = tmp_path / "proc"
    newcomer = tmp_path / "newcomer"
    build(newcomer, [FakeProcess(10, host.stale_maps(), uid=0, name="sshd", cgroup="0::/system.slice/ssh.service\n",
                                 root=host.root)])

    def reuse() -> None:
        (proc / "10").rename(proc / "10.exited")
        (newcomer / "10").rename(proc / "10")

    with after_reading("maps", proc / "10", reuse):
        code = main(argv)
    doc = json.loads(capsys.readouterr().out)
    assert code == 1
    [p] = doc["processes"]
    assert (p["pid"], p["uid"], p["comm"], p["unit"]["name"]) == (10, MALLORY, "mallory-thing", "x.service")
    assert_users_processes_stay_theirs(doc)


def test_process_exiting_mid_scan_is_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Why: processes exit while we read them; that is counted, never fatal."""
    host = Host(tmp_path)
    host.add(10, f"{USER_CG}/app.slice/x.service")
    host.add(11, "/system.slice/demod.service", uid=0)
    argv = host.argv("plan", "--json")
    proc = tmp_path / "proc"
    with after_reading("maps", proc / "10", lambda: shutil.rmtree(proc / "10")):
        code = main(argv)
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and doc["stats"]["vanished"] == 1
    assert [p["pid"] for p in doc["processes"]] == [11]


def test_exe_swapped_mid_scan_does_not_change_the_unit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Why: a process can exec (even a setuid program) between our reads; its unit comes from the cgroup,
    which exec does not change, and its exe is only reported, never run or trusted."""
    host = Host(tmp_path)
    host.add(10, f"{USER_CG}/app.slice/x.service", exe="/home/mallory/sshd")
    argv = host.argv("plan", "--json")
    d = tmp_path / "proc" / "10"

    def exec_setuid() -> None:
        (d / "exe").unlink()
        (d / "exe").symlink_to("/usr/sbin/sshd (deleted)")
        (d / "status").write_bytes(b"Name:\tsshd\nPPid:\t1\nUid:\t1000\t0\t0\t0\nNSpid:\t10\n")

    with after_reading("maps", d, exec_setuid):
        code = main(argv)
    doc = json.loads(capsys.readouterr().out)
    assert code == 1
    assert_users_processes_stay_theirs(doc)


def test_a_dead_process_directory_cannot_be_read_again() -> None:
    """Why (real kernel): once a process is gone, its /proc/PID handle only yields errors, so a new
    process that gets the same PID can never answer for it."""
    child = subprocess.Popen(["/usr/bin/sleep", "60"])
    dfd = os.open(f"/proc/{child.pid}", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert restart.procfs.read_proc(dfd, "cgroup")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        for name in ("maps", "status", "cgroup"):
            with pytest.raises(ProcessGone):
                restart.procfs.read_proc(dfd, name)
    finally:
        os.close(dfd)
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)


# ---------------------------------------------------------------------------------- names and paths

HOSTILE_FILE_NAMES = [
    b"/opt/with space/lib x.so", b"/opt/new\\012line.so", b"/opt/ctrl\x01\x07\x1b[2J\x1b]0;pwned\x07.so",
    b"/opt/\xff\xfe\x80.so", b"/opt/lit.so (deleted)", b"/opt/twice.so (deleted) (deleted)",
    b"/opt/$(touch x).so", b"/opt/`id`;reboot.so", b"/opt/\xe2\x80\xaegnp.so", b"/opt/\xc2\x85nel.so",
    b"/opt/-rf.so", b"/opt/" + b"d" * 250 + b"/" + b"e" * 250 + b".so",
    b"/" + b"/".join([b"p" * 200] * 20),  # ~4 KiB: near PATH_MAX
]


def test_hostile_file_names_are_reported_safely(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Why: file names are arbitrary bytes; reports must escape them and no lookup may choke on them."""
    host = Host(tmp_path)
    maps = host.stale_maps() + b"".join(map_line(n, 1000 + i) for i, n in enumerate(HOSTILE_FILE_NAMES))
    host.add(10, f"{USER_CG}/app.slice/x.service", maps=maps, name="\x1b]0;owned\x07")
    host.add(11, "/system.slice/demod.service", uid=0, maps=maps)
    doc = host.plan(capsys, "--all")
    [unowned] = [p for p in doc["unowned"] if p["pid"] == 10]
    assert len(unowned["stale"]) >= len(HOSTILE_FILE_NAMES) - 1  # near-PATH_MAX may be unlookable
    assert_users_processes_stay_theirs(doc)
    assert_argvs_well_formed(doc)


def test_symlinks_into_other_users_files_are_only_stat(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Why: a mapped path may now be a symlink to a FIFO, a device or a loop; restartctl only stats it
    (opening the FIFO would hang the run; the test would not finish)."""
    host = Host(tmp_path)
    other = tmp_path / "root" / "home" / "alice"
    other.mkdir(parents=True)
    os.mkfifo(other / "fifo")
    links = {"/opt/to-fifo.so": other / "fifo", "/opt/loop.so": Path("/opt/loop.so"),
             "/opt/to-dev.so": Path("/dev/zero")}
    for name, target in links.items():
        (host.root / name.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (host.root / name.lstrip("/")).symlink_to(target)
    maps = host.stale_maps() + b"".join(map_line(n + " (deleted)", 77) for n in links)
    host.add(10, f"{USER_CG}/app.slice/x.service", maps=maps)
    doc = host.plan(capsys, "--all")
    assert_users_processes_stay_theirs(doc)


# ---------------------------------------------------------------------------------- bugs in attribution

def test_without_systemd_a_users_process_never_restarts_a_system_service(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Why: a user must not be able to make root (re)start a system service (the needrestart
    'ssh client mapped to ssh.service, started a disabled sshd' failure).  Found by this suite: any process
    whose exe was a package's daemon, or merely named like an /etc/init.d script, got 'invoke-rc.d NAME
    restart', which the executor ran without even an is-active check."""
    host = Host(tmp_path, systemd=False)
    host.add(10, "/", exe=EXE)                              # the package's daemon, run by the user
    host.add(11, "/", exe="/home/mallory/bin/demod")        # the user's own binary, named like the script
    doc = host.plan(capsys)
    assert [a for a in doc["actions"] if a["argv"] is not None] == []


def test_a_path_with_a_newline_is_never_a_package_file(tmp_path: Path) -> None:
    """Why: attribution decides what gets acted on; a user-chosen name must not borrow a package (found by
    this suite: a b'\\n' + path + b'\\n' search matched two consecutive .list lines)."""
    host = Host(tmp_path)
    host.add_package("victim", ["/usr/lib/a", "/usr/lib/b"])
    db = DpkgDatabase(tmp_path / "admin", host.root)
    assert db.owners(["/usr/lib/a\n/usr/lib/b"]) == {}


def test_scan_survives_a_maps_device_no_kernel_writes(tmp_path: Path) -> None:
    """Why: one odd process must never end the scan of all the others (found by this suite: os.makedev()
    raised OverflowError, which nothing caught)."""
    host = Host(tmp_path)
    maps = map_line("/usr/lib/x.so", 5, dev="fffffffffffffffff:01")
    build(tmp_path / "proc", [FakeProcess(10, maps, root=host.root),
                              FakeProcess(11, host.stale_maps(), root=host.root)])
    result = scan(tmp_path / "proc", Selection())
    assert 11 in [p.pid for p in result.processes] and result.scanned == 2


def test_terminal_notifications_escape_process_names(tmp_path: Path) -> None:
    """Why: everything restartctl writes to a terminal has control characters escaped; a notice goes to
    the session owner's tty, and the names in it belong to whatever processes ran in that session (found
    by this suite: notify() wrote them raw)."""
    master, slave = os.openpty()
    try:
        tty = os.ttyname(slave)
        os.chown(tty, MALLORY, -1)  # the session owner's terminal
        sessions = tmp_path / "systemd" / "sessions"
        sessions.mkdir(parents=True)
        (sessions / "7").write_text(f"UID={MALLORY}\nUSER=bob\nTTY={tty.removeprefix('/dev/')}\n")
        stale = StaleFile(FileKind.CODE, LIB, Confidence.CERTAIN, Evidence.REPLACED)
        intruder = ProcessInfo(10, 1, 2000, "x\x1b]0;pwned\x07", "/home/eve/x", "", None, (stale,))
        unit = Unit(SESSION, "session-7.scope", MALLORY)
        group = UnitGroup(SESSION, "session-7.scope", MALLORY, False, True, (10,), ("libdemo1:amd64",),
                          (Affected(intruder, unit, (OwnedFile(stale, "libdemo1:amd64"),), ()),))
        assert notify.notify([group], tmp_path, lambda line: None, tmp_path / "no-applications") == 1
        os.set_blocking(master, False)
        written = b""
        with contextlib.suppress(BlockingIOError):  # all of it is in the pty's buffer already
            while chunk := os.read(master, 4096):
                written += chunk
        assert b"restartctl" in written
        assert b"\x1b" not in written and b"\x07" not in written, written
    finally:
        os.close(slave)
        os.close(master)


# ---------------------------------------------------------------------------------- root's own files

@pytest.mark.parametrize("make", ["world-writable", "group-writable", "user-owned", "symlink"])
def test_state_goes_only_into_a_directory_only_root_can_write(tmp_path: Path, make: str) -> None:
    """Why: /var/lib/restartctl decides what later runs treat as pending; a directory someone else can
    write (or a symlink to one) would let them plant or redirect it."""
    d = tmp_path / "state"
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    if make == "symlink":
        d.symlink_to(real)
    else:
        d.mkdir(mode=0o755)
        os.chmod(d, {"world-writable": 0o777, "group-writable": 0o775, "user-owned": 0o755}[make])
        if make == "user-owned":
            os.chown(d, MALLORY, MALLORY)
    with pytest.raises(OSError):
        state.write_json(d, state.PENDING, {"schema": state.STATE_SCHEMA})
    assert state.read_json(d, state.PENDING) is None
    assert os.listdir(real) == []


def test_state_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    """Why: a symlink at the state file's name must be replaced, never written through or read through."""
    d = tmp_path / "state"
    d.mkdir(mode=0o755)
    victim = tmp_path / "shadow"
    victim.write_text("root:secret\n")
    (d / state.PENDING).symlink_to(victim)
    assert state.read_json(d, state.PENDING) is None
    state.write_json(d, state.PENDING, {"schema": state.STATE_SCHEMA, "packages": []})
    assert victim.read_text() == "root:secret\n"
    assert not (d / state.PENDING).is_symlink()
    assert state.read_json(d, state.PENDING) == {"schema": state.STATE_SCHEMA, "packages": []}


@pytest.mark.parametrize("make", ["symlink", "fifo", "user-owned", "group-writable", "world-writable"])
def test_a_policy_file_others_could_write_is_refused(tmp_path: Path, make: str) -> None:
    """Why: the policy decides what root restarts (and may name a command to run): data only root wrote."""
    good = tmp_path / "vendor.toml"
    good.write_text('[[rule]]\nunit = "*"\naction = "ignore"\n')
    path = tmp_path / "policy.toml"
    if make == "symlink":
        path.symlink_to(good)
    elif make == "fifo":
        os.mkfifo(path, 0o644)
    else:
        path.write_text('[[rule]]\nunit = "*"\nexec = ["/tmp/evil"]\n')
        os.chmod(path, {"user-owned": 0o644, "group-writable": 0o664, "world-writable": 0o666}[make])
        if make == "user-owned":
            os.chown(path, MALLORY, MALLORY)
    with pytest.raises(policy.PolicyError):
        policy.load([path, good])


# ---------------------------------------------------------------------------------- size

@pytest.fixture
def fast_tmp(tmp_path: Path) -> Iterator[Path]:
    """A scratch directory on tmpfs when there is one: 10,000 fixture processes are ~100,000 inodes,
    which a busy disk makes slow (and the suite must stay fast); else pytest's own tmp_path."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="rctl-sec-", dir=shm))
    try:
        yield d
    finally:
        shutil.rmtree(d)


def test_one_hundred_thousand_mappings(fast_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Why: a process can map ~65,000 files (vm.max_map_count); a scan must finish, whatever they are."""
    host = Host(fast_tmp)
    maps = host.stale_maps() + b"".join(map_line(f"/opt/big/f{i}", 10 + i, start=0x10000 * (i + 1))
                                        for i in range(100_000))
    host.add(10, f"{USER_CG}/app.slice/x.service", maps=maps)
    code, out = host.run(capsys, "plan", "--json", "--all")
    doc = json.loads(out)
    assert code == 1 and len(doc["unowned"][0]["stale"]) == 100_000
    assert_users_processes_stay_theirs(doc)


def test_ten_thousand_processes(fast_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Why: big hosts and fork bombs; every process is looked at once and classified."""
    host = Host(fast_tmp)
    for i in range(10_000):
        cg = f"{USER_CG}/app.slice/u{i // 2 % 100}.service" if i % 2 else f"/system.slice/s{i // 2 % 100}.service"
        host.add(100 + i, cg, uid=MALLORY if i % 2 else 0,
                 maps=host.stale_maps() + map_line(f"/opt/p/{i}.so", 5))
    code, out = host.run(capsys, "plan", "--json")
    doc = json.loads(out)
    assert code == 1 and doc["stats"]["scanned"] == 10_000 and len(doc["processes"]) == 10_000
    assert len(doc["actions"]) == 200
    assert_users_processes_stay_theirs(doc)


class LineCounter:
    """Counts executed lines of restartctl's own code: a measure of work that is not a clock."""

    def __init__(self) -> None:
        self.lines = 0
        self.prefix = str(REPO / "restart") + os.sep

    def _local(self, frame: FrameType, event: str, arg: Any) -> TraceFunction:
        if event == "line":
            self.lines += 1
        return self._local

    def _global(self, frame: FrameType, event: str, arg: Any) -> TraceFunction | None:
        return self._local if frame.f_code.co_filename.startswith(self.prefix) else None

    @contextmanager
    def counting(self) -> Iterator[None]:
        sys.settrace(self._global)
        try:
            yield
        finally:
            sys.settrace(None)


def pipeline_work(base: Path, n: int, capsys: pytest.CaptureFixture[str]) -> int:
    """Lines executed by ``plan --json`` for n processes in n/5 units, 5n stale paths of one package."""
    host = Host(base)
    host.add_package("big", [f"/usr/share/big/f{i}" for i in range(5 * n)])
    for i in range(n):
        maps = host.stale_maps() + b"".join(map_line(f"/usr/share/big/f{5 * i + k}", 9) for k in range(5))
        host.add(100 + i, f"/system.slice/s{i // 5}.service", uid=0, maps=maps)
    argv = host.argv("plan", "--json", "--packages", "big", "libdemo1")
    counter = LineCounter()
    with counter.counting():
        code = main(argv)
    out = capsys.readouterr().out
    assert code == 1 and len(json.loads(out)["processes"]) == n
    return counter.lines


def test_work_grows_linearly_with_the_number_of_processes(fast_tmp: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: no stage may be quadratic in what users control (processes, mappings, units)."""
    monkeypatch.setattr(restart.processes, "PARALLEL_MIN", 10**9)  # all the work in this process, where it is counted
    small = pipeline_work(fast_tmp / "n", 150, capsys)
    large = pipeline_work(fast_tmp / "2n", 300, capsys)
    assert large <= 2.2 * small, (small, large)


def owner_lookup_work(base: Path, n: int) -> int:
    """Lines executed to find the owners of n stale paths no package owns, among n/4 packages."""
    host = Host(base)
    for k in range(n // 4):
        host.add_package(f"pkg{k}", [f"/usr/share/pkg{k}/file{j}" for j in range(20)])
    db = DpkgDatabase(base / "admin", host.root)
    counter = LineCounter()
    with counter.counting():
        assert db.owners([f"/opt/mine/{i}" for i in range(n)]) == {}
    return counter.lines


def test_owner_lookup_is_linear(tmp_path: Path) -> None:
    """Why: the number of stale paths is attacker-controlled; the lookup must not multiply it by the database
    (found by this suite: one substring search per path and .list file, ~3 ms per unowned path against a
    723-package database, so a user's 65,000 mapped files stalled scan/plan/apply for minutes)."""
    small = owner_lookup_work(tmp_path / "n", 200)
    large = owner_lookup_work(tmp_path / "2n", 400)
    assert large <= 2.5 * small, (small, large)


def test_a_transaction_reads_only_its_own_packages_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: the hook attributes from the lists of the packages the transaction changed; reading the whole
    dpkg database (135,000 lines on a real host) would cost it more than everything else it does."""
    host = Host(tmp_path)
    for k in range(40):
        host.add_package(f"other{k}", [f"/usr/share/other{k}/file"])
    host.add(100, "/system.slice/demod.service", uid=0)
    read: list[str] = []
    real_read, real_package = DpkgDatabase._read_list, DpkgDatabase.package_list

    def spy_read(self: DpkgDatabase, name: str) -> bytes:
        read.append(name)
        return real_read(self, name)

    def spy_package(self: DpkgDatabase, package: str) -> bytes:
        read.append(package)
        return real_package(self, package)

    monkeypatch.setattr(DpkgDatabase, "_read_list", spy_read)
    monkeypatch.setattr(DpkgDatabase, "package_list", spy_package)
    _, out = host.run(capsys, "scan", "--json", "--packages", "libdemo1")
    assert [p["pid"] for p in json.loads(out)["processes"]] == [100]
    assert set(read) == {"libdemo1:amd64"}
