"""Stage 7, report: human text and the versioned JSON contract, and nothing else.

Detection never formats; this module never detects.  Everything that came from a
process (names, paths, cgroups) passes through :func:`printable` before it
reaches a terminal: a process name can carry terminal escape sequences.
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Iterable
from typing import Any

from restart.plan import Action
from restart.processes import ScanResult
from restart.units import CONTAINER, INIT, NONE, SESSION, USER, USER_MANAGER, Affected, UnitGroup

SCHEMA = "restartctl/1"


def clean(text: str) -> str:
    """Undecodable bytes become ``\\xNN`` (they were kept as surrogates on the way in)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def printable(text: str) -> str:
    """Safe for a terminal: control, format and separator characters are escaped."""
    text = clean(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def command(argv: Iterable[str]) -> str:
    return printable(shlex.join(argv))


# ---- JSON ---------------------------------------------------------------------------------

def _unit_json(a: Affected) -> dict[str, Any]:
    u = a.unit
    return {"kind": u.kind, "name": None if u.name is None else clean(u.name), "uid": u.uid,
            "guessed": u.guessed, "valid": u.valid, "cgroup": clean(u.cgroup)}


def _process_json(a: Affected, *, unowned: bool) -> dict[str, Any]:
    p = a.process
    stale = ([{"kind": f.kind, "path": clean(f.path), "package": None, "confidence": f.confidence,
               "evidence": f.evidence} for f in a.unowned] if unowned else
             [{"kind": o.stale.kind, "path": clean(o.stale.path), "package": o.package,
               "confidence": o.stale.confidence, "evidence": o.stale.evidence} for o in a.files])
    return {"pid": p.pid, "ppid": p.ppid, "uid": p.uid, "comm": clean(p.comm),
            "exe": None if p.exe is None else clean(p.exe), "unit": _unit_json(a), "stale": stale}


def _group_json(g: UnitGroup) -> dict[str, Any]:
    return {"kind": g.kind, "name": None if g.name is None else clean(g.name), "uid": g.uid,
            "guessed": g.guessed, "valid": g.valid, "pids": list(g.pids), "packages": list(g.packages)}


def action_json(a: Action) -> dict[str, Any]:
    g = a.group
    return {"unit": None if g.name is None else clean(g.name), "kind": g.kind, "uid": g.uid,
            "pids": list(g.pids), "packages": list(g.packages), "action": a.action,
            "argv": None if a.argv is None else list(a.argv), "reason": clean(a.reason),
            "suggested": None if a.suggested is None else list(a.suggested), "rule": a.rule}


def to_json(affected: list[Affected], groups: list[UnitGroup], scan: ScanResult, *,
            actions: list[Action] | None, show_unowned: bool, packages: list[str] | None) -> str:
    import json  # only JSON runs pay for the import
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "scope": {"packages": packages},
        "processes": [_process_json(a, unowned=False) for a in affected if a.files],
        "units": [_group_json(g) for g in groups],
        "stats": {"scanned": scan.scanned, "vanished": scan.vanished, "denied": scan.denied},
    }
    if show_unowned:
        doc["unowned"] = [_process_json(a, unowned=True) for a in affected if a.unowned]
    if actions is not None:
        doc["actions"] = [action_json(a) for a in actions]
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


# ---- text ---------------------------------------------------------------------------------

def _title(g: UnitGroup) -> str:
    name = printable(g.name) if g.name else ""
    if g.kind == USER:
        return f"{name or '(no unit)'} (user {g.uid})"
    if g.kind == USER_MANAGER:
        return f"{name} (service manager of user {g.uid})"
    if g.kind == SESSION:
        return f"{name} (login session of user {g.uid})"
    if g.kind == CONTAINER:
        return f"container {name}"
    if g.kind == INIT:
        return "PID 1 (systemd)"
    if g.kind == NONE:
        return "no unit"
    return name + (" (guessed from its package)" if g.guessed else "")


