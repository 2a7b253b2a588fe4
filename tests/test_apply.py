"""Restarts for real: restartctl apply (and the hook in auto mode) against systemd 252 in a container.

Never a fake systemctl: every restart, refusal and verification here is systemd's own.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest

from tests.support.checkout import install_hooks
from tests.support.container import Container
from tests.support.debs import cached_debs
from tests.support.demohost import (
    NAMES,
    RCTL,
    apply,
    bus_and_systemctl,
    restart_jobs_end_as_systemctls,
    setup,
    unit_file,
)

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parent.parent
def unit_pids(c: Container, unit: str, *, uid: int | None = None) -> list[int] | None:
    """unitstate.unit_pids inside the container, for the ControlGroup systemd reports for ``unit``."""
    manager = ["--user", "-M", f"{uid}@"] if uid is not None else []
    cgroup = c.check(["systemctl", *manager, "show", "-p", "ControlGroup", "--value", "--", unit]).strip()
    r = c.exec(["/usr/bin/python3", "-c", "import sys, json; from pathlib import Path; from restart import unitstate; "
                "print(json.dumps(unitstate.unit_pids(Path('/sys/fs/cgroup'), sys.argv[1])))", cgroup],
               env={"PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    found: list[int] | None = json.loads(r.stdout)
    return found


def plan_units(c: Container) -> dict[str | None, dict[str, Any]]:
    """Action per unit name; the first in plan order wins (a user manager before its "(sd-pam)")."""
    r = c.exec([*RCTL, "plan", "--json"])
    units: dict[str | None, dict[str, Any]] = {}
    for a in json.loads(r.stdout)["actions"]:
        units.setdefault(a["unit"], a)
    return units


@pytest.fixture
def c(container_factory: Callable[..., Container]) -> Container:
    return container_factory("rctl-apply", boot=True)


def test_service_is_restarted_and_verified(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    setup(c, demo_debs)
    old = c.main_pid("rctl-demod.service")
    assert "rctl-demod.service" in plan_units(c)
    code, out = apply(c, "--yes")
    assert code == 0, out
    assert "rctl-demod.service: restarted" in out
    new = c.main_pid("rctl-demod.service")
    assert new not in (0, old)
    assert "rctl-demod.service" not in plan_units(c)  # verified: nothing stale left
    assert unit_pids(c, "rctl-demod.service") == [new]  # what the verification looked at again
    status = c.exec([*RCTL, "status"])
    assert status.returncode == 0 and "1 restarted, 0 pending" in status.stdout


def test_failed_restarts_are_reported_and_trip_the_breaker(c: Container,
                                                            demo_debs: dict[str, dict[str, Path]]) -> None:
    breakable = unit_file("/usr/bin/rctl-sleeper", "ExecStartPre=/bin/sh -c 'test ! -e /srv/rctl/break'")
    units = {f"rctl-bad{i}.service": breakable for i in range(4)}
    setup(c, demo_debs, units=units)
    c.write_file("/srv/rctl/break", "")
    # max_parallel = 1: one unit at a time in plan order, as before waves (no canary): the breaker alone.
    policy = '[settings]\nmax_failures = 2\nmax_parallel = 1\nrestart_first = ["rctl-bad*"]\n'
    code, out = apply(c, "--yes", policy=policy)
    assert code == 1, out
    assert len(re.findall(r"rctl-bad\d\.service: FAILED", out)) == 2, out
    assert len(re.findall(r"rctl-bad\d\.service: skipped: circuit breaker", out)) == 2, out
    assert "rctl-demod.service: skipped: circuit breaker" in out
    assert "ExecStartPre" in out or "control process exited" in out  # systemctl status detail shown
    status = c.exec([*RCTL, "status"])
    assert status.returncode == 1 and "failed" in status.stdout


def test_refuse_manual_stop_is_honoured(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    setup(c, demo_debs, units={"rctl-stubborn.service": unit_file("/usr/bin/rctl-sleeper", "[Unit]\n"
                                                                 "RefuseManualStop=yes")})
    old = c.main_pid("rctl-stubborn.service")
    code, out = apply(c, "--yes")
    assert code == 0, out
    assert "rctl-stubborn.service: skipped: the unit refuses manual stops" in out
    assert c.main_pid("rctl-stubborn.service") == old


def test_units_the_policy_defers_are_left_alone(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    # A unit with a name the vendor policy defers (the system bus); its process uses the library.
    setup(c, demo_debs, units={"dbus-broker.service": unit_file("/usr/sbin/rctl-demod")})
    old = c.main_pid("dbus-broker.service")
    code, out = apply(c, "--yes")
    assert code == 0, out
    assert "dbus-broker.service: defer: restarting the system bus" in out
    assert c.main_pid("dbus-broker.service") == old
    assert "rctl-demod.service: restarted" in out


def test_never_restarts_the_unit_it_runs_in(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    script = ("/usr/bin/rctl-sleeper & "
              "while [ ! -e /srv/rctl/go ]; do sleep 0.1; done; "
              "/usr/sbin/restartctl apply --yes > /srv/rctl/admin.out 2>&1; sleep 600")
    setup(c, demo_debs, units={"rctl-admin.service": unit_file(f"/bin/sh -c '{script}'")})
    old = c.main_pid("rctl-admin.service")
    c.write_file("/srv/rctl/go", "")
    deadline = time.monotonic() + 60
    while c.exec(["grep", "-q", "restarted, ", "/srv/rctl/admin.out"]).returncode != 0:
        assert time.monotonic() < deadline, c.exec(["cat", "/srv/rctl/admin.out"]).stdout
        time.sleep(0.2)
    out = c.read_file("/srv/rctl/admin.out").decode()
    assert "rctl-admin.service: skipped: restartctl itself runs inside this unit" in out, out
    assert "rctl-demod.service: restarted" in out, out
    assert c.main_pid("rctl-admin.service") == old


def test_policy_rc_d_forbidding_is_respected(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    setup(c, demo_debs, forbid_starts=True)
    assert c.exec(["/usr/sbin/policy-rc.d", "rctl-demod", "restart"]).returncode == 101
    old = c.main_pid("rctl-demod.service")
    code, out = apply(c, "--yes")
    assert code == 0, out
    assert "rctl-demod.service: skipped: forbidden by /usr/sbin/policy-rc.d" in out
    assert c.main_pid("rctl-demod.service") == old


def test_user_unit_restarted_only_when_the_policy_says_so(c: Container,
                                                          demo_debs: dict[str, dict[str, Path]]) -> None:
    install_hooks(c)
    c.install_debs([demo_debs["1.0"][n] for n in NAMES])
    uid = c.create_user("alice")
    c.run_user_unit("alice", ["/usr/sbin/rctl-demod"], unit="rctl-userd.service")
    old = c.main_pid("rctl-userd.service", user="alice")
    c.install_debs([demo_debs["2.0"][n] for n in NAMES])
    code, out = apply(c, "--yes")
    assert code == 0 and '"rctl-userd.service" (user ' in out and "notify" in out, out
    assert c.main_pid("rctl-userd.service", user="alice") == old
    code, out = apply(c, "--yes", policy='[[rule]]\nscope = "user"\nunit = "rctl-*"\naction = "restart"\n')
    assert code == 0, out
    assert f'"rctl-userd.service" (user {uid}): restarted' in out, out
    assert c.main_pid("rctl-userd.service", user="alice") not in (0, old)
    assert unit_pids(c, "rctl-userd.service", uid=uid) == [c.main_pid("rctl-userd.service", user="alice")]


def test_ask_mode_through_a_terminal(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    setup(c, demo_debs, units={"rctl-other.service": unit_file("/usr/bin/rctl-sleeper")})
    old_other = c.main_pid("rctl-other.service")
    # script(1) gives restartctl a real pseudo-terminal; the answers come through it: pick number 1.
    r = c.exec(["script", "-qec", "/usr/sbin/restartctl apply --mode ask", "/dev/null"], input="p\n1\n",
               timeout=120)
    out = r.stdout
    assert "   1  rctl-demod.service: systemctl restart -- rctl-demod.service" in out, out
    assert "   2  rctl-other.service: systemctl restart -- rctl-other.service" in out, out
    assert "restart them? y: all, n: none, p: pick [Y/n/p/?]" in out, out
    assert "rctl-demod.service: restarted" in out, out
    assert "rctl-other.service: left alone: declined at the prompt" in out, out
    assert c.main_pid("rctl-other.service") == old_other


def test_ask_mode_without_a_terminal_never_prompts(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    setup(c, demo_debs)
    code, out = apply(c, "--mode", "ask")
    assert "[Y/n/p" not in out and "nothing was restarted (list mode)" in out, out


def test_malformed_policy_falls_back_to_listing(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    setup(c, demo_debs)
    c.write_file("/etc/restartctl/policy.toml", '[settings]\nmode = "auto"\n\n[[rule]]\nunit = "x"\n'
                                                'action = "explode"\n')
    r = c.exec([*RCTL, "policy", "check"])
    assert r.returncode == 2
    assert "/etc/restartctl/policy.toml:6: rule #1: key 'action' must be one of" in r.stderr
    hook = c.exec([*RCTL, "hook", "--trigger", "manual"])
    c.write_file("/run/restartctl/journal", "1 dpkg upgrade rctl-sleeper\n")
    hook = c.exec([*RCTL, "hook", "--trigger", "manual"])
    assert hook.returncode == 0
    assert "/etc/restartctl/policy.toml:6" in hook.stderr and "restarting nothing" in hook.stderr
    assert "nothing was restarted (list mode)" in hook.stdout


def test_world_writable_policy_is_refused(c: Container) -> None:
    install_hooks(c)
    c.write_file("/etc/restartctl/policy.toml", "", mode=0o666)
    r = c.exec([*RCTL, "policy", "check"])
    assert r.returncode == 2 and "writable only by root" in r.stderr


def test_hook_in_auto_mode_restarts_after_apt(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    install_hooks(c)
    c.install_debs([demo_debs["1.0"][n] for n in NAMES])
    c.systemctl("daemon-reload")
    c.systemctl("start", "rctl-demod.service")
    c.wait_active("rctl-demod.service")
    old = c.main_pid("rctl-demod.service")
    cfg = c.local_repo([demo_debs["2.0"][n] for n in NAMES])
    c.check(["apt-get", "-q", "update"], env={"APT_CONFIG": cfg})
    r = c.exec(["apt-get", "-q", "-o", "Dpkg::Use-Pty=0", "install", "-y", *NAMES],
               env={"APT_CONFIG": cfg, "DEBIAN_FRONTEND": "noninteractive"}, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "restartctl:   rctl-demod.service: restarted" in r.stdout, r.stdout
    assert c.main_pid("rctl-demod.service") not in (0, old)
    journal = c.exec(["journalctl", "--no-pager", "-o", "cat", "-t", "restartctl"]).stdout
    assert "rctl-demod.service: restarted" in journal


def test_logged_in_user_is_told_on_their_terminal(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    install_hooks(c)
    c.install_debs([demo_debs["1.0"][n] for n in NAMES])
    c.create_user("bob")
    # A real login on a pseudo-terminal (script(1) + login(1): PAM session, terminal owned by bob;
    # login is exec'd, so it leads the terminal's session, as both Debian 12's and 13's login want),
    # whose "shell" is a program from the package about to be upgraded.
    c.check(["usermod", "--shell", "/usr/sbin/rctl-demod", "bob"])
    c.spawn(["script", "-qfc", "exec login -f bob", "/srv/rctl/bob.tty"])
    deadline = time.monotonic() + 20
    while "session-" not in c.exec(["sh", "-c", "cat /proc/$(pgrep -x rctl-demod)/cgroup"]).stdout:
        assert time.monotonic() < deadline, "no login session appeared"
        time.sleep(0.1)
    c.install_debs([demo_debs["2.0"][n] for n in NAMES])
    code, out = apply(c, "--yes")
    assert code == 0 and "login session of user" in out, out
    deadline = time.monotonic() + 10
    while "software update replaced files" not in c.read_file("/srv/rctl/bob.tty").decode(errors="replace"):
        assert time.monotonic() < deadline, c.read_file("/srv/rctl/bob.tty")
        time.sleep(0.1)
    assert "rctl-demod" in c.read_file("/srv/rctl/bob.tty").decode(errors="replace")


# A notification server for the test user's session bus: it records what it is sent (the receiver
# of the notice, standing in for a desktop's; what sends it is restartctl, runuser and notify-send).
NOTIFYD = """
import json, sys
import dbus, dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

