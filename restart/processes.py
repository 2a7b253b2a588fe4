"""Stage 2, processes: which running processes still use replaced files, decided by inode.

For each process we open ``/proc/PID`` once and read everything else relative to
that directory descriptor, so a PID that is reused mid-scan can never mix two
processes' facts.  Each fact is read once.  A mapping is stale when the file now
at its path, seen from the process's own root, is missing or is another inode;
the kernel's `` (deleted)`` text is only a hint for which path to look at.

Most of a host is clean, and the ``maps`` lines of processes mapping the same file
differ only before the device, inode and path, so each distinct (device, inode, path)
is judged once per scan; a process whose every line is already known fresh costs its
reads and a dictionary lookup per line.  Open files are judged only when they are regular
files not found in place, and only a process whose ``maps`` shows an interpreter's
directory is handed to stage 2b.
Only processes with a stale file get their status, cgroup and exe read.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

from restart import procfs
from restart.packages import canonical, fs_decode


class FileKind(StrEnum):
    """How a process uses a stale file (``stale[].kind`` in the JSON)."""

    EXE = "exe"        # its executable
    CODE = "code"      # an executable mapping (a library)
    DATA = "data"      # any other mapping
    FD = "fd"          # an open file
    SCRIPT = "script"  # an interpreter's script (stage 2b)
    MODULE = "module"  # a file on an interpreter's search path (stage 2b)


class Confidence(StrEnum):
    CERTAIN = "certain"  # proven by inode
    LIKELY = "likely"    # only a hint (the kernel's text, times, dependencies)


class Evidence(StrEnum):
    """Why a file counts as stale (``stale[].evidence``)."""

    REPLACED = "replaced"          # another inode at the path
    MISSING = "missing"            # no file at the path
    UNLINKED = "unlinked"          # an open file with no links left
    DELETED_HINT = "deleted-hint"  # only the kernel's " (deleted)" text
    NEWER = "newer"                # a script's inode changed after the process started (stage 2b)
    DEPENDS = "depends"            # a changed module package in the script package's dependencies (2b)
    IMPORTS = "imports"            # a changed module package the script's own imports name (2b)
    SEARCH_PATH = "search-path"    # a changed module package on the search path, imports unknown (2b)


EXE, CODE, DATA, FD = FileKind.EXE, FileKind.CODE, FileKind.DATA, FileKind.FD
CERTAIN, LIKELY = Confidence.CERTAIN, Confidence.LIKELY
FIRST_USER_UID = 1000  # Debian's UID_MIN: below it are root and system accounts (daemons)
_DELETED = b" (deleted)"
_STRENGTH = {EXE: 3, CODE: 2, DATA: 1, FD: 0}
_MISSING = (errno.ENOENT, errno.ENOTDIR)
# In a maps line of a user-space mapping ("%08lx-%08lx perms %08llx dev inode path", addresses
# of 8 to 12 hex digits), the space after the offset is the first one at or past this column.
# From any other line (vsyscall's 16 digits) comes a key that is not exactly "dev inode path":
# such a key is never remembered, and its process gets the careful look.
_OFFSET_ENDS_AFTER = 31
PATH_MAX = 4096  # no file at a longer path can be opened by it, so none is a package's
# A maps line longer than this holds a path longer than PATH_MAX (each byte is at most four, "\012"):
# dropped unread, as a path no package can have.
_LINE_MAX = 4 * PATH_MAX + 256
# Per-process budgets while reading its maps and fds: a user chooses how much and how deep her
# processes map (a file 16,000 directories deep, 65,000 times, is 2 GB of maps text that takes the
# kernel a minute to write).  A process that would exceed one is not scanned, never taken for clean.
PROCESS_SECONDS = 10.0
PROCESS_BYTES = 128 << 20
PROCESS_LINES = 1 << 20
# What a scan remembers (lines known fresh, decoded paths, stat results) is bounded whatever users
# map: entries up to this long, up to this many bytes in all; past that, work is redone, not kept.
OVER_BUDGET_SHOWN = 20  # processes over a budget named in text and metrics (JSON lists them all)
_KEEP_MAX = 512
_KEEP_BYTES = 32 << 20


# Called for every process with its /proc directory handle, its PID and its executable.
Observer = Callable[[int, int, str | None], object | None]


class OverBudget(Exception):
    """Reading the process would exceed a per-process budget (or the scan's deadline)."""


class Budget:
    """What reading one process may still cost: bytes, lines, CPU time (ours, the kernel's writing
    of its ``maps`` included, so a loaded host does not cut a big process short) and the scan's
    deadline (on its clock)."""

    __slots__ = ("bytes", "clock", "cpu", "cpu_until", "lines", "until")

    def __init__(self, until: float, clock: Callable[[], float], cpu: Callable[[], float]) -> None:
        self.until, self.clock, self.cpu, self.bytes, self.lines = until, clock, cpu, 0, 0
        self.cpu_until = cpu() + PROCESS_SECONDS

    def spend(self, nbytes: int, lines: int) -> None:
        self.bytes += nbytes
        self.lines += lines
        if self.bytes > PROCESS_BYTES:
            raise OverBudget(f"more than {PROCESS_BYTES >> 20} MiB to read")
        if self.lines > PROCESS_LINES:
            raise OverBudget(f"more than {PROCESS_LINES} mappings or open files")
        if self.cpu() > self.cpu_until:
            raise OverBudget(f"reading it took more than {PROCESS_SECONDS:g} s")
        if self.clock() > self.until:
            raise OverBudget("the time for this run ran out while it was read")


class Unscanned(NamedTuple):
    """A process that was not scanned because it would exceed a budget: named, never clean."""

    pid: int
    uid: int
    comm: str
    reason: str


class StaleFile(NamedTuple):
    kind: FileKind
    path: str               # the path as the process sees it, without the " (deleted)" hint
    confidence: Confidence
    evidence: Evidence


class ProcessInfo(NamedTuple):
    pid: int
    ppid: int
    uid: int
    comm: str
    exe: str | None
    cgroup: str               # raw /proc/PID/cgroup text, parsed by the units stage
    pid_namespace: str | None  # set when the process lives in a child PID namespace
    stale: tuple[StaleFile, ...]


class ScanResult(NamedTuple):
    processes: list[ProcessInfo]
    scanned: int      # processes looked at
    vanished: int     # exited (or otherwise unreadable) while we looked
    denied: int       # not readable by us (another user's process, as non-root)
    errors: int = 0   # data no kernel writes (seen only in hostile fixtures): skipped, counted
    observed: tuple[tuple[ProcessInfo, object], ...] = ()  # what an observer (stage 2b) noted, per process
    unscanned: int = 0  # not looked at (or not to the end): the deadline came first, or a budget
    over_budget: tuple[Unscanned, ...] = ()  # those of them a per-process budget stopped, named


class Selection(NamedTuple):
    """Which paths are worth a stat: a scan only looks at what it could report."""

    aliases: frozenset[str] = frozenset()
    only: frozenset[str] | None = None  # canonical paths in scope; None: every path
    skip_prefixes: tuple[str, ...] = ()  # never package files (memfd, /tmp, ...)
    everything: bool = False             # --all: look at every path regardless

    def wants(self, path: str) -> bool:
        if self.everything:
            return True
        if self.only is not None:
            return canonical(path, self.aliases) in self.only
        return not path.startswith(self.skip_prefixes)


def read_lines(dfd: int, name: str, budget: Budget) -> Iterator[list[bytes]]:
    """The whole lines of a /proc file, a batch per read(), never the whole text at once.

    The budget is spent as the bytes arrive, so a process whose ``maps`` the kernel writes
    slowly, or endlessly, is given up on while it is read.  A line longer than
    ``_LINE_MAX`` is dropped, and only its first ``_LINE_MAX`` bytes are ever held.
    """
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dfd)
    except OSError as e:
        raise procfs.translate(e) from e
    try:
        carry = b""
        dropping = False
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError as e:
                raise procfs.translate(e) from e
            if not chunk:
                break
            budget.spend(len(chunk), chunk.count(b"\n"))
            lines = chunk.split(b"\n")
            if dropping:
                if len(lines) == 1:
                    continue
                lines[0] = b""
                dropping = False
            lines[0] = carry + lines[0]
            carry = lines.pop()
            if len(carry) > _LINE_MAX:
                carry, dropping = b"", True
            yield [line for line in lines if len(line) <= _LINE_MAX]
        if carry and not dropping:
            yield [carry]
    finally:
        os.close(fd)


