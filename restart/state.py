"""What restartctl remembers between runs, in ``/var/lib/restartctl`` (an edge: I/O only).

Findings that no restart resolved stay *pending*: later runs include their packages
again until the processes are gone.  A reboot ends all of it, so every record
carries the boot id it was written under.  Files are written atomically (a
temporary file, then rename), never through a symlink, in a directory that must
be root's own.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

STATE_SCHEMA = "restartctl-state/1"
PENDING = "pending.json"


def boot_id(proc: Path) -> str:
    try:
        return (proc / "sys" / "kernel" / "random" / "boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return ""


def _usable_dir(path: Path, *, create: bool) -> bool:
    if create:
        try:
            path.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError:
            return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid in (0, os.geteuid()) and not st.st_mode & 0o022


def write_json(directory: Path, name: str, doc: dict[str, Any]) -> None:
    """Replace ``directory/name`` atomically and durably (fsync of the file, then of the directory);
    refuses a directory that is not safely ours.  An error names the file."""
    if not _usable_dir(directory, create=True):
        raise OSError(f"{directory}: not a root-owned directory writable only by root")
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, directory / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        raise OSError(f"cannot write {directory / name}: {e.strerror or e}") from e


def read_json(directory: Path, name: str) -> dict[str, Any] | None:
    if not _usable_dir(directory, create=False):
        return None
    try:
        fd = os.open(directory / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "r", encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("schema") == STATE_SCHEMA else None


def pending_packages(directory: Path, boot: str) -> frozenset[str]:
    """Packages whose replaced files were still in use at the last run of this boot."""
    doc = read_json(directory, PENDING)
    if doc is None or doc.get("boot_id") != boot or not boot:
        return frozenset()
    names = doc.get("packages", [])
    return frozenset(n for n in names if isinstance(n, str)) if isinstance(names, list) else frozenset()


def journal_cursor(directory: Path, boot: str) -> tuple[int, int] | None:
    """The journal's inode and how far this boot's runs have read it; None when no run recorded it."""
    doc = read_json(directory, PENDING)
    cursor = doc.get("journal") if doc is not None and boot and doc.get("boot_id") == boot else None
    if not isinstance(cursor, dict):
        return None
    inode, offset = cursor.get("inode"), cursor.get("offset")
    return (inode, offset) if isinstance(inode, int) and isinstance(offset, int) else None


def last_complete(directory: Path, boot: str) -> tuple[float | None, list[str]]:
    """When this boot's last run that missed nothing started, and why the runs since missed something."""
    doc = read_json(directory, PENDING)
    if doc is None or not boot or doc.get("boot_id") != boot:
        return None, []
    since, why = doc.get("complete"), doc.get("incomplete", [])
    return (since if isinstance(since, int | float) else None,
            [w for w in why if isinstance(w, str)] if isinstance(why, list) else [])


def save_pending(directory: Path, boot: str, *, trigger: str, packages: frozenset[str],
                 units: list[dict[str, Any]], journal: tuple[int, int] | None = None,
                 started: float | None = None, incomplete: list[str] | None = None) -> None:
    """One record of the run: its findings, and (for a run that read the journal) how far it read,
    in the same atomic write, so that the cursor never moves without the findings or back.

    ``started`` is when a run that missed nothing began; ``incomplete`` says what a run missed
    (the next run then looks at every package changed since the last complete one).  A run
    that did not read the journal (``apply``) carries both over from the record it replaces.
    """
    doc: dict[str, Any] = {
        "schema": STATE_SCHEMA, "boot_id": boot, "time": int(time.time()), "trigger": trigger,
        "packages": sorted(packages), "units": units}
    previous = read_json(directory, PENDING)
    if previous is not None and previous.get("boot_id") == boot:
        carried = ("journal", "complete", "incomplete") if journal is None else ("complete",)
        doc.update({k: previous[k] for k in carried if k in previous})
    if journal is not None:
        doc["journal"] = {"inode": journal[0], "offset": journal[1]}
    if started is not None:
        doc["complete"] = started
    if incomplete is not None:
        doc["incomplete"] = incomplete
    write_json(directory, PENDING, doc)


def save_progress(directory: Path, boot: str, *, trigger: str, journal: tuple[int, int], started: float) -> None:
    """A complete run that found nothing to look at: only the cursor moves (the last findings stay)."""
    previous = read_json(directory, PENDING)
    if previous is None or previous.get("boot_id") != boot:
        save_pending(directory, boot, trigger=trigger, packages=frozenset(), units=[], journal=journal,
                     started=started, incomplete=[])
        return
    write_json(directory, PENDING, {**previous, "journal": {"inode": journal[0], "offset": journal[1]},
                                    "complete": started, "incomplete": []})
