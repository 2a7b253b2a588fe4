#!/usr/bin/python3
"""Benchmark ``restartctl scan`` against the floor and needrestart, on two hosts, in one table.

Both run in a booted systemd 252 container over an overlay of this host's ``/`` (tests/support's
harness; the host is never written), with the host's real dpkg database and needrestart installed
inside only:

* ``real``: issue 15's real upgrade state: ``--units`` units of ``--per-unit`` python3 processes
  that map real libraries through ctypes, ``--idle`` sleeps, then one ``dpkg -i`` of 23 real library
  packages (libssl3, zlib1g, libpam0g, libgnutls30, krb5, glib, libxml2, curl, ...) downloaded
  once into ``tests/.cache/debs/real-state``. Before that, on the fresh container, the apt hook's
  overhead with nothing stale (``--hook-runs`` apt runs with and without the hooks, interleaved).
* ``synthetic``: one fake library package (tests/support's ``rctl-oldlib1``) upgraded under
  ``--synthetic-units`` units of 2 processes linked to it and 18 that are not (1,000 processes).

    sudo /usr/bin/python3 bench/scan.py [--scenario real|synthetic|both] [--rounds 15] [--before /work/main]

Timed inside the container, interleaved round by round (drift hits every command alike), wall
time and peak RSS from ``wait4``: the floor (``cat /proc/*/maps``), restartctl ``scan --json``,
``scan --json --packages <the upgraded>`` (the hook's view) and ``plan --json`` from this checkout
(and ``--before``'s), ``needrestart -b -l`` (libraries only, beside ``scan``) and ``needrestart -b``
(libraries, interpreters, kernel, microcode, beside ``plan``). See bench/README.md.
Writes bench/results/<date>-scan.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "tests" / ".cache" / "debs"
LIBRARY_PACKAGES = (
    "libssl3", "zlib1g", "libpam0g", "libgnutls30", "libkrb5-3", "libk5crypto3", "libkrb5support0",
    "libgssapi-krb5-2", "libglib2.0-0", "libxml2", "libcurl4", "libcurl3-gnutls", "libsqlite3-0", "libexpat1",
    "libffi8", "liblzma5", "libbz2-1.0", "libzstd1", "libnettle8", "libhogweed6", "libp11-kit0", "libidn2-0",
    "libtasn1-6")
SONAMES = (
    "libssl.so.3", "libcrypto.so.3", "libz.so.1", "libpam.so.0", "libgnutls.so.30", "libkrb5.so.3",
    "libk5crypto.so.3", "libgssapi_krb5.so.2", "libglib-2.0.so.0", "libxml2.so.2", "libcurl.so.4",
    "libcurl-gnutls.so.4", "libsqlite3.so.0", "libexpat.so.1", "liblzma.so.5", "libbz2.so.1.0", "libzstd.so.1",
    "libidn2.so.0")
PEER_PACKAGES = ("needrestart", "libsort-naturally-perl", "libmodule-find-perl", "libintl-perl",
                 "libmodule-scandeps-perl")
PEER_HOOKS = ("/etc/apt/apt.conf.d/99needrestart", "/etc/dpkg/dpkg.cfg.d/needrestart")
HOOK_FILES = ("/etc/apt/apt.conf.d/20restartctl", "/etc/dpkg/dpkg.cfg.d/restartctl")
TARGETS = {"floor": 2.0, "needrestart": 0.5, "rss_mb": 50.0, "hook_s": 0.08}
SCENARIOS = ("real", "synthetic")

# A unit's main process: forks PER_UNIT - 1 children; each maps its libraries and waits.
WORKER = """import ctypes, os, signal, sys
n, libs = int(sys.argv[1]), sys.argv[2:]
for _ in range(n - 1):
    if os.fork() == 0:
        break
for lib in libs:
    ctypes.CDLL(lib)
signal.pause()
"""


def download(directory: Path, names: tuple[str, ...]) -> list[Path]:
    """The candidate .debs of ``names`` from the host's apt sources, fetched once (never installed here)."""
    directory.mkdir(parents=True, exist_ok=True)
    have = {p.name.split("_")[0]: p for p in directory.glob("*.deb")}
    missing = [n for n in names if n not in have]
    if missing:
        subprocess.run(["/usr/bin/apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", *missing],
                       cwd=directory, check=True, capture_output=True, timeout=600)
    return sorted(p for p in directory.glob("*.deb") if p.name.split("_")[0] in names)


