"""Stage 1, what changed: the packages a transaction touched, as the hooks recorded them.

While apt or dpkg run, ``hook/dpkg-hook`` (plain sh: restartctl's own Python may be
half unpacked then) appends one line per event to ``/run/restartctl/journal``:
``<epoch> <source> <event> <package>``, and keeps copies of the file lists of
packages apt is about to change in ``/run/restartctl/lists/``.  Here we read what
was appended since the last run (the journal's inode and a byte offset, which the
state record keeps together with that run's findings) so that every event is
consumed exactly once, whichever run comes next.  /run is emptied at boot, when
nothing can be stale any more.

When the journal cannot tell the whole story (the hooks left an ``incomplete``
marker because an append failed, lines are no valid event, or it grew beyond what
one run reads), the run is told why and falls back to every package dpkg changed
since the last complete run.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from contextlib import suppress
from itertools import pairwise
from pathlib import Path

from restart import TYPE_CHECKING, NamedTuple
from restart.fsutil import trusted_dir
from restart.packages import DpkgDatabase, list_paths, parse_md5sums

if TYPE_CHECKING:
    from typing import BinaryIO

TRIGGERS = ("apt", "dpkg", "unattended-upgrades", "manual")  # who runs `restartctl hook`
JOURNAL = "journal"
LISTS = "lists"
# Patterns as text: re compiles (and caches) them on first use, not at every import (a run without the
# hook's journal uses neither before its first restart).
_PACKAGE = r"[a-z0-9][a-z0-9.+-]*(:[a-z0-9-]+){0,2}"
_SET_ASIDE = r"\d+\.\d+"  # the suffix of what the hook's mv --backup set aside: .old.<epoch>.<pid>
EVENTS = ("install", "upgrade", "downgrade", "configure", "remove", "purge", "error")


MARKER = "incomplete"  # created by dpkg-hook when it could not record an event (run or state directory)
CLAIMED = "incomplete.claimed"  # a marker a run has taken on; removed once that run has recorded its result
MAX_READ = 16 << 20  # journal bytes one run reads; beyond, the rest is skipped and the run falls back
MAX_PACKAGES = 4096  # distinct packages one run takes from the journal; beyond, it falls back
_CHUNK = 1 << 20


class Transaction(NamedTuple):
    """What the hooks saw since the last run."""

    packages: frozenset[str]   # every package unpacked, upgraded, downgraded, configured or removed
    removed: frozenset[str]
    failed: frozenset[str]     # packages dpkg reported an error for
    sources: frozenset[str]    # "apt", "dpkg"
    journal: tuple[int, int]   # the journal's inode and the offset just after the last complete line read
    incomplete: tuple[str, ...] = ()  # why the journal does not tell the whole story, if it does not
    invalid: int = 0           # lines that were no valid event (dropped)


def package_name(text: str) -> str | None:
    """``name`` or ``name:arch`` as the hooks wrote it; None if it is not a package name.

    Earlier versions of the pre-install hook appended the architecture to a name apt's
    protocol 3 already qualified (Multi-Arch: same), ``name:arch:arch``: read as ``name:arch``.
    """
    if not re.fullmatch(_PACKAGE, text):
        return None
    name, *arch = text.split(":")
    if len(arch) == 2 and arch[0] != arch[1]:
        return None
    return ":".join([name, *arch[:1]])


def parse_journal(data: bytes) -> tuple[list[tuple[str, str, str]], int]:
    """(source, event, package) per well-formed line, and the bytes consumed.

    Only complete lines count: a line still being appended is left for next time.
    Malformed lines are skipped, never trusted.
    """
    end = data.rfind(b"\n") + 1
    events = []
    for raw in data[:end].split(b"\n"):
        fields = raw.decode("ascii", "replace").split(" ")
        if len(fields) != 4 or not fields[0].isdigit():
            continue
        _, source, event, text = fields
        package = package_name(text)
        if source in ("apt", "dpkg") and event in EVENTS and package is not None:
            events.append((source, event, package))
    return events, end


def _legacy_cursor(run: Path) -> int:
    """The byte cursor an earlier restartctl kept in ``/run/restartctl/cursor`` (an upgrade mid-boot)."""
    try:
        return int((run / "cursor").read_text(encoding="ascii").strip() or 0)
    except (OSError, ValueError):
        return 0


def read(run: Path, cursor: tuple[int, int] | None) -> Transaction:
    """Everything appended to the journal since ``cursor`` (its inode and offset, as the state recorded it).

    Bounded: at most :data:`MAX_READ` bytes and :data:`MAX_PACKAGES` distinct packages
    are taken; a journal beyond either is summarised (the rest skipped, the run told
    that the journal is incomplete), and so are lines that are no valid event, which
    a failed or interrupted append leaves (counted).
    """
    empty = Transaction(frozenset(), frozenset(), frozenset(), frozenset(), (0, 0))
    if not trusted_dir(run):
        return empty
    try:
        fd = os.open(run / JOURNAL, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return empty
    by_event: dict[str, set[str]] = {}
    sources: set[str] = set()
    incomplete: list[str] = []
    invalid = 0
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        offset = cursor[1] if cursor is not None and cursor[0] == st.st_ino else (
            _legacy_cursor(run) if cursor is None else 0)
        if offset > st.st_size:
            offset = 0  # the journal was recreated: read it all
        f.seek(offset)
        left, carry = min(st.st_size - offset, MAX_READ), b""
        while left > 0:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            events, used = parse_journal(carry + chunk)
            invalid += (carry + chunk)[:used].count(b"\n") - len(events)
            offset += used - len(carry)
            carry = (carry + chunk)[used:]
            if len(carry) > _CHUNK:  # no line is that long: skip it
                offset, carry, invalid = offset + len(carry), b"", invalid + 1
            for source, event, package in events:
                sources.add(source)
                by_event.setdefault(event, set()).add(package)
            if sum(len(v) for v in by_event.values()) > MAX_PACKAGES:
                incomplete.append(f"the journal names more than {MAX_PACKAGES} packages")
                offset, by_event = _skip_to_last_line(f, st.st_size), {}
                break
        else:
            if st.st_size - offset > MAX_READ:
                incomplete.append(f"the journal grew by more than {MAX_READ >> 20} MiB")
                offset = _skip_to_last_line(f, st.st_size)
    if invalid:
        incomplete.append(f"{invalid} journal line{'s were' if invalid != 1 else ' was'} no valid event")
    changed = set().union(*(v for k, v in by_event.items() if k != "error"))
    return Transaction(frozenset(changed), frozenset(by_event.get("remove", set()) | by_event.get("purge", set())),
                       frozenset(by_event.get("error", set())), frozenset(sources), (st.st_ino, offset),
                       tuple(incomplete), invalid)


def _skip_to_last_line(f: BinaryIO, size: int) -> int:
    """The offset just after the journal's last complete line (what is past it is still being appended)."""
    f.seek(max(0, size - _CHUNK))
    tail = f.read(_CHUNK)
    return size - len(tail) + tail.rfind(b"\n") + 1 if b"\n" in tail else size - len(tail)