def parse_map_line(line: bytes) -> tuple[bytes, bytes, bytes, bool] | None:
    """A file-backed mapping's (raw path, inode, device, executable), or None.

    A line is ``start-end perms offset dev inode   path``; the path (the rest of the
    line, spaces and all) begins at the first " /", since no earlier field holds a
    slash.  The kernel escapes a newline in a path as ``\\012``; that is undone when
    the path is decoded.  Numbers stay bytes until a mapping turns out to matter.
    """
    i = line.find(b" /")
    if i < 0:
        return None
    head = line[:i].split()
    if len(head) != 5 or not head[4].isdigit() or head[4] == b"0":
        return None
    return line[i + 1:], head[4], head[3], b"x" in head[1]


def decode_path(raw: bytes) -> str:
    return fs_decode(raw.replace(b"\\012", b"\n"))


# A stat result we keep: (inode, link count, device), or the errno when stat failed.
_Stat = tuple[int, int, int] | int


class _Candidate(NamedTuple):
    """A mapped or open path worth checking, decoded once per distinct raw text."""

    path: str            # without the " (deleted)" hint
    literal: str | None  # the full text, when it carried the hint (a file may be named so)


class _View:
    """How the processes of one mount namespace see files, with a stat cache.

    The kernel writes the paths in ``maps`` and ``fd`` relative to the *reader's*
    root.  So for a process in our own mount namespace, chrooted or not, a plain
    stat() from here looks at the right file; for one in another mount namespace
    (a container, a service with PrivateTmp=) we look through ``/proc/PID/root``.
    """

    __slots__ = ("cache", "direct", "root_device", "users_mounts", "verdicts")

    def __init__(self, direct: bool, users_mounts: bool = False) -> None:
        self.direct = direct
        self.cache: dict[str, _Stat] = {}
        # Owned by another user namespace than ours: its mounts may be an unprivileged user's own
        # (``unshare -Urm``), so a file found there must also lie where a package's file can.
        self.users_mounts = users_mounts
        self.root_device: int | None = None  # the device of the namespace's root filesystem
        # maps lines ("dev inode path") judged for a process of this namespace -> (under an
        # interpreter's directory, the verdict): the same for every process here, so judged once
        self.verdicts: dict[bytes, tuple[bool, tuple[str, Confidence, Evidence] | None]] = {}


