"""What restartctl remembers between runs, in ``/var/lib/restartctl`` (an edge: I/O only).

Findings that no restart resolved stay *pending*: later runs include their packages
again until the processes are gone.  A reboot ends all of it, so every record
carries the boot id it was written under.  Files are written atomically and
durably (:func:`fsutil.write_atomic`), never through a symlink, in a directory
that must be root's own.
"""

from __future__ import annotations

import json
import os
import re
import stat
import syslog
import time
from collections.abc import Callable, Collection
from pathlib import Path

from restart import TYPE_CHECKING, fsutil
from restart.plan import Status
from restart.procfs import STARTTIME, stat_field

if TYPE_CHECKING:
    from typing import Any

STATE_SCHEMA = "restartctl-state/1"
PENDING = "pending.json"
WAITING = "waiting.json"  # the run deferred until unattended-upgrades exits: {"after": [pid, start]}
MAX_BYTES = 16 << 20  # far above any real record (10,000 units are about 5 MB)
MAX_DEPTH = 32        # a record nests 4 deep; json's C parser recurses once per level
# The types of the fields restartctl reads back; other fields are kept as they are.
_FIELDS: dict[str, Callable[[Any], bool]] = {
    "boot_id": lambda v: isinstance(v, str),
    "trigger": lambda v: isinstance(v, str),
    "time": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 40,
    "packages": lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v),
    "units": lambda v: isinstance(v, list) and all(isinstance(u, dict) for u in v),
    "journal": lambda v: isinstance(v, dict) and all(type(v.get(k)) is int and v[k] >= 0 for k in ("inode", "offset")),
    "complete": lambda v: type(v) in (int, float) and 0 <= v < 1 << 40,
    "incomplete": lambda v: isinstance(v, list) and all(isinstance(w, str) for w in v),
}


def boot_id(proc: Path) -> str:
    try:
        # bytes decoded as ASCII, not a text file of that encoding: its codec is imported only for that
        # (0.2 ms of every apply before its first restart)
        return (proc / "sys" / "kernel" / "random" / "boot_id").read_bytes().decode("ascii").strip()
    except OSError:
        return ""


def usable_dir(path: Path, *, create: bool) -> bool:
    """Whether ``path`` is a directory (not a symlink) owned by root and writable only by root."""
    if create:
        try:
            path.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError:
            return False
    return fsutil.trusted_dir(path)


def write_json(directory: Path, name: str, doc: dict[str, Any], *, indent: int | None = 1) -> None:
    """Replace ``directory/name`` atomically and durably (:func:`fsutil.write_atomic`), creating the
    directory if need be; refuses a directory that is not safely ours.  An error names the file.
    ``indent`` None: one line, by json's C encoder (an indented text is written by its Python one)."""
    if not usable_dir(directory, create=True):
        raise OSError(f"{directory}: not a root-owned directory writable only by root")
    try:
        fsutil.write_atomic(directory / name, (json.dumps(doc, indent=indent, sort_keys=True) + "\n").encode())
    except OSError as e:
        raise OSError(f"cannot write {directory / name}: {e.strerror or e}") from e


class BadState(Exception):
    """A state file restartctl did not write (or no longer can read): set aside, never fatal."""


def _syslog(line: str) -> None:
    syslog.syslog(syslog.LOG_WARNING, line)


_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'  # unrolled: "[^"\\]*" between escapes, not an alternation per character
_NOT_BRACKET = r"[^\[\]{}]+"


