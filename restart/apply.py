"""Stages 1-7 composed for a run that acts: find, plan, restart (in waves), record and publish.

The orchestrator both edges share (``restartctl apply`` and ``restartctl hook``), after the
executor and the report in the pipeline: it wires scan, plan, execute and report together and
writes what became of each unit.  Also what every acting run needs: the log (terminal and
system log), the watchdog's exception, and the record of what each action became.  The lock and
the transaction's own processes are :mod:`restart.runs`'.
"""

from __future__ import annotations

import os
import signal
import sys
import syslog
import time
from collections.abc import Callable
from contextlib import suppress

from restart import TYPE_CHECKING, Importing, NamedTuple, packages, plan, policy, report, state, units
from restart.plan import Status
from restart.roots import Roots
from restart.runs import transaction_pids
from restart.scan import Findings, find
from restart.text import clean, printable

if TYPE_CHECKING:  # the executor and verification (systemctl, notifications) are imported when a restart is due
    from typing import TextIO

    from restart import execute, reboot, verify
    from restart.runner import Meanwhile


class Timeout(BaseException):
    """The run's budget is spent.

    A ``BaseException``: no per-process ``except Exception`` on the way (a scan's "one odd
    process must not stop the rest") can swallow the watchdog."""


class Log:
    """One line per message to the terminal (when asked) and always to the system log."""

    def __init__(self, out: TextIO, err: TextIO, *, quiet: bool) -> None:
        self.out, self.err, self.quiet = out, err, quiet
        syslog.openlog("restartctl", syslog.LOG_PID, syslog.LOG_DAEMON)

    def info(self, line: str, *, show: bool = True) -> None:
        if line:
            syslog.syslog(syslog.LOG_INFO, printable(line))
        if show and not self.quiet:
            self._show(self.out, f"restartctl: {printable(line)}" if line else "")

    def error(self, line: str) -> None:
        syslog.syslog(syslog.LOG_ERR, printable(line))
        self._show(self.err, f"restartctl: error: {printable(line)}")

    def _show(self, stream: TextIO, text: str) -> None:
        """A terminal that went away (apt interrupted, the session closed) stops nothing: the system
        log still gets every line, and the run still records what it did."""
        try:
            print(text, file=stream, flush=True)
        except OSError:
            self.quiet = True


def without(findings: Findings, pids: frozenset[int]) -> Findings:
    """The findings with these processes left out (the transaction's own)."""
    if not pids:
        return findings
    affected = [a for a in findings.affected if a.process.pid not in pids]
    return findings._replace(affected=affected, groups=units.group(affected))


def host_policy(roots: Roots, log: Log, read: policy.Policy | Exception | None = None) -> tuple[policy.Policy, bool]:
    """The administrator's policy; on an error, the vendor defaults in list mode (and say so).
    ``read``: the policy (or the error reading it) as this run already read it (the hook, for its watchdog).
    Read with the hook's cache of parsed documents (root's, in the state directory: see :func:`policy.load`):
    importing ``tomllib`` and parsing were 6-10 ms before the first restart of every ``apply``."""
    try:
        if isinstance(read, Exception):
            raise read
        return read or policy.for_host(roots.etc, roots.data, roots.state / policy.CACHE), True
    except (OSError, policy.PolicyError) as e:
        log.error(f"{e}; using the vendor defaults and restarting nothing")
        return policy.vendor(roots.data), False


def connect_ahead(roots: Roots, mode: str, actions: list[plan.Action]) -> bool:
    """Whether to connect to PID 1's socket while the run works on towards its first restart: only when
    restarts of system services are about to be asked of it without a question (mode auto)."""
    return mode == "auto" and roots.systemd_booted() and any(
        a.action in plan.RESTARTS and a.group.kind == units.SYSTEM and not a.group.guessed for a in actions)


class Progress(NamedTuple):
    """How far a hook run read the journal (inode, offset), and when it started."""

    journal: tuple[int, int]
    started: float


