"""Stage 7, report: the text of the admin's commands that look back and look up, never scan.

``restartctl status`` (the last run, from its record, and whether a reboot is needed) and
``restartctl policy show`` / ``policy explain UNIT`` (the effective settings and rules, and which
rule decides a unit).  Units are named as :mod:`restart.report` names them; everything that came
from a process or a record passes through :func:`printable` before it reaches a terminal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from restart import TYPE_CHECKING
from restart.plan import Status, make_plan
from restart.policy import Act, Policy, Rule
from restart.report import command, reboot_reason_lines, title
from restart.text import printable
from restart.units import INIT, SYSTEM, USER, USER_MANAGER, UnitGroup, resolve, valid_unit_name

if TYPE_CHECKING:
    from typing import Any

    from restart.reboot import RebootReason


def status_text(record: dict[str, Any] | None, *, current_boot: bool, reboot: Iterable[RebootReason] = (),
                down: Iterable[str] = (), unusable: bool = False) -> str:
    """``restartctl status``: the last run, from the state file, and whether a reboot is needed.

    ``unusable``: a record is there but cannot be used (the caller says why, on standard error)."""
    lines = (["Last run: unknown (its record cannot be used)"] if unusable else
             _last_run_lines(record, current_boot=current_boot, down=set(down)))
    lines.extend(reboot_reason_lines(reboot))
    return "\n".join(lines) + "\n"


def _unit_word(u: dict[str, Any]) -> tuple[str, str]:
    """What became of a unit, in the words the run used: its action when only listed (defer, notify,
    restart), else its outcome, with the reason or the detail (why skipped, what failed)."""
    status = str(u.get("status"))
    if status == Status.LISTED:
        return str(u.get("action") or Status.LISTED), str(u.get("reason") or "")
    words: dict[str, str] = {Status.DONE: "restarted", Status.FAILED: "restart FAILED", Status.DECLINED: "left alone"}
    word = words.get(status, status)
    return word, (str(u.get("detail") or "").splitlines() or [str(u.get("reason") or "")])[0]


def _last_run_lines(record: dict[str, Any] | None, *, current_boot: bool, down: set[str]) -> list[str]:
    if record is None:
        return ["No run recorded yet."]
    import time

    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(record.get("time", 0)))
    lines = [f"Last run: {when} ({printable(str(record.get('trigger', '?')))})"]
    if not current_boot:
        lines.append("It was before the last reboot: nothing from it is pending any more.")
        return lines
    units = [u for u in record.get("units", []) if isinstance(u, dict)]
    pending = [u for u in units if u.get("status") != Status.DONE]
    done = [u for u in units if u.get("status") == Status.DONE]
    lines.append(f"Found {len(units)} unit(s): {len(done)} restarted, {len(pending)} pending.")
    for u in pending:
        name = printable(str(u.get("unit") or f"pid {u.get('pids')}"))
        word, why = _unit_word(u)
        lines.append(f"  {name} ({u.get('kind')}): {word}{': ' + printable(why) if why else ''}")
        if u.get("unit") in down:
            lines.append(f"    {name} is not running now: see 'systemctl status {name}'")
    exited = record.get("exited")
    if isinstance(exited, int) and exited:
        lines.append(f"Not shown: {exited} unit(s) pending at that run whose processes have all exited since.")
    return lines


def policy_text(pol: Policy) -> str:
    """``restartctl policy show``: the effective settings and the rules in the order they are tried."""
    sources = dict(pol.sources)
    lines = ["Settings:"]
    for key, value in pol.settings._asdict().items():
        shown = ", ".join(value) if isinstance(value, tuple) else str(value).lower() if isinstance(value, bool) \
            else str(value)
        lines.append(f"  {key} = {shown}    ({sources.get(key, 'built-in default')})")
    lines.append("Rules (the first that matches decides):")
    for r in pol.rules:
        lines.append(f"  {r.source}: {_rule_text(r)}")
    lines.append("  (no rule matches: system services restart; PID 1 and user managers re-execute; "
                 "user units, sessions and the rest are reported to people)")
    return "\n".join(lines) + "\n"


def _rule_text(r: Rule) -> str:
    what = f"exec {command(r.argv)}" if r.action == Act.EXEC else r.action
    match = []
    if r.units:
        match.append(f"unit {' '.join(r.units)}")
    if r.packages:
        match.append(f"package {' '.join(r.packages)}")
    if r.scope != "any":
        match.append(f"scope {r.scope}")
    return f"{', '.join(match) or 'any unit'} -> {what}" + (f" ({printable(r.reason)})" if r.reason else "")


def _explained_group(unit: str, scope: str, packages: tuple[str, ...]) -> UnitGroup:
    """The group a plan would have for this unit, classified as the scan classifies a cgroup:
    ``init.scope`` is PID 1 and ``user@UID.service`` a user's service manager, not services."""
    if scope == "user":
        return UnitGroup(kind=USER, name=unit, uid=0, valid=valid_unit_name(unit), pids=(0,), packages=packages)
    manager = re.fullmatch(r"user@(\d+)\.service", unit)
    path = (f"/user.slice/user-{manager[1]}.slice/{unit}" if manager else
            f"/{unit}" if unit == "init.scope" else f"/system.slice/{unit}")
    found = resolve(path)
    if found.kind not in (INIT, USER_MANAGER):
        return UnitGroup(kind=SYSTEM, name=unit, uid=None, valid=valid_unit_name(unit), pids=(0,), packages=packages)
    return UnitGroup(kind=found.kind, name=found.name, uid=found.uid, pids=(0,), packages=packages)


def explain_text(pol: Policy, unit: str, scope: str, packages: list[str]) -> str:
    """``restartctl policy explain UNIT``: which rule decides, and what would be done."""
    group = _explained_group(unit, scope, tuple(packages))
    [action] = make_plan([group], pol)
    rule = next((r for r in pol.rules if r.source == action.rule), None)
    what = title(group) if group.kind in (INIT, USER_MANAGER) else f"{printable(unit)} ({scope} unit)"
    lines = [what + (f", packages {', '.join(packages)}" if packages else "")]
    if not group.valid:
        lines.append("  not a valid systemd unit name: never acted on")
    lines.append(f"  decided by: {rule.source + ': ' + _rule_text(rule) if rule else 'the built-in default'}")
    what = command(action.argv) if action.argv else printable(action.reason)
    lines.append(f"  action: {action.action}: {what}")
    if action.argv and action.reason:
        lines.append(f"  reason: {printable(action.reason)}")
    return "\n".join(lines) + "\n"
