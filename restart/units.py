"""Stage 3, units: what manages each process, from its cgroup path.

The path is parsed anchored at the root of the hierarchy.  Only root can create
cgroups outside ``user@UID.service``, so the top levels are trustworthy; anything
below a user's manager belongs to that user whatever it is called (a user may
name a cgroup ``sshd.service`` or ``init.scope`` there).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from enum import StrEnum

from restart import NamedTuple
from restart.packages import DpkgDatabase
from restart.processes import FIRST_USER_UID, ProcessInfo, ScanResult, StaleFile


class UnitKind(StrEnum):
    """What manages a process (``unit.kind`` in every output)."""

    SYSTEM = "system"              # a system unit
    USER = "user"                  # a unit of a user's own service manager
    SESSION = "session"            # a login session's scope
    INIT = "init"                  # PID 1 itself
    USER_MANAGER = "user-manager"  # a user's service manager (user@UID.service)
    CONTAINER = "container"        # a container or another PID namespace
    NONE = "none"                  # nothing: a process no manager tracks


SYSTEM, USER, SESSION, INIT, USER_MANAGER, CONTAINER, NONE = UnitKind  # the members, by the names every stage uses

UNIT_TYPES = ("service", "socket", "target", "device", "mount", "automount", "swap",
              "timer", "path", "slice", "scope")
UNIT_NAME_MAX = 255
_PREFIX = r"[A-Za-z0-9:_.\\-]+"
# Patterns as text: re compiles (and caches) them on first use, not at import (a run that acts restarts
# services after using only the first: the rest were 0.3 ms before its first restart).
_UNIT_RE = rf"(?P<prefix>{_PREFIX})(?:@(?P<instance>[A-Za-z0-9:_.\\@-]*))?\.(?P<type>{'|'.join(UNIT_TYPES)})"
_USER_SLICE_RE = r"user-(\d+)\.slice"
_USER_MANAGER_RE = r"user@(\d+)\.service"
_SESSION_RE = r"session-[A-Za-z0-9]+\.scope"
_MACHINE_SCOPE_RE = r"machine-(.+)\.scope"
_NSPAWN_RE = r"systemd-nspawn@(.+)\.service"


def valid_unit_name(name: str, *, allow_template: bool = False) -> bool:
    """systemd's unit_name_is_valid(): plain ``foo.service`` or instance ``foo@bar.service``."""
    if not name or len(name) > UNIT_NAME_MAX:
        return False
    m = re.fullmatch(_UNIT_RE, name)
    if m is None:
        return False
    return allow_template or m["instance"] != ""


def unit_type(name: str) -> str:
    return name.rpartition(".")[2]


def unescape_unit(text: str) -> str:
    r"""Undo systemd's ``\xNN`` name escaping (machine names carry ``\x2d`` for '-')."""
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m[1], 16)), text)


class Unit(NamedTuple):
    kind: UnitKind
    name: str | None          # unit name (or container/machine name); None when nothing manages it
    uid: int | None = None    # the owning user for user units, user managers and sessions
    guessed: bool = False     # derived from package contents, not from the cgroup
    valid: bool = True        # name passed the unit-name grammar; invalid names are never acted on
    cgroup: str = ""          # the cgroup path it was derived from (for reports)


def cgroup_path(text: str) -> str | None:
    """The systemd cgroup path of a ``/proc/PID/cgroup`` text.

    The unified (``0::``) line when it says anything, else the v1 ``name=systemd`` one.
    Lines end only at "\\n" (not at \\r, \\v or U+2028, which ``splitlines`` would
    honour).  A cgroup name may itself hold a newline, though, and so forge a line: a
    hierarchy that appears twice is ambiguous, and then only a reading that leaves the
    process in a user's own subtree is believed (that is where such names can be made).
    """
    unified: list[str] = []
    named: list[str] = []
    for line in text.split("\n"):
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "":
            unified.append(path)
        elif controllers == "name=systemd":
            named.append(path)
    if len(unified) > 1 or len(named) > 1:
        return next((p for p in unified + named if _user_territory(p) is not None), None)
    if unified and unified[0] not in ("", "/"):
        return unified[0]
    return named[0] if named else unified[0] if unified else None


def _user_territory(path: str) -> tuple[int, str, list[str]] | None:
    """(uid, unit, what lies below it) when ``path`` is a user's manager or session subtree."""
    parts = [p for p in path.split("/") if p]
    if len(parts) < 3 or parts[0] != "user.slice":
        return None
    user_slice = re.fullmatch(_USER_SLICE_RE, parts[1])
    if user_slice is None:
        return None
    uid = int(user_slice[1])
    manager = re.fullmatch(_USER_MANAGER_RE, parts[2])
    if (manager and int(manager[1]) == uid) or re.fullmatch(_SESSION_RE, parts[2]):
        return uid, parts[2], parts[3:]
    return None


