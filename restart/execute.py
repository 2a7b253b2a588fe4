"""Stage 6, execute: carry out a plan, one unit at a time, each restart verified.

The edge where restartctl acts.  Programs run by absolute path with an argv list
and a fixed, clean environment; every wait is bounded by the per-restart timeout
and the run's deadline.  What is never restarted: a unit restartctl itself runs
in (or any unit of its ancestors: apt-daily-upgrade, an admin's transient unit),
a unit twice, a unit that is not active, a unit with RefuseManualStop=yes, and
anything ``/usr/sbin/policy-rc.d`` forbids (exit 101), as invoke-rc.d would.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from restart.plan import Action
from restart.policy import Settings
from restart.processes import PPID, stat_field
from restart.text import printable
from restart.units import (
    INIT,
    SYSTEM,
    USER,
    USER_MANAGER,
    Affected,
    UnitGroup,
    cgroup_path,
    resolve,
    valid_unit_name,
)

PROGRAMS = {"systemctl": "/usr/bin/systemctl", "invoke-rc.d": "/usr/sbin/invoke-rc.d"}
POLICY_RC_D = "/usr/sbin/policy-rc.d"
RUNUSER = "/usr/sbin/runuser"
NOTIFY_SEND = "/usr/bin/notify-send"
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
EXECUTABLE = ("restart", "try-restart", "reload-or-restart", "reexec", "exec")
DONE, FAILED, SKIPPED, DECLINED = "done", "failed", "skipped", "declined"
SHOW_PROPS = "ActiveState,SubState,MainPID,RefuseManualStop,Type,Result,ControlGroup,NRestarts"
CGROUPFS = Path("/sys/fs/cgroup")


class Outcome(NamedTuple):
    action: Action
    status: str        # done | failed | skipped | declined
    detail: str        # why it was skipped, or what went wrong
    seconds: float = 0.0


def run(argv: list[str], timeout: float, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """One program, by absolute path, clean environment, no stdin, bounded."""
    return subprocess.run(argv, env=env or CLEAN_ENV, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=max(timeout, 0.1), check=False)


def resolved(argv: tuple[str, ...]) -> list[str]:
    """The plan's argv with its program name mapped to a fixed path (an admin's exec is already absolute)."""
    program = argv[0] if argv[0].startswith("/") else PROGRAMS[argv[0]]
    return [program, *argv[1:]]


def parse_show(text: str, names: list[str]) -> dict[str, dict[str, str]]:
    """``systemctl show -p ... -- A B`` prints one block per unit, in order, separated by a blank line."""
    blocks = text.strip("\n").split("\n\n") if text.strip() else []
    out = {}
    for name, block in zip(names, blocks, strict=False):
        out[name] = dict(line.partition("=")[::2] for line in block.splitlines() if "=" in line)
    return out


def _manager(group: UnitGroup) -> list[str]:
    return ["--user", "-M", f"{group.uid}@"] if group.kind == USER else []


def unit_state(group: UnitGroup, timeout: float) -> dict[str, str]:
    name = group.name or ""
    result = run([PROGRAMS["systemctl"], *_manager(group), "show", "-p", SHOW_PROPS, "--", name], timeout)
    return parse_show(result.stdout, [name]).get(name, {})


def status_excerpt(group: UnitGroup, timeout: float = 5) -> str:
    """``systemctl status``-level detail for a failure report."""
    try:
        result = run([PROGRAMS["systemctl"], *_manager(group), "status", "--no-pager", "--lines=8", "--",
                      group.name or ""], timeout)
    except subprocess.TimeoutExpired:
        return "(systemctl status did not answer)"
    return (result.stdout or result.stderr).strip()


def last_failures(record: dict[str, Any] | None, timeout: float = 5) -> list[dict[str, Any]]:
    """Units whose restart failed in the last run (``record``: the state file, of this boot) and that
    have not been healthy since: not active now, or restarted by systemd after a failure.

    A failed restart leaves the unit without processes, so no scan finds it stale any more; the
    host must still say it, or the next report calls a broken host clean.
    """
    out = []
    for u in (record or {}).get("units", [])[:1000]:
        if not isinstance(u, dict) or u.get("status") != FAILED or u.get("kind") not in (SYSTEM, USER):
            continue
        name, uid = u.get("unit"), u.get("uid")
        if not isinstance(name, str) or not valid_unit_name(name) or (u["kind"] == USER and not isinstance(uid, int)):
            continue
        group = UnitGroup(u["kind"], name, uid if u["kind"] == USER else None, False, True, (), (), ())
        try:
            now = unit_state(group, timeout)
        except (OSError, subprocess.TimeoutExpired):
            now = {}
        if now.get("ActiveState") == "active" and now.get("NRestarts", "0") == "0":
            continue  # someone fixed it since
        detail = u.get("detail")
        out.append({"unit": name, "kind": u["kind"], "uid": group.uid,
                    "detail": detail.splitlines()[0] if isinstance(detail, str) and detail else "",
                    "active_state": now.get("ActiveState", "unknown"), "sub_state": now.get("SubState", "unknown"),
                    "restarts": int(now["NRestarts"]) if now.get("NRestarts", "").isdigit() else None})
    return out


def ancestor_units(proc: Path, pid: int) -> set[str]:
    """Units of this process and all its ancestors: restarting one would kill this very run."""
    units = set()
    current: int | None = pid
    for _ in range(64):
        if current is None or current < 1:
            break
        try:
            cgroup = (proc / str(current) / "cgroup").read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            break
        unit = resolve(cgroup_path(cgroup))
        if unit.kind in (SYSTEM, USER_MANAGER) and unit.name:
            units.add(unit.name)
        if current == 1:
            break
        current = stat_field(proc, current, PPID)
    return units


def policy_rc_d_forbids(name: str, timeout: float) -> bool:
    """Debian's policy layer (``policy-rc.d``): exit 101 means "action forbidden"."""
    if not os.access(POLICY_RC_D, os.X_OK):
        return False
    script = name.removesuffix(".service")
    try:
        return run([POLICY_RC_D, script, "restart"], timeout).returncode == 101
    except (OSError, subprocess.TimeoutExpired):
        return True  # it could not say yes: do nothing rather than something forbidden


