"""The Debian 13 tier: restartctl's .deb on a debootstrapped trixie root, systemd 257, pure cgroup v2.

Why: Debian 13 is where most new installs run restartctl: systemd 257 on a pure cgroup v2 tree, Python
3.13, apt 3.0, python3-apt 3.0, util-linux's newer login. The rest of the suite runs on the host's
release (an overlay of the host's ``/``); this tier boots a minimal trixie root (debootstrapped once,
cached under tests/.cache/roots, only ever an overlay's lower layer) with
``SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1``, installs the .deb the suite built, and runs the end-to-end
scenarios there: the apt hook once per run with a verified restart, a lingering user's unit, a login
session's terminal, a Python module upgrade, a replaced executable through the dpkg-only path, and
unattended-upgrades acting once after its run.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.checkout import recorded
from tests.support.container import Container, make_local_repo, wait_for
from tests.support.debs import build_deb
from tests.support.demohost import bus_and_systemctl, restart_jobs_end_as_systemctls
from tests.support.package import Built
from tests.support.rootfs import TRIXIE_TIER
from tests.support.terminal import at_terminal

# The first run debootstraps the root (about 3 minutes cold; tests/conftest.py starts it early).
pytestmark = [pytest.mark.real, pytest.mark.timeout(1500)]

SUITE = TRIXIE_TIER[0]
NAMES = ("rctl-libdemo1", "rctl-demod", "rctl-sleeper")
LIST_ONLY = '[settings]\nmode = "list"\nunattended_mode = "list"\n'


def reports(text: str) -> int:
    """How many reports ``text`` holds: each has one headline naming the replaced files."""
    return len([line for line in text.splitlines() if "replaced files" in line])



@pytest.fixture
def c(container_factory: Callable[..., Container], trixie_root: Path, built: Built) -> Container:
    """A fresh trixie container (systemd as PID 1, pure cgroup v2) with restartctl's .deb installed."""
    c = container_factory("rctl-trixie", boot=True, lower=trixie_root, repo=None, unified=True)
    c.install_debs([built.deb])
    return c


