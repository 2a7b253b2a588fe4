"""Machine formats for monitoring: a Nagios/Icinga plugin line and OpenMetrics text.

Both are views over what a run already has (findings, the plan, reboot reasons, the state
record); neither detects anything.  What counts, in both:

services
    pending units root must see to: system units, PID 1, user managers, containers, unmanaged
    processes; every action except ``ignore`` and ``reboot`` (a unit the policy reboots for is
    counted once, as a reboot reason).
sessions
    login sessions and user units: left to their users, never alarming by default.
reboot
    1 when any :class:`restart.reboot.RebootReason` exists.

Nagios defaults: any pending service is WARNING; a needed reboot is WARNING too (a reboot after
a kernel update is routine and often waits for a maintenance window; paging CRITICAL for it
teaches people to ignore the check); sessions never alarm.  Every threshold is a parameter.

OpenMetrics text is written so that the Prometheus text format parser (node-exporter's textfile
collector, ``promtool check metrics``) reads it too: gauges only, no sample timestamps.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from restart import TYPE_CHECKING, fsutil
from restart.kernel import KernelStatus
from restart.plan import Action, Status
from restart.policy import ACTIONS, Act
from restart.processes import OVER_BUDGET_SHOWN, ScanResult
from restart.reboot import RebootReason, required_since, unpacked_at
from restart.text import clean, printable
from restart.units import CONTAINER, INIT, NONE, SESSION, SYSTEM, USER, USER_MANAGER, UnitGroup

if TYPE_CHECKING:
    from typing import Any

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS_NAMES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")

SERVICE_KINDS = (SYSTEM, INIT, USER_MANAGER, CONTAINER, NONE)
SESSION_KINDS = (SESSION, USER)
SCOPES = (SYSTEM, USER, SESSION, INIT, USER_MANAGER, CONTAINER, NONE)
NOT_PENDING = (Act.IGNORE, Act.REBOOT)
RESULTS = (Status.DONE, Status.FAILED, Status.SKIPPED)

TEXTFILE_DIR = Path("/var/lib/prometheus/node-exporter")
TEXTFILE_NAME = "restartctl.prom"

_SHOWN_UNITS = 5


def pending(actions: Sequence[Action]) -> list[Action]:
    """Actions that leave something for someone to do."""
    return [a for a in actions if a.action not in NOT_PENDING]


def service_packages(actions: Sequence[Action]) -> set[str]:
    """The packages pending services still use (for ``reboot.unpacked_at``: how long they have waited)."""
    return {p for a in pending(actions) if a.group.kind in SERVICE_KINDS for p in a.group.packages}


def _label(g: UnitGroup) -> str:
    return printable(g.name) if g.name else f"pid {','.join(str(p) for p in g.pids)}"


# ---- Nagios / Icinga ----------------------------------------------------------------------

def _plugin_text(text: str) -> str:
    """Plugin output: one line per call, and '|' would start perfdata."""
    return printable(text).replace("|", "/")


def _level(count: int, warning: int | None, critical: int | None) -> int:
    if critical is not None and count >= critical:
        return CRITICAL
    if warning is not None and count >= warning:
        return WARNING
    return OK


def _range(at_least: int | None) -> str:
    """Nagios perfdata thresholds alert *outside* 0..N, so "alert at >= K" is written K-1."""
    return "" if at_least is None else str(max(at_least - 1, 0))


def _names(actions: Sequence[Action]) -> str:
    names = [_label(a.group) for a in actions[:_SHOWN_UNITS]]
    more = len(actions) - len(names)
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


def nagios_unknown(reason: str) -> tuple[int, str]:
    """For a run that could not look (not root, a broken policy, an error): UNKNOWN and why."""
    return UNKNOWN, f"RESTARTCTL UNKNOWN - {_plugin_text(reason)}\n"


def nagios(actions: Sequence[Action], reasons: Sequence[RebootReason], *, is_root: bool,
           scan: ScanResult | None = None,
           services_warning: int | None = 1, services_critical: int | None = None,
           sessions_warning: int | None = None, sessions_critical: int | None = None,
           reboot_status: int = WARNING, down: Sequence[str] = ()) -> tuple[int, str]:
    """The plugin result: (exit code, output).  The first line is status and perfdata; later lines
    (Nagios "long output") name each pending unit and reboot reason.

    Thresholds are counts that trigger the state ("warn at >= 1"); None disables one.  As non-root
    the scan cannot see other users' processes, so the answer is UNKNOWN rather than a false OK.
    ``down`` names units the last run failed to restart and that are not running now: CRITICAL,
    since no scan can see the processes of a service that is down.
    """
    if not is_root:
        return nagios_unknown("must run as root: other users' processes cannot be read, a scan would miss them")
    todo = pending(actions)
    services = [a for a in todo if a.group.kind in SERVICE_KINDS]
    sessions = [a for a in todo if a.group.kind in SESSION_KINDS]
    reboot = 1 if reasons else 0
    code = max(_level(len(services), services_warning, services_critical),
               _level(len(sessions), sessions_warning, sessions_critical),
               reboot_status if reboot else OK, CRITICAL if down else OK)
    parts = []
    if down:
        shown = ", ".join(printable(n) for n in down[:_SHOWN_UNITS])
        parts.append(f"{len(down)} unit{'s' if len(down) != 1 else ''} down after a failed restart ({shown}"
                     f"{f' and {len(down) - _SHOWN_UNITS} more' if len(down) > _SHOWN_UNITS else ''})")
    if services:
        parts.append(f"{len(services)} service{'s' if len(services) != 1 else ''} "
                     f"need{'s' if len(services) == 1 else ''} a restart ({_names(services)})")
    if sessions:
        parts.append(f"{len(sessions)} session{'s' if len(sessions) != 1 else ''} or user "
                     f"unit{'s' if len(sessions) != 1 else ''} left to their users")
    if reboot:
        why = sorted({f"{r.kind} {r.package}" if r.package else r.kind for r in reasons})
        parts.append(f"reboot required ({', '.join(why)})")
    if scan is not None and scan.denied:
        parts.append(f"{scan.denied} processes could not be read")
    summary = "; ".join(parts) if parts else "no process uses replaced package files"
    procs = sum(len(a.group.pids) for a in actions)
    perf = (f"services={len(services)};{_range(services_warning)};{_range(services_critical)};0 "
            f"sessions={len(sessions)};{_range(sessions_warning)};{_range(sessions_critical)};0 "
            f"reboot={reboot};{'0' if reboot_status == WARNING else ''};{'0' if reboot_status == CRITICAL else ''};0;1 "
            f"processes={procs};;;0")
    lines = [f"RESTARTCTL {STATUS_NAMES[code]} - {_plugin_text(summary)} | {perf}"]
    for a in todo:
        lines.append(_plugin_text(f"{a.group.kind} {_label(a.group)}: {a.action}: {a.reason} "
                                  f"[{', '.join(a.group.packages)}]"))
    lines.extend(_plugin_text(f"down: {name}: its restart failed in the last run") for name in down)
    for r in reasons:
        lines.append(_plugin_text(f"reboot: {r.kind}{' ' + r.package if r.package else ''}: {r.detail}"))
    return code, "\n".join(lines) + "\n"


# ---- OpenMetrics ----------------------------------------------------------------------------

def escape_label(value: str) -> str:
    """OpenMetrics (and Prometheus text) label value escaping; undecodable bytes as ``\\xNN`` first."""
    return clean(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) or not float(value).is_integer() else str(int(value))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, help_text: str, samples: Sequence[tuple[Mapping[str, str], float]], *,
               unit: str | None = None) -> None:
        self.lines.append(f"# TYPE {name} gauge")
        if unit:
            self.lines.append(f"# UNIT {name} {unit}")
        self.lines.append(f"# HELP {name} {help_text}")
        for labels, value in samples:
            text = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}")


def _restarts(last_run: Mapping[str, Any] | None, current_boot: bool) -> Counter[str]:
    units = last_run.get("units", []) if last_run and current_boot else []
    return Counter(str(u.get("status")) for u in units if isinstance(u, dict)) if isinstance(units, list) else Counter()


def openmetrics(actions: Sequence[Action] | None, groups: Sequence[UnitGroup], scan: ScanResult,
                reasons: Sequence[RebootReason], *, last_run: Mapping[str, Any] | None = None,
                current_boot: bool = True, last_run_duration: float | None = None,
                restarts_done: int | None = None, restarts_failed: int | None = None,
                pending_since: float | None = None, now: float | None = None) -> str:
    """The OpenMetrics text exposition, ending with ``# EOF``.

    ``groups`` are the findings' unit groups (used when there is no plan); ``last_run`` is the state
    record (``state.read_json(..., state.PENDING)``) and ``current_boot`` whether it is of this boot.
    Restart counts default to the last run's record (0 when it is of an earlier boot).
    ``pending_since`` (``reboot.unpacked_at(admindir, service_packages(actions))``) says how long
    pending services have waited; alert rules survive a Prometheus restart with it.
    """
    w = _Writer()
    considered = pending(actions) if actions is not None else None
    kinds = Counter(a.group.kind for a in considered) if considered is not None else Counter(g.kind for g in groups)
    w.family("restartctl_pending_units", "Units (or sessions, containers, lone processes) still using replaced "
             "package files, by scope; ignored units and units the policy reboots for are not counted.",
             [({"scope": s}, kinds[s]) for s in SCOPES])
    services = sum(kinds[k] for k in SERVICE_KINDS)
    if services and pending_since is not None:
        w.family("restartctl_pending_since_timestamp_seconds", "When the packages pending services still use "
                 "were unpacked, the earliest (Unix time).", [({}, pending_since)], unit="seconds")
    if actions is not None:
        counts = Counter(a.action for a in actions)
        w.family("restartctl_planned_actions", "Units by the action the plan gives them.",
                 [({"action": name}, counts[name]) for name in ACTIONS])
    w.family("restartctl_stale_processes", "Processes using replaced package files.",
             [({}, sum(len(g.pids) for g in groups))])
    w.family("restartctl_scanned_processes", "Processes the scan looked at.", [({}, scan.scanned)])
    w.family("restartctl_unreadable_processes", "Processes the scan could not read, by why.",
             [({"why": "denied"}, scan.denied), ({"why": "vanished"}, scan.vanished),
              ({"why": "error"}, scan.errors), ({"why": "deadline"}, scan.unscanned - len(scan.over_budget)),
              ({"why": "budget"}, len(scan.over_budget))])
    if scan.over_budget:
        w.family("restartctl_unscanned_process", "A process not scanned because reading it would exceed a "
                 "per-process budget (bytes, lines, time): never taken for clean.",
                 [({"pid": str(u.pid), "uid": str(u.uid)}, 1) for u in scan.over_budget[:OVER_BUDGET_SHOWN]])
    w.family("restartctl_reboot_required", "1 when the host needs a reboot (see restartctl_reboot_reason).",
             [({}, 1 if reasons else 0)])
    seen = dict.fromkeys((r.kind, r.package or "") for r in reasons)
    w.family("restartctl_reboot_reason", "One series per reason a reboot is needed, with the package responsible.",
             [({"kind": kind, "package": package}, 1) for kind, package in seen])
    since = required_since(reasons)
    if reasons and since is not None:
        w.family("restartctl_reboot_required_since_timestamp_seconds",
                 "When the earliest reason for a reboot appeared (Unix time).", [({}, since)], unit="seconds")
    if last_run is not None and isinstance(last_run.get("time"), int | float):
        w.family("restartctl_last_run_timestamp_seconds", "When restartctl last acted or reported (Unix time).",
                 [({}, last_run["time"])], unit="seconds")
    duration = last_run_duration if last_run_duration is not None else (last_run or {}).get("duration")
    if isinstance(duration, int | float):
        w.family("restartctl_last_run_duration_seconds", "How long the last run took.", [({}, duration)],
                 unit="seconds")
    statuses = _restarts(last_run, current_boot)
    done = statuses[Status.DONE] if restarts_done is None else restarts_done
    failed = statuses[Status.FAILED] if restarts_failed is None else restarts_failed
    counts_by = {**statuses, Status.DONE: done, Status.FAILED: failed}
    w.family("restartctl_last_run_restarts", "Restarts in the last run of this boot, by result.",
             [({"result": result}, counts_by.get(result, 0)) for result in RESULTS])
    w.family("restartctl_report_timestamp_seconds", "When this report was made (Unix time).",
             [({}, round(time.time() if now is None else now, 3))], unit="seconds")
    return "\n".join([*w.lines, "# EOF"]) + "\n"


def host_metrics(actions: Sequence[Action] | None, groups: Sequence[UnitGroup], scan: ScanResult,
                 reasons: Sequence[RebootReason], *, admindir: Path, last_run: Mapping[str, Any] | None,
                 current_boot: bool) -> str:
    """The textfile every writer writes (the hooks, ``apply``, ``plan --format openmetrics``, the
    report timer): the same series from the same facts, ``pending_since`` included.  An acting run
    passes what is left after its restarts, so the counts are those after the restarts."""
    services = (service_packages(actions) if actions is not None else
                {p for g in groups if g.kind in SERVICE_KINDS for p in g.packages})
    return openmetrics(actions, groups, scan, reasons, last_run=last_run, current_boot=current_boot,
                       pending_since=unpacked_at(admindir, services))


_RENEWABLE_MAX = 1 << 20  # bytes: a textfile of ours is a few KiB


def renewed(path: Path, *, since: Sequence[Path], booted: float, now: float | None = None) -> str | None:
    """The report timer's cheap path: the textfile at ``path`` with only its report timestamp renewed,
    or None when a scan is due.

    A scan is due unless the last report said nothing is pending, no reboot is needed and every
    process was looked at, and nothing it depends on changed since: no reboot (``booted``, wall
    clock) and none of ``since`` (the dpkg database, restartctl's state, the reboot flag) is newer.
    Pending units may have been restarted by hand, so a host with something pending is always
    looked at again.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            text = f.read(_RENEWABLE_MAX + 1).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    samples: dict[str, float] = {}
    for line in text.splitlines()[:10_000] if len(text) <= _RENEWABLE_MAX else []:
        name, _, value = line.rpartition(" ")
        if name and not line.startswith("#"):
            try:
                samples[name] = float(value)
            except ValueError:
                return None
    stamp = samples.get("restartctl_report_timestamp_seconds")
    clear = ("restartctl_reboot_required", 'restartctl_unreadable_processes{why="deadline"}',
             *(f'restartctl_pending_units{{scope="{scope}"}}' for scope in SCOPES))
    if stamp is None or not text.endswith("# EOF\n") or any(samples.get(name, 1) != 0 for name in clear):
        return None
    for dependency in since:
        try:
            if os.stat(dependency).st_mtime >= stamp:
                return None
        except FileNotFoundError:
            continue
        except OSError:
            return None
    if booted >= stamp:
        return None
    old = f"restartctl_report_timestamp_seconds {_number(stamp)}\n"
    new = f"restartctl_report_timestamp_seconds {_number(round(time.time() if now is None else now, 3))}\n"
    return text.replace(old, new) if old in text else None


def renew_textfile(path: Path | None, *, since: Sequence[Path]) -> str | None:
    """``--refresh``: the textfile at ``path`` with its report time renewed (:func:`renewed`), written;
    None when a scan is due instead."""
    booted = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    text = None if path is None else renewed(path, since=since, booted=booted)
    if text is not None:
        write_textfile(text, path)
    return text


def default_textfile(directory: Path = TEXTFILE_DIR) -> Path | None:
    """Where node-exporter's textfile collector looks, when its directory exists on this host."""
    return directory / TEXTFILE_NAME if directory.is_dir() else None


def write_textfile(text: str, path: Path | None = None) -> Path | None:
    """Replace ``path`` (default: :func:`default_textfile`) atomically, mode 0644.

    Through :func:`fsutil.write_atomic`: a scrape sees the old file or the new one, never part (the
    temporary file's name ends ``.tmp``, which the collector ignores: it reads ``*.prom``).  The
    directory must be root's and writable by nobody else (``/var/lib/prometheus`` belongs to the
    prometheus user, who could otherwise swap ``node-exporter`` for a link); a symlink at the target
    is replaced, not followed.  Returns None when there is no default directory.
    """
    if path is None:
        path = default_textfile(TEXTFILE_DIR)
        if path is None:
            return None
    fsutil.write_atomic(path, text.encode("utf-8"))
    return path


# ---- JSON -----------------------------------------------------------------------------------

def reboot_json(reasons: Sequence[RebootReason], kernel: KernelStatus | None = None) -> dict[str, Any]:
    """The ``reboot`` member proposed for the restartctl/1 document (an addition within /1)."""
    doc: dict[str, Any] = {
        "required": bool(reasons),
        "reasons": [{"kind": r.kind, "package": r.package, "detail": clean(r.detail), "since": r.since}
                    for r in reasons],
    }
    if kernel is not None:
        doc["kernel"] = {"state": kernel.state, "running": clean(kernel.running),
                         "running_build": kernel.running_build, "installed_build": kernel.installed_build,
                         "newest": kernel.newest, "newest_version": kernel.newest_version,
                         "detail": clean(kernel.detail)}
    return doc