# ---------------------------------------------------------------- inside the container

def timed(argv: list[str], env: dict[str, str]) -> tuple[float, int, int, float]:
    """Wall seconds, peak RSS (KiB, of the command itself), exit status and CPU seconds (user and
    system, with the children it waited for: less moved by other load than the wall time) of one run."""
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=[
        (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0), (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0)])
    _, status, usage = os.wait4(pid, 0)
    return (time.perf_counter() - t0, usage.ru_maxrss, os.waitstatus_to_exitcode(status),
            usage.ru_utime + usage.ru_stime)


def driver(spec_path: str) -> int:
    """Run the interleaved rounds described in ``spec_path``; print the raw samples as JSON."""
    spec = json.loads(Path(spec_path).read_text())
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
    samples: dict[str, list[list[float]]] = {name: [] for name in spec["commands"]}
    toggles = spec.get("toggle", {})  # command -> files moved aside while it runs
    for _ in range(spec["warmup"]):
        for argv in spec["commands"].values():
            timed(argv, env)
    for _ in range(spec["rounds"]):
        for name, argv in spec["commands"].items():
            moved = [(f, f + ".rctl-off") for f in toggles.get(name, ())]
            for a, b in moved:
                os.rename(a, b)
            try:
                wall, rss, code, cpu = timed(argv, env)
            finally:
                for a, b in moved:
                    os.rename(b, a)
            samples[name].append([wall, rss, code, cpu])
    print(json.dumps(samples))
    return 0


# ---------------------------------------------------------------- on the host

def summary(rows: list[list[float]]) -> dict[str, float]:
    walls = [r[0] for r in rows]
    return {"median": statistics.median(walls), "min": min(walls), "mean": statistics.fmean(walls),
            "stdev": statistics.pstdev(walls), "rss_mb": max(r[1] for r in rows) / 1024,
            "exit": max(int(r[2]) for r in rows), "cpu": statistics.median(r[3] for r in rows)}


def install_needrestart(c: object) -> None:
    """needrestart and its Perl libraries, inside the container only (its apt and dpkg hooks removed)."""
    from tests.support.container import Container

    assert isinstance(c, Container)
    c.install_debs(download(CACHE / "needrestart", PEER_PACKAGES), timeout=300)
    c.check(["rm", "-f", *PEER_HOOKS])


def wait_until(c: object, processes: int, mapping: str, mappers: int) -> None:
    """Until the container runs ``processes`` processes, ``mappers`` of them mapping ``mapping``."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if count(c, "processes") >= processes and count(c, mapping) >= mappers:
            return
        time.sleep(1)
    raise TimeoutError(f"the scenario's processes did not start ({processes}, {mappers} mapping {mapping})")


def idle_unit(c: object, unit: str, program: str, n: int) -> None:
    """A unit of ``n`` copies of ``program`` (no arguments; each runs until killed)."""
    from tests.support.container import Container

    assert isinstance(c, Container)
    c.check(["systemd-run", f"--unit={unit}", "/bin/sh", "-c",
             f"i=0; while [ $i -lt {n} ]; do {program} & i=$((i+1)); done; wait"])


def setup_real(c: object, args: argparse.Namespace, tmp: Path) -> list[Path]:
    """The real state before the upgrade; returns the library packages to upgrade."""
    from tests.support.container import Container

    assert isinstance(c, Container)
    c.write_file("/srv/rctl/worker.py", WORKER)
    for i in range(args.units):
        libs = [SONAMES[(i + k) % len(SONAMES)] for k in range(12)]
        c.check(["systemd-run", f"--unit=rctl-real-{i:02d}", "/usr/bin/python3", "/srv/rctl/worker.py",
                 str(args.per_unit), *libs])
    idle_unit(c, "rctl-real-idle", "sleep infinity", args.idle)
    python = args.units * args.per_unit
    wait_until(c, args.idle + python, "libxml2", python * 12 // len(SONAMES) - 5)
    return download(CACHE / "real-state", LIBRARY_PACKAGES)


def setup_synthetic(c: object, args: argparse.Namespace, tmp: Path) -> list[Path]:
    """The synthetic host before the upgrade; returns the new library package."""
    from tests.support.container import Container
    from tests.support.debs import demo_packages

    assert isinstance(c, Container)
    v1, v2 = demo_packages(tmp / "v1", "1.0"), demo_packages(tmp / "v2", "2.0")
    c.install_debs([v1["rctl-oldlib1"], v1["rctl-olduser"], v1["rctl-sleeper"]])
    for i in range(args.synthetic_units):
        idle_unit(c, f"rctl-syn-{i:02d}", "/usr/bin/rctl-olduser", 2)
        idle_unit(c, f"rctl-syn-{i:02d}-idle", "/usr/bin/rctl-sleeper", 18)
    wait_until(c, args.synthetic_units * 20, "librctlold", args.synthetic_units * 2)
    return [v2["rctl-oldlib1"]]


COUNT = """import os, sys
def maps(pid):
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            return f.read()
    except OSError:
        return b""