def claim_markers(directories: list[Path]) -> list[Path]:
    """Take on the markers of lost events in these directories (renamed, so that a marker the
    hooks create meanwhile stays for the next run); returns the ones found, claimed earlier included."""
    found = []
    for d in directories:
        if not trusted_dir(d):
            continue
        with suppress(OSError):
            os.rename(d / MARKER, d / CLAIMED)
        if os.path.lexists(d / CLAIMED):
            found.append(d / MARKER)
    return found


def release_markers(directories: list[Path]) -> None:
    """The run that claimed them has recorded its result: the loss they marked is made good."""
    for d in directories:
        if trusted_dir(d):
            with suppress(FileNotFoundError):
                os.unlink(d / CLAIMED)


def kept_copy(filename: str, kind: str) -> tuple[str, bool] | None:
    """(package, set aside) of a copy apt's hook keeps in ``lists/``: ``NAME.KIND`` (this transaction's)
    or ``NAME.KIND.old.<epoch>.<pid>`` (an earlier one's, set aside by the hook's ``mv --backup``);
    None for any other name.  The one reader of that suffix, for the lists and the checksums alike."""
    name, dot_kind, rest = filename.rpartition("." + kind)
    if not name or not dot_kind:
        return None
    if not rest:
        return name, False
    return (name, True) if rest.startswith(".old.") and re.fullmatch(_SET_ASIDE, rest[5:]) else None


