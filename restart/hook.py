"""``restartctl hook``: the run after each package transaction (apt, dpkg, unattended-upgrades).

An edge like the CLI.  Its promises to the package manager: it always exits 0,
every wait is bounded (a watchdog ends the run after ``budget`` seconds), it never
prompts, and what goes wrong is one line on stderr and in the system log, never a
traceback on the apt terminal.  It reports once per transaction: events the
dpkg-level hooks recorded are consumed exactly once (see ``transaction``), and an
unattended-upgrades run, which invokes apt's hooks once per minimal step, is
answered by a single run after unattended-upgrades has exited.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import syslog
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import NamedTuple, TextIO

from restart import execute, packages, plan, policy, report, state, transaction, units
from restart.processes import PPID, STARTTIME, stat_field
from restart.roots import Roots
from restart.scan import Findings, find
from restart.text import printable

AFTER_UU_MAX_WAIT = 6 * 3600.0
DEFERRED_UNIT = "restartctl-after-unattended-upgrades.service"
UU_SCRIPT = "/usr/bin/unattended-upgrade"
SYSTEMCTL = "/usr/bin/systemctl"
SYSTEMD_RUN = "/usr/bin/systemd-run"
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


class Timeout(Exception):
    """The run's budget is spent."""


class Process(NamedTuple):
    pid: int
    start: int  # start time in clock ticks since boot: with the PID, names one process for good


class Log:
    """One line per message to the terminal (when asked) and always to the system log."""

    def __init__(self, out: TextIO, err: TextIO, *, quiet: bool) -> None:
        self.out, self.err, self.quiet = out, err, quiet
        syslog.openlog("restartctl", syslog.LOG_PID, syslog.LOG_DAEMON)

    def info(self, line: str, *, show: bool = True) -> None:
        syslog.syslog(syslog.LOG_INFO, printable(line))
        if show and not self.quiet:
            print(f"restartctl: {printable(line)}", file=self.out, flush=True)

    def error(self, line: str) -> None:
        syslog.syslog(syslog.LOG_ERR, printable(line))
        print(f"restartctl: error: {printable(line)}", file=self.err, flush=True)


def process_start(proc: Path, pid: int) -> int | None:
    return stat_field(proc, pid, STARTTIME)