pids = [n for n in os.listdir("/proc") if n.isdigit()]
what = sys.argv[1]
if what == "processes":
    print(len(pids))
elif what == "lists":
    print(sum(n.endswith(".list") for n in os.listdir("/var/lib/dpkg/info")))
else:
    print(sum(what.encode() in maps(p) for p in pids))
"""


def count(c: object, what: str) -> int:
    """Inside the container: how many processes, dpkg lists, or processes mapping ``what``."""
    from tests.support.container import Container

    assert isinstance(c, Container)
    return int(c.check(["/usr/bin/python3", "-c", COUNT, what]).strip())


# What pybuild wrote for the package's entry point before bin/restartctl (bench/hook.py --before installs an
# older checkout with it), with that checkout on the path.
CONSOLE_SCRIPT = """#!/usr/bin/python3
import re
import sys
sys.path.insert(0, {repo!r})
from restart.cli import run
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit(run())
"""


def hook_overhead(c: object, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from tests.support.checkout import install_hooks
    from tests.support.container import Container
    from tests.support.debs import demo_packages

    assert isinstance(c, Container)
    debs = demo_packages(tmp, "1.0")
    install_hooks(c)  # /usr/sbin/restartctl as the package installs it (bin/restartctl: python3 -IS, no sh, no runpy)
    cfg = c.local_repo([debs["rctl-sleeper"]])
    c.check(["apt-get", "-q", "update"], env={"APT_CONFIG": cfg})
    c.check(["apt-get", "-q", "install", "-y", "rctl-sleeper"], env={"APT_CONFIG": cfg})
    apt = ["/usr/bin/env", f"APT_CONFIG={cfg}", "/usr/bin/apt-get", "-q", "-o", "Dpkg::Use-Pty=0",
           "install", "--reinstall", "-y", "rctl-sleeper"]
    # "shell hooks only": /usr/sbin/restartctl moved aside, so apt's Post-Invoke skips the Python run
    raw = run_driver(c, {"commands": {"with hook": apt, "without": apt, "shell hooks only": apt},
                         "toggle": {"without": list(HOOK_FILES), "shell hooks only": ["/usr/sbin/restartctl"]},
                         "rounds": args.hook_runs, "warmup": 2})
    res = {k: summary(v) for k, v in raw.items()}
    c.check(["rm", "-f", *HOOK_FILES])
    return {"runs": res, "overhead": res["with hook"]["median"] - res["without"]["median"],
            "shell": res["shell hooks only"]["median"] - res["without"]["median"],
            "cpu": res["with hook"]["cpu"] - res["without"]["cpu"]}


def run_driver(c: object, spec: dict[str, object]) -> dict[str, list[list[float]]]:
    from tests.support.container import Container

    assert isinstance(c, Container)
    c.write_file("/srv/rctl/spec.json", json.dumps(spec))
    out = c.check(["/usr/bin/python3", str(REPO / "bench" / "scan.py"), "driver", "/srv/rctl/spec.json"],
                  timeout=3600)
    return json.loads(out)  # type: ignore[no-any-return]


# The line of bin/restartctl that sets the path (after the standard library, where Debian installs
# restartctl's package and python3-apt's); an entry script puts a checkout before it.
PATH_LINE = 'sys.path.append("/usr/lib/python3/dist-packages")\n'


def entry_script(checkout: str) -> bytes:
    """The package's /usr/sbin/restartctl (this checkout's bin/restartctl: ``python3 -IS``, no ``site``,
    no ``runpy``, no exec of ``env``), byte for byte, but with ``checkout`` first on the path: what
    the benchmark runs of every checkout alike, so the product is timed as installed."""
    text = (REPO / "bin" / "restartctl").read_text()
    if text.count(PATH_LINE) != 1:
        raise ValueError("bin/restartctl: the path line is not there once")
    return text.replace(PATH_LINE, f"sys.path.insert(0, {checkout!r})\n" + PATH_LINE).encode()


def install_entries(c: object, checkouts: dict[str, str]) -> dict[str, str]:
    """Each checkout's entry script (:func:`entry_script`) in the container: label -> its path there."""
    from tests.support.container import Container

    assert isinstance(c, Container)
    entries = {label: f"/srv/rctl/{label}-restartctl" for label in checkouts}
    for label, path in checkouts.items():
        c.write_file(entries[label], entry_script(path), mode=0o755)
    return entries


