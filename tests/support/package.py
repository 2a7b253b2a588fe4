"""Build restartctl's own Debian package from the checkout, once per test session.

Why here: the packaging tests check the .deb itself, and the Debian 13 and real-archive tiers install
that same .deb in their containers (restartctl is only ever used as the installed package). The
package is built from a copy of the checkout (its tracked and not-ignored files), so nothing of the
build lands in the checkout.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

from restart import __version__

from .container import REPO_ROOT

DEBPATH = "/usr/sbin:/usr/bin:/sbin:/bin"
BUILD_ENV = {"PATH": DEBPATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/root"}
BUILD_TIMEOUT = 300


def run(argv: list[str], *, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=BUILD_ENV, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _source_files() -> list[str]:
    """The checkout's files as git sees them: tracked ones and new ones not ignored (never .venv etc.)."""
    r = run(["git", "-C", str(REPO_ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"])
    if r.returncode != 0:
        raise BuildError(f"git ls-files failed: {r.stderr}")
    return sorted({name for name in r.stdout.split("\0") if name})


def _copy_tree(files: list[str], dest: Path) -> None:
    for name in files:
        src = REPO_ROOT / name
        if not src.is_file() and not src.is_symlink():
            continue  # deleted in the work tree, not yet committed
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir() or p.is_symlink()}


class Built(NamedTuple):
    deb: Path
    changes: Path
    before: set[str]      # the files of the build tree (a copy of the checkout) ...
    new_files: set[str]   # ... the files the build added to it ...
    after_clean: set[str]  # ... and the files left after ``debian/rules clean``
    seconds: float


class BuildError(RuntimeError):
    """dpkg-buildpackage is missing or failed; the message says which and shows its output."""


def build_package(top: Path) -> Built:
    """``dpkg-buildpackage -us -uc`` in ``top/restartctl``, a copy of the checkout, then ``debian/rules clean``."""
    if shutil.which("dpkg-buildpackage", path=DEBPATH) is None:
        raise BuildError("dpkg-buildpackage is missing: run tests/run.sh, which installs the build dependencies")
    source = top / "restartctl"
    _copy_tree(_source_files(), source)
    before = _tree(source)
    t0 = time.monotonic()
    r = run(["dpkg-buildpackage", "-us", "-uc"], cwd=source, timeout=BUILD_TIMEOUT)
    seconds = time.monotonic() - t0
    if r.returncode != 0:
        raise BuildError(f"dpkg-buildpackage failed ({r.returncode}):\n{r.stdout[-6000:]}\n{r.stderr[-4000:]}")
    new_files = _tree(source) - before
    clean = run(["debian/rules", "clean"], cwd=source)
    if clean.returncode != 0:
        raise BuildError(f"debian/rules clean failed:\n{clean.stdout}{clean.stderr}")
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    return Built(top / f"restartctl_{__version__}_all.deb", top / f"restartctl_{__version__}_{arch}.changes",
                 before, new_files, _tree(source), seconds)


__all__ = ["BUILD_ENV", "DEBPATH", "BuildError", "Built", "build_package", "run"]
