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
import struct
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from fnmatch import fnmatchcase
from pathlib import Path
from typing import NamedTuple

from restart import fsutil
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


class KernelState(StrEnum):
    """The running kernel against the installed ones (``reboot.kernel.state``)."""

    CURRENT = "current"
    NEWER = "newer-installed"
    REBUILT = "rebuilt"
    UNKNOWN = "unknown"


KERNEL, MICROCODE, POLICY, INIT_REASON, SERVICE, LIBRARY, FLAG = ReasonKind
REASON_KINDS: tuple[ReasonKind, ...] = tuple(ReasonKind)
CURRENT, NEWER, REBUILT, UNKNOWN = KernelState
MICROCODE_PACKAGES = {"GenuineIntel": "intel-microcode", "AuthenticAMD": "amd64-microcode"}

REBOOT_UNITS = ("dbus.service", "dbus-broker.service")
CORE_PACKAGES = ("libc6", "libc6:*")

FLAG_FILE = "reboot-required"
PKGS_FILE = "reboot-required.pkgs"
FLAG_TEXT = "*** System restart required ***\n"

_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_ABI_RE = re.compile(r"\d+\.\d+(?:\.\d+)?-\d+-(?P<flavour>[a-z0-9][a-z0-9-]*)")
_BUILD_RE = re.compile(r"\) #\d+\S* (?P<rest>.*)$")
_DEBIAN_RE = re.compile(r"\bDebian (?P<version>[0-9][^\s()]*)")
_INSTALLED_STATES = frozenset({"installed", "triggers-pending", "triggers-awaited"})


class RebootReason(NamedTuple):
    kind: ReasonKind
    package: str | None    # the package responsible (None: unknown, e.g. a kernel only in /boot)
    detail: str            # one sentence for people
    since: float | None = None  # when it became necessary (Unix time), if known


class KernelStatus(NamedTuple):
    state: KernelState
    running: str = ""                    # uname -r ("" if unreadable)
    running_build: str | None = None     # the package version the running kernel was built as (/proc/version)
    installed_build: str | None = None   # the installed version of linux-image-<running>
    newest: str | None = None            # the newest installed release of the running flavour
    newest_version: str | None = None    # its package version (None for a kernel only in /boot)
    package: str | None = None           # the package a reboot would activate, if one is needed
    since: float | None = None           # when that kernel was installed
    detail: str = ""

    @property
    def reboot_needed(self) -> bool:
        return self.state in (NEWER, REBUILT)


class _Kernel(NamedTuple):
    release: str
    version: str | None
    package: str | None
    since: float | None


# ---- kernel -------------------------------------------------------------------------------

def _version_compare() -> Callable[[str, str], int] | None:
    """python-apt's dpkg ordering, initialised once; None when python3-apt is missing."""
    try:
        import apt_pkg
    except ImportError:
        return None
    try:
        apt_pkg.version_compare("0", "0")
    except ValueError:  # "_system not initialized"
        apt_pkg.init_config()
        apt_pkg.init_system()
    compare: Callable[[str, str], int] = apt_pkg.version_compare
    return compare


def running_build(version_text: str) -> str | None:
    """The Debian package version in ``/proc/version`` (``... #1 SMP PREEMPT_DYNAMIC Debian 6.1.112-1 (...)``).

    Only text after the build number counts: the compiler's ``(Debian 12.2.0-14)`` comes before it.
    """
    m = _BUILD_RE.search(version_text.strip())
    found = _DEBIAN_RE.search(m["rest"]) if m else None
    return found["version"] if found else None


def flavour(release: str) -> str | None:
    """``6.1.0-26-cloud-amd64`` -> ``cloud-amd64``; None for a release without Debian's ABI form."""
    m = _ABI_RE.fullmatch(release)
    return m["flavour"] if m else None


def _list_mtime(admindir: Path, package: str) -> float | None:
    """When dpkg last unpacked ``package``: the mtime of its file list (rewritten at every unpack)."""
    name, _, arch = package.partition(":")
    candidates = [f"{name}:{arch}.list", f"{name}.list"] if arch else [f"{name}.list"]
    for entry in candidates:
        try:
            return os.stat(admindir / "info" / entry).st_mtime
        except OSError:
            continue
    if not arch:
        try:
            for found in sorted((admindir / "info").glob(f"{name}:*.list")):
                return found.stat().st_mtime
        except OSError:
            return None
    return None


# ---- microcode ----------------------------------------------------------------------------

class Cpu(NamedTuple):
    vendor: str
    family: int
    model: int
    stepping: int
    revision: int      # the microcode revision running now
    virtual: bool      # a guest: the revision is the hypervisor's business


