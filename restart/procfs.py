"""Reading ``/proc``: the primitives every stage shares (an edge: I/O only, before the stages).

A process's files are read within a :class:`Budget` checked as the bytes arrive (its owner
chooses how much the kernel writes), never the whole text at once (:func:`read_lines`).

What a process says about itself is its own choice and may be hostile: its name (``comm``, up
to 15 bytes of anything but NUL: spaces, parentheses, newlines) sits in the middle of
``/proc/PID/stat``, so the fields after it are found from the *last* ``)``.  A process may exit
at any moment: reading its files then fails with ``ENOENT`` or ``ESRCH``, which is turned into
:class:`ProcessGone` here, in one place.  Read relative to an open ``/proc/PID`` handle where
facts must come from one process (a PID may be reused between two reads by path).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

PPID, TTY_NR, STARTTIME = 1, 4, 19  # fields of /proc/PID/stat, counted from the state after the name
ANCESTRY_MAX = 64  # a walk up the process tree stops here whatever the tree (a loop, a deep chain)
# The whole environment of every program restartctl starts: never anything of its own caller's,
# nor of any process's (a planted PATH or LD_PRELOAD would run as root).
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
_GONE = (errno.ENOENT, errno.ESRCH)
PATH_MAX = 4096  # no file at a longer path can be opened by it, so none is a package's
# A maps line longer than this holds a path longer than PATH_MAX (each byte is at most four, "\012"):
# dropped unread, as a path no package can have.
LINE_MAX = 4 * PATH_MAX + 256
# Per-process budgets while reading its maps and fds: a user chooses how much and how deep her
# processes map (a file 16,000 directories deep, 65,000 times, is 2 GB of maps text that takes the
# kernel a minute to write).  A process that would exceed one is not scanned, never taken for clean.
PROCESS_SECONDS = 10.0
PROCESS_BYTES = 128 << 20
PROCESS_LINES = 1 << 20
CLOCK_BYTES, CLOCK_LINES = 64 << 10, 1 << 10  # read between two looks at the clocks (milliseconds of work)
# read_lines hands over whole lines in blocks of about this much text: a /proc seq_file writes about
# a page per read(), and what is done per block (set operations) is then done once, not per page.
BATCH_BYTES = 32 << 10


class ProcessGone(Exception):
    """The process exited (or was never there) while we read it."""


class OverBudget(Exception):
    """Reading the process would exceed a per-process budget (or the scan's deadline)."""


class Budget:
    """What reading one process may still cost: bytes, lines, CPU time (ours, the kernel's writing
    of its ``maps`` included, so a loaded host does not cut a big process short) and the scan's
    deadline (on its clock).

    The clocks are looked at after every ``CLOCK_BYTES`` or ``CLOCK_LINES`` read, not per read():
    most processes are read whole before a first look, and never look at all.  So the CPU time is
    counted from the first look: the work before it, like the work after the last, is one interval's
    (milliseconds), and a process that never reaches one costs no clock read (a system call).
    """

    __slots__ = ("bytes", "clock", "cpu", "cpu_until", "lines", "since", "until")

    def __init__(self, until: float, clock: Callable[[], float], cpu: Callable[[], float]) -> None:
        self.until, self.clock, self.cpu, self.bytes, self.lines, self.since = until, clock, cpu, 0, 0, 0
        self.cpu_until: float | None = None  # set at the first look

    def spend(self, nbytes: int, lines: int) -> None:
        self.bytes += nbytes
        self.lines += lines
        if self.bytes > PROCESS_BYTES:
            raise OverBudget(f"more than {PROCESS_BYTES >> 20} MiB to read")
        if self.lines > PROCESS_LINES:
            raise OverBudget(f"more than {PROCESS_LINES} mappings or open files")
        self.since += nbytes + lines * (CLOCK_BYTES // CLOCK_LINES)
        if self.since < CLOCK_BYTES:
            return
        self.since = 0
        cpu = self.cpu()
        if self.cpu_until is None:
            self.cpu_until = cpu + PROCESS_SECONDS
        elif cpu > self.cpu_until:
            raise OverBudget(f"reading it took more than {PROCESS_SECONDS:g} s")
        if self.clock() > self.until:
            raise OverBudget("the time for this run ran out while it was read")


def translate(e: OSError) -> Exception:
    """A read error as the caller should see it: :class:`ProcessGone` when the process went away."""
    if e.errno in _GONE:
        return ProcessGone()
    return e


def read_proc(dfd: int | None, name: str) -> bytes:
    """Read one /proc file relative to the process directory, mapping errors once (``dfd`` None:
    ``name`` is its whole path).

    To the end: a /proc seq_file hands out about a page per read() whatever the buffer
    size, so a short read is no sign of the end.
    """
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dfd)
    except OSError as e:
        raise translate(e) from e
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise translate(e) from e
    finally:
        os.close(fd)


def read_lines(dfd: int, name: str, budget: Budget,
               split: Callable[[bytes], list[bytes]]) -> Iterator[tuple[bytes, list[bytes]]]:
    """The whole lines of a /proc file, as blocks of text of about ``BATCH_BYTES`` (lines joined
    by newlines; the last one's may be missing at the end of the file), never the whole text at
    once; each with its items as ``split`` finds them (in ``maps``: a key per mapping).

    The budget's bytes are spent as they arrive, so a process whose ``maps`` the kernel writes
    slowly, or endlessly, is given up on while it is read.  Its lines are the items ``split`` finds
    in a block, counted as it is handed over, not in a pass of their own: so a block is handed over
    early as soon as the lines read and not counted yet could take the budget past
    ``PROCESS_LINES`` (a line takes a byte at least); what ``split`` does not find costs its bytes
    only.  A line longer than ``LINE_MAX`` is dropped, and only its first ``LINE_MAX`` bytes are
    ever held.
    """
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dfd)
    except OSError as e:
        raise translate(e) from e
    try:
        chunks: list[bytes] = []  # read, not handed over yet: whole lines, then the start of one
        size = 0
        run = 0           # the bytes of that last line read so far
        dropping = False  # within a line longer than LINE_MAX: skipped to its end
        long = False      # a line in chunks is longer than LINE_MAX: to be left out
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError as e:
                raise translate(e) from e
            if not chunk:
                break
            budget.spend(len(chunk), 0)
            first = chunk.find(b"\n")
            if dropping:
                if first < 0:
                    continue
                chunk, dropping = chunk[first + 1:], False
                first = chunk.find(b"\n")
            if first < 0:
                run += len(chunk)
                if run > LINE_MAX:  # keep the lines before this one; skip it to its end
                    text = b"".join(chunks)
                    cut = text.rfind(b"\n") + 1
                    chunks, size, run, dropping = [text[:cut]] if cut else [], cut, 0, True
                    continue
            else:
                last = chunk.rfind(b"\n")
                long = long or run + first > LINE_MAX or last - first > LINE_MAX
                run = len(chunk) - last - 1
                if run > LINE_MAX:  # the line it ends with is too long already: skipped to its end
                    chunk, run, dropping = chunk[:last + 1], 0, True
            chunks.append(chunk)
            size += len(chunk)
            if size >= BATCH_BYTES or budget.lines + size > PROCESS_LINES:
                text = b"".join(chunks)
                if run:  # (never so in /proc: a seq_file's read() ends at the end of a line)
                    text, chunks, size = text[:-run], [text[-run:]], run
                else:
                    chunks, size = [], 0
                yield _block(text, long, budget, split)
                long = False
        if chunks:  # (when dropping, only whole lines are left in them)
            yield _block(b"".join(chunks), long, budget, split)
    finally:
        os.close(fd)


