"""Stage 6's questions about units, asked before and after a restart and never acted on.

What systemd says about a unit (``systemctl show``'s properties, ``systemctl status`` for a failure
report), what Debian's policy layer and an init script say (``policy-rc.d``, LSB status), which
processes a unit's cgroup holds, and which units this very run lives in.  Every program runs
through :func:`restart.runner.run` (or a runner a test injects); a unit name read from a record is
validated here, the others come from the plan, which acts only on valid names.
"""

from __future__ import annotations

import os
import stat
import subprocess
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from restart.plan import Status
from restart.procfs import lineage
from restart.runner import FAILURES, Meanwhile, Runner, run
from restart.units import (
    SYSTEM,
    USER,
    USER_MANAGER,
    UnitGroup,
    cgroup_path,
    resolve,
    valid_unit_name,
)

PROGRAMS = {"systemctl": "/usr/bin/systemctl", "invoke-rc.d": "/usr/sbin/invoke-rc.d"}
POLICY_RC_D = "/usr/sbin/policy-rc.d"
SHOW_PROPS = "ActiveState,SubState,MainPID,RefuseManualStop,Type,Result,ControlGroup,NRestarts"


def parse_show(text: str, names: list[str]) -> dict[str, dict[str, str]]:
    """``systemctl show -p ... -- A B`` prints one block per unit, in order, separated by a blank line."""
    blocks = text.strip("\n").split("\n\n") if text.strip() else []
    out = {}
    for name, block in zip(names, blocks, strict=False):
        out[name] = dict(line.partition("=")[::2] for line in block.splitlines() if "=" in line)
    return out


def _manager(group: UnitGroup) -> list[str]:
    return ["--user", "-M", f"{group.uid}@"] if group.kind == USER else []


SHOW_CHUNK = 32  # units per ``systemctl show``: a wave's larger list is asked in parallel parts


def unit_states(groups: list[UnitGroup], timeout: float, runner: Runner = run) -> dict[str, dict[str, str]]:
    """systemd's properties of units of one manager (the system's, or one user's).

    One ``systemctl show`` per ``SHOW_CHUNK`` units, those run together: systemctl fetches every
    property of every unit and parses them itself (0.16 s for 100 units on two cores, 0.12 s in two
    parts at once); raises what the runner raises."""
    names = [g.name or "" for g in groups]
    parts = [names[i:i + SHOW_CHUNK] for i in range(0, len(names), SHOW_CHUNK)]

    def show(part: list[str]) -> dict[str, dict[str, str]]:
        argv = [PROGRAMS["systemctl"], *_manager(groups[0]), "show", "-p", SHOW_PROPS, "--", *part]
        return parse_show(runner(argv, timeout).stdout, part)
    others = [Meanwhile(partial(show, part)) for part in parts[1:]]
    states = show(parts[0])
    for other in others:
        states.update(other.result())
    return states


def unit_state(group: UnitGroup, timeout: float, runner: Runner = run) -> dict[str, str]:
    return unit_states([group], timeout, runner).get(group.name or "", {})


def recorded_group(kind: object, name: object, uid: object) -> UnitGroup | None:
    """The unit a record names, if it is one systemctl may be asked about: a system unit, or a user
    unit with its user's id, under a name systemd's grammar accepts (a record is data, not trusted)."""
    if not isinstance(name, str) or not valid_unit_name(name):
        return None
    if kind == SYSTEM:
        return UnitGroup(kind=SYSTEM, name=name, uid=None)
    if kind == USER and isinstance(uid, int) and not isinstance(uid, bool):
        return UnitGroup(kind=USER, name=name, uid=uid)
    return None


def active_state(kind: str, name: str, uid: int | None, timeout: float = 5) -> str:
    """systemd's ``ActiveState`` of a system or user unit named in a record; "unknown" when it cannot say."""
    group = recorded_group(kind, name, uid)
    if group is None:
        return "unknown"
    try:
        state = unit_state(group, timeout)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return state.get("ActiveState") or "unknown"


def status_excerpt(group: UnitGroup, timeout: float = 5, runner: Runner = run) -> str:
    """``systemctl status``-level detail for a failure report."""
    try:
        result = runner([PROGRAMS["systemctl"], *_manager(group), "status", "--no-pager", "--lines=8", "--",
                         group.name or ""], timeout)
    except subprocess.TimeoutExpired:
        return "(systemctl status did not answer)"
    except OSError as e:
        return f"(could not run systemctl status: {e})"
    return (result.stdout or result.stderr).strip()