def _nesting(text: str) -> int:
    """The deepest nesting of arrays and objects in a JSON text (brackets in strings do not count).
    The strings, then all but the brackets, are cut out by the regular expressions' own loops; only the
    brackets are counted here (a Python step per string and bracket: 0.23 against 0.15 ms for the record of
    30 units, read three times in an apply, once before its first restart)."""
    depth = deepest = 0
    for c in re.sub(_NOT_BRACKET, "", re.sub(_STRING, "", text)):
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _load(fd: int) -> dict[str, Any] | None:
    """The record in an open state file; BadState for anything restartctl would not have written."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise BadState("not a regular file")
    if st.st_size > MAX_BYTES:
        raise BadState(f"larger than {MAX_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    while chunk := os.read(fd, min(1 << 20, MAX_BYTES + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BYTES:
            break
    data = b"".join(chunks)
    if len(data) > MAX_BYTES:
        raise BadState(f"larger than {MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
        if _nesting(text) > MAX_DEPTH:
            raise BadState(f"nested deeper than {MAX_DEPTH} levels")
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise BadState(f"not JSON ({e})") from e
    if not isinstance(doc, dict) or doc.get("schema") != STATE_SCHEMA:
        raise BadState(f"not a {STATE_SCHEMA} record")
    odd = sorted(k for k, ok in _FIELDS.items() if k in doc and not ok(doc[k]))
    if odd:
        raise BadState(f"field {odd[0]!r} has the wrong type")
    return doc


def set_aside(directory: Path, name: str, why: str, log: Callable[[str], None]) -> None:
    """Rename a bad state file out of the way (with a timestamp) and say so; the next run writes a new one."""
    aside = f"{name}.bad-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
    try:
        os.rename(directory / name, directory / aside)
    except OSError as e:
        log(f"{directory / name}: {why}; ignored (could not set it aside: {e.strerror})")
        return
    log(f"{directory / name}: {why}; set aside as {aside}")


def read_json(directory: Path, name: str, *, log: Callable[[str], None] = _syslog) -> dict[str, Any] | None:
    """A state record, or None: missing, or bad (a symlink, a FIFO, a device, too big, too deep,
    not a record of ours or one with fields of the wrong type), which is then set aside.

    Opened ``O_NONBLOCK`` (a FIFO must not hang the run) and ``O_NOFOLLOW``, judged by the
    descriptor opened.  Never raises: a hook run must survive whatever lies in its state.
    """
    if not usable_dir(directory, create=False):
        return None
    try:
        fd = os.open(directory / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        if os.path.islink(directory / name):
            set_aside(directory, name, "a symlink", log)
        else:
            log(f"{directory / name}: {e.strerror}; ignored")
        return None
    try:
        return _load(fd)
    except BadState as e:
        set_aside(directory, name, str(e), log)
    except OSError as e:
        log(f"{directory / name}: {e.strerror}; ignored")
    finally:
        os.close(fd)
    return None


def pending_packages(directory: Path, boot: str, *, log: Callable[[str], None] = _syslog) -> frozenset[str]:
    """Packages whose replaced files were still in use at the last run of this boot."""
    doc = read_json(directory, PENDING, log=log)
    if doc is None or doc.get("boot_id") != boot or not boot:
        return frozenset()
    return frozenset(doc.get("packages", []))


def this_boot(directory: Path, boot: str, *, log: Callable[[str], None] = _syslog) -> dict[str, Any] | None:
    """The last run's record, if it is of this boot."""
    doc = read_json(directory, PENDING, log=log)
    return doc if doc is not None and boot and doc.get("boot_id") == boot else None


def last_run(directory: Path, proc: Path, *,
             log: Callable[[str], None] = _syslog) -> tuple[dict[str, Any] | None, bool]:
    """The last run's record, and whether it is of this boot; when it is, only what is still true of it
    (:func:`still_true`: failed restarts stay)."""
    record = read_json(directory, PENDING, log=log)
    current = record is not None and record.get("boot_id") == boot_id(proc)
    return (still_true(record, proc) if record is not None and current else record), current


def journal_cursor(record: dict[str, Any] | None) -> tuple[int, int] | None:
    """The journal's inode and how far this boot's runs have read it; None when no run recorded it."""
    cursor = record.get("journal") if record is not None else None
    return (cursor["inode"], cursor["offset"]) if cursor is not None else None


def last_complete(record: dict[str, Any] | None) -> tuple[float | None, list[str]]:
    """When this boot's last run that missed nothing started, and why the runs since missed something."""
    if record is None:
        return None, []
    return record.get("complete"), list(record.get("incomplete", []))


def failed_checks(doc: dict[str, Any] | None, boot: str) -> dict[tuple[str, str | None, int | None], frozenset[int]]:
    """Units whose check after a restart found processes still stale, in the last run of this boot
    (``doc``: its record, as :func:`read_json` read it)."""
    if doc is None or doc.get("boot_id") != boot or not boot or not isinstance(doc.get("units"), list):
        return {}
    found = {}
    for u in doc["units"]:
        left = u.get("left_pids") if isinstance(u, dict) else None
        if isinstance(left, list) and all(type(p) is int for p in left) and left:
            found[(str(u.get("kind")), u.get("unit"), u.get("uid"))] = frozenset(left)
    return found


