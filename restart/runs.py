"""The runs that act, and the transaction they follow: who else is at work.

The one lock every acting run holds (``/run/restartctl/lock``, which names its holder); a process
named for good (PID and start time); the unattended-upgrade run a deferred run waits for; and the
processes that run this very package transaction, which are its means, not its findings.  Between
what is remembered (state) and the runs that act (apply, hook, cli).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path

from restart import NamedTuple, state
from restart.procfs import STARTTIME, lineage, stat_field
from restart.roots import Roots
from restart.text import printable


class Process(NamedTuple):
    pid: int
    start: int  # start time in clock ticks since boot: with the PID, names one process for good


def process_start(proc: Path, pid: int) -> int | None:
    return stat_field(proc, pid, STARTTIME)


def waiting_for(roots: Roots) -> tuple[Process, int] | None:
    """The unattended-upgrade run a deferred run still waits for, and since when (for ``status``)."""
    record = state.read_json(roots.state, state.WAITING)
    after = record.get("after") if record and record.get("boot_id") == state.boot_id(roots.proc) else None
    if not (isinstance(after, list) and len(after) == 2 and all(type(n) is int for n in after)):
        return None
    uu = Process(after[0], after[1])
    return (uu, record.get("time", 0)) if record and process_start(roots.proc, uu.pid) == uu.start else None


DPKG = "/usr/bin/dpkg"
DPKG_LOCKS = ("lock-frontend", "lock")


def _holds_dpkg_lock(proc: Path, pid: int, locks: tuple[str, ...]) -> bool:
    """Does the process hold a lock on one of dpkg's lock files (a frontend: apt, aptd, packagekitd)?

    An open descriptor on the file whose ``fdinfo`` lists a lock; only the process's own
    descriptors are looked at, never ``/proc/locks`` (whose device numbers differ on overlays).
    """
    fds = proc / str(pid) / "fd"
    try:
        names = os.listdir(fds)
    except OSError:
        return False
    for name in names[:4096]:
        try:
            if os.readlink(fds / name) not in locks:
                continue
            info = (proc / str(pid) / "fdinfo" / name).read_bytes()
        except OSError:
            continue
        if b"\nlock:" in info:
            return True
    return False


def transaction_pids(proc: Path, admindir: Path, pid: int) -> frozenset[int]:
    """The processes that run this package transaction: they are its means, not its findings.

    The hook's ancestors up to the outermost one that holds dpkg's frontend lock or
    database lock (apt-get, apt, unattended-upgrade, aptd, packagekitd, a python-apt
    script) or is dpkg itself (a plain ``dpkg -i`` has unlocked when its post-invoke
    hook runs), with the shells between.  Nothing when no ancestor is (a run by hand).
    """
    locks = tuple(str(admindir / name) for name in DPKG_LOCKS)
    chain: list[int] = []
    outermost = 0
    for current in list(lineage(proc, pid))[1:]:
        if current == 1:
            break
        chain.append(current)
        try:
            exe = os.readlink(proc / str(current) / "exe")
        except OSError:
            exe = ""
        if exe == DPKG or _holds_dpkg_lock(proc, current, locks):
            outermost = len(chain)
    return frozenset(chain[:outermost])


LOCK = "lock"  # in /run/restartctl: held by every run that acts (hook, apply)


class Lock(NamedTuple):
    """Whether this run holds the lock, and if not, which run does (as that run wrote it)."""

    held: bool
    holder: str


@contextmanager
def locked(path: Path, timeout: float, *, who: str = "restartctl",
           waiting: Callable[[str], None] | None = None) -> Iterator[Lock]:
    """An exclusive lock on ``path``, waited for at most ``timeout`` seconds.

    The holder writes its PID and command into the file, so that a run that cannot get
    the lock can say which run has it (``waiting`` is told once, when the wait begins).
    The lock itself is the ``flock``: it ends with the holder, however the holder ends.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield Lock(False, holder(fd))
                    return
                if waiting is not None:
                    waiting(holder(fd))
                    waiting = None
                time.sleep(0.05)
        with suppress(OSError):  # who holds it is a courtesy: a full /run must not stop the run
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {who}\n".encode(), 0)
        yield Lock(True, "")
    finally:
        os.close(fd)


def holder(fd: int) -> str:
    """``pid N (command)`` from the lock file, printable; "another run" when it says nothing usable."""
    pid, _, who = os.pread(fd, 128, 0).decode("ascii", "replace").strip().partition(" ")
    return f"pid {pid} ({printable(who[:32])})" if pid.isdigit() else "another run"


def run_lock(roots: Roots, timeout: float, *, who: str,
             waiting: Callable[[str], None] | None = None) -> AbstractContextManager[Lock]:
    """The one lock of every command that acts, in ``/run/restartctl`` (created root-only if missing)."""
    rundir = roots.run / "restartctl"
    if not state.usable_dir(rundir, create=True):  # checked before the lock is taken in it
        raise OSError(f"{rundir}: not a directory only root can write (a symlink, or group or world writable); "
                      "nothing is done and the transaction stays pending")
    return locked(rundir / LOCK, timeout, who=who, waiting=waiting)
