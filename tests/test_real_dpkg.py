"""Real dpkg upgrades of real packages under running processes, inside throw-away containers.

Each module-scoped container is an overlay of the host's / (writes vanish with it): one boots a
real systemd 252 as PID 1, the other has no systemd at all (the checkrestart-style fallback).
restartctl runs *inside* the container from the read-only checkout, as root, exactly as a user
would run it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.container import Container, wait_for
from tests.support.debs import multiarch

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parent.parent
LIB = f"/usr/lib/{multiarch()}/librctldemo.so.1"
OLDLIB = f"/usr/lib/{multiarch()}/librctlold.so.1"
UPGRADED = ("rctl-libdemo1", "rctl-demod", "rctl-sleeper", "rctl-oldlib1", "rctl-olduser")


def restartctl(c: Container, *args: str) -> tuple[int, Any]:
    r = c.exec(["/usr/bin/python3", "-m", "restart", *args, "--json"], env={"PYTHONPATH": str(REPO)})
    assert r.returncode in (0, 1), f"restartctl {args} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    assert r.stderr == "", r.stderr
    return r.returncode, json.loads(r.stdout)


def by_unit(doc: dict[str, Any]) -> dict[str | None, dict[str, Any]]:
    return {a["unit"]: a for a in doc["actions"]}


def stale_of(doc: dict[str, Any], pid: int) -> set[tuple[str, str, str | None]]:
    [proc] = [p for p in doc["processes"] if p["pid"] == pid]
    return {(s["kind"], s["path"], s["package"]) for s in proc["stale"]}


# ---------------------------------------------------------------- with systemd as PID 1

@pytest.fixture(scope="module")
def upgraded_systemd_host(systemd_container: Container,
                          demo_debs: dict[str, dict[str, Path]]) -> dict[str, Any]:
    """v1 installed and running as services, a user unit and a login session; then v2 installed."""
    c = systemd_container
    v1, v2 = demo_debs["1.0"], demo_debs["2.0"]
    c.install_debs([v1[n] for n in UPGRADED])
    c.systemctl("daemon-reload")
    c.systemctl("start", "rctl-demod.service")
    c.check(["systemd-run", "--quiet", "--unit=rctl-sleep.service", "--", "/usr/bin/rctl-sleeper"])
    c.wait_active("rctl-demod.service")
    c.wait_active("rctl-sleep.service")
    # A transient scope: processes systemd tracks but cannot restart.
    c.spawn(["systemd-run", "--quiet", "--scope", "--unit=rctl-scope.scope", "--", "/usr/bin/rctl-olduser"])
    c.wait_active("rctl-scope.scope")
    uid = c.create_user("alice")
    c.run_user_unit("alice", ["/usr/sbin/rctl-demod"], unit="rctl-userd.service")
    # A login session: su through PAM (pam_systemd) makes logind put it in session-N.scope.
    su_pid = c.spawn(["su", "-", "alice", "-c", "exec /usr/bin/rctl-olduser"])
    # su's child that became rctl-olduser (Debian 13's su may have another child a moment first)
    session = ["pgrep", "-P", str(su_pid), "-x", "rctl-olduser"]
    wait_for(lambda: c.exec(session).returncode == 0, "su's child", 10)
    session_pid = int(c.check(session).split()[0])
    wait_for(lambda: b"session-" in c.read_file(f"/proc/{session_pid}/cgroup"), "a login session scope", 10)
    pids = {"demod": c.main_pid("rctl-demod.service"), "sleep": c.main_pid("rctl-sleep.service"),
            "userd": c.main_pid("rctl-userd.service", user="alice"), "session": session_pid,
            "scope": int(c.read_file(f"{c.cgroup2_mount}{c.show('rctl-scope.scope', 'ControlGroup')}/cgroup.procs")
                         .split()[0])}
    code, before = restartctl(c, "plan")
    c.install_debs([v2[n] for n in UPGRADED])
    return {"c": c, "uid": uid, "pids": pids, "before": (code, before)}


def test_nothing_is_stale_before_the_upgrade(upgraded_systemd_host: dict[str, Any]) -> None:
    code, doc = upgraded_systemd_host["before"]
    ours = [p for p in doc["processes"] if any("rctl" in s["path"] for s in p["stale"])]
    assert ours == []


def test_service_mapping_the_replaced_library(upgraded_systemd_host: dict[str, Any]) -> None:
    c, pids = upgraded_systemd_host["c"], upgraded_systemd_host["pids"]
    code, doc = restartctl(c, "plan")
    assert code == 1
    assert stale_of(doc, pids["demod"]) == {("exe", "/usr/sbin/rctl-demod", "rctl-demod"),
                                            ("code", LIB, "rctl-libdemo1:amd64")}
    action = by_unit(doc)["rctl-demod.service"]
    assert (action["kind"], action["action"], action["argv"]) == (
        "system", "restart", ["systemctl", "restart", "--", "rctl-demod.service"])
    assert action["pids"] == [pids["demod"]]
    assert action["packages"] == ["rctl-demod", "rctl-libdemo1:amd64"]


def test_transient_service_with_replaced_executable(upgraded_systemd_host: dict[str, Any]) -> None:
    c, pids = upgraded_systemd_host["c"], upgraded_systemd_host["pids"]
    _, doc = restartctl(c, "plan")
    assert stale_of(doc, pids["sleep"]) == {("exe", "/usr/bin/rctl-sleeper", "rctl-sleeper")}
    assert by_unit(doc)["rctl-sleep.service"]["argv"] == ["systemctl", "restart", "--", "rctl-sleep.service"]


def test_scope_is_reported_not_restarted(upgraded_systemd_host: dict[str, Any]) -> None:
    c, pids = upgraded_systemd_host["c"], upgraded_systemd_host["pids"]
    _, doc = restartctl(c, "plan")
    action = by_unit(doc)["rctl-scope.scope"]
    assert (action["kind"], action["action"], action["argv"]) == ("system", "notify", None)
    # The library was recorded under /lib in the package's list: merged-/usr aliasing found it.
    assert ("code", OLDLIB, "rctl-oldlib1") in stale_of(doc, pids["scope"])


def test_user_unit_belongs_to_its_user(upgraded_systemd_host: dict[str, Any]) -> None:
    c, pids, uid = upgraded_systemd_host["c"], upgraded_systemd_host["pids"], upgraded_systemd_host["uid"]
    _, doc = restartctl(c, "plan")
    [proc] = [p for p in doc["processes"] if p["pid"] == pids["userd"]]
    assert proc["uid"] == uid
    assert proc["unit"]["kind"] == "user" and proc["unit"]["name"] == "rctl-userd.service"
    assert proc["unit"]["uid"] == uid
    [action] = [a for a in doc["actions"] if a["kind"] == "user"]
    assert (action["action"], action["argv"], action["uid"]) == ("notify", None, uid)
    assert action["suggested"] == ["systemctl", "--user", "-M", f"{uid}@", "restart", "--", "rctl-userd.service"]


def test_login_session(upgraded_systemd_host: dict[str, Any]) -> None:
    c, pids, uid = upgraded_systemd_host["c"], upgraded_systemd_host["pids"], upgraded_systemd_host["uid"]
    _, doc = restartctl(c, "plan")
    [proc] = [p for p in doc["processes"] if p["pid"] == pids["session"]]
    assert proc["unit"]["kind"] == "session" and proc["unit"]["uid"] == uid
    assert proc["unit"]["name"].startswith("session-")
    action = by_unit(doc)[proc["unit"]["name"]]
    assert (action["action"], action["argv"]) == ("notify", None)


def test_packages_option_scopes_to_a_transaction(upgraded_systemd_host: dict[str, Any]) -> None:
    c = upgraded_systemd_host["c"]
    _, doc = restartctl(c, "scan", "--packages", "rctl-sleeper")
    assert [u["name"] for u in doc["units"]] == ["rctl-sleep.service"]
    code, doc = restartctl(c, "scan", "--packages", "base-files")
    assert code == 0 and doc["units"] == []


def test_the_planned_command_fixes_the_service(upgraded_systemd_host: dict[str, Any]) -> None:
    c = upgraded_systemd_host["c"]
    _, doc = restartctl(c, "plan")
    argv = by_unit(doc)["rctl-demod.service"]["argv"]
    c.check(argv)
    c.wait_active("rctl-demod.service")
    _, after = restartctl(c, "plan")
    assert "rctl-demod.service" not in by_unit(after)
    assert "rctl-sleep.service" in by_unit(after)


def test_text_report(upgraded_systemd_host: dict[str, Any]) -> None:
    c = upgraded_systemd_host["c"]
    r = c.exec(["/usr/bin/python3", "-m", "restart", "plan"], env={"PYTHONPATH": str(REPO)})
    assert r.returncode == 1
    assert "restart: systemctl restart -- rctl-sleep.service" in r.stdout
    assert "(login session of user" in r.stdout
    assert r.stdout.splitlines()[1].startswith("Plan: ")  # the summary first


# ---------------------------------------------------------------- without systemd

@pytest.fixture(scope="module")
def upgraded_plain_host(plain_container: Container, demo_debs: dict[str, dict[str, Path]]) -> dict[str, Any]:
    c = plain_container
    v1, v2 = demo_debs["1.0"], demo_debs["2.0"]
    c.install_debs([v1[n] for n in UPGRADED])
    c.check(["/etc/init.d/rctl-demod", "start"])
    wait_for(lambda: c.exec(["test", "-s", "/run/rctl-demod.pid"]).returncode == 0, "rctl-demod's pidfile", 10)
    demod = int(c.read_file("/run/rctl-demod.pid"))
    sleeper = c.spawn(["/usr/bin/rctl-sleeper"])
    olduser = c.spawn(["/usr/bin/rctl-olduser"])
    c.install_debs([v2[n] for n in UPGRADED])
    return {"c": c, "pids": {"demod": demod, "sleeper": sleeper, "olduser": olduser}}


def test_no_systemd_guesses_the_init_script(upgraded_plain_host: dict[str, Any]) -> None:
    c, pids = upgraded_plain_host["c"], upgraded_plain_host["pids"]
    assert c.exec(["test", "-d", "/run/systemd/system"]).returncode != 0
    code, doc = restartctl(c, "plan")
    assert code == 1
    [proc] = [p for p in doc["processes"] if p["pid"] == pids["demod"]]
    assert proc["unit"]["guessed"] is True and proc["unit"]["name"] == "rctl-demod"
    action = by_unit(doc)["rctl-demod"]
    assert (action["action"], action["argv"]) == ("restart", ["invoke-rc.d", "rctl-demod", "restart"])


def test_no_systemd_and_no_init_script_is_unmanaged(upgraded_plain_host: dict[str, Any]) -> None:
    c, pids = upgraded_plain_host["c"], upgraded_plain_host["pids"]
    _, doc = restartctl(c, "plan")
    assert stale_of(doc, pids["sleeper"]) == {("exe", "/usr/bin/rctl-sleeper", "rctl-sleeper")}
    assert stale_of(doc, pids["olduser"]) == {("exe", "/usr/bin/rctl-olduser", "rctl-olduser"),
                                              ("code", OLDLIB, "rctl-oldlib1")}
    unmanaged = [a for a in doc["actions"] if a["kind"] == "none"]
    assert sorted(a["pids"][0] for a in unmanaged) == sorted([pids["sleeper"], pids["olduser"]])
    assert all(a["action"] == "notify" and a["argv"] is None for a in unmanaged)


def test_restarting_by_the_init_script_clears_it(upgraded_plain_host: dict[str, Any]) -> None:
    c = upgraded_plain_host["c"]
    c.check(["/etc/init.d/rctl-demod", "restart"])
    _, doc = restartctl(c, "plan")
    assert "rctl-demod" not in by_unit(doc)
