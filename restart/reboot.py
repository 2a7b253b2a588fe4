"""Reboot detection: the kernel, plan actions only a reboot resolves, and Debian's reboot files.

No subprocess: the running kernel comes from ``/proc``, the installed ones from the dpkg
status file and ``/boot``, versions are ordered by python-apt's ``apt_pkg.version_compare``
(imported lazily; without python3-apt the kernel state is ``unknown``, never a guess).

Reasons are structured (:class:`RebootReason`) so every output format can show *why*:

``kernel``
    a newer kernel of the running flavour is installed, or the running release was rebuilt
    (same ``uname -r``, newer package version: Debian's ABI-compatible updates).
``policy``
    a policy rule says ``action = "reboot"`` for a unit.
``init``
    PID 1 uses replaced files and the policy deferred its re-execution.
``service``
    a deferred unit that cannot be restarted safely at all, only by a reboot (the system bus:
    :data:`REBOOT_UNITS`); the vendor policy says "reboot instead" for it.
``library``
    any other deferred system-level unit that uses a core library (:data:`CORE_PACKAGES`, libc6):
    the admin declined restarting it, and the library it still maps is everywhere.
``microcode``
    the CPU runs an older microcode revision than the one installed in ``/lib/firmware``
    (intel-microcode, amd64-microcode), which only loads at boot.  Never inside a virtual
    machine: there the hypervisor's revision is shown, and the guest's files don't apply.
``flag``
    ``/run/reboot-required`` exists, written by someone else (a package's maintainer script).

Everything else a plan defers (display managers, networking, gettys) is a decision for a
person, not a reboot: it stays a pending unit.  Notify actions (sessions, user units) never are.

``/run/reboot-required`` and ``.pkgs`` (Debian Policy 9.12) are shared with other tools:
restartctl only ever creates the flag and appends missing package names, never truncates,
rewrites or deletes, and never follows a symlink.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from collections.abc import Iterable, Sequence
from enum import StrEnum
from fnmatch import fnmatchcase
from pathlib import Path

from restart import NamedTuple, fsutil
from restart.kernel import KernelStatus, kernel_status
from restart.microcode import (
    MICROCODE_PACKAGES,
    amd_revision,
    cpuid_signature,
    intel_revision,
    parse_cpuinfo,
    platform_flags,
)
from restart.packages import unpack_time
from restart.plan import Action
from restart.policy import Act
from restart.units import CONTAINER, INIT, NONE, SYSTEM, USER_MANAGER


class ReasonKind(StrEnum):
    """Why a reboot is needed (``reboot.reasons[].kind``; the module docstring says each)."""

    KERNEL = "kernel"
    MICROCODE = "microcode"
    POLICY = "policy"
    INIT = "init"
    SERVICE = "service"
    LIBRARY = "library"
    FLAG = "flag"


KERNEL, MICROCODE, POLICY, INIT_REASON, SERVICE, LIBRARY, FLAG = ReasonKind
REASON_KINDS: tuple[ReasonKind, ...] = tuple(ReasonKind)

REBOOT_UNITS = ("dbus.service", "dbus-broker.service")
CORE_PACKAGES = ("libc6", "libc6:*")

FLAG_FILE = "reboot-required"
PKGS_FILE = "reboot-required.pkgs"
FLAG_TEXT = "*** System restart required ***\n"

_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")


class RebootReason(NamedTuple):
    kind: ReasonKind
    package: str | None    # the package responsible (None: unknown, e.g. a kernel only in /boot)
    detail: str            # one sentence for people
    since: float | None = None  # when it became necessary (Unix time), if known


def microcode_status(proc: Path = Path("/proc"), firmware: Path = Path("/lib/firmware"),
                     admindir: Path | None = None, sysfs: Path = Path("/sys")) -> RebootReason | None:
    """A reboot reason when newer microcode for this CPU is installed than is running."""
    try:
        cpu = parse_cpuinfo((proc / "cpuinfo").read_text(encoding="ascii", errors="replace"))
    except OSError:
        return None
    if cpu is None or cpu.virtual or cpu.vendor not in MICROCODE_PACKAGES:
        return None
    intel = cpu.vendor == "GenuineIntel"
    if intel:
        path = firmware / "intel-ucode" / f"{cpu.family:02x}-{cpu.model:02x}-{cpu.stepping:02x}"
    else:
        name = f"microcode_amd_fam{cpu.family:02x}h.bin" if cpu.family >= 0x15 else "microcode_amd.bin"
        path = firmware / "amd-ucode" / name
    try:
        data, since = path.read_bytes(), path.stat().st_mtime
    except OSError:
        return None
    signature = cpuid_signature(cpu)
    installed = intel_revision(data, signature, platform_flags(sysfs)) if intel else amd_revision(data, signature)
    if installed is None or installed <= cpu.revision:
        return None
    package = MICROCODE_PACKAGES[cpu.vendor]
    if admindir is not None:
        since = unpack_time(admindir, package) or since
    return RebootReason(MICROCODE, package, f"CPU microcode revision {installed:#x} is installed, "
                                            f"{cpu.revision:#x} is running", since)


Machine = tuple[KernelStatus, RebootReason | None]  # the kernel's state, and the microcode's reason if any


def machine(*, proc: Path, root: Path, admindir: Path, run: Path | None = None) -> Machine:
    """What of the host only a reboot changes, whatever is restarted: the kernel and the CPU microcode
    (an acting run reads it while its restarts run).  ``run``: /run, where restartctl's run directory
    keeps the kernel's state for the next run (:func:`restart.kernel.kernel_status`)."""
    return (kernel_status(proc, admindir, root / "boot", cache=run / "restartctl" if run is not None else None),
            microcode_status(proc, root / "lib" / "firmware", admindir, root / "sys"))


