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
from collections.abc import Collection
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


def _unit_key(unit: dict[str, Any]) -> tuple[Any, ...]:
    name = unit.get("unit")
    return (unit.get("kind"), name, unit.get("uid"), None if name else tuple(unit.get("pids") or ()))


def merge_pending(earlier: dict[str, Any] | None, boot: str, *, scope: Collection[str] | None, complete: bool,
                  packages: frozenset[str], units: list[dict[str, Any]]) -> tuple[frozenset[str], list[dict[str, Any]]]:
    """What stays pending after a run that looked at ``scope`` (None: every package).

    A run only settles what it looked at: a package outside its scope, a unit with such a
    package and, when the scan was cut short, everything it did not find again stay as the
    earlier run of this boot left them.  Nothing is ever narrowed away unseen.
    """
    from restart.packages import package_matches

    if earlier is None or not boot or earlier.get("boot_id") != boot or (scope is None and complete):
        return packages, units

    def settled(package: object) -> bool:
        return complete and isinstance(package, str) and (
            scope is None or any(package_matches(package, w) for w in scope))

    old_packages = earlier.get("packages")
    kept = frozenset(p for p in old_packages if isinstance(p, str) and not settled(p)) \
        if isinstance(old_packages, list) else frozenset()
    seen = {_unit_key(u) for u in units}
    old_units = earlier.get("units")
    carried = [u for u in old_units if isinstance(u, dict) and _unit_key(u) not in seen
               and not all(settled(p) for p in u.get("packages") or [None])] if isinstance(old_units, list) else []
    return packages | kept, units + carried


def problem(directory: Path, name: str) -> str | None:
    """Why a record that is there cannot be trusted or read, so that it is never taken for "no run yet"."""
    path = directory / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"{path}: {e.strerror}"
    if not _usable_dir(directory, create=False):
        return f"{directory}: not a root-owned directory writable only by root; its records are ignored"
    if not stat.S_ISREG(st.st_mode):
        return f"{path}: not a regular file; ignored"
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        return (f"{path}: could have been written by someone other than root "
                f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}); ignored")
    if read_json(directory, name) is None:
        return f"{path}: not a restartctl state record (damaged, or of another version); ignored"
    return None