def act(roots: Roots, trigger: str, log: Log, *, scope: list[str] | None, old_files: dict[str, str] | None,
        failed: list[str], mode: str | None, deadline: float, answers: TextIO | None = None,
        progress: Progress | None = None, preview: bool = False, assume_yes: bool = False,
        fresh: frozenset[str] | None = None, read_policy: policy.Policy | Exception | None = None,
        shutting_down: Callable[[], bool] | None = None) -> int:
    """Find, plan and, as the mode says, restart; record what is still pending (and, for a hook
    run, how far it read the journal, in the same write).

    Returns 130 when interrupted (Ctrl-C; what was done is recorded, the rest stays pending),
    2 when the scan was cut short (the findings are not the whole truth), else 1 when a restart
    failed or, in list mode, when the plan has something to do (as ``plan``), else 0.
    ``preview`` (a dry run) also says which restarts the executor would skip, and why;
    ``assume_yes`` (apt's ``-y``) answers yes for every unit instead of asking; ``fresh`` (the
    hook's) are this transaction's packages: units only earlier runs' packages lead to are the
    backlog, shown in one line.  ``read_policy``: see :func:`host_policy`.  ``shutting_down`` (the
    hook's) is asked only when a restart is due (it is a ``systemctl`` call): then only listed.
    """
    pol, usable = host_policy(roots, log, read_policy)
    if mode is None or mode == "ask":  # ask's module only for a run that may ask (0.2 ms of apply --yes)
        from restart.ask import choose_mode, interactive

        mode = mode or choose_mode(pol.settings, trigger, interactive=interactive())
        if mode == "ask" and assume_yes:
            log.info("apt was told to assume yes (-y): restarting without asking (mode auto)")
            mode = "auto"
        if mode == "ask" and not interactive():
            log.info("mode ask needs a terminal and there is none: only listing (mode list)")
            mode = "list"
    if not usable:
        mode = "list"
    # The scan may take half the time left; restarts and their checks need the rest.
    # read once: the checks after restarts use it too
    db = packages.DpkgDatabase(roots.admindir, roots.root, cache=roots.run / "restartctl")
    findings = find(roots, only_packages=scope, old_files=old_files, db=db,
                    deadline=time.monotonic() + max(0.0, deadline - time.monotonic()) / 2)
    findings = without(findings, transaction_pids(roots.proc, roots.admindir, os.getpid()))
    if findings.scan.unscanned:
        log.error(report.unscanned_note(findings.scan))
    actions = plan.make_plan(findings.groups, pol)
    if connect_ahead(roots, mode, actions):
        with Importing():
            from restart import unitstate
        unitstate.prepare(pol.settings.timeout)  # PID 1's socket connected meanwhile, for the first check
    actions = hold_unconfigured(actions, packages.unconfigured(
        roots.admindir, {p for a in actions if a.action in plan.EXECUTABLE for p in a.group.packages}))
    if mode != "list" and shutting_down is not None and any(a.action in plan.EXECUTABLE for a in actions) \
            and shutting_down():
        log.info("the system is shutting down: restarting nothing (mode list)")
        mode = "list"
    boot = state.boot_id(roots.proc)
    recovered = recover(roots, log, findings, boot)
    # The last run's record, read once (under the run's lock no one else writes it): for the units whose
    # check failed in it, and for what this run's record keeps of it.
    record = state.read_json(roots.state, state.PENDING)
    # The checks after the restarts look their packages' files up (find's only_packages): the database's
    # indexes for that are built while the first restart runs, not after it (0.4 ms before the wave's).
    ahead = Ahead(roots, lambda: db.files_of(sorted({p for a in actions if a.action in plan.EXECUTABLE
                                                      for p in a.group.packages})))
    outcomes: list[verify.Outcome] = []
    interrupted = ""  # "interrupted" (Ctrl-C, hang-up) or "out of time" (the hook's watchdog)
    fresh_names = {p.partition(":")[0] for p in fresh or ()}
    earlier = {id(a) for a in actions if fresh is not None
               and not any(p.partition(":")[0] in fresh_names for p in a.group.packages)}
    # The policy's quiet: on the hook's terminal only what needs someone (failures, the next step).
    quiet = pol.settings.quiet and trigger != "manual" and mode != "ask"
    with Interrupts():
        if mode == "list" or not actions:
            skips: dict[int, str] = {}
            if preview:
                from restart import execute

                skips = execute.would_skip(actions, pol.settings, proc=roots.proc)
            lines = report.hook_lines(actions, failed=failed, skips=skips, earlier=earlier)
        else:
            choose = None
            if mode == "ask":
                from restart.ask import chooser

                choose = chooser(answers or sys.stdin, sys.stdout, deadline=deadline,
                                 default_yes=pol.settings.ask_default == "yes")
            interrupted = _carry_out(roots, trigger, log, actions, pol.settings, outcomes, failed=failed,
                                     deadline=deadline, earlier=earlier, quiet=quiet, db=db, first=ahead.start,
                                     choose=choose, boot=boot, again=state.failed_checks(record, boot))
            lines = report.applied_lines(actions, outcomes, failed=failed, progress_shown=True, earlier=earlier)
            if interrupted:
                lines.append(report.cut_short_line(actions, outcomes, interrupted))
        done = {id(o.action) for o in outcomes if o.status == Status.DONE}
        still = frozenset(p for a in actions if id(a) not in done for p in a.group.packages)
        # Not all looked at: the next run looks again at every package changed since the last complete run.
        missed = [report.unscanned_note(findings.scan)] if findings.scan.unscanned else []
        units_now = state.with_processes(recovered + report.run_units(actions, outcomes), roots.proc)
        still, recorded = state.merge_pending(record, boot, scope=scope, complete=not missed, packages=still,
                                              units=units_now)
        unsaved: OSError | None = None
        try:
            state.save_pending(roots.state, boot, trigger=trigger, packages=still, units=recorded,
                               journal=progress.journal if progress else None,
                               started=progress.started if progress and not missed else None,
                               incomplete=missed if progress or missed else None, previous=record)
            state.clear_actions(roots.state)  # they are in the record now
        except OSError as e:  # a full /var/lib: still shown, then the error (and the journal is read again)
            unsaved = e
        for line in lines:
            log.info(line, show=not quiet)
        for line in report.detail_lines(findings.groups):
            log.info(line, show=False)
        rebooting = publish(roots, [a for a in actions if id(a) not in done], findings, log, quiet=quiet,
                            known=ahead)
        step = report.next_step(actions, outcomes, listing=mode == "list", reboot=rebooting) if actions else None
        if step:
            log.info(step)
        if unsaved is not None:
            raise unsaved
    if interrupted == "interrupted":
        return 130
    if missed:
        return 2
    if mode == "list":
        return 1 if any(a.action != policy.Act.IGNORE for a in actions) else 0
    return 1 if any(o.status == Status.FAILED for o in outcomes) else 0


