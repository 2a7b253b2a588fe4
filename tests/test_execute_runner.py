"""The executor's decisions through an injected runner: fast, no systemd, every failure an outcome.

The runner stands in for the programs the executor runs (``systemctl show/restart/status``,
``policy-rc.d``): a function from argv to a CompletedProcess, or an exception.  What systemd
itself does is tested for real in test_apply.py and test_trixie.py; here: that no answer,
however bad, escapes the executor as an exception, the order of canaries and waves, the
breaker, and what counts as verified.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from restart import execute, procfs, runner, unitstate, verify
from restart.plan import Action
from restart.policy import Act, Settings
from restart.processes import Confidence, Evidence, FileKind, ProcessInfo, StaleFile
from restart.units import SYSTEM, Affected, OwnedFile, Unit, UnitGroup, group

SHOW, RESTART, STATUS = "show", "restart", "status"


class Systemd:
    """System units as ``systemctl`` would report them; each restart gives a unit a new main PID,
    unless it is ``broken`` (the restart fails) or ``keeps`` its main process (nothing happens)."""

    def __init__(self, names: list[str], *, broken: frozenset[str] = frozenset(), keeps: frozenset[str] = frozenset(),
                 refuses: frozenset[str] = frozenset(), forbidden: frozenset[str] = frozenset(),
                 fail_at: int | None = None, error: BaseException | None = None) -> None:
        self.units = {n: {"ActiveState": "active", "SubState": "running", "MainPID": str(100 + i),
                          "RefuseManualStop": "yes" if n in refuses else "no", "NRestarts": "0",
                          "ControlGroup": f"/system.slice/{n}"} for i, n in enumerate(names)}
        self.broken, self.keeps, self.forbidden = broken, keeps, forbidden
        self.fail_at, self.error = fail_at, error
        self.calls: list[list[str]] = []
        self.next_pid = 1000

    def __call__(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        if self.fail_at == len(self.calls) - 1 and self.error is not None:
            raise self.error
        if argv[0] == unitstate.POLICY_RC_D:
            return subprocess.CompletedProcess(argv, 101 if f"{argv[1]}.service" in self.forbidden else 0, "", "")
        assert argv[0] == "/usr/bin/systemctl", argv
        verb, names = argv[1], argv[argv.index("--") + 1:]
        if verb == SHOW:
            blocks = ["\n".join(f"{k}={v}" for k, v in self.units[n].items()) for n in names]
            return subprocess.CompletedProcess(argv, 0, "\n\n".join(blocks) + "\n", "")
        if verb == STATUS:
            return subprocess.CompletedProcess(argv, 3, f"x {names[0]} - status of it\n", "")
        assert verb == RESTART, argv
        for n in names:
            if n in self.broken:
                self.units[n].update(ActiveState="failed", SubState="failed", MainPID="0")
            elif n not in self.keeps:
                self.next_pid += 1
                self.units[n]["MainPID"] = str(self.next_pid)
        failed = [n for n in names if n in self.broken]
        return subprocess.CompletedProcess(argv, 1 if failed else 0, "",
                                           "".join(f"Job for {n} failed.\n" for n in failed))

    def restarts(self) -> list[list[str]]:
        """The units of each restart call, in order."""
        return [c[3:] for c in self.calls if c[1:2] == [RESTART]]


def action(name: str, pid: int) -> Action:
    unit = Unit(SYSTEM, name, cgroup=f"/system.slice/{name}")
    member = Affected(ProcessInfo(pid, 1, 0, "d", "/usr/sbin/d", f"0::/system.slice/{name}\n", None, ()), unit,
                      (OwnedFile(StaleFile(FileKind.CODE, "/usr/lib/libdemo.so.1", Confidence.CERTAIN,
                                           Evidence.REPLACED), "libdemo1"),), ())
    return Action(group([member])[0], Act.RESTART, ("systemctl", "restart", "--", name), "service uses replaced files")


def names(n: int) -> list[str]:
    return [f"s{i}.service" for i in range(n)]


def executor(tmp_path: Path, runner: Systemd, **settings: object) -> execute.Executor:
    values: dict[str, object] = {"settle": 0.0, "timeout": 2.0, **settings}
    return execute.Executor(Settings(**values), proc=tmp_path, deadline=time.monotonic() + 60,  # type: ignore[arg-type]
                            cgroupfs=tmp_path, runner=runner,
                            still_stale=lambda checks, until: [verify.Recheck([]) for _ in checks])


@pytest.fixture(autouse=True)
def no_policy_rc_d(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Debian's policy layer, present (executable) only in this test's directory."""
    script = tmp_path / "policy-rc.d"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    monkeypatch.setattr(unitstate, "POLICY_RC_D", str(script))
    return script


