"""Put this checkout's restartctl into a container the way the Debian package installs it.

Why: the hook tests and the hook benchmark must run the real apt/dpkg hook snippets
(hook/) with their fixed paths, while the code comes from the checkout under test.
"""

from __future__ import annotations

import json
from pathlib import Path

from .container import REPO_ROOT, Container

WRAPPER = f'#!/bin/sh\nPYTHONPATH={REPO_ROOT} exec /usr/bin/python3 -m restart "$@"\n'


def install_hooks(c: Container, repo: Path = REPO_ROOT) -> None:
    """/usr/sbin/restartctl (a wrapper), /usr/lib/restartctl/dpkg-hook and both hook snippets."""
    c.write_file("/usr/sbin/restartctl", WRAPPER, mode=0o755)
    c.write_file("/usr/lib/restartctl/dpkg-hook", (repo / "hook" / "dpkg-hook").read_bytes(), mode=0o755)
    c.write_file("/etc/apt/apt.conf.d/20restartctl", (repo / "hook/apt.conf.d/20restartctl").read_bytes())
    c.write_file("/etc/dpkg/dpkg.cfg.d/restartctl", (repo / "hook/dpkg.cfg.d/restartctl").read_bytes())


def recorded(c: Container) -> dict[str, tuple[str, str]]:
    """What the last run recorded of each unit it handled: unit -> (action, status), from its state
    record (restartctl-state/1), the machine-readable truth that terminal text only shows."""
    doc = json.loads(c.read_file("/var/lib/restartctl/pending.json"))
    return {u["unit"]: (u["action"], u["status"]) for u in doc["units"] if u.get("unit")}
