"""Throw-away containers on an overlay of the host's ``/``, for restartctl's scenario tests.

Why: restartctl runs dpkg and restarts systemd units; tests need a real systemd 252 (and a host
*without* systemd as PID 1) where ``dpkg -i`` may run freely, while the test machine stays untouched.

How (one mechanism for both flavours):

- Our own cgroups ``<hierarchy>/rctl-test.NAME.PID.N`` in the cgroup2 hierarchy and, on hybrid hosts,
  the ``name=systemd`` v1 one. systemd-nspawn (``--keep-unit``) puts the container in ``payload/``
  and itself in ``supervisor/`` below them, so ``cgroup.kill`` of our directory stops everything.
- ``unshare --mount --propagation private``: a tmpfs on ``/run`` and, inside it, an overlay
  (lower = host ``/``, upper = tmpfs) that exists only in that namespace. dpkg writes vanish with it.
- ``systemd-nspawn --register=no --keep-unit --private-network --console=read-only`` on that overlay:
  ``boot=True`` with ``--boot`` (systemd as PID 1, ``--unit=basic.target`` so the host image's
  enabled services stay off); ``boot=False`` with ``--as-pid2 /usr/bin/sleep infinity``, so PID 1 is
  nspawn's stub init (it reaps orphans; nothing creates ``/run/systemd/system``; nspawn's own tmpfs
  on ``/run`` hides the host's).
- Commands run via ``nsenter -t LEADER -a -r -w`` with a fixed environment, each in its own cgroup
  ``payload/rctl-harness/exec-N`` (``spawn-N`` for background processes), so a timed-out command and
  everything it forked can be killed by cgroup; inside, such a process's cgroup reads
  ``/rctl-harness/exec-N`` (not a systemd unit).
- The lower root's host configuration (HOST_LEAKS: a Docker-style ``policy-rc.d``, needrestart's
  apt/dpkg hooks) is hidden by whiteouts, so every container starts as a plain Debian system.
- The repository checkout is bind-mounted read-only at its own path; a host temporary directory is
  bind-mounted read-write at ``/srv/rctl`` (nspawn puts a tmpfs on the container's ``/tmp``).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from . import PrerequisiteError, require_program

NSPAWN = "/usr/bin/systemd-nspawn"
NSENTER = "/usr/bin/nsenter"
UNSHARE = "/usr/bin/unshare"
SH = "/bin/sh"
SLEEP = "/usr/bin/sleep"
APT_FTPARCHIVE = "/usr/bin/apt-ftparchive"
DPKG_SCANPACKAGES = "/usr/bin/dpkg-scanpackages"

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRATCH = "/srv/rctl"  # writable scratch directory inside every container (host: Container.scratch)
_SCRATCH_MODE = 0o755  # readable by a test's unprivileged users inside, writable by root only
HARNESS_CGROUP = "rctl-harness"
CLEAN_ENV: dict[str, str] = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

START_TIMEOUT = 30.0  # container up and (boot=True) is-system-running answered
STOP_TIMEOUT = 10.0  # orderly poweroff after SIGTERM before cgroup.kill
KILL_TIMEOUT = 5.0  # cgroup empty after cgroup.kill

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,30}$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")
_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.\\@-]{1,250}\.(service|scope|socket|target|timer|slice)$")

# Runs as the first process of the new mount namespace (argv: cgroup.procs files, "--", nspawn argv).
# A fixed script; every value arrives as a positional parameter, never interpolated into code.
_START_SCRIPT = r"""
while [ "$1" != -- ]; do echo $$ > "$1"; shift; done; shift
lower=$1; shift
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/rctl-ovl/upper /run/rctl-ovl/work /run/rctl-ovl/root
mount -t overlay -o "lowerdir=$lower,upperdir=/run/rctl-ovl/upper,workdir=/run/rctl-ovl/work" \
    overlay /run/rctl-ovl/root