def save_pending(directory: Path, boot: str, *, trigger: str, packages: frozenset[str],
                 units: list[dict[str, Any]], journal: tuple[int, int] | None = None,
                 started: float | None = None, incomplete: list[str] | None = None,
                 previous: dict[str, Any] | None = None) -> None:
    """One record of the run: its findings, and (for a run that read the journal) how far it read,
    in the same atomic write, so that the cursor never moves without the findings or back.

    ``started`` is when a run that missed nothing began; ``incomplete`` says what a run missed
    (the next run then looks at every package changed since the last complete one).  A run
    that did not read the journal (``apply``) carries both over from the record it replaces,
    ``previous`` (as :func:`read_json` read it, under the run's lock: an apply read it once, not three
    times, 0.3 ms each for 30 units, two of them after its last restart).
    """
    doc: dict[str, Any] = {
        "schema": STATE_SCHEMA, "boot_id": boot, "time": int(time.time()), "trigger": trigger,
        "packages": sorted(packages), "units": units}
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


ACTIONS = "actions.json"  # what the run in progress is doing: each action before it is taken, and after


def save_actions(directory: Path, boot: str, *, pid: int, trigger: str, entries: list[dict[str, Any]]) -> None:
    """The run's actions so far; the one in progress has ``status`` "started" (an intent).  One line: the
    next run reads it, no one else, and a wave's intent is written between the canary's check and the
    wave's restart (30 units indented: 0.3 ms, against 0.07 ms)."""
    write_json(directory, ACTIONS, {"schema": STATE_SCHEMA, "boot_id": boot, "pid": pid, "trigger": trigger,
                                    "time": int(time.time()), "units": entries}, indent=None)


def interrupted(directory: Path, boot: str, *,
                log: Callable[[str], None] = _syslog) -> tuple[int, list[dict[str, Any]]]:
    """What a run of this boot that never finished did or was doing: its PID and its actions."""
    doc = read_json(directory, ACTIONS, log=log)
    if doc is None or not boot or doc.get("boot_id") != boot or type(doc.get("pid")) is not int:
        return 0, []
    return doc["pid"], list(doc.get("units", []))


def clear_actions(directory: Path) -> None:
    """The run's record is written: its actions are in it."""
    if usable_dir(directory, create=False):
        (directory / ACTIONS).unlink(missing_ok=True)


def save_waiting(directory: Path, boot: str, pid: int, start: int) -> None:
    """Remember that a run waits for unattended-upgrade process ``pid`` (started at ``start``), for ``status``."""
    write_json(directory, WAITING, {"schema": STATE_SCHEMA, "boot_id": boot, "time": int(time.time()),
                                    "after": [pid, start]})


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
    in ``exited``.  Units recorded without ``processes`` (older records) are kept, and so are
    failed restarts: a unit that failed and is down has no processes, and that is the news."""
    kept, exited = [], 0
    for unit in record.get("units", []):
        named = unit.get("processes") if isinstance(unit, dict) else None
        if (isinstance(named, list) and unit.get("status") not in (Status.DONE, Status.FAILED)
                and not any(isinstance(p, list) and len(p) == 2 and isinstance(p[0], int)
                            and stat_field(proc, p[0], STARTTIME) == p[1] for p in named)):
            exited += 1
            continue
        kept.append(unit)
    return {**record, "units": kept, "exited": exited}


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
    """Why a record that is there cannot be trusted, so that it is never taken for "no run yet".

    Its contents are :func:`read_json`'s to judge (it says why, through its ``log``)."""
    path = directory / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"{path}: {e.strerror}"
    if not usable_dir(directory, create=False):
        return f"{directory}: not a root-owned directory writable only by root; its records are ignored"
    if not stat.S_ISREG(st.st_mode):
        return f"{path}: not a regular file; ignored"
    why = fsutil.untrusted(st)
    if why is not None:
        return f"{path}: could have been written by someone other than root ({why}); ignored"
    return None
