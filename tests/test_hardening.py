"""Issue 20 (hardening, second round), reproduced for real: each test is one of the issue's attacks or slips.

A systemd 252 container with restartctl's hooks installed as the package installs them, a real user
"mallory" (created inside), and real apt runs that upgrade rctl-demod from 1.0 to 2.0 while its service
runs, so the hook restarts it (auto mode).  Every test failed before its fix.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.support import PrerequisiteError
from tests.support.checkout import install_hooks
from tests.support.container import Container

pytestmark = pytest.mark.real

USER = "mallory"
DEMO = ("rctl-libdemo1", "rctl-demod")
UNIT = "rctl-demod.service"
RESTARTED = f"{UNIT}: restarted"
STATE = "/var/lib/restartctl"


class Box(NamedTuple):
    c: Container
    cfg: str  # APT_CONFIG of the local repository holding both versions
    uid: int  # mallory's


def apt(box: Box, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return box.c.exec(["apt-get", "-q", "-y", "-o", "Dpkg::Use-Pty=0", "--allow-downgrades", *args], timeout=180,
                      env={"APT_CONFIG": box.cfg, "DEBIAN_FRONTEND": "noninteractive", **(env or {})})


def as_user(box: Box, *argv: str) -> str:
    return box.c.check(["runuser", "-u", USER, "--", *argv])


def cycle(box: Box) -> str:
    """rctl-demod.service running on 1.0, then `apt-get install` of 2.0: what apt (and so the hook) printed."""
    r = apt(box, "install", *(f"{n}=1.0" for n in DEMO), env={"RESTARTCTL_SUSPEND": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    box.c.systemctl("restart", UNIT)
    box.c.wait_active(UNIT)
    r = apt(box, "install", *(f"{n}=2.0" for n in DEMO))
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Traceback" not in out and "Problem executing scripts" not in out, out
    return out


@pytest.fixture(scope="module")
def box(demo_debs: dict[str, dict[str, Path]]) -> Iterator[Box]:
    c = Container("rctl-hard", boot=True)
    try:
        c.start()
    except PrerequisiteError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        install_hooks(c)
        c.check(["rm", "-f", "/usr/sbin/policy-rc.d"])  # the host image's "forbid everything"
        uid = c.create_user(USER)
        cfg = c.local_repo([demo_debs[v][n] for v in ("1.0", "2.0") for n in DEMO])
        r = c.exec(["apt-get", "-q", "update"], env={"APT_CONFIG": cfg})
        assert r.returncode == 0, r.stderr
        yield Box(c, cfg, uid)
    finally:
        c.stop()


def test_a_loose_run_directory_never_makes_root_write_elsewhere(box: Box) -> None:
    """Issue 20 point 6 (F4): with a 1777 /run/restartctl (a slip of root's), mallory made lists/ herself with
    a symlink lists/PKG.list.new -> /etc/rctl-victim, and the apt hook's snapshot overwrote root's file."""
    c = box.c
    c.write_file("/etc/rctl-victim", "root's own\n")
    c.check(["mkdir", "-p", "/run/restartctl"])
    c.check(["rm", "-rf", "/run/restartctl/lists"])
    c.check(["chmod", "1777", "/run/restartctl"])
    try:
        as_user(box, "mkdir", "/run/restartctl/lists")
        for name in ("rctl-demod", "rctl-demod:amd64", "rctl-libdemo1", "rctl-libdemo1:amd64"):
            as_user(box, "ln", "-s", "/etc/rctl-victim", f"/run/restartctl/lists/{name}.list.new")
        out = cycle(box)
        assert c.read_file("/etc/rctl-victim") == b"root's own\n"
        assert "not a directory only root can write" in out  # the Python hook says why it did nothing
    finally:
        c.check(["rm", "-rf", "/run/restartctl/lists"])
        c.check(["chmod", "755", "/run/restartctl"])
    assert RESTARTED in cycle(box)  # and with the directory repaired, all is as before


def test_policy_slips_of_roots_do_not_disable_or_hand_over_restarts(box: Box) -> None:
    """Issue 20 point 7 (F1b, F1c): `timeout = nan` passed `policy check`; an editor's lock symlink in
    policy.d made the whole policy invalid (list mode: nothing restarted); an `exec` program mallory owns
    ran as root."""
    c = box.c
    try:
        c.write_file("/etc/restartctl/policy.toml", "[settings]\ntimeout = nan\n")
        r = c.exec(["/usr/sbin/restartctl", "policy", "check"])
        assert r.returncode == 2 and "finite" in r.stderr, r.stdout + r.stderr
        c.check(["rm", "/etc/restartctl/policy.toml"])

        c.write_file("/etc/restartctl/policy.d/10-site.toml", '[settings]\nunattended_mode = "auto"\n')
        c.check(["ln", "-s", "root@rctl-hard.4242:1700000000", "/etc/restartctl/policy.d/.#10-site.toml"])
        c.check(["/usr/sbin/restartctl", "policy", "check"])
        before = c.main_pid(UNIT)
        out = cycle(box)
        assert RESTARTED in out and c.main_pid(UNIT) not in (0, before), out

        c.write_file("/usr/local/sbin/rctl-bounce", "#!/bin/sh\nid -u > /srv/rctl/bounced\n", mode=0o755)
        c.check(["chown", USER, "/usr/local/sbin/rctl-bounce"])  # the slip: she may now rewrite it
        c.write_file("/etc/restartctl/policy.d/20-bounce.toml",
                     f'[[rule]]\nunit = "{UNIT}"\nexec = ["/usr/local/sbin/rctl-bounce"]\n')
        r = c.exec(["/usr/sbin/restartctl", "policy", "check"])
        assert r.returncode == 2 and "exec program" in r.stderr, r.stdout + r.stderr
        out = cycle(box)
        assert not (c.scratch / "bounced").exists(), "her program ran as root"
        assert "exec program /usr/local/sbin/rctl-bounce" in out and RESTARTED not in out, out
    finally:
        c.check(["rm", "-rf", "/etc/restartctl/policy.toml", "/etc/restartctl/policy.d",
                 "/usr/local/sbin/rctl-bounce", "/srv/rctl/bounced"])


def test_bad_state_never_hangs_status_or_stops_the_hook(box: Box) -> None:
    """Issue 20 point 8 (F3b): a FIFO at pending.json hung `status` forever; a deeply nested pending.json
    raised RecursionError in every hook run (the journal was never consumed); odd content made `status`
    trace back."""
    c = box.c
    pending = f"{STATE}/pending.json"
    c.check(["mkdir", "-p", STATE])
    c.check(["rm", "-f", pending])
    c.check(["mkfifo", "-m", "644", pending])
    r = c.exec(["/usr/sbin/restartctl", "status"], timeout=20)
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stderr
    assert c.exec(["test", "-p", pending]).returncode != 0  # set aside

    c.write_file(pending, "[" * 100_000)
    out = cycle(box)
    assert RESTARTED in out and "RecursionError" not in out, out
    assert json.loads(c.read_file(pending))["packages"] == []  # a new record after the run
    quiet = c.exec(["/usr/sbin/restartctl", "hook", "--trigger", "manual"])
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")  # the journal was consumed

    c.write_file(pending, json.dumps({"schema": "restartctl-state/1", "boot_id": "x", "time": "noon",
                                      "trigger": "apt", "packages": [], "units": 5}))
    r = c.exec(["/usr/sbin/restartctl", "status"], timeout=20)
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stderr
    aside = c.check(["ls", STATE]).split()
    assert len([n for n in aside if n.startswith("pending.json.bad-")]) == 3, aside


def test_a_restart_that_kept_the_main_process_says_so(box: Box) -> None:
    """Issue 20 point 9: `_verify` said "not active again (active/running)" when the unit was active but kept
    its MainPID (here: reload-or-restart of a unit whose reload does nothing)."""
    c = box.c
    dropin = f"/etc/systemd/system/{UNIT}.d/reload.conf"
    try:
        c.write_file(dropin, "[Service]\nExecReload=/bin/true\n")
        c.systemctl("daemon-reload")
        c.write_file("/etc/restartctl/policy.toml", '[settings]\ntimeout = 3\n\n'
                     f'[[rule]]\nunit = "{UNIT}"\naction = "reload-or-restart"\n')
        out = cycle(box)
        assert "still active with the same main process" in out and "not active again" not in out, out
    finally:
        c.check(["rm", "-rf", f"/etc/systemd/system/{UNIT}.d", "/etc/restartctl/policy.toml"])
        c.systemctl("daemon-reload")