while [ "$1" != -- ]; do rm -f -- "/run/rctl-ovl/root$1"; shift; done; shift
exec "$@"
"""

# Files of the lower root that never show inside a container (whiteouts in the overlay's upper layer):
# host configuration that would change what the tests measure. A test that wants one writes it itself
# (:meth:`Container.forbid_service_starts` for the Docker-style policy-rc.d).
HOST_LEAKS = (
    "/usr/sbin/policy-rc.d",  # a Docker-style "exit 101": every service start and restart forbidden
    "/etc/apt/apt.conf.d/99needrestart",  # needrestart's own apt and dpkg hooks
    "/etc/dpkg/dpkg.cfg.d/needrestart",
)
POLICY_RC_D = "/usr/sbin/policy-rc.d"
FORBID_ALL = "#!/bin/sh\n# Docker-style: no service may be started or restarted by package tooling.\nexit 101\n"

# Joins the given cgroups, then execs the rest (argv: cgroup.procs files, "--", command).
_JOIN_SCRIPT = r"""
while [ "$1" != -- ]; do echo $$ > "$1"; shift; done; shift
exec "$@"
"""

# Inside the container: start "$@" detached (new session, stdio to a log), print its PID.
# In a non-interactive sh the background child is no process-group leader, so setsid does not fork
# and $! is the PID of the final program.
_SPAWN_SCRIPT = r"""
log=$1; shift
setsid -- "$@" </dev/null >>"$log" 2>&1 &
echo $!
"""

_WRITE_SCRIPT = r"""
mkdir -p -- "$(dirname -- "$1")"
cat > "$1.rctl-tmp"
chmod "$2" "$1.rctl-tmp"
mv -f -- "$1.rctl-tmp" "$1"
"""

# A bind mount: "SRC[:DST]" (read-write), (src, dst) or (src, dst, read_only).
Bind = str | tuple[str | Path, str] | tuple[str | Path, str, bool]

_live: weakref.WeakSet[Container] = weakref.WeakSet()
_counter = itertools.count(1)


def _stop_all_live() -> None:
    """atexit safety net: stop containers a crashed test left running."""
    for container in list(_live):
        container.stop()


atexit.register(_stop_all_live)


def _cgroup_mounts() -> tuple[Path, Path | None]:
    """Return (cgroup2 mount, name=systemd v1 mount or None) from our mountinfo.

    Why: the CI hosts are hybrid (v1 name=systemd + cgroup2 at /sys/fs/cgroup/unified); a pure
    cgroup2 host has a single hierarchy. cgroup.kill needs cgroup2 (kernel >= 5.14).
    """
    v2: Path | None = None
    v1: Path | None = None
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) < 5 or len(rfields) < 3:
                continue
            mnt = Path(fields[4].replace("\\040", " "))
            if rfields[0] == "cgroup2" and v2 is None:
                v2 = mnt
            elif rfields[0] == "cgroup" and "name=systemd" in rfields[2].split(","):
                v1 = mnt
    if v2 is None or not _has_kill_support(v2):
        raise PrerequisiteError("a cgroup2 hierarchy with cgroup.kill (Linux >= 5.14) is required")
    return v2, v1


def cgroup_roots() -> list[Path]:
    """The cgroup hierarchies the harness creates its directories in (cgroup2 first)."""
    v2, v1 = _cgroup_mounts()
    return [v2] if v1 is None else [v2, v1]


def _has_kill_support(v2: Path) -> bool:
    """cgroup.kill exists in non-root cgroup2 directories only; probe the kernel version instead."""
    major, minor = (int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    return (major, minor) >= (5, 14) and v2.is_dir()


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


def _nspids(pid: int) -> list[int]:
    """The NSpid line of /proc/PID/status: the PID in each nested PID namespace, outermost first."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return [int(x) for x in line.split()[1:]]
    except OSError:
        pass
    return []


def _children(ppid: int) -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit() and _ppid(int(d)) == ppid]


def _rmdir_tree(top: Path) -> list[str]:
    """rmdir a cgroup directory tree depth-first; return the ones that could not be removed."""
    failed: list[str] = []
    if not top.is_dir():
        return failed
    for dirpath, _dirs, _files in os.walk(top, topdown=False):
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            pass
        except OSError as e:
            failed.append(f"{dirpath}: {e.strerror}")
    return failed


def _procs(top: Path) -> list[int]:
    """All PIDs in a cgroup subtree (host PID namespace)."""
    pids: list[int] = []
    if not top.is_dir():
        return pids
    for dirpath, _dirs, files in os.walk(top):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(dirpath, "cgroup.procs"), encoding="ascii") as f:
                    pids.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    return pids


