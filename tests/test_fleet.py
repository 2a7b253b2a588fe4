"""The fleet examples: the Ansible playbook (real ansible-playbook, real restartctl over fixture hosts
and inside a systemd container) and the Prometheus alert rules (real promtool: check and unit tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fakeproc import ino, map_line
from tests.support.container import Container
from tests.support.fixtures import run_demod_then_upgrade
from tests.test_cli import EXE, LIB, Host
from tests.test_formats import promtool
from tests.test_packaging import build_once

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
        "deferred": ["dbus.service"], "failed": [], "packages": ["libdemo1:amd64"], "reboot": True,
        # plan --json carries structured reasons: the deferred system bus, rather than the bare flag.
        "reboot_reasons": ["service"], "hooks": {"mode": "auto", "unattended_mode": "auto"}}
    assert (summary["pending_hosts"], summary["reboot_hosts"], summary["error_hosts"], summary["auto_hook_hosts"]) == (
        ["localhost"], ["localhost"], [], ["localhost"])
    # Numbers are numbers (ansible-core 2.19 here; Debian's 2.14 in the multi-host tests below).
    assert (summary["units"], summary["restarts"], summary["failed_units"]) == (3, 1, 0)
    headline = ("1 host(s): 1 with pending restarts (3 unit(s), 1 restartable), 0 with failed restarts (0 unit(s)), "
                "1 need(s) a reboot, 0 failed to report (0 unreachable)")
    assert summary["headline"] == headline
    assert f'"{headline}",' in r.stdout
    assert ('"localhost: 3 pending (dbus.service, demod.service, session-4.scope); restart: demod.service; '
            'deferred: dbus.service; reboot needed (service); hooks restart by themselves (mode auto, '
            'unattended_mode auto: set both to \\"list\\")"') in r.stdout
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
    assert "1 failed to report (0 unreachable)" in summary["headline"]


def test_a_missing_restartctl_says_why(tmp_path: Path) -> None:
    r = playbook(tmp_path, ["-i", "localhost,", "-c", "local"], {
        "restartctl_cmd": ["/nonexistent/restartctl"], "restartctl_summary_file": str(tmp_path / "s.json")})
    assert r.returncode != 0
    error = json.loads((tmp_path / "s.json").read_text())["hosts"]["localhost"]["error"]
    assert error.startswith("restartctl exited 2: ") and "could not run /nonexistent/restartctl" in error, error


# ---------------------------------------------------------------- the real thing, in a container

@pytest.mark.real
def test_real_apply_inside_a_systemd_container(systemd_container: Container,
                                               demo_debs: dict[str, dict[str, Path]]) -> None:
    """The playbook inside a container with systemd: real plan, real `restartctl apply --yes --json`."""
    c = systemd_container
    run_demod_then_upgrade(c, demo_debs)
    c.check(["rm", "-f", "/usr/sbin/policy-rc.d"])  # the host image forbids restarts (Docker-style)
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



# ---------------------------------------------------------------- metrics written by a real host

TEXTFILE = "/var/lib/prometheus/node-exporter/restartctl.prom"
CRASHING = ("/bin/sh -c 'if [ -e /srv/rctl/crash ]; then (sleep 1.5; kill -KILL $$$$) & fi; "
            "exec /usr/bin/rctl-sleeper'")


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, read as node-exporter's textfile collector reads it (the Prometheus
    text format parser; promtool's ``check metrics`` is the same expfmt parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text.replace("# EOF\n", "")):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
    return out


def metrics_check(text: str) -> dict[str, float]:
    r = promtool("check", "metrics", stdin=text)
    assert r.returncode == 0, r.stdout + r.stderr + text
    return samples(text)


def rules_test(tmp: Path, hosts: dict[str, tuple[str, bool]], tests: list[dict[str, Any]]) -> None:
    """``promtool test rules`` over series captured from real hosts: each host's textfile held for 10
    days (the report timer rescans and finds the same), its report time renewed daily when ``live``.

    The only change made to what the hosts wrote: every ``*_timestamp_seconds`` value is shifted by
    the same amount, so that the earliest report is promtool's time 0.
    """
    parsed = {name: samples(text) for name, (text, _) in hosts.items()}
    base = min(s["restartctl_report_timestamp_seconds"] for s in parsed.values())
    series = []
    for name, values in parsed.items():
        for key, value in values.items():
            metric, _, labels = key.partition("{")
            shifted = round(value - base) if metric.endswith("_timestamp_seconds") else value
            text = f'instance="{name}",job="node"' + ("," + labels.rstrip("}") if labels else "")
            live = metric == "restartctl_report_timestamp_seconds" and hosts[name][1]
            series.append({"series": f"{metric}{{{text}}}",
                           "values": f"{_number(shifted)}+86400x10" if live else f"{_number(shifted)}x10"})
    spec = {"rule_files": [str(RULES)], "evaluation_interval": "1h",
            "tests": [{"interval": "1d", "input_series": series, "alert_rule_test": tests}]}
    (tmp / "captured_test.yml").write_text(json.dumps(spec, indent=1))
    r = promtool("test", "rules", str(tmp / "captured_test.yml"))
    assert r.returncode == 0, r.stdout + r.stderr + json.dumps(series, indent=1)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


ANNOTATIONS = {  # what each alert says, for an instance {i} (and the alert's value {v})
    "RestartctlPendingRestarts": {
        "summary": "{i}: services still run replaced package files",
        "description": "Units on {i} have used replaced package files for more than 3 days. Run `restartctl plan` "
                       "there (or the fleet playbook with restartctl_apply=true)."},
    "RestartctlRestartsFailed": {"summary": "{i}: {v} restart(s) failed in restartctl's last run",
                                 "description": "Run `restartctl status` on {i}."},
    "RestartctlReportStale": {"summary": "{i}: restartctl metrics are more than 2 days old"},
}


def expect(at: str, name: str, firing: dict[str, dict[str, str]], value: float = 0) -> dict[str, Any]:
    """An alert_rule_test entry: at ``at`` (e.g. "4d"), ``name`` fires for exactly these instances."""
    return {"eval_time": at, "alertname": name, "exp_alerts": [
        {"exp_labels": {"instance": i, "job": "node", **labels},
         "exp_annotations": {k: v.format(i=i, v=_number(value)) for k, v in ANNOTATIONS.get(name, {}).items()}}
        for i, labels in firing.items()]}


@pytest.fixture(scope="session")
def restartctl_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb this checkout builds (once per session, shared with tests/test_packaging.py)."""
    return build_once(tmp_path_factory).deb


