"""Stage 2, processes: which running processes still use replaced files, decided by inode.

For each process we open ``/proc/PID`` once and read everything else relative to
that directory descriptor, so a PID that is reused mid-scan can never mix two
processes' facts.  Each fact is read once.  A mapping is stale when the file now
at its path, seen from the process's own root, is missing or is another inode;
the kernel's `` (deleted)`` text is only a hint for which path to look at.

Most of a host is clean, and the ``maps`` lines of processes mapping the same file
differ only in their address range, so each distinct rest of a line ("perms offset dev
inode path", its key: all a verdict depends on) is judged once per scan (once per mount
namespace where it must be: :mod:`views`); a process whose every line is already known
costs its reads and, per block of lines, one regular-expression pass for the keys and a
look-up of each, or none when they are those of the last block known whole (reading within
a budget is :mod:`procfs`'s).  Open files are judged
only when they are regular files not found in place, and only a process whose ``maps``
shows an interpreter's directory is handed to stage 2b.  Only processes with a stale file
(or handed to 2b) get their status, cgroup and exe read.

A large scan (``PARALLEL_MIN`` processes or more) runs on two cores: most of its time is the
kernel writing ``maps`` text and listing ``fd`` directories, plus Python work per line, all of it
per process and independent, and one CPython process uses one core.  So, with two CPUs to run on
and no other thread alive (forking a threaded process can leave a lock held forever in the child),
it forks once, and the two take the processes in shares of ``SHARE`` from a queue as they go (so
the two end together, whatever load slows one core): the child with its own copy of the scanner,
sending its results back as it goes, as JSON data over a pipe only the two hold, and leaving with
``os._exit``; the parent, after the caller's work that needs no finding, rebuilds them between its
own shares and merges in the order of the one-process scan (the same findings).  A child that does
not end its answer in time, dies or sends anything but results is killed and reaped, and what it
took counts as unscanned, never clean (see :func:`_on_two_cores`; docs/security.md P9).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import select
import signal
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from enum import StrEnum
from itertools import islice
from pathlib import Path

from restart import TYPE_CHECKING, NamedTuple, TypeVar, procfs, views
from restart.packages import canonical, fs_decode

if TYPE_CHECKING:
    from typing import NoReturn


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
# The key of each line of a maps text: all of it past the first space, the one after the address
# range (a line without a space holds no file, and has no key).
_KEYS = re.compile(rb" (.*)")
FOLDS_KEPT = 1 << 16  # stale files a scan keeps in folds (see _Scanner._fold), over all the sets: a few MB
FD_BATCH = 64  # open files listed between two spendings of the budget
OVER_BUDGET_SHOWN = 20  # processes over a budget named in text and metrics (JSON lists them all)
# A scan of this many processes or more is shared with a forked child (two cores): below it, the
# fork, the child's cold caches and its answer cost about what half a scan saves (on the real state
# of bench/scan.py the break-even was near 100 processes; bench/README.md).
PARALLEL_MIN = 150
# The two share the candidates as they go: each takes the next SHARE processes (a 2-byte number read from
# a pipe that holds every share's) whenever it is done with the last, so the one the other core's load
# slows down takes fewer; at most SHARES_MAX numbers (one page: any pipe holds them, written before the fork).
# The last shares are smaller (a quarter of what is left: _bounds), so that the two end within a process
# or two of each other rather than a share.
SHARE = 8
SHARES_MAX = 2048
CHILD_GRACE = 2.0  # seconds the child's answer may come after the deadline (its last process, the pipe)
CHILD_WAIT = 60.0  # without a deadline: seconds it may come after the parent's last share
ANSWER = "restartctl-scan/3"  # the first item of each line of the child's answer
# Processes found or observed the child sends at once (fewer lines cost less), or any it has after a share
# of the smaller last ones (the parent waits for what comes after its own last share).
PIECE = 16
ANSWER_END = json.dumps([ANSWER]).encode() + b"\n"  # its last line: it answered for every share it took
# The most of the child's answer the parent reads, its lines together; a child that sends more counts as one
# that did not answer (what it took unscanned).  The real state's half answers in 50-93 KB (500 processes, 51
# of them stale, 101 observed): this is 170 times that, a half of ~90,000 processes in those proportions, and
# the text held at once stays within the 50 MB peak RSS a scan may take (docs/security.md P9).
ANSWER_MAX = 16 << 20


_T = TypeVar("_T")
# Called for every process with its /proc directory handle, its PID and its executable.
Observer = Callable[[int, int, str | None], object | None]


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


Verdict = tuple[str, Confidence, Evidence]  # a stale file's path as the process sees it, and why


class _Candidate(NamedTuple):
    """A mapped or open path worth checking, decoded once per distinct raw text."""

    path: str            # without the " (deleted)" hint
    literal: str | None  # the full text, when it carried the hint (a file may be named so)


class _Known(NamedTuple):
    """A block of ``maps`` lines whose every key was known, with its answers: a block of the same keys
    (another of a pool of workers: only the addresses differ) takes them without a look-up of its keys."""

    keys: list[bytes]
    hinted: bool                # one of them lies where interpreters live
    view: views.View | None     # the mount namespace whose verdicts they took; None: settled everywhere
    hits: frozenset[int]        # the stale files among them, by number


class _Scanner:
    """Scan state shared across processes: our own identity, decoded paths, stat caches."""

    def __init__(self, proc: Path, selection: Selection, check_fds: bool,
                 observe: Observer | None = None, observe_hints: tuple[bytes, ...] = ()) -> None:
        self.observe = observe
        self.observe_hints = observe_hints
        self.selection = selection
        self.check_fds = check_fds
        self.views = views.Views(proc)
        self.keeps = self.views.room.keeps
        # maps lines, by key ("perms offset dev inode path"), judged for a process of a mount
        # namespace: fresh (or settled, once a process there maps it), or stale (the finding, by its
        # number in ``files``); the same for every process there, so judged once
        self.judged: dict[views.View, tuple[set[bytes], dict[bytes, int]]] = {}
        # the distinct stale files of those verdicts (a library's pieces share one), and their numbers
        self.files: list[StaleFile] = []
        self.numbers: dict[StaleFile, int] = {}
        self.folds: dict[frozenset[int], dict[str, StaleFile]] = {}  # see _fold
        self.fold_room = FOLDS_KEPT
        self.devices: dict[bytes, int] = {}
        self.candidates: dict[bytes, _Candidate | None] = {}
        self.fd_candidates: dict[str, _Candidate | None] = {}  # the same, by an fd link's text
        # maps lines (keys) known to need no look in any namespace, and the lines
        # remembered here or in ``judged`` whose path lies where interpreters live (stage 2b wants those)
        self.settled: set[bytes] = set()
        self.hinted: set[bytes] = set()
        self.last = _Known([], False, None, frozenset())  # the last block of maps lines found known whole

    def _maps(self, dfd: int, budget: procfs.Budget) -> tuple[bool, dict[str, StaleFile], views.View | None]:
        """The stale mappings of one process, read as a stream; and whether one of its mapped paths
        lies where interpreters live (stage 2b wants those processes).

        A line is known by its key, all of it past the address range ("perms offset dev inode path":
        what the processes mapping a file share, and all a verdict depends on).  Most keys were
        settled earlier in the scan, for every process or for those of this mount namespace (on
        overlayfs and btrfs, where the device in ``maps`` is not stat's, every fresh file), or found
        stale there: a block of lines whose keys all were costs one regular-expression pass (its keys
        are also its count of lines for the budget) and a look-up of each key, no set of its own when
        all are fresh, and no executable pass (the perms are in the key).  A settled key met in a mount
        namespace is known fresh there from then on, so the next process there takes the first test.
        A block with the keys of the last block known whole (the next of a pool of workers: only the
        addresses differ) takes its answers, in the mount namespace they came from, without a look-up.
        Its stale files count once each, not once per key (a library's pieces share one), their
        findings worked out once per distinct set of them (:meth:`_fold`).  The other lines are
        judged in the order the process maps them, each (device, inode) once per process, before its
        path is decoded or kept.
        """
        settled, hinted_keys = self.settled, self.hinted
        hinted = False
        found: dict[str, StaleFile] = {}
        view: views.View | None = None
        seen: dict[tuple[bytes, bytes], tuple[bool, bytes, Verdict | bool | None]] = {}
        hits: frozenset[int] = frozenset()  # the stale files of its lines found stale in its mount namespace
        for text, keys in procfs.read_lines(dfd, "maps", budget, _KEYS.findall):
            last = self.last
            if keys == last.keys:  # the lines of the last block known whole (a pool of workers): its answers
                if last.view is not None and view is None:
                    view = self.views.of(dfd)
                if last.view is None or last.view is view:
                    hinted = hinted or last.hinted
                    hits = hits | last.hits if hits else last.hits
                    continue
            ours = not hinted_keys.isdisjoint(keys)
            hinted = hinted or ours
            if settled.issuperset(keys):
                self.last = _Known(keys, ours, None, frozenset())
                continue  # every line known fresh everywhere (a host without stacked filesystems)
            if view is None:
                view = self.views.of(dfd)
            fresh, stale = self._verdicts(view)
            if fresh.issuperset(keys):
                self.last = _Known(keys, ours, view, frozenset())
                continue  # every line known fresh here: most processes, whole
            rest = set(keys)
            rest -= fresh
            if not settled.isdisjoint(rest):  # known here from now on: the next process takes the test above
                learned = rest & settled
                rest -= learned
                fresh.update(key for key in learned if self.keeps(key))
            known = rest & stale.keys()
            files = frozenset(map(stale.__getitem__, known))
            hits = hits | files if hits else files
            rest -= known
            if not rest:
                self.last = _Known(keys, ours, view, files)
                continue
            for line in text.split(b"\n"):  # in the order the process maps them
                key = line[line.find(b" ") + 1:]
                if key in rest:
                    rest.discard(key)
                    hinted = self._judge_line(dfd, view, line, key, seen, found) or hinted
        if hits:
            fold = self._fold(hits)
            if found:  # lines judged in this process: weighed against them, path by path
                for item in fold.values():
                    _add(found, item)
            else:
                found = fold.copy()
        return hinted, found, view

    def _fold(self, hits: frozenset[int]) -> dict[str, StaleFile]:
        """The findings of a set of stale files (by number): one per path, the strongest (:func:`_add`).
        Worked out once per distinct set (the processes of a program map the same stale libraries),
        kept while the sets kept hold ``FOLDS_KEPT`` files in all (a user may map many sets)."""
        fold = self.folds.get(hits)
        if fold is None:
            fold = {}
            for number in hits:
                _add(fold, self.files[number])
            if len(hits) <= self.fold_room:
                self.fold_room -= len(hits)
                self.folds[hits] = fold
        return fold

    def _verdicts(self, view: views.View) -> tuple[set[bytes], dict[bytes, int]]:
        """The keys known fresh in ``view``'s mount namespace, and those stale there (their files' numbers)."""
        verdicts = self.judged.get(view)
        if verdicts is None:
            verdicts = self.judged[view] = (set(), {})
        return verdicts

    def _judge_line(self, dfd: int, view: views.View, line: bytes, key: bytes,
                    seen: dict[tuple[bytes, bytes], tuple[bool, bytes, Verdict | bool | None]],
                    found: dict[str, StaleFile]) -> bool:
        """A maps line not known yet: judged, and its key remembered with the verdict; whether its
        path lies where interpreters live.  Another piece of a file this process maps (another
        key: other perms or offset) takes the verdict of the first, without a look."""
        entry = parse_map_line(line)
        if entry is None:
            if b" /" not in key and self.keeps(key):
                self.settled.add(key)  # no file: anonymous memory, [heap], [stack]
            return False
        raw, inode_text, dev_text, executable = entry
        hint = raw.startswith(self.observe_hints)
        ident = (dev_text, inode_text)
        before = seen.get(ident)
        if before is not None:
            was_code, was_raw, outcome = before
            if was_raw == raw:  # the same file at the same path: the same verdict
                seen[ident] = (was_code or executable, raw, outcome)
                if outcome is not True and outcome and executable and not was_code:
                    _add(found, StaleFile(CODE, *outcome))
                self._remember(view, key, outcome, hint, executable)
                return hint
            if was_code or not executable:
                return hint  # this file was looked at already (as code, or this is data too)
        cand = self.candidate(raw)
        inode = int(inode_text)
        if cand is None or self.views.unchanged_here(cand.path, inode, self.device(dev_text)):
            seen[ident] = (executable, raw, True)
            self._remember(view, key, True, hint, executable)
            return hint
        verdict = self.judge(dfd, view, cand, inode, self.device(dev_text))
        seen[ident] = (executable, raw, verdict)
        if verdict:
            _add(found, StaleFile(CODE if executable else DATA, *verdict))
        self._remember(view, key, verdict, hint, executable)
        return hint

    def _remember(self, view: views.View, key: bytes, outcome: Verdict | bool | None, hint: bool,
                  executable: bool) -> None:
        """Keep a judged key (room permitting): ``True``, fresh for every process (``settled``);
        a verdict, stale in this mount namespace; None, fresh there."""
        if not self.keeps(key):
            return
        if outcome is True:
            self.settled.add(key)
        else:
            fresh, stale = self._verdicts(view)
            if outcome:
                item = StaleFile(CODE if executable else DATA, *outcome)
                stale[key] = number = self.numbers.setdefault(item, len(self.files))
                if number == len(self.files):
                    self.files.append(item)
            else:
                fresh.add(key)
        if hint:
            self.hinted.add(key)

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

    def judge(self, dfd: int, view: views.View, cand: _Candidate, inode: int, device: int,
              link_count: int | None = None) -> Verdict | None:
        """Is the inode behind ``cand`` stale?  (path, confidence, evidence), or None."""
        if view.users_mounts and not self.views.reachable(dfd, view, cand.path, device):
            return None
        now = view.stat(dfd, cand.path)
        if isinstance(now, tuple) and now[0] == inode:
            return None
        if cand.literal is not None:
            literal = view.stat(dfd, cand.literal)
            if isinstance(literal, tuple) and literal[0] == inode:
                return None  # a file really named "... (deleted)", still in place
        if link_count == 0:
            return cand.path, CERTAIN, Evidence.UNLINKED
        if isinstance(now, tuple):
            return cand.path, CERTAIN, Evidence.REPLACED
        if now in views.MISSING:
            return cand.path, CERTAIN, Evidence.MISSING
        # We could not look (EACCES, ELOOP, ...): fall back to the kernel's word.
        return (cand.path, LIKELY, Evidence.DELETED_HINT) if cand.literal is not None else None

    def scan_process(self, pid: int, dfd: int, budget: procfs.Budget) -> tuple[ProcessInfo | None, object | None]:
        hinted, found, view = self._maps(dfd, budget)
        if not budget.bytes:
            return None, None  # empty maps: a kernel thread or a zombie
        if self.check_fds:
            self._stale_fds(dfd, found, view, budget)
        # An interpreter maps its own executable; without hints, every process is observed.
        observing = self.observe is not None and (hinted or not self.observe_hints)
        if not found and not observing:
            return None, None
        exe = procfs.exe_of(dfd)  # read once, for the observer and the report
        seen = self._observe(dfd, pid, exe) if observing else None
        if not found and seen is None:
            return None, None
        return describe(dfd, pid, found, self.views.depth, exe), seen

    def _observe(self, dfd: int, pid: int, exe: str | None) -> object | None:
        """Hand the process, through this same directory handle, to the observer (interpreters)."""
        if self.observe is None:
            return None
        try:
            return self.observe(dfd, pid, exe)
        except procfs.ProcessGone:
            raise
        except (OSError, ValueError, IndexError):
            return None  # odd data about one process costs only this extra look

    def _stale_fds(self, dfd: int, found: dict[str, StaleFile], view: views.View | None, budget: procfs.Budget) -> None:
        """Regular files held open whose inode is no longer the one at their path."""
        try:
            fdd = os.open("fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
        except OSError as e:
            raise procfs.translate(e) from e
        paths = self.fd_candidates
        count = size = 0  # entries listed since the budget was last spent (every FD_BATCH)
        try:
            with os.scandir(fdd) as entries:  # listed as read, not all at once: a process may hold 1M
                for entry in entries:
                    name = entry.name
                    count += 1
                    size += len(name)
                    if count == FD_BATCH:
                        budget.spend(size, count)
                        count = size = 0
                    try:
                        target = os.readlink(name, dir_fd=fdd)
                    except OSError:
                        continue  # closed meanwhile
                    if target[:1] != "/":
                        continue  # socket:, pipe:, anon_inode:
                    if target in paths:
                        cand = paths[target]
                    else:
                        cand = self.candidate(os.fsencode(target))  # bytes, as maps has paths
                        if self.keeps(target):
                            paths[target] = cand
                    if cand is None:
                        continue
                    try:
                        st = os.stat(name, dir_fd=fdd)
                    except OSError:
                        continue
                    if not stat.S_ISREG(st.st_mode) or self.views.unchanged_here(cand.path, st.st_ino, st.st_dev):
                        continue
                    view = view or self.views.of(dfd)
                    verdict = self.judge(dfd, view, cand, st.st_ino, st.st_dev, st.st_nlink)
                    if verdict:
                        _add(found, StaleFile(FD, *verdict))
            budget.spend(size, count)
        finally:
            os.close(fdd)


def describe(dfd: int, pid: int, found: dict[str, StaleFile], self_depth: int, exe: str | None) -> ProcessInfo:
    """The facts reported about a stale (or observed) process: read only for those, once each."""
    name, ppid, uid, depth = procfs.parse_status(procfs.read_proc(dfd, "status"))
    cgroup = fs_decode(procfs.read_proc(dfd, "cgroup"))
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
         cpu_clock: Callable[[], float] = time.thread_time, users: bool = True,
         parallel_min: int | None = None, facts: Callable[[], Iterable[type]] = tuple,
         meanwhile: Callable[[], object] | None = None,
         then: Callable[[ScanResult], object] | None = None) -> ScanResult:
    """Scan every process under ``proc`` (or just ``pids``) for stale files.

    ``observe`` sees each process that maps a path starting with one of ``observe_hints``
    (stage 2b: the directories interpreters live in; a process maps its own executable),
    or every process when there are no hints.  What it returns is its whole answer: in a scan
    on two cores it runs in the forked child for the processes it takes (see :func:`_on_two_cores`), and its
    answer, made of ``str``, numbers, ``None``, tuples, frozensets and the NamedTuples ``facts()``
    names, is rebuilt here from those classes alone.
    With a ``deadline`` (on ``clock``), root's and system accounts' processes are scanned
    first and the scan stops when the deadline passes, counting the rest as unscanned: a
    user with many processes that map many files can slow a scan, not starve the services.
    Each process is read within a :class:`procfs.Budget` (bytes, lines, ``procfs.PROCESS_SECONDS`` of CPU time on
    ``cpu_clock``, and the deadline), checked as it is read; one that would exceed it is counted
    unscanned and named.
    ``users=False`` looks only at root's and system accounts' processes.
    ``parallel_min``: from this many processes on, the scan is shared with a forked child (None:
    ``PARALLEL_MIN``).  ``meanwhile``: the caller's work that does not depend on the scan, called
    once: in a scan on two cores by this process while the child scans (before it takes its
    share), else after the scan.  ``then``: the caller's work on the result, called once with it: in
    a scan on two cores whose child answered, while the child exits (freeing its pages takes it
    0.5-1 ms, which reaping it waits for), else after the scan.
    """
    scanner = _Scanner(proc, selection, check_fds, observe, observe_hints)
    procfd = os.open(proc, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        candidates = sorted(pids) if pids is not None else sorted(
            int(n) for n in os.listdir(procfd) if n.isdigit())
        candidates = [p for p in candidates if p != scanner.views.pid]
        if not users:
            candidates = [p for p in candidates if not _owned_by_a_user(procfd, p)]
        elif deadline is not None:
            candidates.sort(key=lambda p: (_owned_by_a_user(procfd, p), p))
        if len(candidates) >= (PARALLEL_MIN if parallel_min is None else parallel_min) and _two_cores_free():
            shared = _on_two_cores(scanner, procfd, candidates, on_error, deadline, clock, cpu_clock, facts, meanwhile,
                                   then)
            if shared is not None:
                return shared
        result = _left(_scan_these(scanner, procfd, candidates, on_error, deadline, clock, cpu_clock), len(candidates))
    finally:
        os.close(procfd)
    if meanwhile is not None:
        meanwhile()
    if then is not None:
        then(result)
    return result


def _left(result: ScanResult, candidates: int) -> ScanResult:
    """``result`` with the candidates it did not get to (the deadline came first) counted unscanned."""
    return result._replace(unscanned=result.unscanned + candidates - result.scanned)


def _scan_these(scanner: _Scanner, procfd: int, candidates: Iterable[int],
                on_error: Callable[[int, Exception], None] | None, deadline: float | None,
                clock: Callable[[], float], cpu_clock: Callable[[], float], parent: int | None = None) -> ScanResult:
    """Scan ``candidates`` in this order, one process at a time, until the deadline; ``scanned`` counts
    those begun, ``unscanned`` those over a budget (the caller counts the ones not reached: :func:`_left`).
    ``parent``: the forked child's parent, whose end (the child is handed to another) ends the scan: no
    one is left to read it, and an orphan would hold what it inherited (apply's lock) to the end of its
    budgets."""
    found: list[ProcessInfo] = []
    observed: list[tuple[ProcessInfo, object]] = []
    over: list[Unscanned] = []
    scanned = vanished = denied = errors = unscanned = 0
    for pid in candidates:
        if (deadline is not None and clock() > deadline) or (parent is not None and os.getppid() != parent):
            break
        scanned += 1
        try:
            dfd = os.open(str(pid), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=procfd)
        except OSError:
            vanished += 1
            continue
        budget = procfs.Budget(deadline if deadline is not None else float("inf"), clock, cpu_clock)
        try:
            info, seen = scanner.scan_process(pid, dfd, budget)
        except procfs.ProcessGone:
            vanished += 1
            continue
        except PermissionError:
            denied += 1
            continue
        except procfs.OverBudget as e:
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
    return ScanResult(processes=found, scanned=scanned, vanished=vanished, denied=denied, errors=errors,
                      observed=tuple(observed), unscanned=unscanned, over_budget=tuple(over))


# ------------------------------------------------------------------------------ on two cores

def _two_cores_free() -> bool:
    """Whether forking may help and is safe: two CPUs we may run on, and no other thread of ours
    alive (a thread holding a lock at the fork leaves it held forever in the child).  The kernel's
    list of our threads counts every one, also those not started through :mod:`threading`."""
    try:
        return len(os.sched_getaffinity(0)) >= 2 and _threads() == 1
    except OSError:
        return False


def _threads() -> int:
    """How many threads this process has, as the kernel counts them."""
    return len(os.listdir("/proc/self/task"))


def _on_two_cores(scanner: _Scanner, procfd: int, candidates: list[int],
                  on_error: Callable[[int, Exception], None] | None, deadline: float | None,
                  clock: Callable[[], float], cpu_clock: Callable[[], float],
                  facts: Callable[[], Iterable[type]], meanwhile: Callable[[], object] | None,
                  then: Callable[[ScanResult], object] | None = None) -> ScanResult | None:
    """Scan ``candidates`` here and in a forked child, sharing them as the two go, then merge; None when
    no child could be forked (the caller scans them all itself).

    Each takes the next share of ``SHARE`` candidates whenever it is done with its last
    (:func:`_shares`), in the order of a one-process scan (under a deadline, system accounts first), so
    the two end together whatever slows one down (the other core's load, the child's copied pages), and
    this process first does the caller's ``meanwhile``.  The child starts with this process's scanner
    and its caches, scans each share exactly as :func:`_scan_these` does, sends the results as it goes
    (a line every ``PIECE`` processes found or observed) over a pipe only the two hold, as JSON data
    (:func:`_encode`), then an end, and leaves with ``os._exit``.  This process rebuilds what has come
    before it takes each share (:class:`_Answer`), so little is left to read once both are done.  The
    answer is awaited until the deadline plus ``CHILD_GRACE`` (without a deadline, ``CHILD_WAIT`` past
    the end of this process's shares) and read to ``ANSWER_MAX`` bytes; a child that does not end its
    answer by then, sends more, dies or sends anything but results is killed, and every process this one
    did not scan counts as unscanned (never clean, the shares it did answer for included; not scanned
    again here: whatever held the child up, a process whose ``maps`` does not come, would hold this one
    up too).  The child is killed and reaped whatever happens here, a watchdog's exception included.
    The results are merged in the order of the one-process scan, counters summed, and handed to the
    caller's ``then`` while a child that answered exits (after the reaping, if it did not).
    """
    bounds = _bounds(len(candidates))
    numbers = b"".join(n.to_bytes(2, "little") for n in range(len(bounds) - 1))
    queue, queue_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        queued = os.write(queue_end, numbers) == len(numbers)  # (it fits: never a partial write)
    except OSError:
        queued = False
    os.close(queue_end)  # every share is written: a read of the empty queue is its end
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    me = os.getpid()
    try:
        if not queued:
            raise OSError("the queue of shares could not be written")
        child = os.fork()
    except OSError:
        for end in (queue, read_end, write_end):
            os.close(end)
        return None
    if child == 0:  # pragma: no cover - the child leaves by os._exit, never returns
        _child(read_end, write_end, _shares(queue, candidates, bounds), scanner, procfd, deadline, clock,
               cpu_clock, me)
    os.close(write_end)
    theirs: tuple[list[ScanResult], list[tuple[int, str]]] | None = None
    try:
        answer = _Answer(read_end, tuple(facts()))  # (the classes' modules imported now, not after the scan)
        if meanwhile is not None:
            meanwhile()

        def taken() -> Iterator[int]:
            for share in _shares(queue, candidates, bounds):
                answer.read()  # what the child has sent so far, rebuilt while it scans on
                yield from share

        mine = _scan_these(scanner, procfd, taken(), on_error, deadline, clock, cpu_clock)
        wait = (max(0.0, deadline - clock()) + CHILD_GRACE) if deadline is not None else CHILD_WAIT
        theirs = answer.result(time.monotonic() + wait)
        result = _joined(mine, theirs, candidates, on_error)
        if theirs is not None and then is not None:
            then(result)  # while the child, done, exits on the other core
            then = None
    finally:
        os.close(queue)
        os.close(read_end)
        _reap(child)
    if then is not None:
        then(result)
    return result


def _joined(mine: ScanResult, theirs: tuple[list[ScanResult], list[tuple[int, str]]] | None, candidates: list[int],
            on_error: Callable[[int, Exception], None] | None) -> ScanResult:
    """This process's result and the child's answer (None: none) as one; the child's errors to ``on_error``."""
    if theirs is None or sum(part.scanned for part in theirs[0]) > len(candidates) - mine.scanned:
        return _left(mine, len(candidates))
    parts, errors = theirs
    if on_error is not None:
        for pid, text in errors:
            on_error(pid, ChildError(text))
    order = {pid: n for n, pid in enumerate(candidates)}
    return _left(_merged((mine, *parts), order), len(candidates))


def _merged(parts: Sequence[ScanResult], order: Mapping[int, int] | None = None) -> ScanResult:
    """The results of ``parts`` as one, counters summed, in ``order`` of their PIDs (None: as they come)."""
    def ordered(items: Iterable[_T], pid: Callable[[_T], int]) -> list[_T]:
        return list(items) if order is None else sorted(items, key=lambda item: order[pid(item)])

    return ScanResult(
        processes=ordered((p for part in parts for p in part.processes), lambda p: p.pid),
        scanned=sum(p.scanned for p in parts), vanished=sum(p.vanished for p in parts),
        denied=sum(p.denied for p in parts), errors=sum(p.errors for p in parts),
        observed=tuple(ordered((o for part in parts for o in part.observed), lambda o: o[0].pid)),
        unscanned=sum(p.unscanned for p in parts),
        over_budget=tuple(ordered((u for part in parts for u in part.over_budget), lambda u: u.pid)))


def _bounds(count: int) -> list[int]:
    """Where each share of ``count`` candidates begins, then their end: ``SHARE`` candidates a share (more
    where ``SHARES_MAX`` shares would not hold them all, with room for the tail's), and of the last
    ``4 * SHARE``, a quarter of what is left (rounded up)."""
    size = max(SHARE, -(-count // (SHARES_MAX - 64)))  # (a tail takes fewer than 64 shares: 4/3 ** 64 > 2**22)
    bounds = [0]
    while (left := count - bounds[-1]) > 0:
        bounds.append(bounds[-1] + min(size, (left + 3) // 4))
    return bounds


def _shares(queue: int, candidates: list[int], bounds: list[int]) -> Iterator[list[int]]:
    """The candidates of each share this process takes from the queue, until it is empty: a share's
    number is read whole (both processes read 2 bytes at a time, the pipe serialises the reads, and
    every number was written before the fork)."""
    while len(number := os.read(queue, 2)) == 2:
        n = int.from_bytes(number, "little")
        yield candidates[bounds[n]:bounds[n + 1]]


class ChildError(Exception):
    """An error the forked child met on one process, as its text (the child's exception stays there)."""


def _child(read_end: int, write_end: int, shares: Iterator[list[int]], scanner: _Scanner, procfd: int,
           deadline: float | None, clock: Callable[[], float], cpu_clock: Callable[[], float],
           parent: int) -> NoReturn:
    """The forked child: scan its ``shares`` (while ``parent`` lives), writing each one's result as it is
    done, then the end, and leave.  Never returns into the caller's code: no exception escapes, no
    ``atexit`` handler runs, no buffered output of the parent is written."""
    status = 1
    try:
        os.close(read_end)
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends the child at once; the parent reaps it
        files: dict[StaleFile, int] = {}
        errors: list[tuple[int, str]] = []  # those of the shares not sent yet
        done: list[ScanResult] = []

        def failed(pid: int, e: Exception) -> None:
            errors.append((pid, f"{type(e).__name__}: {e}"))

        for share in shares:
            done.append(result := _scan_these(scanner, procfd, share, failed, deadline, clock, cpu_clock, parent))
            found = sum(len(r.processes) + len(r.observed) for r in done)
            if found >= PIECE or (found and len(share) < SHARE):
                _write_all(write_end, _encode(_merged(done), errors, files))
                done = []
                errors.clear()
            if result.scanned < len(share):
                break  # the deadline came, or the parent is gone: take no further share
        _write_all(write_end, _encode(_merged(done), errors, files) + ANSWER_END)
        os.close(write_end)  # the end of the answer now, not when the exit has freed every page
        status = 0
    finally:
        os._exit(status)


def _write_all(end: int, data: bytes) -> None:
    """All of ``data`` to the pipe ``end`` (a write to a pipe may take part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(end, view):]


def _encode(result: ScanResult, errors: list[tuple[int, str]], files: dict[StaleFile, int]) -> bytes:
    """A line of the child's answer, the result of the shares since the last: ``[ANSWER, the stale files
    not sent before, the result, the errors]`` (see :func:`_plain`); ``files``, those sent so far, numbered."""
    sent = len(files)
    plain = _plain(result, {}, files)
    table = [{"F": list(f)} for f in islice(files, sent, None)]  # before the result: the reader completes them first
    return json.dumps([ANSWER, table, plain, errors], check_circular=False).encode() + b"\n"


def _plain(value: object, seen: dict[int, int], files: dict[StaleFile, int]) -> object:
    """``value`` as data JSON carries: each NamedTuple and enum member as an object naming its class,
    tuples and frozensets as objects too; an object met before (a process's description by its
    observation) as a reference to it, numbered as the reader completes them.  A process's stale files
    (most are libraries many processes map) as numbers in ``files``, the distinct ones, each sent once
    (:func:`_encode`): 1,300 objects fewer to write and rebuild for the real state's half.  JSON writes
    a string that is not UTF-8, its surrogate escapes, as ``\\udcXX``: every byte comes back."""
    if value is None or (isinstance(value, str | int | float) and not isinstance(value, StrEnum)):
        return value
    if isinstance(value, list):
        return _plains(value, seen, files)
    if isinstance(value, StrEnum) or (isinstance(value, tuple) and hasattr(value, "_fields")):
        ref = seen.get(id(value))
        if ref is not None:
            return {"r": ref}
        plain: dict[str, object] = ({"e": _name(type(value)), "v": value.value} if isinstance(value, StrEnum)
                                    else {"n": _name(type(value)), "v": _plains(value, seen, files)})
        seen[id(value)] = len(seen)  # after its parts: the reader completes them first
        return plain
    if type(value) is tuple and value and all(type(v) is StaleFile for v in value):
        return {"s": [files.setdefault(v, len(files)) for v in value]}
    if isinstance(value, tuple | frozenset):
        return {"t" if isinstance(value, tuple) else "f": _plains(value, seen, files)}
    raise TypeError(f"not result data: {type(value).__name__}")


_AS_THEY_ARE = frozenset({str, int, float, bool, type(None)})  # what _plain returns as it is, by exact type


def _plains(values: Iterable[object], seen: dict[int, int], files: dict[StaleFile, int]) -> list[object]:
    """:func:`_plain` of each of ``values``, without a call for a value JSON carries as it is (most are)."""
    return [v if type(v) in _AS_THEY_ARE else _plain(v, seen, files) for v in values]


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class _Answer:
    """The child's answer, read and rebuilt as it comes: a line for the shares it scanned since the last,
    then the end.

    Rebuilt from JSON data: the only classes its objects can name are this module's result types and
    enums and ``classes`` (what the observer returns), each called with the values given (a
    NamedTuple's fields, an enum's value): nothing else is looked up, imported or run.  The stream
    comes from our own forked child over a pipe only the two hold; the strings in it are data
    processes chose (paths, names, command lines), never code.  Anything but results, more than
    ``ANSWER_MAX`` bytes, or no end (the child died after some shares) is no answer at all."""

    def __init__(self, read_end: int, classes: tuple[type, ...]) -> None:
        self.read_end = read_end
        self.poller = select.poll()
        self.poller.register(read_end, select.POLLIN)
        self.tuples = {_name(c): c for c in (ScanResult, ProcessInfo, StaleFile, Unscanned, *classes)}
        self.enums = {_name(c): c for c in (FileKind, Confidence, Evidence)}
        self.decoder = json.JSONDecoder(object_hook=self._rebuild)  # one for every line (json.loads makes one a call)
        self.files: list[StaleFile] = []  # the distinct stale files so far, which a process's name by number
        self.done: list[object] = []  # the objects of this line completed so far, which a reference names
        self.parts: list[ScanResult] = []
        self.errors: list[tuple[int, str]] = []
        self.rest = b""  # the start of a line still coming
        self.size = 0
        self.ended: bool | None = None  # True: the end came after results only; False: no answer

    def read(self) -> None:
        """Rebuild what has come so far, without waiting."""
        while self.ended is None and self.poller.poll(0):
            self._take()

    def result(self, until: float) -> tuple[list[ScanResult], list[tuple[int, str]]] | None:
        """The results of the child's shares and its errors, waiting for its end until ``until``
        (``time.monotonic``) at most; None if it does not come in time or is no answer."""
        while self.ended is None:
            left = until - time.monotonic()
            if left <= 0 or not self.poller.poll(math.ceil(left * 1000)):
                return None
            self._take()
        return (self.parts, self.errors) if self.ended else None

    def _take(self) -> None:
        chunk = os.read(self.read_end, 1 << 20)
        self.size += len(chunk)
        if not chunk or self.size > ANSWER_MAX:
            self.ended = False  # cut short, or more than any result: read no further
            return
        *lines, self.rest = (self.rest + chunk).split(b"\n")
        for line in lines:
            if self.ended is not None:
                self.ended = False  # anything after the end
                return
            self._line(line)

    def _line(self, line: bytes) -> None:
        self.done = []
        try:
            piece = self.decoder.decode(line.decode())
            if piece == [ANSWER]:
                self.ended = True
                return
            tag, _, result, errors = piece
            if tag != ANSWER or not isinstance(result, ScanResult) or not (
                    type(result.scanned) is int and result.scanned >= 0):
                raise ValueError("not a result")
            self.errors += [(int(pid), str(text)) for pid, text in errors]
        except (ValueError, TypeError, RecursionError):  # a foreign stream: no answer
            self.ended = False
            return
        self.parts.append(result)

    def _rebuild(self, obj: dict[str, object]) -> object:
        files, done = self.files, self.done
        if len(obj) == 1:
            [(key, value)] = obj.items()
            if key == "s" and type(value) is list and set(map(type, value)) <= {int} and (
                    not value or (min(value) >= 0 and max(value) < len(files))):
                return tuple([files[n] for n in value])
            if key == "r" and type(value) is int and 0 <= value < len(done):
                return done[value]
            if key == "t" and type(value) is list:
                return tuple(value)
            if key == "F" and type(value) is list and len(value) == 4 and all(type(v) is str for v in value):
                files.append(StaleFile(FileKind(value[0]), value[1], Confidence(value[2]), Evidence(value[3])))
                return files[-1]
            if key == "f" and type(value) is list:
                return frozenset(value)
        elif len(obj) == 2 and "v" in obj:
            values = obj["v"]
            if type(name := obj.get("n")) is str and name in self.tuples and type(values) is list:
                done.append(self.tuples[name](*values))
                return done[-1]
            if type(name := obj.get("e")) is str and name in self.enums and type(values) is str:
                done.append(self.enums[name](values))
                return done[-1]
        raise ValueError("not result data")


def _reap(child: int) -> None:
    """Our own forked child, by its PID: killed if it still runs, then waited for (never a zombie)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, signal.SIGKILL)  # harmless once it has exited: unreaped, the PID is still ours
    with contextlib.suppress(ChildProcessError):  # reaped already (SIGCHLD ignored)
        os.waitpid(child, 0)


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
