"""Stage 6, execute: carry out a plan, a canary first and then in waves, each restart verified.

The edge where restartctl acts.  Programs run by absolute path with an argv list
and a fixed, clean environment; every wait is bounded by the per-restart timeout
and the run's deadline.  What is never restarted: a unit restartctl itself runs
in (or any unit of its ancestors: apt-daily-upgrade, an admin's transient unit),
a unit twice, a unit that is not active, a unit with RefuseManualStop=yes, and
anything ``/usr/sbin/policy-rc.d`` forbids (exit 101), as invoke-rc.d would.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from restart import NamedTuple
from restart import runner as _runner
from restart.plan import EXECUTABLE, RESTARTS, Action, phase
from restart.policy import Act, Settings
from restart.runner import Meanwhile, Runner, run
from restart.units import INIT, SYSTEM, USER, USER_MANAGER, UnitGroup, valid_unit_name
from restart.unitstate import (
    JOB_METHODS,
    JOB_OK,
    PROGRAMS,
    BusUnavailable,
    Ended,
    Jobs,
    JobStarter,
    Survey,
    ancestor_units,
    bus_restart,
    daemon_not_running,
    policy_rc_d_forbids,
    release,
    survey,
    unit_state,
)
from restart.verify import DECLINED, DONE, FAILED, SKIPPED, Checked, Outcome, Recheck, StillStale, Verifier

CGROUPFS = Path("/sys/fs/cgroup")
MANAGER_PROBE = 5.0  # seconds a user's manager has to answer before it counts as not answering


# A unit (kind, name, uid) -> the processes its check found still stale after a restart in an
# earlier run of this boot: it is not restarted again while those are all that is left.
Earlier = Mapping[tuple[str, str | None, int | None], frozenset[int]]


def resolved(argv: tuple[str, ...]) -> list[str]:
    """The plan's argv with its program name mapped to a fixed path (an admin's exec is already absolute)."""
    program = argv[0] if argv[0].startswith("/") else PROGRAMS[argv[0]]
    return [program, *argv[1:]]


def batchable(action: Action) -> bool:
    """A system service's plain ``systemctl VERB -- NAME``: these go in waves, one ``systemctl`` call per
    wave; everything else (PID 1, users' managers and units, init scripts, an admin's command) alone."""
    argv, g = action.argv or (), action.group
    return (g.kind == SYSTEM and not g.guessed and action.action in RESTARTS
            and argv == ("systemctl", action.action, "--", g.name))


def job_trouble(jobs: Jobs, name: str, timeout: float) -> str:
    """What went wrong with the restart job of unit ``name``, in a line that names it ("" when it
    ended as systemctl's would have: done, or skipped)."""
    if name in jobs.refused:
        return f"systemd refused the restart of {name} ({jobs.refused[name]})"
    result = jobs.results.get(name)
    if result in JOB_OK:
        return ""
    if result is not None:
        return f"the restart job of {name} ended: {result}"
    if jobs.waiting:
        return f"the restart job of {name} was {jobs.waiting}"
    return f"the restart job of {name} did not end within {timeout:.0f} s"


def take_wave(queue: list[Action], size: int) -> list[Action]:
    """The wave at the head of ``queue`` (taken off it): up to ``size`` batchable actions with one verb."""
    wave = [queue.pop(0)]
    while queue and len(wave) < size and batchable(queue[0]) and queue[0].action == wave[0].action:
        wave.append(queue.pop(0))
    return wave


class Executor(Verifier):
    """Carries out actions in order with the policy's timeout, verification and circuit breaker.

    Phase by phase (:func:`restart.plan.phase`): the first system service restarted in a phase is
    its canary, alone; once one is healthy, the phase's other system services go in waves of up to
    ``max_parallel`` units, what ``systemctl VERB -- A B C`` asks, asked of PID 1 on its own socket
    (:func:`restart.unitstate.bus_restart`; systemctl when that cannot be used): systemd runs the jobs
    together and orders units that depend on each other; each job's end is awaited, then every unit
    of the wave is verified together.  A failed canary stops every later restart (the breaker), as do
    ``max_failures`` failures.  ``max_parallel = 1``: one unit at a time, in plan order, no canary.
    """

    def __init__(self, settings: Settings, *, proc: Path, deadline: float,
                 still_stale: StillStale,
                 choose: Callable[[list[Action]], list[bool | None]] | None = None,
                 report: Callable[[Outcome], None] | None = None, cgroupfs: Path = CGROUPFS,
                 run_dir: Path = Path("/run"), intend: Callable[[list[Action]], None] | None = None,
                 earlier: Earlier | None = None, runner: Runner | None = None,
                 jobs: JobStarter | None = None, begun: Callable[[], None] | None = None) -> None:
        super().__init__(settings, proc=proc, deadline=deadline, still_stale=still_stale, cgroupfs=cgroupfs,
                         runner=runner or run)
        # System services' restarts are asked of PID 1 on its own socket (systemctl when it cannot be
        # used); never when a test's runner stands in for systemd, unless it brings its own.
        self.jobs = jobs if jobs is not None else bus_restart if runner is None else None
        # Told as each restart is under way (PID 1 starting its units, or its jobs ended; the systemctl
        # just before it runs): what the run does beside it then starts only now, so that no thread of it
        # holds the interpreter while the restart is asked for, nor PID 1 while it stops and forks the units.
        self.begun = begun or (lambda: None)
        self.run_dir = run_dir
        self.intend = intend  # records actions before they are taken (raises OSError when it cannot)
        self.earlier = earlier or {}
        self.choose = choose  # ask mode: the admin's answer for each restart, given before the first one
        self.answers: dict[int, bool | None] = {}
        self.report = report or (lambda outcome: None)
        self.failures = 0
        self.tripped = ""  # why the breaker stopped every later restart (a canary failed)
        self.step = 0      # restarts carried out so far, a wave counting once: the "wave" of an outcome
        self.silent: set[int | None] = set()  # users whose manager did not answer: asked once per run
        self.done: set[tuple[str, str | None, int | None]] = set()
        self.ancestors = ancestor_units(proc, os.getpid())

    def run_all(self, actions: list[Action]) -> list[Outcome]:
        todo = [a for a in actions if a.action in EXECUTABLE and a.argv is not None]
        outcomes = self._ask(todo) if self.choose is not None else []
        phases: dict[tuple[int, int], list[Action]] = {}
        for a in todo:
            if self.answers.get(id(a), True):
                phases.setdefault(phase(a, self.settings), []).append(a)
        for members in phases.values():
            outcomes += self._phase(members)
        return outcomes

    def _ask(self, todo: list[Action]) -> list[Outcome]:
        """Ask mode: one question for the whole list first, then the chosen units are restarted (in waves).
        A unit that would fail its check again is not offered: it is skipped, and one() says why."""
        offered = [a for a in todo if self._again(a) is None]
        outcomes = []
        for a, answer in zip(offered, self.choose(offered) if self.choose and offered else [], strict=True):
            self.answers[id(a)] = answer
            if not answer:  # None: no answer came (in time, or before the input ended)
                outcomes.append(self._finish(Outcome(a, DECLINED, "declined at the prompt" if answer is False else
                                                     "not restarted: no answer at the prompt"), time.monotonic()))
        return outcomes

    def _phase(self, members: list[Action]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        waves = self.settings.max_parallel > 1
        healthy = False  # a canary of this phase was restarted and verified
        queue = list(members)
        # As a restart begins (the canary's, a wave's), the next wave's units are surveyed (systemd's
        # word on them, policy-rc.d's verdict) meanwhile: their checks then cost no time of their own.
        ahead: list[Meanwhile[Survey]] = []  # the survey of the wave at the head of the queue, once started

        def survey_next() -> None:
            if waves and queue and batchable(queue[0]):
                groups = [a.group for a in take_wave(list(queue), self.settings.max_parallel)]
                timeout = min(self.settings.timeout, self.remaining())
                ahead[:] = [Meanwhile(lambda: survey(groups, timeout, self.runner))]
        while queue:
            if waves and healthy and batchable(queue[0]):
                wave = take_wave(queue, self.settings.max_parallel)
                outcomes += self._wave(wave, ahead.pop() if ahead else None, starting=survey_next)
                continue
            action = queue.pop(0)
            canary = waves and batchable(action) and not healthy
            outcome = self.one(action, starting=survey_next if canary else None)
            outcomes.append(outcome)
            if canary:
                healthy = outcome.status == DONE
                if outcome.status == FAILED:
                    self.tripped = f"circuit breaker: the canary of its phase ({action.group.name}) failed"
        return outcomes

    def one(self, action: Action, *, starting: Callable[[], None] | None = None) -> Outcome:
        """One action alone: checked, recorded, carried out (``starting`` told as it is under way), verified."""
        started = time.monotonic()
        self.step += 1
        outcome = self._again(action)
        if outcome is None:
            reason, state = self._check(action)
            if reason is not None:
                outcome = Outcome(action, SKIPPED, reason)
            else:
                outcome = next(iter(self._intended([action])), None)
                outcome = outcome or self._carry_out(action, state, self._under_way(starting))
        return self._finish(outcome, started)

    def _finish(self, outcome: Outcome, started: float) -> Outcome:
        """An outcome is final: timed, counted for the breaker, reported."""
        outcome = outcome._replace(seconds=time.monotonic() - started, wave=self.step)
        if outcome.status == FAILED and outcome.action.group.kind in (USER, USER_MANAGER):
            # A user's manager is hers to stop or break: her failure never stops the system's restarts.
            self.silent.add(outcome.action.group.uid)
        elif outcome.status == FAILED:
            self.failures += 1
        self.report(outcome)
        return outcome

    def _again(self, action: Action) -> Outcome | None:
        """Restarting it again would fail again for the same reason: no restart loop, run after run."""
        g = action.group
        again = self.earlier.get((g.kind, g.name, g.uid))
        if again is None or not set(g.pids) <= again:
            return None
        return Outcome(action, SKIPPED, "its check failed in an earlier run for these same processes "
                                        f"(pid {', '.join(map(str, g.pids))}): not restarted again", left=g.pids)

    def _intended(self, actions: list[Action]) -> list[Outcome]:
        """Nothing once the actions are on record (or nothing records); actions that cannot be recorded
        first are not taken: a run killed during them would leave no trace of them."""
        if self.intend is None or not actions:
            return []
        try:
            self.intend(actions)
        except OSError as e:
            return [Outcome(a, SKIPPED, f"not recorded before acting ({e})") for a in actions]
        return []

    def _why_not(self, action: Action) -> str | None:
        return self._check(action)[0]

    def _quick(self, action: Action) -> str | None:
        """The checks that run no program: the breaker, the time left, once per run, our own ancestry."""
        g = action.group
        key = (g.kind, g.name, g.uid)
        if self.tripped:
            return self.tripped
        if self.failures >= self.settings.max_failures:
            return f"circuit breaker: {self.failures} restarts failed in this run"
        if self.remaining() < 1:
            return "out of time for this run"
        if key in self.done:
            return "already restarted in this run"
        self.done.add(key)
        if g.kind == SYSTEM and g.name in self.ancestors:
            return "restartctl itself runs inside this unit"
        if g.kind in (USER, USER_MANAGER) and g.uid in self.silent:
            return f"the service manager of user {g.uid} did not answer or failed earlier in this run"
        return None

    def _check(self, action: Action) -> tuple[str | None, dict[str, str]]:
        """Why not to carry it out (None: go ahead), and systemd's word on the unit before (``{}`` when
        there is no unit to ask about)."""
        g = action.group
        reason = self._quick(action)
        if reason is not None:
            return reason, {}
        if g.kind == USER_MANAGER and not self._answers(g.uid):
            return f"the service manager of user {g.uid} does not answer", {}
        if g.guessed:
            return daemon_not_running(g.name or "", min(self.settings.timeout, self.remaining()), self.run_dir,
                                      self.runner), {}
        if g.kind not in (SYSTEM, USER):
            return None, {}
        timeout = min(self.settings.timeout, self.remaining(), *([MANAGER_PROBE] if g.kind == USER else []))
        try:
            state = unit_state(g, timeout, self.runner)
        except _runner.TimeoutExpired:
            if g.kind == USER:
                self.silent.add(g.uid)
                return f"the service manager of user {g.uid} does not answer", {}
            return "systemctl show did not answer in time", {}
        except OSError as e:
            return f"could not run systemctl show: {e}", {}
        return self._refusal(g, state, timeout), state

    def _refusal(self, g: UnitGroup, state: dict[str, str], timeout: float,
                 forbidden: frozenset[str] | None = None) -> str | None:
        """What systemd (and Debian's policy layer, unless its verdicts are ``forbidden``) say against
        restarting this unit now."""
        if state.get("RefuseManualStop") == "yes":
            return "the unit refuses manual stops (RefuseManualStop=yes)"
        if state.get("ActiveState") != "active":
            return f"not active ({state.get('ActiveState', 'unknown')})"
        if g.kind == SYSTEM and len(visitors := self._guests(g, g.members, state)) == len(g.members):
            return (f"only processes of users run on replaced files in it (pid "
                    f"{', '.join(str(m.process.pid) for m in visitors)}): they are told; the service is left alone")
        if g.kind == SYSTEM and (g.name in forbidden if forbidden is not None else
                                 policy_rc_d_forbids(g.name or "", timeout, self.runner)):
            return "forbidden by /usr/sbin/policy-rc.d"
        return None

    def _answers(self, uid: int | None) -> bool:
        """Whether a user's manager answers at all, asked once, briefly: she may have stopped it."""
        try:
            self.runner([PROGRAMS["systemctl"], "--user", "-M", f"{uid}@", "show", "-p", "Version"],
                        min(MANAGER_PROBE, self.remaining()))
        except _runner.TimeoutExpired:
            self.silent.add(uid)
            return False
        except OSError:
            pass  # no systemctl: the re-exec itself will say so
        return True

    def _under_way(self, starting: Callable[[], None] | None) -> Callable[[], None]:
        """What to tell as a restart is under way: ``starting`` (the next wave's survey), then ``begun``."""
        def told() -> None:
            if starting is not None:
                starting()
            self.begun()
        return told

    def _on_bus(self, actions: list[Action], timeout: float, under_way: Callable[[], None],
                ended: Ended | None = None) -> Jobs | None:
        """The restart jobs of these system services (one verb), asked of PID 1 on its own socket
        (``ended`` told of units as their jobs end: see :func:`restart.unitstate.bus_restart`); None
        when nothing was asked there (no socket, a test's runner, a verb or name it does not take):
        then systemctl is run, as before."""
        names = [a.group.name or "" for a in actions]
        if self.jobs is None or actions[0].action not in JOB_METHODS or not all(map(valid_unit_name, names)):
            return None
        try:
            return self.jobs(actions[0].action, names, timeout, under_way, ended)
        except BusUnavailable:
            return None

    def _carry_out(self, action: Action, before: dict[str, str], under_way: Callable[[], None]) -> Outcome:
        g = action.group
        assert action.argv is not None  # noqa: S101 - run_all passes only actions with a command
        timeout = min(self.settings.timeout, self.remaining())
        jobs = self._on_bus([action], timeout, under_way, None) if batchable(action) else None
        if jobs is not None:
            trouble = job_trouble(jobs, g.name or "", timeout)
            # A job lost from view (the socket closed while it ran) is not asked for again: whether the
            # unit was restarted is for the verification to say.
            if trouble and not (jobs.waiting and self.settings.verify):
                return Outcome(action, FAILED, f"{trouble}\n{self._excerpt(g)}")
        else:
            under_way()  # (it could not be told later: the program runs until the restart is done)
            try:
                result = self.runner(resolved(action.argv), timeout)
            except _runner.TimeoutExpired:
                return Outcome(action, FAILED, f"no answer within {timeout:.0f} s\n{self._excerpt(g)}")
            except OSError as e:
                return Outcome(action, FAILED, f"could not run {action.argv[0]}: {e}")
            if result.returncode != 0:
                detail = (result.stderr or result.stdout).strip()
                return Outcome(action, FAILED, f"exit status {result.returncode}: {detail}\n{self._excerpt(g)}")
        if not self.settings.verify:
            return Outcome(action, DONE, "not verified (verify = false)")
        found: list[Outcome] = []
        self._verify([(action, before)], time.monotonic() + min(self.settings.timeout, self.remaining()),
                     found.append, jobs.states if jobs is not None else None)
        return found[0]

    def _wave(self, wave: list[Action], known: Meanwhile[Survey] | None = None, *,
              starting: Callable[[], None] | None = None) -> list[Outcome]:
        """Restart these system services with one ``systemctl VERB -- A B C`` and verify them together;
        each outcome is reported as it is known, timed from the start of the wave.  ``known``: their
        survey, asked while the restart before ran (asked now when it is not there or missed a unit)."""
        self.step += 1
        started = time.monotonic()
        outcomes: list[Outcome] = []

        def finish(o: Outcome) -> None:
            outcomes.append(self._finish(o, started))
        ready = []
        for a in wave:
            skip = self._again(a)
            reason = self._quick(a) if skip is None else None
            if skip is not None or reason is not None:
                finish(skip or Outcome(a, SKIPPED, reason or ""))
            else:
                ready.append(a)
        found = Survey({}, frozenset())
        timeout = min(self.settings.timeout, self.remaining())
        if ready:
            try:
                found = known.result() if known is not None else found
                if any(a.group.name not in found.states for a in ready):
                    found = survey([a.group for a in ready], timeout, self.runner)
            except _runner.FAILURES as e:
                why = "systemctl show did not answer in time" if isinstance(e, _runner.TimeoutExpired) else \
                    f"could not run systemctl show: {e}"
                for a in ready:
                    finish(Outcome(a, SKIPPED, why))
                return outcomes
        go = []
        for a in ready:
            state = found.states.get(a.group.name or "", {})
            reason = self._refusal(a.group, state, timeout, found.forbidden)
            if reason is not None:
                finish(Outcome(a, SKIPPED, reason))
            else:
                go.append((a, state))
        unrecorded = self._intended([a for a, _ in go])
        for outcome in unrecorded:
            finish(outcome)
        if go and not unrecorded:
            self._restart_together(go, finish, self._under_way(starting))
        return outcomes

    def _restart_together(self, go: list[tuple[Action, dict[str, str]]], finish: Callable[[Outcome], None],
                          under_way: Callable[[], None]) -> None:
        timeout = min(self.settings.timeout, self.remaining())
        said = ""  # what went wrong when not every job succeeded (its lines name the units)
        # Units verified as their jobs ended, while the rest of the wave still started (their jobs ended
        # well: no line of ``said`` is theirs), and those of them still to stay up with the rest (settle).
        early: set[str | None] = set()
        settling: list[Checked] = []

        def ended(states: dict[str, dict[str, str]]) -> None:
            names, checked = self._verify_ended([p for p in go if p[0].group.name not in early], states, finish)
            early.update(names)
            settling.extend(checked)
        jobs = self._on_bus([a for a, _ in go], timeout, under_way, ended if self.settings.verify else None)
        if jobs is not None:
            said = "\n".join(filter(None, (job_trouble(jobs, a.group.name or "", timeout) for a, _ in go)))
        else:
            argv = [PROGRAMS["systemctl"], go[0][0].action, "--", *(a.group.name or "" for a, _ in go)]
            under_way()
            try:
                result = self.runner(argv, timeout)
                said = "" if result.returncode == 0 else f"exit status {result.returncode}: {result.stderr.strip()}"
            except _runner.TimeoutExpired:
                said = f"systemctl did not answer within {timeout:.0f} s"
            except OSError as e:
                for a, _ in go:
                    finish(Outcome(a, FAILED, f"could not run systemctl: {e}"))
                return
        if not self.settings.verify:
            for a, _ in go:
                trouble = said if jobs is None else job_trouble(jobs, a.group.name or "", timeout)
                finish(Outcome(a, FAILED, trouble) if trouble else Outcome(a, DONE, "not verified (verify = false)"))
            return

        def told(o: Outcome) -> None:
            """A failed unit's detail gains systemctl's lines about it (a.service's, never ba.service's).
            Looked for only then: a pattern per unit cost a wave of 29 verified units 3 ms."""
            if o.status != FAILED or not said:
                finish(o)
                return
            name = re.compile(rf"(?<![\w.@:\\-]){re.escape(o.action.group.name or '')}(?![\w.@:\\-])")
            mine = [line for line in said.splitlines() if name.search(line) or "did not answer" in line]
            finish(o._replace(detail="\n".join([o.detail, *mine])) if mine else o)
        self._verify([p for p in go if p[0].group.name not in early], time.monotonic() +
                     min(self.settings.timeout, self.remaining()), told, jobs.states if jobs is not None else None,
                     settling)


def would_skip(actions: list[Action], settings: Settings, *, proc: Path) -> dict[int, str]:
    """For a dry run: ``id(action)`` -> why the real run would skip it, by the executor's own checks."""
    executor = Executor(settings, proc=proc, deadline=time.monotonic() + settings.timeout * len(actions) + 1,
                        still_stale=lambda checks, until: [Recheck([]) for _ in checks])
    skips = {}
    for action in actions:
        if action.action in EXECUTABLE and action.argv is not None:
            reason = executor._why_not(action)  # the same checks; nothing is carried out
            if reason is not None:
                skips[id(action)] = reason
    return skips


class Applied(NamedTuple):
    outcomes: list[Outcome]
    notified: int


def apply(actions: list[Action], settings: Settings, *, proc: Path, run_dir: Path, deadline: float,
          still_stale: StillStale,
          choose: Callable[[list[Action]], list[bool | None]] | None,
          report: Callable[[Outcome], None], log: Callable[[str], None], cgroupfs: Path = CGROUPFS,
          intend: Callable[[list[Action]], None] | None = None, earlier: Earlier | None = None,
          begun: Callable[[], None] | None = None) -> Applied:
    """Restart what the plan says, then tell the users about what only they can restart.

    ``intend`` records actions before they are taken, ``report`` each outcome after; ``begun`` is told
    as each restart is under way."""
    executor = Executor(settings, proc=proc, deadline=deadline, still_stale=still_stale, choose=choose,
                        report=report, cgroupfs=cgroupfs, run_dir=run_dir, intend=intend, earlier=earlier,
                        begun=begun)
    try:
        outcomes = executor.run_all(actions)
    finally:
        release()  # PID 1's connection kept between questions: none follows
    for_users = [a.group for a in actions if a.action == Act.NOTIFY and a.group.kind not in (SYSTEM, INIT)]
    for_users += executor.told
    if not (settings.notify_users and for_users):
        return Applied(outcomes, 0)
    from restart.notify import notify  # only now: its terminals and desktops cost 3 ms of imports before a restart

    return Applied(outcomes, notify(for_users, run_dir, log, proc=proc))
