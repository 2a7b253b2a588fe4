"""The fleet examples: the Ansible playbook (real ansible-playbook, real restartctl over fixture hosts
and inside a systemd container) and the Prometheus alert rules (real promtool: check and unit tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fakeproc import ino, map_line
from tests.support.container import Container
from tests.support.fixtures import run_demod_then_upgrade
from tests.test_cli import EXE, LIB, Host
from tests.test_formats import promtool

REPO = Path(__file__).resolve().parent.parent
PLAYBOOK = REPO / "examples" / "ansible" / "fleet.yml"
RULES = REPO / "examples" / "prometheus" / "restartctl.rules.yml"
ANSIBLE = Path(sys.executable).parent / "ansible-playbook"
RESTARTCTL = ["/usr/bin/python3", "-m", "restart"]


# ---------------------------------------------------------------- running ansible-playbook

def ansible_env(tmp: Path) -> dict[str, str]:
    """Everything Ansible writes (~/.ansible, temp dirs) goes below ``tmp``; no config is picked up."""
    home = tmp / "ansible-home"
    home.mkdir(exist_ok=True)
    cfg = tmp / "ansible.cfg"
    cfg.write_text("")
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": str(home),
            "ANSIBLE_HOME": str(home), "ANSIBLE_CONFIG": str(cfg), "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_REMOTE_TEMP": str(home / "remote-tmp"), "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0"}


def playbook(tmp: Path, inventory: list[str], extra: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    if not os.access(ANSIBLE, os.X_OK):
        pytest.fail(f"{ANSIBLE} is missing: add ansible-core==2.19.14 to tests/requirements.txt "
                    f"(.venv/bin/pip install ansible-core==2.19.14)", pytrace=False)
    (tmp / "extra.json").write_text(json.dumps({"ansible_python_interpreter": "/usr/bin/python3",
                                                "restartctl_become": False, **extra}))
    return subprocess.run([str(ANSIBLE), *inventory, str(PLAYBOOK), "-e", f"@{tmp / 'extra.json'}"],
                          cwd=tmp, env=ansible_env(tmp), capture_output=True, text=True, timeout=300, check=False)


def fixture_host(base: Path, *, stale: bool = True, flagged: bool = False) -> list[str]:
    """A fixture host (tests/test_cli.Host): a stale service, a deferred dbus and a login session;
    returns the root options restartctl needs to look at it."""
    host = Host(base, systemd=True)
    if stale:
        host.add(100, cgroup="0::/system.slice/demod.service\n", name="demod")
        host.add(101, cgroup="0::/system.slice/dbus.service\n", name="dbus-daemon")
        host.add(102, cgroup="0::/user.slice/user-1000.slice/session-4.scope\n", uid=1000)
    else:
        fresh = map_line(EXE, ino(host.root, EXE)) + map_line(LIB, ino(host.root, LIB))
        host.add(100, cgroup="0::/system.slice/demod.service\n", maps=fresh)
    if flagged:
        (base / "run" / "reboot-required").write_text("*** System restart required ***\n")
    return [*host.argv(), "--state", str(base / "state")]


FAKE = """import json, sys
from pathlib import Path
host, what = sys.argv[1], sys.argv[2]
log = Path(sys.argv[3])
with log.open("a") as f:
    f.write(f"{what} {host}\\n")
if what == "health":
    print("degraded" if Path(f"{log}.{host}.unhealthy").exists() else "running")
    sys.exit(0)
assert sys.argv[4:7] == ["apply", "--yes", "--json"], sys.argv
failed = Path(f"{log}.{host}.fail").exists()
print(json.dumps({"schema": "restartctl/1", "pending": [],
                  "applied": [{"unit": "demod.service", "status": "failed" if failed else "done"}]}))
