"""``restartctl hook``: the run after each package transaction (apt, dpkg, unattended-upgrades).

An edge like the CLI.  Its promises to the package manager: it always exits 0,
every wait is bounded (a watchdog ends the run after ``budget`` seconds), it never
prompts, and what goes wrong is one line on stderr and in the system log, never a
traceback on the apt terminal.  It reports once per transaction: events the
dpkg-level hooks recorded are consumed exactly once (see ``transaction``), and an
unattended-upgrades run, which invokes apt's hooks once per minimal step, is
answered by a single run after unattended-upgrades has exited.  What it does about
the findings is :func:`restart.apply.act`'s, as for ``restartctl apply``.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

from restart import TYPE_CHECKING, fsutil, packages, policy, state, transaction, units
from restart.apply import Log, Progress, Timeout, act
from restart.procfs import CLEAN_ENV, ProcessGone, lineage, parse_status, read_proc
from restart.roots import Roots
from restart.runs import LOCK, Process, process_start, run_lock

if TYPE_CHECKING:
    import subprocess
    from typing import TextIO

AFTER_UU_MAX_WAIT = 6 * 3600.0
DEFERRED_UNIT = "restartctl-after-unattended-upgrades.service"
UU_SCRIPT = "/usr/bin/unattended-upgrade"
SYSTEMCTL = "/usr/bin/systemctl"
SYSTEMD_RUN = "/usr/bin/systemd-run"
GRACE = 10.0  # seconds a run cut short by its watchdog has to record what it did


def uu_interpreter(root: Path) -> os.stat_result | None:
    """The interpreter named by the ``#!`` line of the package's own ``/usr/bin/unattended-upgrade``.

    The script is root's (from the package): the line is only read, and the interpreter only
    ``stat``ed, to know which executable a genuine run has.  None when not installed.
    """
    try:
        fd = os.open(root / UU_SCRIPT.lstrip("/"), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            first = os.read(fd, 256).split(b"\n")[0]
        finally:
            os.close(fd)
        interpreter = first[2:].split()[0] if first.startswith(b"#!") and first[2:].split() else b""
        if not stat.S_ISREG(st.st_mode) or fsutil.untrusted(st) is not None or not interpreter.startswith(b"/"):
            return None
        return os.stat(root / os.fsdecode(interpreter).lstrip("/"))
    except OSError:
        return None


def proven_uu_run(proc: Path, pid: int, interpreter: os.stat_result) -> bool:
    """Whether a process is a genuine unattended-upgrade run, not a user's look-alike.

    Its executable is the interpreter of the package's script (same inode) and that script is
    its first argument; it runs as root; and it was not started from another user's session
    or manager (apt-daily-upgrade.service, or root's own session).  Facts are read through one
    ``/proc/PID`` descriptor; only compared, never used for anything else.
    """
    try:
        dfd = os.open(proc / str(pid), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        argv = read_proc(dfd, "cmdline").split(b"\0")
        uid = parse_status(read_proc(dfd, "status"))[2]
        exe = os.stat("exe", dir_fd=dfd)
        cgroup = read_proc(dfd, "cgroup").decode("utf-8", "surrogateescape")
    except (OSError, ProcessGone, ValueError):
        return False
    finally:
        os.close(dfd)
    if uid != 0 or argv[1:2] != [UU_SCRIPT.encode()] or \
            (exe.st_dev, exe.st_ino) != (interpreter.st_dev, interpreter.st_ino):
        return False
    unit = units.resolve(units.cgroup_path(cgroup))
    return unit.kind in (units.SYSTEM, units.INIT, units.NONE) or (
        unit.kind in (units.SESSION, units.USER, units.USER_MANAGER) and unit.uid == 0)


def unattended_upgrades_ancestor(proc: Path, run: Path, pid: int, root: Path = Path("/")) -> Process | None:
    """The unattended-upgrade run this process descends from, if any.

    Only a proven run counts (see :func:`proven_uu_run`): a user who may ``sudo apt-get`` must
    not make root wait for her own process named like it.  unattended-upgrade may fork for a
    step, so the outermost proven ancestor (the one the pid file names, if it is one) is the
    run that must be over before the report.
    """
    interpreter = uu_interpreter(root)
    if interpreter is None:
        return None
    try:
        pidfile = int((run / "unattended-upgrades.pid").read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        pidfile = None
    found: int | None = None
    for current in lineage(proc, pid):
        if current == 1:
            break
        if proven_uu_run(proc, current, interpreter):
            found = current
            if current == pidfile:
                break
    if found is None:
        return None
    start = process_start(proc, found)
    return Process(found, start) if start is not None else None


def wait_for_exit(proc: Path, target: Process, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and process_start(proc, target.pid) == target.start:
        time.sleep(0.5)


def _run_quietly(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    from restart import runner  # (and subprocess): most runs start no program

    return runner.run(argv, timeout)


def system_state() -> str:
    """systemd's own word (``systemctl is-system-running``), or "" when it cannot say in time."""
    import subprocess

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
        if result.returncode == 0 or "already" in result.stderr:
            try:
                state.save_waiting(roots.state, state.boot_id(roots.proc), uu.pid, uu.start)
            except OSError as e:
                log.error(f"could not record the waiting run: {e}")
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


def run(roots: Roots, trigger: str, *, after: Process | None = None, budget: float | None = None,
        out: TextIO | None = None, err: TextIO | None = None) -> int:
    """The whole hook run; always returns 0.  ``budget``: the watchdog's seconds (None: the policy's
    ``hook_budget``)."""
    log = Log(out or sys.stdout, err or sys.stderr, quiet=False)
    if after is not None:
        wait_for_exit(roots.proc, after, AFTER_UU_MAX_WAIT)
    read = hook_policy(roots)
    if budget is None:
        budget = hook_budget(read)

    def expire(signum: int, frame: object) -> None:
        # The first expiry cuts the restarts short; the run then has GRACE seconds to record what it
        # did and name what it did not attempt.  A second one ends the run wherever it is.
        if grace:
            grace.pop()
            signal.setitimer(signal.ITIMER_REAL, GRACE)
        raise Timeout()

    grace = [GRACE]
    previous: Callable[..., object] | int | None = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(budget, 0.001))  # 0 would disable the watchdog
    try:
        _run(roots, trigger, log, budget, read)
    except Timeout:
        log.error(f"gave up after {budget:g} s; the findings stay pending for the next run")
    except KeyboardInterrupt:
        log.error("interrupted; what this run did not handle stays pending for the next run")
    except OSError as e:  # its message names the file
        log.error(str(e))
    except Exception as e:
        log.error(f"{type(e).__name__}: {e}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return 0


def hook_policy(roots: Roots) -> policy.Policy | Exception:
    """The policy, read once per run (for the watchdog, then for the run), or why it cannot be read."""
    try:
        return policy.for_host(roots.etc, roots.data, roots.state / policy.CACHE)
    except (OSError, policy.PolicyError) as e:
        return e


def hook_budget(read: policy.Policy | Exception) -> float:
    """The policy's ``hook_budget`` (the vendor default when the policy cannot be read: the run says why later)."""
    return read.settings.hook_budget if isinstance(read, policy.Policy) else policy.Settings().hook_budget


def _run(roots: Roots, trigger: str, log: Log, budget: float, read: policy.Policy | Exception) -> None:
    rundir = roots.run / "restartctl"
    if os.environ.get("RESTARTCTL_SUSPEND") == "1":
        log.info("suspended by RESTARTCTL_SUSPEND=1; the transaction stays pending", show=False)
        return
    if trigger != "unattended-upgrades":
        uu = unattended_upgrades_ancestor(roots.proc, roots.run, os.getpid(), roots.root)
        if uu is not None:
            defer_until_exit(roots, uu, log)
            return
    with run_lock(roots, budget / 2, who=f"hook --trigger {trigger}") as lock:
        if not lock.held:
            log.error(f"another restartctl run ({lock.holder}) holds {rundir / LOCK}; "
                      "this transaction stays pending for the next run")
            return
        _report(roots, rundir, trigger, log, time.monotonic() + budget - 1, read)


def boot_time(proc: Path) -> float:
    """When this system booted (epoch), from the kernel's ``btime``; 0 when it cannot say."""
    try:
        for line in (proc / "stat").read_text(encoding="ascii").splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _report(roots: Roots, rundir: Path, trigger: str, log: Log, deadline: float,
            read: policy.Policy | Exception) -> None:
    started = time.time()
    boot = state.boot_id(roots.proc)
    record = state.this_boot(roots.state, boot, log=log.error)
    cursor = state.journal_cursor(record)
    txn = transaction.read(rundir, cursor)
    markers = transaction.claim_markers([rundir, roots.state])
    since, missed_before = state.last_complete(record)
    missed = [*txn.incomplete, *(f"{m} says the hooks could not record every event" for m in markers),
              *(f"the last run: {why}" for why in missed_before)]
    scope = txn.packages | state.pending_packages(roots.state, boot, log=log.error)
    fresh = txn.packages  # this transaction's, as far as anyone can tell
    if missed:
        since = since or boot_time(roots.proc)
        changed = packages.changed_since(roots.admindir, since)
        log.info(f"{'; '.join(missed)}: looking at every package changed since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))} ({len(changed)})")
        scope |= changed
        fresh |= changed  # what the journal lost is this transaction's too, not an earlier run's backlog
    progress = Progress(txn.journal, started)
    if scope:
        old = transaction.old_files(rundir, txn.packages, packages.usr_aliases(roots.root))
        act(roots, trigger, log, scope=sorted(scope), old_files=old, failed=sorted(txn.failed), mode=None,
            deadline=deadline, progress=progress, assume_yes=consume_assume_yes(rundir), fresh=fresh,
            read_policy=read, shutting_down=lambda: shutting_down(roots))
    elif missed or txn.journal != cursor:
        state.save_progress(roots.state, boot, trigger=trigger, journal=txn.journal, started=started)
    transaction.release_markers([rundir, roots.state])


ASSUME_YES = "assume-yes"


def consume_assume_yes(rundir: Path) -> bool:
    """Whether apt ran with ``-y`` (``APT::Get::Assume-Yes``): the Pre-Install-Pkgs hook saw it in
    apt's configuration and left this marker in our own directory.  Used once."""
    try:
        os.unlink(rundir / ASSUME_YES)
    except OSError:
        return False
    return True