def resolve(cgroup: str | None, *, pid_namespace: str | None = None) -> Unit:
    """Map one process's cgroup path (and PID namespace) to what manages it.

    A user's manager subtree and login sessions are decided first: whatever a user
    creates there (a unit named like a system one, a machine scope, a process in its
    own PID namespace) stays that user's.
    """
    path = cgroup or ""
    territory = _user_territory(path)
    if territory is not None:
        uid, unit, below = territory
        if re.fullmatch(_SESSION_RE, unit):
            return Unit(SESSION, unit, uid, cgroup=path)
        return _user_unit(uid, below, path)
    parts = [p for p in path.split("/") if p]
    if pid_namespace is not None:
        return Unit(CONTAINER, _machine_name(parts) or pid_namespace, cgroup=path)
    if not parts:
        return Unit(NONE, None, cgroup=path)
    if parts == ["init.scope"]:
        return Unit(INIT, "init.scope", cgroup=path)
    i = 0
    while i < len(parts) and parts[i].endswith(".slice"):
        i += 1
    if i == len(parts):
        return Unit(NONE, None, cgroup=path)  # a process directly in a slice: nothing to restart
    unit = parts[i]
    if unit_type(unit) not in UNIT_TYPES:
        return Unit(NONE, None, cgroup=path)  # a cgroup some other tool made: not a systemd unit
    if parts[0] == "machine.slice":
        return Unit(CONTAINER, _machine_name(parts) or unit, cgroup=path)
    return Unit(SYSTEM, unit, valid=valid_unit_name(unit), cgroup=path)


def _user_unit(uid: int, below: list[str], path: str) -> Unit:
    """Inside ``user@UID.service``: the manager itself, or one of the user's own units."""
    if not below or below == ["init.scope"]:
        return Unit(USER_MANAGER, f"user@{uid}.service", uid, cgroup=path)
    i = 0
    while i < len(below) and below[i].endswith(".slice"):
        i += 1
    if i == len(below):
        return Unit(USER, None, uid, valid=False, cgroup=path)
    unit = below[i]
    return Unit(USER, unit, uid, valid=valid_unit_name(unit), cgroup=path)


def _machine_name(parts: list[str]) -> str | None:
    for part in parts:
        m = re.fullmatch(_MACHINE_SCOPE_RE, part) or re.fullmatch(_NSPAWN_RE, part)
        if m:
            return unescape_unit(m[1])
    return None


_INIT_SCRIPT_RE = r"[A-Za-z0-9][A-Za-z0-9_.+-]*"


def valid_init_script(name: str) -> bool:
    return len(name) <= UNIT_NAME_MAX and re.fullmatch(_INIT_SCRIPT_RE, name) is not None


def guess_init_script(exe: str | None, package_scripts: list[str], existing: set[str]) -> str | None:
    """checkrestart's fallback where systemd is not running: which init script runs ``exe``.

    ``package_scripts`` are the ``/etc/init.d`` scripts the executable's package ships;
    ``existing`` those present in ``/etc/init.d``.  Prefer the script named like the
    executable, else the package's only script.  Never a script of another package (or of
    none) merely named like the executable: that would restart something unrelated.
    """
    base = (exe or "").rpartition("/")[2]
    scripts = [s for s in package_scripts if s in existing and valid_init_script(s)]
    if base in scripts:
        return base
    if len(scripts) == 1:
        return scripts[0]
    return None


class OwnedFile(NamedTuple):
    stale: StaleFile
    package: str


class Affected(NamedTuple):
    """One stale process, what manages it, and which package files it still uses."""

    process: ProcessInfo
    unit: Unit
    files: tuple[OwnedFile, ...]     # package files: these can cause an action
    unowned: tuple[StaleFile, ...]   # no package (or none in scope) owns these: listed only
    unchanged: tuple[OwnedFile, ...] = ()  # replaced by a file with the same content: listed only


# The order units are listed and acted on: services first, PID 1 and user managers last.
KIND_ORDER = (SYSTEM, USER, USER_MANAGER, INIT, SESSION, CONTAINER, NONE)


class UnitGroup(NamedTuple):
    """Everything stale under one manager: a unit, a session, a container, or a lone process."""

    kind: UnitKind
    name: str | None
    uid: int | None
    guessed: bool = False
    valid: bool = True
    pids: tuple[int, ...] = ()
    packages: tuple[str, ...] = ()
    members: tuple[Affected, ...] = ()

    @property
    def key(self) -> tuple[int, str, str, int]:
        return (KIND_ORDER.index(self.kind), self.name or "", str(self.uid), self.pids[0])