sys.exit(1 if failed else 0)
"""


class Fleet:
    """Three fixture hosts, all reached with the local connection: h1 and h2 have a service to
    restart, h3 has nothing stale.  Apply and the health check are recorded by a fake command."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.log = tmp / "calls.log"
        fake = tmp / "fake.py"
        fake.write_text(FAKE)
        hosts = {}
        for name, stale in (("h1", True), ("h2", True), ("h3", False)):
            hosts[name] = {
                "ansible_connection": "local",
                "restartctl_args": fixture_host(tmp / name, stale=stale),
                "restartctl_run_dir": str(tmp / name / "run"),
                "restartctl_apply_cmd": ["/usr/bin/python3", str(fake), name, "apply", str(self.log)],
                "restartctl_health_cmd": ["/usr/bin/python3", str(fake), name, "health", str(self.log)],
            }
        (tmp / "inventory.json").write_text(json.dumps({"all": {"hosts": hosts}}))

    def run(self, **extra: Any) -> subprocess.CompletedProcess[str]:
        return playbook(self.tmp, ["-i", str(self.tmp / "inventory.json")], {
            "restartctl_cmd": RESTARTCTL, "restartctl_environment": {"PYTHONPATH": str(REPO)},
            "restartctl_summary_file": str(self.tmp / "summary.json"), "restartctl_health_retries": 1,
            "restartctl_health_delay": 0, **extra})

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def summary(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((self.tmp / "summary.json").read_text())
        return result


def test_summary_of_a_fixture_host_against_localhost(tmp_path: Path) -> None:
    """`ansible-playbook -i localhost, -c local`: restartctl from this checkout, looking at a fixture."""
    args = fixture_host(tmp_path / "host", flagged=True)
    r = playbook(tmp_path, ["-i", "localhost,", "-c", "local"], {
        "restartctl_cmd": RESTARTCTL, "restartctl_args": args, "restartctl_environment": {"PYTHONPATH": str(REPO)},
        "restartctl_run_dir": str(tmp_path / "host" / "run"), "restartctl_summary_file": str(tmp_path / "s.json"),
        "restartctl_apply_cmd": ["/bin/false"]})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[WARNING]" not in r.stdout + r.stderr and "[DEPRECATION" not in r.stdout + r.stderr, r.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["hosts"]["localhost"] == {
        "error": "", "pending": ["dbus.service", "demod.service", "session-4.scope"], "restarts": ["demod.service"],
        "deferred": ["dbus.service"], "packages": ["libdemo1:amd64"], "reboot": True,
        # plan --json carries structured reasons: the deferred system bus, rather than the bare flag.
        "reboot_reasons": ["service"]}
    assert (summary["pending_hosts"], summary["reboot_hosts"], summary["error_hosts"]) == (
        ["localhost"], ["localhost"], [])
    assert (summary["units"], summary["restarts"]) == (3, 1)
    headline = ("1 host(s): 1 with pending restarts (3 unit(s), 1 restartable), 1 need(s) a reboot, "
                "0 failed to report")
    assert summary["headline"] == headline
    assert f'"{headline}",' in r.stdout
    assert ('"localhost: 3 pending (dbus.service, demod.service, session-4.scope); restart: demod.service; '
            'deferred: dbus.service; reboot needed (service)"') in r.stdout
    # restartctl_apply defaults to false: the apply task is skipped, /bin/false never runs.
    assert "TASK [restartctl : Run restartctl apply --yes --json]" in r.stdout
    assert "skipping: [localhost]" in r.stdout.split("Run restartctl apply")[1].split("TASK")[0]


def test_a_host_where_restartctl_fails_is_reported_and_failed(tmp_path: Path) -> None:
    args = fixture_host(tmp_path / "host")
    r = playbook(tmp_path, ["-i", "localhost,", "-c", "local"], {
        "restartctl_cmd": RESTARTCTL, "restartctl_args": [*args, "--data", str(tmp_path / "nowhere")],
        "restartctl_environment": {"PYTHONPATH": str(REPO)}, "restartctl_summary_file": str(tmp_path / "s.json")})
    assert r.returncode != 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["error_hosts"] == ["localhost"]
    assert summary["hosts"]["localhost"]["error"].startswith("restartctl exited 2: restartctl: ")
    assert "failed to report" in summary["headline"] and summary["headline"].endswith("1 failed to report")


def test_rolling_batches_with_a_health_check_between(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    r = fleet.run(restartctl_apply=True, restartctl_serial=1)
    assert r.returncode == 0, r.stdout + r.stderr
    # One host per batch, the health check right after its apply; h3 has nothing to restart.
    assert fleet.calls() == ["apply h1", "health h1", "apply h2", "health h2"]
    summary = fleet.summary()
    assert (summary["pending_hosts"], summary["restarts"]) == (["h1", "h2"], 2)
    assert summary["hosts"]["h3"]["pending"] == []
    assert r.stdout.count("PLAY [Restart in rolling batches") == 2  # two batches


def test_apply_is_off_by_default(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    r = fleet.run()
    assert r.returncode == 0, r.stdout + r.stderr
    assert fleet.calls() == []
    assert fleet.summary()["pending_hosts"] == ["h1", "h2"]


def test_a_failed_restart_stops_the_rollout(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    (tmp_path / "calls.log.h1.fail").touch()
    r = fleet.run(restartctl_apply=True, restartctl_serial=1)
    assert r.returncode != 0
    assert fleet.calls() == ["apply h1"]


def test_an_unhealthy_batch_stops_the_rollout(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    (tmp_path / "calls.log.h1.unhealthy").touch()
    r = fleet.run(restartctl_apply=True, restartctl_serial=1)
    assert r.returncode != 0
    calls = fleet.calls()
    assert calls[0] == "apply h1" and set(calls[1:]) == {"health h1"} and len(calls) == 3  # 1 try + 1 retry
    assert "apply h2" not in calls


def test_batches_follow_serial(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    r = fleet.run(restartctl_apply=True, restartctl_serial=2)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = fleet.calls()
    assert sorted(calls[:2]) == ["apply h1", "apply h2"] and sorted(calls[2:]) == ["health h1", "health h2"]


# ---------------------------------------------------------------- the real thing, in a container

@pytest.mark.real
def test_real_apply_inside_a_systemd_container(systemd_container: Container,
                                               demo_debs: dict[str, dict[str, Path]]) -> None:
    """The playbook inside a container with systemd: real plan, real `restartctl apply --yes --json`."""
    c = systemd_container
    run_demod_then_upgrade(c, demo_debs)
    before = c.main_pid("rctl-demod.service")
    extra = {"ansible_python_interpreter": "/usr/bin/python3", "restartctl_become": False, "restartctl_apply": True,
             "restartctl_cmd": RESTARTCTL, "restartctl_environment": {"PYTHONPATH": str(REPO)},
             "restartctl_health_cmd": ["systemctl", "is-active", "rctl-demod.service"],
             "restartctl_health_ok": ["active"], "restartctl_summary_file": "/tmp/summary.json"}
    c.write_file("/tmp/extra.json", json.dumps(extra))
    c.write_file("/tmp/ansible.cfg", "")
    r = c.exec([str(ANSIBLE), "-i", "localhost,", "-c", "local", str(PLAYBOOK), "-e", "@/tmp/extra.json"],
               env={"ANSIBLE_HOME": "/tmp/ansible", "ANSIBLE_CONFIG": "/tmp/ansible.cfg", "ANSIBLE_NOCOLOR": "1",
                    "HOME": "/tmp"}, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads(c.read_file("/tmp/summary.json"))
    assert "rctl-demod.service" in summary["hosts"]["localhost"]["restarts"]
    assert "changed: [localhost]" in r.stdout.split("Run restartctl apply")[1].split("TASK")[0]
    assert '"rctl-demod.service: done"' in r.stdout
    assert c.main_pid("rctl-demod.service") != before
    r = c.exec([*RESTARTCTL, "plan", "--json"], env={"PYTHONPATH": str(REPO)})
    assert "rctl-demod.service" not in {a["unit"] for a in json.loads(r.stdout)["actions"]}


# ---------------------------------------------------------------- Prometheus alert rules

def test_rules_pass_promtool_check() -> None:
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 6 rules found" in r.stdout


def _alert(instance: str, **labels: str) -> dict[str, Any]:
    return {"exp_labels": {"severity": "warning", "instance": instance, "job": "node", **labels}}


def test_rules_fire_after_n_days(tmp_path: Path) -> None:
    """promtool's rule unit tests: series over days, alerts expected (or not) at given times."""
    day = 86400

    def series(name: str, values: str, **labels: str) -> dict[str, str]:
        text = ",".join(f'{k}="{v}"' for k, v in {"instance": labels.pop("instance"), "job": "node", **labels}.items())
        return {"series": f"{name}{{{text}}}", "values": values}

    inputs = [
        # a: reboot needed since t=0, services pending since day 1, fresh reports.
        series("restartctl_reboot_required", "1x10", instance="a"),
        series("restartctl_reboot_required_since_timestamp_seconds", "0x10", instance="a"),
        series("restartctl_pending_units", "1x10", instance="a", scope="system"),
        series("restartctl_pending_units", "4x10", instance="a", scope="session"),
        series("restartctl_pending_since_timestamp_seconds", f"{day}x10", instance="a"),
        series("restartctl_report_timestamp_seconds", f"0+{day}x10", instance="a"),
        series("restartctl_last_run_restarts", "0 0 2 2 2 2 2 2 2 2", instance="a", result="failed"),
        # c: only sessions pending (never alerts).
        series("restartctl_pending_units", "5x10", instance="c", scope="session"),
        series("restartctl_pending_units", "0x10", instance="c", scope="system"),
        series("restartctl_pending_since_timestamp_seconds", "0x10", instance="c"),
        series("restartctl_report_timestamp_seconds", f"0+{day}x10", instance="c"),
        # d: its reports stopped at t=0.
        series("restartctl_report_timestamp_seconds", "0x10", instance="d"),
    ]

    def expect(at: int, name: str, alerts: list[dict[str, Any]]) -> dict[str, Any]:
        return {"eval_time": f"{at}d", "alertname": name, "exp_alerts": alerts}

    reboot_ann = {"summary": "a has needed a reboot for more than 7 days",
                  "description": 'See restartctl_reboot_reason{instance="a"} for the kind and the package '
                                 "(kernel, microcode, policy, init, service, library, flag)."}
    pending_ann = {"summary": "a: services still run replaced package files",
                   "description": "Units on a have used replaced package files for more than 3 days. Run "
                                  "`restartctl plan` there (or the fleet playbook with restartctl_apply=true)."}
    tests = [
        expect(6, "RestartctlRebootRequired", []),
        expect(8, "RestartctlRebootRequired", [{**_alert("a"), "exp_annotations": reboot_ann}]),
        expect(3, "RestartctlPendingRestarts", []),
        expect(5, "RestartctlPendingRestarts", [{**_alert("a"), "exp_annotations": pending_ann}]),
        expect(9, "RestartctlPendingRestartsNoSince", []),
        expect(1, "RestartctlRestartsFailed", []),
        expect(3, "RestartctlRestartsFailed", [{**_alert("a", result="failed"), "exp_annotations": {
            "summary": "a: 2 restart(s) failed in restartctl's last run",
            "description": "Run `restartctl status` on a."}}]),
        expect(1, "RestartctlReportStale", []),
        expect(3, "RestartctlReportStale", [{"exp_labels": {"severity": "info", "instance": "d", "job": "node"},
                                              "exp_annotations": {"summary": "d: restartctl metrics are more than "
                                                                             "2 days old"}}]),
    ]
    # The fallback rules count on the alert's own clock (for: 7d), which needs a series that never
    # goes stale: samples closer than the 5-minute lookback.
    steady = [series("restartctl_reboot_required", "1x3000", instance="b"),
              series("restartctl_pending_units", "1x3000", instance="e", scope="system")]
    fallback = [
        expect(6, "RestartctlRebootRequiredNoSince", []),
        expect(8, "RestartctlRebootRequiredNoSince", [
            {**_alert("b"), "exp_annotations": {"summary": "b has needed a reboot for more than 7 days"}}]),
        expect(2, "RestartctlPendingRestartsNoSince", []),
        expect(4, "RestartctlPendingRestartsNoSince", [
            {**_alert("e"), "exp_annotations": {"summary": "e: services still run replaced package files"}}]),
    ]
    spec = {"rule_files": [str(RULES)], "evaluation_interval": "1h",
            "tests": [{"interval": "1d", "input_series": inputs, "alert_rule_test": tests},
                      {"interval": "4m", "input_series": steady, "alert_rule_test": fallback}]}
    (tmp_path / "rules_test.yml").write_text(json.dumps(spec, indent=1))  # JSON is YAML
    r = promtool("test", "rules", str(tmp_path / "rules_test.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout

