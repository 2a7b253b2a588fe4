"""Machine formats: the Nagios plugin line, OpenMetrics text (checked by the real promtool and an
OpenMetrics parser), the textfile writer, and the restartctl/1 JSON Schema against real output."""

from __future__ import annotations

import importlib
import json
import os
import re
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from restart import formats, kernel, plan, policy, reboot, scan
from restart.cli import main
from restart.plan import Action
from restart.processes import ScanResult
from restart.reboot import ReasonKind, RebootReason
from restart.roots import Roots
from restart.units import CONTAINER, INIT, NONE, SESSION, SYSTEM, USER, UnitGroup, UnitKind
from tests.fakeproc import map_line
from tests.support import tools
from tests.support.container import Container
from tests.support.fixturehost import Host, fixture_host
from tests.support.fixtures import run_demod_then_upgrade
from tests.support.tools import promtool

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "data" / "restartctl-1.schema.json"
def check_metrics(text: str) -> None:
    assert text.strip(), "promtool accepts empty input: never check nothing"
    r = promtool("check", "metrics", stdin=text)
    assert r.returncode == 0, f"promtool check metrics:\n{r.stdout}{r.stderr}\n{text}"


def openmetrics_families(text: str) -> dict[str, Any]:
    """Parse strictly as OpenMetrics 1.0 (prometheus_client's parser demands # EOF, units, grammar)."""
    parser = _module("prometheus_client.openmetrics.parser", "prometheus-client==0.26.0")
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


def _module(name: str, requirement: str) -> Any:
    """A test-only PyPI module (untyped: imported by name); missing, the test FAILS saying what to install."""
    try:
        return importlib.import_module(name)
    except ImportError:
        pytest.fail(f"{name} is missing: add {requirement} to tests/requirements.txt "
                    f"(.venv/bin/pip install {requirement})", pytrace=False)


def validate(doc: Any) -> None:
    jsonschema = _module("jsonschema", "jsonschema==4.26.0")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(doc)


def errors(doc: Any) -> list[str]:
    jsonschema = _module("jsonschema", "jsonschema==4.26.0")
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    return sorted(e.message for e in validator.iter_errors(doc))


# ---------------------------------------------------------------- synthetic plans

def grp(kind: UnitKind, name: str | None, *pids: int, uid: int | None = None,
        packages: tuple[str, ...] = ("libc6:amd64",)) -> UnitGroup:
    return UnitGroup(kind, name, uid, False, True, pids or (100,), packages, ())


def act(g: UnitGroup, action: str = "restart", reason: str = "service uses replaced files") -> Action:
    argv = ("systemctl", action, "--", g.name or "") if action in ("restart", "try-restart") else None
    return Action(g, policy.Act(action), argv, reason)


KERNEL = RebootReason(ReasonKind.KERNEL, "linux-image-6.1.0-27-amd64",
                      "running 6.1.0-26-amd64, a newer kernel is installed", 1_730_000_000)
PERFDATA = re.compile(r"^'?[a-z]+'?=\d+;(\d*);(\d*);(\d*);?(\d*)$")


def parse(out: str) -> tuple[str, dict[str, str], list[str]]:
    first, *rest = out.rstrip("\n").split("\n")
    text, _, perf = first.partition(" | ")
    values = {}
    for item in perf.split():
        assert PERFDATA.match(item), item
        values[item.split("=")[0]] = item.split("=")[1]
    return text, values, rest


def test_nagios_ok() -> None:
    code, out = formats.nagios([], [], is_root=True, scan=ScanResult([], 120, 0, 0))
    assert code == 0
    assert out == ("RESTARTCTL OK - no process uses replaced package files | "
                   "services=0;0;;0 sessions=0;;;0 reboot=0;0;;0;1 processes=0;;;0\n")


