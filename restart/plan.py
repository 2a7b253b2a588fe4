"""Stage 5, plan: from stale processes and the policy to one action per unit.

Pure: no I/O.  The commands are argv lists with a program name from a fixed set
(``systemctl``, ``invoke-rc.d``); the executor maps them to fixed paths.  A unit
name reaches an argv only after it passed the unit-name grammar, and always
after ``--``.
"""

from __future__ import annotations

from enum import StrEnum

from restart import NamedTuple
from restart.policy import Act, Policy, Rule, Settings, any_matches, glob_matches, scope_of
from restart.units import (
    CONTAINER,
    INIT,
    SESSION,
    SYSTEM,
    USER,
    USER_MANAGER,
    UnitGroup,
    unit_type,
    valid_init_script,
    valid_unit_name,
)

RESTARTS = (Act.RESTART, Act.TRY_RESTART, Act.RELOAD_OR_RESTART)


class Status(StrEnum):
    """What became of an action (``status`` in ``apply --json`` and in the state record)."""

    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"    # not tried: the circuit breaker, policy-rc.d, a unit that must not be restarted
    DECLINED = "declined"  # the person asked said no
    LISTED = "listed"      # not carried out by this run (list mode, or not an action restartctl runs)


class Action(NamedTuple):
    group: UnitGroup
    action: Act
    argv: tuple[str, ...] | None     # what restartctl would run; None if it runs nothing
    reason: str
    suggested: tuple[str, ...] | None = None  # a command for a person, when restartctl runs nothing
    rule: str | None = None          # the policy rule that decided, if any


def _restart_argv(group: UnitGroup, verb: str) -> tuple[str, ...]:
    name = group.name or ""
    if group.guessed:
        return ("invoke-rc.d", name, "restart")
    if group.kind == USER:
        return ("systemctl", "--user", "-M", f"{group.uid}@", verb, "--", name)
    return ("systemctl", verb, "--", name)


def _can_restart(group: UnitGroup) -> bool:
    if group.name is None or not group.valid:
        return False
    if group.guessed:
        return valid_init_script(group.name)
    return valid_unit_name(group.name) and unit_type(group.name) == "service"


def _ignored_program(group: UnitGroup, globs: tuple[str, ...]) -> str | None:
    """The ``ignore_exe`` glob when every stale process of the group runs a program it matches."""
    if not globs or not group.members:
        return None
    found = [next((g for g in globs if m.process.exe and glob_matches(m.process.exe, g)), None)
             for m in group.members]
    return found[0] if all(found) else None


def decide(group: UnitGroup, policy: Policy) -> Action:
    """One action for one group: the built-in default, unless a policy rule says otherwise."""
    default = _default(group)
    ignored = _ignored_program(group, policy.settings.ignore_exe)
    if ignored is not None:
        return Action(group, Act.IGNORE, None, f"the program is ignored (setting ignore_exe {ignored!r})",
                      default.suggested or default.argv)
    if group.kind not in (SYSTEM, USER, USER_MANAGER, INIT) or group.name is None or not group.valid:
        return default
    rule = policy.decide(group.name, scope_of(group.kind), group.packages)
    if rule is None or rule.action == default.action:
        return default if rule is None else _with_rule(default, rule)
    return _apply_rule(group, rule, default)


def _with_rule(action: Action, rule: Rule) -> Action:
    return Action(action.group, action.action, action.argv, rule.reason or action.reason,
                  action.suggested, rule.source)


def _apply_rule(group: UnitGroup, rule: Rule, default: Action) -> Action:
    if rule.action == Act.REBOOT and scope_of(group.kind) == USER and rule.scope != USER:
        # A reboot for the whole host on account of one user's own unit only when the rule says so:
        # /run/reboot-required makes Automatic-Reboot and kured reboot the host.
        return Action(group, default.action, default.argv, f"{default.reason} (rule {rule.source} reboots "
                      "for system units; for users' units only with scope = \"user\")", default.suggested,
                      rule.source)
    if rule.action in RESTARTS:
        if group.kind in (SYSTEM, USER) and _can_restart(group):
            return Action(group, rule.action, _restart_argv(group, rule.action),
                          rule.reason or "policy", rule=rule.source)
        return _with_rule(default, rule)
    if rule.action == Act.EXEC:
        # Only for system units: a user unit's name is the user's choice, and the command runs as
        # root.  A name that looks like an option is never substituted either.
        if group.kind == SYSTEM and _can_restart(group) and not (group.name or "-").startswith("-"):
            argv = tuple(a.replace("{unit}", group.name or "") for a in rule.argv)
            return Action(group, Act.EXEC, argv, rule.reason or "the administrator's command", rule=rule.source)
        return _with_rule(default, rule)
    if rule.action == Act.REEXEC:
        if group.kind in (INIT, USER_MANAGER):
            return _with_rule(default, rule)
        return Action(group, Act.NOTIFY, None, f"policy asks to re-execute, which only PID 1 and user "
                      f"managers can do ({rule.source})", default.suggested or default.argv, rule.source)
    suggested = default.suggested or default.argv
    return Action(group, rule.action, None, rule.reason or f"policy: {rule.action}", suggested, rule.source)