def old_files(run: Path, packages: frozenset[str], aliases: frozenset[str]) -> dict[str, str]:
    """Canonical path -> package from the file lists apt's hook saved before the change.

    The hook renames its copies into ``lists/`` with one ``mv --backup``, which sets aside the list an
    earlier transaction kept there (``NAME.list.old.*``); no one reads those: they are removed here
    (the directory is root's own; a run that may not remove them leaves them)."""
    lists = run / LISTS
    if not packages or not trusted_dir(lists):
        return {}
    wanted = {p.partition(":")[0] for p in packages}
    files: dict[str, str] = {}
    try:
        entries = [e for e in os.scandir(lists) if not e.is_symlink()]
    except OSError:
        return {}
    for entry in entries:
        kept = kept_copy(entry.name, "list")
        if kept is None or kept[0].partition(":")[0] not in wanted:
            continue
        name, set_aside = kept
        if set_aside:
            with suppress(OSError):
                os.unlink(entry.path)
            continue
        try:
            with open(entry.path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        for path in list_paths(data, aliases):
            files.setdefault(path, name)
    return files


def unchanged(run: Path, db: DpkgDatabase, packages: Iterable[str] | None) -> dict[str, float]:
    """Canonical path -> since when (epoch) the content now installed there has been on disk, unchanged.

    apt's hook keeps each package's ``md5sums`` as they were before each transaction
    (``cp -p``: the file's mtime is when dpkg unpacked that older version; the earlier
    transactions' copies stay beside it as ``NAME.md5sums.old.*``); a plain dpkg upgrade
    leaves the latest empty (unknown content counts as changed).  Walking back from the
    latest copy while the checksum equals the new one gives the earliest unpack since which
    the content was continuously this: a process that started after it has loaded exactly
    this content, so it is no reason to restart anything (``apt-get install --reinstall``,
    twice).  A process that started earlier may map an older version: the caller compares
    start times.

    A set-aside copy equal to the one set aside just before it can change no answer (where the
    walk reaches it, it goes on to the older equal one), so it is removed here (root's runs:
    the directory is root's own), to keep what every run reads to the distinct versions
    (twenty reinstalls left twenty copies, 12 ms of each hook run).
    """
    lists = run / LISTS
    if not trusted_dir(lists):
        return {}
    wanted = None if packages is None else {p.partition(":")[0] for p in packages}
    # package -> (order, sums, unpacked, path): the latest copy first, then the set-aside ones by unpack time
    copies: dict[str, list[tuple[float, dict[str, str], float, str]]] = {}
    try:
        entries = [e for e in os.scandir(lists) if ".md5sums" in e.name and not e.is_symlink()]
    except OSError:
        return {}
    for entry in entries:
        kept = kept_copy(entry.name, "md5sums")
        if kept is None or (wanted is not None and kept[0].partition(":")[0] not in wanted):
            continue
        name, set_aside = kept
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                mtime = os.fstat(f.fileno()).st_mtime
                sums = parse_md5sums(f.read(), db.aliases)
        except OSError:
            continue
        # the latest copy is never older than the ones set aside before it
        copies.setdefault(name, []).append((mtime if set_aside else math.inf, sums, mtime, entry.path))
    if not copies:
        return {}
    for name, versions in copies.items():
        redundant = _redundant(versions)
        copies[name] = [v for v in versions if v[3] not in redundant]
    new = db.md5sums(list(copies))
    found: dict[str, float] = {}
    for versions in copies.values():
        latest_first = sorted(versions, key=lambda v: v[0], reverse=True)
        for path in latest_first[0][1]:
            since: float | None = None
            for _, sums, unpacked, _ in latest_first:
                if sums.get(path) is None or sums.get(path) != new.get(path):
                    break
                since = unpacked
            if since is not None:
                found[path] = since
    return found


def _redundant(versions: list[tuple[float, dict[str, str], float, str]]) -> set[str]:
    """The set-aside copies equal to the one set aside just before them, removed (what cannot be
    removed is still left out: the answer is the same)."""
    set_aside = sorted((v for v in versions if v[0] != math.inf), key=lambda v: (v[2], v[3]))
    redundant = {later[3] for earlier, later in pairwise(set_aside) if earlier[1] == later[1]}
    for path in redundant:
        with suppress(OSError):
            os.unlink(path)
    return redundant


JOURNAL_HEAD = 4 << 20  # bytes of the journal read for first events: the earliest lines are the ones that count


def first_events(run: Path) -> dict[str, tuple[int, str]]:
    """Package (without architecture) -> (epoch, event) of the first event this boot's journal holds.

    A package whose first event is an ``install`` did not exist before then: nothing of it
    can be loaded in a process that started earlier.
    """
    if not trusted_dir(run):
        return {}
    try:
        fd = os.open(run / JOURNAL, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as f:
        data = f.read(JOURNAL_HEAD)
    first: dict[str, tuple[int, str]] = {}
    for raw in data[:data.rfind(b"\n") + 1].split(b"\n"):
        fields = raw.decode("ascii", "replace").split(" ")
        if len(fields) == 4 and fields[0].isdigit() and fields[2] in EVENTS and re.fullmatch(_PACKAGE, fields[3]):
            first.setdefault(fields[3].partition(":")[0], (int(fields[0]), fields[2]))
    return first