def test_canary_alone_then_waves_of_max_parallel(tmp_path: Path) -> None:
    units = names(6)
    systemd = Systemd(units)
    outcomes = executor(tmp_path, systemd, max_parallel=3).run_all([action(n, 10 + i) for i, n in enumerate(units)])
    assert systemd.restarts() == [units[:1], units[1:4], units[4:]]
    assert [o.status for o in outcomes] == [verify.DONE] * 6
    assert [o.wave for o in outcomes] == [1, 2, 2, 2, 3, 3]
    assert all(o.seconds >= 0 for o in outcomes)


def test_a_waves_units_are_recorded_and_checked_again_together(tmp_path: Path) -> None:
    """Why: a write of the record and a scan per unit cost a wave of 30 a third of a second."""
    units = names(4)
    systemd = Systemd(units)
    intents: list[list[str | None]] = []
    checked: list[list[str | None]] = []

    def check(checks: list[tuple[UnitGroup, list[int] | None]], until: float) -> list[verify.Recheck]:
        checked.append([g.name for g, _ in checks])
        return [verify.Recheck([]) for _ in checks]
    ex = execute.Executor(Settings(settle=0.0, max_parallel=8), proc=tmp_path, deadline=time.monotonic() + 60,
                          cgroupfs=tmp_path, runner=systemd, still_stale=check,
                          intend=lambda actions: intents.append([a.group.name for a in actions]))
    ex.run_all([action(n, 10 + i) for i, n in enumerate(units)])
    assert intents == checked == [units[:1], units[1:]]


def test_max_parallel_one_is_the_old_order_one_unit_at_a_time(tmp_path: Path) -> None:
    units = names(4)
    systemd = Systemd(units, broken=frozenset({units[0]}))
    outcomes = executor(tmp_path, systemd, max_parallel=1).run_all([action(n, 10 + i) for i, n in enumerate(units)])
    assert systemd.restarts() == [[n] for n in units]  # a failed first unit is no canary here
    assert [o.status for o in outcomes] == [verify.FAILED, verify.DONE, verify.DONE, verify.DONE]


def test_a_failed_canary_stops_every_later_restart(tmp_path: Path) -> None:
    units = names(5)
    systemd = Systemd(units, broken=frozenset({units[0]}))
    outcomes = executor(tmp_path, systemd, max_parallel=8).run_all([action(n, 10 + i) for i, n in enumerate(units)])
    assert systemd.restarts() == [units[:1]]
    assert outcomes[0].status == verify.FAILED
    assert {(o.status, o.detail) for o in outcomes[1:]} == {
        (verify.SKIPPED, "circuit breaker: the canary of its phase (s0.service) failed")}