IFACE = "org.freedesktop.Notifications"

class Server(dbus.service.Object):
    @dbus.service.method(IFACE, in_signature="susssasa{sv}i", out_signature="u")
    def Notify(self, app, replaces, icon, summary, body, actions, hints, timeout):
        with open(sys.argv[1], "a") as f:
            f.write(json.dumps({"app": str(app), "summary": str(summary), "body": str(body)}) + "\\n")
        return dbus.UInt32(1)

    @dbus.service.method(IFACE, out_signature="as")
    def GetCapabilities(self):
        return ["body"]

    @dbus.service.method(IFACE, out_signature="ssss")
    def GetServerInformation(self):
        return ("rctl-test-notifyd", "restartctl", "1", "1.2")

DBusGMainLoop(set_as_default=True)
bus = dbus.SessionBus()
name = dbus.service.BusName(IFACE, bus)
Server(bus, "/org/freedesktop/Notifications")
open(sys.argv[2], "w").close()
GLib.MainLoop().run()
"""


def graphical_sessions(c: Container) -> list[str]:
    return c.exec(["sh", "-c", "grep -D skip -l '^TYPE=x11' /run/systemd/sessions/*"]).stdout.split()


def test_desktop_user_gets_a_notification(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    """Two graphical login sessions (logind TYPE=x11) of a user running an upgraded program: one notice
    (both share the user's bus) goes through runuser and the real notify-send to that bus."""
    install_hooks(c)
    c.write_file("/etc/restartctl/policy.toml", '[settings]\nunattended_mode = "list"\n')  # the dpkg hook only lists
    c.install_debs([demo_debs["1.0"][n] for n in NAMES])
    c.install_debs(cached_debs("libnotify4", "libnotify-bin", "python3-dbus", "libgirepository-1.0-1",
                               "gir1.2-glib-2.0", "python3-gi"))
    uid = c.create_user("dave")
    c.check(["usermod", "--shell", "/usr/sbin/rctl-demod", "dave"])
    # logind takes the session type from pam_systemd's type= (this container's /etc only).
    c.check(["sed", "-i", "s/pam_systemd.so/pam_systemd.so type=x11/", "/etc/pam.d/common-session"])
    for n in (1, 2):
        c.spawn(["script", "-qfc", "exec login -f dave", f"/srv/rctl/dave-{n}.tty"])
    c.check(["install", "-d", "-o", "dave", "/srv/rctl/dave"])
    c.write_file("/srv/rctl/notifyd.py", NOTIFYD)
    bus = f"unix:path=/run/user/{uid}/bus"
    deadline = time.monotonic() + 20
    while not (len(graphical_sessions(c)) == 2 and c.exec(["test", "-S", f"/run/user/{uid}/bus"]).returncode == 0):
        assert time.monotonic() < deadline, "no graphical session or session bus appeared"
        time.sleep(0.1)
    c.spawn(["runuser", "-u", "dave", "--", "env", f"DBUS_SESSION_BUS_ADDRESS={bus}", "/usr/bin/python3",
             "/srv/rctl/notifyd.py", "/srv/rctl/dave/notes.json", "/srv/rctl/dave/ready"])
    while c.exec(["test", "-e", "/srv/rctl/dave/ready"]).returncode != 0:
        assert time.monotonic() < deadline + 20, c.exec(["sh", "-c", "cat /srv/rctl/spawn-*.log"]).stdout
        time.sleep(0.1)
    c.install_debs([demo_debs["2.0"][n] for n in NAMES])
    code, out = apply(c, "--yes")
    assert code == 0 and "login session of user" in out, out
    notes = [json.loads(line) for line in c.read_file("/srv/rctl/dave/notes.json").decode().splitlines()]
    assert len(notes) == 1 and len(graphical_sessions(c)) == 2, notes
    assert notes[0]["app"] == "restartctl" and notes[0]["summary"] == "Restart needed after an update"
    assert "rctl-demod" in notes[0]["body"] and "software update replaced files" in notes[0]["body"]


def test_pid1_and_user_manager_are_re_executed(c: Container) -> None:
    """Replace systemd's shared library the way dpkg would (new file, rename): PID 1 and every
    user manager now run on a deleted copy; the cure is daemon-reexec, never a restart."""
    install_hooks(c)
    uid = c.create_user("carol")
    lib = c.systemd_shared_library()
    c.check(["sh", "-c", f"cp -p {lib} {lib}.dpkg-new && mv {lib}.dpkg-new {lib}"])
    before = plan_units(c)
    assert before["init.scope"]["action"] == "reexec"
    assert before[f"user@{uid}.service"]["argv"] == ["systemctl", "--user", "-M", f"{uid}@", "daemon-reexec"]
    code, out = apply(c, "--yes", "--packages", "libsystemd-shared")
    assert code == 0, out
    assert "PID 1 (systemd): re-executed" in out, out
    assert f"user@{uid}.service (service manager of user {uid}): re-executed" in out, out
    after = plan_units(c)
    assert "init.scope" not in after, after
    # What is left of user@UID.service is its PAM helper "(sd-pam)", which a re-exec does not
    # replace: reported as part of that unit, never acted on.
    left = after.get(f"user@{uid}.service")
    assert left is None or (left["kind"], left["action"], left["argv"]) == ("user", "notify", None), after
    assert c.exec(["systemctl", "is-system-running"]).stdout.strip() in ("running", "degraded")


def test_a_service_that_dies_after_its_restart_has_failed(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    """Healthy means staying up (policy ``settle``): a service that crashes 1.5 s after its restart
    passes the first check (active, new main PID) but not the settle time; one that systemd restarts
    by itself (Restart=always) is caught by its NRestarts/MainPID moving; a steady one is done."""
    crashing = ("/bin/sh -c 'if [ -e /srv/rctl/crash ]; then (sleep 1.5; kill -KILL $$$$) & fi; "
                "exec /usr/bin/rctl-sleeper'")
    setup(c, demo_debs, units={"rctl-crash.service": unit_file(crashing),
                               "rctl-flap.service": unit_file(crashing, "Restart=always\nRestartSec=0.2")})
    c.write_file("/srv/rctl/crash", "")
    t0 = time.monotonic()
    # One unit at a time: with waves the failed first one (the canary) would stop the others.
    code, out = apply(c, "--yes", policy='[settings]\nsettle = 3\nmax_parallel = 1\n')
    assert code == 1, out
    assert re.search(r"rctl-crash\.service: FAILED: did not stay up for 3 s after the restart \(ActiveState "
                     r"active -> failed", out), out
    assert re.search(r"rctl-flap\.service: FAILED: did not stay up for 3 s after the restart \(.*MainPID \d+ -> ",
                     out), out
    assert "rctl-demod.service: restarted" in out
    assert time.monotonic() - t0 < 30
    status = c.exec([*RCTL, "status", "--json"])
    units = {u["unit"]: u["status"] for u in json.loads(status.stdout)["last_run"]["units"]}
    assert units["rctl-crash.service"] == units["rctl-flap.service"] == "failed"
    assert units["rctl-demod.service"] == "done"
    # No stale process is left (the crashed units have new ones, or none), yet the host is not clean:
    # plan says which restarts failed, until the units are healthy again.
    r = c.exec([*RCTL, "plan", "--json"])
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and not doc["actions"], r.stdout + r.stderr
    failed = {f["unit"]: f for f in doc["failed"]}
    assert set(failed) == {"rctl-crash.service", "rctl-flap.service"}
    assert failed["rctl-crash.service"]["active_state"] == "failed"
    assert failed["rctl-flap.service"]["restarts"] >= 1
    assert failed["rctl-crash.service"]["detail"].startswith("did not stay up for 3 s")
    text = c.exec([*RCTL, "plan"])
    assert "Restart FAILED in the last run: rctl-crash.service (now failed/failed)" in text.stdout
    c.check(["rm", "/srv/rctl/crash"])
    c.systemctl("restart", "rctl-crash.service", "rctl-flap.service")  # an administrator fixes both
    r = c.exec([*RCTL, "plan", "--json"])
    assert r.returncode == 0 and json.loads(r.stdout)["failed"] == [], r.stdout


# ---- waves: a canary, then the rest of a phase together (max_parallel) --------------------------

SLEEPER = unit_file("/usr/bin/rctl-sleeper")
BREAKABLE = unit_file("/usr/bin/rctl-sleeper", "ExecStartPre=/bin/sh -c 'test ! -e /srv/rctl/break-%N'")


def apply_json(c: Container, *args: str, policy: str) -> tuple[int, dict[str, dict[str, Any]]]:
    """``apply --yes --json``: the exit status and, per unit, what became of it (restartctl-apply/1)."""
    c.write_file("/etc/restartctl/policy.toml", policy)
    r = c.exec([*RCTL, "apply", "--yes", "--json", *args], timeout=300)
    assert "Traceback" not in r.stderr, r.stderr
    doc = json.loads(r.stdout)
    schema = json.loads((REPO / "data" / "restartctl-apply-1.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors(doc)), list(validator.iter_errors(doc))
    return r.returncode, {u["unit"]: u for u in doc["applied"]}


def pids(c: Container, names: list[str]) -> dict[str, int]:
    return {n: c.main_pid(n) for n in names}


def test_a_failing_canary_restarts_nothing_else(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    """rctl-a0.service sorts first among the system services: it is the phase's canary."""
    names = [f"rctl-a{i}.service" for i in range(4)]
    setup(c, demo_debs, units=dict.fromkeys(names, BREAKABLE))
    c.write_file("/srv/rctl/break-rctl-a0", "")
    before = pids(c, [*names[1:], "rctl-demod.service"])
    code, units = apply_json(c, policy="[settings]\nmax_parallel = 8\nmax_failures = 3\nsettle = 0\n")
    assert code == 1
    assert units["rctl-a0.service"]["status"] == "failed" and units["rctl-a0.service"]["wave"] == 1, units
    for name in before:
        assert (units[name]["status"], units[name]["detail"]) == (
            "skipped", "circuit breaker: the canary of its phase (rctl-a0.service) failed"), units[name]
    assert pids(c, list(before)) == before  # nothing else was restarted


def test_a_failure_in_a_wave_trips_the_breaker_and_the_rest_stays_pending(
        c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    names = [f"rctl-a{i}.service" for i in range(6)]
    setup(c, demo_debs, units=dict.fromkeys(names, BREAKABLE))
    c.write_file("/srv/rctl/break-rctl-a2", "")
    later = pids(c, [*names[3:], "rctl-demod.service"])
    t0 = time.monotonic()
    code, units = apply_json(c, policy="[settings]\nmax_parallel = 2\nmax_failures = 1\nsettle = 0\n")
    assert code == 1, units
    assert [units[n]["status"] for n in names[:3]] == ["done", "done", "failed"], units
    assert [units[n]["wave"] for n in names[:3]] == [1, 2, 2], units  # the canary alone, then a wave of two
    assert all(units[n]["seconds"] > 0 for n in names[:3])
    for name in later:
        assert (units[name]["status"], units[name]["detail"]) == (
            "skipped", "circuit breaker: 1 restarts failed in this run"), units[name]
    assert pids(c, list(later)) == later
    status = json.loads(c.exec([*RCTL, "status", "--json"]).stdout)
    pending = {u["unit"]: u["status"] for u in status["last_run"]["units"]}
    assert pending["rctl-a5.service"] == "skipped" and status["last_run"]["packages"], status
    assert time.monotonic() - t0 < 60


def test_in_a_wave_refusals_policy_rc_d_and_the_own_unit_are_left_alone(
        c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    """One wave holding a RefuseManualStop=yes unit, one policy-rc.d forbids, and the unit restartctl
    itself runs in: each skipped with its reason, the others restarted together, verified."""
    script = ("/usr/bin/rctl-sleeper & while [ ! -e /srv/rctl/go ]; do sleep 0.1; done; "
              "/usr/sbin/restartctl apply --yes --json > /srv/rctl/admin.json 2>/srv/rctl/admin.err; sleep 600")
    units = {"rctl-a0.service": SLEEPER, "rctl-a1.service": SLEEPER,
             "rctl-a2.service": unit_file("/usr/bin/rctl-sleeper", "[Unit]\nRefuseManualStop=yes"),
             "rctl-a3.service": SLEEPER, "rctl-a4.service": unit_file(f"/bin/sh -c '{script}'"),
             "rctl-a5.service": SLEEPER}
    setup(c, demo_debs, units=units)
    c.write_file("/usr/sbin/policy-rc.d", '#!/bin/sh\n[ "$1" = rctl-a3 ] && exit 101\nexit 0\n', mode=0o755)
    c.write_file("/etc/restartctl/policy.toml", "[settings]\nmax_parallel = 16\nsettle = 1\n")
    old = pids(c, list(units))
    c.write_file("/srv/rctl/go", "")
    deadline = time.monotonic() + 120
    while c.exec(["grep", "-q", "restartctl-apply/1", "/srv/rctl/admin.json"]).returncode != 0:
        assert time.monotonic() < deadline, c.exec(["cat", "/srv/rctl/admin.err"]).stdout
        time.sleep(0.2)
    time.sleep(0.5)
    assert "Traceback" not in c.read_file("/srv/rctl/admin.err").decode()
    done = {u["unit"]: u for u in json.loads(c.read_file("/srv/rctl/admin.json"))["applied"]}
    assert done["rctl-a2.service"]["detail"] == "the unit refuses manual stops (RefuseManualStop=yes)"
    assert done["rctl-a3.service"]["detail"] == "forbidden by /usr/sbin/policy-rc.d"
    assert done["rctl-a4.service"]["detail"] == "restartctl itself runs inside this unit"
    restarted = ["rctl-a1.service", "rctl-a5.service", "rctl-demod.service"]
    assert done["rctl-a0.service"]["status"] == "done" and done["rctl-a0.service"]["wave"] == 1, done
    assert {done[n]["status"] for n in restarted} == {"done"}, done
    assert len({done[n]["wave"] for n in restarted}) == 1 and done[restarted[0]]["wave"] > 1, done  # one wave
    assert all(done[n]["detail"] == "verified, up for 1 s" for n in restarted), done
    now = pids(c, list(units))
    assert [n for n in units if now[n] != old[n]] == ["rctl-a0.service", "rctl-a1.service", "rctl-a5.service"]


def test_a_waves_checks_are_asked_while_its_canary_restarts(c: Container,
                                                            demo_debs: dict[str, dict[str, Path]]) -> None:
    """Why (issue 14): the wave's ``systemctl show`` and policy-rc.d cost their own time after the
    canary (0.1-0.4 s for 99 units on a loaded host); they are asked while the canary starts.  The
    policy layer notes the canary's main process when it is asked about a unit of the wave: not the
    canary's new one (the canary was still restarting), and the wave still honours its verdict."""
    canary = unit_file("/usr/bin/rctl-sleeper", "ExecStartPre=/bin/sleep 1.5")
    setup(c, demo_debs, units={"rctl-a0.service": canary, "rctl-a1.service": SLEEPER, "rctl-a2.service": SLEEPER})
    c.write_file("/usr/sbin/policy-rc.d", "#!/bin/sh\n"
                 'echo "$1 $(systemctl show -p MainPID --value rctl-a0.service)" >> /srv/rctl/asked\n'
                 '[ "$1" = rctl-a2 ] && exit 101\nexit 0\n', mode=0o755)
    code, units = apply_json(c, policy="[settings]\nmax_parallel = 8\nsettle = 0\n")
    assert code == 0, units
    assert units["rctl-a0.service"]["wave"] == 1 and units["rctl-a1.service"]["wave"] == 2, units
    assert units["rctl-a2.service"]["detail"] == "forbidden by /usr/sbin/policy-rc.d", units
    asked = dict(line.split() for line in c.read_file("/srv/rctl/asked").decode().splitlines())
    assert asked["rctl-a1"] != str(c.main_pid("rctl-a0.service")), asked


def test_a_restart_that_keeps_its_main_process_is_not_verified(c: Container,
                                                               demo_debs: dict[str, dict[str, Path]]) -> None:
    """reload-or-restart of a unit that can reload: systemctl succeeds, the main process stays (and
    still maps the old library): not a verified restart, in a wave as alone."""
    reloads = unit_file("/usr/bin/rctl-sleeper", "ExecReload=/bin/true")
    setup(c, demo_debs, units={"rctl-a0.service": SLEEPER, "rctl-a1.service": reloads, "rctl-a2.service": SLEEPER})
    old = c.main_pid("rctl-a1.service")
    policy = ('[settings]\nmax_parallel = 8\nsettle = 0\ntimeout = 3\n\n'
              '[[rule]]\nunit = "rctl-a*"\naction = "reload-or-restart"\n')
    code, units = apply_json(c, policy=policy)
    assert code == 1, units
    assert units["rctl-a1.service"]["status"] == "failed", units
    assert units["rctl-a1.service"]["detail"].startswith(f"still active with the same main process (pid {old})")
    assert units["rctl-a0.service"]["status"] == units["rctl-a2.service"]["status"] == "done", units
    assert units["rctl-a2.service"]["wave"] == units["rctl-a1.service"]["wave"] == 2, units
    assert c.main_pid("rctl-a1.service") == old


def test_max_parallel_one_restarts_in_the_old_order(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    names = [f"rctl-a{i}.service" for i in range(3)]
    setup(c, demo_debs, units=dict.fromkeys(names, SLEEPER))
    code, units = apply_json(c, policy="[settings]\nmax_parallel = 1\nsettle = 0\n")
    assert code == 0, units
    order = [*names, "rctl-demod.service"]
    assert [units[n]["wave"] for n in order] == [1, 2, 3, 4], units
    started = [int(c.show(n, "ExecMainStartTimestampMonotonic")) for n in order]
    assert started == sorted(started), started  # each one restarted after the one before


def test_a_timeout_inside_a_wave_is_an_outcome(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    """One unit of a wave takes longer to start than the policy's timeout: its restart is failed (no
    traceback, exit 1); the others of the same wave are verified."""
    slow = unit_file("/usr/bin/rctl-sleeper", "ExecStartPre=/bin/sh -c 'test ! -e /srv/rctl/slow || sleep 8'")
    setup(c, demo_debs, units={"rctl-a0.service": SLEEPER, "rctl-a1.service": SLEEPER, "rctl-a2.service": slow})
    c.write_file("/srv/rctl/slow", "")
    code, out = apply(c, "--yes", policy="[settings]\nmax_parallel = 8\nsettle = 0\ntimeout = 3\n")
    assert code == 1, out
    assert re.search(r"rctl-a2\.service: FAILED: not active again after the restart \(activating/start-pre\)"
                     r" \(\d+\.\d s\)", out), out
    assert re.search(r"rctl-a1\.service: restarted \(\d+\.\d s\)", out), out
    assert "rctl-demod.service: restarted" in out, out
    c.wait_active("rctl-a2.service", timeout=30)  # systemd finishes the restart it was asked for


def test_a_waves_quick_units_are_verified_while_a_slow_one_still_starts(
        c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    """Why (issue 14): a wave's units were verified only once the slowest had started, so each unit's
    time was the slowest one's.  Those whose jobs end first are verified then (active, a new main
    process, nothing stale in their cgroups), while the slow one still starts; it is verified after."""
    slow = unit_file("/usr/bin/rctl-sleeper", "ExecStartPre=/bin/sleep 2")
    setup(c, demo_debs, units={"rctl-a0.service": SLEEPER, "rctl-a1.service": SLEEPER, "rctl-a2.service": slow})
    before = pids(c, ["rctl-a1.service", "rctl-a2.service", "rctl-demod.service"])
    code, units = apply_json(c, policy="[settings]\nmax_parallel = 8\nsettle = 0\n")
    assert code == 0, units
    assert {n: (u["status"], u["detail"], u["wave"]) for n, u in units.items() if n in before} == {
        n: ("done", "verified", 2) for n in before}, units
    assert units["rctl-a2.service"]["seconds"] >= 2, units
    assert units["rctl-a1.service"]["seconds"] < 1.5 and units["rctl-demod.service"]["seconds"] < 1.5, units
    assert all(pid != before[n] for n, pid in pids(c, list(before)).items())
    assert not set(plan_units(c)) & set(before)  # nothing of them stale: every restart verified


def test_systemds_word_on_its_bus_is_what_systemctl_show_says(c: Container) -> None:
    """Why (issue 14): ``systemctl show`` fetches all 300 properties of each unit; for a wave of 100 it
    took 0.15-0.2 s after the restart, a tenth of the whole run.  restartctl asks PID 1 for the eight
    it needs on its own socket instead: the answers must be systemctl's, for every kind of unit, and
    systemctl still answers when the socket cannot be used."""
    sleeps = unit_file("/bin/sleep infinity")
    units = {"rctl-a0.service": sleeps, "rctl-refuses.service": unit_file("/bin/sleep infinity",
                                                                          "[Unit]\nRefuseManualStop=yes"),
             "rctl-fails.service": unit_file("/bin/false"), "rctl-idle.service": sleeps,
             "rctl-x_y:z.service": sleeps, "rctl-t@.service": sleeps}
    for name, text in units.items():
        c.write_file(f"/etc/systemd/system/{name}", text)
    c.systemctl("daemon-reload")
    for name in ("rctl-a0.service", "rctl-refuses.service", "rctl-x_y:z.service", "rctl-t@one.service"):
        c.systemctl("start", name)
    c.systemctl("start", "rctl-fails.service", check=False)
    names = [*units, "rctl-t@one.service", "rctl-nothing.service", "dbus.service", "systemd-journald.service"]
    names.remove("rctl-t@.service")
    found = bus_and_systemctl(c, names, env={"PYTHONPATH": str(REPO)})
    assert found["asked"] == 1, found
    assert found["bus"] == found["systemctl"] == found["fallback"], found
    states = found["bus"]
    assert isinstance(states, dict)
    assert states["rctl-refuses.service"]["RefuseManualStop"] == "yes", states
    assert states["rctl-fails.service"]["ActiveState"] == "failed", states
    assert states["rctl-nothing.service"]["ActiveState"] == "inactive", states
    assert states["rctl-x_y:z.service"]["MainPID"] == str(c.main_pid("rctl-x_y:z.service")) != "0", states


def test_restart_jobs_on_pid1s_bus_end_as_systemctls(c: Container) -> None:
    """Why (issue 14): a ``systemctl restart`` per restart starts a program that connects and asks
    about each unit before enqueuing its job (a wave of 29: 94 ms, on PID 1's socket 72 ms).  Each
    job's end is systemd's word: done, failed for a unit whose start fails, systemd's refusal for
    RefuseManualStop=yes and an unknown unit, and no end yet for a job still running at the timeout."""
    restart_jobs_end_as_systemctls(c, env={"PYTHONPATH": str(REPO)})


def test_restarts_need_no_systemctl_while_pid1s_socket_answers(c: Container,
                                                               demo_debs: dict[str, dict[str, Path]]) -> None:
    """The canary and the wave are restarted, and verified, on PID 1's own socket: with no systemctl
    program at all, every unit is restarted and verified."""
    names = [f"rctl-a{i}.service" for i in range(3)]
    setup(c, demo_debs, units=dict.fromkeys(names, SLEEPER))
    before = pids(c, [*names, "rctl-demod.service"])
    c.check(["mv", "/usr/bin/systemctl", "/usr/bin/systemctl.away"])
    try:
        code, units = apply_json(c, policy="[settings]\nmax_parallel = 8\nsettle = 0\n")
    finally:
        c.check(["mv", "/usr/bin/systemctl.away", "/usr/bin/systemctl"])
    assert code == 0, units
    assert {n: (units[n]["status"], units[n]["wave"]) for n in before} == {
        "rctl-a0.service": ("done", 1), "rctl-a1.service": ("done", 2), "rctl-a2.service": ("done", 2),
        "rctl-demod.service": ("done", 2)}, units
    assert all(pid not in (0, before[n]) for n, pid in pids(c, list(before)).items())
