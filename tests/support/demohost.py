"""The demo packages' host as the apply tests (and the admin's-view tests) set it up: v1 of the demo
library and daemons running, v2 installed under them, restartctl's hooks in place; and ``apply``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.checkout import install_hooks
from tests.support.container import Container

NAMES = ("rctl-libdemo1", "rctl-demod", "rctl-sleeper")
RCTL = ["/usr/sbin/restartctl"]


def unit_file(exec_start: str, extra: str = "") -> str:
    return f"[Service]\nExecStart={exec_start}\n{extra}\n"


def setup(c: Container, debs: dict[str, dict[str, Path]], *, units: dict[str, str] | None = None,
          forbid_starts: bool = False) -> None:
    """v1 installed and running (rctl-demod.service plus ``units``), then v2 installed under them."""
    install_hooks(c)
    c.write_file("/etc/restartctl/policy.toml", '[settings]\nunattended_mode = "list"\n')  # no surprises
    if forbid_starts:
        c.forbid_service_starts()  # a Docker-style policy-rc.d, as container images ship
    c.install_debs([debs["1.0"][n] for n in NAMES])
    for name, text in (units or {}).items():
        c.write_file(f"/etc/systemd/system/{name}", text)
    c.systemctl("daemon-reload")
    for name in ("rctl-demod.service", *(units or {})):
        c.systemctl("start", name)
        c.wait_active(name)
    c.install_debs([debs["2.0"][n] for n in NAMES])


def apply(c: Container, *args: str, policy: str | None = None, input: str | None = None,
          ) -> tuple[int, str]:
    if policy is not None:
        c.write_file("/etc/restartctl/policy.toml", policy)
    r = c.exec([*RCTL, "apply", *args], input=input, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, r.stdout + r.stderr


# systemd's word on units, asked on PID 1's bus (restartctl's fast path) and of ``systemctl show``, and
# once more through unit_states with the bus socket made unusable (the fallback); as JSON.
BUS_CHECK = """
import json, subprocess, sys
from restart import unitstate
from restart.units import SYSTEM, UnitGroup
names = sys.argv[1:]
shown = subprocess.run([unitstate.PROGRAMS["systemctl"], "show", "-p", unitstate.SHOW_PROPS, "--", *names],
                       capture_output=True, text=True, check=True).stdout
groups = [UnitGroup(kind=SYSTEM, name=n, uid=None) for n in names]
asked = []
bus_states = unitstate.bus_states
unitstate.bus_states = lambda *a: (found := bus_states(*a), asked.append(a))[0]  # counts answers only
fast = unitstate.unit_states(groups, 10)
unitstate.SYSTEMD_BUS = "/run/systemd/no-such-socket"
slow = unitstate.unit_states(groups, 10)
print(json.dumps({"bus": fast, "systemctl": unitstate.parse_show(shown, names),
                  "fallback": slow, "asked": len(asked)}))
"""


def bus_and_systemctl(c: Container, names: list[str], env: dict[str, str] | None = None) -> dict[str, object]:
    """What :data:`BUS_CHECK` finds inside ``c`` for these system units."""
    r = c.exec(["/usr/bin/python3", "-c", BUS_CHECK, *names], env=env)
    assert r.returncode == 0, r.stderr
    found: dict[str, object] = json.loads(r.stdout)
    return found


# Restart jobs asked of PID 1 on its own socket (restartctl's way), then the same units restarted by
# ``systemctl restart`` one by one (its exit status); as JSON, with when (seconds after the calls) the
# restart was told under way, and which units it was told of as their jobs ended, meanwhile.
JOBS_CHECK = """
import json, subprocess, sys, time
from restart import unitstate
timeout, names = float(sys.argv[1]), sys.argv[2:]
started, under_way, ended = time.monotonic(), [], []
jobs = unitstate.bus_restart("restart", names, timeout, lambda: under_way.append(time.monotonic() - started),
                             lambda states: ended.extend(states))
shown = {n: subprocess.run([unitstate.PROGRAMS["systemctl"], "show", "-p", "ActiveState", "--value", "--", n],
                           capture_output=True, text=True).stdout.strip() for n in names}
print(json.dumps({"jobs": jobs._asdict(), "states": shown, "under_way": under_way, "ended": ended}))
"""


def jobs_on_the_bus(c: Container, names: list[str], timeout: float,
                    env: dict[str, str] | None = None) -> dict[str, Any]:
    """What :data:`JOBS_CHECK` finds inside ``c``: the restart jobs of these system units, and then
    each unit's ActiveState."""
    r = c.exec(["/usr/bin/python3", "-c", JOBS_CHECK, str(timeout), *names], env=env)
    assert r.returncode == 0, r.stderr
    found: dict[str, Any] = json.loads(r.stdout)
    return found


JOB_UNITS = {"rctl-a0.service": "[Service]\nExecStart=/bin/sleep infinity\n",
             "rctl-fails.service": "[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStartPre=/bin/false\n"
                                   "ExecStart=/bin/sleep infinity\n",
             "rctl-refuses.service": "[Unit]\nRefuseManualStop=yes\n[Service]\nExecStart=/bin/sleep infinity\n",
             "rctl-slow.service": "[Service]\nExecStartPre=/bin/sleep 4\nExecStart=/bin/sleep infinity\n"}


def restart_jobs_end_as_systemctls(c: Container, env: dict[str, str] | None = None) -> None:
    """The restart jobs of JOB_UNITS and an unknown unit, asked of PID 1 on its socket: each ends as
    systemd says (and systemctl restart agrees on which were restarted)."""
    for name, text in JOB_UNITS.items():
        c.write_file(f"/etc/systemd/system/{name}", text)
    c.systemctl("daemon-reload")
    c.systemctl("start", "rctl-a0.service", "rctl-refuses.service")
    before = c.main_pid("rctl-a0.service")
    found = jobs_on_the_bus(c, [*JOB_UNITS, "rctl-nothing.service"], 2, env=env)
    jobs = found["jobs"]
    assert jobs["results"] == {"rctl-a0.service": "done", "rctl-fails.service": "failed"}, found
    assert isinstance(jobs["refused"], dict) and set(jobs["refused"]) == {"rctl-refuses.service",
                                                                           "rctl-nothing.service"}, found
    assert "refuse manual" in jobs["refused"]["rctl-refuses.service"], found  # systemd's own words
    assert "not found" in jobs["refused"]["rctl-nothing.service"], found
    assert jobs["waiting"] == "" and found["states"]["rctl-slow.service"] == "activating", found
    # Told under way as PID 1 began to start them (systemd's own PropertiesChanged), long before the
    # 2 s of the wait were over; of rctl-a0 as its job ended, while rctl-slow's still ran.
    assert len(found["under_way"]) == 1 and found["under_way"][0] < 1, found
    assert found["ended"] == ["rctl-a0.service"], found
    assert c.main_pid("rctl-a0.service") not in (0, before)
    c.wait_active("rctl-slow.service", timeout=30)  # its job still ran to its end: never asked for twice
    for name, restarted in (("rctl-a0.service", True), ("rctl-fails.service", False),
                            ("rctl-refuses.service", False), ("rctl-nothing.service", False)):
        assert (c.exec(["systemctl", "restart", "--", name]).returncode == 0) == restarted, name
