#!/usr/bin/python3
"""Benchmark restarts: N services on an upgraded library, restarted by systemd alone, needrestart, restartctl.

In a throw-away booted systemd container (an overlay of this host's /, from tests/support):
N services ``rctl-bench-NNN.service``, each ``ExecStartPre=/bin/sleep 0.5`` (a realistic start time)
and ``ExecStart=/usr/sbin/rctl-demod`` (maps the demo library).  Before each timed run the services
are put on the old library (``rctl-libdemo1`` 1.0 installed, all restarted, 2.0 installed over it),
then timed inside the container, in one run:

- the floor: one ``systemctl restart -- <all N>`` (systemd runs the jobs in parallel; nothing checked);
- the floor with a canary: ``systemctl restart`` of the first unit, then of the other N-1 (what a
  canary costs by itself: one service start before the rest; nothing checked);
- ``needrestart -r a`` (its .deb and Perl libraries fetched once into tests/.cache/debs/needrestart,
  installed inside the container only, never on the host: bench/scan.py's ``install_needrestart``);
- ``restartctl apply --yes`` with the vendor policy (``max_parallel = 128``: one wave after the canary
  for N <= 129), then with ``settle = 0``, with ``settle = 0`` and the former default waves of 32
  (``max_parallel = 32``), and one unit at a time (``max_parallel = 1``, ``settle = 0``: the order
  and pace before waves; only up to ``--sequential-up-to`` units).

After each restartctl run every service must have a new main process and ``restartctl plan`` must
find none of them stale (every restart verified).  Target: restartctl <= 2 x the floor.

    sudo /usr/bin/python3 bench/restarts.py [--units 30 100] [--runs 3] [--trace]
    sudo /usr/bin/python3 bench/restarts.py --keep --units 30    # set up, print how to enter, wait

Writes bench/results/<date>-restart.json and .md.  Needs what tests/run.sh installs
(systemd-container, gcc, dpkg-dev).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scan import install_needrestart  # noqa: E402 - bench/scan.py's: needrestart inside only

from tests.support.checkout import install_command  # noqa: E402
from tests.support.container import Container  # noqa: E402
from tests.support.debs import demo_packages  # noqa: E402

TARGET = 2.0
NR_CONF = "$nrconf{kernelhints} = 0;\n$nrconf{ucodehints} = 0;\n$nrconf{sendnotify} = 0;\n"  # services only
UNIT = ("[Unit]\nDescription=restartctl bench service\nStartLimitIntervalSec=0\n"
        "[Service]\nExecStartPre=/bin/sleep 0.5\nExecStart=/usr/sbin/rctl-demod\n")
PACKAGES = ("rctl-libdemo1", "rctl-demod")
# Times a command inside the container, without the cost of entering it.
TIMER = ("import subprocess, sys, time\n"
         "t = time.monotonic()\n"
         "r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)\n"
         "print(f'{time.monotonic() - t:.3f} {r.returncode}')\n"
         "sys.stderr.write(r.stdout.decode(errors='replace')[-6000:])\n")
CANARY_FLOOR = "systemctl restart of 1, then of the other N-1 (the floor with a canary)"
# The restartctl configurations timed, name -> [settings].
# The vendor's max_parallel (128) makes N <= 129 one wave after the canary; the traced configuration.
ONE_WAVE = "restartctl, settle = 0"
CONFIGS = {"restartctl (vendor policy)": "",
           ONE_WAVE: "settle = 0\n",
           "restartctl, settle = 0, max_parallel = 32 (the former vendor default: waves of 32)":
               "settle = 0\nmax_parallel = 32\n",
           "restartctl, one at a time (max_parallel = 1, settle = 0)": "max_parallel = 1\nsettle = 0\n"}


# What the hook run after the upgrade leaves for apply: the policy cache (policy.load's) holding this
# policy's documents.  The rounds alternate policies, so without it every timed apply parsed its policy
# anew (tomllib, 6-10 ms), which an apply after a hook run of the same policy never does.
WARM_POLICY_CACHE = ("import sys; sys.path.append('/usr/lib/python3/dist-packages')\n"
                     "from restart import policy\nfrom restart.roots import Roots\n"
                     "r = Roots()\npolicy.for_host(r.etc, r.data, r.state / policy.CACHE)\n")


def set_policy(c: Container, settings: str) -> None:
    """/etc/restartctl/policy.toml with these settings, and the policy cache warm for it."""
    c.write_file("/etc/restartctl/policy.toml", f"[settings]\n{settings}")
    c.check(["mkdir", "-p", "-m", "0755", "/var/lib/restartctl"])
    c.check(["/usr/bin/python3", "-IS", "-c", WARM_POLICY_CACHE])


def unit_names(n: int) -> list[str]:
    return [f"rctl-bench-{i:03d}.service" for i in range(n)]


def timed(c: Container, argv: list[str], timeout: float = 900) -> tuple[float, int, str]:
    r = c.exec(["/usr/bin/python3", "-c", TIMER, *argv], timeout=timeout)
    seconds, code = r.stdout.split()
    return float(seconds), int(code), r.stderr


def main_pids(c: Container, names: list[str]) -> dict[str, str]:
    out = c.check(["systemctl", "show", "-p", "MainPID", "--value", "--", *names])
    return dict(zip(names, out.split(), strict=True))


def make_stale(c: Container, debs: dict[str, dict[str, Path]], names: list[str]) -> dict[str, str]:
    """Every service running on library 1.0, then 2.0 installed under them; returns their main PIDs."""
    c.install_debs([debs["1.0"][p] for p in PACKAGES])
    c.check(["systemctl", "restart", "--", *names], timeout=300)
    c.install_debs([debs["2.0"][p] for p in PACKAGES])
    return main_pids(c, names)


def restarted_all(c: Container, names: list[str], before: dict[str, str]) -> bool:
    now = main_pids(c, names)
    return all(now[n] not in ("0", before[n]) for n in names)


def add_units(c: Container, n: int) -> list[str]:
    names = unit_names(n)
    for name in names:
        c.write_file(f"/etc/systemd/system/{name}", UNIT)
    c.check(["systemctl", "daemon-reload"])
    c.check(["systemctl", "start", "--", *names], timeout=300)
    return names


def measure(c: Container, debs: dict[str, dict[str, Path]], n: int, runs: int,
            sequential_up_to: int, trace: list[str] | None = None) -> dict[str, list[float]]:
    """The rounds at N = ``n``; then, given ``trace``, one more run of the one-wave configuration through
    restart_trace.py, whose timeline lines are added to it."""
    names = add_units(c, n)
    results: dict[str, list[float]] = {}
    for _ in range(runs):
        # Every timed run starts from the same state, the services on the old library right after the upgrade
        # (until 2026-12-04 22:40 the two floors were timed right after the run before instead: 8 and 14-19 ms
        # less than from this state; bench/README.md, "Every row from the same state").
        make_stale(c, debs, names)
        seconds, code, err = timed(c, ["/usr/bin/systemctl", "restart", "--", *names])
        assert code == 0, err
        results.setdefault("systemctl restart of all N (floor)", []).append(seconds)
        # What any canary costs: one unit's start alone before the others' (two systemctl calls, nothing checked).
        make_stale(c, debs, names)
        first, code, err = timed(c, ["/usr/bin/systemctl", "restart", "--", names[0]])
        assert code == 0, err
        rest, code, err = timed(c, ["/usr/bin/systemctl", "restart", "--", *names[1:]])
        assert code == 0, err
        results.setdefault(CANARY_FLOOR, []).append(first + rest)
        before = make_stale(c, debs, names)
        seconds, code, err = timed(c, ["/usr/sbin/needrestart", "-r", "a", "-q"])
        assert restarted_all(c, names, before), f"needrestart (exit status {code}) left some: {err}"
        results.setdefault("needrestart -r a", []).append(seconds)
        for label, settings in CONFIGS.items():
            if settings.startswith("max_parallel = 1\n") and n > sequential_up_to:
                continue
            before = make_stale(c, debs, names)
            set_policy(c, settings)
            seconds, code, err = timed(c, ["/usr/sbin/restartctl", "apply", "--yes"])
            assert code == 0 and "Traceback" not in err, err
            assert restarted_all(c, names, before), label
            plan = json.loads(c.exec(["/usr/sbin/restartctl", "plan", "--json"]).stdout)
            assert not {a["unit"] for a in plan["actions"]} & set(names), label  # every restart verified
            results.setdefault(label, []).append(seconds)
    if trace is not None:
        before = make_stale(c, debs, names)
        set_policy(c, CONFIGS[ONE_WAVE])
        r = c.exec(["/usr/bin/python3", "-IS", str(REPO / "bench" / "restart_trace.py")], timeout=300)
        assert r.returncode == 0 and restarted_all(c, names, before), r.stderr
        trace.extend(line for line in r.stderr.splitlines() if line.startswith(" "))
    c.check(["systemctl", "stop", "--", *names], timeout=300)
    for name in names:
        c.check(["rm", "-f", f"/etc/systemd/system/{name}"])
    c.check(["systemctl", "daemon-reload"])
    return results


def table(all_results: dict[int, dict[str, list[float]]], runs: int) -> list[str]:
    lines = ["| N | what | median s | min s | max s | × floor |", "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for n, results in all_results.items():
        floor = statistics.median(next(iter(results.values())))
        for label, times in results.items():
            med = statistics.median(times)
            lines.append(f"| {n} | {label} | {med:.2f} | {min(times):.2f} | {max(times):.2f} | {med / floor:.2f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, nargs="+", default=[30, 100])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--trace", action="store_true",
                        help="after the rounds, one traced run of the one-wave configuration per N (its timeline)")
    parser.add_argument("--keep", action="store_true",
                        help="set up the first --units services on the old library, print how to enter, wait")
    parser.add_argument("--sequential-up-to", type=int, default=30,
                        help="time max_parallel = 1 only up to this many units (default 30)")
    args = parser.parse_args()
    # Byte-compiled first, as the Debian package is at install: the checkout is read-only inside, and
    # without .pyc every run would compile the package again (about 40 ms).
    subprocess.run(["/usr/bin/python3", "-m", "compileall", "-q", str(REPO / "restart")], check=True)
    load_before = os.getloadavg()
    all_results: dict[int, dict[str, list[float]]] = {}
    traces: dict[int, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="rctl-bench-restart-") as tmp, \
            Container("rctl-bench-restart", boot=True) as c:
        debs = {v: demo_packages(Path(tmp) / v, v) for v in ("1.0", "2.0")}
        # /usr/sbin/restartctl as the package installs it (bin/restartctl: python3 -IS, no sh, no runpy),
        # running this checkout's code; no apt/dpkg hooks
        install_command(c)
        install_needrestart(c)
        c.write_file("/etc/needrestart/conf.d/bench.conf", NR_CONF)
        c.install_debs([debs["1.0"][p] for p in PACKAGES])
        if args.keep:
            names = add_units(c, args.units[0])
            inside = {v: [c.copy_in(debs[v][p], f"{v}-{p}.deb") for p in PACKAGES] for v in debs}
            print(f"container leader {c.leader}: sudo nsenter -t {c.leader} -a ...; {len(names)} units; "
                  f"debs {inside}; kill -TERM {os.getpid()} to stop", flush=True)
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
            signal.sigwait({signal.SIGTERM, signal.SIGINT})
            return 0
        for n in args.units:
            traces[n] = []
            all_results[n] = measure(c, debs, n, args.runs, args.sequential_up_to,
                                     traces[n] if args.trace else None)
    load_after = os.getloadavg()
    now = dt.datetime.now(dt.UTC)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    verdicts = []
    for n, results in all_results.items():
        floor = statistics.median(results["systemctl restart of all N (floor)"])
        for label, times in results.items():
            if label.startswith("restartctl") and "settle = 0" in label:
                ratio = statistics.median(times) / floor
                verdicts.append(f"N = {n}: {label}: {ratio:.2f} × the floor (target <= {TARGET:g}: "
                                f"{'PASS' if ratio <= TARGET else 'FAIL'})")
        bound = statistics.median(results[CANARY_FLOOR]) / floor
        verdicts.append(f"N = {n}: a canary alone costs {bound:.2f} × the floor before restartctl does anything")
    lines = [f"# restartctl apply vs the floor, {now:%Y-%m-%d %H:%M} UTC", "",
             f"N services with ExecStartPre=/bin/sleep 0.5, each mapping an upgraded library, in a booted "
             f"systemd container; {args.runs} runs each; restartctl at commit {commit}. Host load average "
             f"(1/5/15 min) {' '.join(f'{x:.2f}' for x in load_before)} before, "
             f"{' '.join(f'{x:.2f}' for x in load_after)} after; {os.cpu_count()} CPUs.", "",
             *table(all_results, args.runs), "", *verdicts]
    for n, lines_of in traces.items():
        if lines_of:
            lines += ["", f"One traced run at N = {n} ({ONE_WAVE}; seconds since the process started):", "",
                      "```", *lines_of, "```"]
    results_dir = REPO / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / f"{now:%Y-%m-%d}-restart.md").write_text("\n".join(lines) + "\n")
    (results_dir / f"{now:%Y-%m-%d}-restart.json").write_text(json.dumps(
        {"results": {str(n): r for n, r in all_results.items()}, "load_before": load_before,
         "load_after": load_after, "commit": commit, "runs": args.runs,
         "traces": {str(n): t for n, t in traces.items() if t}}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
