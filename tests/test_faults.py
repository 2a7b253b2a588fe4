"""Faults lose nothing (issue 21), for real: concurrent runs, Multi-Arch names, dpkg killed
mid-configure, full run and state directories, a killed hook, an oversized journal.

Each test runs the project's hook snippets under real apt/dpkg in a booted systemd 252
container and asserts apt's exit status, that every stale unit is reported by the same or
the next run, that nothing is reported (or restarted) twice, and that no package dpkg left
unconfigured is restarted.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.checkout import install_hooks
from tests.support.container import Container, wait_for
from tests.support.debs import build_deb, compile_c, host_arch

pytestmark = pytest.mark.real

NAMES = ("rctl-libdemo1", "rctl-demod")
RCTL = "/usr/sbin/restartctl"
AUTO = '[settings]\nmode = "auto"\nunattended_mode = "auto"\n'
LIST = '[settings]\nmode = "list"\nunattended_mode = "list"\n'
# Every start of rctl-demod.service leaves a line here: restarts are counted, not guessed.
COUNTING = ("[Service]\nExecStartPre=/bin/sh -c 'echo start >> /srv/rctl/demod-starts'\n"
            "ExecStop=/bin/sleep {stop}\n")


# The version is in the binary, not in a comment: 1.0 and 2.0 must differ in content, or the
# upgrade replaces the daemon by an identical file, which is no reason to restart it (issue 12).
SLOWD_C = '#include <unistd.h>\nconst char *rctl_slowd_version = "%s";\nint main(void) { for (;;) pause(); }\n'
SLOWD_UNIT = "[Service]\nExecStart=/usr/bin/rctl-slowd\n"
# 2.0's postinst takes its time while /srv/rctl/slow exists, leaving dpkg's PID for the test to kill.
SLOW_POSTINST = ("#!/bin/sh\nif [ -e /srv/rctl/slow ]; then echo $PPID > /srv/rctl/dpkg.pid; "
                 "echo $$ > /srv/rctl/postinst.pid; exec sleep 120; fi\nexit 0\n")


@pytest.fixture(scope="module")
def slowd_debs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """rctl-slowd 1.0 and 2.0: a daemon and its unit; 2.0's postinst can be made slow."""
    out = tmp_path_factory.mktemp("rctl-slowd")
    debs = []
    for version in ("1.0", "2.0"):
        binary = compile_c(SLOWD_C % version, out / version / "rctl-slowd")
        debs.append(build_deb(out, "rctl-slowd", version, {
            "/usr/bin/rctl-slowd": binary, "/lib/systemd/system/rctl-slowd.service": SLOWD_UNIT.encode()},
            maintscripts={"postinst": SLOW_POSTINST if version == "2.0" else "#!/bin/sh\nexit 0\n"}))
    return debs


