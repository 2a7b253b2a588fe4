"""The kernel: is the running one the newest installed of its flavour, or rebuilt since it booted?

No subprocess: the running kernel comes from ``/proc``, the installed ones from the dpkg status
file and ``/boot``, versions are ordered by python-apt's ``apt_pkg.version_compare`` (imported
lazily; without python3-apt the kernel state is ``unknown``, never a guess).  :mod:`restart.reboot`
turns the answer into a reboot reason.

The answer is kept in the run directory (``CACHE``, gone at boot as the running kernel is) with every
fact it came from; a later run that finds those facts unchanged (the usual case: most transactions
touch no kernel) takes it without python-apt's import and parse of the whole status file, 4-5 ms of
every hook run on a host with a kernel package.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

from restart import NamedTuple, fsutil
from restart.packages import unpack_time


class KernelState(StrEnum):
    """The running kernel against the installed ones (``reboot.kernel.state``)."""

    CURRENT = "current"
    NEWER = "newer-installed"
    REBUILT = "rebuilt"
    UNKNOWN = "unknown"


CURRENT, NEWER, REBUILT, UNKNOWN = KernelState

_ABI_RE = re.compile(r"\d+\.\d+(?:\.\d+)?-\d+-(?P<flavour>[a-z0-9][a-z0-9-]*)")
_BUILD_RE = re.compile(r"\) #\d+\S* (?P<rest>.*)$")
_DEBIAN_RE = re.compile(r"\bDebian (?P<version>[0-9][^\s()]*)")
_INSTALLED_STATES = frozenset({"installed", "triggers-pending", "triggers-awaited"})
_STANZA = b"Package: linux-image-"
CACHE = "kernel-state.json"  # in the run directory (see the module's doc)
CACHE_MAX = 1 << 18  # bytes of it read at most (a kernel's stanza is ~1 KB; anything longer is not ours)


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


def _kernel_stanzas(data: bytes) -> bytes:
    """The dpkg status file's ``linux-image-*`` stanzas as they stand, found by search, no parser (a
    container's, a VM's with its kernel from outside often has none): what the answer depends on."""
    found = []
    at = 0 if data.startswith(_STANZA) else data.find(b"\n" + _STANZA)
    while at != -1:
        begin = at + 1 if data[at:at + 1] == b"\n" else at
        end = data.find(b"\n\n", begin)
        found.append(data[begin:] if end == -1 else data[begin:end])
        at = -1 if end == -1 else data.find(b"\n" + _STANZA, end)
    return b"\n\n".join(found)


def _facts(running: str, version_text: str, stanzas: bytes, boot: dict[str, _Kernel], admindir: Path) -> list[object]:
    """Everything an answer is made from, as JSON data: the running kernel, the kernel stanzas, /boot's
    kernels and when dpkg unpacked each kernel package (an answer says since when a reboot is due)."""
    text = stanzas.decode("utf-8", "surrogateescape")
    names = sorted(set(re.findall(r"^Package: (\S+)", text, re.MULTILINE)))
    return [running, version_text, text, sorted([k.release, k.since] for k in boot.values()),
            [[name, unpack_time(admindir, name)] for name in names]]


def _recalled(cache: Path, facts: list[object]) -> KernelStatus | None:
    """The answer kept for exactly these ``facts``; None when there is none, it was made from other
    facts, or anyone but root could have written it (never trusted then)."""
    kept = fsutil.read_kept(cache / CACHE, CACHE_MAX)
    if not (isinstance(kept, dict) and kept.get("facts") == facts):  # (facts: lists, str, float, None)
        return None
    try:
        state, running, *named, since, detail = kept["status"]  # the fields of KernelStatus, in order
        if not (isinstance(running, str) and isinstance(detail, str) and len(named) == 5
                and all(v is None or isinstance(v, str) for v in named)
                and (since is None or type(since) in (int, float))):
            return None
        return KernelStatus._make([KernelState(state), running, *named, since, detail])
    except (ValueError, TypeError, KeyError):
        return None


def _remember(cache: Path, facts: list[object], status: KernelStatus) -> None:
    """Keep ``status`` for the next run (in root's own run directory only; nothing if it cannot)."""
    fsutil.keep(cache / CACHE, {"facts": facts, "status": [status.state.value, *status[1:]]}, limit=CACHE_MAX)


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
                found[release] = _Kernel(release, version, name, unpack_time(admindir, name))
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
                  boot: Path = Path("/boot"), cache: Path | None = None) -> KernelStatus:
    """Is a reboot needed for the kernel?  Compares the running kernel with the installed ones.

    The newest kernel is looked for among those of the running flavour (``amd64``, ``cloud-amd64``,
    ``rt-amd64``; all kernels when none shares it), ordered by package version when every candidate
    has one, else by release.  A kernel that grub would not pick by default is not a reason.
    ``cache``: the run directory, where the answer is kept for the next run (see the module's doc).
    """
    try:
        running = (proc / "sys" / "kernel" / "osrelease").read_text(encoding="utf-8", errors="replace").strip()
        version_text = (proc / "version").read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        return KernelStatus(UNKNOWN, detail=f"cannot read the running kernel's release: {e.strerror}")
    build = running_build(version_text)
    unmanaged = KernelStatus(UNKNOWN, running=running, running_build=build,
                             detail=f"no installed kernel image package (linux-image-*) or /boot/vmlinuz-*: "
                                    f"the running kernel {running} is not managed by this system's dpkg")
    try:
        with open(admindir / "status", "rb") as f:
            stanzas = _kernel_stanzas(f.read())
        kernels = _boot_kernels(boot)
        if not stanzas and not kernels:  # python-apt (6 ms to import) is not needed to say so
            return unmanaged
        facts = None
        if cache is not None:
            facts = _facts(running, version_text, stanzas, kernels, admindir)
            if (known := _recalled(cache, facts)) is not None:
                return known
        compare = _version_compare()
        if compare is None:
            return KernelStatus(UNKNOWN, running=running, running_build=build,
                                detail="python3-apt is not installed: kernel versions cannot be compared")
        packaged = _installed_kernels(admindir) if stanzas else {}
    except (OSError, SystemError) as e:  # apt_pkg reports an unreadable status file as SystemError
        return KernelStatus(UNKNOWN, running=running, running_build=build,
                            detail=f"cannot read the dpkg status file: {e}")
    status = _judge(running, build, {**kernels, **packaged}, packaged, compare, unmanaged)
    if cache is not None and facts is not None:
        _remember(cache, facts, status)
    return status


def _judge(running: str, build: str | None, kernels: dict[str, _Kernel], packaged: dict[str, _Kernel],
           compare: Callable[[str, str], int], unmanaged: KernelStatus) -> KernelStatus:
    """The answer from the kernels installed (``kernels``: /boot's and dpkg's, ``packaged``: dpkg's)."""
    own = packaged.get(running)
    installed_build = own.version if own else None
    if not kernels:
        return unmanaged
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
