"""Issue 20 (hardening, second round), reproduced for real: each test is one of the issue's attacks or slips.

A systemd 252 container with restartctl's hooks installed as the package installs them, a real user
"mallory" (created inside), and real apt runs that upgrade rctl-demod from 1.0 to 2.0 while its service
runs, so the hook restarts it (auto mode).  Every test failed before its fix.
"""

from __future__ import annotations

import json
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from restart import __version__
from tests.support import PrerequisiteError
from tests.support.checkout import install_hooks
from tests.support.container import Container, wait_for

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
        box = Box(c, cfg, uid)
        # 1.0 then 2.0 once: the hook keeps a package's checksums at its first upgrade of the boot (1.0's),
        # so that every later 1.0 -> 2.0 of a cycle() changes content.
        for version in ("1.0", "2.0"):
            r = apt(box, "install", *(f"{n}={version}" for n in DEMO))
            assert r.returncode == 0, r.stdout + r.stderr
        yield box
    finally:
        c.stop()


def test_a_loose_run_directory_never_makes_root_write_elsewhere(box: Box) -> None:
    """Issue 20 point 6 (F4): with a 1777 /run/restartctl (a slip of root's), mallory made lists/ herself with
    a symlink lists/PKG.list.new -> /etc/rctl-victim, and the apt hook's snapshot overwrote root's file."""
    c = box.c
    c.write_file("/etc/rctl-victim", "root's own\n")
    c.check(["mkdir", "-p", "/run/restartctl/lists"])
    c.check(["mv", "/run/restartctl/lists", "/run/restartctl/lists.root"])  # root's own, put back below
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
        c.check(["mv", "/run/restartctl/lists.root", "/run/restartctl/lists"])
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
    r = c.exec(["/usr/sbin/restartctl", "status"], timeout=20)  # returns (it used to hang)
    assert r.returncode in (0, 1, 2) and "Traceback" not in r.stderr, r.stderr  # 2: a record it cannot use

    c.write_file(pending, "[" * 100_000)
    out = cycle(box)
    assert RESTARTED in out and "RecursionError" not in out, out
    assert json.loads(c.read_file(pending))["packages"] == []  # a new record after the run
    quiet = c.exec(["/usr/sbin/restartctl", "hook", "--trigger", "manual"])
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")  # the journal was consumed

    c.write_file(pending, json.dumps({"schema": "restartctl-state/1", "boot_id": "x", "time": "noon",
                                      "trigger": "apt", "packages": [], "units": 5}))
    r = c.exec(["/usr/sbin/restartctl", "status"], timeout=20)
    assert r.returncode in (0, 1, 2) and "Traceback" not in r.stderr, r.stderr
    aside = c.check(["ls", STATE]).split()
    assert len([n for n in aside if n.startswith("pending.json.bad-")]) >= 2, aside  # the deep one, the odd one


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


SUDO_C = r"""
/* What `sudo apt-get ...` gives a user the admin allowed it: apt-get as root, with her arguments. */
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char cfg[512], *args[32];
    int n = 0;
    if (argc < 3)
        return 2;
    snprintf(cfg, sizeof cfg, "APT_CONFIG=%s", argv[1]);
    char *env[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", cfg, "DEBIAN_FRONTEND=noninteractive", NULL};
    if (setgid(0) != 0 || setuid(0) != 0) {
        perror("setuid");
        return 1;
    }
    args[n++] = "apt-get";
    args[n++] = "-q";
    args[n++] = "-y";
    args[n++] = "-o";
    args[n++] = "Dpkg::Use-Pty=0";
    for (int i = 2; i < argc && n < 31; i++)
        args[n++] = argv[i];
    args[n] = NULL;
    execve("/usr/bin/apt-get", args, env);
    perror("execve");
    return 1;
}
"""
# Run first by python3 (it imports sitecustomize from PYTHONPATH before the script): whatever this
# process then does, its executable and its argv are those of a genuine unattended-upgrade run.
SPOOF_PY = """\
import os, subprocess, sys, time
subprocess.run([*{argv!r}, "install", "rctl-demod=2.0", "rctl-libdemo1=2.0"], check=False)
sys.stdout.flush()
time.sleep({linger})
os._exit(0)
"""
DEFERRED = "restartctl-after-unattended-upgrades.service"