def group(affected: list[Affected]) -> list[UnitGroup]:
    """Group stale processes by what manages them; processes with no package file are left out."""
    buckets: dict[tuple[UnitKind, str | None, int | None, int | None], list[Affected]] = {}
    for a in affected:
        if not a.files:
            continue
        lone = a.process.pid if a.unit.kind == NONE else None
        buckets.setdefault((a.unit.kind, a.unit.name, a.unit.uid, lone), []).append(a)
    groups = []
    for (kind, name, uid, _), members in buckets.items():
        first = members[0].unit
        groups.append(UnitGroup(
            kind=kind, name=name, uid=uid, guessed=first.guessed, valid=all(m.unit.valid for m in members),
            pids=tuple(sorted(m.process.pid for m in members)),
            packages=tuple(sorted({f.package for m in members for f in m.files})), members=tuple(members)))
    return sorted(groups, key=lambda g: g.key)


def attribute(scan: ScanResult, db: DpkgDatabase, *, in_scope: dict[str, str] | None,
              systemd: bool, init_d: set[str], unchanged: Mapping[str, float] | None = None,
              started: Callable[[int], float | None] = lambda pid: None) -> list[Affected]:
    """Attach owning packages and managing units to every stale process.

    ``in_scope`` maps canonical paths to packages when the run is restricted to some
    packages (a transaction); otherwise owners are looked up for the stale paths only.
    Without systemd, a process's unit is guessed from its executable's package.
    Package files in ``unchanged`` (canonical path -> since when that content was on
    disk) were replaced by identical content: set apart for a process that ``started``
    (epoch) since then, which cannot have loaded another version.
    """
    unchanged = unchanged or {}
    # Each distinct stale file once (most are libraries many processes map): its canonical path, its owner;
    # each distinct cgroup (and PID namespace) once: its unit.
    paths = {f: db.canonical(f.path) for f in dict.fromkeys(f for p in scan.processes for f in p.stale)}
    canonical = set(paths.values())
    owners = {p: in_scope[p] for p in canonical if p in in_scope} if in_scope is not None else db.owners(canonical)
    owned_as = {f: OwnedFile(f, owners[c]) for f, c in paths.items() if c in owners}
    guesses: dict[str | None, str | None] = {}
    units: dict[tuple[str, str | None], Unit] = {}
    result = []
    for proc in scan.processes:
        mine = [owned_as[f] for f in proc.stale if f in owned_as]
        start = started(proc.pid) if unchanged and any(paths[o.stale] in unchanged for o in mine) else None
        alike = {c for o in mine if (c := paths[o.stale]) in unchanged and start is not None and start >= unchanged[c]}
        owned = tuple(o for o in mine if paths[o.stale] not in alike) if alike else tuple(mine)
        same = tuple(o for o in mine if paths[o.stale] in alike) if alike else ()
        unowned = tuple(f for f in proc.stale if f not in owned_as)
        where = (proc.cgroup, proc.pid_namespace)
        unit = units.get(where) or units.setdefault(where, resolve(cgroup_path(where[0]), pid_namespace=where[1]))
        if unit.kind == USER_MANAGER and not _is_manager(proc, unit.uid):
            # Not the manager but a helper it forked, like "(sd-pam)", or a process of hers she
            # moved into her manager's own cgroup (AttachProcessesToUnit): part of user@UID.service,
            # which a re-exec of the manager leaves as it is.  Named after it, never acted on.
            unit = Unit(USER, unit.name, unit.uid, valid=False, cgroup=unit.cgroup)
        if unit.kind == NONE and not systemd and owned and 0 <= proc.uid < FIRST_USER_UID:
            # Only system daemons (root or a system account) lead to an init script: a user's own
            # run of a daemon's binary must never make root (re)start the service.
            if proc.exe not in guesses:
                guesses[proc.exe] = _guess(db, proc.exe, init_d)
            script = guesses[proc.exe]
            if script is not None:
                unit = Unit(SYSTEM, script, guessed=True, cgroup=unit.cgroup)
        result.append(Affected(proc, unit, owned, unowned, same))
    return result


SYSTEMD = ("/usr/lib/systemd/systemd", "/lib/systemd/systemd")


def _is_manager(proc: ProcessInfo, uid: int | None) -> bool:
    """A user's service manager: started by PID 1, running systemd's own binary, as that user.

    A process in ``user@UID.service``'s own cgroup is not enough: the user may move any of
    her processes there (PID 1 lets her, over D-Bus), and may orphan them to PID 1.
    """
    return proc.ppid == 1 and proc.exe in SYSTEMD and proc.uid == uid


def _guess(db: DpkgDatabase, exe: str | None, init_d: set[str]) -> str | None:
    """The init script of the package that ships ``exe``; an executable no package owns gets none."""
    package = db.owners([db.canonical(exe)]).get(db.canonical(exe)) if exe else None
    return guess_init_script(exe, db.init_scripts(package), init_d) if package else None
