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

from restart.processes import STARTTIME, stat_field

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
    """Replace ``directory/name`` atomically; refuses a directory that is not safely ours."""
    if not _usable_dir(directory, create=True):
        raise OSError(f"{directory}: not a root-owned directory writable only by root")
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, directory / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def save_pending(directory: Path, boot: str, *, trigger: str, packages: frozenset[str],
                 units: list[dict[str, Any]]) -> None:
    write_json(directory, PENDING, {
        "schema": STATE_SCHEMA, "boot_id": boot, "time": int(time.time()), "trigger": trigger,
        "packages": sorted(packages), "units": units})


def with_processes(units: list[dict[str, Any]], proc: Path) -> list[dict[str, Any]]:
    """Each unit of a run's record with ``processes``: [PID, start time] of its processes, which
    name them for good (a PID alone may be reused), so that ``status`` can tell they are gone."""
    out = []
    for unit in units:
        pids = [p for p in unit.get("pids", []) if isinstance(p, int)]
        named = [[pid, start] for pid in pids if (start := stat_field(proc, pid, STARTTIME)) is not None]
        out.append({**unit, "processes": named})
    return out


def still_true(record: dict[str, Any], proc: Path) -> dict[str, Any]:
    """The record without the pending units all of whose processes have exited since (a PID
    and start time that no longer match): one ``stat`` read per process, no scan.  Counted
    in ``exited``.  Units recorded without ``processes`` (older records) are kept."""
    kept, exited = [], 0
    for unit in record.get("units", []):
        named = unit.get("processes") if isinstance(unit, dict) else None
        if (isinstance(named, list) and unit.get("status") != "done"
                and not any(isinstance(p, list) and len(p) == 2 and isinstance(p[0], int)
                            and stat_field(proc, p[0], STARTTIME) == p[1] for p in named)):
            exited += 1
            continue
        kept.append(unit)
    return {**record, "units": kept, "exited": exited}