def install_built(c: Container, deb: Path, policy_toml: str) -> None:
    """The package as an operator installs it, node-exporter's textfile directory, a policy."""
    c.install_debs([deb])
    c.check(["rm", "-f", "/usr/sbin/policy-rc.d"])  # the host image forbids restarts (Docker-style)
    c.check(["mkdir", "-p", "/var/lib/prometheus/node-exporter"])
    c.write_file("/etc/restartctl/policy.toml", policy_toml)


@pytest.mark.real
def test_every_textfile_writer_tells_the_truth_and_the_alerts_fire(
        container_factory: Callable[..., Container], restartctl_deb: Path, demo_debs: dict[str, dict[str, Path]],
        tmp_path: Path) -> None:
    """On a real host (the .deb installed): the dpkg hook, ``plan --textfile``, ``apply`` and the report
    timer write the same series, pending-since included, with counts after the restarts; the alert
    rules fire on what these files say (promtool test rules)."""
    c = container_factory("rctl-metrics", boot=True)
    install_built(c, restartctl_deb, '[settings]\nmode = "list"\nunattended_mode = "list"\n')
    names = ("rctl-libdemo1", "rctl-demod", "rctl-sleeper")
    c.install_debs([demo_debs["1.0"][n] for n in names])
    c.write_file("/etc/systemd/system/rctl-crash.service", f"[Service]\nExecStart={CRASHING}\n")
    c.systemctl("daemon-reload")
    for unit in ("rctl-demod.service", "rctl-crash.service"):
        c.systemctl("start", unit)
        c.wait_active(unit)
    c.install_debs([demo_debs["2.0"][n] for n in names])  # the dpkg hook runs, in list mode
    texts = {"hook": c.read_file(TEXTFILE).decode()}
    hook = metrics_check(texts["hook"])
    assert hook['restartctl_pending_units{scope="system"}'] == 2
    assert hook["restartctl_pending_since_timestamp_seconds"] > 0  # was missing from the hook's file
    r = c.exec(["restartctl", "plan", "--format", "openmetrics", "--textfile"])
    assert r.returncode == 1, r.stderr
    planned = metrics_check(c.read_file(TEXTFILE).decode())
    assert set(planned) == set(hook)  # the same series from both writers
    moving = ("restartctl_report_timestamp_seconds", "restartctl_scanned_processes", "restartctl_last_run")
    assert {k: v for k, v in planned.items() if not k.startswith(moving)} == {
        k: v for k, v in hook.items() if not k.startswith(moving)}

    r = c.exec(["restartctl", "apply", "--yes"], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    texts["applied"] = c.read_file(TEXTFILE).decode()
    applied = metrics_check(texts["applied"])
    assert applied['restartctl_pending_units{scope="system"}'] == 0
    assert applied["restartctl_stale_processes"] == 0  # after the restarts, not before
    assert applied['restartctl_last_run_restarts{result="done"}'] == 2
    assert "restartctl_pending_since_timestamp_seconds" not in applied

    # The report timer, as the package ships and enables it: nothing changed, so only the time moves.
    assert c.check(["systemctl", "is-enabled", "restartctl-report.timer"]).strip() == "enabled"
    c.systemctl("start", "restartctl-report.timer")
    assert c.show("restartctl-report.timer", "ActiveState") == "active"
    c.systemctl("start", "restartctl-report.service")
    assert c.show("restartctl-report.service", "Result") == "success"
    renewed = metrics_check(c.read_file(TEXTFILE).decode())
    assert renewed["restartctl_report_timestamp_seconds"] > applied["restartctl_report_timestamp_seconds"]
    assert {k: v for k, v in renewed.items() if not k.startswith(moving[0])} == {
        k: v for k, v in applied.items() if not k.startswith(moving[0])}

    # Back to v1 (every inode replaced again), and this time rctl-crash dies 1.5 s after its restart.
    c.install_debs([demo_debs["1.0"][n] for n in names])
    c.write_file("/srv/rctl/crash", "")
    r = c.exec(["restartctl", "apply", "--yes"], timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    texts["failed"] = c.read_file(TEXTFILE).decode()
    failed = metrics_check(texts["failed"])
    assert failed['restartctl_last_run_restarts{result="failed"}'] == 1
    assert failed['restartctl_last_run_restarts{result="done"}'] == 1
    assert failed['restartctl_pending_units{scope="system"}'] == 1  # the failed one still needs someone

    hosts = {"pending": (texts["hook"], True), "clean": (texts["applied"], True),
             "silent": (texts["applied"], False), "failed": (texts["failed"], True)}
    rules_test(tmp_path, hosts, [
        expect("2d", "RestartctlPendingRestarts", {}),
        expect("4d", "RestartctlPendingRestarts", {"pending": {"severity": "warning"},
                                                   "failed": {"severity": "warning"}}),
        expect("4d", "RestartctlPendingRestartsNoSince", {}),
        expect("0d", "RestartctlRestartsFailed", {"failed": {"severity": "warning", "result": "failed"}}, 1),
        expect("1d", "RestartctlReportStale", {}),
        expect("3d", "RestartctlReportStale", {"silent": {"severity": "info"}}),
    ])