def apply(c: Container, *args: str, policy: str | None = None) -> str:
    if policy is not None:
        c.write_file("/etc/restartctl/policy.toml", policy)
    r = c.exec(["restartctl", "apply", *args], timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    return r.stdout + r.stderr


def start_demod(c: Container, debs: dict[str, dict[str, Path]]) -> int:
    c.install_debs([debs["1.0"][n] for n in NAMES])
    c.systemctl("start", "rctl-demod.service")
    c.wait_active("rctl-demod.service")
    return c.main_pid("rctl-demod.service")


def test_the_tier_is_debian_13_on_pure_cgroup_v2(c: Container) -> None:
    """What the rest of this module relies on: the .deb installed, a unified-only cgroup tree."""
    assert c.check(["stat", "-fc", "%T", "/sys/fs/cgroup"]).strip() == "cgroup2fs"
    assert c.check(["sh", "-c", ". /etc/os-release; echo $VERSION_CODENAME"]).strip() == SUITE
    assert c.check(["dpkg-query", "-W", "-f=${Status}", "restartctl"]) == "install ok installed"
    assert unified_cgroup(c, 1) == "/init.scope"
    # The package's report timer (its units under /usr/lib/systemd/system, none in the aliased /lib),
    # enabled and started by its postinst.
    assert c.show("restartctl-report.timer", "FragmentPath") == "/usr/lib/systemd/system/restartctl-report.timer"
    assert c.check(["systemctl", "is-enabled", "restartctl-report.timer"]).strip() == "enabled"
    assert c.show("restartctl-report.timer", "ActiveState") == "active"


def unified_cgroup(c: Container, pid: int) -> str:
    """The process's cgroup v2 path; systemd 257 manages no v1 hierarchy (this hybrid host's kernel still
    lists its v1 ones, at their root, where a Debian 13 host has none)."""
    lines = c.check(["cat", f"/proc/{pid}/cgroup"]).splitlines()
    assert all(line.endswith(":/") for line in lines if not line.startswith("0::")), lines
    [path] = [line.removeprefix("0::") for line in lines if line.startswith("0::")]
    return path


def test_apt_hook_once_per_run_with_a_verified_restart(c: Container,
                                                       demo_debs: dict[str, dict[str, Path]]) -> None:
    cfg = c.local_repo([demo_debs[v][n] for v in ("1.0", "2.0") for n in NAMES])
    env = {"APT_CONFIG": cfg, "DEBIAN_FRONTEND": "noninteractive"}
    c.check(["apt-get", "-q", "update"], env=env)
    c.check(["apt-get", "-q", "install", "-y", *(f"{n}=1.0" for n in NAMES)], env=env)
    c.systemctl("start", "rctl-demod.service")
    c.wait_active("rctl-demod.service")
    old = c.main_pid("rctl-demod.service")
    assert unified_cgroup(c, old) == "/system.slice/rctl-demod.service"
    r = c.exec(["apt-get", "-q", "-o", "Dpkg::Use-Pty=0", "install", "-y", *(f"{n}=2.0" for n in NAMES)],
               env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert reports(r.stdout) == 1, r.stdout  # apt ran dpkg more than once: one report
    assert "rctl-demod.service" in r.stdout and recorded(c)["rctl-demod.service"] == ("restart", "done"), r.stdout
    new = c.main_pid("rctl-demod.service")
    assert new not in (0, old)
    assert "libdemo.so.1 (deleted)" not in c.check(["cat", f"/proc/{new}/maps"])
    assert c.exec(["restartctl", "status"]).returncode == 0


def _services_upgraded_under(c: Container, demo_debs: dict[str, dict[str, Path]], names: list[str], unit: str,
                             settings: str) -> dict[str, int]:
    """``names`` (each the unit file ``unit``) and rctl-demod.service running on the demo library 1.0, then
    2.0 installed under a policy that only lists (plus ``settings``): their main PIDs before the upgrade."""
    c.install_debs([demo_debs["1.0"][n] for n in NAMES])
    for name in names:
        c.write_file(f"/etc/systemd/system/{name}", unit)
    c.systemctl("daemon-reload")
    for name in [*names, "rctl-demod.service"]:
        c.systemctl("start", name)
        c.wait_active(name)
    old = {n: c.main_pid(n) for n in [*names, "rctl-demod.service"]}
    c.write_file("/etc/restartctl/policy.toml", LIST_ONLY + settings)  # the hook lists
    c.install_debs([demo_debs["2.0"][n] for n in NAMES])
    return old


def test_canary_then_a_wave_with_a_failure_on_systemd_257(c: Container,
                                                         demo_debs: dict[str, dict[str, Path]]) -> None:
    """Waves on pure cgroup v2: rctl-a0 alone (the canary), then the rest of the phase in one
    ``systemctl restart``; the unit that fails in the wave is failed, the others verified together."""
    breakable = "[Service]\nExecStart=/usr/bin/rctl-sleeper\nExecStartPre=/bin/sh -c 'test ! -e /srv/rctl/break-%N'\n"
    names = [f"rctl-a{i}.service" for i in range(4)]
    old = _services_upgraded_under(c, demo_debs, names, breakable, "max_parallel = 8\nsettle = 1\n")
    c.write_file("/srv/rctl/break-rctl-a2", "")
    r = c.exec(["restartctl", "apply", "--yes", "--json"], timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    units = {u["unit"]: u for u in json.loads(r.stdout)["applied"]}
    assert (units["rctl-a0.service"]["status"], units["rctl-a0.service"]["wave"]) == ("done", 1), units
    assert units["rctl-a2.service"]["status"] == "failed", units
    wave = ["rctl-a1.service", "rctl-a2.service", "rctl-a3.service", "rctl-demod.service"]
    assert {units[n]["wave"] for n in wave} == {2}, units
    for name in ("rctl-a0.service", "rctl-a1.service", "rctl-a3.service", "rctl-demod.service"):
        assert units[name]["status"] == "done" and units[name]["detail"] == "verified, up for 1 s", units[name]
        assert c.main_pid(name) not in (0, old[name])
        assert unified_cgroup(c, c.main_pid(name)) == f"/system.slice/{name}"


def test_systemds_word_on_its_bus_is_systemctls_on_systemd_257(c: Container) -> None:
    """restartctl asks PID 1 on its own socket what ``systemctl show`` would say (test_apply.py's
    test on systemd 252): the same answers from systemd 257, and the fallback with no socket."""
    c.write_file("/etc/systemd/system/rctl-a0.service", "[Service]\nExecStart=/bin/sleep infinity\n")
    c.write_file("/etc/systemd/system/rctl-fails.service", "[Service]\nExecStart=/bin/false\n")
    c.systemctl("daemon-reload")
    c.systemctl("start", "rctl-a0.service")
    c.systemctl("start", "rctl-fails.service", check=False)
    names = ["rctl-a0.service", "rctl-fails.service", "rctl-nothing.service", "systemd-journald.service"]
    found = bus_and_systemctl(c, names)
    assert found["asked"] == 1 and found["bus"] == found["systemctl"] == found["fallback"], found
    assert isinstance(found["bus"], dict) and found["bus"]["rctl-a0.service"]["ActiveState"] == "active", found


def test_restart_jobs_on_pid1s_bus_end_as_systemctls_on_systemd_257(c: Container) -> None:
    """restartctl's restart jobs on PID 1's own socket (test_apply.py's test on systemd 252): each
    ends as systemd 257 says, and systemctl agrees on which units were restarted."""
    restart_jobs_end_as_systemctls(c)


def test_ask_mode_picks_from_one_list_then_waves_on_systemd_257(c: Container,
                                                                demo_debs: dict[str, dict[str, Path]]) -> None:
    """Mode ask on a terminal (issue 14): the list once, one question, the picked units restarted
    in waves (a canary, then the rest together), the others left alone and pending."""
    names = [f"rctl-a{i}.service" for i in range(3)]
    old = _services_upgraded_under(c, demo_debs, names, "[Service]\nExecStart=/usr/bin/rctl-sleeper\n", "settle = 0\n")
    code, out = at_terminal(c, ["/usr/sbin/restartctl", "apply", "--mode", "ask"], [
        ("expect", "p: pick [Y/n/p/?] "), ("send", "p\n"),
        ("expect", "Enter: none)? "), ("send", "1 3-4\n"),
        ("expect", "restarted, ")])
    assert code == 0, out
    listed = [line.split()[1:3] for line in out.splitlines() if re.match(r"restartctl: +\d+  ", line)]
    assert listed == [["1", "rctl-a0.service:"], ["2", "rctl-a1.service:"], ["3", "rctl-a2.service:"],
                      ["4", "rctl-demod.service:"]], out
    assert "rctl-a1.service: left alone: declined at the prompt" in out, out
    now = {n: c.main_pid(n) for n in old}
    assert [n for n in old if now[n] != old[n]] == ["rctl-a0.service", "rctl-a2.service", "rctl-demod.service"]
    waves = {u["unit"]: u.get("wave") for u in json.loads(c.read_file("/var/lib/restartctl/pending.json"))["units"]
             if u.get("status") == "done"}
    assert waves["rctl-a0.service"] == 1 and waves["rctl-a2.service"] == waves["rctl-demod.service"] == 2, waves


def test_lingering_users_unit(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    """A user unit of type notify under a lingering user's manager: told by default, restarted by a rule."""
    c.install_debs([demo_debs["1.0"][n] for n in NAMES])
    uid = c.create_user("alice")
    c.user_systemctl("alice", "show", "-P", "Version", "--", "default.target")  # the manager answers
    prefix = ["runuser", "-u", "alice", "--"]
    c.check([*prefix, "systemd-run", "--user", "--quiet", "--unit=rctl-userd.service", "-p", "Type=notify",
             "--", "systemd-notify", "--ready", "--exec", ";", "/usr/sbin/rctl-demod"],
            env={"XDG_RUNTIME_DIR": f"/run/user/{uid}"})
    c.wait_active("rctl-userd.service", user="alice")
    old = c.main_pid("rctl-userd.service", user="alice")
    c.install_debs([demo_debs["2.0"][n] for n in NAMES])
    out = apply(c, "--yes")
    assert '"rctl-userd.service" (user ' in out and "notify" in out, out
    assert c.main_pid("rctl-userd.service", user="alice") == old
    # systemd >= 256: the lingering manager has a logind session of its own (CLASS=manager). Nobody
    # sits at it: it gets no notice, and the log claims none (issue 12).
    managers = c.exec(["sh", "-c", "grep -D skip -l '^CLASS=manager' /run/systemd/sessions/*"]).stdout
    assert managers.strip(), "no manager session: not systemd >= 256?"
    journal = c.exec(["journalctl", "--no-pager", "-o", "cat", "-t", "restartctl"]).stdout
    assert "told user alice" not in journal and "could not tell user alice (session" not in journal, journal
    assert f"could not tell user {uid}: no login session a person sits at" in journal, journal
    out = apply(c, "--yes", policy='[[rule]]\nscope = "user"\nunit = "rctl-*"\naction = "restart"\n')
    assert f'"rctl-userd.service" (user {uid}): restarted' in out, out
    assert c.main_pid("rctl-userd.service", user="alice") not in (0, old)
    assert c.show("rctl-userd.service", "Type", user="alice") == "notify"


def test_login_session_is_told_on_its_terminal(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    c.install_debs([demo_debs["1.0"][n] for n in NAMES])
    c.create_user("bob")
    c.check(["usermod", "--shell", "/usr/sbin/rctl-demod", "bob"])
    c.spawn(["script", "-qfc", "exec login -f bob", "/srv/rctl/bob.tty"])
    wait_for(lambda: "session-" in c.exec(["sh", "-c", "cat /proc/$(pgrep -x rctl-demod)/cgroup"]).stdout,
             "bob's login session", 20)
    c.install_debs([demo_debs["2.0"][n] for n in NAMES])
    out = apply(c, "--yes")
    assert "login session of user" in out, out
    wait_for(lambda: b"software update replaced files" in c.read_file("/srv/rctl/bob.tty"), "the notice", 10)
    assert b"rctl-demod" in c.read_file("/srv/rctl/bob.tty")


PYMOD = "/usr/lib/python3/dist-packages/rctl_trxmod/__init__.py"
PYD = """#!/usr/bin/python3
import time
import rctl_trxmod
open("/run/rctl-trx-pyd.ready", "w").write(rctl_trxmod.VERSION)
while True:
    time.sleep(60)
"""
PYD_UNIT = "[Unit]\nDescription=restartctl test Python daemon\n[Service]\nExecStart=/usr/bin/rctl-trx-pyd\n"


@pytest.fixture(scope="module")
def py_debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """A Python module package (two versions) and a daemon importing it (one version)."""
    out = tmp_path_factory.mktemp("rctl-trx")
    debs = {v: {"rctl-trx-pymod": build_deb(out, "rctl-trx-pymod", v, {PYMOD: f'VERSION = "{v}"\n'.encode()},
                                            depends="python3", arch="all")} for v in ("1.0", "2.0")}
    debs["1.0"]["rctl-trx-pyd"] = build_deb(
        out, "rctl-trx-pyd", "1.0",
        {"/usr/bin/rctl-trx-pyd": PYD.encode(), "/usr/lib/systemd/system/rctl-trx-pyd.service": PYD_UNIT.encode()},
        depends="python3, rctl-trx-pymod", arch="all")
    return debs


def plan(c: Container) -> dict[str, Any]:
    r = c.exec(["restartctl", "plan", "--json"], timeout=120)
    assert r.returncode in (0, 1) and not r.stderr, r.stdout + r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def planned(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["unit"]: a for a in doc["actions"] if a.get("unit")}


def stale(doc: dict[str, Any], pid: int) -> list[dict[str, Any]]:
    """The findings of process ``pid`` in a plan."""
    return [f for p in doc["processes"] if p["pid"] == pid for f in p["stale"]]


def test_python_module_upgrade(c: Container, py_debs: dict[str, dict[str, Path]]) -> None:
    """Python 3.13 imports a module at start; an upgrade of the module's package names the daemon."""
    c.write_file("/etc/restartctl/policy.toml", LIST_ONLY)  # the dpkg hook would restart it at once
    c.install_debs([py_debs["1.0"]["rctl-trx-pymod"], py_debs["1.0"]["rctl-trx-pyd"]])
    c.systemctl("start", "rctl-trx-pyd.service")
    wait_for(lambda: c.exec(["test", "-s", "/run/rctl-trx-pyd.ready"]).returncode == 0, "rctl-trx-pyd ready", 20)
    assert "rctl-trx-pyd.service" not in planned(plan(c))
    time.sleep(0.5)  # the upgrade comes clearly after the start (the rules' mtime tolerance)
    c.install_debs([py_debs["2.0"]["rctl-trx-pymod"]])
    action = planned(plan(c)).get("rctl-trx-pyd.service")
    assert action is not None and action["action"] == "restart" and action["packages"] == ["rctl-trx-pymod"], action
    old = c.main_pid("rctl-trx-pyd.service")
    assert [(f["kind"], f["path"]) for f in stale(plan(c), old)] == [("module", PYMOD)], stale(plan(c), old)
    out = apply(c, "--yes", "--packages", "rctl-trx-pymod")
    assert "rctl-trx-pyd.service: restarted" in out, out
    assert c.main_pid("rctl-trx-pyd.service") not in (0, old)


def test_replaced_executable_through_the_dpkg_only_path(c: Container,
                                                         demo_debs: dict[str, dict[str, Path]]) -> None:
    """Plain dpkg -i (no apt): the installed dpkg hook reports once, naming the unit whose program changed."""
    c.write_file("/etc/restartctl/policy.toml", LIST_ONLY)
    c.install_debs([demo_debs["1.0"][n] for n in NAMES])
    c.check(["systemd-run", "--quiet", "--unit=rctl-sleep.service", "--", "/usr/bin/rctl-sleeper"])
    c.wait_active("rctl-sleep.service")
    old = c.main_pid("rctl-sleep.service")
    r = c.exec(["dpkg", "-i", c.copy_in(demo_debs["2.0"]["rctl-sleeper"])], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert reports(r.stdout) == 1 and "rctl-sleep.service: restart" in r.stdout, r.stdout
    assert "rctl-demod.service" not in r.stdout
    doc = plan(c)
    assert planned(doc)["rctl-sleep.service"]["packages"] == ["rctl-sleeper"], doc
    assert ("exe", "/usr/bin/rctl-sleeper") in [(f["kind"], f["path"]) for f in stale(doc, old)], doc
    assert c.main_pid("rctl-sleep.service") == old  # list mode: nothing restarted


UU_CONF = """\
Unattended-Upgrade::Origins-Pattern { "origin=rctl-test"; };
Unattended-Upgrade::MinimalSteps "true";
Unattended-Upgrade::Skip-Updates-On-Metered-Connections "false";
Unattended-Upgrade::OnlyOnACPower "false";
"""
DEFERRED = "restartctl-after-unattended-upgrades.service"


def test_unattended_upgrades_acts_once(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    """Debian 13's unattended-upgrades, MinimalSteps: one restart per unit after the whole run."""
    c.write_file("/etc/restartctl/policy.toml", '[settings]\nunattended_mode = "auto"\n')
    repo = c.scratch / "uurepo"
    make_local_repo(repo, [demo_debs[v][n] for v in ("1.0", "2.0") for n in NAMES])
    release = (repo / "Release").read_text()
    (repo / "Release").write_text("Origin: rctl-test\nLabel: rctl-test\nSuite: stable\nCodename: rctl\n" + release)
    c.check(["sh", "-c", "rm -rf /etc/apt/sources.list.d/* /var/lib/apt/lists/* /etc/apt/sources.list"])
    c.write_file("/etc/apt/sources.list.d/rctl.list", "deb [trusted=yes] file:/srv/rctl/uurepo ./\n")
    c.write_file("/etc/apt/apt.conf.d/51rctl-test", UU_CONF)
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    c.check(["apt-get", "-q", "update"], env=env)
    c.check(["apt-get", "-q", "install", "-y", *(f"{n}=1.0" for n in NAMES)], env=env)
    c.systemctl("start", "rctl-demod.service")
    c.check(["systemd-run", "--quiet", "--unit=rctl-sleep.service", "--", "/usr/bin/rctl-sleeper"])
    units = ("rctl-demod.service", "rctl-sleep.service")
    for unit in units:
        c.wait_active(unit)
    before = {u: c.main_pid(u) for u in units}
    since = c.check(["date", "+%Y-%m-%d %H:%M:%S"]).strip()
    uu = c.exec(["unattended-upgrade", "-v"], env=env, timeout=300)
    assert uu.returncode == 0, uu.stdout + uu.stderr
    assert c.check(["dpkg-query", "-W", "-f=${Version}", "rctl-demod"]) == "2.0"
    dpkg_log = c.read_file("/var/log/unattended-upgrades/unattended-upgrades-dpkg.log").decode()
    assert dpkg_log.count("Log started") >= 2, dpkg_log  # MinimalSteps: apt's hooks ran more than once ...
    assert dpkg_log.count("restarts and one report follow when it is done") == 1, dpkg_log  # ... said once

    def journal(*args: str) -> str:
        return c.exec(["journalctl", "--no-pager", "-o", "cat", "--since", since, *args]).stdout

    wait_for(lambda: reports(journal("-u", DEFERRED)) >= 1
             and c.show(DEFERRED, "ActiveState") in ("inactive", "failed"), "the deferred run", 60)
    text = journal("-t", "restartctl")
    assert reports(text) == 1, text
    for unit in units:
        assert text.count(f"{unit}: restarted") == 1, text
        assert c.main_pid(unit) not in (0, before[unit])