def unit_pids(cgroupfs: Path, control_group: str) -> list[int] | None:
    """The processes in a unit's cgroup and every cgroup below it (a delegated subtree).

    ``control_group`` is systemd's own ``ControlGroup`` property.  The first layout that
    has it wins: cgroup v2, the unified half of a hybrid setup, then v1's name=systemd.
    None when none has it (no systemd, or the unit is gone): the caller looks everywhere.
    """
    parts = control_group.strip("/").split("/")
    if not control_group.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return None
    for top in (cgroupfs.joinpath(*parts), cgroupfs.joinpath("unified", *parts), cgroupfs.joinpath("systemd", *parts)):
        if not (top / "cgroup.procs").is_file():
            continue
        pids: list[int] = []
        for directory, _, files in os.walk(top):
            if "cgroup.procs" in files:
                try:
                    pids += [int(n) for n in Path(directory, "cgroup.procs").read_text().split()]
                except (OSError, ValueError):
                    continue  # removed meanwhile
        return pids
    return None


def not_restarted(state: dict[str, str]) -> str:
    """Why a unit does not count as restarted: not active, or active with the main process it had."""
    if state.get("ActiveState") == "active":
        return (f"still active with the same main process (pid {state.get('MainPID')}): "
                "the command did not restart it")
    return f"not active again after the restart ({state.get('ActiveState')}/{state.get('SubState')})"