class _Scanner:
    """Scan state shared across processes: our own identity, decoded paths, stat caches."""

    def __init__(self, proc: Path, selection: Selection, check_fds: bool,
                 observe: Observer | None = None, observe_hints: tuple[bytes, ...] = ()) -> None:
        self.proc = proc
        self.observe = observe
        self.observe_hints = observe_hints
        self.selection = selection
        self.check_fds = check_fds
        self.self_pid, self.self_mnt, self.self_depth = self._identity()
        try:
            self.self_user = os.readlink(self.proc / "self" / "ns" / "user")
        except OSError:
            self.self_user = ""
        self.views: dict[str, _View] = {}
        self.ours = self.views[self.self_mnt] = _View(direct=True)
        self.devices: dict[bytes, int] = {}
        self.candidates: dict[bytes, _Candidate | None] = {}
        # maps lines ("dev inode path") known to need no look -> whether the path lies where
        # interpreters live (stage 2b wants those processes)
        self.settled: dict[bytes, bool] = {}
        self.room = _KEEP_BYTES  # bytes left for remembering (settled lines, decoded paths, stats)

    def keeps(self, key: bytes | str) -> bool:
        """Whether there is room to remember something this long (and take that room)."""
        if len(key) > _KEEP_MAX or self.room < len(key):
            return False
        self.room -= len(key) + 64
        return True

    def _maps(self, dfd: int, budget: Budget) -> tuple[bool, dict[str, StaleFile], _View | None]:
        """The stale mappings of one process, read as a stream; and whether one of its mapped paths
        lies where interpreters live (stage 2b wants those processes).

        Most lines are known at a glance: their "dev inode path" (past "start-end perms offset ",
        which differ between the processes mapping a file, and between the pieces of one file
        within a process) was settled earlier in the scan.  Of the others, each (device, inode) is
        looked at once per process, before its path is decoded or kept.
        """
        settled = self.settled
        hints = self.observe_hints
        hinted = False
        found: dict[str, StaleFile] = {}
        view: _View | None = None
        seen: dict[tuple[bytes, bytes], bool] = {}
        for batch in read_lines(dfd, "maps", budget):
            for line in batch:
                key = line[line.find(b" ", _OFFSET_ENDS_AFTER) + 1:]
                known = settled.get(key)
                if known is not None:
                    hinted = hinted or known
                    continue
                view = view or self.view(dfd)
                judged = view.verdicts.get(key)
                if judged is not None:  # a stale file, or one that stat shows on another device (overlayfs, btrfs)
                    hinted = hinted or judged[0]
                    if judged[1]:
                        perms = line.find(b" ") + 3  # "start-end rwxp": is the x there?
                        _add(found, StaleFile(CODE if line[perms:perms + 1] == b"x" else DATA, *judged[1]))
                    continue
                entry = parse_map_line(line)
                if entry is None:
                    if b" /" not in key and self.keeps(key):
                        settled[key] = False  # no file: anonymous memory, [heap], [stack]
                    continue
                raw, inode_text, dev_text, executable = entry
                hint = raw.startswith(hints)
                hinted = hinted or hint
                ident = (dev_text, inode_text)
                before = seen.get(ident)
                if before is not None and (before or not executable):
                    continue  # this file was looked at already (as code, or this is data too)
                seen[ident] = executable
                cand = self.candidate(raw)
                inode = int(inode_text)
                if cand is None or self.unchanged_here(cand.path, inode, self.device(dev_text)):
                    # Remembered only when the key is exactly "dev inode path" (not so past a
                    # vsyscall-like line's longer addresses).
                    if key.startswith(b"%s %s " % ident) and self.keeps(key):
                        settled[key] = hint
                    continue
                view = view or self.view(dfd)
                verdict = self.judge(dfd, view, cand, inode, self.device(dev_text))
                if verdict:
                    _add(found, StaleFile(CODE if executable else DATA, *verdict))
                if key.startswith(b"%s %s " % ident) and self.keeps(key):
                    view.verdicts[key] = (hint, verdict)
        return hinted, found, view

    def _identity(self) -> tuple[int, str, int]:
        try:
            pid = int(os.readlink(self.proc / "self"))
        except (OSError, ValueError):
            pid = -1
        try:
            mnt = os.readlink(self.proc / "self" / "ns" / "mnt")
        except OSError:
            mnt = ""
        try:
            depth = procfs.parse_status((self.proc / "self" / "status").read_bytes())[3]
        except (OSError, ValueError):
            depth = 1
        return pid, mnt, depth

    def candidate(self, raw: bytes) -> _Candidate | None:
        """The path behind a maps or fd text, if the selection wants it looked at."""
        if raw in self.candidates:
            return self.candidates[raw]
        hinted = raw.endswith(_DELETED)
        path = decode_path(raw[: -len(_DELETED)] if hinted else raw)
        literal = decode_path(raw) if hinted else None
        wanted = self.selection.wants(path) or (literal is not None and self.selection.wants(literal))
        found = _Candidate(path, literal) if wanted else None
        if self.keeps(raw):
            self.candidates[raw] = found
        return found

    def device(self, text: bytes) -> int:
        """``maps`` writes devices as hex ``major:minor``."""
        dev = self.devices.get(text)
        if dev is None:
            major, _, minor = text.partition(b":")
            try:
                dev = os.makedev(int(major, 16), int(minor, 16))
            except (ValueError, OverflowError):
                dev = -1
            self.devices[text] = dev
        return dev

    def unchanged_here(self, path: str, inode: int, device: int) -> bool:
        """The fast path: the very inode (device and number) still sits at the path we see.

        Then it is fresh for the process too, whatever its mount namespace, and we need
        not even look up which namespace that is.  Anything else (including stacked
        filesystems whose maps device differs from stat's) takes the careful path.
        """
        now = self.stat_path(-1, self.ours, path)
        return isinstance(now, tuple) and now[0] == inode and now[2] == device

    def reachable(self, dfd: int, view: _View, path: str, device: int) -> bool:
        """Seen through a mount namespace of another user namespace, whether a mapped file can be a
        package's file at all.

        It can when it lies on that namespace's root filesystem (a rootless container's own) or on
        the filesystem that holds its directory here.  A file on some other filesystem mounted at
        that place inside the namespace (a user's own tmpfs over a library directory, in
        ``unshare -Urm``) is not the package's, replaced or not.
        """
        if view.root_device is None:
            try:
                view.root_device = os.stat("root", dir_fd=dfd).st_dev
            except OSError as e:
                raise procfs.ProcessGone() from e
        if device == view.root_device:
            return True
        here = self.stat_path(-1, self.ours, os.path.dirname(path))
        return isinstance(here, tuple) and here[2] == device

    def view(self, dfd: int) -> _View:
        mnt = procfs.readlink(dfd, "ns/mnt")
        view = self.views.get(mnt)
        if view is None:
            try:
                users = os.readlink("ns/user", dir_fd=dfd) != self.self_user
            except OSError:
                users = False
            view = self.views[mnt] = _View(direct=mnt == self.self_mnt, users_mounts=users and mnt != self.self_mnt)
        return view

    def stat_path(self, dfd: int, view: _View, path: str) -> _Stat:
        """Stat ``path`` as the process sees it (inside its root), cached per view."""
        hit = view.cache.get(path)
        if hit is not None:
            return hit
        direct = view.direct
        try:
            st = os.stat(path) if direct else os.stat("root" + path, dir_fd=dfd)
            result: _Stat = (st.st_ino, st.st_nlink, st.st_dev)
        except OSError as e:
            if e.errno in _MISSING and not direct:
                # A missing file, or a process that just died?  Only the former may be cached.
                try:
                    os.stat("root", dir_fd=dfd)
                except OSError as gone:
                    raise procfs.ProcessGone() from gone
            result = e.errno or errno.EIO
        if self.keeps(path):
            view.cache[path] = result
        return result

    def judge(self, dfd: int, view: _View, cand: _Candidate, inode: int, device: int,
              link_count: int | None = None) -> tuple[str, Confidence, Evidence] | None:
        """Is the inode behind ``cand`` stale?  (path, confidence, evidence), or None."""
        if view.users_mounts and not self.reachable(dfd, view, cand.path, device):
            return None
        now = self.stat_path(dfd, view, cand.path)
        if isinstance(now, tuple) and now[0] == inode:
            return None
        if cand.literal is not None:
            literal = self.stat_path(dfd, view, cand.literal)
            if isinstance(literal, tuple) and literal[0] == inode:
                return None  # a file really named "... (deleted)", still in place
        if link_count == 0:
            return cand.path, CERTAIN, Evidence.UNLINKED
        if isinstance(now, tuple):
            return cand.path, CERTAIN, Evidence.REPLACED
        if now in _MISSING:
            return cand.path, CERTAIN, Evidence.MISSING
        # We could not look (EACCES, ELOOP, ...): fall back to the kernel's word.
        return (cand.path, LIKELY, Evidence.DELETED_HINT) if cand.literal is not None else None

    def scan_process(self, pid: int, dfd: int, budget: Budget) -> tuple[ProcessInfo | None, object | None]:
        hinted, found, view = self._maps(dfd, budget)
        if not budget.bytes:
            return None, None  # empty maps: a kernel thread or a zombie
        if self.check_fds:
            self._stale_fds(dfd, found, view, budget)
        # An interpreter maps its own executable; without hints, every process is observed.
        seen = self._observe(dfd, pid) if hinted or not self.observe_hints else None
        if not found and seen is None:
            return None, None
        return describe(dfd, pid, found, self.self_depth), seen

    def _observe(self, dfd: int, pid: int) -> object | None:
        """Hand the process, through this same directory handle, to the observer (interpreters)."""
        if self.observe is None:
            return None
        try:
            return self.observe(dfd, pid, procfs.exe_of(dfd))
        except procfs.ProcessGone:
            raise
        except (OSError, ValueError, IndexError):
            return None  # odd data about one process costs only this extra look

    def _stale_fds(self, dfd: int, found: dict[str, StaleFile], view: _View | None, budget: Budget) -> None:
        """Regular files held open whose inode is no longer the one at their path."""
        try:
            fdd = os.open("fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
        except OSError as e:
            raise procfs.translate(e) from e
        try:
            with os.scandir(fdd) as entries:  # listed as read, not all at once: a process may hold 1M
                for entry in entries:
                    name = entry.name
                    budget.spend(len(name), 1)
                    try:
                        target = os.fsencode(os.readlink(name, dir_fd=fdd))
                    except OSError:
                        continue  # closed meanwhile
                    if target[:1] != b"/":
                        continue  # socket:, pipe:, anon_inode:
                    cand = self.candidate(target)
                    if cand is None:
                        continue
                    try:
                        st = os.stat(name, dir_fd=fdd)
                    except OSError:
                        continue
                    if not stat.S_ISREG(st.st_mode) or self.unchanged_here(cand.path, st.st_ino, st.st_dev):
                        continue
                    view = view or self.view(dfd)
                    verdict = self.judge(dfd, view, cand, st.st_ino, st.st_dev, st.st_nlink)
                    if verdict:
                        _add(found, StaleFile(FD, *verdict))
        finally:
            os.close(fdd)


def describe(dfd: int, pid: int, found: dict[str, StaleFile], self_depth: int) -> ProcessInfo:
    """The facts reported about a stale process: read only for those, once each."""
    name, ppid, uid, depth = procfs.parse_status(procfs.read_proc(dfd, "status"))
    cgroup = fs_decode(procfs.read_proc(dfd, "cgroup"))
    exe = procfs.exe_of(dfd)
    if exe is not None and exe in found and found[exe].kind in (CODE, DATA):
        old = found[exe]
        found[exe] = StaleFile(EXE, old.path, old.confidence, old.evidence)
    pidns = procfs.readlink(dfd, "ns/pid") if depth > self_depth else None
    stale = tuple(sorted(found.values(), key=lambda s: (-_STRENGTH.get(s.kind, 2), s.path)))
    return ProcessInfo(pid=pid, ppid=ppid, uid=uid, comm=name, exe=exe, cgroup=cgroup, pid_namespace=pidns, stale=stale)


def _add(found: dict[str, StaleFile], item: StaleFile) -> None:
    """Keep one finding per path: the strongest kind, the surest confidence."""
    old = found.get(item.path)
    if old is None or (_STRENGTH[item.kind], item.confidence == CERTAIN) > (
            _STRENGTH[old.kind], old.confidence == CERTAIN):
        found[item.path] = item


def scan(proc: Path, selection: Selection, *, check_fds: bool = True,
         pids: Iterable[int] | None = None, observe: Observer | None = None,
         observe_hints: tuple[bytes, ...] = (),
         on_error: Callable[[int, Exception], None] | None = None,
         deadline: float | None = None, clock: Callable[[], float] = time.monotonic,
         cpu_clock: Callable[[], float] = time.thread_time, users: bool = True) -> ScanResult:
    """Scan every process under ``proc`` (or just ``pids``) for stale files.

    ``observe`` sees each process that maps a path starting with one of ``observe_hints``
    (stage 2b: the directories interpreters live in; a process maps its own executable),
    or every process when there are no hints.
    With a ``deadline`` (on ``clock``), root's and system accounts' processes are scanned
    first and the scan stops when the deadline passes, counting the rest as unscanned: a
    user with many processes that map many files can slow a scan, not starve the services.
    Each process is read within a :class:`Budget` (bytes, lines, ``PROCESS_SECONDS`` of CPU time on
    ``cpu_clock``, and the deadline), checked as it is read; one that would exceed it is counted
    unscanned and named.
    ``users=False`` looks only at root's and system accounts' processes.
    """
    scanner = _Scanner(proc, selection, check_fds, observe, observe_hints)
    found: list[ProcessInfo] = []
    observed: list[tuple[ProcessInfo, object]] = []
    over: list[Unscanned] = []
    scanned = vanished = denied = errors = unscanned = 0
    procfd = os.open(proc, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        candidates = sorted(pids) if pids is not None else sorted(
            int(n) for n in os.listdir(procfd) if n.isdigit())
        candidates = [p for p in candidates if p != scanner.self_pid]
        if not users:
            candidates = [p for p in candidates if not _owned_by_a_user(procfd, p)]
        elif deadline is not None:
            candidates.sort(key=lambda p: (_owned_by_a_user(procfd, p), p))
        for n, pid in enumerate(candidates):
            now = clock()
            if deadline is not None and now > deadline:
                unscanned += len(candidates) - n
                break
            scanned += 1
            try:
                dfd = os.open(str(pid), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=procfd)
            except OSError:
                vanished += 1
                continue
            budget = Budget(deadline if deadline is not None else float("inf"), clock, cpu_clock)
            try:
                info, seen = scanner.scan_process(pid, dfd, budget)
            except procfs.ProcessGone:
                vanished += 1
                continue
            except PermissionError:
                denied += 1
                continue
            except OverBudget as e:
                unscanned += 1
                over.append(_unscanned(dfd, pid, str(e)))
                continue
            except Exception as e:  # one odd process must not stop the scan of the rest
                if on_error is not None:
                    on_error(pid, e)
                errors += 1
                continue
            finally:
                os.close(dfd)
            if info is not None and info.stale:
                found.append(info)
            if info is not None and seen is not None:
                observed.append((info, seen))
    finally:
        os.close(procfd)
    return ScanResult(processes=found, scanned=scanned, vanished=vanished, denied=denied, errors=errors,
                      observed=tuple(observed), unscanned=unscanned, over_budget=tuple(over))


def _unscanned(dfd: int, pid: int, reason: str) -> Unscanned:
    """Who a process over budget is, for the report (its name is its own choice: printed escaped)."""
    try:
        uid = os.fstat(dfd).st_uid
        comm = fs_decode(procfs.read_proc(dfd, "comm").rstrip(b"\n"))
    except (OSError, procfs.ProcessGone):
        uid, comm = -1, ""
    return Unscanned(pid, uid, comm, reason)


def _owned_by_a_user(procfd: int, pid: int) -> bool:
    """Whether ``/proc/PID`` belongs to a user account (a process's directory has its owner's uid)."""
    try:
        return os.stat(str(pid), dir_fd=procfd).st_uid >= FIRST_USER_UID
    except OSError:
        return False
