"""Test-support code for restartctl: tiny real .deb packages and throw-away containers.

Why: restartctl acts on real dpkg upgrades and real systemd units, so its scenario tests need
real packages whose upgrade replaces inodes that running processes map, and a real systemd, without
touching the host that runs the tests.
"""

from __future__ import annotations

import os
from pathlib import Path


class PrerequisiteError(RuntimeError):
    """A tool the tests need is missing; tests must fail (never skip) with this message."""


# program -> Debian package that ships it (for the error message)
_PROVIDERS: dict[str, str] = {
    "gcc": "gcc",
    "dpkg-deb": "dpkg",
    "dpkg": "dpkg",
    "dpkg-architecture": "dpkg-dev",
    "dpkg-scanpackages": "dpkg-dev",
    "apt-ftparchive": "apt-utils",
    "systemd-nspawn": "systemd-container",
    "nsenter": "util-linux",
    "unshare": "util-linux",
}


def require_program(path: str) -> str:
    """Return PATH if it is an executable file, else raise PrerequisiteError naming the package.

    Why: a missing tool must be reported as a clear test failure, not an obscure traceback or a skip.
    """
    p = Path(path)
    if p.is_file() and os.access(p, os.X_OK):
        return str(p)
    pkg = _PROVIDERS.get(p.name, "?")
    raise PrerequisiteError(
        f"required program {path} is missing; install it with "
        f"'apt-get install -y --no-install-recommends {pkg}' (the project's test setup does this)"
    )
