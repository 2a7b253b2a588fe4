"""Precision on real upgrades (issue 12): only what a transaction really left stale is a finding.

Real apt and dpkg inside systemd containers run the project's hooks; each test checks one
way a finding used to be untrue (the transaction's own processes, unchanged content, ...).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.checkout import install_hooks
from tests.support.container import Container
from tests.support.debs import multiarch

pytestmark = pytest.mark.real

LIST_ONLY = '[settings]\nmode = "list"\nunattended_mode = "list"\n'


def apt(c: Container, cfg: str, *args: str) -> subprocess.CompletedProcess[str]:
    return c.exec(["apt-get", "-q", "-o", "Dpkg::Use-Pty=0", *args], timeout=180,
                  env={"APT_CONFIG": cfg, "DEBIAN_FRONTEND": "noninteractive"})


@pytest.fixture
def host(container_factory: Callable[..., Container], demo_debs: dict[str, dict[str, Path]]) -> tuple[Container, str]:
    """A systemd container with the hooks, list mode, and a local repository of the demo v1 and v2."""
    c = container_factory("rctl-precise", boot=True)
    install_hooks(c)
    c.write_file("/etc/restartctl/policy.toml", LIST_ONLY)
    c.check(["rm", "-f", "/usr/sbin/policy-rc.d"])
    cfg = c.local_repo([demo_debs[v][n] for v in ("1.0", "2.0") for n in ("rctl-libdemo1", "rctl-demod")])
    r = apt(c, cfg, "update")
    assert r.returncode == 0, r.stderr
    r = apt(c, cfg, "install", "rctl-libdemo1=1.0", "rctl-demod=1.0")
    assert r.returncode == 0, r.stdout + r.stderr
    return c, cfg


def test_the_apt_that_runs_the_hook_is_no_finding(host: tuple[Container, str]) -> None:
    """apt-get itself maps a library the transaction upgrades (here by LD_PRELOAD, as apt maps
    libapt-pkg): run from a login session, it is stale when its own Post-Invoke hook reports,
    and it must not be reported, nor make its session "log out"."""
    c, cfg = host
    lib = f"/usr/lib/{multiarch()}/librctldemo.so.1"
    # A control: a process that maps the library and is no ancestor of the hook is still found.
    c.spawn(["env", f"LD_PRELOAD={lib}", "sleep", "1000"])
    c.write_file("/srv/rctl/upgrade.sh",
                 f"#!/bin/sh\nexec env APT_CONFIG={cfg} DEBIAN_FRONTEND=noninteractive LD_PRELOAD={lib} "
                 "apt-get -q -o Dpkg::Use-Pty=0 install rctl-libdemo1=2.0 rctl-demod=2.0 "
                 "> /srv/rctl/apt.out 2>&1\n", mode=0o755)
    # runuser -l opens a PAM session: pam_systemd puts apt-get into a logind session scope.
    r = c.exec(["runuser", "-l", "root", "-c", "/srv/rctl/upgrade.sh; cat /proc/self/cgroup"], timeout=180)
    out = c.read_file("/srv/rctl/apt.out").decode()
    assert r.returncode == 0, out + r.stderr
    assert "session-" in r.stdout, r.stdout  # it really ran in a login session
    report = out.split("Setting up rctl-demod (2.0)")[-1]
    assert "restartctl: 1 unit still uses replaced files" in report, out
    assert "sleep" in c.exec(["journalctl", "--no-pager", "-o", "cat", "-t", "restartctl"]).stdout
    assert "login session" not in report and "apt-get" not in report, out


def test_a_reinstall_restarts_nothing_and_lists_the_files_as_unchanged(host: tuple[Container, str]) -> None:
    """apt-get install --reinstall replaces every file by an identical one: the running service
    maps a deleted inode, but the content is the same; the hook says nothing, scan --all lists
    the files as unchanged, and a real upgrade afterwards is still found."""
    c, cfg = host
    c.write_file("/etc/restartctl/policy.toml", "")  # the vendor default: auto, restarts
    c.systemctl("start", "rctl-demod.service")
    c.wait_active("rctl-demod.service")
    pid = c.main_pid("rctl-demod.service")
    r = apt(c, cfg, "install", "--reinstall", "rctl-libdemo1=1.0", "rctl-demod=1.0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "restartctl" not in r.stdout + r.stderr, r.stdout
    assert c.main_pid("rctl-demod.service") == pid
    maps = c.read_file(f"/proc/{pid}/maps").decode()
    assert "librctldemo.so.1 (deleted)" in maps  # really replaced
    doc = json.loads(c.exec(["/usr/sbin/restartctl", "scan", "--all", "--json"]).stdout)
    assert doc["processes"] == [] and doc["units"] == [], doc
    same = {(p["pid"], f["package"], f["path"].rpartition("/")[2]) for p in doc["unchanged"] for f in p["stale"]}
    assert (pid, "rctl-libdemo1:amd64", "librctldemo.so.1") in same, doc
    text = c.exec(["/usr/sbin/restartctl", "scan", "--all"]).stdout
    assert "content did not change" in text and "librctldemo.so.1" in text, text
    # The control: a real upgrade of the same package, content changed, is found and restarted.
    r = apt(c, cfg, "install", "rctl-libdemo1=2.0", "rctl-demod=2.0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rctl-demod.service: restarted" in r.stdout, r.stdout