def _default(group: UnitGroup) -> Action:
    name, uid = group.name, group.uid
    if group.kind == SYSTEM:
        if not group.valid or name is None:
            return Action(group, Act.NOTIFY, None, "not a valid unit name: reported, never acted on")
        if _can_restart(group):
            reason = "guessed from the package's init script" if group.guessed else "service uses replaced files"
            return Action(group, Act.RESTART, _restart_argv(group, "restart"), reason)
        return Action(group, Act.NOTIFY, None,
                      f"a {unit_type(name)} unit cannot be restarted; restart what started these processes")
    if group.kind == INIT:
        return Action(group, Act.REEXEC, ("systemctl", "daemon-reexec"), "PID 1 uses replaced files")
    if group.kind == USER_MANAGER:
        return Action(group, Act.REEXEC, ("systemctl", "--user", "-M", f"{uid}@", "daemon-reexec"),
                      f"the service manager of user {uid} uses replaced files")
    if group.kind == USER:
        if name == f"user@{uid}.service":
            return Action(group, Act.NOTIFY, None,
                          f"part of {name} but not its manager (such as its PAM helper \"(sd-pam)\"): "
                          "a re-exec of the manager does not replace it; it ends when that unit stops, "
                          "after the user's last session ends (or at a reboot)")
        if name is not None and group.valid and _can_restart(group):
            return Action(group, Act.NOTIFY, None, f"a unit of user {uid}: left to its owner",
                          _restart_argv(group, "restart"))
        return Action(group, Act.NOTIFY, None, f"processes of user {uid}'s service manager: left to its owner")
    if group.kind == SESSION:
        return Action(group, Act.NOTIFY, None, f"login session of user {uid}: log out and in again")
    if group.kind == CONTAINER:
        return Action(group, Act.NOTIFY, None, f"in container {name}: restart the affected services inside it")
    return Action(group, Act.NOTIFY, None, "not managed by any service manager: restart it by hand")


EXECUTABLE = (*RESTARTS, Act.REEXEC, Act.EXEC)  # the actions restartctl carries out itself


def _listed_only(action: Action, kinds: tuple[str, ...], listed: tuple[str, ...] = ()) -> Action:
    """A unit whose only stale files are of kinds the policy does not restart for (data, fd), or
    whose findings that are have evidence it only lists (``search-path``: imports not read)."""
    files = [o.stale for m in action.group.members for o in m.files]
    found = {f.kind for f in files}
    if action.argv is None or action.action not in EXECUTABLE or not found or any(
            f.kind in kinds and f.evidence not in listed for f in files):
        return action
    if found & set(kinds):
        return Action(action.group, Act.NOTIFY, None,
                      "only modules guessed from the whole search path (the script's imports could not be "
                      f"read: evidence {'/'.join(sorted({f.evidence for f in files} & set(listed)))}); "
                      "the policy lists those, never restarts for them", action.argv, action.rule)
    return Action(action.group, Act.NOTIFY, None,
                  f"only {'/'.join(sorted(found))} files are stale; the policy restarts for "
                  f"{'/'.join(kinds)}", action.argv, action.rule)


def phase(action: Action, settings: Settings) -> tuple[int, int]:
    """Run order, and the executor's phases: the policy's first globs, PID 1, system services, user
    managers and units, its last globs."""
    name = action.group.name or ""
    band = 0 if any_matches(name, settings.restart_first) else 2 if any_matches(name, settings.restart_last) else 1
    kind = {INIT: 0, SYSTEM: 1, USER_MANAGER: 2, USER: 3}.get(action.group.kind, 4)
    return band, kind


def make_plan(groups: list[UnitGroup], policy: Policy) -> list[Action]:
    """One action per group, in the order they would be carried out (stable within a band)."""
    actions = [_listed_only(decide(g, policy), policy.settings.restart_on, policy.settings.list_evidence)
               for g in groups]
    return sorted(actions, key=lambda a: phase(a, policy.settings))