class Container:
    """A throw-away systemd-nspawn container over an overlay of the host's ``/``.

    Use as a context manager; :meth:`stop` is idempotent and also runs on exceptions and at exit.
    """

    def __init__(
        self,
        name: str,
        *,
        boot: bool,
        binds: Sequence[Bind] = (),
        lower: Path = Path("/"),
        repo: Path | None = REPO_ROOT,
        init_args: Sequence[str] = ("--unit=basic.target",),
        nspawn_args: Sequence[str] = (),
        start_timeout: float = START_TIMEOUT,
        hide: Sequence[str] = HOST_LEAKS,
        unified: bool = False,
    ) -> None:
        """Describe a container; nothing starts before :meth:`start` / ``with``.

        ``binds``: ``"SRC[:DST]"`` (read-write), ``(src, dst)`` or ``(src, dst, read_only)``.
        ``lower``: the overlay's lower directory (host ``/``, or e.g. a debootstrap tree).
        ``init_args``: arguments for the container's systemd (``boot=True`` only).
        ``hide``: absolute paths of the lower root that do not exist inside (default: HOST_LEAKS).
        ``unified``: a pure cgroup v2 container even on a hybrid host (systemd-nspawn's
        ``SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1``, as Debian 13 boots); the harness then stays out of
        the v1 ``name=systemd`` hierarchy, so no process inside shows a v1 systemd path.
        """
        if not _NAME_RE.match(name):
            raise ValueError(f"container name must match {_NAME_RE.pattern}: {name!r}")
        if not lower.is_absolute() or any(ch in str(lower) for ch in ",:\\\n"):
            raise ValueError(f"overlay lower directory must be absolute, without , : \\ or newline: {lower}")
        self.name = name
        self.boot = boot
        self.lower = lower
        self.repo = repo
        self.init_args = list(init_args)
        self.nspawn_args = list(nspawn_args)
        self.start_timeout = start_timeout
        if any(not h.startswith("/") or "/../" in f"{h}/" or "\n" in h for h in hide):
            raise ValueError(f"hidden paths must be absolute, without '..' or newline: {hide!r}")
        self.hide = list(hide)
        self.unified = unified
        self._bind_args = [self._bind_arg(b) for b in binds]
        self.cgroup_name = f"rctl-test.{name}.{os.getpid()}.{next(_counter)}"
        self._cg_tops: list[Path] = []  # our cgroup dirs, cgroup2 first
        self._hostdir: Path | None = None
        self.scratch: Path = Path()  # host side of /srv/rctl, set by start()
        self._console: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._leader = 0
        self._started = False
        self._stopped = False
        self._seq = itertools.count(1)
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ lifecycle
    @staticmethod
    def _bind_arg(bind: Bind) -> str:
        if isinstance(bind, str):
            src, dst, ro = bind, "", False
        elif len(bind) == 3:
            src, dst, ro = str(bind[0]), bind[1], bool(bind[2])
        else:
            src, dst, ro = str(bind[0]), bind[1], False
        if not src.startswith("/") or (dst and not dst.startswith("/")):
            raise ValueError(f"bind paths must be absolute: {bind!r}")
        spec = f"{src}:{dst}" if dst else src
        return f"--bind-ro={spec}" if ro else f"--bind={spec}"

    @property
    def leader(self) -> int:
        """Host PID of the container's PID 1 (systemd, or nspawn's stub init)."""
        if not self._leader:
            raise RuntimeError(f"container {self.name} is not running")
        return self._leader

    @property
    def nspawn_pid(self) -> int:
        """Host PID of the systemd-nspawn process."""
        if self._proc is None:
            raise RuntimeError(f"container {self.name} was never started")
        return self._proc.pid

    @property
    def cgroup_dirs(self) -> list[Path]:
        """Our cgroup directories on the host (cgroup2 first); empty before start / after stop."""
        return list(self._cg_tops)

    @property
    def hybrid(self) -> bool:
        """Whether the container's systemd runs hybrid (v1 name=systemd beside cgroup2): we made it a
        v1 directory, which happens only on a hybrid host without ``unified`` (Debian 12's 252 there).
        A pure v2 container (Debian 13, or ``unified``) still sees name=systemd lines in
        /proc/PID/cgroup when the kernel has that hierarchy; they mean nothing then."""
        return len(self._cg_tops) > 1

    @property
    def cgroup2_mount(self) -> str:
        """Where the cgroup2 tree is mounted inside the container."""
        return "/sys/fs/cgroup/unified" if self.hybrid else "/sys/fs/cgroup"

    def __enter__(self) -> Container:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def console_log(self) -> str:
        """What nspawn and the container's console printed (for failure messages)."""
        if self._console is None or not self._console.exists():
            return ""
        return self._console.read_text(encoding="utf-8", errors="replace")

    def start(self) -> Container:
        """Start the container and wait until it is usable; on any failure, clean up and raise."""
        if self._started:
            raise RuntimeError(f"container {self.name} was already started")
        self._started = True
        for prog in (NSPAWN, NSENTER, UNSHARE, SH, SLEEP):
            require_program(prog)
        t0 = time.monotonic()
        _live.add(self)
        try:
            self._start()
        except BaseException as e:
            log = self.console_log()
            try:
                self.stop()
            finally:
                if log and log not in str(e):
                    e.add_note(f"--- console of container {self.name} ---\n{log}")
            raise
        self.timings["start"] = time.monotonic() - t0
        return self

    def _start(self) -> None:
        v2, v1 = _cgroup_mounts()
        for hierarchy in (v2, v1):
            if hierarchy is None or (self.unified and hierarchy is v1):
                continue
            top = hierarchy / self.cgroup_name
            top.mkdir()  # fails if it exists: never adopt a directory we did not create
            self._cg_tops.append(top)
        self._hostdir = Path(tempfile.mkdtemp(prefix=f"rctl-{self.name}-"))
        self.scratch = self._hostdir / "scratch"
        self.scratch.mkdir()
        os.chmod(self.scratch, _SCRATCH_MODE)
        self._console = self._hostdir / "console.log"

        argv = [
            NSPAWN,
            "--quiet",
            "--directory=/run/rctl-ovl/root",
            f"--machine={self.name}",
            "--register=no",
            "--keep-unit",
            "--private-network",
            "--console=read-only",
            "--link-journal=no",
            f"--bind={self.scratch}:{SCRATCH}",
        ]
        if self.repo is not None:
            argv.append(f"--bind-ro={self.repo}:{self.repo}")
        argv += self._bind_args + self.nspawn_args
        if self.boot:
            argv += ["--boot", "--", *self.init_args]
        else:
            argv += ["--as-pid2", "--", SLEEP, "infinity"]
        procs = [str(top / "cgroup.procs") for top in self._cg_tops]
        full = [UNSHARE, "--mount", "--propagation", "private", SH, "-ec", _START_SCRIPT, "sh"]
        full += [*procs, "--", str(self.lower), *self.hide, "--", *argv]
        with open(self._console, "wb") as console:
            self._proc = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env={**CLEAN_ENV, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"} if self.unified else CLEAN_ENV,
                start_new_session=True,  # a ^C to the test run must not hit nspawn before stop()
            )
        deadline = time.monotonic() + self.start_timeout
        self._leader = self._wait_leader(deadline)
        for top in self._cg_tops:
            (top / "payload" / HARNESS_CGROUP).mkdir(exist_ok=True)
        if self.boot:
            self._wait_running(deadline)
        else:
            self._wait_exec(deadline)

    def _wait_leader(self, deadline: float) -> int:
        """The container's PID 1 is nspawn's child whose innermost PID is 1 ..."""
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"systemd-nspawn exited with {self._proc.returncode} before the container "
                    f"started:\n{self.console_log()}"
                )
            for child in _children(self._proc.pid):
                ns = _nspids(child)
                # ... and nspawn has moved it into payload/ (it does so after forking it).
                if len(ns) >= 2 and ns[-1] == 1 and self._in_payload(child):
                    return child
            time.sleep(0.02)
        raise TimeoutError(f"container {self.name}: no PID 1 after {self.start_timeout}s")

    def _in_payload(self, pid: int) -> bool:
        want = f"/{self.cgroup_name}/payload"
        try:
            with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return False
        v1 = ":name=systemd:" if self.hybrid else None
        paths = [line.split(":", 2)[2] for line in lines if line.startswith("0::") or (v1 and v1 in line)]
        # systemd as PID 1 soon moves itself on to payload/init.scope
        return len(paths) == len(self._cg_tops) and all(p == want or p.startswith(want + "/") for p in paths)

    def _wait_running(self, deadline: float) -> None:
        state = ""
        while time.monotonic() < deadline:
            r = self.exec(["systemctl", "is-system-running"], timeout=10)
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                return
            if state in ("maintenance", "stopping"):
                break
            time.sleep(0.05)
        raise TimeoutError(
            f"container {self.name}: systemctl is-system-running says {state!r}, "
            f"want running or degraded:\n{self.console_log()}"
        )

    def _wait_exec(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.exec(["/bin/true"], timeout=10).returncode == 0:
                return
            time.sleep(0.05)
        raise TimeoutError(f"container {self.name}: cannot run commands inside")

    def stop(self) -> None:
        """Stop everything we started; idempotent, bounded (about STOP+KILL timeouts at worst).

        SIGTERM to nspawn (orderly poweroff with --boot; SIGKILL of PID 1 otherwise), bounded wait,
        then cgroup.kill of OUR subtree only, then rmdir our cgroup dirs depth-first.
        """
        if self._stopped:
            return
        self._stopped = True
        _live.discard(self)
        t0 = time.monotonic()
        problems: list[str] = []
        proc = self._proc
        try:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    problems.append(f"nspawn did not exit within {STOP_TIMEOUT}s of SIGTERM")
        finally:
            problems += self._kill_cgroups()
            if proc is not None and proc.poll() is None:
                proc.kill()  # by PID; only reachable if it escaped our cgroup
                try:
                    proc.wait(timeout=KILL_TIMEOUT)
                except subprocess.TimeoutExpired:
                    problems.append(f"nspawn PID {proc.pid} survived SIGKILL")
            for top in reversed(self._cg_tops):
                problems += _rmdir_tree(top)
            v1 = _cgroup_mounts()[1]
            if self.unified and v1 is not None:
                # On a hybrid host nspawn mirrors a pure-v2 container's cgroup path into name=systemd:
                # our own (uniquely named) directories there go too.
                problems += _rmdir_tree(v1 / self.cgroup_name)
            self._cg_tops = [top for top in self._cg_tops if top.exists()]
            self._leader = 0
            if self._hostdir is not None:
                shutil.rmtree(self._hostdir, ignore_errors=True)
            self.timings["stop"] = time.monotonic() - t0
        if problems:
            raise RuntimeError(f"container {self.name} cleanup: " + "; ".join(problems))

    def _kill_cgroups(self) -> list[str]:
        """cgroup.kill our cgroup2 subtree and wait (bounded) until both hierarchies are empty."""
        if not self._cg_tops:
            return []
        v2top = self._cg_tops[0]
        kill = v2top / "cgroup.kill"
        if _procs(v2top) and kill.exists():
            kill.write_text("1")
        deadline = time.monotonic() + KILL_TIMEOUT
        while time.monotonic() < deadline:
            left = {pid for top in self._cg_tops for pid in _procs(top)}
            if not left:
                return []
            # Anything only in the v1 tree is still ours (it is in our cgroup): kill it by PID.
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        return [f"processes left in our cgroups: {sorted(left)}"]

    # ------------------------------------------------------------------ running commands
    def _new_cgroup(self, label: str) -> list[Path]:
        """A fresh cgroup ``payload/rctl-harness/LABEL`` in each hierarchy."""
        dirs = []
        for top in self._cg_tops:
            d = top / "payload" / HARNESS_CGROUP / label
            d.mkdir()
            dirs.append(d)
        return dirs

    def _run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None,
        timeout: float,
        env: Mapping[str, str] | None,
        spawn_label: str | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        if not argv:
            raise ValueError("empty argv")
        leader = self.leader
        cgroups = self._new_cgroup(spawn_label or f"exec-{next(self._seq)}")
        full = [SH, "-c", _JOIN_SCRIPT, "sh", *(str(d / "cgroup.procs") for d in cgroups), "--"]
        # --root/--wd: the container's root and cwd even when this process is itself chrooted (the
        # mount namespace alone leaves a chrooted caller's root where it was: seen on a Debian 13 root)
        full += [NSENTER, f"--target={leader}", "--all", "--root", "--wd", "--", *argv]
        try:
            with subprocess.Popen(
                full,
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**CLEAN_ENV, **(env or {})},
            ) as proc:
                try:
                    out, err = proc.communicate(input, timeout=timeout)
                except subprocess.TimeoutExpired:
                    (cgroups[0] / "cgroup.kill").write_text("1")
                    proc.kill()
                    out, err = proc.communicate(timeout=KILL_TIMEOUT)
                    raise subprocess.TimeoutExpired(list(argv), timeout, out, err) from None
                return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
        finally:
            if spawn_label is None:
                for d in reversed(cgroups):
                    try:
                        d.rmdir()  # EBUSY if the command left processes behind: stop() kills them
                    except OSError as e:
                        if e.errno not in (errno.EBUSY, errno.ENOENT):
                            raise

    def exec(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        timeout: float = 120,
        check: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside all of the container's namespaces; wait; return its output as text.

        Environment: only PATH=/usr/sbin:/usr/bin:/sbin:/bin and LANG=C.UTF-8, plus ``env``.
        On timeout the command's cgroup is killed and subprocess.TimeoutExpired is raised.
        """
        r = self._run(argv, input=input.encode() if input is not None else None, timeout=timeout, env=env)
        res = subprocess.CompletedProcess(
            r.args,
            r.returncode,
            r.stdout.decode("utf-8", "replace"),
            r.stderr.decode("utf-8", "replace"),
        )
        if check and res.returncode != 0:
            raise subprocess.CalledProcessError(res.returncode, res.args, res.stdout, res.stderr)
        return res

    def check(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        timeout: float = 120,
        env: Mapping[str, str] | None = None,
    ) -> str:
        """Like :meth:`exec`, but fail with the command's output if it exits non-zero; return stdout."""
        r = self.exec(argv, input=input, timeout=timeout, env=env)
        if r.returncode != 0:
            raise AssertionError(
                f"in container {self.name}: {argv} exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
            )
        return r.stdout

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> int:
        """Start ``argv`` detached inside (own session, parent = the container's PID 1).

        Returns its PID as seen inside the container. It runs in cgroup
        ``/rctl-harness/spawn-N`` (as seen inside); stdout/stderr go to
        ``/srv/rctl/spawn-N.log``. Killed at the latest by :meth:`stop`.
        """
        label = f"spawn-{next(self._seq)}"
        r = self._run(
            [SH, "-c", _SPAWN_SCRIPT, "sh", f"{SCRATCH}/{label}.log", *argv],
            input=None,
            timeout=30,
            env=env,
            spawn_label=label,
        )
        if r.returncode != 0:
            raise RuntimeError(f"spawn {argv} failed: {r.stderr.decode(errors='replace')}")
        pid = int(r.stdout.decode().strip())
        # Wait (bounded) until the PID has exec'd the program: its argv is no longer the forked sh's
        # or setsid's (a program may rewrite its own argv, so "equal to argv" is not required).
        deadline = time.monotonic() + 5
        cmdline = ""
        while time.monotonic() < deadline:
            hp = self.host_pid(pid)
            if hp is not None:
                try:
                    with open(f"/proc/{hp}/cmdline", encoding="utf-8", errors="replace") as f:
                        cmdline = f.read()
                except OSError:
                    cmdline = ""
                if cmdline and not cmdline.startswith((f"{SH}\0-c\0{_SPAWN_SCRIPT}", "setsid\0")):
                    return pid
            time.sleep(0.01)
        raise RuntimeError(f"spawned {argv} as PID {pid} inside, but it does not run it (argv {cmdline!r})")

    def host_pid(self, pid_inside: int) -> int | None:
        """Map a PID inside the container to the host's PID (None if it is not running)."""
        # PIDs of the container are all in our cgroup tree; compare their innermost NSpid.
        if not self._cg_tops:
            return None
        for hp in _procs(self._cg_tops[0]):
            ns = _nspids(hp)
            if len(ns) >= 2 and ns[-1] == pid_inside:
                return hp
        return None

    # ------------------------------------------------------------------ files
    def root_path(self, path_inside: str) -> Path:
        """Host-visible path of a file inside, via ``/proc/LEADER/root``.

        Caveat: an absolute symlink met while walking this path resolves against the HOST's root;
        :meth:`read_file` / :meth:`write_file` do not have that problem.
        """
        if not path_inside.startswith("/"):
            raise ValueError(f"absolute path required: {path_inside!r}")
        return Path(f"/proc/{self.leader}/root") / path_inside.lstrip("/")

    def write_file(self, path_inside: str, data: bytes | str, mode: int = 0o644) -> None:
        """Atomically write a file inside (parent directories created), owned by root."""
        if not path_inside.startswith("/"):
            raise ValueError(f"absolute path required: {path_inside!r}")
        raw = data.encode() if isinstance(data, str) else data
        r = self._run(
            [SH, "-ec", _WRITE_SCRIPT, "sh", path_inside, f"{mode:o}"],
            input=raw,
            timeout=60,
            env=None,
        )
        if r.returncode != 0:
            raise OSError(f"write {path_inside} in {self.name}: {r.stderr.decode(errors='replace')}")

    def read_file(self, path_inside: str) -> bytes:
        """Read a file inside (resolved in the container's own root)."""
        r = self._run(["cat", "--", path_inside], input=None, timeout=60, env=None)
        if r.returncode != 0:
            raise OSError(f"read {path_inside} in {self.name}: {r.stderr.decode(errors='replace')}")
        return r.stdout

    def forbid_service_starts(self) -> None:
        """Install a Docker-style policy-rc.d that forbids every start (as container images ship)."""
        self.write_file(POLICY_RC_D, FORBID_ALL, mode=0o755)

    def systemd_shared_library(self) -> str:
        """libsystemd-shared-VERSION.so inside: PID 1 and every user manager map it (named per release)."""
        [lib] = self.check(["find", "/usr/lib", "-maxdepth", "3", "-path", "*/systemd/libsystemd-shared-*.so"]).split()
        return lib

    def copy_in(self, src: Path, name: str | None = None) -> str:
        """Copy a host file into the scratch dir; return its path inside (``/srv/rctl/...``)."""
        dest = self.scratch / (name or src.name)
        shutil.copyfile(src, dest)
        return f"{SCRATCH}/{dest.name}"

    # ------------------------------------------------------------------ packages
    def install_debs(
        self, paths: Iterable[Path], *, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Copy .debs into the container and ``dpkg -i`` them in one dpkg run."""
        inside = [self.copy_in(p) for p in paths]
        r = self.exec(
            ["dpkg", "-i", *inside],
            env={"DEBIAN_FRONTEND": "noninteractive"},
            timeout=timeout,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"dpkg -i {inside} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
        return r

    def local_repo(self, debs: Iterable[Path], *, subdir: str = "repo") -> str:
        """Make an apt repository of ``debs`` in the scratch dir; return its APT_CONFIG inside.

        Use as ``c.exec(["apt-get", "install", "-y", "rctl-demod"], env={"APT_CONFIG": cfg})``
        after ``apt-get update`` with the same environment.
        """
        host_dir = self.scratch / subdir
        make_local_repo(host_dir, debs)
        return apt_config(host_dir, seen_at=f"{SCRATCH}/{subdir}")

    # ------------------------------------------------------------------ systemd (boot=True)
    def _need_boot(self) -> None:
        if not self.boot:
            raise RuntimeError(f"container {self.name} has no systemd (boot=False)")

    def systemctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``systemctl ARGS`` inside; raise on failure if ``check``."""
        self._need_boot()
        r = self.exec(["systemctl", *args], timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"systemctl {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
        return r

    def show(self, unit: str, prop: str, *, user: str | None = None) -> str:
        """``systemctl show -P PROP -- UNIT`` (of the system, or of ``user``'s manager)."""
        argv = ["show", "-P", prop, "--", unit]
        if user is None:
            return self.systemctl(*argv).stdout.strip()
        return self.user_systemctl(user, *argv).stdout.strip()

    def wait_active(self, unit: str, timeout: float = 20, *, user: str | None = None) -> None:
        """Wait until ``unit`` is active; fail early if it failed, always within ``timeout``."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.show(unit, "ActiveState", user=user)
            if state == "active":
                return
            if state == "failed":
                break
            time.sleep(0.05)
        raise AssertionError(
            f"{unit} is {state!r}, not active:\n"
            + self.exec(["journalctl", "--no-pager", "-n", "30", "-u", unit]).stdout
        )

    def main_pid(self, unit: str, *, user: str | None = None) -> int:
        """The unit's MainPID as seen inside the container (0 if none)."""
        return int(self.show(unit, "MainPID", user=user) or "0")

    def journal(self, unit: str, lines: int = 50) -> str:
        """The last journal lines of ``unit`` (for failure messages)."""
        return self.exec(["journalctl", "--no-pager", "-n", str(lines), "-u", unit]).stdout

    def create_user(self, name: str, *, timeout: float = 30) -> int:
        """Create a user with a lingering systemd user manager; return the UID.

        basic.target does not start dbus or systemd-logind; both are started here because
        ``loginctl enable-linger`` talks to logind over D-Bus. Returns when user@UID.service is active.
        """
        self._need_boot()
        if not _USER_RE.match(name):
            raise ValueError(f"bad user name {name!r}")
        self.check(["useradd", "--create-home", "--user-group", "--shell", "/bin/sh", "--", name])
        uid = int(self.check(["id", "-u", "--", name]).strip())
        self.systemctl("start", "dbus.service", "systemd-logind.service")
        self.check(["loginctl", "enable-linger", "--", name])
        self.wait_active(f"user@{uid}.service", timeout=timeout)
        # user@.service is "active" once the manager reports READY; its private socket then exists.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exec(["test", "-S", f"/run/user/{uid}/systemd/private"]).returncode == 0:
                return uid
            time.sleep(0.05)
        raise AssertionError(f"user manager of {name} has no private socket")

    def _user_env(self, user: str) -> tuple[list[str], dict[str, str]]:
        uid = int(self.check(["id", "-u", "--", user]).strip())
        prefix = ["runuser", "-u", user, "--"]
        return prefix, {"XDG_RUNTIME_DIR": f"/run/user/{uid}"}

    def user_systemctl(
        self, user: str, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``systemctl --user ARGS`` as ``user`` (runuser + XDG_RUNTIME_DIR; no D-Bus needed)."""
        self._need_boot()
        prefix, env = self._user_env(user)
        r = self.exec([*prefix, "systemctl", "--user", *args], env=env, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"systemctl --user {' '.join(args)} as {user} failed ({r.returncode}):\n{r.stderr}")
        return r

    def run_user_unit(self, user: str, argv: Sequence[str], *, unit: str | None = None, timeout: float = 20) -> str:
        """Start ``argv`` as a transient service of ``user``'s systemd manager; return the unit name.

        Uses ``runuser -u USER -- systemd-run --user`` (``-M USER@`` needs systemd-machined, which
        is not running). Waits until the unit is active.
        """
        self._need_boot()
        unit = unit or f"rctl-user-{next(self._seq)}.service"
        if not _UNIT_RE.match(unit):
            raise ValueError(f"bad unit name {unit!r}")
        prefix, env = self._user_env(user)
        self.check([*prefix, "systemd-run", "--user", "--quiet", f"--unit={unit}", "--", *argv], env=env)
        self.wait_active(unit, timeout=timeout, user=user)
        return unit


# ---------------------------------------------------------------------- apt repositories
def wait_for(predicate: Callable[..., object], what: str, timeout: float) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def make_local_repo(repo_dir: Path, debs: Iterable[Path]) -> Path:
    """Copy ``debs`` into ``repo_dir`` and index it as a flat apt repository (Packages, Release).

    Why: tests of the apt hook path need ``apt-get install``/``upgrade`` from a real repository.
    Uses apt-ftparchive (apt-utils), falling back to dpkg-scanpackages (dpkg-dev).
    """
    repo_dir.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        shutil.copyfile(deb, repo_dir / deb.name)
    env = {**CLEAN_ENV, "LC_ALL": "C.UTF-8"}

    def index(argv: list[str]) -> bytes:
        return subprocess.run(argv, cwd=repo_dir, env=env, capture_output=True, check=True, timeout=60).stdout

    ftparchive = os.access(APT_FTPARCHIVE, os.X_OK)
    if not ftparchive:
        require_program(DPKG_SCANPACKAGES)
    (repo_dir / "Packages").write_bytes(index([APT_FTPARCHIVE, "packages", "."] if ftparchive
                                              else [DPKG_SCANPACKAGES, "--multiversion", ".", "/dev/null"]))
    if ftparchive:
        (repo_dir / "Release").write_bytes(index([APT_FTPARCHIVE, "release", "."]))
    return repo_dir


def apt_config(repo_dir: Path, *, seen_at: str | None = None) -> str:
    """Write a private apt configuration for the flat repository in ``repo_dir``.

    Private sources, lists, cache and apt state under ``repo_dir/apt``; the real dpkg database and
    the system's apt.conf.d (so installed hooks still run). ``seen_at`` is the path under which
    ``repo_dir`` is visible where apt will run (e.g. ``/srv/rctl/repo`` in a container). Returns
    the value for ``APT_CONFIG``.
    """
    base = seen_at or str(repo_dir)
    host_apt = repo_dir / "apt"
    for sub in ("lists/partial", "archives/partial", "sources.list.d", "preferences.d", "log"):
        (host_apt / sub).mkdir(parents=True, exist_ok=True)
    (host_apt / "sources.list").write_text(f"deb [trusted=yes] file:{base} ./\n")
    (host_apt / "apt.conf").write_text(
        f'Dir::Etc::SourceList "{base}/apt/sources.list";\n'
        f'Dir::Etc::SourceParts "{base}/apt/sources.list.d";\n'
        f'Dir::Etc::PreferencesParts "{base}/apt/preferences.d";\n'
        f'Dir::State "{base}/apt";\n'
        f'Dir::State::Lists "{base}/apt/lists";\n'
        f'Dir::Cache "{base}/apt";\n'
        f'Dir::Cache::Archives "{base}/apt/archives";\n'
        f'Dir::Log "{base}/apt/log";\n'
        'Dir::State::status "/var/lib/dpkg/status";\n'
        'Acquire::Languages "none";\n'
        'APT::Install-Recommends "false";\n'
        'APT::Get::Assume-Yes "true";\n'
    )
    return f"{base}/apt/apt.conf"


__all__ = [
    "CLEAN_ENV",
    "HARNESS_CGROUP",
    "HOST_LEAKS",
    "REPO_ROOT",
    "SCRATCH",
    "Bind",
    "Container",
    "apt_config",
    "cgroup_roots",
    "make_local_repo",
]