class Interrupts:
    """While restarting: the first Ctrl-C (SIGINT) or hang-up (SIGHUP: the terminal went away, apt
    interrupted too) stops the run as KeyboardInterrupt; later ones are ignored, so that what was
    done is always recorded."""

    def __enter__(self) -> Interrupts:
        self.seen = False
        self.previous = {signum: signal.signal(signum, self._stop) for signum in (signal.SIGINT, signal.SIGHUP)}
        return self

    def _stop(self, signum: int, frame: object) -> None:
        if not self.seen:
            self.seen = True
            raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def _carry_out(roots: Roots, trigger: str, log: Log, actions: list[plan.Action], settings: policy.Settings,
               outcomes: list[verify.Outcome], *, failed: list[str], deadline: float,
               choose: Callable[[list[plan.Action]], list[bool | None]] | None, earlier: set[int],
               quiet: bool, db: packages.DpkgDatabase, boot: str, again: execute.Earlier,
               first: Callable[[], None] = lambda: None) -> str:
    """Restart as planned, one progress line as each unit is done; returns what cut it short, if anything:
    "interrupted" (Ctrl-C, a hang-up) or "out of time" (the hook's watchdog; the time left to record
    what was done is the watchdog's grace).

    ``outcomes`` fills as the restarts finish, so that an interrupted run still records them; each
    action is also on record before it is taken (:class:`ActionLog`).  ``db``: the dpkg database as
    the scan read it, for the checks after the restarts; ``boot``: this boot's id; ``again``: the units
    whose check failed in its last run (:func:`restart.state.failed_checks`); ``first`` is told as each
    restart is under way (PID 1 starting its units: see :func:`restart.unitstate.bus_restart`).
    """
    intro = report.intro_lines(actions, failed=failed, asking=choose is not None, earlier=earlier,
                               seconds=deadline - time.monotonic(), default_yes=settings.ask_default == "yes")

    def introduce() -> None:
        """The intro, once: before the question (ask), else as the first restart is under way or before
        anything else is said, whichever comes first (its lines, to the system log too, were 0.1-0.4 ms
        before the canary's restart)."""
        while intro:
            log.info(intro.pop(0), show=not quiet)
    if choose is not None:
        introduce()

    def under_way() -> None:
        introduce()
        first()

    def still_stale(checks: list[tuple[units.UnitGroup, list[int] | None]], until: float) -> list[verify.Recheck]:
        # pids None: a guessed unit (no systemd): only root's and system accounts' processes can be it.
        # The units of a wave are looked at again in one scan; what it could not look at counts for each.
        if len(checks) > 1 and all(pids is not None for _, pids in checks):
            again = find(roots, only_packages=sorted({p for g, _ in checks for p in g.packages}),
                         pids=sorted({pid for _, pids in checks for pid in pids or ()}), deadline=until, users=True,
                         db=db)
            return [_left(again, g) for g, _ in checks]
        return [_left(find(roots, only_packages=list(g.packages), pids=pids, deadline=until,
                           users=pids is not None, db=db), g) for g, pids in checks]

    record = ActionLog(roots, trigger, log, boot)


    def progress(outcome: verify.Outcome) -> None:
        introduce()
        outcomes.append(outcome)
        record.outcome(outcome)
        log.info(report.outcome_line(outcome), show=not quiet or outcome.status == Status.FAILED)

    with Importing():
        from restart import execute

    def note(line: str) -> None:
        introduce()
        log.info(line, show=False)

    try:
        try:
            execute.apply(actions, settings, proc=roots.proc, run_dir=roots.run, deadline=deadline,
                          still_stale=still_stale, choose=choose, report=progress,
                          cgroupfs=roots.root / "sys" / "fs" / "cgroup", log=note, intend=record.intend,
                          earlier=again, begun=under_way)
        finally:
            introduce()  # (nothing was restarted or said: still before the report)
    except KeyboardInterrupt:
        log.info("")  # after the ^C the terminal echoed
        return "interrupted"
    except Timeout:
        return "out of time"
    return ""


