"""The apt and dpkg hooks, for real: apt-get and dpkg inside a systemd container run the
project's hook snippets (hook/), which call the checkout's restartctl as if it were installed."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.checkout import install_hooks, recorded
from tests.support.container import Container

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parent.parent
ALL = ("rctl-libdemo1", "rctl-demod", "rctl-sleeper", "rctl-oldlib1", "rctl-olduser", "rctl-failpost")
LIST_ONLY = '[settings]\nmode = "list"\nunattended_mode = "list"\n'
REPORT = re.compile(r"^restartctl: \d+ units?, \d+ packages? \(.*\) uses? replaced files:$", re.MULTILINE)
# What earlier runs left pending, in one line, when a run's own transaction touched none of it (issue 19).
BACKLOG = re.compile(r"^restartctl: \d+ units? still pending from earlier runs", re.MULTILINE)


def apt(c: Container, cfg: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return c.exec(["apt-get", "-q", "-o", "Dpkg::Use-Pty=0", *args], timeout=180,
                  env={"APT_CONFIG": cfg, "DEBIAN_FRONTEND": "noninteractive", **(env or {})})


@pytest.fixture
def host(container_factory: Callable[..., Container], demo_debs: dict[str, dict[str, Path]]) -> tuple[Container, str]:
    """A systemd container with the hooks installed and a local repository holding v1 and v2."""
    c = container_factory("rctl-hooks", boot=True)
    install_hooks(c)
    # These tests are about reporting once per transaction: list mode, nothing restarted.
    c.write_file("/etc/restartctl/policy.toml", LIST_ONLY)
    cfg = c.local_repo([demo_debs[v][n] for v in ("1.0", "2.0") for n in ALL])
    r = apt(c, cfg, "update")
    assert r.returncode == 0, r.stderr
    r = apt(c, cfg, "install", "rctl-demod=1.0", "rctl-libdemo1=1.0", "rctl-sleeper=1.0", "rctl-failpost=1.0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "restartctl" not in r.stdout + r.stderr  # nothing ran on old code: not a word
    c.systemctl("start", "rctl-demod.service")
    c.check(["systemd-run", "--quiet", "--unit=rctl-sleep.service", "--", "/usr/bin/rctl-sleeper"])
    c.wait_active("rctl-demod.service")
    c.wait_active("rctl-sleep.service")
    return c, cfg


def test_apt_upgrade_reports_once_for_the_whole_transaction(host: tuple[Container, str]) -> None:
    c, cfg = host
    r = apt(c, cfg, "install", "rctl-demod=2.0", "rctl-libdemo1=2.0", "rctl-sleeper=2.0")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert len(REPORT.findall(out)) == 1, out  # apt ran dpkg more than once; one report
    assert "rctl-demod.service" in out and "rctl-sleep.service" in out  # shown; the facts from the record:
    assert recorded(c) == {"rctl-demod.service": ("restart", "listed"), "rctl-sleep.service": ("restart", "listed")}
    assert "Problem executing scripts" not in out and "Traceback" not in out
    pending = json.loads(c.read_file("/var/lib/restartctl/pending.json"))
    assert set(pending["packages"]) == {"rctl-demod", "rctl-libdemo1:amd64", "rctl-sleeper"}
    # The events were consumed: a run with nothing new shows only what is still pending...
    again = c.exec(["/usr/sbin/restartctl", "hook", "--trigger", "manual"])
    assert again.returncode == 0 and len(BACKLOG.findall(again.stdout)) == 1, again.stdout
    # ...and once the services are restarted, nothing at all.
    c.systemctl("restart", "rctl-demod.service", "rctl-sleep.service")
    quiet = c.exec(["/usr/sbin/restartctl", "hook", "--trigger", "manual"])
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    assert json.loads(c.read_file("/var/lib/restartctl/pending.json"))["packages"] == []


def test_plain_dpkg_reports_once(host: tuple[Container, str], demo_debs: dict[str, dict[str, Path]]) -> None:
    c, _ = host
    deb = c.copy_in(demo_debs["2.0"]["rctl-sleeper"])
    r = c.exec(["dpkg", "-i", deb])
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(REPORT.findall(r.stdout)) == 1, r.stdout
    assert "rctl-sleep.service" in r.stdout and "rctl-demod.service" not in r.stdout


def test_failed_postinst_still_reports_and_never_breaks_apt(host: tuple[Container, str]) -> None:
    c, cfg = host
    r = apt(c, cfg, "install", "rctl-failpost=2.0", "rctl-sleeper=2.0")
    out = r.stdout + r.stderr
    assert r.returncode == 100, out  # dpkg failed, and apt says so, as it should
    assert "restartctl: dpkg reported errors for: rctl-failpost" in out
    assert "rctl-sleep.service: restart" in out
    assert "Problem executing scripts DPkg::Post-Invoke" not in out  # our hook exited 0


def test_suspended_run_keeps_the_transaction_for_later(host: tuple[Container, str]) -> None:
    c, cfg = host
    r = apt(c, cfg, "install", "rctl-sleeper=2.0", env={"RESTARTCTL_SUSPEND": "1"})
    assert r.returncode == 0 and "restartctl" not in r.stdout + r.stderr
    later = c.exec(["/usr/sbin/restartctl", "hook"])
    assert len(REPORT.findall(later.stdout)) == 1 and "rctl-sleep.service" in later.stdout


def test_concurrent_runs_are_serialised(host: tuple[Container, str]) -> None:
    c, cfg = host
    r = apt(c, cfg, "install", "rctl-sleeper=2.0", env={"RESTARTCTL_SUSPEND": "1"})
    assert r.returncode == 0
    both = c.exec(["sh", "-c", "/usr/sbin/restartctl hook > /srv/rctl/a 2>&1 & "
                               "/usr/sbin/restartctl hook > /srv/rctl/b 2>&1 & wait"])
    assert both.returncode == 0
    outs = [c.read_file(f"/srv/rctl/{n}").decode() for n in "ab"]
    assert all("error" not in o for o in outs), outs
    # the second sees what is pending: the first run's report, or the backlog line
    assert all(len(REPORT.findall(o)) + len(BACKLOG.findall(o)) == 1 for o in outs), outs
    journal = c.read_file("/run/restartctl/journal")
    assert json.loads(c.read_file("/var/lib/restartctl/pending.json"))["journal"]["offset"] == len(journal)
    assert json.loads(c.read_file("/var/lib/restartctl/pending.json"))["packages"] == ["rctl-sleeper"]


def test_removed_but_not_purged_never_breaks_apt_or_dpkg(host: tuple[Container, str]) -> None:
    c, cfg = host
    c.check(["rm", "-f", "/usr/sbin/restartctl", "/usr/lib/restartctl/dpkg-hook"])  # conffiles stay
    r = apt(c, cfg, "install", "rctl-sleeper=2.0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "restartctl" not in r.stdout and "E:" not in r.stderr


def test_journal_records_what_apt_and_dpkg_did(host: tuple[Container, str]) -> None:
    c, cfg = host
    r = apt(c, cfg, "install", "rctl-sleeper=2.0", "rctl-oldlib1=1.0")
    assert r.returncode == 0
    r = apt(c, cfg, "remove", "rctl-oldlib1")
    assert r.returncode == 0
    events = {tuple(line.split()[1:]) for line in c.read_file("/run/restartctl/journal").decode().splitlines()}
    assert ("apt", "upgrade", "rctl-sleeper:amd64") in events      # Pre-Install-Pkgs, protocol 3
    assert ("dpkg", "upgrade", "rctl-sleeper") in events           # status-logger
    assert ("apt", "install", "rctl-oldlib1:amd64") in events
    assert ("apt", "remove", "rctl-oldlib1:amd64") in events
    assert ("dpkg", "remove", "rctl-oldlib1") in events
    # The file list of the package apt removed was kept before dpkg deleted it.
    kept = c.read_file("/run/restartctl/lists/rctl-oldlib1.list").decode()
    assert "/librctlold.so.1" in kept


def test_reboot_policy_flags_the_host_for_automatic_reboot(host: tuple[Container, str]) -> None:
    c, cfg = host
    c.write_file("/etc/restartctl/policy.toml", LIST_ONLY + '\n[[rule]]\npackage = "rctl-libdemo1"\n'
                                                            'action = "reboot"\nreason = "test: core library"\n')
    r = apt(c, cfg, "install", "rctl-demod=2.0", "rctl-libdemo1=2.0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rctl-demod.service: reboot: test: core library" in r.stdout, r.stdout
    assert c.read_file("/run/reboot-required") == b"*** System restart required ***\n"
    # Every package whose replaced files the unit uses (its own executable's, and the library's).
    assert sorted(c.read_file("/run/reboot-required.pkgs").decode().splitlines()) == ["rctl-demod", "rctl-libdemo1"]
    apt(c, cfg, "install", "--reinstall", "rctl-libdemo1=2.0")  # another run: appended once, never twice
    assert sorted(c.read_file("/run/reboot-required.pkgs").decode().splitlines()) == ["rctl-demod", "rctl-libdemo1"]