class Executor:
    """Carries out actions in order with the policy's timeout, verification and circuit breaker."""

    def __init__(self, settings: Settings, *, proc: Path, deadline: float,
                 still_stale: Callable[[UnitGroup, list[int] | None], list[Affected]],
                 confirm: Callable[[Action], bool] | None = None,
                 report: Callable[[Outcome], None] | None = None, cgroupfs: Path = CGROUPFS) -> None:
        self.settings = settings
        self.proc = proc
        self.cgroupfs = cgroupfs
        self.deadline = deadline
        self.still_stale = still_stale
        self.confirm = confirm
        self.report = report or (lambda outcome: None)
        self.failures = 0
        self.done: set[tuple[str, str | None, int | None]] = set()
        self.ancestors = ancestor_units(proc, os.getpid())

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run_all(self, actions: list[Action]) -> list[Outcome]:
        return [self.one(a) for a in actions if a.action in EXECUTABLE and a.argv is not None]

    def one(self, action: Action) -> Outcome:
        started = time.monotonic()
        reason = self._why_not(action)
        if reason is not None:
            outcome = Outcome(action, SKIPPED, reason)
        elif self.confirm is not None and not self.confirm(action):
            outcome = Outcome(action, DECLINED, "declined at the prompt")
        else:
            outcome = self._carry_out(action)
        outcome = outcome._replace(seconds=time.monotonic() - started)
        if outcome.status == FAILED:
            self.failures += 1
        self.report(outcome)
        return outcome

    def _why_not(self, action: Action) -> str | None:
        g = action.group
        key = (g.kind, g.name, g.uid)
        if self.failures >= self.settings.max_failures:
            return f"circuit breaker: {self.failures} restarts failed in this run"
        if self.remaining() < 1:
            return "out of time for this run"
        if key in self.done:
            return "already restarted in this run"
        self.done.add(key)
        if g.kind == SYSTEM and g.name in self.ancestors:
            return "restartctl itself runs inside this unit"
        if g.kind not in (SYSTEM, USER) or g.guessed:
            return None
        timeout = min(self.settings.timeout, self.remaining())
        try:
            state = unit_state(g, timeout)
        except subprocess.TimeoutExpired:
            return "systemctl show did not answer in time"
        if state.get("RefuseManualStop") == "yes":
            return "the unit refuses manual stops (RefuseManualStop=yes)"
        if state.get("ActiveState") != "active":
            return f"not active ({state.get('ActiveState', 'unknown')})"
        if g.kind == SYSTEM and policy_rc_d_forbids(g.name or "", timeout):
            return "forbidden by /usr/sbin/policy-rc.d"
        return None

    def _carry_out(self, action: Action) -> Outcome:
        g = action.group
        assert action.argv is not None  # noqa: S101 - run_all passes only actions with a command
        timeout = min(self.settings.timeout, self.remaining())
        before = unit_state(g, timeout) if g.kind in (SYSTEM, USER) and not g.guessed else {}
        try:
            result = run(resolved(action.argv), timeout)
        except subprocess.TimeoutExpired:
            return Outcome(action, FAILED, f"no answer within {timeout:.0f} s\n{status_excerpt(g)}")
        except OSError as e:
            return Outcome(action, FAILED, f"could not run {action.argv[0]}: {e}")
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip()
            return Outcome(action, FAILED, f"exit status {result.returncode}: {detail}\n{status_excerpt(g)}")
        if not self.settings.verify:
            return Outcome(action, DONE, "not verified (verify = false)")
        return self._verify(action, before)

    def _verify(self, action: Action, before: dict[str, str]) -> Outcome:
        """Active again with a new main process, and none of its processes on replaced files."""
        g = action.group
        limit = time.monotonic() + min(self.settings.timeout, self.remaining())
        state: dict[str, str] = {}
        if before:
            while True:
                state = unit_state(g, max(limit - time.monotonic(), 1))
                new_main = before.get("MainPID") in ("0", None) or state.get("MainPID") != before.get("MainPID")
                if state.get("ActiveState") == "active" and new_main:
                    break
                if state.get("ActiveState") == "failed" or time.monotonic() >= limit:
                    return Outcome(action, FAILED, f"{not_restarted(state)}\n{status_excerpt(g)}")
                time.sleep(0.1)
        # Only the unit's own processes are looked at again, when its cgroup says which they are.
        left = self.still_stale(g, unit_pids(self.cgroupfs, state.get("ControlGroup", "")))
        if left:
            pids = ", ".join(str(a.process.pid) for a in left)
            return Outcome(action, FAILED, f"still uses replaced files after the restart (pid {pids})")
        done = Outcome(action, DONE, "verified" if g.kind in (SYSTEM, USER, INIT, USER_MANAGER) else "")
        return self._settle(done, state)

    def _settle(self, done: Outcome, verified: dict[str, str]) -> Outcome:
        """Healthy means staying up: for ``settle`` seconds after the check, the unit stays active with
        the main process the check saw, and systemd restarts it on no failure (``NRestarts`` unchanged).

        A service that dies a moment after its start passes the check above; with ``Restart=`` systemd
        brings it back with another main PID, without it the unit is failed.  Bounded by the run's time.
        """
        g = done.action.group
        watch = min(self.settings.settle, self.remaining() - 1)
        if not verified or watch <= 0:
            return done
        end = time.monotonic() + watch
        while True:
            time.sleep(max(min(0.2, end - time.monotonic()), 0))
            try:
                now = unit_state(g, min(self.settings.timeout, max(self.remaining(), 1)))
            except subprocess.TimeoutExpired:
                return done._replace(status=FAILED, detail="systemctl show did not answer after the restart")
            moved = [f"{key} {verified.get(key)} -> {now.get(key)}" for key in ("ActiveState", "MainPID", "NRestarts")
                     if now.get(key) != verified.get(key)]
            if moved:
                return done._replace(status=FAILED, detail=f"did not stay up for {watch:g} s after the restart "
                                                           f"({', '.join(moved)})\n{status_excerpt(g)}")
            if time.monotonic() >= end:
                return done._replace(detail=f"{done.detail}, up for {watch:g} s")


# ---- telling people -------------------------------------------------------------------------

class Session(NamedTuple):
    uid: int
    user: str
    tty: str        # e.g. "pts/3" or "tty1", "" if none
    graphical: bool


