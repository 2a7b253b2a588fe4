#!/usr/bin/python3
"""Benchmark the apt hook's overhead when nothing is stale, alone (``bench/scan.py`` runs the same
measurement on its real scenario's fresh container, before the state is built).

In a throw-away booted systemd container (an overlay of this host's /, from tests/support):
restartctl's hooks installed as the package installs them, then ``apt-get install --reinstall``
of a tiny local package, interleaved round by round: with the hooks, without them (their
snippets moved aside), and with the shell hooks only (``/usr/sbin/restartctl`` moved aside, so
apt's Post-Invoke skips the Python run).  Medians of wall time, and of CPU seconds (less moved by
other load on a shared machine); the target is an overhead <= 0.08 s.

    sudo /usr/bin/python3 bench/hook.py [--hook-runs 20]

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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scan import TARGETS, hook_overhead, hook_text  # noqa: E402  (bench/, the script's own directory)

from tests.support.container import Container  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hook-runs", type=int, default=20, help="apt runs of each kind")
    args = parser.parse_args()
    subprocess.run(["/usr/bin/python3", "-m", "compileall", "-q", str(REPO / "restart")], check=True)
    with tempfile.TemporaryDirectory(prefix="rctl-bench-hook-") as tmp, Container("rctl-bench-hook", boot=True) as c:
        hook = hook_overhead(c, args, Path(tmp))
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = f"# restartctl hook overhead, {when}, commit {commit}\n\n{hook_text(hook)}\n"
    results = REPO / "bench" / "results"
    results.mkdir(exist_ok=True)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    (results / f"{day}-hook.md").write_text(text)
    (results / f"{day}-hook.json").write_text(json.dumps({**hook, "when": when, "commit": commit}, indent=1))
    print(text)
    return 0 if float(hook["overhead"]) <= TARGETS["hook_s"] else 1


if __name__ == "__main__":
    sys.exit(main())