def test_nagios_services_warn_and_name_the_units() -> None:
    actions = [act(grp(SYSTEM, f"s{i}.service", 10 + i)) for i in range(7)]
    actions.append(act(grp(INIT, "init.scope", 1), "reexec", "PID 1 uses replaced files"))
    code, out = formats.nagios(actions, [], is_root=True)
    text, perf, long_output = parse(out)
    assert code == 1
    assert text == ("RESTARTCTL WARNING - 8 services need a restart (s0.service, s1.service, s2.service, "
                    "s3.service, s4.service and 3 more)")
    assert perf == {"services": "8;0;;0", "sessions": "0;;;0", "reboot": "0;0;;0;1", "processes": "8;;;0"}
    assert long_output[0] == "system s0.service: restart: service uses replaced files [libc6:amd64]"
    assert long_output[-1] == "init init.scope: reexec: PID 1 uses replaced files [libc6:amd64]"


def test_nagios_thresholds() -> None:
    actions = [act(grp(SYSTEM, f"s{i}.service", 10 + i)) for i in range(3)]
    assert formats.nagios(actions, [], is_root=True, services_critical=3)[0] == 2
    assert formats.nagios(actions, [], is_root=True, services_critical=4)[0] == 1
    code, out = formats.nagios(actions, [], is_root=True, services_warning=5, services_critical=10)
    assert code == 0 and parse(out)[1]["services"] == "3;4;9;0"
    assert formats.nagios(actions, [], is_root=True, services_warning=None)[0] == 0


def test_sessions_are_users_business_unless_asked() -> None:
    actions = [act(grp(SESSION, "session-3.scope", 50, uid=1000), "notify", "log out and in again"),
               act(grp(USER, "app.service", 51, uid=1000), "notify", "left to its owner")]
    code, out = formats.nagios(actions, [], is_root=True)
    assert code == 0
    assert parse(out)[0] == "RESTARTCTL OK - 2 sessions or user units left to their users"
    assert formats.nagios(actions, [], is_root=True, sessions_warning=1)[0] == 1
    assert formats.nagios(actions, [], is_root=True, sessions_warning=1, sessions_critical=2)[0] == 2


def test_containers_and_lone_processes_are_services_ignore_and_reboot_are_not() -> None:
    actions = [act(grp(CONTAINER, "web", 60), "notify"), act(grp(NONE, None, 61), "notify"),
               act(grp(SYSTEM, "cron.service", 62), "ignore"), act(grp(SYSTEM, "legacy.service", 63), "reboot")]
    code, out = formats.nagios(actions, [], is_root=True)
    text, perf, _ = parse(out)
    assert code == 1 and perf["services"] == "2;0;;0"
    assert "(web, pid 61)" in text


def test_reboot_is_warning_by_default_critical_if_asked() -> None:
    code, out = formats.nagios([], [KERNEL], is_root=True)
    text, perf, long_output = parse(out)
    assert code == 1
    assert text == "RESTARTCTL WARNING - reboot required (kernel linux-image-6.1.0-27-amd64)"
    assert perf["reboot"] == "1;0;;0;1"
    assert long_output == ["reboot: kernel linux-image-6.1.0-27-amd64: running 6.1.0-26-amd64, a newer kernel "
                           "is installed"]
    code, out = formats.nagios([], [KERNEL], is_root=True, reboot_status=formats.CRITICAL)
    assert code == 2 and parse(out)[1]["reboot"] == "1;;0;0;1"
    assert formats.nagios([], [KERNEL], is_root=True, reboot_status=formats.OK)[0] == 0


def test_not_root_is_unknown_with_the_reason() -> None:
    code, out = formats.nagios([act(grp(SYSTEM, "a.service"))], [KERNEL], is_root=False)
    assert code == 3
    assert out.startswith("RESTARTCTL UNKNOWN - must run as root") and "|" not in out
    assert formats.nagios_unknown("policy: /etc/x.toml:3: bad | key\x1b[2J") == (
        3, "RESTARTCTL UNKNOWN - policy: /etc/x.toml:3: bad / key\\x1b[2J\n")


def test_hostile_names_cannot_forge_perfdata_or_lines() -> None:
    evil = grp(SYSTEM, "x|services=0;;;0\nRESTARTCTL OK\x1b]0;t\x07.service", 70)
    code, out = formats.nagios([act(evil, "notify", "bad|reason\r\n")], [], is_root=True)
    lines = out.rstrip("\n").split("\n")
    assert len(lines) == 2
    assert lines[0].count("|") == 1 and "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert parse(out)[1]["services"] == "1;0;;0"


