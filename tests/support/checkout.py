"""Put this checkout's restartctl into a container the way the Debian package installs it.

Why: the hook tests and the hook benchmark must run the real apt/dpkg hook snippets
(hook/) with their fixed paths, and the package's own entry script (bin/restartctl, which looks
for restartctl's code only in /usr/lib/python3/dist-packages), while the code comes from the
checkout under test.
"""

from __future__ import annotations

import json
from pathlib import Path

from .container import REPO_ROOT, Container

# Where the package's entry script finds restartctl's code (and python3-apt's), as pybuild installs it.
PACKAGE_DIR = "/usr/lib/python3/dist-packages/restart"


def install_command(c: Container, repo: Path = REPO_ROOT) -> None:
    """/usr/sbin/restartctl as the package installs it (bin/restartctl), running ``repo``'s code: the
    container's /usr/lib/python3/dist-packages/restart is a symlink to the checkout's package (the
    checkout is bind-mounted read-only at its own path; only the container's overlay changes)."""
    c.check(["ln", "-sfnT", "--", str(repo / "restart"), PACKAGE_DIR])
    c.write_file("/usr/sbin/restartctl", (repo / "bin" / "restartctl").read_bytes(), mode=0o755)


def install_hooks(c: Container, repo: Path = REPO_ROOT) -> None:
    """/usr/sbin/restartctl (:func:`install_command`), /usr/lib/restartctl/dpkg-hook and both hook snippets."""
    install_command(c, repo)
    c.write_file("/usr/lib/restartctl/dpkg-hook", (repo / "hook" / "dpkg-hook").read_bytes(), mode=0o755)
    c.write_file("/etc/apt/apt.conf.d/20restartctl", (repo / "hook/apt.conf.d/20restartctl").read_bytes())
    c.write_file("/etc/dpkg/dpkg.cfg.d/restartctl", (repo / "hook/dpkg.cfg.d/restartctl").read_bytes())


def recorded(c: Container) -> dict[str, tuple[str, str]]:
    """What the last run recorded of each unit it handled: unit -> (action, status), from its state
    record (restartctl-state/1), the machine-readable truth that terminal text only shows."""
    doc = json.loads(c.read_file("/var/lib/restartctl/pending.json"))
    return {u["unit"]: (u["action"], u["status"]) for u in doc["units"] if u.get("unit")}
