"""The fleet examples for real.

- The Ansible playbook: over fixture hosts with the local connection (the summary's shape and
  types under the test venv's ansible-core), and over ssh with Debian's ansible-core against four
  booted systemd hosts in their own network namespaces, restartctl installed from the .deb: the
  report, --check, failures at once and seconds after a restart, an unreachable and a frozen host,
  re-runs.
- The metrics: every textfile writer on a real host, the report timer, and the Prometheus alert
  rules (promtool test rules) over hand-written series and over the files real hosts wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.container import Container, wait_for
from tests.support.debs import cached_debs
from tests.support.fixturehost import fixture_host
from tests.support.package import Built
from tests.support.tools import promtool

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


def playbook(tmp: Path, inventory: list[str], extra: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    if not os.access(ANSIBLE, os.X_OK):
        pytest.fail(f"{ANSIBLE} is missing: add ansible-core==2.19.14 to tests/requirements.txt "
                    f"(.venv/bin/pip install ansible-core==2.19.14)", pytrace=False)
    (tmp / "extra.json").write_text(json.dumps({"ansible_python_interpreter": "/usr/bin/python3",
                                                "restartctl_become": False, **extra}))
    return subprocess.run([str(ANSIBLE), *inventory, str(PLAYBOOK), "-e", f"@{tmp / 'extra.json'}", *args],
                          cwd=tmp, env=ansible_env(tmp), capture_output=True, text=True, timeout=300, check=False)


def test_summary_of_a_fixture_host_against_localhost(tmp_path: Path) -> None:
    """`ansible-playbook -i localhost, -c local`: restartctl from this checkout, looking at a fixture."""
    args = fixture_host(tmp_path / "host", flagged=True)
    r = playbook(tmp_path, ["-i", "localhost,", "-c", "local"], {
        "restartctl_cmd": RESTARTCTL, "restartctl_args": args, "restartctl_environment": {"PYTHONPATH": str(REPO)},
        "restartctl_run_dir": str(tmp_path / "host" / "run"), "restartctl_summary_file": str(tmp_path / "s.json"),
        "restartctl_apply_cmd": ["/bin/false"], "restartctl_apply": True}, "--tags", "report")
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
    # --tags report: never the rollout, even with restartctl_apply=true (/bin/false would fail it).
    assert "Run restartctl apply" not in r.stdout and "Show the rollout summary" not in r.stdout


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
def restartctl_deb(built: Built) -> Path:
    """The .deb this checkout builds (once per session: tests/support/package.py)."""
    return built.deb


def install_built(c: Container, deb: Path, policy_toml: str) -> None:
    """The package as an operator installs it, node-exporter's textfile directory, a policy."""
    c.install_debs([deb])
    install_built_setup(c, policy_toml)


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
    # rctl-crash is its phase's canary (plan order): it failed, so the breaker left rctl-demod alone.
    assert failed['restartctl_last_run_restarts{result="failed"}'] == 1
    assert failed['restartctl_last_run_restarts{result="done"}'] == 0
    assert failed['restartctl_pending_units{scope="system"}'] == 2  # the failed one and the one not attempted

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


# ---------------------------------------------------------------- a fleet over ssh