def unattended_upgrades_ancestor(proc: Path, run: Path, pid: int) -> Process | None:
    """The unattended-upgrade run this process descends from, if any.

    Recognised by its command line (``python3 /usr/bin/unattended-upgrade``) or by its
    pid file; only compared, never used for anything else.  unattended-upgrade may
    fork for a step, so the outermost such ancestor (the one the pid file names, if
    it is an ancestor) is the run that must be over before the report.
    """
    try:
        pidfile = int((run / "unattended-upgrades.pid").read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        pidfile = None
    found: int | None = None
    current: int | None = pid
    for _ in range(64):
        if current is None or current <= 1:
            break
        try:
            argv = (proc / str(current) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            argv = []
        if current == pidfile:
            found = current
            break
        if UU_SCRIPT.encode() in argv[:2]:
            found = current
        current = stat_field(proc, current, PPID)
    if found is None:
        return None
    start = process_start(proc, found)
    return Process(found, start) if start is not None else None


DPKG = "/usr/bin/dpkg"
DPKG_LOCKS = ("lock-frontend", "lock")


def _holds_dpkg_lock(proc: Path, pid: int, locks: tuple[str, ...]) -> bool:
    """Does the process hold a lock on one of dpkg's lock files (a frontend: apt, aptd, packagekitd)?

    An open descriptor on the file whose ``fdinfo`` lists a lock; only the process's own
    descriptors are looked at, never ``/proc/locks`` (whose device numbers differ on overlays).
    """
    fds = proc / str(pid) / "fd"
    try:
        names = os.listdir(fds)
    except OSError:
        return False
    for name in names[:4096]:
        try:
            if os.readlink(fds / name) not in locks:
                continue
            info = (proc / str(pid) / "fdinfo" / name).read_bytes()
        except OSError:
            continue
        if b"\nlock:" in info:
            return True
    return False


def transaction_pids(proc: Path, admindir: Path, pid: int) -> frozenset[int]:
    """The processes that run this package transaction: they are its means, not its findings.

    The hook's ancestors up to the outermost one that holds dpkg's frontend lock or
    database lock (apt-get, apt, unattended-upgrade, aptd, packagekitd, a python-apt
    script) or is dpkg itself (a plain ``dpkg -i`` has unlocked when its post-invoke
    hook runs), with the shells between.  Nothing when no ancestor is (a run by hand).
    """
    locks = tuple(str(admindir / name) for name in DPKG_LOCKS)
    chain: list[int] = []
    outermost = 0
    current: int | None = stat_field(proc, pid, PPID)
    for _ in range(64):
        if current is None or current <= 1:
            break
        chain.append(current)
        try:
            exe = os.readlink(proc / str(current) / "exe")
        except OSError:
            exe = ""
        if exe == DPKG or _holds_dpkg_lock(proc, current, locks):
            outermost = len(chain)
        current = stat_field(proc, current, PPID)
    return frozenset(chain[:outermost])


def without(findings: Findings, pids: frozenset[int]) -> Findings:
    """The findings with these processes left out (the transaction's own)."""
    if not pids:
        return findings
    affected = [a for a in findings.affected if a.process.pid not in pids]
    return findings._replace(affected=affected, groups=units.group(affected))


def wait_for_exit(proc: Path, target: Process, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and process_start(proc, target.pid) == target.start:
        time.sleep(0.5)


LOCK = "lock"  # in /run/restartctl: held by every run that acts (hook, apply)


class Lock(NamedTuple):
    """Whether this run holds the lock, and if not, which run does (as that run wrote it)."""

    held: bool
    holder: str


@contextmanager
def locked(path: Path, timeout: float, *, who: str = "restartctl",
           waiting: Callable[[str], None] | None = None) -> Iterator[Lock]:
    """An exclusive lock on ``path``, waited for at most ``timeout`` seconds.

    The holder writes its PID and command into the file, so that a run that cannot get
    the lock can say which run has it (``waiting`` is told once, when the wait begins).
    The lock itself is the ``flock``: it ends with the holder, however the holder ends.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield Lock(False, holder(fd))
                    return
                if waiting is not None:
                    waiting(holder(fd))
                    waiting = None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {who}\n".encode(), 0)
        yield Lock(True, "")
    finally:
        os.close(fd)


def holder(fd: int) -> str:
    """``pid N (command)`` from the lock file, printable; "another run" when it says nothing usable."""
    pid, _, who = os.pread(fd, 128, 0).decode("ascii", "replace").strip().partition(" ")
    return f"pid {pid} ({printable(who[:32])})" if pid.isdigit() else "another run"


def run_lock(roots: Roots, timeout: float, *, who: str,
             waiting: Callable[[str], None] | None = None) -> AbstractContextManager[Lock]:
    """The one lock of every command that acts, in ``/run/restartctl`` (created root-only if missing)."""
    rundir = roots.run / "restartctl"
    if not state.usable_dir(rundir, create=True):  # checked before the lock is taken in it
        raise OSError(f"{rundir}: not a directory only root can write (a symlink, or group or world writable); "
                      "nothing is done and the transaction stays pending")
    return locked(rundir / LOCK, timeout, who=who, waiting=waiting)


def _run_quietly(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=CLEAN_ENV, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, check=False)


def system_state() -> str:
    """systemd's own word (``systemctl is-system-running``), or "" when it cannot say in time."""
    try:
        return _run_quietly([SYSTEMCTL, "is-system-running"], 5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def shutting_down(roots: Roots) -> bool:
    return roots.systemd_booted() and system_state() == "stopping"


def _self_argv(uu: Process) -> tuple[list[str], str]:
    """How to start this same restartctl again (from the package or a checkout), and where."""
    here = Path(__file__).resolve().parent.parent
    return ([sys.executable, "-s", "-m", "restart", "hook", "--trigger", "unattended-upgrades",
             "--after", f"{uu.pid}:{uu.start}"], str(here))


def defer_until_exit(roots: Roots, uu: Process, log: Log) -> None:
    """Arrange exactly one run after unattended-upgrades has exited.

    With systemd: a transient service with a fixed name; while one waits, starting
    another fails, which is what makes the run unique.  Without: a detached child.
    """
    argv, cwd = _self_argv(uu)
    if roots.systemd_booted():
        result = _run_quietly([SYSTEMD_RUN, f"--unit={DEFERRED_UNIT}", "--collect", "--no-block", "--quiet",
                               f"--working-directory={cwd}",
                               "--description=restartctl: report once unattended-upgrades has finished",
                               "--", *argv], 15)
        if result.returncode == 0:
            # Shown, so that unattended-upgrades' log and mail say where the report will be.
            log.info(f"unattended-upgrades (pid {uu.pid}) is running: restarts and one report follow when "
                     "it is done ('journalctl -t restartctl', 'restartctl status')")
        elif "already" in result.stderr:
            log.info("unattended-upgrades: a run after it is already waiting", show=False)
        else:
            log.error(f"could not schedule the run after unattended-upgrades: {result.stderr.strip()}")
        return
    if os.fork() == 0:  # pragma: no cover - the detached child never returns here
        try:
            os.setsid()
            if os.fork() == 0:
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                os.chdir(cwd)
                os.execve(argv[0], argv, CLEAN_ENV)  # noqa: S606 - our own interpreter, fixed argv
        finally:
            os._exit(0)
    log.info(f"unattended-upgrades (pid {uu.pid}) is running: restarts and one report follow when it is done")


def run(roots: Roots, trigger: str, *, after: Process | None = None, budget: float = transaction.HOOK_BUDGET,
        out: TextIO | None = None, err: TextIO | None = None) -> int:
    """The whole hook run; always returns 0."""
    log = Log(out or sys.stdout, err or sys.stderr, quiet=False)
    if after is not None:
        wait_for_exit(roots.proc, after, AFTER_UU_MAX_WAIT)

    def expire(signum: int, frame: object) -> None:
        raise Timeout()

    previous: Callable[..., object] | int | None = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, budget)
    try:
        _run(roots, trigger, log, budget)
    except Timeout:
        log.error(f"gave up after {budget:g} s; the findings stay pending for the next run")
    except Exception as e:
        log.error(f"{type(e).__name__}: {e}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return 0


def _run(roots: Roots, trigger: str, log: Log, budget: float) -> None:
    rundir = roots.run / "restartctl"
    if os.environ.get("RESTARTCTL_SUSPEND") == "1":
        log.info("suspended by RESTARTCTL_SUSPEND=1; the transaction stays pending", show=False)
        return
    if trigger != "unattended-upgrades":
        uu = unattended_upgrades_ancestor(roots.proc, roots.run, os.getpid())
        if uu is not None:
            defer_until_exit(roots, uu, log)
            return
    if shutting_down(roots):
        log.info("the system is shutting down: nothing to do", show=False)
        return
    with run_lock(roots, budget / 2, who=f"hook --trigger {trigger}") as lock:
        if not lock.held:
            log.error(f"another restartctl run ({lock.holder}) holds {rundir / LOCK}; "
                      "this transaction stays pending for the next run")
            return
        _report(roots, rundir, trigger, log, time.monotonic() + budget - 1)


def choose_mode(settings: policy.Settings, trigger: str, *, interactive: bool) -> str:
    """The policy's ``mode`` on a terminal, ``unattended_mode`` everywhere else; never ask without a terminal."""
    if trigger == "unattended-upgrades" or not interactive:
        return settings.unattended_mode
    return settings.mode


def interactive() -> bool:
    return (sys.stdin.isatty() and sys.stdout.isatty()
            and os.environ.get("DEBIAN_FRONTEND") != "noninteractive")


def asker(answers: TextIO, prompts: TextIO) -> Callable[[plan.Action], bool]:
    """The ``ask`` mode prompt: yes / no / all / quit, the policy's default preselected."""
    remembered: list[bool] = []

    def confirm(action: plan.Action) -> bool:
        if remembered:
            return remembered[0]
        while True:
            prompts.write(f"restartctl: {printable(action.group.name or '?')}: "
                          f"{report.command(action.argv or ())}? [Y/n/a/q] ")
            prompts.flush()
            raw = answers.readline()
            if not raw:  # end of input: nobody is there to say yes
                remembered.append(False)
                return False
            answer = raw.strip().lower()
            if answer in ("", "y", "yes"):
                return True
            if answer in ("n", "no"):
                return False
            if answer in ("a", "all"):
                remembered.append(True)
                return True
            if answer in ("q", "quit"):
                remembered.append(False)
                return False
    return confirm


def host_policy(roots: Roots, log: Log) -> tuple[policy.Policy, bool]:
    """The administrator's policy; on an error, the vendor defaults in list mode (and say so)."""
    try:
        return policy.for_host(roots.etc, roots.data), True
    except (OSError, policy.PolicyError) as e:
        log.error(f"{e}; using the vendor defaults and restarting nothing")
        return policy.vendor(roots.data), False


def act(roots: Roots, trigger: str, log: Log, *, scope: list[str] | None, old_files: dict[str, str] | None,
        failed: list[str], mode: str | None, deadline: float, answers: TextIO | None = None) -> int:
    """Find, plan and, as the mode says, restart; record what is still pending.  1 if a restart failed."""
    pol, usable = host_policy(roots, log)
    mode = mode or choose_mode(pol.settings, trigger, interactive=interactive())
    if not usable or (mode == "ask" and not interactive()):
        mode = "list"
    # The scan may take half the time left; restarts and their checks need the rest.
    findings = find(roots, only_packages=scope, old_files=old_files,
                    deadline=time.monotonic() + max(0.0, deadline - time.monotonic()) / 2)
    findings = without(findings, transaction_pids(roots.proc, roots.admindir, os.getpid()))
    if findings.scan.unscanned:
        log.error(report.unscanned_note(findings.scan))
    actions = plan.make_plan(findings.groups, pol)
    actions = hold_unconfigured(actions, packages.unconfigured(
        roots.admindir, {p for a in actions if a.action in execute.EXECUTABLE for p in a.group.packages}))
    outcomes: list[execute.Outcome] = []
    if mode == "list" or not actions:
        lines = report.hook_lines(actions, failed=failed)
    else:
        def still_stale(group: units.UnitGroup, pids: list[int] | None) -> list[units.Affected]:
            again = find(roots, only_packages=list(group.packages), pids=pids)
            return [m for g in again.groups if (g.kind, g.name, g.uid) == (group.kind, group.name, group.uid)
                    for m in g.members]
        confirm = asker(answers or sys.stdin, sys.stdout) if mode == "ask" else None
        applied = execute.apply(actions, pol.settings, proc=roots.proc, run_dir=roots.run, deadline=deadline,
                                still_stale=still_stale, confirm=confirm, report=lambda o: None,
                                cgroupfs=roots.root / "sys" / "fs" / "cgroup",
                                log=lambda line: log.info(line, show=False))
        outcomes = applied.outcomes
        lines = report.applied_lines(actions, outcomes, failed=failed)
    for line in lines:
        log.info(line)
    for line in report.detail_lines(findings.groups):
        log.info(line, show=False)
    done = {id(o.action) for o in outcomes if o.status == execute.DONE}
    still = frozenset(p for a in actions if id(a) not in done for p in a.group.packages)
    if findings.scan.unscanned:
        still |= frozenset(scope or ())  # not all looked at: the whole transaction stays pending
    state.save_pending(roots.state, state.boot_id(roots.proc), trigger=trigger, packages=still,
                       units=report.run_units(actions, outcomes))
    publish(roots, [a for a in actions if id(a) not in done], findings, log)
    return 1 if any(o.status == execute.FAILED for o in outcomes) else 0


def hold_unconfigured(actions: list[plan.Action], unfinished: dict[str, str]) -> list[plan.Action]:
    """Defer what would restart a unit whose package dpkg left unconfigured (killed, failed).

    Its maintainer scripts, which may migrate its configuration, have not all run.  The
    unit stays pending with the reason; the ``configure`` event of a later ``dpkg
    --configure`` brings it back into that run's report.
    """
    held = []
    for a in actions:
        waiting = sorted(f"{p} is {unfinished[p]}" for p in a.group.packages if p in unfinished)
        if waiting and a.action in execute.EXECUTABLE:
            a = a._replace(action="defer", argv=None, suggested=a.argv,
                           reason=f"not restarted: dpkg has not finished configuring it ({', '.join(waiting)}); "
                                  "after 'dpkg --configure -a'")
        held.append(a)
    return held


def publish(roots: Roots, left: list[plan.Action], findings: Findings, log: Log) -> None:
    """Tell the rest of the system: /run/reboot-required(.pkgs) when a reboot is the cure (what
    unattended-upgrades' Automatic-Reboot and kured act on), and node-exporter's textfile, both
    from what is ``left`` after this run's restarts."""
    from restart import formats, reboot

    try:
        found, _ = reboot.for_host(left, proc=roots.proc, root=roots.root, admindir=roots.admindir)
        if found:
            written = reboot.write_reboot_required(roots.run, found)
            if written.added or written.flag_created:
                log.info("a reboot is needed: " + ", ".join(
                    sorted({f"{r.kind} {r.package}" if r.package else r.kind for r in found})))
        record = state.read_json(roots.state, state.PENDING)
        text = formats.host_metrics(left, [a.group for a in left], findings.scan,
                                    found + reboot.flagged(roots.run, known=found), admindir=roots.admindir,
                                    last_run=record, current_boot=True)
        formats.write_textfile(text)
    except OSError as e:
        log.error(f"could not publish the reboot flag or the metrics: {e}")


def _report(roots: Roots, rundir: Path, trigger: str, log: Log, deadline: float) -> None:
    txn = transaction.read(rundir)
    scope = txn.packages | state.pending_packages(roots.state, state.boot_id(roots.proc), log=log.error)
    if scope:
        old = transaction.old_files(rundir, txn.packages, packages.usr_aliases(roots.root))
        act(roots, trigger, log, scope=sorted(scope), old_files=old, failed=sorted(txn.failed), mode=None,
            deadline=deadline)
    transaction.consume(rundir, txn)