def for_host(actions: Iterable[Action], *, proc: Path, root: Path, admindir: Path,
             known: Machine | None = None, run: Path | None = None) -> tuple[list[RebootReason], KernelStatus]:
    """Every reason this host needs a reboot but others' flag (see :func:`flagged`), and the kernel's
    state; ``known``: :func:`machine`'s answer, read earlier in this run."""
    kernel, microcode = known or machine(proc=proc, root=root, admindir=admindir, run=run)
    return reasons(actions, kernel, admindir=admindir, microcode=microcode), kernel


# ---- reasons ------------------------------------------------------------------------------

def _label(action: Action) -> str:
    g = action.group
    return g.name if g.name else f"pid {', '.join(str(p) for p in g.pids)}"


def _matches(name: str, globs: Iterable[str]) -> bool:
    return any(fnmatchcase(name, g) for g in globs)


def reasons(actions: Iterable[Action], kernel: KernelStatus | None = None, *, admindir: Path | None = None,
            microcode: RebootReason | None = None, reboot_units: Sequence[str] = REBOOT_UNITS,
            core_packages: Sequence[str] = CORE_PACKAGES) -> list[RebootReason]:
    """Why this host needs a reboot, from the kernel status and the plan; one reason per (kind, package).

    Plan actions that count: ``reboot`` (policy); a deferred PID 1 (init); a deferred unit of
    ``reboot_units`` (service); a deferred system-level unit using a ``core_packages`` library
    (library).  ``admindir`` gives each package's unpack time as ``since``.
    """
    found: dict[tuple[ReasonKind, str | None], list[str]] = {}
    for a in actions:
        g = a.group
        picked: tuple[ReasonKind, Iterable[str]] | None = None
        if a.action == Act.REBOOT:
            picked = (POLICY, g.packages)
        elif a.action == Act.DEFER and g.kind == INIT:
            picked = (INIT_REASON, g.packages)
        elif a.action == Act.DEFER and g.kind == SYSTEM and g.name and _matches(g.name, reboot_units):
            picked = (SERVICE, g.packages)
        elif a.action == Act.DEFER and g.kind in (SYSTEM, USER_MANAGER, CONTAINER, NONE):
            core = [p for p in g.packages if _matches(p, core_packages)]
            picked = (LIBRARY, core) if core else None
        if picked is None:
            continue
        kind, packages = picked
        for package in packages:
            entry = found.setdefault((kind, package), [])
            text = f"{_label(a)}: {a.reason}"
            if text not in entry:
                entry.append(text)
    out = []
    if kernel is not None and kernel.reboot_needed:
        out.append(RebootReason(KERNEL, kernel.package, kernel.detail, kernel.since))
    if microcode is not None:
        out.append(microcode)
    for (why, owner), texts in found.items():
        since = unpack_time(admindir, owner) if admindir is not None and owner else None
        out.append(RebootReason(why, owner, "; ".join(texts), since))
    return out


