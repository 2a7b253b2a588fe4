"""Precision on real upgrades (issue 12): only what a transaction really left stale is a finding.

Real apt and dpkg inside systemd containers run the project's hooks; each test checks one
way a finding used to be untrue (the transaction's own processes, unchanged content, ...).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.checkout import install_hooks
from tests.support.container import Container, wait_for
from tests.support.debs import cached_debs, multiarch

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
    assert re.search(r"^restartctl: 1 unit, 1 package \(rctl-libdemo1:amd64\) uses replaced files:$", report, re.M), out
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


def test_identical_content_is_judged_against_what_the_process_can_have_loaded(host: tuple[Container, str]) -> None:
    """The checksums kept are those from just before the transaction, with the time that older version
    was unpacked: a downgrade back to content a restarted service no longer maps is no "unchanged"
    file (keeping the first checksums of the boot made it one, and the restart was missed), and
    a process older than the last version still maps an older one even when a reinstall changes nothing."""
    c, cfg = host
    c.write_file("/etc/restartctl/policy.toml", "")  # the vendor default: auto, restarts
    unit = "rctl-demod.service"
    c.systemctl("start", unit)
    c.wait_active(unit)
    # 2.0 arrives while the hook is suspended; the service is then restarted by hand onto 2.0.
    r = c.exec(["env", "RESTARTCTL_SUSPEND=1", "APT_CONFIG=" + cfg, "DEBIAN_FRONTEND=noninteractive",
                "apt-get", "-q", "-o", "Dpkg::Use-Pty=0", "install", "rctl-libdemo1=2.0", "rctl-demod=2.0"],
               timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    c.systemctl("restart", unit)
    c.wait_active(unit)
    pid = c.main_pid(unit)
    # Back to 1.0: its content equals what the boot had first, but not what the service maps.
    r = apt(c, cfg, "install", "--allow-downgrades", "rctl-libdemo1=1.0", "rctl-demod=1.0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{unit}: restarted" in r.stdout, r.stdout
    assert c.main_pid(unit) not in (0, pid)
    # An older process (started on 1.0, before 2.0 and back) is still on other content after a reinstall.
    lib = f"/usr/lib/{multiarch()}/librctldemo.so.1"
    r = apt(c, cfg, "install", "rctl-libdemo1=2.0", "rctl-demod=2.0")
    assert r.returncode == 0, r.stdout + r.stderr
    old = c.spawn(["env", f"LD_PRELOAD={lib}", "sleep", "1000"])  # maps 2.0
    r = apt(c, cfg, "install", "--allow-downgrades", "rctl-libdemo1=1.0", "rctl-demod=1.0")
    assert r.returncode == 0, r.stdout + r.stderr
    r = apt(c, cfg, "install", "--reinstall", "rctl-libdemo1=1.0", "rctl-demod=1.0")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(c.exec(["/usr/sbin/restartctl", "scan", "--all", "--json"]).stdout)
    assert old in {p["pid"] for p in doc["processes"]}, doc  # maps 2.0: not the content now installed


def test_status_shows_only_what_is_still_true(host: tuple[Container, str]) -> None:
    """A service left stale (list mode) is pending; once its processes are gone (stopped by
    hand), status drops it without a scan, and says so."""
    c, cfg = host
    c.systemctl("start", "rctl-demod.service")
    c.wait_active("rctl-demod.service")
    r = apt(c, cfg, "install", "rctl-libdemo1=2.0", "rctl-demod=2.0")
    assert r.returncode == 0 and "rctl-demod.service" in r.stdout, r.stdout
    st = c.exec(["/usr/sbin/restartctl", "status"])
    assert st.returncode == 1 and "rctl-demod.service (system): restart: service uses" in st.stdout, st.stdout
    c.systemctl("stop", "rctl-demod.service")
    st = c.exec(["/usr/sbin/restartctl", "status"])
    assert st.returncode == 0, st.stdout
    assert "rctl-demod.service" not in st.stdout and "1 unit(s) pending at that run" in st.stdout, st.stdout
    doc = json.loads(c.exec(["/usr/sbin/restartctl", "status", "--json"]).stdout)
    assert doc["last_run"]["units"] == [] and doc["last_run"]["exited"] == 1, doc


SSH_DEBS = ("openssh-client", "openssh-sftp-server", "runit-helper", "libwrap0", "openssh-server")


def test_an_ssh_login_is_told_on_its_terminal(container_factory: Callable[..., Container],
                                              demo_debs: dict[str, dict[str, Path]]) -> None:
    """A real ssh login (openssh-server, PAM, logind) runs a program of the upgraded package: logind's
    record of the session names no terminal, the notice still reaches its pts (found through utmp,
    as loginctl finds it; on Debian 13, which writes no utmp, as the program's controlling terminal),
    and the log says so."""
    c = container_factory("rctl-ssh", boot=True)
    install_hooks(c)
    c.write_file("/etc/restartctl/policy.toml", LIST_ONLY)
    c.install_debs([demo_debs["1.0"][n] for n in ("rctl-libdemo1", "rctl-demod")])
    c.install_debs(cached_debs(*SSH_DEBS))
    c.create_user("bob")
    c.systemctl("start", "systemd-user-sessions.service", "ssh.service")  # (removes /run/nologin)
    c.wait_active("ssh.service")
    c.check(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", "/root/.ssh/id"])
    c.check(["install", "-d", "-m", "700", "-o", "bob", "-g", "bob", "/home/bob/.ssh"])
    c.check(["install", "-m", "600", "-o", "bob", "-g", "bob", "/root/.ssh/id.pub", "/home/bob/.ssh/authorized_keys"])
    c.spawn(["ssh", "-tt", "-i", "/root/.ssh/id", "-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes",
             "bob@127.0.0.1", "exec /usr/sbin/rctl-demod"])
    try:
        wait_for(lambda: "session-" in c.exec(["sh", "-c", "cat /proc/$(pgrep -x -u bob rctl-demod)/cgroup"]).stdout,
                 "an ssh session running rctl-demod", 30)
    except AssertionError as e:  # say why: the client's output and sshd's log
        why = c.exec(["sh", "-c", "cat /srv/rctl/spawn-*.log; journalctl -u ssh --no-pager | tail"]).stdout
        raise AssertionError(why) from e
    records = c.exec(["sh", "-c", "grep -D skip -l '^USER=bob' /run/systemd/sessions/* | xargs -r cat"]).stdout
    assert "REMOTE=1" in records and "TTY=" not in records, records  # logind names no terminal
    c.install_debs([demo_debs["2.0"][n] for n in ("rctl-libdemo1", "rctl-demod")])
    r = c.exec(["/usr/sbin/restartctl", "apply", "--yes"], timeout=120)
    assert "login session of user" in r.stdout, r.stdout + r.stderr
    try:
        wait_for(lambda: "software update replaced files" in c.exec(["sh", "-c", "cat /srv/rctl/spawn-*.log"]).stdout,
                 "the notice on the ssh client's terminal", 10)
    except AssertionError as e:  # say why: restartctl's log, the login records, the session's terminals
        why = c.exec(["sh", "-c", "journalctl --no-pager -o cat -t restartctl; ls -l /run/utmp; who;"
                      " grep -D skip . /run/systemd/sessions/*; ls -l /proc/$(pgrep -x -u bob rctl-demod)/fd;"
                      " ps -eo pid,ppid,user,tty,sess,args"]).stdout
        raise AssertionError(why) from e
    journal = c.exec(["journalctl", "--no-pager", "-o", "cat", "-t", "restartctl"]).stdout
    assert re.search(r"told user bob \(session \w+\) on pts/\d+ to restart: rctl-demod", journal), journal