DEBIAN_ANSIBLE = Path("/usr/bin/ansible-playbook")  # Debian's ansible-core (2.14 on Debian 12)
SSH_DEBS = ("openssh-client", "openssh-sftp-server", "runit-helper", "libwrap0", "openssh-server")
LIST_MODE = '[settings]\nmode = "list"\nunattended_mode = "list"\n'  # as docs/fleet.md tells operators
SLEEPER = "/usr/bin/rctl-sleeper"
# Per host: extra units (name -> unit file) besides rctl-demod.service.
HOSTS: dict[str, dict[str, str]] = {
    "fl-h1": {},
    # fails at once when /srv/rctl/break exists
    "fl-h2": {"rctl-bad.service": f"[Service]\nExecStartPre=/bin/sh -c 'test ! -e /srv/rctl/break'\n"
                                  f"ExecStart={SLEEPER}\n"},
    # crashes 4.5 s after its (re)start when /srv/rctl/crash exists: after restartctl's own settle time
    "fl-h3": {"rctl-late.service": "[Service]\nExecStart=/bin/sh -c 'if [ -e /srv/rctl/crash ]; then "
                                   f"(sleep 4.5; kill -KILL $$$$) & fi; exec {SLEEPER}'\n"},
    # its stop hangs when /srv/rctl/hang exists, and says so (the test then freezes the whole host)
    "fl-h4": {"rctl-slow.service": f"[Service]\nExecStart={SLEEPER}\nExecStop=/bin/sh -c 'test ! -e /srv/rctl/hang "
                                   "|| { touch /srv/rctl/stopping; sleep 60; }'\nTimeoutStopSec=90\n"},
}
UNREACHABLE = ("fl-h5", "10.218.4.3")  # an address on fl-h4's link where nobody answers


def _ns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