def apt(c: Container, cfg: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return c.exec(["apt-get", "-q", "-y", "-o", "Dpkg::Use-Pty=0", *args], timeout=timeout,
                  env={"APT_CONFIG": cfg, "DEBIAN_FRONTEND": "noninteractive"})


def starts(c: Container) -> int:
    return len(c.read_file("/srv/rctl/demod-starts").splitlines())


@pytest.fixture
def host(container_factory: Callable[..., Container], demo_debs: dict[str, dict[str, Path]]) -> tuple[Container, str]:
    """Hooks installed, rctl-demod 1.0 running (a slow stop, starts counted), 2.0 in a local repository."""
    c = container_factory("rctl-faults", boot=True)
    install_hooks(c)
    c.check(["rm", "-f", "/usr/sbin/policy-rc.d"])  # the host image forbids starts from package tooling
    c.write_file("/etc/restartctl/policy.toml", LIST)
    cfg = c.local_repo([demo_debs[v][n] for v in ("1.0", "2.0") for n in NAMES])
    assert apt(c, cfg, "update").returncode == 0
    r = apt(c, cfg, "install", "rctl-demod=1.0", "rctl-libdemo1=1.0")
    assert r.returncode == 0, r.stdout + r.stderr
    c.write_file("/etc/systemd/system/rctl-demod.service.d/count.conf", COUNTING.format(stop=2))
    c.systemctl("daemon-reload")
    c.systemctl("start", "rctl-demod.service")
    c.wait_active("rctl-demod.service")
    return c, cfg


def test_hook_and_apply_together_restart_once_and_report_once(host: tuple[Container, str]) -> None:
    c, cfg = host
    r = apt(c, cfg, "install", "rctl-demod=2.0", "rctl-libdemo1=2.0")  # list mode: reported, not restarted
    assert r.returncode == 0 and "rctl-demod.service: restart" in r.stdout, r.stdout + r.stderr
    c.write_file("/etc/restartctl/policy.toml", AUTO)
    both = c.exec(["sh", "-c", f"{RCTL} hook > /srv/rctl/hook.out 2>&1 & "
                               f"{RCTL} apply --yes > /srv/rctl/apply.out 2>&1 & wait"], timeout=200)
    assert both.returncode == 0
    outs = {n: c.read_file(f"/srv/rctl/{n}.out").decode() for n in ("hook", "apply")}
    assert "Traceback" not in "".join(outs.values()), outs
    restarted = [n for n, o in outs.items() if "rctl-demod.service: restarted" in o]
    assert len(restarted) == 1, outs           # reported once...
    assert starts(c) == 2, outs                # ...and restarted once (the first start, one restart)
    # The run that came second waited for the first and found nothing left to do.
    later = c.read_file("/var/lib/restartctl/pending.json")
    assert json.loads(later)["units"] == [] or restarted == ["apply"], later


def test_apply_says_which_run_holds_the_lock(host: tuple[Container, str]) -> None:
    c, _ = host
    # A run that holds the lock, as a real one does: flock, then its PID and command in the file.
    holder = c.spawn(["/bin/sh", "-c", "exec 9>>/run/restartctl/lock; flock 9; "
                                       "echo 4242 hook --trigger apt > /run/restartctl/lock; exec sleep 60"])
    wait_for(lambda: c.read_file("/run/restartctl/lock").startswith(b"4242"), "the lock taken", 10)
    r = c.exec([RCTL, "apply", "--yes", "--budget", "1"])
    assert r.returncode == 2, r.stdout + r.stderr
    assert "waiting (at most 1 s) for the run that holds the lock: pid 4242 (hook --trigger apt)" in r.stderr
    assert "another run still holds the lock (pid 4242 (hook --trigger apt)); nothing done" in r.stderr
    c.check(["kill", str(holder)])
    assert starts(c) == 1


def test_multi_arch_same_package_is_recorded_as_name_arch_once(host: tuple[Container, str]) -> None:
    c, cfg = host
    arch = host_arch()
    r = apt(c, cfg, "install", "rctl-demod=2.0", "rctl-libdemo1=2.0")
    assert r.returncode == 0, r.stdout + r.stderr
    events = [line.split()[1:] for line in c.read_file("/run/restartctl/journal").decode().splitlines()]
    from_apt = {e[2] for e in events if e[0] == "apt"}
    assert from_apt == {f"rctl-libdemo1:{arch}", f"rctl-demod:{arch}"}, events  # Multi-Arch: same, and not
    # The old list of the Multi-Arch: same package was kept too (dpkg names it name:arch.list).
    assert b"/librctldemo.so.1" in c.read_file(f"/run/restartctl/lists/rctl-libdemo1:{arch}.list")


def test_no_restart_while_dpkg_has_not_configured_the_package(
        host: tuple[Container, str], slowd_debs: list[Path]) -> None:
    c, _ = host
    cfg = c.local_repo(slowd_debs, subdir="slowd")
    assert apt(c, cfg, "update").returncode == 0
    assert apt(c, cfg, "install", "rctl-slowd=1.0").returncode == 0
    c.systemctl("start", "rctl-slowd.service")
    c.wait_active("rctl-slowd.service")
    old = c.main_pid("rctl-slowd.service")
    c.write_file("/etc/restartctl/policy.toml", AUTO)
    c.write_file("/srv/rctl/slow", "")
    c.spawn(["/bin/sh", "-c", f"APT_CONFIG={cfg} DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0 "
                              "install rctl-slowd=2.0 > /srv/rctl/apt.out 2>&1; echo $? > /srv/rctl/apt.rc"])
    wait_for(lambda: c.exec(["test", "-s", "/srv/rctl/postinst.pid"]).returncode == 0, "the slow postinst", 60)
    # dpkg dies while the postinst runs: rctl-slowd is unpacked (its new binary in place), not configured.
    c.check(["sh", "-c", "kill -9 $(cat /srv/rctl/dpkg.pid) $(cat /srv/rctl/postinst.pid)"])
    wait_for(lambda: c.exec(["test", "-s", "/srv/rctl/apt.rc"]).returncode == 0, "apt to exit", 120)
    out = c.read_file("/srv/rctl/apt.out").decode()
    assert c.read_file("/srv/rctl/apt.rc").strip() == b"100", out  # apt says dpkg failed, as it should
    assert "Problem executing scripts DPkg::Post-Invoke" not in out and "Traceback" not in out, out
    state = c.check(["dpkg-query", "-W", "-f=${db:Status-Status}", "rctl-slowd"])
    assert state in ("half-configured", "unpacked"), state
    assert c.main_pid("rctl-slowd.service") == old, out  # not restarted on an unconfigured package
    assert f"rctl-slowd.service: defer: not restarted: dpkg has not finished configuring it (rctl-slowd is {state})" \
        in out, out
    pending = json.loads(c.read_file("/var/lib/restartctl/pending.json"))
    assert [u["unit"] for u in pending["units"]] == ["rctl-slowd.service"], pending
    # dpkg --configure -a finishes it; its post-invoke run (dpkg's own hook) restarts and reports.
    c.check(["rm", "/srv/rctl/slow"])
    r = c.exec(["dpkg", "--configure", "-a"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rctl-slowd.service: restarted" in r.stdout, r.stdout + r.stderr
    assert c.main_pid("rctl-slowd.service") not in (0, old)
    configured = [line.split()[1:] for line in c.read_file("/run/restartctl/journal").decode().splitlines()]
    assert ["dpkg", "configure", "rctl-slowd"] in configured  # status-logger saw it
