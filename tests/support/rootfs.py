"""Debian root filesystems for the test tiers: a debootstrap tree per (suite, package set), cached.

Why: restartctl must be proven on the releases users run (Debian 13's systemd 257 on a pure cgroup v2
tree, Python 3.13, apt 3.0), not only on the host's. A debootstrap tree costs a minute or two and a few
hundred MB, so it is made once under ``tests/.cache/roots/`` and then only ever used as the read-only
lower layer of a container's overlay (tests/support/container.py): no test writes into the cache.
The downloaded .debs stay in ``tests/.cache/debootstrap/`` (debootstrap's ``--cache-dir``), so a
rebuild (another package set, a deleted tree) downloads nothing it already has.

The mirror is the one the host's apt uses (``apt-get indextargets``), never a name written here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import PrerequisiteError, require_program
from .container import REPO_ROOT

DEBOOTSTRAP = "/usr/sbin/debootstrap"
APT_GET = "/usr/bin/apt-get"
CACHE = REPO_ROOT / "tests" / ".cache"
ROOTS = CACHE / "roots"
DOWNLOADS = CACHE / "debootstrap"
BUILD_TIMEOUT = 1200.0  # a cold debootstrap of the largest package set on a slow mirror
_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive"}
_COMPLETE = ".rctl-complete"  # written last: a tree without it is an interrupted build

# What every restartctl test root has: systemd as PID 1 with logind and user managers, and
# restartctl's own dependencies (its .deb is installed by dpkg, which does not fetch any).
BASE_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "dbus-user-session", "libpam-systemd",
    "python3", "python3-apt", "python3-xdg", "procps", "passwd",
)

# The test tiers' roots: (suite, packages). Debian 13 with what its scenarios need, and Debian 13 with
# real daemons from the archive (and needrestart, to compare with).
TRIXIE_TIER = ("trixie", (*BASE_PACKAGES, "unattended-upgrades"))
REAL_ARCHIVE_TIER = ("trixie", (*BASE_PACKAGES, "openssh-server", "openssh-client", "nginx", "cron", "rsyslog",
                                "exim4-daemon-light", "redis-server", "postgresql", "python3-yaml", "needrestart"))

# Timings of root builds this run (seconds), for reports.
TIMINGS: dict[str, float] = {}


def _run(argv: Sequence[str], *, timeout: float = 60, env: dict[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    """The one place this module starts a program: an argv list, a clean environment, a time limit."""
    r = subprocess.run(list(argv), capture_output=True, text=True, env=env or _ENV, timeout=timeout, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return r


def _indextargets() -> list[dict[str, str]]:
    """The host apt's configured Debian index targets, one dict of fields per target."""
    require_program(APT_GET)
    out = _run([APT_GET, "indextargets", "--format", "$(REPO_URI)\t$(ORIGIN)\t$(LABEL)\t$(CODENAME)"]).stdout
    rows = []
    for line in out.splitlines():
        uri, origin, label, codename = [*line.split("\t"), "", "", "", ""][:4]
        rows.append({"uri": uri, "origin": origin, "label": label, "codename": codename})
    return rows


def debian_mirror(*, security: bool = False) -> str:
    """The Debian (or Debian-Security) archive URI the host's apt is configured with.

    Why: the test machines reach the archive only through their configured mirror; a fixed host name
    in the tests would break every other machine.
    """
    want = "Debian-Security" if security else "Debian"
    for row in _indextargets():
        if row["origin"] == "Debian" and row["label"] == want and row["uri"].startswith(("http", "file:")):
            return row["uri"]
    raise PrerequisiteError(f"no {want} archive in the host's apt sources (apt-get indextargets)")


def host_arch() -> str:
    return _run(["/usr/bin/dpkg", "--print-architecture"]).stdout.strip()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock: concurrent test runs share tests/.cache and must not build a tree twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def root_dir(suite: str, packages: Sequence[str]) -> Path:
    """Where the tree of ``suite`` with ``packages`` lives (one tree per distinct package set)."""
    key = hashlib.sha256(" ".join([suite, host_arch(), *sorted(set(packages))]).encode()).hexdigest()[:12]
    return ROOTS / f"{suite}-{host_arch()}-{key}"