def test_failures_in_a_wave_trip_the_breaker_for_later_waves(tmp_path: Path) -> None:
    units = names(7)
    systemd = Systemd(units, broken=frozenset({units[1], units[2]}))
    outcomes = executor(tmp_path, systemd, max_parallel=3, max_failures=2).run_all(
        [action(n, 10 + i) for i, n in enumerate(units)])
    assert systemd.restarts() == [units[:1], units[1:4]]
    by_unit = {o.action.group.name: o for o in outcomes}
    assert [by_unit[n].status for n in units[:4]] == [verify.DONE, verify.FAILED, verify.FAILED, verify.DONE]
    assert "Job for s1.service failed." in by_unit["s1.service"].detail  # systemctl's own line for that unit
    assert "s2.service" not in by_unit["s1.service"].detail
    assert all(by_unit[n].detail == "circuit breaker: 2 restarts failed in this run" for n in units[4:])


def test_a_failed_unit_of_a_wave_gets_systemctls_lines_about_it_only(tmp_path: Path) -> None:
    units = ["0.service", "a.service", "ba.service", "c.service"]
    systemd = Systemd(units, broken=frozenset({"a.service", "ba.service"}))
    outcomes = executor(tmp_path, systemd, max_parallel=8).run_all([action(n, 10 + i) for i, n in enumerate(units)])
    detail = {o.action.group.name: o.detail for o in outcomes}
    assert "Job for a.service failed." in detail["a.service"] and "ba.service" not in detail["a.service"]
    assert "Job for ba.service failed." in detail["ba.service"]


def test_a_restart_that_keeps_its_main_pid_is_not_verified(tmp_path: Path) -> None:
    """Why: ``systemctl restart`` exits 0 for a unit whose restart did nothing we asked for (a
    reload-only wrapper, an ExecStop that returns at once); active alone is not restarted."""
    units = names(3)
    systemd = Systemd(units, keeps=frozenset({units[0], units[2]}))
    outcomes = executor(tmp_path, systemd, max_parallel=1, timeout=0.5).run_all(
        [action(n, 10 + i) for i, n in enumerate(units)])
    assert [o.status for o in outcomes] == [verify.FAILED, verify.DONE, verify.FAILED]
    assert outcomes[0].detail.startswith("still active with the same main process (pid 100)")
    systemd = Systemd(units, keeps=frozenset({units[2]}))
    outcomes = executor(tmp_path, systemd, max_parallel=3, timeout=0.5).run_all(
        [action(n, 10 + i) for i, n in enumerate(units)])
    assert systemd.restarts() == [units[:1], units[1:]]
    assert {o.action.group.name: o.status for o in outcomes} == {
        units[0]: verify.DONE, units[1]: verify.DONE, units[2]: verify.FAILED}


def test_in_a_wave_ancestors_refusals_and_policy_rc_d_are_skipped(tmp_path: Path, no_policy_rc_d: Path) -> None:
    units = names(5)
    systemd = Systemd(units, refuses=frozenset({units[2]}), forbidden=frozenset({units[3]}))
    ex = executor(tmp_path, systemd, max_parallel=8)
    ex.ancestors = {units[1]}
    outcomes = ex.run_all([action(n, 10 + i) for i, n in enumerate(units)])
    assert systemd.restarts() == [units[:1], [units[4]]]
    by_unit = {o.action.group.name: (o.status, o.detail) for o in outcomes}
    assert by_unit[units[1]] == (verify.SKIPPED, "restartctl itself runs inside this unit")
    assert by_unit[units[2]] == (verify.SKIPPED, "the unit refuses manual stops (RefuseManualStop=yes)")
    assert by_unit[units[3]] == (verify.SKIPPED, "forbidden by /usr/sbin/policy-rc.d")
    assert by_unit[units[4]][0] == verify.DONE