def parse_cpuinfo(text: str) -> Cpu | None:
    """The first processor of ``/proc/cpuinfo`` (a microcode update goes to every core at once)."""
    fields: dict[str, str] = {}
    for line in text.split("\n"):
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    try:
        return Cpu(fields["vendor_id"], int(fields["cpu family"]), int(fields["model"]), int(fields["stepping"]),
                   int(fields["microcode"], 16), "hypervisor" in fields.get("flags", "").split())
    except (KeyError, ValueError):
        return None


def cpuid_signature(cpu: Cpu) -> int:
    """CPUID leaf 1 EAX, as microcode files name the processors they are for."""
    base_family, extended_family = (0xF, cpu.family - 0xF) if cpu.family >= 0xF else (cpu.family, 0)
    return (cpu.stepping | (cpu.model & 0xF) << 4 | base_family << 8 | (cpu.model >> 4) << 16
            | extended_family << 20)


def intel_revision(data: bytes, signature: int, platform: int | None = None) -> int | None:
    """The newest revision for ``signature`` in an ``intel-ucode/FF-MM-SS`` file (concatenated
    updates, each a 48-byte header: version 1, revision, date, signature, checksum, loader,
    platform flags, sizes); ``platform``: the CPU's flags bit, when the kernel tells it."""
    best, offset = None, 0
    while offset + 48 <= len(data):
        version, revision, _, sig, _, _, flags, data_size, total_size = struct.unpack_from("<9I", data, offset)
        total = total_size or 2048  # 0 means the original fixed layout: 2000 bytes of data, 2048 in all
        if version != 1 or total < 48 or (data_size and data_size + 48 > total):
            return best  # not an update: stop rather than guess at what follows
        if sig == signature and (platform is None or flags & platform):
            best = max(best or 0, revision)
        offset += total
    return best


def amd_revision(data: bytes, signature: int) -> int | None:
    """The newest patch for ``signature`` in an ``amd-ucode`` container: magic "DMA\\0", an
    equivalence table (CPUID -> equivalence id), then patches naming the id they are for."""
    if len(data) < 12 or data[:4] != b"DMA\0":
        return None
    kind, size = struct.unpack_from("<II", data, 4)
    if kind != 0:
        return None
    equivalent = None
    for entry in range(12, min(12 + size, len(data)) - 15, 16):
        cpuid, _, _, equiv_id = struct.unpack_from("<IIIH", data, entry)
        if cpuid == signature:
            equivalent = equiv_id
    if equivalent is None:
        return None
    best, offset = None, 12 + size
    while offset + 8 <= len(data):
        kind, size = struct.unpack_from("<II", data, offset)
        body = offset + 8
        if kind != 1 or size < 26 or body + size > len(data):
            break
        patch_id, = struct.unpack_from("<I", data, body + 4)
        processor_rev_id, = struct.unpack_from("<H", data, body + 24)
        if processor_rev_id == equivalent:
            best = max(best or 0, patch_id)
        offset = body + size
    return best


def _platform_flags(sysfs: Path) -> int | None:
    """An Intel CPU's platform bit, as the kernel's microcode driver read it from the CPU."""
    try:
        return int((sysfs / "devices/system/cpu/cpu0/microcode/processor_flags").read_text(), 16)
    except (OSError, ValueError):
        return None


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
    installed = intel_revision(data, signature, _platform_flags(sysfs)) if intel else amd_revision(data, signature)
    if installed is None or installed <= cpu.revision:
        return None
    package = MICROCODE_PACKAGES[cpu.vendor]
    if admindir is not None:
        since = _list_mtime(admindir, package) or since
    return RebootReason(MICROCODE, package, f"CPU microcode revision {installed:#x} is installed, "
                                            f"{cpu.revision:#x} is running", since)


def for_host(actions: Iterable[Action], *, proc: Path, root: Path,
             admindir: Path) -> tuple[list[RebootReason], KernelStatus]:
    """Every reason this host needs a reboot but others' flag (see :func:`flagged`), and the kernel's state."""
    kernel = kernel_status(proc, admindir, root / "boot")
    microcode = microcode_status(proc, root / "lib" / "firmware", admindir, root / "sys")
    return reasons(actions, kernel, admindir=admindir, microcode=microcode), kernel


