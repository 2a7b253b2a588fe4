"""Faults lose nothing (issue 21), for real: concurrent runs, Multi-Arch names, dpkg killed
mid-configure, full run and state directories, a killed hook, an oversized journal.

Each test runs the project's hook snippets under real apt/dpkg in a booted systemd 252
container and asserts apt's exit status, that every stale unit is reported by the same or
the next run, that nothing is reported (or restarted) twice, and that no package dpkg left
unconfigured is restarted.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
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
BACKLOG = "1 unit still pending from earlier runs"  # what a run with nothing new says of a listed unit
# Every start of rctl-demod.service leaves a line here: restarts are counted, not guessed.
COUNTING = ("[Service]\nExecStartPre=/bin/sh -c 'echo start >> /srv/rctl/demod-starts'\n"
            "ExecStop=/bin/sleep {stop}\n")


# Each version's binary differs (the version is in it): an upgrade really changes its content.
SLOWD_C = ("#include <stdio.h>\n#include <unistd.h>\n"
           "int main(void) { puts(\"rctl-slowd %s\"); fflush(stdout); for (;;) pause(); }\n")
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


def apt(c: Container, cfg: str, *args: str, suspend: bool = False) -> subprocess.CompletedProcess[str]:
    """apt-get as an administrator runs it; ``suspend``: restartctl only records (RESTARTCTL_SUSPEND=1)."""
    return c.exec(["apt-get", "-q", "-y", "-o", "Dpkg::Use-Pty=0", *args], timeout=180,
                  env={"APT_CONFIG": cfg, "DEBIAN_FRONTEND": "noninteractive",
                       **({"RESTARTCTL_SUSPEND": "1"} if suspend else {})})


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
    assert "rctl-demod.service: restart" in upgrade(c, cfg)  # list mode: reported, not restarted
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
    upgrade(c, cfg)
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


def fill(c: Container, mountpoint: str, size: str) -> None:
    """A small tmpfs on ``mountpoint`` (root's, mode 755), filled up."""
    c.check(["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "tmpfs", mountpoint])
    c.exec(["dd", "if=/dev/zero", f"of={mountpoint}/.fill", "bs=4096"])  # until ENOSPC


def upgrade(c: Container, cfg: str) -> str:
    """apt upgrades rctl-demod and its library, and exits 0 whatever happens in the hooks; its output."""
    r = apt(c, cfg, "install", "rctl-demod=2.0", "rctl-libdemo1=2.0")
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Traceback" not in out and "Problem executing scripts" not in out, out
    return out


def test_a_full_run_directory_loses_no_event(host: tuple[Container, str]) -> None:
    c, cfg = host
    fill(c, "/run/restartctl", "64k")
    out = upgrade(c, cfg)
    assert "I/O error" not in out and "Traceback" not in out and "error:" not in out, out
    assert "/run/restartctl/incomplete says the hooks could not record every event: looking at every " \
           "package changed since" in out, out
    assert len(re.findall(r"rctl-demod.service: restart: systemctl restart -- rctl-demod.service", out)) == 1, out
    assert c.exec(["sh", "-c", "ls /run/restartctl/lists/*.new"]).returncode != 0  # nothing left behind
    record = json.loads(c.read_file("/var/lib/restartctl/pending.json"))
    assert record["incomplete"] == [] and record["units"][0]["unit"] == "rctl-demod.service", record
    # Space again: the marker was made good, nothing is looked at twice; the unit is still pending.
    c.check(["rm", "/run/restartctl/.fill"])
    again = c.exec([RCTL, "hook"])
    assert "incomplete" not in again.stdout and BACKLOG in again.stdout, again.stdout
    assert c.exec(["test", "-e", "/run/restartctl/incomplete.claimed"]).returncode != 0


def test_a_half_written_line_in_a_full_run_directory_loses_no_event(host: tuple[Container, str]) -> None:
    c, cfg = host
    fill(c, "/run/restartctl", "64k")
    # One page free, and the journal takes all of it but 92 bytes: an append is cut in two.
    c.check(["sh", "-c", "truncate -s -4096 /run/restartctl/.fill && "
                         "yes '1 dpkg upgrade rctl-none' | head -n 154 > /run/restartctl/journal"])
    out = upgrade(c, cfg)
    assert "I/O error" not in out, out
    assert "says the hooks could not record every event" in out, out
    assert "rctl-demod.service: restart: systemctl restart -- rctl-demod.service" in out, out
    c.check(["rm", "/run/restartctl/.fill"])
    # The next run, with room again, reads the rest of the journal; the unit is pending, reported as such.
    again = c.exec([RCTL, "hook"])
    assert BACKLOG in again.stdout, again.stdout
    third = c.exec([RCTL, "hook"])
    assert "incomplete" not in third.stdout and "no valid event" not in third.stdout, third.stdout


def test_a_full_state_directory_is_named_and_loses_nothing(host: tuple[Container, str]) -> None:
    c, cfg = host
    fill(c, "/var/lib/restartctl", "64k")
    out = upgrade(c, cfg)
    assert "restartctl: error: cannot write /var/lib/restartctl/pending.json: No space left on device" in out, out
    assert "rctl-demod.service: restart" in out
    c.check(["rm", "/var/lib/restartctl/.fill"])
    c.write_file("/etc/restartctl/policy.toml", AUTO)
    # The journal was not consumed (the cursor lives in the record that could not be written):
    # the next run sees the transaction again, restarts, and records it.
    again = c.exec([RCTL, "hook"])
    assert "rctl-demod.service: restarted" in again.stdout, again.stdout + again.stderr
    assert starts(c) == 2
    quiet = c.exec([RCTL, "hook"])
    assert (quiet.stdout, quiet.stderr) == ("", ""), quiet


@pytest.mark.parametrize("command", [["hook"], ["apply", "--yes"]], ids=["hook", "apply"])
def test_a_killed_run_leaves_what_it_did_for_the_next_run(host: tuple[Container, str], command: list[str]) -> None:
    c, cfg = host
    c.write_file("/etc/systemd/system/rctl-demod.service.d/count.conf", COUNTING.format(stop=6))
    c.systemctl("daemon-reload")
    c.write_file("/etc/restartctl/policy.toml", AUTO)
    r = apt(c, cfg, "install", "rctl-demod=2.0", "rctl-libdemo1=2.0", suspend=True)
    assert r.returncode == 0 and "restartctl" not in r.stdout, r.stdout + r.stderr
    old = c.main_pid("rctl-demod.service")
    run = c.spawn([RCTL, *command])
    # The run has recorded its intent and waits on systemctl restart (the unit takes 6 s to stop).
    wait_for(lambda: c.show("rctl-demod.service", "ActiveState") == "deactivating", "the restart under way", 30)
    assert '"started"' in c.read_file("/var/lib/restartctl/actions.json").decode()  # the intent, on record
    c.check(["kill", "-9", str(run)])
    wait_for(lambda: starts(c) == 2, "systemd to finish the restart", 30)
    c.wait_active("rctl-demod.service")
    assert c.main_pid("rctl-demod.service") not in (0, old)
    later = c.exec([RCTL, "hook"])
    assert later.returncode == 0 and "Traceback" not in later.stderr, later
    assert f"rctl-demod.service: restarted by an interrupted run (pid {run}); verified again: active, " \
           "no replaced files in use" in later.stdout, later.stdout + later.stderr
    status = c.exec([RCTL, "status"])
    assert "1 restarted, 0 pending" in status.stdout, status.stdout
    # Reported once: the run after that has nothing to say, and restarted nothing more.
    quiet = c.exec([RCTL, "hook"])
    assert (quiet.stdout, quiet.stderr) == ("", ""), quiet
    assert starts(c) == 2


def test_an_oversized_journal_is_summarised_and_costs_later_runs_nothing(host: tuple[Container, str]) -> None:
    c, cfg = host

    def timed_hook() -> tuple[float, subprocess.CompletedProcess[str]]:
        t0 = time.monotonic()
        r = c.exec([RCTL, "hook"], timeout=120)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r
        return time.monotonic() - t0, r

    baseline, _ = timed_hook()  # nothing new, nothing pending
    r = apt(c, cfg, "install", "rctl-demod=2.0", "rctl-libdemo1=2.0", suspend=True)
    assert r.returncode == 0 and "restartctl" not in r.stdout, r.stdout + r.stderr
    # After the upgrade's events: 1,000 junk lines, then 10 MB of valid lines naming 230,000 packages.
    c.check(["sh", "-c", "awk 'BEGIN { for (i = 0; i < 1000; i++) print \"1 dpkg upgrade NOT/A/PACKAGE\"; "
                         "for (i = 0; i < 230000; i++) printf \"1 dpkg upgrade rctl-generated-package-%06d\\n\", i }' "
                         ">> /run/restartctl/journal"])
    assert int(c.check(["stat", "-c", "%s", "/run/restartctl/journal"])) > 10_000_000
    big, r = timed_hook()
    assert "1000 journal lines were no valid event" in r.stdout, r.stdout
    assert "the journal names more than 4096 packages" in r.stdout, r.stdout
    assert "rctl-demod.service: restart: systemctl restart -- rctl-demod.service" in r.stdout, r.stdout  # not lost
    record = c.read_file("/var/lib/restartctl/pending.json")
    assert len(record) < 16_384, len(record)  # units and findings, not 230,000 package names
    assert sorted(json.loads(record)["packages"]) == ["rctl-demod", f"rctl-libdemo1:{host_arch()}"]
    after, r = timed_hook()  # nothing new: what the big journal named costs nothing any more
    assert "journal" not in r.stdout and BACKLOG in r.stdout, r.stdout
    print(f"hook run: {baseline:.2f} s before, {big:.2f} s with a 10 MB journal, {after:.2f} s after")
    assert big < 20, big
    assert after < baseline + 3, (baseline, after)