def test_the_next_waves_survey_runs_while_the_canary_restarts(tmp_path: Path) -> None:
    """Why (issue 14): the wave's ``systemctl show`` and policy-rc.d ran only after the canary was
    verified, time added to every wave; they are asked while the restart before it runs."""
    units = names(4)

    class Slow(Systemd):
        def __call__(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
            if argv[1:2] == [RESTART]:
                self.calls.append(["restart begins", *argv[3:]])
                time.sleep(0.3)  # the service takes its time to start
            return super().__call__(argv, timeout)
    systemd = Slow(units)
    outcomes = executor(tmp_path, systemd, max_parallel=8).run_all([action(n, 10 + i) for i, n in enumerate(units)])
    assert [o.status for o in outcomes] == [verify.DONE] * 4
    ends = systemd.calls.index(["/usr/bin/systemctl", RESTART, "--", units[0]])  # when the canary's restart ended
    asked = [i for i, c in enumerate(systemd.calls) if c[1:2] == [SHOW] and c[-3:] == units[1:]]
    assert asked and asked[0] < ends, systemd.calls  # asked before (or while) the canary restarts
    assert next(i for i, c in enumerate(systemd.calls) if c[0] == unitstate.POLICY_RC_D and c[1] == "s3") < ends


def test_no_survey_when_no_restart_runs(tmp_path: Path) -> None:
    """A container image's policy-rc.d forbids everything: each unit in turn is a canary that is
    skipped; the next wave is surveyed only once a restart begins, so policy-rc.d is asked once
    per unit (a survey per attempted canary asked it 21 times for 6 units)."""
    units = names(6)
    systemd = Systemd(units, forbidden=frozenset(units))
    outcomes = executor(tmp_path, systemd, max_parallel=8).run_all([action(n, 10 + i) for i, n in enumerate(units)])
    assert {(o.status, o.detail) for o in outcomes} == {(verify.SKIPPED, "forbidden by /usr/sbin/policy-rc.d")}
    assert systemd.restarts() == []
    assert len([c for c in systemd.calls if c[0] == unitstate.POLICY_RC_D]) == 6


def test_a_long_list_is_shown_in_parts_at_once(tmp_path: Path) -> None:
    """Why (issue 14): systemctl fetches and parses every property of every unit; a wave of 99 asked
    in one call took 0.16 s, in parts run together 0.12 s (two cores)."""
    units = names(70)
    systemd = Systemd(units)
    groups = [action(n, 10 + i).group for i, n in enumerate(units)]
    states = unitstate.unit_states(groups, 5, systemd)
    assert sorted(states) == sorted(units) and states[units[69]]["MainPID"] == "169"
    assert sorted(len(c) - c.index("--") - 1 for c in systemd.calls) == [6, 32, 32]


def test_ask_mode_asks_once_for_the_whole_list_before_the_first_restart(tmp_path: Path) -> None:
    units = names(4)
    systemd = Systemd(units)
    asked: list[tuple[list[str | None], int]] = []

    def choose(actions: list[Action]) -> list[bool | None]:
        asked.append(([a.group.name for a in actions], len(systemd.restarts())))
        return [a.group.name != units[2] for a in actions]  # picked: all but one
    ex = execute.Executor(Settings(settle=0.0, max_parallel=8), proc=tmp_path, deadline=time.monotonic() + 60,
                          cgroupfs=tmp_path, runner=systemd, choose=choose,
                          still_stale=lambda checks, until: [verify.Recheck([]) for _ in checks])
    outcomes = ex.run_all([action(n, 10 + i) for i, n in enumerate(units)])
    assert asked == [(units, 0)]  # one question, the whole list, before any restart
    assert systemd.restarts() == [units[:1], [units[1], units[3]]]  # the chosen: a canary, then a wave
    assert {o.action.group.name: (o.status, o.detail) for o in outcomes}[units[2]] == (
        verify.DECLINED, "declined at the prompt")


def test_ask_mode_without_an_answer_restarts_nothing(tmp_path: Path) -> None:
    units = names(3)
    systemd = Systemd(units)
    ex = execute.Executor(Settings(settle=0.0), proc=tmp_path, deadline=time.monotonic() + 60, cgroupfs=tmp_path,
                          runner=systemd, choose=lambda actions: [None] * len(actions),
                          still_stale=lambda checks, until: [verify.Recheck([]) for _ in checks])
    outcomes = ex.run_all([action(n, 10 + i) for i, n in enumerate(units)])
    assert systemd.restarts() == []
    assert {(o.status, o.detail) for o in outcomes} == {(verify.DECLINED, "not restarted: no answer at the prompt")}


def test_settle_watches_a_wave_together(tmp_path: Path) -> None:
    units = names(4)
    systemd = Systemd(units)
    started = time.monotonic()
    outcomes = executor(tmp_path, systemd, max_parallel=8, settle=0.5).run_all(
        [action(n, 10 + i) for i, n in enumerate(units)])
    assert [o.status for o in outcomes] == [verify.DONE] * 4
    assert all(o.detail == "verified, up for 0.5 s" for o in outcomes)
    assert time.monotonic() - started < 2.5  # the canary's settle, then the wave's once: not once per unit


def _calls_of_a_clean_run(tmp_path: Path, **settings: object) -> int:
    units = names(4)
    systemd = Systemd(units)
    executor(tmp_path, systemd, **settings).run_all([action(n, 10 + i) for i, n in enumerate(units)])
    return len(systemd.calls)


@pytest.mark.parametrize("error", [subprocess.TimeoutExpired(["/usr/bin/systemctl"], 1),
                                   OSError(24, "Too many open files")], ids=["timeout", "oserror"])
@pytest.mark.parametrize("how", [{"max_parallel": 1}, {"max_parallel": 8}, {"max_parallel": 8, "settle": 0.1}],
                         ids=["one-by-one", "waves", "waves-settle"])
def test_no_failure_of_any_program_run_escapes_the_executor(tmp_path: Path, error: BaseException,
                                                            how: dict[str, object]) -> None:
    """Why (issue 17): a ``systemctl show`` that timed out after the pre-checks escaped, so ``apply``
    printed a traceback and the hook skipped the remaining restarts, the state and the metrics.
    Every call of a run, in turn, times out or cannot be run: each time every unit has an outcome."""
    units = names(4)
    how = {**how, "timeout": 0.2}
    for k in range(_calls_of_a_clean_run(tmp_path, **how)):
        systemd = Systemd(units, fail_at=k, error=error)
        outcomes = executor(tmp_path, systemd, **how).run_all([action(n, 10 + i) for i, n in enumerate(units)])
        assert sorted(o.action.group.name or "" for o in outcomes) == units, (k, systemd.calls[k])
        failed = [o for o in outcomes if o.status != verify.DONE]
        assert failed, (k, systemd.calls[k])  # the failure shows, as a failure or a skip with its reason
        assert all(o.detail for o in failed)


def test_run_gives_a_clean_environment_and_no_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Why (rule C1 of docs/security.md): a program root runs must not inherit root's (or sudo's, or
    apt's) environment, nor read the terminal or apt's pipe."""
    monkeypatch.setenv("LD_PRELOAD", "/tmp/evil.so")
    monkeypatch.setenv("RCTL_SECRET", "x")
    env = runner.run(["/usr/bin/env"], 10).stdout.splitlines()
    assert sorted(env) == sorted(f"{k}={v}" for k, v in procfs.CLEAN_ENV.items())
    read, write = os.pipe()
    saved = os.dup(0)
    try:
        os.dup2(read, 0)  # this process's stdin is a pipe a child could read
        seen = runner.run(["/usr/bin/readlink", "/proc/self/fd/0"], 10).stdout.strip()
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read, write):
            os.close(fd)
    assert seen == "/dev/null"


class Pid1Jobs:
    """The restart jobs on PID 1's socket, over :class:`Systemd`'s units: how each unit's job ends
    (``how``: a JobRemoved result, ``refuse``, ``hang``: no end, ``lost``: the socket closed after the
    jobs were enqueued, its unit restarted all the same), or ``unavailable``: no socket."""

    def __init__(self, systemd: Systemd, how: dict[str, str] | None = None, unavailable: bool = False,
                 states: bool = False, first: int = 0) -> None:
        self.systemd, self.how, self.unavailable, self.states = systemd, how or {}, unavailable, states
        self.first = first  # with states: the jobs of a call's first units end first, told as they end
        self.asked: list[tuple[str, list[str]]] = []
        self.enqueued: list[int] = []

    def __call__(self, verb: str, units: list[str], timeout: float,
                 under_way: Callable[[], None] = lambda: None, ended: unitstate.Ended | None = None) -> unitstate.Jobs:
        if self.unavailable:
            raise unitstate.BusUnavailable("no socket")
        self.asked.append((verb, units))
        self.enqueued.append(len(self.systemd.calls))  # what systemd was asked before these jobs
        under_way()
        jobs = unitstate.Jobs({}, {})
        for n in units:
            how = self.how.get(n, "done")
            if how == "refuse":
                jobs.refused[n] = f"Unit {n} is masked."
                continue
            if how in ("failed", "dependency"):
                self.systemd.units[n].update(ActiveState="failed", SubState="failed", MainPID="0")
            elif how != "hang" and n not in self.systemd.keeps:
                self.systemd.next_pid += 1
                self.systemd.units[n]["MainPID"] = str(self.systemd.next_pid)
            if how not in ("hang", "lost"):
                jobs.results[n] = how
        if self.states:  # systemd's word on each unit whose job ended well, asked as it ended
            jobs = jobs._replace(states={n: dict(self.systemd.units[n]) for n, r in jobs.results.items()
                                         if r in unitstate.JOB_OK})
            assert jobs.states is not None
            if ended is not None and len(units) > self.first > 0:
                ended({n: jobs.states[n] for n in units[:self.first] if n in jobs.states})
        return jobs._replace(waiting="lost from view: systemd closed the connection") \
            if "lost" in self.how.values() else jobs


def bus_executor(tmp_path: Path, systemd: Systemd, jobs: Pid1Jobs, begun: Callable[[], None] | None = None,
                 **settings: object) -> execute.Executor:
    values: dict[str, object] = {"settle": 0.0, "timeout": 1.0, **settings}
    return execute.Executor(Settings(**values), proc=tmp_path, deadline=time.monotonic() + 60,  # type: ignore[arg-type]
                            cgroupfs=tmp_path, runner=systemd, jobs=jobs, begun=begun,
                            still_stale=lambda checks, until: [verify.Recheck([]) for _ in checks])


def test_restarts_are_asked_of_pid1_and_every_ending_of_a_job_is_an_outcome(tmp_path: Path) -> None:
    """Why (issue 14): no systemctl process per restart; the canary and each wave are one question to
    PID 1 each.  A job that failed, a refusal, a job with no end in time: failed, with a line naming
    the unit (never another's); a job lost from view after it was enqueued is not asked for again,
    and the verification says whether its unit was restarted."""
    units = ["0.service", "a.service", "ba.service", "c.service", "d.service", "e.service", "f.service"]
    systemd = Systemd(units, keeps=frozenset({"e.service"}))
    jobs = Pid1Jobs(systemd, {"a.service": "failed", "ba.service": "refuse", "c.service": "hang",
                              "e.service": "lost", "f.service": "lost"})
    outcomes = bus_executor(tmp_path, systemd, jobs, max_parallel=8, max_failures=9).run_all(
        [action(n, 10 + i) for i, n in enumerate(units)])
    assert systemd.restarts() == []  # no systemctl restart at all
    assert jobs.asked == [("restart", units[:1]), ("restart", units[1:])]
    by_unit = {o.action.group.name: o for o in outcomes}
    assert {n: o.status for n, o in by_unit.items()} == {
        "0.service": verify.DONE, "a.service": verify.FAILED, "ba.service": verify.FAILED, "c.service": verify.FAILED,
        "d.service": verify.DONE, "e.service": verify.FAILED, "f.service": verify.DONE}
    assert "the restart job of a.service ended: failed" in by_unit["a.service"].detail
    assert "ba.service" not in by_unit["a.service"].detail
    assert "systemd refused the restart of ba.service (Unit ba.service is masked.)" in by_unit["ba.service"].detail
    assert "the restart job of c.service was lost from view: systemd closed the connection" in \
        by_unit["c.service"].detail  # what ended the wait: the socket closed, whichever job had ended
    assert by_unit["e.service"].detail.startswith("still active with the same main process")
    assert "the restart job of e.service was lost from view: systemd closed the connection" in \
        by_unit["e.service"].detail


def test_a_canary_whose_job_failed_stops_the_run_and_no_socket_means_systemctl(tmp_path: Path) -> None:
    """A canary's job that ends badly fails it (the breaker); a job with no end in time is failed; PID 1's
    socket that cannot be used at all: systemctl restarts, as before."""
    units = names(3)
    systemd = Systemd(units)
    jobs = Pid1Jobs(systemd, {units[0]: "dependency"})
    outcomes = bus_executor(tmp_path, systemd, jobs, max_parallel=8).run_all(
        [action(n, 10 + i) for i, n in enumerate(units)])
    assert jobs.asked == [("restart", units[:1])]
    assert outcomes[0].status == verify.FAILED
    assert outcomes[0].detail.startswith(f"the restart job of {units[0]} ended: dependency\nx {units[0]} - status")
    assert {o.detail for o in outcomes[1:]} == {f"circuit breaker: the canary of its phase ({units[0]}) failed"}
    systemd = Systemd(units)
    jobs = Pid1Jobs(systemd, {units[2]: "hang"})
    outcomes = bus_executor(tmp_path, systemd, jobs, max_parallel=8).run_all(
        [action(n, 10 + i) for i, n in enumerate(units)])
    by_unit = {o.action.group.name: o for o in outcomes}
    assert [by_unit[n].status for n in units] == [verify.DONE, verify.DONE, verify.FAILED]
    assert f"the restart job of {units[2]} did not end within 1 s" in by_unit[units[2]].detail
    systemd = Systemd(units)
    jobs = Pid1Jobs(systemd, unavailable=True)
    outcomes = bus_executor(tmp_path, systemd, jobs, max_parallel=8).run_all(
        [action(n, 10 + i) for i, n in enumerate(units)])
    assert systemd.restarts() == [units[:1], units[1:]]  # systemctl, as before
    assert [o.status for o in outcomes] == [verify.DONE] * 3


def test_what_systemd_said_as_a_job_ended_is_the_first_check_after_it(tmp_path: Path) -> None:
    """Why (issue 14): after a wave's jobs ended, 29 units' properties took 9 ms more to ask (99: 26 ms);
    asked on the restart's own connection as each job ends, they are there when the last one ends.
    A unit that is not up yet by that word is asked again, as before."""
    units = names(4)

    class Stale(Pid1Jobs):
        def __call__(self, verb: str, names: list[str], timeout: float,
                     under_way: Callable[[], None] = lambda: None,
                     ended: unitstate.Ended | None = None) -> unitstate.Jobs:
            found = super().__call__(verb, names, timeout, under_way, ended)
            assert found.states is not None
            if units[-1] in found.states:  # the wave's last unit, still with its old main process
                found.states[units[-1]] = {**found.states[units[-1]], "MainPID": "103"}
            return found
    # The checks before (the canary's, the wave's survey), then none after; or the one that looked old.
    for kind, asked_after in ((Pid1Jobs, []), (Stale, [units[-1:]])):
        systemd = Systemd(units)
        outcomes = bus_executor(tmp_path, systemd, kind(systemd, states=True), max_parallel=8).run_all(
            [action(n, 10 + i) for i, n in enumerate(units)])
        assert [o.status for o in outcomes] == [verify.DONE] * 4
        shown = [c[c.index("--") + 1:] for c in systemd.calls if c[1:2] == [SHOW]]
        assert shown == [units[:1], units[1:], *asked_after]


def test_a_waves_units_whose_jobs_ended_first_are_verified_while_the_rest_start(tmp_path: Path) -> None:
    """Why (issue 14): the wave's units were verified only once every job had ended, so the wave took
    its slowest unit's start plus the checks of all of them.  Those whose jobs end first (told by the
    bus while the others' still run) are checked then: only the last ones are left for after the
    wave.  Each unit once; with ``settle``, they stay up together with the rest of the wave."""
    units = names(5)
    checked: list[list[str | None]] = []
    done: list[str | None] = []

    def still_stale(checks: list[tuple[UnitGroup, list[int] | None]], until: float) -> list[verify.Recheck]:
        checked.append([g.name for g, _ in checks])
        return [verify.Recheck([]) for _ in checks]
    for settle in (0.0, 0.3):
        systemd = Systemd(units)
        checked.clear()
        done.clear()
        ex = execute.Executor(Settings(settle=settle, timeout=1.0, max_parallel=8), proc=tmp_path,
                              deadline=time.monotonic() + 60, cgroupfs=tmp_path, runner=systemd,
                              jobs=Pid1Jobs(systemd, states=True, first=2), still_stale=still_stale,
                              report=lambda o: done.append(o.action.group.name))
        outcomes = ex.run_all([action(n, 10 + i) for i, n in enumerate(units)])
        assert [o.status for o in outcomes] == [verify.DONE] * 5
        assert checked == [units[:1], units[1:3], units[3:]]  # the canary; the first two of the wave; the rest
        assert sorted(map(str, done)) == units and len(done) == 5  # each once
        # After the checks before (the canary's, the wave's survey): the canary's settle, then the wave's,
        # all four of its units at once.
        shows = [c[c.index("--") + 1:] for c in systemd.calls if c[1:2] == [SHOW]][2:]
        assert shows == [] if not settle else units[1:] in shows
        assert all(shown in (units[:1], units[1:]) for shown in shows)
        assert all(o.detail == ("verified, up for 0.3 s" if settle else "verified") for o in outcomes)


def test_a_verified_wave_looks_for_no_unit_in_what_went_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why (issue 14): each unit's pattern, to find its lines in what systemctl said, was compiled for
    every unit of a wave even when nothing went wrong (29 units: 3 ms after the wave)."""
    units = names(5)
    systemd = Systemd(units)
    compiled: list[str] = []
    monkeypatch.setattr(re, "compile", lambda pattern, *a: compiled.append(pattern))
    outcomes = executor(tmp_path, systemd, max_parallel=8).run_all([action(n, 10 + i) for i, n in enumerate(units)])
    assert [o.status for o in outcomes] == [verify.DONE] * 5 and compiled == []


def test_what_runs_beside_a_restart_starts_once_its_jobs_are_enqueued(tmp_path: Path) -> None:
    """Why (issue 14): the next wave's survey and the run's own reading ahead (``begun``: the reboot
    state, with its imports) started as the canary's restart was recorded, and held the interpreter
    while the canary's job was still to be asked for: 7-10 ms before every canary."""
    units = names(4)
    systemd = Systemd(units)
    told: list[int] = []
    jobs = Pid1Jobs(systemd)
    outcomes = bus_executor(tmp_path, systemd, jobs, begun=lambda: told.append(len(jobs.enqueued)),
                            max_parallel=8).run_all([action(n, 10 + i) for i, n in enumerate(units)])
    assert [o.status for o in outcomes] == [verify.DONE] * 4
    assert told == [1, 2]  # once per restart, each after its jobs were enqueued
    surveyed = next(i for i, c in enumerate(systemd.calls) if c[1:2] == [SHOW] and c[-3:] == units[1:])
    assert surveyed >= jobs.enqueued[0], systemd.calls  # the wave's survey: after the canary's job