class Controller:
    """The controller's own network namespace, held by a ``sleep`` and run in a cgroup of its own
    with everything started in it (ansible-playbook, its ssh masters): stopped by ``cgroup.kill``."""

    def __init__(self, tmp: Path) -> None:
        from tests.support.container import cgroup_roots

        self.tmp = tmp
        self.cgroup = cgroup_roots()[0] / f"rctl-test.fleet-ctl.{os.getpid()}.{id(self)}"
        self.cgroup.mkdir()
        self.holder = subprocess.Popen(
            ["/bin/sh", "-c", 'echo $$ > "$1"; exec /usr/bin/unshare --net /usr/bin/sleep infinity', "sh",
             str(self.cgroup / "cgroup.procs")], stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: _ns(self.holder.pid) != _ns(os.getpid()) and "sleep" in Path(
            f"/proc/{self.holder.pid}/cmdline").read_text(), "the controller's network namespace", 10)
        self.netns = f"/proc/{self.holder.pid}/ns/net"
        self.run(["ip", "link", "set", "lo", "up"], check=True)

    def run(self, argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 60,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        """``argv`` in the controller's network namespace (and cgroup); the host's files."""
        procs = str(self.cgroup / "cgroup.procs")
        r = subprocess.run(["/bin/sh", "-c", 'echo $$ > "$1"; shift; exec "$@"', "sh", procs, "/usr/bin/nsenter",
                            f"--net={self.netns}", "--", *argv],
                           env=env or {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
                           capture_output=True, text=True, timeout=timeout, check=False)
        assert not check or r.returncode == 0, f"{argv}: {r.stdout}{r.stderr}"
        return r

    def link(self, n: int, host: Container) -> str:
        """A veth pair from the controller into ``host``'s namespace: 10.218.N.1 here, 10.218.N.2 there."""
        here = f"ctl{n}"
        r = subprocess.run(["ip", "link", "add", here, "netns", str(self.holder.pid), "type", "veth", "peer", "name",
                            "eth0", "netns", str(host.leader)], capture_output=True, text=True, timeout=30, check=False)
        assert r.returncode == 0, r.stderr
        assert here not in subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, timeout=30).stdout
        self.run(["ip", "addr", "add", f"10.218.{n}.1/24", "dev", here], check=True)
        self.run(["ip", "link", "set", here, "up"], check=True)
        host.check(["ip", "addr", "add", f"10.218.{n}.2/24", "dev", "eth0"])
        host.check(["ip", "link", "set", "eth0", "up"])
        return f"10.218.{n}.2"

    def stop(self) -> None:
        (self.cgroup / "cgroup.kill").write_text("1")
        wait_for(lambda: not (self.cgroup / "cgroup.procs").read_text().split(), "the controller's processes", 10)
        self.holder.wait(timeout=10)
        self.cgroup.rmdir()


class Lab:
    """Four booted hosts (overlays of this machine's /), each in its own network namespace with sshd,
    restartctl from the .deb (hooks in list mode), rctl-demod.service and its HOSTS units running on
    v1 of the demo packages, then upgraded to v2; an inventory for Debian's ansible-playbook."""

    def __init__(self, tmp: Path, deb: Path, demo: dict[str, dict[str, Path]]) -> None:
        self.tmp, self.frozen = tmp, set[str]()
        self.hosts: dict[str, Container] = {}
        self.controller: Controller | None = None
        try:
            self._start(deb, demo)
        except BaseException:
            self.stop()
            raise

    def _start(self, deb: Path, demo: dict[str, dict[str, Path]]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        tmp = self.tmp
        self.controller = Controller(tmp)
        key = tmp / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rctl-fleet-test", "-f", str(key)],
                       check=True, timeout=30)
        for kind in ("rsa", "ecdsa", "ed25519"):
            subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "rctl-fleet-host", "-f",
                            str(tmp / f"ssh_host_{kind}_key")], check=True, timeout=60)
        for name in HOSTS:
            self.hosts[name] = Container(name, boot=True)
            self.hosts[name].start()
        addresses = {name: self.controller.link(n, c) for n, (name, c) in enumerate(self.hosts.items(), 1)}
        with ThreadPoolExecutor(2) as pool:  # two cores
            for f in [pool.submit(self._setup, c, HOSTS[name], key.with_suffix(".pub").read_text(), deb, demo)
                      for name, c in self.hosts.items()]:
                f.result()
        ssh_args = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
        inventory = {name: {"ansible_host": address} for name, address in addresses.items()}
        inventory[UNREACHABLE[0]] = {"ansible_host": UNREACHABLE[1]}
        (tmp / "inventory.json").write_text(json.dumps({"all": {"hosts": inventory, "vars": {
            "ansible_user": "root", "ansible_ssh_private_key_file": str(key), "ansible_ssh_common_args": ssh_args,
            "ansible_python_interpreter": "/usr/bin/python3", "ansible_ssh_timeout": 5, "ansible_pipelining": True}}}))

    def _setup(self, c: Container, units: dict[str, str], pubkey: str, deb: Path,
               demo: dict[str, dict[str, Path]]) -> None:
        # Quicker: host keys made once (openssh-server's postinst keeps existing ones), no man-db index.
        for key in self.tmp.glob("ssh_host_*"):
            c.write_file(f"/etc/ssh/{key.name}", key.read_bytes(), mode=0o644 if key.suffix == ".pub" else 0o600)
        c.check(["rm", "-f", "/var/lib/man-db/auto-update"])
        c.install_debs([*cached_debs(*SSH_DEBS), deb], timeout=300)
        install_built_setup(c, LIST_MODE)
        c.write_file("/root/.ssh/authorized_keys", pubkey, mode=0o600)
        c.install_debs([demo["1.0"][n] for n in ("rctl-libdemo1", "rctl-demod", "rctl-sleeper")])
        for name, text in units.items():
            c.write_file(f"/etc/systemd/system/{name}", text)
        c.systemctl("daemon-reload")
        c.systemctl("reset-failed")
        for unit in ("ssh.service", "rctl-demod.service", *units):
            c.systemctl("start", unit)
            c.wait_active(unit)
        c.install_debs([demo["2.0"][n] for n in ("rctl-libdemo1", "rctl-demod", "rctl-sleeper")])
        state = c.exec(["systemctl", "is-system-running"]).stdout.strip()
        assert state == "running", state + c.exec(["systemctl", "--failed", "--no-pager"]).stdout

    def play(self, *args: str, timeout: float = 300, **extra: Any) -> subprocess.CompletedProcess[str]:
        """Debian's ansible-playbook on the controller, over ssh, as docs/fleet.md runs it."""
        if not os.access(DEBIAN_ANSIBLE, os.X_OK):
            pytest.fail("Debian's ansible-core is missing: tests/run.sh installs it (apt-get install ansible-core)",
                        pytrace=False)
        (self.tmp / "extra.json").write_text(json.dumps({
            "restartctl_summary_file": str(self.tmp / "summary.json"), "restartctl_settle": 6,
            "restartctl_health_interval": 1, "restartctl_health_retries": 3, "restartctl_health_delay": 1,
            "restartctl_ssh_extra_args": "-o ServerAliveInterval=2 -o ServerAliveCountMax=2", **extra}))
        (self.tmp / "summary.json").unlink(missing_ok=True)
        assert self.controller is not None
        r = self.controller.run([str(DEBIAN_ANSIBLE), "-i", str(self.tmp / "inventory.json"), str(PLAYBOOK),
                                 "-e", f"@{self.tmp / 'extra.json'}", *args],
                                env=ansible_env(self.tmp), timeout=timeout)
        (self.tmp / "last-play.log").write_text(r.stdout + r.stderr)  # for a failing test's reader
        return r

    def summary(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((self.tmp / "summary.json").read_text())
        return result

    def pids(self) -> dict[str, dict[str, int]]:
        return {name: {u: c.main_pid(u) for u in ("rctl-demod.service", *HOSTS[name])}
                for name, c in self.hosts.items()}

    def freeze(self, name: str, frozen: bool) -> None:
        """The whole host stops (or resumes): every process of it, sshd included."""
        (self.hosts[name].cgroup_dirs[0] / "payload" / "cgroup.freeze").write_text("1" if frozen else "0")
        (self.frozen.add if frozen else self.frozen.discard)(name)

    def stop(self) -> None:
        errors = []
        for name in list(self.frozen):
            self.freeze(name, False)
        for name, c in self.hosts.items():
            for unit in HOSTS[name]:  # a stop that hangs (fl-h4) would hold the poweroff
                c.exec(["systemctl", "kill", "--kill-who=all", "--signal=KILL", unit])
        for c in self.hosts.values():
            try:
                c.stop()
            except RuntimeError as e:
                errors.append(str(e))
        if self.controller is not None:
            self.controller.stop()
        assert not errors, errors


def install_built_setup(c: Container, policy_toml: str) -> None:
    c.check(["rm", "-f", "/usr/sbin/policy-rc.d"])  # the host image forbids restarts (Docker-style)
    c.check(["mkdir", "-p", "/var/lib/prometheus/node-exporter"])
    c.write_file("/etc/restartctl/policy.toml", policy_toml)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, restartctl_deb: Path,
        demo_debs: dict[str, dict[str, Path]]) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("the fleet tests need root (containers, network namespaces)", pytrace=False)
    the_lab = Lab(tmp_path_factory.mktemp("fleet"), restartctl_deb, demo_debs)
    try:
        yield the_lab
    finally:
        the_lab.stop()