# ---------------------------------------------------------------- OpenMetrics

def om_sample(text: str, name: str, **labels: str) -> float:
    fam = openmetrics_families(text)
    family = next(f for f in fam.values() if f.name == name)
    [value] = [s.value for s in family.samples if s.labels == labels]
    return float(value)


def test_openmetrics_full_document_passes_promtool_and_the_openmetrics_parser() -> None:
    actions = [act(grp(SYSTEM, "nginx.service", 10, 11)), act(grp(SYSTEM, "dbus.service", 12), "defer"),
               act(grp(SESSION, "session-3.scope", 13, uid=1000), "notify"),
               act(grp(SYSTEM, "cron.service", 14), "ignore"), act(grp(SYSTEM, "legacy.service", 15), "reboot")]
    reasons = [KERNEL, RebootReason(ReasonKind.SERVICE, "libc6:amd64", "dbus.service: reboot instead", 1_720_000_000),
               RebootReason(ReasonKind.FLAG, None, "/run/reboot-required exists")]
    record = {"schema": "restartctl-state/1", "time": 1_731_000_000, "units": [
        {"status": "done"}, {"status": "done"}, {"status": "failed"}, {"status": "listed"}, "junk"]}
    text = formats.openmetrics(actions, [a.group for a in actions], ScanResult([], 321, 2, 1, 0), reasons,
                               last_run=record, last_run_duration=2.5, now=1_731_000_100.25)
    assert text.endswith("\n# EOF\n")
    check_metrics(text)
    fams = openmetrics_families(text)
    assert all(f.type == "gauge" for f in fams.values())
    assert om_sample(text, "restartctl_pending_units", scope="system") == 2  # ignore and reboot are not pending
    assert om_sample(text, "restartctl_pending_units", scope="session") == 1
    assert om_sample(text, "restartctl_pending_units", scope="container") == 0
    assert om_sample(text, "restartctl_planned_actions", action="reboot") == 1
    assert om_sample(text, "restartctl_stale_processes") == 6
    assert om_sample(text, "restartctl_scanned_processes") == 321
    assert om_sample(text, "restartctl_unreadable_processes", why="denied") == 1
    assert om_sample(text, "restartctl_reboot_required") == 1
    assert om_sample(text, "restartctl_reboot_reason", kind="kernel", package="linux-image-6.1.0-27-amd64") == 1
    assert om_sample(text, "restartctl_reboot_reason", kind="flag", package="") == 1
    assert om_sample(text, "restartctl_reboot_required_since_timestamp_seconds") == 1_720_000_000
    assert fams["restartctl_reboot_required_since_timestamp_seconds"].unit == "seconds"
    assert om_sample(text, "restartctl_last_run_timestamp_seconds") == 1_731_000_000
    assert om_sample(text, "restartctl_last_run_duration_seconds") == 2.5
    assert om_sample(text, "restartctl_last_run_restarts", result="done") == 2
    assert om_sample(text, "restartctl_last_run_restarts", result="failed") == 1
    assert om_sample(text, "restartctl_report_timestamp_seconds") == 1_731_000_100.25


def test_openmetrics_with_nothing_to_report() -> None:
    text = formats.openmetrics([], [], ScanResult([], 5, 0, 0, 0), [], now=1_700_000_000)
    check_metrics(text)
    fams = openmetrics_families(text)
    assert om_sample(text, "restartctl_reboot_required") == 0
    assert fams["restartctl_reboot_reason"].samples == []
    assert "restartctl_reboot_required_since_timestamp_seconds" not in fams
    assert "restartctl_last_run_timestamp_seconds" not in fams and "restartctl_last_run_duration_seconds" not in fams
    assert om_sample(text, "restartctl_last_run_restarts", result="done") == 0