def last_failures(record: dict[str, Any] | None, timeout: float = 5) -> list[dict[str, Any]]:
    """Units whose restart failed in the last run (``record``: the state file, of this boot) and that
    have not been healthy since: not active now, or restarted by systemd after a failure.

    A failed restart leaves the unit without processes, so no scan finds it stale any more; the
    host must still say it, or the next report calls a broken host clean.
    """
    out = []
    for u in (record or {}).get("units", [])[:1000]:
        if not isinstance(u, dict) or u.get("status") != Status.FAILED:
            continue
        group = recorded_group(u.get("kind"), u.get("unit"), u.get("uid"))
        if group is None:
            continue
        try:
            now = unit_state(group, timeout)
        except (OSError, subprocess.TimeoutExpired):
            now = {}
        if now.get("ActiveState") == "active" and now.get("NRestarts", "0") == "0":
            continue  # someone fixed it since
        detail = u.get("detail")
        out.append({"unit": group.name, "kind": u["kind"], "uid": group.uid,
                    "detail": detail.splitlines()[0] if isinstance(detail, str) and detail else "",
                    "active_state": now.get("ActiveState", "unknown"), "sub_state": now.get("SubState", "unknown"),
                    "restarts": int(now["NRestarts"]) if now.get("NRestarts", "").isdigit() else None})
    return out


def left_down(record: dict[str, Any] | None) -> list[str]:
    """System units whose restart failed in the run of ``record`` (this boot's last) and that are not
    running now (:func:`active_state` validates the names: "unknown" counts as running)."""
    units = record.get("units") if record is not None else None
    names = [u["unit"] for u in units if isinstance(u, dict) and u.get("status") == Status.FAILED
             and u.get("kind") == SYSTEM and isinstance(u.get("unit"), str)] if isinstance(units, list) else []
    return [n for n in names if active_state(SYSTEM, n, None) not in ("active", "reloading", "activating", "unknown")]


def ancestor_units(proc: Path, pid: int) -> set[str]:
    """Units of this process and all its ancestors: restarting one would kill this very run."""
    units = set()
    for current in lineage(proc, pid):
        try:
            cgroup = (proc / str(current) / "cgroup").read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            break
        unit = resolve(cgroup_path(cgroup))
        if unit.kind in (SYSTEM, USER_MANAGER) and unit.name:
            units.add(unit.name)
    return units


def policy_rc_d_forbids(name: str, timeout: float, runner: Runner = run) -> bool:
    """Debian's policy layer (``policy-rc.d``): exit 101 means "action forbidden"."""
    if not os.access(POLICY_RC_D, os.X_OK):
        return False
    script = name.removesuffix(".service")
    try:
        return runner([POLICY_RC_D, script, "restart"], timeout).returncode == 101
    except FAILURES:
        return True  # it could not say yes: do nothing rather than something forbidden


class Survey(NamedTuple):
    """What is asked about a wave's units before their restart: systemd's properties of each, and
    the units ``policy-rc.d`` forbids."""

    states: dict[str, dict[str, str]]
    forbidden: frozenset[str]


def survey(groups: list[UnitGroup], timeout: float, runner: Runner = run) -> Survey:
    """One ``systemctl show`` for all of them, then policy-rc.d for each (raises what the runner raises)."""
    states = unit_states(groups, timeout, runner)
    return Survey(states, frozenset(g.name or "" for g in groups if policy_rc_d_forbids(g.name or "", timeout, runner)))


def daemon_not_running(script: str, timeout: float, run_dir: Path, runner: Runner = run) -> str | None:
    """Why a guessed unit's daemon counts as not running (None when it runs): a restart of
    a stopped init-script service would start it.

    Its init script's LSB status (``invoke-rc.d NAME status``: 0 running, 1-3 not running);
    a script that cannot say (4, a usage error, policy-rc.d's 101) is judged by its pidfile
    ``/run/NAME.pid``, which must name a live process.
    """
    try:
        code = runner([PROGRAMS["invoke-rc.d"], script, "status"], timeout).returncode
    except subprocess.TimeoutExpired:
        return "its init script did not say in time whether it runs"
    except OSError as e:
        return f"could not ask its init script whether it runs: {e}"
    if code == 0:
        return None
    if code in (1, 2, 3):
        return f"not running (init script status {code}); never started by restartctl"
    try:
        fd = os.open(run_dir / f"{script}.pid", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            pid = int(os.read(fd, 64).split()[0]) if stat.S_ISREG(os.fstat(fd).st_mode) else 0
        finally:
            os.close(fd)
        if pid > 1:
            os.kill(pid, 0)
            return None
    except (OSError, ValueError, IndexError):
        pass
    return f"not running (no live process in {run_dir / script}.pid); never started by restartctl"


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