def debootstrap_root(suite: str, packages: Sequence[str] = BASE_PACKAGES) -> Path:
    """A ``debootstrap --variant=minbase --include=PACKAGES SUITE`` tree, built once and cached.

    Returns the tree's path; use it only as an overlay's lower directory (never write into it).
    """
    root = root_dir(suite, packages)
    if (root / _COMPLETE).exists():
        return root
    require_program(DEBOOTSTRAP)
    mirror = debian_mirror()
    with _locked(ROOTS / ".lock"):
        if (root / _COMPLETE).exists():  # another run built it while we waited
            return root
        tmp = root.with_name(f".{root.name}.building")
        if tmp.exists():
            shutil.rmtree(tmp)
        DOWNLOADS.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        argv = [DEBOOTSTRAP, "--variant=minbase", f"--include={','.join(sorted(set(packages)))}",
                f"--cache-dir={DOWNLOADS}", suite, str(tmp), mirror]
        r = _run(argv, timeout=BUILD_TIMEOUT, check=False)
        if r.returncode != 0:
            log = tmp / "debootstrap" / "debootstrap.log"
            detail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
                               f"\n{detail}")
        # Nothing of the build's apt state is needed at test time; the containers have no network.
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (tmp / sub).glob("*"):
                if f.is_file():
                    f.unlink()
        (tmp / _COMPLETE).write_text(" ".join(argv) + "\n", encoding="utf-8")
        os.rename(tmp, root)
        TIMINGS[f"debootstrap {suite}"] = time.monotonic() - t0
    return root




def updates_for(root: Path, suite: str) -> list[Path]:
    """The .debs that upgrade ``root``'s installed packages from SUITE-updates and SUITE-security.

    Why: the real-archive tier upgrades real packages the way a real host does. apt runs on this
    host with a private configuration (none of the host's sources, snippets or state) against
    ``root``'s dpkg status; the index and the .debs are fetched once into ``tests/.cache/updates/``
    and reused, so a later run upgrades the same versions without the network.
    Returns the .debs apt would install for ``dist-upgrade`` (empty when nothing is pending).
    """
    state = CACHE / "updates" / root.name
    debs = state / "debs"
    with _locked(CACHE / "updates" / ".lock"):
        if not (state / ".complete").exists():
            if state.exists():
                shutil.rmtree(state)
            keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
            for sub in ("lists/partial", "debs/partial", "cache", "empty", "state"):
                (state / sub).mkdir(parents=True, exist_ok=True)
            (state / "sources.list").write_text(
                f"deb [signed-by={keyring}] {debian_mirror()} {suite}-updates main\n"
                f"deb [signed-by={keyring}] {debian_mirror(security=True)} {suite}-security main\n",
                encoding="utf-8")
            (state / "apt.conf").write_text(
                f'Dir::Etc::Parts "{state}/empty";\n'
                f'Dir::Etc::SourceList "{state}/sources.list";\n'
                f'Dir::Etc::SourceParts "{state}/empty";\n'
                f'Dir::Etc::PreferencesParts "{state}/empty";\n'
                f'Dir::Etc::Preferences "{state}/empty/none";\n'
                f'Dir::State "{state}/state";\n'
                f'Dir::State::Lists "{state}/lists";\n'
                f'Dir::State::status "{root}/var/lib/dpkg/status";\n'
                f'Dir::Cache "{state}/cache";\n'
                f'Dir::Cache::Archives "{debs}";\n'
                'Debug::NoLocking "true";\n'
                'Acquire::Languages "none";\n'
                'APT::Install-Recommends "false";\n', encoding="utf-8")
            env = {**_ENV, "APT_CONFIG": str(state / "apt.conf")}
            for argv in ([APT_GET, "-q", "update"], [APT_GET, "-q", "-y", "--download-only", "dist-upgrade"]):
                _run(argv, timeout=BUILD_TIMEOUT, env=env)
            (state / ".complete").write_text("", encoding="utf-8")
    return sorted(debs.glob("*.deb"))


__all__ = ["BASE_PACKAGES", "REAL_ARCHIVE_TIER", "TIMINGS", "TRIXIE_TIER", "debian_mirror", "debootstrap_root",
           "root_dir", "updates_for"]
