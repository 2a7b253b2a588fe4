"""unattended-upgrades, for real, in a systemd container: with MinimalSteps it runs apt's hooks
once per step; restartctl must answer the whole run with one report, after it has finished."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.checkout import install_hooks
from tests.support.container import Container, make_local_repo
from tests.support.debs import cached_debs

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parent.parent
UU_DEBS = ("unattended-upgrades", "python3-distro-info", "python3-dbus")
DEFERRED = "restartctl-after-unattended-upgrades.service"
UU_CONF = """\
#clear Unattended-Upgrade::Origins-Pattern;
Unattended-Upgrade::Origins-Pattern { "origin=rctl-test"; };
Unattended-Upgrade::MinimalSteps "true";
Unattended-Upgrade::Skip-Updates-On-Metered-Connections "false";
Unattended-Upgrade::OnlyOnACPower "false";
Unattended-Upgrade::Verbose "true";
"""


def journal(c: Container, *args: str) -> str:
    return c.exec(["journalctl", "--no-pager", "-o", "cat", *args]).stdout


@pytest.mark.parametrize("mode", ["list", "auto"])
def test_one_report_after_a_minimal_steps_run(container_factory: Callable[..., Container],
                                              demo_debs: dict[str, dict[str, Path]], mode: str) -> None:
    c = container_factory("rctl-uu", boot=True)
    install_hooks(c)
    c.write_file("/etc/restartctl/policy.toml", f'[settings]\nunattended_mode = "{mode}"\n')
    names = ("rctl-libdemo1", "rctl-demod", "rctl-sleeper")
    repo = c.scratch / "uurepo"
    make_local_repo(repo, [demo_debs[v][n] for v in ("1.0", "2.0") for n in names])
    # unattended-upgrades picks packages by the origin in the repository's Release file.
    release = (repo / "Release").read_text()
    (repo / "Release").write_text("Origin: rctl-test\nLabel: rctl-test\nSuite: stable\n"
                                  "Codename: rctl\n" + release)
    # Only our repository: the container has no network, and the host's lists must not count.
    c.check(["sh", "-c", "rm -rf /etc/apt/sources.list.d/* /var/lib/apt/lists/* /etc/apt/sources.list"])
    c.write_file("/etc/apt/sources.list.d/rctl.list", "deb [trusted=yes] file:/srv/rctl/uurepo ./\n")
    c.write_file("/etc/apt/apt.conf.d/51rctl-test", UU_CONF)
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    c.check(["apt-get", "-q", "update"], env=env)
    c.check(["apt-get", "-q", "install", "-y", "rctl-demod=1.0", "rctl-libdemo1=1.0", "rctl-sleeper=1.0"], env=env)
    c.install_debs(cached_debs(*UU_DEBS))
    c.systemctl("start", "rctl-demod.service")
    c.check(["systemd-run", "--quiet", "--unit=rctl-sleep.service", "--", "/usr/bin/rctl-sleeper"])
    c.wait_active("rctl-demod.service")
    c.wait_active("rctl-sleep.service")
    since = c.check(["date", "+%Y-%m-%d %H:%M:%S"]).strip()
    before = {u: c.main_pid(u) for u in ("rctl-demod.service", "rctl-sleep.service")}

    uu = c.exec(["unattended-upgrade", "-v"], env=env, timeout=300)
    log = c.read_file("/var/log/unattended-upgrades/unattended-upgrades.log").decode()
    assert uu.returncode == 0, uu.stdout + uu.stderr + log
    assert c.check(["dpkg-query", "-W", "-f=${Version}", "rctl-sleeper"]) == "2.0", log
    assert c.check(["dpkg-query", "-W", "-f=${Version}", "rctl-demod"]) == "2.0", log
    dpkg_log = c.read_file("/var/log/unattended-upgrades/unattended-upgrades-dpkg.log").decode()
    # MinimalSteps really did run apt (and so our Post-Invoke) more than once.
    assert dpkg_log.count("Log started") >= 2, dpkg_log
    assert "replaced files" not in dpkg_log  # no report inside the run...
    assert dpkg_log.count("restarts and one report follow when it is done") == 1  # ...but where it will be

    # Exactly one deferred run, after unattended-upgrade exited; wait for it to finish.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = c.exec(["systemctl", "show", "-P", "ActiveState", DEFERRED]).stdout.strip()
        logged = journal(c, "-t", "restartctl", "--since", since)
        if state in ("inactive", "failed") and "replaced files" in logged:
            break
        time.sleep(0.2)
    text = journal(c, "-t", "restartctl", "--since", since)
    headline = "replaced files"  # the one headline of a report, whatever its wording (list or auto)
    assert len([line for line in text.splitlines() if headline in line]) == 1, text
    if mode == "list":
        assert "rctl-demod.service: restart: systemctl restart" in text and "rctl-sleep.service: restart" in text
    else:  # exactly one restart per service, after the run, however many steps it had
        for unit in ("rctl-demod.service", "rctl-sleep.service"):
            assert text.count(f"{unit}: restarted") == 1, text
            assert c.main_pid(unit) not in (0, before[unit])
    assert "one report follow when it is done" in text
    runs = journal(c, "-u", DEFERRED, "--since", since)
    assert "replaced files" in runs  # from the deferred unit, not a step


def test_run_sh_only_downloads_the_container_packages() -> None:
    """tests/run.sh installs its host tools and only downloads what the containers install (on the
    host, unattended-upgrades would start upgrading the machine).  A static check of the script: an
    admin's own unattended-upgrades on the host is none of the suite's business."""
    text = (Path(__file__).resolve().parent / "run.sh").read_text(encoding="utf-8")

    def array(name: str) -> set[str]:
        body = re.search(rf"^{name}=\(([^)]*)\)", text, re.M | re.S)
        assert body is not None, name
        return {w for line in body.group(1).splitlines() for w in line.split("#")[0].split()}

    host, containers = array("debs"), array("container_debs")
    # what would act on the host once installed: upgrade it, run jobs, open a port
    acting = {"unattended-upgrades", "cron", "openssh-server"}
    assert acting <= containers and "python3" in host
    assert not host & acting
    installs = [line for line in text.splitlines()  # real installs, not apt-get -s (a simulation)
                if " install " in line and " -s " not in line and not line.lstrip().startswith("#")]
    assert installs and all("container_debs" not in line for line in installs), installs