def flagged(run_dir: Path, *, known: Iterable[RebootReason] = ()) -> list[RebootReason]:
    """Reboots others asked for in ``/run/reboot-required(.pkgs)``, minus packages ``known`` covers.

    A flag without a package list (or listing only known packages) still counts, as one reason
    with ``package=None``, unless ``known`` is not empty.
    """
    try:
        since = os.lstat(run_dir / FLAG_FILE).st_mtime
    except OSError:
        return []
    covered = {bare(r.package) for r in known if r.package}
    listed = [p for p in _read_lines(run_dir / PKGS_FILE) if _PACKAGE_RE.fullmatch(p)]
    new = [p for p in dict.fromkeys(listed) if p not in covered]
    out = [RebootReason(FLAG, p, f"{run_dir / PKGS_FILE} lists {p}", since) for p in new]
    if not out and not listed and not covered:
        out.append(RebootReason(FLAG, None, f"{run_dir / FLAG_FILE} exists", since))
    return out


def unpacked_at(admindir: Path, packages: Iterable[str]) -> float | None:
    """When the earliest of ``packages`` was unpacked: when whatever still uses them became stale."""
    times = [t for p in set(packages) if (t := unpack_time(admindir, p)) is not None]
    return min(times) if times else None


def required_since(found: Iterable[RebootReason]) -> float | None:
    """The earliest known time a reboot became necessary."""
    times = [r.since for r in found if r.since is not None]
    return min(times) if times else None


def bare(package: str) -> str:
    """``libc6:amd64`` -> ``libc6``: the form maintainer scripts write (``DPKG_MAINTSCRIPT_PACKAGE``)."""
    return package.partition(":")[0]


# ---- /run/reboot-required -----------------------------------------------------------------

class Written(NamedTuple):
    flag_created: bool          # /run/reboot-required did not exist and now does
    added: tuple[str, ...]      # package names appended to /run/reboot-required.pkgs


def _read_lines(path: Path) -> list[str]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return []
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        return [line.strip() for line in _read_all(fd).splitlines() if line.strip()]
    finally:
        os.close(fd)


def _read_all(fd: int) -> str:
    chunks, offset = [], 0
    while chunk := os.pread(fd, 1 << 16, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks).decode("utf-8", "surrogateescape")


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _create_flag(dfd: int) -> bool:
    """Create the flag with its text in one step (a link of a complete file); never touch an existing one."""
    try:
        os.stat(FLAG_FILE, dir_fd=dfd, follow_symlinks=False)
        return False
    except FileNotFoundError:
        pass
    return fsutil.write_at(dfd, FLAG_FILE, FLAG_TEXT.encode(), replace=False)


def _append_packages(dfd: int, names: list[str]) -> tuple[str, ...]:
    """Append the names not yet listed, under an exclusive lock, in one write(2) of whole lines."""
    fd = os.open(PKGS_FILE, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                 0o644, dir_fd=dfd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", PKGS_FILE)
        os.set_blocking(fd, True)
        fcntl.flock(fd, fcntl.LOCK_EX)
        text = _read_all(fd)
        present = {line.strip() for line in text.splitlines()}
        missing = tuple(n for n in dict.fromkeys(names) if n not in present)
        if missing:
            lead = "\n" if text and not text.endswith("\n") else ""
            _write_all(fd, (lead + "".join(f"{n}\n" for n in missing)).encode())
        return missing
    finally:
        os.close(fd)


def write_reboot_required(run_dir: Path, found: Iterable[RebootReason]) -> Written:
    """Debian Policy 9.12: flag the reboot and name the packages that need it.

    The package list is written first, so whoever sees the flag sees the packages.  Names are
    written without architecture, as maintainer scripts do.  Nothing happens without reasons.
    Raises OSError when ``run_dir`` or the files are not safely root's (a symlink, a FIFO).
    """
    found = list(found)
    if not found:
        return Written(False, ())
    names = [bare(r.package) for r in found if r.package and _PACKAGE_RE.fullmatch(bare(r.package))]
    dfd = fsutil.open_trusted_dir(run_dir)
    try:
        added = _append_packages(dfd, names) if names else ()
        return Written(_create_flag(dfd), added)
    finally:
        os.close(dfd)