def commands(entries: dict[str, str], packages: list[str]) -> dict[str, list[str]]:
    cmds = {"floor (cat maps)": ["/bin/sh", "-c", "cat /proc/[0-9]*/maps >/dev/null 2>&1"]}
    for label, entry in entries.items():
        run = [entry]
        cmds[f"{label}: scan --json"] = [*run, "scan", "--json"]
        cmds[f"{label}: scan --json --packages (hook's view)"] = [*run, "scan", "--json", "--packages", *packages]
        cmds[f"{label}: plan --json"] = [*run, "plan", "--json"]
    cmds["needrestart -b -l (libraries)"] = ["/usr/sbin/needrestart", "-b", "-l"]
    cmds["needrestart -b"] = ["/usr/sbin/needrestart", "-b"]
    return cmds


PROFILE = """import cProfile, pstats, sys
from restart import cli
cProfile.run("cli.main(sys.argv[1:])", "/srv/rctl/scan.prof")
pstats.Stats("/srv/rctl/scan.prof", stream=sys.stderr).sort_stats("cumulative").print_stats(35)
"""


def profile(c: object, checkout: str, extra: list[str]) -> str:
    """cProfile of ``scan --json`` through ``cli.main`` (``python3 -m restart`` leaves by ``os._exit``)."""
    from tests.support.container import Container

    assert isinstance(c, Container)
    return c.exec(["env", f"PYTHONPATH={checkout}", "/usr/bin/python3", "-c", PROFILE, "scan", "--json",
                   *extra]).stderr


def hook_text(hook: dict[str, Any]) -> str:
    runs = hook["runs"]
    return ("Hook with nothing stale (apt-get install --reinstall of a tiny package, interleaved): "
            f"with {runs['with hook']['median']:.3f} s, without {runs['without']['median']:.3f} s, "
            f"with the shell hooks only {runs['shell hooks only']['median']:.3f} s (medians): overhead "
            f"**{hook['overhead']:.3f} s** (target ≤ {TARGETS['hook_s']} s), of which the shell hooks "
            f"{hook['shell']:.3f} s; CPU seconds (user + system, apt and its hooks): +{hook['cpu']:.3f} s.")