def _left(again: Findings, group: units.UnitGroup) -> verify.Recheck:
    """What a scan after a restart found of this unit: its processes still stale."""
    from restart import verify

    same = (group.kind, group.name, group.uid)
    return verify.Recheck([m for g in again.groups if (g.kind, g.name, g.uid) == same for m in g.members],
                           again.scan.unscanned)


class ActionLog:
    """Each action on record in the state before it is taken (an intent) and after (its outcome),
    so that a run killed at any point leaves what it did, or was doing, for the next run."""

    def __init__(self, roots: Roots, trigger: str, log: Log, boot: str) -> None:
        self.directory, self.boot, self.trigger, self.log = roots.state, boot, trigger, log
        self.entries: list[dict[str, object]] = []
        self.index: dict[int, int] = {}

    def intend(self, actions: list[plan.Action]) -> None:
        """Raises OSError when they cannot be recorded: then none of them is taken.  (A wave's are
        recorded in one write.)"""
        self.entries += [{**report.action_json(a), "status": "started", "detail": ""} for a in actions]
        try:
            self._save()
        except OSError:
            del self.entries[len(self.entries) - len(actions):]
            raise
        for i, a in enumerate(actions, len(self.entries) - len(actions)):
            self.index[id(a)] = i

    def outcome(self, o: verify.Outcome) -> None:
        """A failure is written at once; a success with the next intent or the run's own record
        (until then a killed run's next run finds it "started" and checks it again: active)."""
        i = self.index.get(id(o.action))
        if i is None:
            return
        self.entries[i] = {**self.entries[i], "status": o.status, "detail": clean(o.detail)}
        if o.status == Status.DONE:
            return
        try:
            self._save()
        except OSError as e:
            self.log.error(str(e))

    def _save(self) -> None:
        state.save_actions(self.directory, self.boot, pid=os.getpid(), trigger=self.trigger, entries=self.entries)