def test_openmetrics_of_a_scan_has_no_plan() -> None:
    groups = [grp(SYSTEM, "a.service", 1, 2), grp(USER, "b.service", 3, uid=1000)]
    text = formats.openmetrics(None, groups, ScanResult([], 9, 0, 0, 0), [], now=1)
    check_metrics(text)
    assert "restartctl_planned_actions" not in openmetrics_families(text)
    assert om_sample(text, "restartctl_pending_units", scope="user") == 1
    assert om_sample(text, "restartctl_stale_processes") == 3


def test_restart_counts_from_the_record_or_the_caller() -> None:
    record = {"time": 5, "units": [{"status": "done"}, {"status": "failed"}, {"status": "skipped"}]}
    earlier_boot = formats.openmetrics([], [], ScanResult([], 1, 0, 0, 0), [], last_run=record,
                                       current_boot=False, now=6)
    assert om_sample(earlier_boot, "restartctl_last_run_restarts", result="done") == 0
    assert om_sample(earlier_boot, "restartctl_last_run_timestamp_seconds") == 5
    given = formats.openmetrics([], [], ScanResult([], 1, 0, 0, 0), [], last_run=record, restarts_done=7,
                                restarts_failed=0, now=6)
    assert om_sample(given, "restartctl_last_run_restarts", result="done") == 7
    assert om_sample(given, "restartctl_last_run_restarts", result="failed") == 0
    assert om_sample(given, "restartctl_last_run_restarts", result="skipped") == 1


def test_label_values_are_escaped() -> None:
    assert formats.escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert formats.escape_label("caf\udcc3") == "caf\\\\xc3"
    weird = RebootReason(ReasonKind.POLICY, 'we"ird\\pkg\nx', "d")
    text = formats.openmetrics([], [], ScanResult([], 1, 0, 0, 0), [weird], now=1)
    check_metrics(text)
    assert om_sample(text, "restartctl_reboot_reason", kind="policy", package='we"ird\\pkg\nx') == 1


def test_promtool_really_checks() -> None:
    """A broken exposition must fail: otherwise the checks above prove nothing."""
    assert promtool("check", "metrics", stdin='restartctl_x{a="b} 1\n').returncode != 0


def test_missing_tools_fail_never_skip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tools, "PROMTOOL", tmp_path / "promtool")
    with pytest.raises(pytest.fail.Exception, match="apt-get download -q promtool"):
        promtool("--version")
    with pytest.raises(pytest.fail.Exception, match="jsonschema==4.26.0"):
        _module("no_such_module_restartctl", "jsonschema==4.26.0")


# ---------------------------------------------------------------- the textfile writer

def test_default_textfile_only_where_node_exporter_looks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert formats.default_textfile(tmp_path / "absent") is None
    monkeypatch.setattr(formats, "TEXTFILE_DIR", tmp_path / "absent")
    assert formats.write_textfile("# EOF\n") is None
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(formats, "TEXTFILE_DIR", tmp_path)
    assert formats.write_textfile("# EOF\n") == tmp_path / "restartctl.prom"
    assert (tmp_path / "restartctl.prom").read_text() == "# EOF\n"


