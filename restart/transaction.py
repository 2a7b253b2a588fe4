"""Stage 1, what changed: the packages a transaction touched, as the hooks recorded them.

While apt or dpkg run, ``hook/dpkg-hook`` (plain sh: restartctl's own Python may be
half unpacked then) appends one line per event to ``/run/restartctl/journal``:
``<epoch> <source> <event> <package>``, and keeps copies of the file lists of
packages apt is about to change in ``/run/restartctl/lists/``.  Here we read what
was appended since the last run (a byte cursor) so that every event is consumed
exactly once, whichever run comes next.  /run is emptied at boot, when nothing
can be stale any more.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from restart.packages import DpkgDatabase, canonical, fs_decode, parse_md5sums

TRIGGERS = ("apt", "dpkg", "unattended-upgrades", "manual")  # who runs `restartctl hook`
HOOK_BUDGET = 60.0  # seconds a hook run may take, waits included
JOURNAL = "journal"
CURSOR = "cursor"
LISTS = "lists"
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9.+-]*(:[a-z0-9-]+){0,2}")
EVENTS = ("install", "upgrade", "downgrade", "configure", "remove", "purge", "error")


class Transaction(NamedTuple):
    """What the hooks saw since the last run."""

    packages: frozenset[str]   # every package unpacked, upgraded, downgraded, configured or removed
    removed: frozenset[str]
    failed: frozenset[str]     # packages dpkg reported an error for
    sources: frozenset[str]    # "apt", "dpkg"
    end: int                   # journal offset just after the last complete line read


def package_name(text: str) -> str | None:
    """``name`` or ``name:arch`` as the hooks wrote it; None if it is not a package name.

    Earlier versions of the pre-install hook appended the architecture to a name apt's
    protocol 3 already qualified (Multi-Arch: same), ``name:arch:arch``: read as ``name:arch``.
    """
    if not _PACKAGE.fullmatch(text):
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


def _secure_dir(path: Path) -> bool:
    """Ours to trust: a real directory owned by root (or by us, for tests as non-root)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid in (0, os.geteuid()) and not st.st_mode & 0o022


def _read_cursor(run: Path) -> int:
    try:
        return int((run / CURSOR).read_text(encoding="ascii").strip() or 0)
    except (OSError, ValueError):
        return 0


def read(run: Path) -> Transaction:
    """Everything appended to the journal since the last :func:`consume`."""
    empty = Transaction(frozenset(), frozenset(), frozenset(), frozenset(), 0)
    if not _secure_dir(run):
        return empty
    cursor = _read_cursor(run)
    try:
        fd = os.open(run / JOURNAL, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return empty
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if cursor > size:
            cursor = 0  # the journal was recreated: read it all
        f.seek(cursor)
        data = f.read()
    events, used = parse_journal(data)
    by_event: dict[str, set[str]] = {}
    for _, event, package in events:
        by_event.setdefault(event, set()).add(package)
    changed = set().union(*(v for k, v in by_event.items() if k != "error"))
    return Transaction(frozenset(changed), frozenset(by_event.get("remove", set()) | by_event.get("purge", set())),
                       frozenset(by_event.get("error", set())), frozenset(s for s, _, _ in events), cursor + used)


def consume(run: Path, txn: Transaction) -> None:
    """Mark the journal as read up to ``txn.end`` (atomically: write, then rename)."""
    if not _secure_dir(run) or txn.end == 0:
        return
    tmp = run / f".{CURSOR}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(f"{txn.end}\n")
    os.replace(tmp, run / CURSOR)


def old_files(run: Path, packages: frozenset[str], aliases: frozenset[str]) -> dict[str, str]:
    """Canonical path -> package from the file lists apt's hook saved before the change."""
    lists = run / LISTS
    if not packages or not _secure_dir(lists):
        return {}
    wanted = {p.partition(":")[0] for p in packages}
    files: dict[str, str] = {}
    try:
        entries = [e for e in os.scandir(lists) if e.name.endswith(".list") and not e.is_symlink()]
    except OSError:
        return {}
    for entry in entries:
        name = entry.name[:-5]
        if name.partition(":")[0] not in wanted:
            continue
        try:
            with open(entry.path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        for raw in data.split(b"\n"):
            if raw.startswith(b"/") and raw != b"/.":
                files.setdefault(canonical(fs_decode(raw), aliases), name)
    return files


MD5SUMS_MAX = 16 << 20  # bytes of one package's kept checksums (every transaction of a boot appends)


def unchanged(run: Path, db: DpkgDatabase, packages: Iterable[str] | None) -> frozenset[str]:
    """Canonical paths whose content has been the same in every version this boot has seen.

    apt's hook appends a package's ``md5sums`` before each transaction changes it, and the
    dpkg status logger a line ``unknown`` when a plain dpkg run upgrades it (content no hook
    saw).  A running process maps one of those versions; a replaced file whose every recorded
    checksum equals the new one is no reason to restart anything (``apt-get install
    --reinstall``).  A package with an ``unknown`` or no record has no unchanged file.
    """
    lists = run / LISTS
    if not _secure_dir(lists):
        return frozenset()
    wanted = None if packages is None else {p.partition(":")[0] for p in packages}
    old: dict[str, set[str]] = {}
    names = []
    try:
        entries = [e for e in os.scandir(lists) if e.name.endswith(".md5sums") and not e.is_symlink()]
    except OSError:
        return frozenset()
    for entry in entries:
        name = entry.name[:-len(".md5sums")]
        if wanted is not None and name.partition(":")[0] not in wanted:
            continue
        try:
            with open(entry.path, "rb") as f:
                data = f.read(MD5SUMS_MAX + 1)
        except OSError:
            continue
        if len(data) > MD5SUMS_MAX or re.search(rb"(?m)^unknown$", data):
            continue
        for line in data.split(b"\n"):
            for path, digest in parse_md5sums(line, db.aliases).items():
                old.setdefault(path, set()).add(digest)
        names.append(name)
    if not old:
        return frozenset()
    new = db.md5sums(names)
    return frozenset(path for path, digests in old.items() if digests == {new.get(path)})


JOURNAL_HEAD = 4 << 20  # bytes of the journal read for first events: the earliest lines are the ones that count


def first_events(run: Path) -> dict[str, tuple[int, str]]:
    """Package (without architecture) -> (epoch, event) of the first event this boot's journal holds.

    A package whose first event is an ``install`` did not exist before then: nothing of it
    can be loaded in a process that started earlier.
    """
    if not _secure_dir(run):
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
        if len(fields) == 4 and fields[0].isdigit() and fields[2] in EVENTS and _PACKAGE.fullmatch(fields[3]):
            first.setdefault(fields[3].partition(":")[0], (int(fields[0]), fields[2]))
    return first