def sessions(run_dir: Path) -> list[Session]:
    """Logged-in sessions from logind's records in /run/systemd/sessions (plain KEY=VALUE files)."""
    out = []
    try:
        entries = sorted(os.scandir(run_dir / "systemd" / "sessions"), key=lambda e: e.name)
    except OSError:
        return []
    for entry in entries:
        if not entry.is_file(follow_symlinks=False) or entry.name.endswith(".ref"):
            continue
        try:
            with open(entry.path, encoding="utf-8", errors="replace") as f:
                fields = dict(line.rstrip("\n").partition("=")[::2] for line in f if "=" in line)
        except OSError:
            continue
        if not fields.get("UID", "").isdigit():
            continue
        out.append(Session(int(fields["UID"]), fields.get("USER", ""), fields.get("TTY", ""),
                           fields.get("TYPE") in ("x11", "wayland") or bool(fields.get("DISPLAY"))))
    return out


def write_to_tty(dev: Path, uid: int, message: str) -> bool:
    """Write to a terminal only if it is a character device that belongs to that user."""
    try:
        fd = os.open(dev, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISCHR(st.st_mode) or st.st_uid != uid:
            return False
        os.write(fd, message.replace("\n", "\r\n").encode("utf-8", "replace"))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def desktop_argv(uid: int, user: str, title: str, body: str) -> tuple[list[str], dict[str, str]]:
    """notify-send as that user, on the bus derived from the UID (never from a process's environment)."""
    env = {**CLEAN_ENV, "DBUS_SESSION_BUS_ADDRESS": f"unix:path=/run/user/{uid}/bus"}
    return [RUNUSER, "-u", user, "--", NOTIFY_SEND, "--app-name=restartctl", "--", title, body], env


def app_names(exes: set[str], applications: Path = Path("/usr/share/applications")) -> dict[str, str]:
    """Executable basename -> desktop application name, from the system's desktop entries (pyxdg)."""
    try:
        from xdg.DesktopEntry import DesktopEntry  # python3-xdg; only needed to name applications
    except ImportError:
        return {}
    wanted = {os.path.basename(e) for e in exes}
    names: dict[str, str] = {}
    for path in sorted(applications.glob("*.desktop")):
        try:
            entry = DesktopEntry(str(path))
            program = os.path.basename(entry.getExec().split()[0].strip("\"'")) if entry.getExec() else ""
        except Exception:  # noqa: S112 - a broken desktop file must not stop the run
            continue
        if program in wanted and program not in names:
            names[program] = entry.getName()
    return names


def notify(groups: list[UnitGroup], run_dir: Path, log: Callable[[str], None],
           applications: Path = Path("/usr/share/applications")) -> int:
    """Tell each affected logged-in user what to restart; returns how many messages went out."""
    by_uid: dict[int, list[UnitGroup]] = {}
    for g in groups:
        uids = {g.uid} if g.uid is not None else {m.process.uid for m in g.members}
        for uid in uids - {0}:
            by_uid.setdefault(uid, []).append(g)
    if not by_uid:
        return 0
    exes = {m.process.exe or "" for gs in by_uid.values() for g in gs for m in g.members}
    names = app_names(exes, applications)
    sent = 0
    on_desktop: set[int] = set()  # one notice per user's bus, however many graphical sessions share it
    for s in sessions(run_dir):
        if s.uid not in by_uid:
            continue
        what = sorted({printable(names.get(os.path.basename(m.process.exe or ""), m.process.comm))
                       for g in by_uid[s.uid] for m in g.members})
        text = (f"restartctl: a software update replaced files that these programs still use: "
                f"{', '.join(what)}. Restart them (or log out and in again) to finish the update.")
        if s.tty and write_to_tty(Path("/dev") / s.tty, s.uid, f"\n{text}\n"):
            sent += 1
        if s.graphical and s.user and s.uid not in on_desktop and os.access(NOTIFY_SEND, os.X_OK):
            on_desktop.add(s.uid)
            argv, env = desktop_argv(s.uid, s.user, "Restart needed after an update", text)
            try:
                if run(argv, 5, env=env).returncode == 0:
                    sent += 1
            except (OSError, subprocess.TimeoutExpired):
                pass
        log(f"told user {s.user or s.uid} ({s.tty or 'desktop'}) to restart: {', '.join(what)}")
    return sent


class Applied(NamedTuple):
    outcomes: list[Outcome]
    notified: int


def apply(actions: list[Action], settings: Settings, *, proc: Path, run_dir: Path, deadline: float,
          still_stale: Callable[[UnitGroup, list[int] | None], list[Affected]],
          confirm: Callable[[Action], bool] | None,
          report: Callable[[Outcome], None], log: Callable[[str], None], cgroupfs: Path = CGROUPFS) -> Applied:
    """Restart what the plan says, then tell the users about what only they can restart."""
    executor = Executor(settings, proc=proc, deadline=deadline, still_stale=still_stale, confirm=confirm,
                        report=report, cgroupfs=cgroupfs)
    outcomes = executor.run_all(actions)
    for_users = [a.group for a in actions if a.action == "notify" and a.group.kind not in (SYSTEM, INIT)]
    return Applied(outcomes, notify(for_users, run_dir, log))