def test_textfile_is_0644_whatever_the_umask_and_leaves_nothing_behind(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        path = formats.write_textfile("a 1\n# EOF\n", tmp_path / "restartctl.prom")
    finally:
        os.umask(old)
    assert path is not None and stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["restartctl.prom"]
    with pytest.raises(OSError):
        formats.write_textfile("x", tmp_path / "missing-dir" / "restartctl.prom")
    with pytest.raises(OSError):
        formats.write_textfile("x", tmp_path / "restartctl.prom" / "below-a-file.prom")
    assert [p.name for p in tmp_path.iterdir()] == ["restartctl.prom"]


def test_textfile_replaces_a_symlink_instead_of_following_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (tmp_path / "restartctl.prom").symlink_to(victim)
    formats.write_textfile("new\n", tmp_path / "restartctl.prom")
    assert victim.read_text() == "keep\n"
    assert not (tmp_path / "restartctl.prom").is_symlink()
    assert (tmp_path / "restartctl.prom").read_text() == "new\n"


def test_textfile_directory_must_be_roots_and_not_a_link(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(OSError):
        formats.write_textfile("x", tmp_path / "link" / "restartctl.prom")
    os.chmod(real, 0o777)
    with pytest.raises(PermissionError):
        formats.write_textfile("x", real / "restartctl.prom")
    os.chown(real, 65534, 65534)
    os.chmod(real, 0o755)
    with pytest.raises(PermissionError):
        formats.write_textfile("x", real / "restartctl.prom")
    assert list(real.iterdir()) == []


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def test_a_reader_never_sees_a_partial_textfile(tmp_path: Path, stop: threading.Event) -> None:
    target = tmp_path / "restartctl.prom"
    versions = [f"restartctl_x {{n}} {i}\n".replace("{n}", "") * 20_000 + "# EOF\n" for i in range(3)]
    formats.write_textfile(versions[0], target)
    seen: list[str] = []
    bad: list[int] = []

    def read() -> None:
        while not stop.is_set():
            text = target.read_text()
            if text not in versions:
                bad.append(len(text))
            seen.append(text[-8:])

    t = threading.Thread(target=read)
    t.start()
    for i in range(60):
        formats.write_textfile(versions[i % 3], target)
    stop.set()
    t.join()
    assert bad == [] and seen
    assert sorted(p.name for p in tmp_path.iterdir()) == ["restartctl.prom"]


# ---------------------------------------------------------------- a fixture host, end to end

def _fixture_host(tmp_path: Path, *, memfd: bool = False) -> tuple[Host, Roots]:
    host = Host(tmp_path, systemd=True)
    host.add(100, cgroup="0::/system.slice/demod.service\n", name="demod")
    if memfd:
        host.processes[0].maps += map_line("/memfd:jit (deleted)", 9, "rwxp", start=0x7F0000100000)
    host.add(101, cgroup="0::/system.slice/dbus.service\n", name='dbus"\\\n')
    host.add(102, cgroup="0::/user.slice/user-1000.slice/session-4.scope\n", uid=1000)
    host.add(1, cgroup="0::/init.scope\n", name="systemd")
    return host, host.roots()


def test_formats_over_a_fixture_host(tmp_path: Path) -> None:
    """The pipeline the CLI runs, with every output format over its real findings."""
    _, roots = _fixture_host(tmp_path)
    findings = scan.find(roots, only_packages=None)
    actions = plan.make_plan(findings.groups, policy.for_host(roots.etc, roots.data))
    assert [(a.group.kind, a.group.name, a.action) for a in actions] == [
        ("init", "init.scope", "reexec"), ("system", "dbus.service", "defer"), ("system", "demod.service", "restart"),
        ("session", "session-4.scope", "notify")]
    reasons = reboot.reasons(actions, admindir=roots.admindir)
    assert [(r.kind, r.package) for r in reasons] == [("service", "libdemo1:amd64")]
    code, out = formats.nagios(actions, reasons, is_root=True, scan=findings.scan)
    assert code == 1
    assert parse(out)[1]["services"] == "3;0;;0"
    text = formats.openmetrics(actions, findings.groups, findings.scan, reasons, now=1_700_000_000)
    check_metrics(text)
    assert om_sample(text, "restartctl_pending_units", scope="session") == 1
    assert om_sample(text, "restartctl_reboot_reason", kind="service", package="libdemo1:amd64") == 1
    assert om_sample(text, "restartctl_stale_processes") == 4


def test_schema_is_a_valid_2020_12_schema() -> None:
    jsonschema = _module("jsonschema", "jsonschema==4.26.0")
    jsonschema.Draft202012Validator.check_schema(json.loads(SCHEMA.read_text()))


def test_schema_over_fixture_host_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host, _ = _fixture_host(tmp_path, memfd=True)
    for command in (["plan", "--json"], ["scan", "--json", "--all"], ["plan", "--json", "--packages", "demod"]):
        main(host.argv(*command))
        doc = json.loads(capsys.readouterr().out)
        validate(doc)
        validate({**doc, "reboot": formats.reboot_json([KERNEL], kernel.kernel_status(tmp_path, tmp_path))})
        if "--all" in command:
            assert doc["unowned"][0]["stale"][0]["path"] == "/memfd:jit"


def test_schema_requires_the_contract_and_allows_additions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host, _ = _fixture_host(tmp_path)
    main(host.argv("plan", "--json"))
    doc = json.loads(capsys.readouterr().out)
    assert errors({**doc, "future_member": {"x": 1}}) == []
    action = doc["actions"][0]
    assert errors({**doc, "actions": [{**action, "new_field": True}]}) == []
    without = {k: v for k, v in doc.items() if k != "stats"}
    assert errors(without) == ["'stats' is a required property"]
    assert errors({**doc, "schema": "restartctl/2"}) == ["'restartctl/1' was expected"]
    assert errors({**doc, "actions": [{**action, "action": "kill"}]})[0].startswith("'kill' is not one of")
    assert errors({**doc, "actions": [{**action, "argv": "systemctl restart x"}]}) != []
    assert errors({**doc, "actions": [{**action, "action": "defer", "argv": ["systemctl"]}]}) != []
    assert errors({**doc, "actions": [{**action, "argv": ["sh", "-c", "x"]}]}) != []
    proc = doc["processes"][0]
    assert errors({**doc, "processes": [{**proc, "stale": [{**proc["stale"][0], "evidence": "vibes"}]}]}) != []
    assert errors({**doc, "processes": [{**proc, "stale": [{**proc["stale"][0], "package": None}]}]}) != []
    assert errors({**doc, "reboot": {"required": "yes", "reasons": []}}) != []


# ---------------------------------------------------------------- the report timer's cheap path

def test_refresh_renews_the_textfile_without_a_scan_only_when_nothing_can_have_changed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``plan --format openmetrics --textfile --refresh`` (restartctl-report.service): a scan when the
    file says something is pending or the dpkg database / state / reboot flag changed, else only a
    new report time."""

    prom = tmp_path / "prom"
    prom.mkdir(mode=0o755)
    textfile = prom / "restartctl.prom"
    argv = ["plan", "--format", "openmetrics", "--textfile", str(textfile), "--refresh"]
    clean = fixture_host(tmp_path / "clean", stale=False)
    scans: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> scan.Findings:
        scans.append(1)
        return scan.find(*args, **kwargs)
    monkeypatch.setattr("restart.cli.find", counted)
    assert main([*argv, *clean]) == 0 and len(scans) == 1  # no file yet: a scan
    first = textfile.read_text()
    assert om_sample(first, "restartctl_pending_units", scope="system") == 0
    stamp = om_sample(first, "restartctl_report_timestamp_seconds")
    time.sleep(0.01)
    assert main([*argv, *clean]) == 0 and len(scans) == 1  # nothing changed: renewed, no scan
    second = textfile.read_text()
    assert om_sample(second, "restartctl_report_timestamp_seconds") > stamp
    strip = re.compile(r"^restartctl_report_timestamp_seconds .*$", re.M)
    assert strip.sub("", second) == strip.sub("", first)
    check_metrics(second)
    capsys.readouterr()
    # The dpkg database changed since: a scan.
    (tmp_path / "clean" / "admin" / "status").write_text("")
    assert main([*argv, *clean]) == 0 and len(scans) == 2
    # Something pending: always a scan (it may have been restarted by hand since).
    stale = fixture_host(tmp_path / "stale")
    argv[4] = str(prom / "stale.prom")
    assert main([*argv, *stale]) == 1 and len(scans) == 3
    assert main([*argv, *stale]) == 1 and len(scans) == 4
    assert om_sample((prom / "stale.prom").read_text(), "restartctl_pending_units", scope="system") == 2
    capsys.readouterr()


def test_renewal_needs_our_own_complete_file_and_no_reboot_since(tmp_path: Path) -> None:
    path = tmp_path / "restartctl.prom"
    text = formats.openmetrics([], [], ScanResult([], 5, 0, 0, 0), [], now=1_000)
    path.write_text(text)
    assert formats.renewed(path, since=[], booted=900, now=2_000) == text.replace(
        "restartctl_report_timestamp_seconds 1000", "restartctl_report_timestamp_seconds 2000")
    assert formats.renewed(path, since=[], booted=1_500, now=2_000) is None  # rebooted since
    assert formats.renewed(tmp_path / "absent", since=[], booted=0) is None
    path.write_text(text.replace("# EOF\n", ""))
    assert formats.renewed(path, since=[], booted=0) is None  # cut short
    path.write_text(text.replace('restartctl_unreadable_processes{why="deadline"} 0',
                                 'restartctl_unreadable_processes{why="deadline"} 3'))
    assert formats.renewed(path, since=[], booted=0) is None  # not everything was looked at
    reboot_text = formats.openmetrics([], [], ScanResult([], 5, 0, 0, 0), [KERNEL], now=1_000)
    path.write_text(reboot_text)
    assert formats.renewed(path, since=[], booted=0) is None
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_text(text)
    assert formats.renewed(path, since=[], booted=0) is None


# ---------------------------------------------------------------- real dpkg upgrade in a container

FORMATS_IN_CONTAINER = """
import json, sys
from restart import formats, kernel, plan, policy, reboot, scan
from restart.roots import Roots
roots = Roots()
findings = scan.find(roots, only_packages=None)
actions = plan.make_plan(findings.groups, policy.for_host(roots.etc, roots.data))
kernel = kernel.kernel_status(roots.proc, roots.admindir)
reasons = reboot.reasons(actions, kernel, admindir=roots.admindir)
reasons += reboot.flagged(roots.run, known=reasons)
code, nagios = formats.nagios(actions, reasons, is_root=True, scan=findings.scan)
metrics = formats.openmetrics(actions, findings.groups, findings.scan, reasons)
json.dump({"nagios": [code, nagios], "openmetrics": metrics,
           "reboot": formats.reboot_json(reasons, kernel)}, sys.stdout)
"""


@pytest.fixture(scope="module")
def upgraded(systemd_container: Container, demo_debs: dict[str, dict[str, Path]]) -> Container:
    """rctl-demod.service running on v1, then v1 -> v2 by dpkg: the service maps a deleted library."""
    run_demod_then_upgrade(systemd_container, demo_debs)
    return systemd_container


def _in(c: Container, *argv: str) -> subprocess.CompletedProcess[str]:
    return c.exec(list(argv), env={"PYTHONPATH": str(REPO)})


@pytest.mark.real
def test_schema_validates_real_plan_after_a_real_upgrade(upgraded: Container) -> None:
    r = _in(upgraded, "/usr/bin/python3", "-m", "restart", "plan", "--json")
    assert r.returncode == 1 and r.stderr == "", r.stderr
    doc = json.loads(r.stdout)
    validate(doc)
    assert "rctl-demod.service" in {a["unit"] for a in doc["actions"]}
    r = _in(upgraded, "/usr/bin/python3", "-m", "restart", "scan", "--json", "--all")
    assert r.returncode == 1 and r.stderr == "", r.stderr
    validate(json.loads(r.stdout))


@pytest.mark.real
def test_formats_over_a_real_upgrade(upgraded: Container) -> None:
    r = _in(upgraded, "/usr/bin/python3", "-c", FORMATS_IN_CONTAINER)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    out = json.loads(r.stdout)
    code, nagios = out["nagios"]
    assert code == 1 and nagios.startswith("RESTARTCTL WARNING - ")
    assert "system rctl-demod.service: restart: service uses replaced files" in nagios
    check_metrics(out["openmetrics"])
    assert om_sample(out["openmetrics"], "restartctl_pending_units", scope="system") >= 1
    assert om_sample(out["openmetrics"], "restartctl_scanned_processes") > 1
    validate({"schema": "restartctl/1", "scope": {"packages": None}, "processes": [], "units": [],
              "stats": {"scanned": 0, "vanished": 0, "denied": 0}, "reboot": out["reboot"]})
    assert out["reboot"]["kernel"]["running"] == os.uname().release