def render(result: dict[str, object]) -> str:
    scenarios = result["scenarios"]
    assert isinstance(scenarios, dict)
    lines = [f"# restartctl scan against the floor and needrestart, {result['when']}", ""]
    lines += [f"- {name}: {sc['state']}" for name, sc in scenarios.items()]
    lines += ["", "| scenario | command | median ms | min ms | × floor | × needrestart -b | × floor (min) "
                  "| CPU ms | peak RSS MB | exit |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, sc in scenarios.items():
        rows = sc["rows"]
        floor, nr = rows["floor (cat maps)"], rows["needrestart -b"]["median"]
        for command, r in rows.items():
            lines.append(f"| {name} | {command} | {r['median'] * 1000:.1f} | {r['min'] * 1000:.1f} "
                         f"| {r['median'] / floor['median']:.2f} | {r['median'] / nr:.2f} "
                         f"| {r['min'] / floor['min']:.2f} "
                         f"| {r.get('cpu', 0) * 1000:.0f} | {r['rss_mb']:.1f} | {r['exit']} |")
    hook = result.get("hook")
    if isinstance(hook, dict):
        lines += ["", hook_text(hook)]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if argv[:1] == ["driver"]:
        return driver(argv[1])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=(*SCENARIOS, "both"), default="both")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--units", type=int, default=20, help="real: units of python3 processes")
    parser.add_argument("--per-unit", type=int, default=5, help="real: python3 processes per unit")
    parser.add_argument("--idle", type=int, default=900, help="real: sleeps besides them")
    parser.add_argument("--synthetic-units", type=int, default=50, help="synthetic: units of 2 stale + 18 idle")
    parser.add_argument("--hook-runs", type=int, default=20, help="real: apt runs with and without the hooks")
    parser.add_argument("--before", type=Path, help="another checkout to time beside this one (e.g. /work/main)")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of scan --json")
    parser.add_argument("--keep", action="store_true",
                        help="after the upgrade, print the container's leader PID and wait for SIGTERM (to profile)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import tempfile

    from tests.support.container import Container

    result: dict[str, object] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "scenarios": {}}
    with tempfile.TemporaryDirectory(prefix="rctl-bench-scan-") as tmp:
        # Compiled as the Debian package compiles at install (the checkout is read-only inside).
        binds = []
        if args.before:
            for part in ("restart", "data"):  # with setup.cfg: run from a checkout, it uses the checkout's data
                shutil.copytree(args.before / part, Path(tmp) / "before" / part,
                                ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copy(args.before / "setup.cfg", Path(tmp) / "before")
            binds.append((str(Path(tmp) / "before"), "/srv/before", True))
        for tree in (REPO / "restart", Path(tmp) / "before" / "restart"):
            if tree.exists():
                subprocess.run(["/usr/bin/python3", "-m", "compileall", "-q", str(tree)], check=True)
        checkouts = {"restartctl": str(REPO), **({"before": "/srv/before"} if args.before else {})}
        for scenario in SCENARIOS if args.scenario == "both" else (args.scenario,):
            with Container(f"rctl-bench-{scenario[:4]}", boot=True, binds=binds) as c:
                measure(c, scenario, args, checkouts, result, Path(tmp))
    save(result)
    return 0


def measure(c: object, scenario: str, args: argparse.Namespace, checkouts: dict[str, str],
            result: dict[str, object], tmp: Path) -> None:
    """One scenario: (real: the hook first, on the fresh container), the state, the upgrade, the rounds."""
    from tests.support.container import Container

    assert isinstance(c, Container)
    install_needrestart(c)
    if scenario == "real" and args.hook_runs:
        result["hook"] = hook_overhead(c, args, tmp)
    debs = (setup_real if scenario == "real" else setup_synthetic)(c, args, tmp)
    upgrade = c.install_debs(debs, timeout=600)
    packages = [p.name.split("_")[0] for p in debs]
    entries = install_entries(c, checkouts)
    found = json.loads(c.exec([entries["restartctl"], "scan", "--json"]).stdout or "{}")
    nr = c.exec(["/usr/sbin/needrestart", "-b"]).stdout
    state = (f"{count(c, 'lists')} packages, {len(debs)} upgraded by one dpkg run (exit {upgrade.returncode}), "
             f"{count(c, 'processes')} processes; restartctl names {len(found.get('units', []))} units, "
             f"needrestart {nr.count('NEEDRESTART-SVC:')} services.")
    if args.keep:
        print(f"{state}\ncontainer leader {c.leader}: sudo nsenter -t {c.leader} -a ...; "
              f"kill -TERM {os.getpid()} to stop", flush=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
        return
    raw = run_driver(c, {"commands": commands(entries, packages), "rounds": args.rounds, "warmup": 2})
    entry: dict[str, object] = {"state": state, "rows": {k: summary(v) for k, v in raw.items()}}
    if args.profile:
        entry["profile"] = profile(c, str(REPO), [])
    scenarios = result["scenarios"]
    assert isinstance(scenarios, dict)
    scenarios[scenario] = entry


def save(result: dict[str, object]) -> None:
    if not result["scenarios"]:
        return
    result["commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                      capture_output=True, text=True, check=False).stdout.strip()
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    (out / f"{day}-scan.json").write_text(json.dumps(result, indent=1))
    (out / f"{day}-scan.md").write_text(render(result))
    print(render(result))
    scenarios = result["scenarios"]
    assert isinstance(scenarios, dict)
    for sc in scenarios.values():
        print(sc.get("profile", ""))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