def recover(roots: Roots, log: Log, findings: Findings, boot: str) -> list[dict[str, object]]:
    """Report, once, what a run that never finished (killed, out of time) restarted or was restarting.

    Each such unit is checked again: still on replaced files (it is among this run's
    findings, which this run then handles), or active again.  Returns their records.
    """
    pid, entries = state.interrupted(roots.state, boot, log=log.error)
    stale = {(g.kind, g.name, g.uid) for g in findings.groups}
    records: list[dict[str, object]] = []
    for e in entries:
        unit, kind, uid = e.get("unit"), e.get("kind"), e.get("uid")
        if e.get("status") not in ("started", Status.DONE) or not isinstance(unit, str) or not isinstance(kind, str):
            continue
        if (kind, unit, uid) in stale:
            status = Status.FAILED
            detail = f"an interrupted run (pid {pid}) was restarting it; still uses replaced files"
        else:
            from restart import unitstate

            active = unitstate.active_state(kind, unit, uid if isinstance(uid, int) else None)
            verified = "verified again: active, no replaced files in use" if active == "active" else \
                f"checked again: {active}"
            status = Status.DONE if active == "active" else Status.FAILED
            detail = f"restarted by an interrupted run (pid {pid}); {verified}"
        log.info(f"  {printable(unit)}: {detail}")
        records.append({**e, "status": status, "detail": detail})
    return records


def hold_unconfigured(actions: list[plan.Action], unfinished: dict[str, str]) -> list[plan.Action]:
    """Defer what would restart a unit whose package dpkg left unconfigured (killed, failed).

    Its maintainer scripts, which may migrate its configuration, have not all run.  The
    unit stays pending with the reason; the ``configure`` event of a later ``dpkg
    --configure`` brings it back into that run's report.
    """
    held = []
    for a in actions:
        waiting = sorted(f"{p} is {unfinished[p]}" for p in a.group.packages if p in unfinished)
        if waiting and a.action in plan.EXECUTABLE:
            a = a._replace(action=policy.Act.DEFER, argv=None, suggested=a.argv,
                           reason=f"not restarted: dpkg has not finished configuring it ({', '.join(waiting)}); "
                                  "after 'dpkg --configure -a'")
        held.append(a)
    return held


class Ahead:
    """What :func:`publish` needs that no restart changes (:func:`restart.reboot.machine`), read in a
    thread of its own once the first restart begins: the run only waits for systemd then, and a
    run with nothing restarted reads it at the end, as before.  ``prepare``: what the checks after the
    restarts need that no restart changes, done first in that thread (an error in it is left for them)."""

    def __init__(self, roots: Roots, prepare: Callable[[], object] = lambda: None) -> None:
        self.roots, self.prepare = roots, prepare
        self.task: Meanwhile[reboot.Machine] | None = None

    def start(self) -> None:
        from restart.runner import Meanwhile

        if self.task is None:
            self.task = Meanwhile(self._read)

    def _read(self) -> reboot.Machine:
        with suppress(OSError):
            self.prepare()
        from restart import formats, reboot  # noqa: F401 - formats: imported here too, for publish()

        return reboot.machine(proc=self.roots.proc, root=self.roots.root, admindir=self.roots.admindir,
                              run=self.roots.run)

    def result(self) -> reboot.Machine | None:
        return self.task.result() if self.task is not None else None


def publish(roots: Roots, left: list[plan.Action], findings: Findings, log: Log, *, quiet: bool = False,
            known: Ahead | None = None) -> bool:
    """Tell the rest of the system: /run/reboot-required(.pkgs) when a reboot is the cure (what
    unattended-upgrades' Automatic-Reboot and kured act on), and node-exporter's textfile, both
    from what is ``left`` after this run's restarts.  Returns whether a reboot is needed."""
    from restart import formats, reboot

    found: list[reboot.RebootReason] = []
    try:
        found, _ = reboot.for_host(left, proc=roots.proc, root=roots.root, admindir=roots.admindir,
                                   known=known.result() if known is not None else None, run=roots.run)
        if found:
            written = reboot.write_reboot_required(roots.run, found)
            if written.added or written.flag_created:
                for line in report.reboot_lines(found):
                    log.info(line, show=not quiet)
        textfile = formats.default_textfile(formats.TEXTFILE_DIR)
        if textfile is not None:  # (no node-exporter here: the metrics are not made, nor the record read again)
            record = state.read_json(roots.state, state.PENDING)
            text = formats.host_metrics(left, [a.group for a in left], findings.scan,
                                        found + reboot.flagged(roots.run, known=found), admindir=roots.admindir,
                                        last_run=record, current_boot=True)
            formats.write_textfile(text, textfile)
    except OSError as e:
        log.error(f"could not publish the reboot flag or the metrics: {e}")
    return bool(found)
