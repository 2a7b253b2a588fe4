#!/usr/bin/python3
"""Where ``restartctl apply --yes`` spends its wall time: a timeline of one run, run inside the container.

bench/restarts.py ``--trace`` runs this as ``python3 -IS``, as /usr/sbin/restartctl runs, instead of
``restartctl apply --yes`` (after its timed rounds):
it wraps the stages of the apply path and every program restartctl starts with timestamps (seconds
since this interpreter started, by ``/proc/self/stat``), runs ``restartctl apply --yes`` in-process,
and prints one line per event to stderr.  Nothing of restartctl is changed: the wrappers call through.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

T0 = time.monotonic()


def _started() -> float:
    """This process's start on the monotonic clock (CLOCK_BOOTTIME is close enough here: no suspend)."""
    ticks = int(open("/proc/self/stat").read().rpartition(")")[2].split()[19])  # noqa: SIM115
    return ticks / os.sysconf("SC_CLK_TCK")


BOOT_START = _started()
BOOT_NOW = time.clock_gettime(time.CLOCK_BOOTTIME)
OFFSET = (BOOT_NOW - BOOT_START) - (time.monotonic() - T0)  # time from exec to T0
LINES: list[str] = []


def at() -> float:
    return time.monotonic() - T0 + OFFSET


def note(text: str) -> None:
    LINES.append(f"{at():7.3f} [{threading.current_thread().name[:10]:10}] {text}")


def traced(owner: Any, name: str, label: str | None = None, args: Callable[..., str] | None = None) -> None:
    inner = getattr(owner, name)

    @functools.wraps(inner)
    def wrapper(*a: Any, **k: Any) -> Any:
        what = f"{label or name}{' ' + args(*a, **k) if args else ''}"
        start = at()
        note(f"> {what}")
        try:
            return inner(*a, **k)
        finally:
            note(f"< {what} ({at() - start:.3f} s)")
    setattr(owner, name, wrapper)


class Popen(subprocess.Popen):  # type: ignore[type-arg]
    def __init__(self, argv: list[str], *a: Any, **k: Any) -> None:
        self.label = " ".join(str(x) for x in argv[:4]) + (f" ... ({len(argv)} args)" if len(argv) > 4 else "")
        self.begun = at()
        super().__init__(argv, *a, **k)

    def wait(self, timeout: float | None = None) -> int:
        code = super().wait(timeout)
        if self.begun >= 0:  # once (the context manager's exit waits again)
            note(f"  program {self.label}: {at() - self.begun:.3f} s (from {self.begun:.3f})")
            self.begun = -1.0
        return code


def jobs_seen(unitstate: Any) -> None:
    """Lines for what PID 1 says of a call's restart jobs: its first and last job's end, and when the
    properties of the first and the last unit are all read (PID 1 answers them only once it has nothing
    else to send on the connection: in a wave, after its last job)."""
    watch = unitstate._JobWatch
    ended, news = watch._ended, watch.news

    def on_ended(self: Any, name: str, result: str) -> None:
        if len(self.results) in (0, len(self.names) - 1):
            note(f"  job {len(self.results) + 1} of {len(self.names)} ended: {name} ({result})")
        ended(self, name, result)

    def on_news(self: Any, message: bytes) -> bool:
        said: bool = news(self, message)
        told = self.__dict__.setdefault("told_units", set())
        for name in self.ready:
            if name not in told:
                told.add(name)
                if len(told) in (1, len(self.names)):
                    note(f"  properties of {len(told)} of {len(self.names)} read: {name}"
                         f" ({len(self.results)} jobs ended by then)")
        return said
    watch._ended, watch.news = on_ended, on_news


def main() -> int:
    # As /usr/sbin/restartctl (bin/restartctl) runs: python3 -IS, restartctl's code from here only.
    sys.path.append("/usr/lib/python3/dist-packages")
    note("imports start")
    from restart import apply, cli, execute, plan, state, unitstate, verify
    note("imports done")
    subprocess.Popen = Popen  # type: ignore[misc,assignment]
    traced(apply, "find", "scan", lambda *a, **k: f"pids={len(k.get('pids') or [])}")
    traced(cli, "_parser", "the command line's parser")
    traced(cli, "_usable")
    traced(apply, "host_policy", "the policy")
    traced(plan, "make_plan")
    traced(apply, "recover")
    traced(apply, "publish")
    traced(state, "save_pending")
    traced(state, "merge_pending")
    traced(state, "save_actions")
    traced(state, "with_processes")
    traced(execute.Executor, "one", "canary/one")
    traced(execute.Executor, "_wave", "wave", lambda self, wave, *a, **k: f"{len(wave)} units")
    traced(execute.Executor, "_verify")
    traced(verify.Verifier, "_verify_ended", "verified as their jobs ended",
           lambda self, pairs, states, *a: f"{len(states)} units")
    traced(execute.Executor, "_await")
    traced(execute.Executor, "_settle")
    traced(execute.Executor, "_restart_together")
    traced(execute, "survey")
    traced(unitstate, "bus_states", "systemd's bus", lambda names, *a: f"{len(names)} units")
    traced(execute, "bus_restart", "restart jobs on systemd's bus", lambda verb, names, *a: f"{len(names)} units")
    traced(apply, "_carry_out")
    traced(unitstate, "_connect")
    jobs_seen(unitstate)
    code = cli.main(["apply", "--yes"])
    note(f"exit {code}")
    sys.stdout.flush()
    sys.stderr.write("\n".join(LINES) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
