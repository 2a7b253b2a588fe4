#!/usr/bin/python3
"""Benchmark the apt hook's overhead when nothing is stale, alone (``bench/scan.py`` runs the same
measurement on its real scenario's fresh container, before the state is built).

In a throw-away booted systemd container (an overlay of this host's /, from tests/support):
restartctl's hooks installed as the package installs them, then ``apt-get install --reinstall``
of a tiny local package, interleaved round by round: with the hooks, without them (their
snippets moved aside), and with the shell hooks only (``/usr/sbin/restartctl`` moved aside, so
apt's Post-Invoke skips the Python run).  Medians of wall time, and of CPU seconds (less moved by
other load on a shared machine); the target is an overhead <= 0.08 s.

``--before CHECKOUT`` (e.g. /work/main) also installs that checkout's hooks and code beside this
one's (its snippets naming ``/usr/lib/restartctl-before/dpkg-hook`` and ``/usr/sbin/restartctl-before``,
a copy of its committed files at HEAD, its ``/usr/sbin/restartctl-before`` pybuild's console script as the
package installed it before bin/restartctl) and adds a fourth command, "with hooks (before)": each round
runs with one set of snippets only, so both are measured in the same container and the same rounds,
the only comparison a shared machine allows.

    sudo /usr/bin/python3 bench/hook.py [--hook-runs 20] [--before /work/main]

Writes bench/results/<date>-hook.{json,md}.  Needs what tests/run.sh installs (systemd-container,
gcc, dpkg-dev, apt-utils); no hyperfine (the timing is bench/scan.py's driver).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scan import CONSOLE_SCRIPT, HOOK_FILES, TARGETS, hook_overhead, hook_text, run_driver, summary  # noqa: E402

from tests.support.container import Container  # noqa: E402

BEFORE = {"/usr/lib/restartctl/dpkg-hook": "/usr/lib/restartctl-before/dpkg-hook",
          "/usr/sbin/restartctl": "/usr/sbin/restartctl-before"}
BEFORE_FILES = ("/etc/apt/apt.conf.d/20restartctl-before", "/etc/dpkg/dpkg.cfg.d/restartctl-before")


def install_before(c: Container, checkout: Path, tmp: Path) -> str:
    """``checkout``'s committed hooks and code beside this one's (see the module's doc); its commit."""
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    copy = c.scratch / "before"
    copy.mkdir()
    archive = subprocess.run(["git", "-C", str(checkout), "archive", "HEAD", "restart", "data", "setup.cfg", "hook"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(copy)], input=archive, check=True)
    subprocess.run(["chmod", "-R", "go-w", str(copy)], check=True)  # its vendor policy must be root's alone
    subprocess.run(["/usr/bin/python3", "-m", "compileall", "-q", str(copy / "restart")], check=True)

    def renamed(text: str) -> str:
        for ours, theirs in BEFORE.items():
            text = text.replace(ours, theirs)
        return text
    c.write_file(BEFORE["/usr/lib/restartctl/dpkg-hook"], renamed((copy / "hook" / "dpkg-hook").read_text()),
                 mode=0o755)
    c.write_file(BEFORE["/usr/sbin/restartctl"], CONSOLE_SCRIPT.format(repo="/srv/rctl/before"), mode=0o755)
    c.write_file(BEFORE_FILES[0], renamed((copy / "hook/apt.conf.d/20restartctl").read_text()))
    c.write_file(BEFORE_FILES[1], renamed((copy / "hook/dpkg.cfg.d/restartctl").read_text()))
    return commit


def ab(c: Container, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """As :func:`scan.hook_overhead`, with the before checkout's hooks too."""
    from tests.support.checkout import install_hooks
    from tests.support.debs import demo_packages

    debs = demo_packages(tmp, "1.0")
    install_hooks(c)
    commit = install_before(c, args.before, tmp)
    cfg = c.local_repo([debs["rctl-sleeper"]])
    c.check(["apt-get", "-q", "update"], env={"APT_CONFIG": cfg})
    c.check(["apt-get", "-q", "install", "-y", "rctl-sleeper"], env={"APT_CONFIG": cfg})
    apt = ["/usr/bin/env", f"APT_CONFIG={cfg}", "/usr/bin/apt-get", "-q", "-o", "Dpkg::Use-Pty=0",
           "install", "--reinstall", "-y", "rctl-sleeper"]
    raw = run_driver(c, {"commands": {"with hook": apt, "with hooks (before)": apt, "without": apt,
                                      "shell hooks only": apt},
                         "toggle": {"with hook": list(BEFORE_FILES), "with hooks (before)": list(HOOK_FILES),
                                    "without": [*HOOK_FILES, *BEFORE_FILES],
                                    "shell hooks only": ["/usr/sbin/restartctl", *BEFORE_FILES]},
                         "rounds": args.hook_runs, "warmup": 2})
    res = {k: summary(v) for k, v in raw.items()}
    base = res["without"]
    return {"runs": res, "overhead": res["with hook"]["median"] - base["median"],
            "shell": res["shell hooks only"]["median"] - base["median"],
            "cpu": res["with hook"]["cpu"] - base["cpu"], "before_commit": commit,
            "before_overhead": res["with hooks (before)"]["median"] - base["median"],
            "before_cpu": res["with hooks (before)"]["cpu"] - base["cpu"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hook-runs", type=int, default=20, help="apt runs of each kind")
    parser.add_argument("--before", type=Path, help="another checkout whose hooks to time beside (e.g. /work/main)")
    args = parser.parse_args()
    subprocess.run(["/usr/bin/python3", "-m", "compileall", "-q", str(REPO / "restart")], check=True)
    with tempfile.TemporaryDirectory(prefix="rctl-bench-hook-") as tmp, Container("rctl-bench-hook", boot=True) as c:
        hook = ab(c, args, Path(tmp)) if args.before else hook_overhead(c, args, Path(tmp))
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = f"# restartctl hook overhead, {when}, commit {commit}\n\n{hook_text(hook)}\n"
    if args.before:
        runs = hook["runs"]
        text += (f"\nIn the same rounds, {args.before} at {hook['before_commit']} (its hooks and code): with "
                 f"{runs['with hooks (before)']['median']:.3f} s: overhead **{hook['before_overhead']:.3f} s**, "
                 f"CPU +{hook['before_cpu']:.3f} s.\n\n" + table(runs))
    results = REPO / "bench" / "results"
    results.mkdir(exist_ok=True)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    (results / f"{day}-hook.md").write_text(text)
    (results / f"{day}-hook.json").write_text(json.dumps({**hook, "when": when, "commit": commit}, indent=1))
    print(text)
    return 0 if float(hook["overhead"]) <= TARGETS["hook_s"] else 1


def table(runs: dict[str, dict[str, float]]) -> str:
    base = runs["without"]
    lines = ["| command | median s | min s | CPU s (median) | overhead (median − without) | CPU overhead |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in runs.items():
        over = "" if name == "without" else f"{r['median'] - base['median']:.3f}"
        cpu = "" if name == "without" else f"+{r['cpu'] - base['cpu']:.3f}"
        lines.append(f"| {name} | {r['median']:.3f} | {r['min']:.3f} | {r['cpu']:.3f} | {over} | {cpu} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
