#!/usr/bin/python3
"""Benchmark interpreter detection (restart/interpreters.py): what it finds next to needrestart -b, and its cost.

In a throw-away systemd container (an overlay of this host's /, from tests/support), real test
packages are installed and their daemons run as template services: Python daemons that import a
module package, unrelated Python daemons, Perl daemons that ``use`` a module package, shell
daemons, plus a filler of plain ``sleep`` processes.  Then one package at a time is upgraded,
and after each step both tools say what needs a restart:

* restartctl: ``scan.find``, whose process scan hands the interpreter stage each process that maps
  an interpreter's executable, run inside the container;
* ``needrestart -b`` (Debian 12's 3.6, installed inside the container only by bench/scan.py's
  helper), under ``strace -f`` to count the interpreters it executes.

Then hyperfine (inside the container) times the scan without and with interpreter detection,
for the whole host and for a one-package transaction, before and after a module upgrade::

    sudo /usr/bin/python3 bench/interpreters.py [--runs 10] [--filler 1000] [--daemons 10]

Writes bench/results/<date>-interpreters.json and .md.  Needs what tests/run.sh installs
(systemd-container, gcc, dpkg-dev), hyperfine and strace (see bench/README.md).  ``driver`` is
the part that runs inside the container.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

from restart import scan  # noqa: E402
from restart.roots import Roots  # noqa: E402

SCRATCH = "/srv/rctl"
DIST = "/usr/lib/python3/dist-packages"
PREFIX = "rctl-b"
UNIT_RE = re.compile(r"rctl-b[a-z]+@\d+\.service")
INTERPRETER_EXES = r"/usr/bin/(python3[.\d]*|perl)"
# What each upgrade step replaces, and which daemons (template names) use it.
STEPS = (
    ("rctl-bpymod", "a Python module package (a package directory, like most)", "rctl-bpyd"),
    ("rctl-bplmod", "a Perl module (/usr/share/perl5)", "rctl-bpld"),
    ("rctl-bpyd", "the Python daemon's own script", "rctl-bpyd"),
    ("rctl-bpld", "the Perl daemon's own script", "rctl-bpld"),
    ("rctl-bshd", "the shell daemon's own script", "rctl-bshd"),
)
TEMPLATES = ("rctl-bpyd", "rctl-bpyother", "rctl-bpld", "rctl-bshd")

PYD = '''#!/usr/bin/python3
"""rctl-bpyd {v}"""
import signal
import sys

import rctl_bmod

if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as f:
        f.write(rctl_bmod.VERSION + "\\n")
while True:
    signal.pause()
'''
PYOTHER = '''#!/usr/bin/python3
"""rctl-bpyother {v}"""
import json
import signal
import sys

if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as f:
        f.write(json.dumps("ready") + "\\n")
while True:
    signal.pause()
'''
PLD = '''#!/usr/bin/perl -w
# rctl-bpld {v}
use strict;
use RctlBMod;
if (@ARGV) {{ open(my $f, '>', $ARGV[0]) or die; print $f RctlBMod::version(), "\\n"; close($f); }}
sleep 3600 while 1;
__END__

=head1 NAME

rctl-bpld - a Perl daemon of the restartctl benchmark

=cut
'''
SHD = '#!/bin/sh\n# rctl-bshd {v}\n[ $# -gt 0 ] && echo ready > "$1"\nwhile :; do sleep 3600; done\n'
UNIT = "[Unit]\nDescription={name} %i\n\n[Service]\nExecStart=/usr/bin/{name} /run/{name}-%i.ready\n"


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the proposed wiring

def driver(args: argparse.Namespace) -> int:
    """Inside the container: one scan, printed as JSON (unit -> the kinds of its package files)."""
    roots = Roots()
    groups = scan.find(roots, only_packages=args.packages, interpreted=not args.plain).groups
    print(json.dumps({g.name or f"pid {g.pids[0]}": sorted({f"{f.stale.kind}/{f.stale.confidence}/{f.stale.evidence}"
                                                             for m in g.members for f in m.files})
                      for g in groups}, sort_keys=True))
    return 0


# --------------------------------------------------------------------------- host side

def build(outdir: Path, v: str) -> dict[str, Path]:
    from tests.support.debs import build_deb

    def unit(name: str) -> dict[str, bytes]:
        return {f"/lib/systemd/system/{name}@.service": UNIT.format(name=name).encode()}

    specs: dict[str, tuple[dict[str, bytes | Path], str]] = {
        "rctl-bpymod": ({f"{DIST}/rctl_bmod/__init__.py": f'VERSION = "{v}"\n'.encode()}, "python3"),
        "rctl-bpyd": ({"/usr/bin/rctl-bpyd": PYD.format(v=v).encode(), **unit("rctl-bpyd")}, "python3, rctl-bpymod"),
        "rctl-bpyother": ({"/usr/bin/rctl-bpyother": PYOTHER.format(v=v).encode(), **unit("rctl-bpyother")},
                          "python3"),
        "rctl-bplmod": ({"/usr/share/perl5/RctlBMod.pm": f'package RctlBMod;\nsub version {{ "{v}" }}\n1;\n'.encode()},
                        "perl"),
        "rctl-bpld": ({"/usr/bin/rctl-bpld": PLD.format(v=v).encode(), **unit("rctl-bpld")}, "perl, rctl-bplmod"),
        "rctl-bshd": ({"/usr/bin/rctl-bshd": SHD.format(v=v).encode(), **unit("rctl-bshd")}, "dash"),
    }
    return {name: build_deb(outdir, name, v, files, depends=depends, arch="all")
            for name, (files, depends) in specs.items()}


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def in_container(argv: list[str], *, strace_to: str | None = None) -> list[str]:
    env = ["env", f"PYTHONPATH={REPO}", "LC_ALL=C.UTF-8"]
    prefix = ["strace", "-f", "-qq", "-e", "trace=execve", "-e", "signal=none", "-o", strace_to] if strace_to else []
    return [*prefix, *env, *argv]


def execs(c: Any, path: str) -> list[str]:
    """Programs a traced command executed (its own first execve excluded)."""
    lines = c.read_file(path).decode(errors="replace").splitlines()
    progs = [m[1] for line in lines if (m := re.search(r'execve\("([^"]+)"', line)) and "= -1" not in line]
    return progs[2:]  # env, then the command itself


def ours(doc: dict[str, list[str]]) -> dict[str, list[str]]:
    return {u: k for u, k in doc.items() if UNIT_RE.fullmatch(u)}


def templates_in(names: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in names:
        t = n.partition("@")[0]
        counts[t] = counts.get(t, 0) + 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    d = sub.add_parser("driver", help="(inside the container) one scan as JSON")
    d.add_argument("--plain", action="store_true", help="restartctl's scan.find without the interpreter stage")
    d.add_argument("--packages", nargs="+", default=None)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--filler", type=int, default=1000, help="plain sleep processes besides the daemons")
    parser.add_argument("--daemons", type=int, default=10, help="instances of each daemon template")
    args = parser.parse_args()
    if args.cmd == "driver":
        return driver(args)
    if os.geteuid() != 0:
        parser.error("run as root (it starts a container)")
    return bench(args)


def bench(args: argparse.Namespace) -> int:
    from scan import install_needrestart  # bench/scan.py: needrestart installed inside the container only

    from tests.support.container import Container

    nr_argv = ["/usr/sbin/needrestart", "-b"]
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "restart"), str(REPO / "bench")],
                   check=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""})  # the container's view is read-only
    now = dt.datetime.now(dt.UTC)
    results: dict[str, Any] = {"steps": [], "timings": {}, "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="rctl-bench-interp-") as tmp, Container("rctl-bench-i", boot=True) as c:
        v1, v2 = build(Path(tmp), "1.0"), build(Path(tmp), "2.0")
        install_needrestart(c)
        c.install_debs(list(v1.values()))
        c.systemctl("daemon-reload")
        instances = [f"{t}@{i}.service" for t in TEMPLATES for i in range(1, args.daemons + 1)]
        c.systemctl("start", *instances, timeout=120)
        c.check(["systemd-run", "--quiet", "--unit=rctl-filler.service", "--", "/bin/sh", "-c",
                 f"for i in $(seq {args.filler}); do sleep infinity & done; wait"])
        wait_for("the daemons", lambda: int(c.check(["sh", "-c", "ls /run/rctl-b*.ready | wc -l"])) == len(instances))
        wait_for("the filler", lambda: int(c.check(["sh", "-c", "pgrep -cx sleep || true"])) >= args.filler)
        # Long installed, as daemons' packages are on real hosts: the owner search meets them last.
        c.check(["sh", "-c", "touch -d 2020-01-01 /var/lib/dpkg/info/rctl-b*.list"])
        time.sleep(2.5)  # needrestart ignores changes within 2 s (whole seconds) of a process's start
        results["processes"] = int(c.check(["sh", "-c", "ls -d /proc/[0-9]* | wc -l"]))
        drive = ["/usr/bin/python3", str(BENCH / "interpreters.py"), "driver"]

        def timing(label: str) -> None:
            cmds = {
                "scan (no interpreters)": [*drive, "--plain"],
                "scan + interpreters (one pass)": drive,
                "scan --packages P (no interpreters)": [*drive, "--plain", "--packages", "rctl-bpymod"],
                "scan --packages P + interpreters (one pass)": [*drive, "--packages", "rctl-bpymod"],
                "restartctl scan --json (today's CLI)": ["/usr/bin/python3", "-m", "restart", "scan", "--json"],
            }
            out = f"{SCRATCH}/hyperfine-{label}.json"
            argv = ["hyperfine", "-N", "-i", "--style", "basic", "--warmup", "3", "--runs", str(args.runs),
                    "--export-json", out]
            for name, cmd in cmds.items():
                argv += ["-n", name, shlex.join(in_container(cmd))]
            log(f"hyperfine ({label})")
            c.check(argv, timeout=1800)
            data = json.loads(c.read_file(out))
            results["timings"][label] = {name: {k: r[k] for k in ("mean", "stddev", "min", "median")}
                                         for name, r in zip(cmds, data["results"], strict=True)}

        def observe(step: str, what: str) -> None:
            r = c.check(in_container([*drive], strace_to=f"{SCRATCH}/rctl.strace"))
            mine = ours(json.loads(r))
            rctl_execs = execs(c, f"{SCRATCH}/rctl.strace")
            n = c.exec(in_container(nr_argv, strace_to=f"{SCRATCH}/nr.strace"), timeout=600)
            svc = re.findall(r"^NEEDRESTART-SVC: (\S+)$", n.stdout, re.M)
            nr_units = sorted(u for u in svc if UNIT_RE.fullmatch(u))
            progs = execs(c, f"{SCRATCH}/nr.strace")
            results["steps"].append({
                "step": step, "what": what,
                "restartctl": {u: k for u, k in sorted(mine.items())}, "restartctl_execs": rctl_execs,
                "needrestart": nr_units, "needrestart_exit": n.returncode,
                "needrestart_execs": len(progs),
                "needrestart_interpreter_execs": sum(1 for p in progs if re.fullmatch(INTERPRETER_EXES, p)),
            })
            log(f"{step}: restartctl {templates_in(mine)}, needrestart {templates_in(nr_units)}")

        observe("none", "nothing upgraded yet")
        timing("nothing upgraded")
        for package, what, _ in STEPS:
            c.install_debs([v2[package]])
            observe(package, what)
            if package == "rctl-bpymod":
                timing("after a module upgrade")
        nr_version = c.check(["dpkg-query", "-W", "-f", "${Version}", "needrestart"])
    results["meta"] = {"date": f"{now:%Y-%m-%d %H:%M} UTC", "commit": subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
        check=False).stdout.strip(), "needrestart": nr_version}
    write(results, now)
    return 0


def write(results: dict[str, Any], now: dt.datetime) -> None:
    a = results["args"]
    n = a["daemons"]
    lines = [
        f"# Interpreter detection vs needrestart -b, {results['meta']['date']}",
        "",
        f"systemd 252 container on this host; {n} instances each of a Python daemon using a module package "
        f"(`rctl-bpyd@`), an unrelated Python daemon (`rctl-bpyother@`), a Perl daemon using a module "
        f"(`rctl-bpld@`) and a shell daemon (`rctl-bshd@`); {a['filler']} `sleep` processes; "
        f"{results['processes']} processes in all. Commit {results['meta']['commit']} plus the working tree.",
        "",
        "## Who is flagged after each upgrade (instances per template)",
        "",
        "| upgraded | what | restartctl + interpreters | needrestart -b | needrestart execs (interpreters) |",
        "| --- | --- | --- | --- | ---: |",
    ]
    for s in results["steps"]:
        kinds = sorted({k for ks in s["restartctl"].values() for k in ks if k.split("/")[0] in ("script", "module")})
        mine = ", ".join(f"{t} ×{c}" for t, c in templates_in(s["restartctl"]).items()) or "none"
        theirs = ", ".join(f"{t} ×{c}" for t, c in templates_in(s["needrestart"]).items()) or "none"
        lines.append(f"| {s['step']} | {s['what']} | {mine} ({'; '.join(kinds) or '-'}) | {theirs} | "
                     f"{s['needrestart_execs']} ({s['needrestart_interpreter_execs']}) |")
    lines += ["", "restartctl executed nothing in any step: "
              + ("yes" if all(not s["restartctl_execs"] for s in results["steps"]) else "NO"), ""]
    for label, rows in results["timings"].items():
        base = {"": rows["scan (no interpreters)"]["mean"],
                "--packages": rows["scan --packages P (no interpreters)"]["mean"]}
        lines += [f"## Time, {label} (hyperfine, 3 warmup + {a['runs']} runs)", "",
                  "| command | mean ms | ± ms | min ms | × without |", "| --- | ---: | ---: | ---: | ---: |"]
        for name, r in rows.items():
            ref = base["--packages"] if "--packages" in name else base[""]
            lines.append(f"| {name} | {r['mean'] * 1e3:.1f} | {r['stddev'] * 1e3:.1f} | {r['min'] * 1e3:.1f} | "
                         f"{r['mean'] / ref:.2f} |")
        lines.append("")
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"{now:%Y-%m-%d}-interpreters.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{now:%Y-%m-%d}-interpreters.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