def _installed_kernels(admindir: Path) -> dict[str, _Kernel]:
    """release -> kernel, for every installed ``linux-image-<release>[-unsigned]`` package."""
    import apt_pkg

    found: dict[str, _Kernel] = {}
    with apt_pkg.TagFile(str(admindir / "status")) as tags:
        for section in tags:
            name = section.get("Package") or ""
            if not name.startswith("linux-image-") or name.endswith("-dbg"):
                continue
            release = name.removeprefix("linux-image-").removesuffix("-unsigned")
            status = (section.get("Status") or "").split()
            if not release[:1].isdigit() or len(status) != 3 or status[2] not in _INSTALLED_STATES:
                continue
            version = section.get("Version") or None
            if release not in found or not name.endswith("-unsigned"):  # the signed image wins
                found[release] = _Kernel(release, version, name, _list_mtime(admindir, name))
    return found


def _boot_kernels(boot: Path) -> dict[str, _Kernel]:
    """Kernels in /boot no package owns (locally built): releases only."""
    found = {}
    try:
        entries = list(os.scandir(boot))
    except OSError:
        return {}
    for entry in entries:
        if entry.name.startswith("vmlinuz-") and entry.is_file(follow_symlinks=False):
            release = entry.name.removeprefix("vmlinuz-")
            found[release] = _Kernel(release, None, None, entry.stat(follow_symlinks=False).st_mtime)
    return found


def kernel_status(proc: Path = Path("/proc"), admindir: Path = Path("/var/lib/dpkg"),
                  boot: Path = Path("/boot")) -> KernelStatus:
    """Is a reboot needed for the kernel?  Compares the running kernel with the installed ones.

    The newest kernel is looked for among those of the running flavour (``amd64``, ``cloud-amd64``,
    ``rt-amd64``; all kernels when none shares it), ordered by package version when every candidate
    has one, else by release.  A kernel that grub would not pick by default is not a reason.
    """
    try:
        running = (proc / "sys" / "kernel" / "osrelease").read_text(encoding="utf-8", errors="replace").strip()
        version_text = (proc / "version").read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        return KernelStatus(UNKNOWN, detail=f"cannot read the running kernel's release: {e.strerror}")
    build = running_build(version_text)
    compare = _version_compare()
    if compare is None:
        return KernelStatus(UNKNOWN, running=running, running_build=build,
                            detail="python3-apt is not installed: kernel versions cannot be compared")
    try:
        packaged = _installed_kernels(admindir)
    except (OSError, SystemError) as e:  # apt_pkg reports an unreadable status file as SystemError
        return KernelStatus(UNKNOWN, running=running, running_build=build,
                            detail=f"cannot read the dpkg status file: {e}")
    kernels = {**_boot_kernels(boot), **packaged}
    own = packaged.get(running)
    installed_build = own.version if own else None
    if not kernels:
        return KernelStatus(UNKNOWN, running=running, running_build=build,
                            detail=f"no installed kernel image package (linux-image-*) or /boot/vmlinuz-*: "
                                   f"the running kernel {running} is not managed by this system's dpkg")
    same = [k for k in kernels.values() if flavour(k.release) == flavour(running) and flavour(running)]
    candidates = same or list(kernels.values())
    me = _Kernel(running, build or installed_build, own.package if own else None, None)

    def order(a: _Kernel, b: _Kernel) -> int:
        if a.version and b.version:
            by_version = compare(a.version, b.version)
            if by_version:
                return by_version
        return compare(a.release, b.release)

    newest = candidates[0]
    for k in candidates[1:]:
        if order(k, newest) > 0:
            newest = k
    found = KernelStatus(CURRENT, running=running, running_build=build, installed_build=installed_build,
                         newest=newest.release, newest_version=newest.version)
    if newest.release != running and order(newest, me) > 0:
        shown = f"{newest.release} ({newest.version})" if newest.version else newest.release
        return found._replace(state=NEWER, package=newest.package, since=newest.since,
                              detail=f"running {running}, a newer kernel is installed: {shown}")
    if own and build and installed_build and compare(installed_build, build) > 0:
        return found._replace(state=REBUILT, package=own.package, since=own.since,
                              detail=f"running {running} built as {build}; {own.package} {installed_build} is "
                                     f"installed (same ABI, rebuilt)")
    if own is None:
        return found._replace(detail=f"running {running}, whose package is not installed; no newer kernel is")
    if build is None:
        return found._replace(detail=f"running {running}, the newest installed; /proc/version names no Debian "
                                     f"build, so an ABI-compatible rebuild cannot be recognised")
    return found._replace(detail=f"running {running} ({build}), the newest installed")


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
        since = _list_mtime(admindir, owner) if admindir is not None and owner else None
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
    times = [t for p in set(packages) if (t := _list_mtime(admindir, p)) is not None]
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