def _block(text: bytes, long: bool, budget: Budget, split: Callable[[bytes], list[bytes]]) -> tuple[bytes, list[bytes]]:
    """A block as :func:`read_lines` hands it over: without its lines longer than ``LINE_MAX`` (when
    ``long`` says there is one), with its items, spent as its lines."""
    if long:
        text = b"\n".join(line for line in text.split(b"\n") if len(line) <= LINE_MAX)
    items = split(text)
    budget.spend(0, len(items))
    return text, items


def readlink(dfd: int, name: str) -> str:
    try:
        return os.readlink(name, dir_fd=dfd)
    except OSError as e:
        raise translate(e) from e


def exe_of(dfd: int) -> str | None:
    """The executable's path (readlink writes names as they are: nothing to unescape); None if denied."""
    try:
        return readlink(dfd, "exe").removesuffix(" (deleted)")
    except PermissionError:
        return None


def stat_fields(data: bytes) -> list[bytes]:
    """The fields of ``/proc/PID/stat`` after the parenthesised name (index 0 is the state).

    The name may hold anything but NUL, ``)`` and newlines included; the kernel writes nothing
    after it that could hold a ``)``, so the last one ends it.
    """
    return data[data.rfind(b")") + 1:].split()


def stat_field(proc: Path, pid: int, index: int) -> int | None:
    """One numeric field of ``/proc/PID/stat`` (see :func:`stat_fields`); None when it cannot be read.
    Read by its path as a string, not pathlib's ``read_bytes``: 4 against 9 us a process, 2 against 6 for
    one that exited (each unit of an apply's record, its stale processes, after their restart)."""
    try:
        return int(stat_fields(read_proc(None, f"{proc}/{pid}/stat"))[index])
    except (OSError, ProcessGone, IndexError, ValueError):
        return None


def lineage(proc: Path, pid: int) -> Iterator[int]:
    """``pid``, then its parent, grandparent, ... up to and including PID 1: at most
    :data:`ANCESTRY_MAX` processes; it ends early at a process whose own parent cannot be read (it exited)."""
    current: int | None = pid
    for _ in range(ANCESTRY_MAX):
        if current is None or current < 1:
            return
        yield current
        current = stat_field(proc, current, PPID)  # PID 1's parent is 0


def parse_status(data: bytes) -> tuple[str, int, int, int]:
    """(name, ppid, real uid, PID-namespace depth) from ``/proc/PID/status``."""
    name, ppid, uid, depth = "", 0, -1, 1
    for line in data.split(b"\n"):
        key, _, value = line.partition(b":")
        if key == b"Name":
            name = value.strip(b"\t ").decode("utf-8", "surrogateescape")  # as paths are kept: odd bytes survive
        elif key == b"PPid":
            ppid = int(value)
        elif key == b"Uid":
            fields = value.split()
            uid = int(fields[0]) if fields else -1
        elif key == b"NSpid":
            depth = max(1, len(value.split()))
    return name, ppid, uid, depth