def lines(r: subprocess.CompletedProcess[str]) -> str:
    return r.stdout + r.stderr


@pytest.mark.real
def test_fleet_report_and_check_mode_over_ssh(lab: Lab) -> None:
    """The fleet summary of four real hosts and an unreachable one, with Debian's ansible-core; under
    --check with restartctl_apply=true nothing is restarted, and it says what would be."""
    before = lab.pids()
    t0 = time.monotonic()
    r = lab.play("--check", restartctl_apply=True, restartctl_serial=2)
    took = time.monotonic() - t0
    assert r.returncode == 4, lines(r)  # 4: a host was unreachable; nothing failed
    assert lab.pids() == before  # check mode restarted nothing
    summary = lab.summary()
    assert summary["unreachable_hosts"] == ["fl-h5"] and summary["error_hosts"] == ["fl-h5"]
    assert summary["pending_hosts"] == ["fl-h1", "fl-h2", "fl-h3", "fl-h4"]
    assert (summary["units"], summary["restarts"], summary["failed_units"]) == (7, 7, 0)  # ints under 2.14 too
    assert summary["auto_hook_hosts"] == []  # list mode everywhere, as the docs say
    assert summary["headline"] == ("5 host(s): 4 with pending restarts (7 unit(s), 7 restartable), 0 with failed "
                                   "restarts (0 unit(s)), 0 need(s) a reboot, 1 failed to report (1 unreachable)")
    assert '"fl-h5: ERROR: UNREACHABLE (or a task timed out)"' in r.stdout
    assert '"fl-h2: 2 pending (rctl-bad.service, rctl-demod.service); restart: rctl-bad.service, ' \
           'rctl-demod.service"' in r.stdout
    assert '"would restart: rctl-demod.service, rctl-late.service"' in r.stdout
    assert "check mode, nothing was restarted: rollout: 4 host(s) restarted and healthy, 0 failed" in r.stdout
    print(f"report and check mode over ssh, 5 hosts: {took:.1f} s")


