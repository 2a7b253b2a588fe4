"""Stage 7, report: what was found, planned and done, as human text and as the versioned JSON
contract, and nothing else (the status and policy commands' text is :mod:`restart.admintext`'s,
the monitoring formats :mod:`restart.formats`').

Detection never formats; this module never detects.  Everything that came from a
process (names, paths, cgroups) passes through :func:`printable` before it
reaches a terminal: a process name can carry terminal escape sequences.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable

from restart import TYPE_CHECKING
from restart.plan import EXECUTABLE, Action, Status
from restart.policy import Act
from restart.processes import OVER_BUDGET_SHOWN, ScanResult, StaleFile
from restart.text import clean, printable, quoted
from restart.units import (
    CONTAINER,
    INIT,
    NONE,
    SESSION,
    USER,
    USER_MANAGER,
    Affected,
    UnitGroup,
)

if TYPE_CHECKING:
    from typing import Any

    from restart.reboot import RebootReason
    from restart.verify import Outcome  # only for annotations: keeps subprocess off the scan path

SCHEMA = "restartctl/1"
APPLY_SCHEMA = "restartctl-apply/1"


def command(argv: Iterable[str]) -> str:
    import shlex  # only when there is a command to show: most hook runs have none

    return printable(shlex.join(argv))


# ---- JSON ---------------------------------------------------------------------------------

def _unit_json(a: Affected) -> dict[str, Any]:
    u = a.unit
    return {"kind": u.kind, "name": None if u.name is None else clean(u.name), "uid": u.uid,
            "guessed": u.guessed, "valid": u.valid, "cgroup": clean(u.cgroup)}


def _process_json(a: Affected, lists: dict[tuple[bool, tuple[Any, ...]], list[dict[str, Any]]], *, unowned: bool,
                  unchanged: bool = False) -> dict[str, Any]:
    """A process's object; its list of stale files is ``lists``' (one per distinct list, shared by the processes
    that map the same files, as most do: :func:`_one_line` writes each once)."""
    p = a.process
    owned = a.unchanged if unchanged else a.files
    key = (unowned, a.unowned if unowned else owned)
    stale = lists.get(key)
    if stale is None:
        files: list[tuple[StaleFile, str | None]] = (
            [(f, None) for f in a.unowned] if unowned else [(o.stale, o.package) for o in owned])
        stale = lists[key] = [{"kind": f.kind, "path": clean(f.path), "package": package,
                               "confidence": f.confidence, "evidence": f.evidence} for f, package in files]
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


def applied_json(record: dict[str, Any], *, indent: int | None) -> str:
    """The restartctl-apply/1 document of ``apply --json``, from the run's record: what became of
    each unit, and what is still pending."""
    import json

    return json.dumps({"schema": APPLY_SCHEMA, "applied": record.get("units", []),
                       "pending": record.get("packages", [])}, indent=indent) + "\n"


def to_json(affected: list[Affected], groups: list[UnitGroup], scan: ScanResult, *,
            actions: list[Action] | None, show_unowned: bool, packages: list[str] | None,
            reboot: dict[str, Any] | None = None, failed: list[dict[str, Any]] | None = None,
            indent: int | None = 2) -> str:
    """The restartctl/1 document; ``indent=None`` writes it on one line (CPython's C encoder only
    writes that: indented, the 60,000 values of a real upgrade took 15-20 ms instead of 3), as
    :func:`_one_line` does."""
    import json  # only JSON runs pay for the import
    lists: dict[tuple[bool, tuple[Any, ...]], list[dict[str, Any]]] = {}
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "scope": {"packages": packages},
        "processes": [_process_json(a, lists, unowned=False) for a in affected if a.files],
        "units": [_group_json(g) for g in groups],
        "stats": {"scanned": scan.scanned, "vanished": scan.vanished, "denied": scan.denied,
                  "errors": scan.errors, "unscanned": scan.unscanned,
                  "over_budget": [{**u._asdict(), "comm": clean(u.comm)} for u in scan.over_budget]},
    }
    if show_unowned:
        doc["unowned"] = [_process_json(a, lists, unowned=True) for a in affected if a.unowned]
        doc["unchanged"] = [_process_json(a, lists, unowned=False, unchanged=True) for a in affected if a.unchanged]
    if actions is not None:
        doc["actions"] = [action_json(a) for a in actions]
    if reboot is not None:
        doc["reboot"] = reboot
    if failed is not None:
        doc["failed"] = failed
    if indent is not None:
        return json.dumps(doc, indent=indent, sort_keys=False) + "\n"
    return _one_line(doc, json.JSONEncoder(check_circular=False).encode) + "\n"


_LISTS = ("processes", "unowned", "unchanged")  # the document's lists of processes (_process_json's objects)


def _one_line(doc: dict[str, Any], encode: Callable[[object], str]) -> str:
    """``json.dumps(doc)``, written with each distinct list of stale files encoded once: most processes
    map the same libraries (the real state's 102 stale processes list 2,168 stale files, 24 distinct),
    and encoding them was 2 of the 3 ms the document took.  A process's object ends with that list."""
    texts: dict[int, str] = {}  # by the id of a list of stale files (the document holds them all)

    def processes(listed: list[dict[str, Any]]) -> str:
        out = []
        for p in listed:
            head = encode({k: v for k, v in p.items() if k != "stale"})
            stale = texts.get(id(p["stale"])) or texts.setdefault(id(p["stale"]), encode(p["stale"]))
            out.append(f'{head[:-1]}, "stale": {stale}}}')
        return f"[{', '.join(out)}]"

    return "{" + ", ".join(f"{encode(k)}: {processes(v) if k in _LISTS else encode(v)}" for k, v in doc.items()) + "}"


def failed_lines(failed: list[dict[str, Any]]) -> list[str]:
    """The last run's failed restarts that are still not healthy (``unitstate.last_failures``)."""
    return [f"Restart FAILED in the last run: {printable(str(f['unit']))} (now {f['active_state']}/{f['sub_state']}"
            f"{', restarted ' + str(f['restarts']) + ' times by systemd' if f['restarts'] else ''})"
            f"{': ' + printable(str(f['detail'])) if f['detail'] else ''}" for f in failed]


# ---- text ---------------------------------------------------------------------------------

def title(g: UnitGroup) -> str:
    """How a unit is named in text.  A name a user chose (her units, a machine scope) is quoted, so
    that no name can pass for restartctl's own words ("x.service: restarted" plus spaces)."""
    name = printable(g.name) if g.name else ""
    if g.kind == USER and not name and g.members and all(
            a.unit.cgroup.endswith(f"/user@{g.uid}.service/init.scope") for a in g.members):
        # A helper the user's service manager forked, such as "(sd-pam)": not a unit of its own.
        comms = ", ".join(sorted({quoted(a.process.comm) for a in g.members}))  # a name its owner can choose
        return f"{comms} of the service manager of user {g.uid} (user@{g.uid}.service)"
    if g.kind == USER:
        return f"{quoted(g.name) if g.name else '(no unit)'} (user {g.uid})"
    if g.kind == USER_MANAGER:
        return f"{name} (service manager of user {g.uid})"
    if g.kind == SESSION:
        return f"{name} (login session of user {g.uid})"
    if g.kind == CONTAINER:
        return f"container {quoted(g.name or '')}"
    if g.kind == INIT:
        return "PID 1 (systemd)"
    if g.kind == NONE:
        return "no unit"
    return name + (" (guessed from its package)" if g.guessed else "")


def _process_lines(members: Iterable[Affected], *, unowned: bool = False, unchanged: bool = False) -> list[str]:
    lines = []
    for a in sorted(members, key=lambda m: m.process.pid):
        p = a.process
        lines.append(f"    pid {p.pid} {quoted(p.comm)} (uid {p.uid})")
        files: list[tuple[str, str, str | None, str]]
        files = ([(f.kind, f.path, None, f.confidence) for f in a.unowned] if unowned else
                 [(o.stale.kind, o.stale.path, o.package, o.stale.confidence)
                  for o in (a.unchanged if unchanged else a.files)])
        for kind, path, package, confidence in files:
            owner = f" ({package})" if package else ""
            note = "" if confidence == "certain" else f" [{confidence}]"
            lines.append(f"      {kind:4} {printable(path)}{owner}{note}")
    return lines


def _packages_shown(packages: list[str], shown: int = 3) -> str:
    """The first few names, then how many more: one short line however big the upgrade."""
    more = f", … {len(packages) - shown} more" if len(packages) > shown else ""
    return ", ".join(printable(p) for p in packages[:shown]) + more


def _summary(groups: list[UnitGroup], affected: list[Affected]) -> str:
    procs = sum(len(g.pids) for g in groups)
    packages = sorted({p for g in groups for p in g.packages})
    kinds = Counter(g.kind for g in groups)
    parts = ", ".join(f"{n} {k}" for k, n in kinds.items())
    return (f"{procs} process{'es' if procs != 1 else ''} in {len(groups)} "
            f"unit{'s' if len(groups) != 1 else ''} ({parts}) use replaced files of "
            f"{len(packages)} package{'s' if len(packages) != 1 else ''}: {_packages_shown(packages)}.")


def scan_text(affected: list[Affected], groups: list[UnitGroup], scan: ScanResult, *,
              show_unowned: bool) -> str:
    out: list[str] = []
    for g in groups:
        out.append(f"{title(g)}  [{', '.join(g.packages)}]")
        out.extend(_process_lines(g.members))
    out.extend(_unowned_text(affected, show_unowned))
    out.append(_summary(groups, affected) if groups else "No process uses replaced package files.")
    out.extend(_stats_text(scan))
    return "\n".join(out) + "\n"


def plan_text(affected: list[Affected], actions: list[Action], scan: ScanResult, *,
              show_unowned: bool, reboot: Iterable[RebootReason] = ()) -> str:
    """``restartctl plan``: the summary and why a reboot is needed first, then each unit with its
    action, the rule that decided it (``file:line``) and its processes."""
    if not actions:
        out = ["No process uses replaced package files: nothing to do.", *reboot_reason_lines(reboot)]
        out.extend(_unowned_text(affected, show_unowned))
        out.extend(_stats_text(scan))
        return "\n".join(out) + "\n"
    counts = Counter(a.action for a in actions)
    out = [_summary([a.group for a in actions], affected),
           "Plan: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ".",
           *reboot_reason_lines(reboot)]
    for a in actions:
        g = a.group
        out.append("")
        out.append(f"{title(g)}  [{', '.join(g.packages)}]")
        decided = f"rule {printable(a.rule)}" if a.rule else "built-in default"
        if a.argv is not None:
            out.append(f"  {a.action}: {command(a.argv)}  ({decided})")
        else:
            out.append(f"  {a.action}: {printable(a.reason)}  ({decided})")
            if a.suggested:
                out.append(f"    suggested: {command(a.suggested)}")
        out.extend(_process_lines(g.members))
    out.extend(_unowned_text(affected, show_unowned))
    out.extend(_stats_text(scan))
    return "\n".join(out) + "\n"


def reboot_reason_lines(reasons: Iterable[RebootReason], *, lead: str = "Reboot needed: ") -> list[str]:
    """One line per cause, its packages together (a unit's reason is one per package)."""
    merged: dict[tuple[str, str], list[str]] = {}
    for r in reasons:
        merged.setdefault((r.kind, r.detail), []).extend([r.package] if r.package else [])
    return [f"{lead}{kind}{' (' + _packages_shown(packages) + ')' if packages else ''}: {printable(detail)}"
            for (kind, detail), packages in merged.items()]


def reboot_lines(reasons: Iterable[RebootReason]) -> list[str]:
    """For the apt terminal: why a reboot is needed, one line per cause."""
    return reboot_reason_lines(reasons, lead="a reboot is needed: ")


def next_step(actions: list[Action], outcomes: list[Outcome], *, listing: bool, reboot: bool) -> str | None:
    """The closing line: what the admin should do now, or None when nothing is left."""
    by_action = {id(o.action): o for o in outcomes}
    failed = [o.action.group for o in outcomes if o.status == Status.FAILED]
    to_run = [a for a in actions if a.action in EXECUTABLE and a.argv is not None
              and (id(a) not in by_action or by_action[id(a)].status == Status.DECLINED)]
    to_people = [a for a in actions if a.action not in EXECUTABLE and a.action != Act.IGNORE]
    steps = []
    if failed:
        steps.append(f"see why {title(failed[0])}{' and others' if len(failed) > 1 else ''} failed "
                     f"('systemctl status {printable(failed[0].name or '')}'), then 'restartctl apply'")
    if to_run:
        n = len(to_run)
        steps.append(f"'restartctl apply' {'restarts' if listing else 'retries'} the {n} unit{'s' if n != 1 else ''} "
                     f"{'listed' if listing else 'not restarted'}")
    if to_people:
        n = len(to_people)
        steps.append(f"'restartctl status' lists the {n} unit{'s' if n != 1 else ''} left to people")
    if reboot:
        steps.append("reboot when convenient")
    return "next: " + "; ".join(steps) if steps else None


def earlier_line(count: int) -> str:
    """The backlog in one line: units earlier runs left pending, which this transaction did not touch."""
    return (f"{count} unit{'s' if count != 1 else ''} still pending from earlier runs "
            "('restartctl status' lists them)")


def hook_lines(actions: list[Action], *, failed: list[str], skips: dict[int, str] | None = None,
               earlier: Collection[int] = ()) -> list[str]:
    """What a package transaction's hook shows: a summary, then one line per unit; or nothing.

    ``skips`` (a dry run's): ``id(action)`` -> why the real run would skip that restart;
    ``earlier``: the ``id`` of actions only earlier runs' pending packages led to (one line for all)."""
    lines = [f"dpkg reported errors for: {', '.join(failed)}"] if failed else []
    if not actions:
        return lines
    now = [a for a in actions if id(a) not in earlier]
    if now:
        lines.append(headline(now))
    for a in now:
        what = command(a.argv) if a.argv is not None else printable(a.reason)
        skip = (skips or {}).get(id(a))
        lines.append(f"  {title(a.group)}: {a.action}: {what}"
                     + (f" (would be skipped: {printable(skip)})" if skip else ""))
    if len(now) < len(actions):
        lines.append(earlier_line(len(actions) - len(now)))
    lines.append("nothing was restarted (list mode); 'restartctl plan' shows the details")
    return lines


def outcome_line(o: Outcome) -> str:
    """One line per carried-out action, for the terminal and the log."""
    g = o.action.group
    verb = {Status.DONE: "restarted" if o.action.action != Act.REEXEC else "re-executed", Status.FAILED: "FAILED",
            Status.SKIPPED: "skipped", Status.DECLINED: "left alone"}[o.status]
    first = o.detail.splitlines()[0] if o.detail else ""
    took = f" ({o.seconds:.1f} s)" if o.status in (Status.DONE, Status.FAILED) else ""
    return f"  {title(g)}: {verb}{': ' + printable(first) if first and o.status != Status.DONE else ''}{took}"


def cut_short_line(actions: list[Action], outcomes: list[Outcome], why: str, *, shown: int = 10) -> str:
    """A run cut short (``why``: "interrupted", "out of time"): which restarts it never got to."""
    handled = {id(o.action) for o in outcomes}
    left = [a for a in actions if a.action in EXECUTABLE and a.argv is not None and id(a) not in handled]
    n = len(left)
    names = ", ".join(printable(a.group.name or "?") for a in left[:shown]) + \
        (f", and {n - shown} more" if n > shown else "")
    return (f"{why}: {n} unit{'s' if n != 1 else ''} not handled stay{'s' if n == 1 else ''} pending"
            f"{': ' + names if n else ''}")


def run_units(actions: list[Action], outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """The state record of a run: every action with what became of it."""
    by_action = {id(o.action): o for o in outcomes}
    units = []
    for a in actions:
        o = by_action.get(id(a))
        units.append({**action_json(a), "status": o.status if o else Status.LISTED,
                      "detail": clean(o.detail) if o else "", **({"left_pids": list(o.left)} if o and o.left else {}),
                      **({"seconds": round(o.seconds, 3), "wave": o.wave} if o else {})})
    return units


def headline(actions: list[Action], *, shown: int = 3) -> str:
    """One short line for many units: "11 units, 28 packages (libssl3, libc6, zlib1g, … 25 more)"."""
    packages = sorted({p for a in actions for p in a.group.packages})
    n, m = len(actions), len(packages)
    return (f"{n} unit{'s' if n != 1 else ''}, {m} package{'s' if m != 1 else ''} "
            f"({_packages_shown(packages, shown)}) use{'s' if n == 1 else ''} replaced files:")


def intro_lines(actions: list[Action], *, failed: list[str], asking: bool, seconds: float,
                default_yes: bool = True, earlier: Collection[int] = ()) -> list[str]:
    """What an acting run shows before its first restart (or its question): the summary and, when it
    asks, how to answer (the question lists the restarts, restart.ask)."""
    lines = [f"dpkg reported errors for: {', '.join(failed)}"] if failed else []
    now = [a for a in actions if id(a) not in earlier]
    if now:
        lines.append(headline(now))
    if len(now) < len(actions):
        lines.append(earlier_line(len(actions) - len(now)))
    if asking:
        lines.append(f"One question for all the restarts below, then the chosen ones are restarted; Enter means "
                     f"{'yes' if default_yes else 'no'}, ? explains the answers; within {max(seconds, 0):.0f} s, "
                     "after which nothing is restarted and they stay pending.")
    return lines


def applied_lines(actions: list[Action], outcomes: list[Outcome], *, failed: list[str],
                  progress_shown: bool = False, earlier: Collection[int] = ()) -> list[str]:
    """What an acting run shows: a summary, one line per unit, and each failure's detail.

    With ``progress_shown`` the summary and each outcome's line were already shown as they came
    (:func:`intro_lines`, :func:`outcome_line`): only what is left to people and the totals follow."""
    lines = [f"dpkg reported errors for: {', '.join(failed)}"] if failed and not progress_shown else []
    if not actions:
        return lines
    if not progress_shown:
        lines.append(headline(actions))
        lines.extend(outcome_line(o) for o in outcomes)
    done_ids = {id(o.action) for o in outcomes}
    executable = {id(a) for a in actions if a.action in EXECUTABLE and a.argv is not None}
    for a in actions:
        if id(a) not in done_ids and id(a) not in executable and id(a) not in earlier:
            what = command(a.suggested) if a.suggested else printable(a.reason)
            lines.append(f"  {title(a.group)}: {a.action}: {what}" if a.suggested is None else
                         f"  {title(a.group)}: {a.action}: {printable(a.reason)} ({what})")
    for o in outcomes:
        if o.status == Status.FAILED:
            lines.append(f"restart of {title(o.action.group)} failed:")
            lines.extend(f"    {printable(line)}" for line in o.detail.splitlines())
    counts = Counter(o.status for o in outcomes)
    left = sum(1 for a in actions if id(a) not in executable)
    waves = len({o.wave for o in outcomes if o.status in (Status.DONE, Status.FAILED)})
    lines.append(f"{counts[Status.DONE]} restarted, {counts[Status.FAILED]} failed, {counts[Status.SKIPPED]} skipped, "
                 f"{counts[Status.DECLINED]} left alone, {left} left to people"
                 + (f", in {waves} wave{'s' if waves != 1 else ''}" if waves else ""))
    return lines


def detail_lines(groups: list[UnitGroup], *, limit: int = 20) -> list[str]:
    """For the system log: each stale process of each unit and the files it still uses."""
    lines = []
    for g in groups:
        for a in g.members:
            files = ", ".join(f"{o.stale.kind} {o.stale.path} ({o.package})" for o in a.files[:limit])
            more = f" and {len(a.files) - limit} more" if len(a.files) > limit else ""
            lines.append(f"{title(g)}: pid {a.process.pid} {a.process.comm} (uid {a.process.uid}): {files}{more}")
    return lines


def _unowned_text(affected: list[Affected], show: bool) -> list[str]:
    if not show:
        return []
    members = [a for a in affected if a.unowned]
    same = [a for a in affected if a.unchanged]
    lines = ["Replaced files no package in scope owns (never acted on):",
             *_process_lines(members, unowned=True)] if members else []
    if same:
        lines += ["Replaced files whose content did not change (unchanged, never acted on):",
                  *_process_lines(same, unchanged=True)]
    return lines


def _stats_text(scan: ScanResult) -> list[str]:
    lines = [f"Warning: {unscanned_note(scan)}"] if scan.unscanned else []
    if scan.denied:
        import os

        why = "not even by root" if os.geteuid() == 0 else "run as root to see all"
        lines.append(f"Warning: {scan.denied} process{'es' if scan.denied != 1 else ''} could not be read ({why}).")
    return lines


def unscanned_note(scan: ScanResult) -> str:
    """What was not scanned, in one line; a process over a budget by PID, owner and (quoted) name."""
    n = scan.unscanned - len(scan.over_budget)
    parts = [f"{n} process{'es were' if n != 1 else ' was'} not scanned before the time ran out "
             "(users' processes go last)"] if n else []
    shown = scan.over_budget[:OVER_BUDGET_SHOWN]
    parts += [f"process {u.pid} {quoted(u.comm)} of uid {u.uid} was not scanned: {u.reason}" for u in shown]
    if len(scan.over_budget) > len(shown):
        parts.append(f"and {len(scan.over_budget) - len(shown)} more over a budget")
    return "; ".join(parts) + "; what they use is checked again on the next run."
