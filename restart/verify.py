"""Stage 6, verify: whether a restart worked, the step after carrying it out (:mod:`restart.execute`).

A unit counts as restarted when systemd says it is active again with a new main process, none of
its processes still uses a replaced file (a scan of just its processes), and it stays up for
``settle`` seconds.  Every wait is bounded by the per-restart timeout and the run's deadline.
Users' processes found inside a system unit (a cron job, an MTA's pipe to a user's program) are
not the service's: they are told, never a reason to fail it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

from restart import NamedTuple
from restart import runner as _runner
from restart.plan import Action, Status
from restart.policy import Settings
from restart.processes import FIRST_USER_UID
from restart.runner import Runner
from restart.units import INIT, SYSTEM, USER, USER_MANAGER, Affected, UnitGroup
from restart.unitstate import status_excerpt, unit_pids, unit_states


class Recheck(NamedTuple):
    """What the check after a restart found: processes still stale, and how many it could not look at."""

    left: list[Affected]
    unscanned: int = 0


# The check after a restart, for the units of one restart (a wave's together): each group with the
# processes to look at (None: root's and system accounts' processes), and the deadline (time.monotonic)
# it must keep; one Recheck per group, in order.
StillStale = Callable[[list[tuple[UnitGroup, list[int] | None]], float], list[Recheck]]


DONE, FAILED, SKIPPED, DECLINED = Status.DONE, Status.FAILED, Status.SKIPPED, Status.DECLINED


class Outcome(NamedTuple):
    action: Action
    status: Status
    detail: str        # why it was skipped, or what went wrong
    seconds: float = 0.0        # from the start of its restart (of its wave's) until it was known
    left: tuple[int, ...] = ()  # processes still stale after the restart (or after one in an earlier run)
    wave: int = 0               # the restart (a wave counts once) it was part of, 1, 2, ...; 0: none


# A unit whose check after its restart found it clean, with systemd's word on it then: it must still stay up.
Checked = tuple[Outcome, dict[str, str]]


def guests(members: Iterable[Affected], main_pid: int, main_uid: int) -> list[Affected]:
    """A system unit's stale processes that are users', not the service's.

    A cron job (Debian's cron PAM stack has no pam_systemd), an ``at`` job, an MTA's pipe to a
    user's program, ``su`` in a service: they live in the service's cgroup, but restarting the
    service cures none of them.  A process of a user account counts for the service only if it
    runs as the service's main process does, or is that main process or its child.
    """
    return [m for m in members if m.process.uid >= FIRST_USER_UID and m.process.uid != main_uid
            and main_pid not in (m.process.pid, m.process.ppid)]


def restarted(before: dict[str, str], state: dict[str, str]) -> bool:
    """Whether systemd's word on a unit after its restart (``state``) says it is active again with a
    new main process (``before``: its word before the restart)."""
    new_main = before.get("MainPID") in ("0", None) or state.get("MainPID") != before.get("MainPID")
    return state.get("ActiveState") == "active" and new_main


def not_restarted(state: dict[str, str]) -> str:
    """Why a unit does not count as restarted: not active, or active with the main process it had."""
    if state.get("ActiveState") == "active":
        return (f"still active with the same main process (pid {state.get('MainPID')}): "
                "the command did not restart it")
    return f"not active again after the restart ({state.get('ActiveState')}/{state.get('SubState')})"


class Verifier:
    """Verification of the restarts of one run, with what it needs (the executor is one: each restart
    it carries out, it verifies)."""

    def __init__(self, settings: Settings, *, proc: Path, deadline: float, still_stale: StillStale,
                 cgroupfs: Path, runner: Runner) -> None:
        self.settings = settings
        self.told: list[UnitGroup] = []  # users' processes found inside system units: told, not restarted
        self.proc = proc
        self.cgroupfs = cgroupfs
        self.deadline = deadline
        self.still_stale = still_stale
        self.runner = runner

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def _excerpt(self, g: UnitGroup) -> str:
        return status_excerpt(g, max(min(5.0, self.remaining()), 0.1), self.runner)

    def _verify(self, pairs: list[tuple[Action, dict[str, str]]], limit: float,
                finish: Callable[[Outcome], None], known: dict[str, dict[str, str]] | None = None,
                checked: Iterable[Checked] = ()) -> None:
        """Each unit active again with a new main process, none of its processes on replaced files, and
        it stays up (``settle``); one ``systemctl show`` per round for all of them, each outcome to
        ``finish`` as soon as it is known.  Units of one manager (a wave, or a single unit).  ``known``:
        systemd's word on some of them, asked as their restart jobs ended (the first round's);
        ``checked``: units of the same restart checked already (:meth:`_verify_ended`), settled with them."""
        up = self._await([(a, before) for a, before in pairs if before], limit, finish, known or {})
        up += [(a, {}) for a, before in pairs if not before]  # nothing to ask systemd: PID 1, a manager, a script
        self._settle([*checked, *self._checked(up, limit, finish)], finish)

    def _verify_ended(self, pairs: list[tuple[Action, dict[str, str]]], states: dict[str, dict[str, str]],
                      finish: Callable[[Outcome], None]) -> tuple[set[str | None], list[Checked]]:
        """Units of a wave whose restart jobs ended while the others' still run (``states``: systemd's
        word on them as each ended), checked at once: those active again with a new main process.
        Returns their names (the wave's own verification leaves them out) and, when they must then stay
        up (``settle``), the ones found clean, to settle with the rest of the wave; else they are done."""
        up = [(a, states[a.group.name or ""]) for a, before in pairs
              if a.group.name in states and restarted(before, states[a.group.name or ""])]
        checked = self._checked(up, time.monotonic() + min(self.settings.timeout, self.remaining()), finish)
        if self.settings.settle <= 0:
            self._settle(checked, finish)
            checked = []
        return {a.group.name for a, _ in up}, checked

    def _checked(self, up: list[tuple[Action, dict[str, str]]], limit: float,
                 finish: Callable[[Outcome], None]) -> list[Checked]:
        """Units active again: none of their processes on replaced files (one scan for all of them).
        Failures go to ``finish``; the clean ones are returned, to stay up (``settle``)."""
        # The check gets its own time: a sibling in the wave that was slow to start may have spent the limit.
        until = max(limit, time.monotonic() + min(self.settings.timeout, self.remaining()))
        checks = self.still_stale([(a.group, self._check_scope(a.group, state)) for a, state in up], until) \
            if up else []
        checked = []
        for (a, state), check in zip(up, checks, strict=True):
            outcome = self._clean(a, state, check)
            if outcome.status == DONE and state:
                checked.append((outcome, state))
            else:
                finish(outcome)
        return checked

    def _await(self, pairs: list[tuple[Action, dict[str, str]]], limit: float, finish: Callable[[Outcome], None],
               known: dict[str, dict[str, str]]) -> list[tuple[Action, dict[str, str]]]:
        """Until ``limit``: which units are active again with a new main process (and systemd's word on
        them: ``known`` first); the others are failed."""
        waiting = {a.group.name: (a, before) for a, before in pairs}
        up: list[tuple[Action, dict[str, str]]] = []
        while waiting:
            now, known = dict(known), {}
            try:
                if missing := [a.group for name, (a, _) in waiting.items() if name not in now]:
                    now.update(unit_states(missing, max(limit - time.monotonic(), 1), self.runner))
            except _runner.FAILURES as e:
                for a, _ in waiting.values():
                    finish(Outcome(a, FAILED, "not verified: systemctl show did not answer after the restart"
                                   if isinstance(e, _runner.TimeoutExpired) else f"not verified: {e}"))
                return up
            for name, (a, before) in list(waiting.items()):
                state = now.get(name or "", {})
                if restarted(before, state):
                    up.append((a, state))
                    del waiting[name]
                elif state.get("ActiveState") == "failed" or time.monotonic() >= limit:
                    finish(Outcome(a, FAILED, f"{not_restarted(state)}\n{self._excerpt(a.group)}"))
                    del waiting[name]
            if waiting:
                time.sleep(0.1)
        return up

    def _clean(self, action: Action, state: dict[str, str], check: Recheck) -> Outcome:
        """None of its processes still on replaced files (users' processes in a system unit are told)."""
        g = action.group
        left = check.left
        if g.kind == SYSTEM and not g.guessed:
            visitors = self._guests(g, left, state)
            left = [m for m in left if m not in visitors]
        if left:
            pids = tuple(a.process.pid for a in left)
            return Outcome(action, FAILED, f"still uses replaced files after the restart "
                                           f"(pid {', '.join(map(str, pids))})", left=pids)
        if check.unscanned:
            return Outcome(action, FAILED, f"not verified: {check.unscanned} of its processes could not be "
                                           "looked at in time")
        return Outcome(action, DONE, "verified" if g.kind in (SYSTEM, USER, INIT, USER_MANAGER) else "")

    def _settle(self, checked: list[Checked], finish: Callable[[Outcome], None]) -> None:
        """Healthy means staying up: for ``settle`` seconds after the check, each unit stays active with
        the main process the check saw, and systemd restarts it on no failure (``NRestarts`` unchanged).

        A service that dies a moment after its start passes the check above; with ``Restart=`` systemd
        brings it back with another main PID, without it the unit is failed.  Bounded by the run's time;
        the units of a wave are watched together.
        """
        watch = min(self.settings.settle, self.remaining() - 1)
        watched = {o.action.group.name: (o, verified) for o, verified in checked}
        end = time.monotonic() + watch
        while watched and watch > 0:
            time.sleep(max(min(0.2, end - time.monotonic()), 0))
            try:
                now = unit_states([o.action.group for o, _ in watched.values()],
                                  min(self.settings.timeout, max(self.remaining(), 1)), self.runner)
            except _runner.FAILURES:
                for o, _ in watched.values():
                    finish(o._replace(status=FAILED, detail="systemctl show did not answer after the restart"))
                return
            for name, (o, verified) in list(watched.items()):
                state = now.get(name or "", {})
                moved = [f"{key} {verified.get(key)} -> {state.get(key)}"
                         for key in ("ActiveState", "MainPID", "NRestarts") if state.get(key) != verified.get(key)]
                if moved:
                    finish(o._replace(status=FAILED, detail=f"did not stay up for {watch:g} s after the restart "
                                                            f"({', '.join(moved)})\n{self._excerpt(o.action.group)}"))
                    del watched[name]
            if time.monotonic() >= end:
                break
        for o, _ in watched.values():
            finish(o._replace(detail=f"{o.detail}, up for {watch:g} s") if watch > 0 else o)


    def _guests(self, g: UnitGroup, members: Collection[Affected], state: dict[str, str]) -> list[Affected]:
        """Users' processes among ``members`` of system unit ``g`` (see :func:`guests`); they are told.
        Without a process of a user among them there is none, and the main process's owner is not looked
        up (a wave's 29 units before their restart, and again after it)."""
        if all(m.process.uid < FIRST_USER_UID for m in members):
            return []
        main = int(state["MainPID"]) if state.get("MainPID", "").isdigit() else 0
        try:
            main_uid = os.stat(self.proc / str(main)).st_uid if main > 0 else -1
        except OSError:
            main_uid = -1
        visitors = guests(members, main, main_uid)
        if visitors:
            self.told.append(g._replace(members=tuple(visitors)))
        return visitors

    def _check_scope(self, g: UnitGroup, state: dict[str, str]) -> list[int] | None:
        """Which processes the check after a restart looks at: never every process.

        The unit's own cgroup (systemd's ``ControlGroup``) when systemd names one.  After a
        re-execution (PID 1, a user's manager: no ``ControlGroup`` to ask for), the processes
        re-executed, which keep their PIDs, and what shares their cgroup (``init.scope``).
        None for a guessed unit (no systemd): root's and system accounts' processes, since only
        those lead to an init script.
        """
        pids = unit_pids(self.cgroupfs, state.get("ControlGroup", ""))
        if pids is not None:
            return pids
        if g.guessed:
            return None
        own = {m.process.pid for m in g.members}
        for cgroup in {m.unit.cgroup for m in g.members if m.unit.cgroup}:
            own.update(unit_pids(self.cgroupfs, "/" + cgroup.lstrip("/")) or ())
        return sorted(own)