def verdicts(r: subprocess.CompletedProcess[str]) -> str:
    """The rollout summary's lines (shown by the batch that stopped the rollout, or at the end)."""
    shown = [part.split("TASK [")[0] for part in r.stdout.split("TASK [restartctl : Show the rollout summary]")[1:]]
    return "".join(part for part in shown if '"msg"' in part)


@pytest.mark.real
def test_fleet_rollout_stops_at_a_host_that_fails_and_stays_stopped_on_a_rerun(lab: Lab) -> None:
    """Batches of two, in name order: fl-h2's restart fails at once; fl-h1, in the same batch, is
    restarted and still goes through the whole gate; the rollout stops there, fl-h3 and fl-h4 keep
    their processes.  A re-run (batches of one) stops at fl-h2 again (its failed unit, not a stale
    process, is what is left), until someone repairs it."""
    lab.hosts["fl-h2"].write_file("/srv/rctl/break", "")
    before = lab.pids()
    r = lab.play(restartctl_apply=True, restartctl_serial=2)
    assert r.returncode in (2, 4), lines(r)  # failed hosts (4: and fl-h5 unreachable)
    after = lab.pids()
    assert after["fl-h1"]["rctl-demod.service"] != before["fl-h1"]["rctl-demod.service"]
    assert after["fl-h3"] == before["fl-h3"] and after["fl-h4"] == before["fl-h4"]
    out = verdicts(r)
    assert "rollout: 1 host(s) restarted and healthy, 1 failed, 2 not reached (stopped after a failed batch)" in out
    assert "fl-h2: FAILED: restartctl apply exited 1: rctl-bad.service failed" in out, out
    assert "restarts failed: rctl-bad.service" in out and "not reached: fl-h3, fl-h4" in out, out
    assert "ok: [fl-h1] => (item=after 6 s)" in r.stdout  # the gate's last reading, in the failing batch
    CAPTURED["fl-h2 failed"] = lab.hosts["fl-h2"].read_file(TEXTFILE).decode()

    r = lab.play(restartctl_apply=True, restartctl_serial=1)
    assert r.returncode in (2, 4), lines(r)  # failed hosts (4: and fl-h5 unreachable)
    summary = lab.summary()
    assert summary["failed_hosts"] == ["fl-h2"] and summary["hosts"]["fl-h2"]["failed"] == ["rctl-bad.service"]
    assert '"fl-h2: FAILED restarts: rctl-bad.service; ' in r.stdout
    assert "fl-h2: FAILED: restarts failed in an earlier run: rctl-bad.service" in verdicts(r)
    assert lab.pids()["fl-h3"] == before["fl-h3"]  # still not past fl-h2

    h2 = lab.hosts["fl-h2"]  # an administrator repairs it
    h2.check(["rm", "/srv/rctl/break"])
    h2.systemctl("restart", "rctl-bad.service")
    assert h2.exec(["systemctl", "is-system-running"]).stdout.strip() == "running"