def _process_lines(members: Iterable[Affected], *, unowned: bool = False) -> list[str]:
    lines = []
    for a in sorted(members, key=lambda m: m.process.pid):
        p = a.process
        lines.append(f"    pid {p.pid} {printable(p.comm)} (uid {p.uid})")
        files: list[tuple[str, str, str | None, str]]
        files = ([(f.kind, f.path, None, f.confidence) for f in a.unowned] if unowned else
                 [(o.stale.kind, o.stale.path, o.package, o.stale.confidence) for o in a.files])
        for kind, path, package, confidence in files:
            owner = f" ({package})" if package else ""
            note = "" if confidence == "certain" else f" [{confidence}]"
            lines.append(f"      {kind:4} {printable(path)}{owner}{note}")
    return lines


def _summary(groups: list[UnitGroup], affected: list[Affected]) -> str:
    procs = sum(len(g.pids) for g in groups)
    packages = sorted({p for g in groups for p in g.packages})
    kinds = Counter(g.kind for g in groups)
    parts = ", ".join(f"{n} {k}" for k, n in kinds.items())
    return (f"{procs} process{'es' if procs != 1 else ''} in {len(groups)} "
            f"unit{'s' if len(groups) != 1 else ''} ({parts}) use replaced files of "
            f"{len(packages)} package{'s' if len(packages) != 1 else ''}: {', '.join(packages)}.")


def scan_text(affected: list[Affected], groups: list[UnitGroup], scan: ScanResult, *,
              show_unowned: bool) -> str:
    out: list[str] = []
    for g in groups:
        out.append(f"{_title(g)}  [{', '.join(g.packages)}]")
        out.extend(_process_lines(g.members))
    out.extend(_unowned_text(affected, show_unowned))
    out.append(_summary(groups, affected) if groups else "No process uses replaced package files.")
    out.extend(_stats_text(scan))
    return "\n".join(out) + "\n"


def plan_text(affected: list[Affected], actions: list[Action], scan: ScanResult, *,
              show_unowned: bool) -> str:
    out: list[str] = []
    for a in actions:
        g = a.group
        out.append(f"{_title(g)}  [{', '.join(g.packages)}]")
        if a.argv is not None:
            out.append(f"  {a.action}: {command(a.argv)}")
        else:
            out.append(f"  {a.action}: {printable(a.reason)}")
            if a.suggested:
                out.append(f"    suggested: {command(a.suggested)}")
        out.extend(_process_lines(g.members))
    out.extend(_unowned_text(affected, show_unowned))
    if actions:
        counts = Counter(a.action for a in actions)
        out.append(_summary([a.group for a in actions], affected))
        out.append("Plan: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ".")
    else:
        out.append("No process uses replaced package files: nothing to do.")
    out.extend(_stats_text(scan))
    return "\n".join(out) + "\n"


def hook_lines(actions: list[Action], *, failed: list[str]) -> list[str]:
    """What a package transaction's hook shows: a summary, then one line per unit; or nothing."""
    lines = [f"dpkg reported errors for: {', '.join(failed)}"] if failed else []
    if not actions:
        return lines
    packages = sorted({p for a in actions for p in a.group.packages})
    n = len(actions)
    lines.append(f"{n} unit{'s' if n != 1 else ''} still use{'s' if n == 1 else ''} replaced files of "
                 f"{', '.join(packages)}:")
    for a in actions:
        what = command(a.argv) if a.argv is not None else printable(a.reason)
        lines.append(f"  {_title(a.group)}: {a.action}: {what}")
    lines.append("nothing was restarted (list mode); 'restartctl plan' shows the details")
    return lines


def detail_lines(groups: list[UnitGroup], *, limit: int = 20) -> list[str]:
    """For the system log: each stale process of each unit and the files it still uses."""
    lines = []
    for g in groups:
        for a in g.members:
            files = ", ".join(f"{o.stale.kind} {o.stale.path} ({o.package})" for o in a.files[:limit])
            more = f" and {len(a.files) - limit} more" if len(a.files) > limit else ""
            lines.append(f"{_title(g)}: pid {a.process.pid} {a.process.comm} (uid {a.process.uid}): {files}{more}")
    return lines


def _unowned_text(affected: list[Affected], show: bool) -> list[str]:
    members = [a for a in affected if a.unowned]
    if not show or not members:
        return []
    return ["Replaced files no package in scope owns (never acted on):",
            *_process_lines(members, unowned=True)]


def _stats_text(scan: ScanResult) -> list[str]:
    if scan.denied:
        return [f"Warning: {scan.denied} processes could not be read (run as root to see all)."]
    return []
