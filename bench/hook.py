#!/usr/bin/python3
"""Benchmark the apt hook's overhead when nothing is stale.

In a throw-away systemd container (an overlay of this host's /, from tests/support):
``apt-get install --reinstall`` of a tiny local package, timed with hyperfine,
first with restartctl's apt and dpkg hooks installed (running this checkout), then
without them.  Reports the medians and their difference; the target is <= 0.15 s.

    sudo /usr/bin/python3 bench/hook.py [--runs 10]

Writes bench/results/<date>-hook.json and .md.  Needs what tests/run.sh installs
(systemd-container, gcc, dpkg-dev, apt-utils) and hyperfine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.checkout import install_hooks  # noqa: E402
from tests.support.container import Container  # noqa: E402
from tests.support.debs import demo_packages  # noqa: E402

TARGET = 0.15
HOOK_FILES = ("/etc/apt/apt.conf.d/20restartctl", "/etc/dpkg/dpkg.cfg.d/restartctl")


def measure(c: Container, cfg: str, runs: int, label: str) -> dict[str, float]:
    """hyperfine inside the container; returns its result for one command."""
    out = f"/srv/rctl/{label}.json"
    cmd = f"APT_CONFIG={cfg} apt-get -q -o Dpkg::Use-Pty=0 install --reinstall -y rctl-sleeper"
    c.check(["hyperfine", "--style", "none", "--warmup", "2", "--runs", str(runs), "--export-json", out, cmd],
            timeout=600)
    result = json.loads(c.read_file(out))["results"][0]
    return {k: result[k] for k in ("mean", "stddev", "median", "min", "max")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rctl-bench-hook-") as tmp, Container("rctl-bench", boot=True) as c:
        debs = demo_packages(Path(tmp), "1.0")
        install_hooks(c)
        cfg = c.local_repo([debs["rctl-sleeper"]])
        c.check(["apt-get", "-q", "update"], env={"APT_CONFIG": cfg})
        c.check(["apt-get", "-q", "install", "-y", "rctl-sleeper"], env={"APT_CONFIG": cfg})
        with_hook = measure(c, cfg, args.runs, "with")
        c.check(["rm", "-f", *HOOK_FILES])
        without = measure(c, cfg, args.runs, "without")
    diff = with_hook["median"] - without["median"]
    verdict = "PASS" if diff <= TARGET else "FAIL"
    now = dt.datetime.now(dt.UTC)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    lines = [
        f"# restartctl hook overhead, {now:%Y-%m-%d %H:%M} UTC",
        "",
        f"`apt-get install --reinstall` of a tiny local package in a systemd 252 container, "
        f"hyperfine 2 warmup + {args.runs} runs each; restartctl at commit {commit}.",
        "",
        "| | median s | mean s | ± s | min s |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(f"| {name} | {r['median']:.3f} | {r['mean']:.3f} | {r['stddev']:.3f} | {r['min']:.3f} |"
          for name, r in (("with the hooks", with_hook), ("without", without))),
        "",
        f"Overhead (difference of the medians): **{diff:.3f} s**; target <= {TARGET} s: {verdict}.",
    ]
    results = REPO / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / f"{now:%Y-%m-%d}-hook.md").write_text("\n".join(lines) + "\n")
    (results / f"{now:%Y-%m-%d}-hook.json").write_text(json.dumps(
        {"with": with_hook, "without": without, "overhead": diff, "target": TARGET, "commit": commit}, indent=1))
    print("\n".join(lines))
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