@pytest.mark.real
def test_fleet_gate_catches_a_crash_seconds_after_the_restart(lab: Lab) -> None:
    """fl-h3's rctl-late.service dies 4.5 s after its restart: after restartctl's own settle time (3 s),
    so apply says done; the playbook's gate, polled for its settle time, sees the host degraded and
    stops the rollout before fl-h4."""
    lab.hosts["fl-h3"].write_file("/srv/rctl/crash", "")
    before = lab.pids()
    r = lab.play(restartctl_apply=True, restartctl_serial=1)
    assert r.returncode in (2, 4), lines(r)  # failed hosts (4: and fl-h5 unreachable)
    out = verdicts(r)
    assert "fl-h3: FAILED: health check said degraded within the settle time" in out \
        or "fl-h3: FAILED: health check says degraded" in out, out
    assert lab.pids()["fl-h4"] == before["fl-h4"]
    assert "not reached: fl-h4" in out
    h3 = lab.hosts["fl-h3"]
    h3.check(["rm", "/srv/rctl/crash"])
    h3.systemctl("restart", "rctl-late.service")
    h3.systemctl("reset-failed")


@pytest.mark.real
def test_fleet_a_host_that_hangs_is_dropped_within_the_timeouts(lab: Lab) -> None:
    """fl-h4 freezes while its restart runs (every process of it, sshd included): ssh keepalives drop
    it within seconds, the rollout names it and ends; nothing waits forever."""
    h4 = lab.hosts["fl-h4"]
    h4.write_file("/srv/rctl/hang", "")
    stopping = h4.scratch / "stopping"
    import threading

    def freeze_when_stopping() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not stopping.exists():
            time.sleep(0.1)
        if stopping.exists():
            lab.freeze("fl-h4", True)

    watcher = threading.Thread(target=freeze_when_stopping, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    r = lab.play(restartctl_apply=True, restartctl_serial=1, timeout=400)
    took = time.monotonic() - t0
    watcher.join(timeout=1)
    assert "fl-h4" in lab.frozen, lines(r)
    lab.freeze("fl-h4", False)
    assert r.returncode != 0, lines(r)
    assert "fl-h4: FAILED: no answer (unreachable, or a task timed out)" in verdicts(r), lines(r)
    assert "UNREACHABLE" in r.stdout
    print(f"rollout with a host that froze: {took:.1f} s")
    h4.check(["rm", "/srv/rctl/hang"])
    h4.systemctl("kill", "--kill-who=all", "--signal=KILL", "rctl-slow.service")


CAPTURED: dict[str, str] = {}


@pytest.mark.real
def test_fleet_textfiles_parse_and_the_alerts_fire_on_them(lab: Lab, tmp_path: Path) -> None:
    """Each host's textfile as node-exporter reads it, and promtool test rules on those series."""
    texts = {name: c.read_file(TEXTFILE).decode() for name, c in lab.hosts.items()}
    for text in texts.values():
        metrics_check(text)
    assert samples(texts["fl-h1"])["restartctl_stale_processes"] == 0
    assert samples(CAPTURED["fl-h2 failed"])['restartctl_last_run_restarts{result="failed"}'] == 1
    # fl-h2's failed rctl-bad was its phase's canary, so the units after it stayed stale; after the repair
    # by hand the next rollout restarted them: fl-h2's file now records that run, with no failure.
    now = samples(texts["fl-h2"])
    assert now['restartctl_last_run_restarts{result="failed"}'] == 0
    assert now['restartctl_last_run_restarts{result="done"}'] >= 1
    hosts = {name: (text, True) for name, text in texts.items()}
    hosts["fl-h2-then"] = (CAPTURED["fl-h2 failed"], True)
    rules_test(tmp_path, hosts, [
        # the file as the failed run left it: the record of the last run, until the next one.
        expect("0d", "RestartctlRestartsFailed", {"fl-h2-then": {"severity": "warning", "result": "failed"}}, 1),
        expect("3d", "RestartctlReportStale", {}),
    ])