@pytest.fixture
def uu_installed(box: Box, tmp_path: Path) -> Box:
    """unattended-upgrades installed (so /usr/bin/unattended-upgrade names its interpreter), and `rctl-sudo`."""
    from tests.support.debs import cached_debs, compile_c

    c = box.c
    if c.exec(["test", "-x", "/usr/bin/unattended-upgrade"]).returncode != 0:  # a host may have it already
        c.install_debs(cached_debs("unattended-upgrades", "python3-distro-info", "python3-dbus"))
    if c.exec(["test", "-x", "/usr/local/bin/rctl-sudo"]).returncode != 0:
        c.write_file("/usr/local/bin/rctl-sudo", compile_c(SUDO_C, tmp_path / "rctl-sudo").read_bytes(), mode=0o755)
        c.check(["chmod", "4755", "/usr/local/bin/rctl-sudo"])
    return box


def _downgrade(box: Box) -> None:
    r = apt(box, "install", *(f"{n}=1.0" for n in DEMO), env={"RESTARTCTL_SUSPEND": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    box.c.systemctl("restart", UNIT)
    box.c.wait_active(UNIT)


def test_her_process_that_looks_like_unattended_upgrades_is_not_taken_for_it(uu_installed: Box) -> None:
    """Issue 20 point 3: mallory, allowed `sudo apt-get`, ran it from a process that looked like
    unattended-upgrade (here: the genuine python3 running /usr/bin/unattended-upgrade, her code loaded
    through PYTHONPATH); root's hook then deferred everything until her process exited."""
    box = uu_installed
    c = box.c
    spoof = f"/home/{USER}/spoof"
    as_user(box, "mkdir", "-p", spoof)
    c.write_file(f"{spoof}/sitecustomize.py", SPOOF_PY.format(argv=["/usr/local/bin/rctl-sudo", box.cfg], linger=0))
    _downgrade(box)
    before = c.main_pid(UNIT)
    r = c.exec(["runuser", "-u", USER, "--", "env", f"PYTHONPATH={spoof}", "/usr/bin/python3",
                "/usr/bin/unattended-upgrade"], timeout=180)
    out = r.stdout + r.stderr
    assert "Setting up rctl-demod (2.0)" in out, out  # her "sudo apt-get" really upgraded it
    assert "is running: restarts and one report follow" not in out, out
    assert RESTARTED in out and c.main_pid(UNIT) not in (0, before), out


def test_a_genuine_unattended_upgrades_run_is_waited_for_and_status_says_so(uu_installed: Box) -> None:
    """Issue 20 point 3: the run deferred until unattended-upgrades exits is visible in `status` (it said
    "0 pending" meanwhile).  Root's run of the genuine interpreter and script, still running, is waited for."""
    box = uu_installed
    c = box.c
    hook_dir = "/srv/rctl/uu-root"
    c.write_file(f"{hook_dir}/sitecustomize.py",
                 SPOOF_PY.format(argv=["/usr/bin/env", f"APT_CONFIG={box.cfg}", "DEBIAN_FRONTEND=noninteractive",
                                       "apt-get", "-q", "-y", "-o", "Dpkg::Use-Pty=0"], linger=8))
    _downgrade(box)
    before = c.main_pid(UNIT)
    pid = c.spawn(["env", f"PYTHONPATH={hook_dir}", "/usr/bin/python3", "/usr/bin/unattended-upgrade"])
    try:
        wait_for(lambda: c.exec(["systemctl", "is-active", DEFERRED]).stdout.strip() == "active",
                 "the deferred run", 60)
        status = c.exec(["/usr/sbin/restartctl", "status"])
        assert status.returncode == 1 and f"waits for unattended-upgrades (pid {pid})" in status.stdout, status.stdout
        assert c.main_pid(UNIT) == before  # nothing restarted while it runs
        wait_for(lambda: c.main_pid(UNIT) not in (0, before), "the restart after it", 60)
        assert "waits for" not in c.exec(["/usr/sbin/restartctl", "status"]).stdout
    finally:
        c.exec(["kill", str(pid)])


def test_her_process_moved_into_her_managers_cgroup_is_hers(box: Box) -> None:
    """Issue 20 point 4 (A4): mallory orphaned a process of hers to PID 1 and moved it into her manager's
    own cgroup with PID 1's unprivileged D-Bus call AttachProcessesToUnit; root then ran `systemctl --user
    -M UID@ daemon-reexec` for it on every run (and it failed every time)."""
    c = box.c
    _downgrade(box)
    as_user(box, "sh", "-c", "setsid -f /usr/sbin/rctl-demod </dev/null >/dev/null 2>&1")
    wait_for(lambda: c.exec(["pgrep", "-u", USER, "-x", "rctl-demod"]).stdout.strip(), "her rctl-demod", 20)
    [pid] = c.exec(["pgrep", "-u", USER, "-x", "rctl-demod"]).stdout.split()
    try:
        assert c.check(["ps", "-o", "ppid=", "-p", pid]).strip() == "1"
        as_user(box, "busctl", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager", "AttachProcessesToUnit", "ssau",
                f"user@{box.uid}.service", "/init.scope", "1", pid)
        assert c.read_file(f"/proc/{pid}/cgroup").decode().endswith(f"/user@{box.uid}.service/init.scope\n")
        r = apt(box, "install", *(f"{n}=2.0" for n in DEMO))
        out = r.stdout + r.stderr
        assert r.returncode == 0 and RESTARTED in out, out
        assert "daemon-reexec" not in out and f"user@{box.uid}.service (service manager" not in out, out
        doc = json.loads(c.exec(["/usr/sbin/restartctl", "plan", "--json"]).stdout)
        [hers] = [p for p in doc["processes"] if p["pid"] == int(pid)]
        assert hers["unit"]["kind"] == "user" and hers["unit"]["uid"] == box.uid, hers
    finally:
        c.exec(["kill", pid])


def test_a_manager_she_stopped_counts_once_and_never_trips_the_breaker(box: Box) -> None:
    """Issue 20 point 5: with her `systemd --user` stopped (kill -STOP), the re-exec of her manager waited
    the whole timeout and counted a failure; a few such users tripped `max_failures` and stopped the
    restarts of system services.  Here one failure is the limit, and her manager and two of her units
    are stale (libsystemd-shared replaced the way dpkg does it), so before the fix her one failure
    stopped the restart of rctl-demod.service."""
    c = box.c
    _downgrade(box)
    units = [c.run_user_unit(USER, ["/usr/sbin/rctl-demod"], unit=f"rctl-hers-{n}.service") for n in (1, 2)]
    lib = c.systemd_shared_library()
    c.check(["sh", "-c", f"cp -p {lib} {lib}.dpkg-new && mv {lib}.dpkg-new {lib}"])
    c.write_file("/etc/restartctl/policy.toml", '[settings]\nmax_failures = 1\ntimeout = 5\n'
                 'restart_last = ["rctl-demod.service"]\n\n'
                 '[[rule]]\nscope = "user"\nunit = "rctl-hers-*.service"\naction = "restart"\n')
    manager = str(c.main_pid(f"user@{box.uid}.service"))
    r = apt(box, "install", *(f"{n}=2.0" for n in DEMO), env={"RESTARTCTL_SUSPEND": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    c.check(["kill", "-STOP", manager])
    try:
        r = c.exec(["/usr/sbin/restartctl", "apply", "--yes", "--packages", "rctl-demod", "rctl-libdemo1",
                    "libsystemd-shared"], timeout=200)
        out = r.stdout + r.stderr
        assert "Traceback" not in out, out
        assert "rctl-demod.service: restarted" in out, out
        assert out.count(f"the service manager of user {box.uid}") == 3, out  # asked once, then known
        assert "circuit breaker" not in out, out
    finally:
        c.exec(["kill", "-CONT", manager])
        c.exec(["rm", "-f", "/etc/restartctl/policy.toml"])
        for u in units:
            c.user_systemctl(USER, "stop", u, check=False)


SU_C = r"""
/* Like exim4: a setuid-root program any user may run, which becomes a system account (here daemon,
   uid 1) and then runs the package's daemon binary, not as the daemon the init script manages. */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    if (setgid(1) != 0 || setuid(1) != 0) {
        perror("setuid");
        return 1;
    }
    execl("/usr/sbin/rctl-demod", "rctl-demod", (char *)NULL);
    perror("execl");
    return 1;
}
"""
LOCAL_SCRIPT = "#!/bin/sh\necho \"$0 $*\" >> /srv/rctl/local-script-ran\n"


def test_without_systemd_a_guessed_unit_is_never_started(container_factory: Callable[..., Container],
                                                          demo_debs: dict[str, dict[str, Path]],
                                                          tmp_path: Path) -> None:
    """Issue 20 point 2 (A6, C6): without systemd, mallory ran a setuid program that becomes a system account
    and runs the package's daemon binary (exim4 -bs) while the daemon itself was stopped; after an upgrade of
    a library it maps, root ran `invoke-rc.d rctl-demod restart`, which started the stopped daemon.  And the
    executable-basename fallback picked /etc/init.d/rctl-sleeper, a script no package of rctl-sleeper's
    ships, for a system account's run of /usr/bin/rctl-sleeper."""
    from tests.support.debs import CACHE as DEB_CACHE
    from tests.support.debs import compile_c

    c = container_factory("rctl-hard-plain", boot=False)
    install_hooks(c)
    c.check(["rm", "-f", "/usr/sbin/policy-rc.d"])
    c.check(["useradd", "--create-home", "--user-group", "--", USER])
    names = (*DEMO, "rctl-sleeper")
    c.install_debs([demo_debs["1.0"][n] for n in names])
    # As on a sysvinit host: runlevel 2 in utmp, and the service enabled there (else invoke-rc.d does nothing).
    # glibc's struct utmp, written here (Debian 13's util-linux no longer ships utmpdump): RUN_LVL, pid
    # ('N' << 8 | '2'), line and id "~~", user "runlevel".
    record = struct.pack("<hxxi32s4s32s256shhiii16s20s", 1, ord("N") << 8 | ord("2"), b"~~", b"~~", b"runlevel",
                         b"", 0, 0, 0, int(time.time()), 0, b"", b"")
    c.write_file("/var/run/utmp", record, mode=0o664)
    # ... and sysvinit's runlevel, which reads it (Debian 13's systemctl is built without utmp).
    debs = sorted(DEB_CACHE.glob("sysvinit-core_*.deb"))
    assert debs, f"sysvinit-core not downloaded to {DEB_CACHE}: run tests/run.sh (it fetches it)"
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(tmp_path / "sysv")], check=True, timeout=60)
    c.write_file("/usr/sbin/runlevel", next((tmp_path / "sysv").glob("**/sbin/runlevel")).read_bytes(), mode=0o755)
    assert c.check(["runlevel"]).split() == ["N", "2"]
    c.check(["update-rc.d", "rctl-demod", "defaults"])
    c.write_file("/usr/local/bin/rctl-su", compile_c(SU_C, tmp_path / "rctl-su").read_bytes(), mode=0o755)
    c.check(["chmod", "4755", "/usr/local/bin/rctl-su"])
    c.write_file("/etc/init.d/rctl-sleeper", LOCAL_SCRIPT, mode=0o755)
    hers = c.spawn(["runuser", "-u", USER, "--", "/usr/local/bin/rctl-su"])
    sleeper = c.spawn(["runuser", "-u", "daemon", "--", "/usr/bin/rctl-sleeper"])
    wait_for(lambda: all(c.exec(["pgrep", "-P", str(p)]).stdout.strip() for p in (hers, sleeper)),
             "her rctl-demod and daemon's rctl-sleeper", 20)
    [demod] = c.check(["pgrep", "-P", str(hers)]).split()
    assert c.check(["ps", "-o", "uid=", "-p", demod]).strip() == "1"
    assert c.exec(["/etc/init.d/rctl-demod", "status"]).returncode != 0  # the daemon is stopped

    r = c.exec(["dpkg", "-i", *(c.copy_in(demo_debs["2.0"][n]) for n in names)])
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Traceback" not in out, out
    assert "rctl-demod (guessed from its package): skipped: not running (init script status 3)" in out, out
    assert c.exec(["/etc/init.d/rctl-demod", "status"]).returncode != 0, "the stopped daemon was started"
    assert c.exec(["test", "-e", "/srv/rctl/local-script-ran"]).returncode != 0, "an unrelated script ran"

    # A daemon that runs is still restarted by its init script.
    c.check(["/etc/init.d/rctl-demod", "start"])
    wait_for(lambda: c.exec(["test", "-s", "/run/rctl-demod.pid"]).returncode == 0, "rctl-demod's pidfile", 10)
    c.check(["kill", demod])
    daemon = c.read_file("/run/rctl-demod.pid").decode().strip()
    r = c.exec(["dpkg", "-i", *(c.copy_in(demo_debs["2.0"][n]) for n in DEMO)])  # new inodes, same version
    out = r.stdout + r.stderr
    assert "rctl-demod (guessed from its package): restarted" in out, out
    assert c.read_file("/run/rctl-demod.pid").decode().strip() != daemon


# Code planted where a python3 with ``site`` (or honouring PYTHONPATH, the user site or the current
# directory) would run it: each leaves a mark in /srv/rctl when it runs.
PLANTED_MARK = "import os; os.close(os.open('/srv/rctl/ran-{0}', os.O_CREAT | os.O_WRONLY, 0o600))\n"


def test_the_installed_command_runs_no_planted_python_code(container_factory: Callable[..., Container]) -> None:
    """docs/security.md E8: /usr/sbin/restartctl (bin/restartctl, ``python3 -IS``) imports restartctl and
    the standard library only from their Debian directories: a .pth file in /usr/local (writable by
    group staff on old installations), a usercustomize in root's user site, a ``restart`` package on
    PYTHONPATH or in the current directory, none of them runs.  Each plant is
    first shown to run under a plain ``python3`` (what pybuild's console script, ``#!/usr/bin/python3``,
    was), so the test bites."""
    c = container_factory("rctl-hard-entry", boot=False)
    install_hooks(c)
    version = c.check(["/usr/bin/python3", "-I", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).strip()
    local = f"/usr/local/lib/python{version}/dist-packages"
    user_site = f"/root/.local/lib/python{version}/site-packages"
    c.write_file(f"{local}/rctl-planted.pth", PLANTED_MARK.format("pth"))
    c.write_file(f"{user_site}/usercustomize.py", PLANTED_MARK.format("usercustomize"))
    for where in ("pythonpath", "cwd"):
        c.write_file(f"/srv/rctl/{where}/restart/__init__.py", PLANTED_MARK.format(where))
        c.write_file(f"/srv/rctl/{where}/restart/cli.py", PLANTED_MARK.format(where) + "def run(): pass\n")

    def run_in(cwd: str, *argv: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
        r = c.exec(["sh", "-c", 'cd "$0" && exec "$@"', cwd, *argv],
                   env={"PYTHONPATH": "/srv/rctl/pythonpath", "HOME": "/root"})
        ran = {name.removeprefix("ran-") for name in c.check(["ls", "/srv/rctl"]).split() if name.startswith("ran-")}
        c.check(["sh", "-c", "rm -f /srv/rctl/ran-*"])
        return ran, r

    # The plants work: a python3 with site and the environment runs each (the current directory comes
    # before PYTHONPATH on its path: "restart" is the current directory's there, else PYTHONPATH's).
    for cwd, plants in (("/srv/rctl/cwd", {"pth", "usercustomize", "cwd"}),
                        ("/", {"pth", "usercustomize", "pythonpath"})):
        ran, r = run_in(cwd, "/usr/bin/python3", "-c", "import restart.cli")
        assert ran == plants, (cwd, ran, r.stderr)
        ran, r = run_in(cwd, "/usr/sbin/restartctl", "--version")
        assert not ran, f"restartctl (in {cwd}) ran planted code: {sorted(ran)}"
        assert r.returncode == 0 and r.stdout.strip() == f"restartctl {__version__}", (r.stdout, r.stderr)
    assert c.read_file("/usr/sbin/restartctl").startswith(b"#!/usr/bin/python3 -IS\n")
