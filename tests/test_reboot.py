"""Reboot detection: kernel status over fixture and real dpkg databases, reasons from real plans,
and /run/reboot-required(.pkgs) written the way Debian Policy 9.12 and concurrent readers need."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from restart import kernel, microcode, reboot
from restart.kernel import kernel_status
from restart.plan import Action, make_plan
from restart.policy import Act, load
from restart.processes import Confidence, Evidence, FileKind, ProcessInfo, StaleFile
from restart.reboot import ReasonKind, RebootReason, reasons, write_reboot_required
from restart.units import INIT, SESSION, SYSTEM, Affected, OwnedFile, Unit, UnitGroup, group
from tests.support.container import Container
from tests.support.debs import build_deb

REPO = Path(__file__).resolve().parent.parent
VENDOR = REPO / "data" / "policy.toml"
DEBIAN_VERSION = ("Linux version {rel} (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14) 12.2.0, "
                  "GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian {build} (2024-09-30)\n")


# ---------------------------------------------------------------- fixture hosts

class KernelHost:
    """A fixture /proc (running kernel), dpkg admindir (status + info/*.list) and /boot."""

    def __init__(self, base: Path, running: str, version_text: str) -> None:
        self.proc, self.admin, self.boot = base / "proc", base / "admin", base / "boot"
        (self.proc / "sys" / "kernel").mkdir(parents=True)
        (self.proc / "sys" / "kernel" / "osrelease").write_text(running + "\n")
        (self.proc / "version").write_text(version_text)
        (self.admin / "info").mkdir(parents=True)
        self.boot.mkdir()
        self.paragraphs: list[str] = [
            "Package: base-files\nStatus: install ok installed\nVersion: 12.4+deb12u7\nArchitecture: amd64\n"]
        self._write()

    def _write(self) -> None:
        (self.admin / "status").write_text("\n".join(self.paragraphs))

    def package(self, name: str, version: str, *, status: str = "install ok installed",
                installed_at: float = 1_700_000_000, boot: bool = True) -> None:
        self.paragraphs.append(f"Package: {name}\nStatus: {status}\nPriority: optional\nSection: kernel\n"
                               f"Architecture: amd64\nVersion: {version}\nDescription: Linux\n test\n")
        self._write()
        lst = self.admin / "info" / f"{name}.list"
        lst.write_text("/.\n/boot\n")
        os.utime(lst, (installed_at, installed_at))
        release = name.removeprefix("linux-image-").removesuffix("-unsigned")
        if boot and release[:1].isdigit() and not name.endswith("-dbg"):
            (self.boot / f"vmlinuz-{release}").write_bytes(b"kernel")

    def status(self) -> kernel.KernelStatus:
        return kernel_status(self.proc, self.admin, self.boot)


def debian_host(tmp_path: Path, running: str = "6.1.0-26-amd64", build: str = "6.1.112-1") -> KernelHost:
    return KernelHost(tmp_path, running, DEBIAN_VERSION.format(rel=running, build=build))


def test_running_the_newest_kernel(tmp_path: Path) -> None:
    h = debian_host(tmp_path)
    h.package("linux-image-6.1.0-26-amd64", "6.1.112-1")
    h.package("linux-image-amd64", "6.1.112-1")          # the meta package is not a kernel
    h.package("linux-image-6.1.0-25-amd64", "6.1.106-3")  # an older one still installed
    s = h.status()
    assert (s.state, s.running, s.running_build, s.installed_build) == (
        "current", "6.1.0-26-amd64", "6.1.112-1", "6.1.112-1")
    assert (s.newest, s.package, s.reboot_needed) == ("6.1.0-26-amd64", None, False)
    assert reasons([], s) == []


def test_a_newer_kernel_is_installed(tmp_path: Path) -> None:
    h = debian_host(tmp_path)
    h.package("linux-image-6.1.0-26-amd64", "6.1.112-1")
    h.package("linux-image-6.1.0-27-amd64", "6.1.115-1", installed_at=1_730_000_000)
    s = h.status()
    assert (s.state, s.newest, s.newest_version, s.package, s.since) == (
        "newer-installed", "6.1.0-27-amd64", "6.1.115-1", "linux-image-6.1.0-27-amd64", 1_730_000_000)
    assert "6.1.0-27-amd64 (6.1.115-1)" in s.detail
    assert reasons([], s) == [RebootReason(ReasonKind.KERNEL, "linux-image-6.1.0-27-amd64", s.detail, 1_730_000_000)]


@pytest.mark.parametrize(("running", "build", "state"), [
    ("6.1.0-9-amd64", "6.1.27-1", "newer-installed"),   # 10 > 9: numeric, not string order
    ("6.1.0-10-amd64", "6.1.38-1", "current"),
])
def test_abi_numbers_order_numerically(tmp_path: Path, running: str, build: str, state: str) -> None:
    h = debian_host(tmp_path, running, build)
    h.package("linux-image-6.1.0-9-amd64", "6.1.27-1")
    h.package("linux-image-6.1.0-10-amd64", "6.1.38-1")
    assert h.status().state == state


def test_abi_compatible_rebuild_with_the_same_release(tmp_path: Path) -> None:
    """Debian's point releases often keep ``uname -r``: only /proc/version shows the old build."""
    h = debian_host(tmp_path, build="6.1.112-1")
    h.package("linux-image-6.1.0-26-amd64", "6.1.115-1", installed_at=1_731_000_000)
    s = h.status()
    assert (s.state, s.package, s.running_build, s.installed_build, s.since) == (
        "rebuilt", "linux-image-6.1.0-26-amd64", "6.1.112-1", "6.1.115-1", 1_731_000_000)
    [r] = reasons([], s)
    assert (r.kind, r.package) == ("kernel", "linux-image-6.1.0-26-amd64")
    assert "same ABI" in r.detail


def test_backports_build_is_read_and_compared(tmp_path: Path) -> None:
    h = debian_host(tmp_path, "6.10.6+bpo-amd64", "6.10.6-1~bpo12+1")
    h.package("linux-image-6.10.6+bpo-amd64", "6.10.6-1~bpo12+1")
    assert h.status().state == "current"
    h.package("linux-image-6.10.11+bpo-amd64", "6.10.11-1~bpo12+1")
    assert h.status().state == "newer-installed"


def test_other_flavours_do_not_count(tmp_path: Path) -> None:
    h = debian_host(tmp_path)
    h.package("linux-image-6.1.0-26-amd64", "6.1.112-1")
    h.package("linux-image-6.1.0-27-cloud-amd64", "6.1.115-1")
    h.package("linux-image-6.1.0-27-rt-amd64", "6.1.115-1")
    assert h.status().state == "current"
    h.package("linux-image-6.1.0-27-amd64", "6.1.115-1")
    assert h.status().package == "linux-image-6.1.0-27-amd64"


def test_removed_dbg_and_unsigned_packages(tmp_path: Path) -> None:
    h = debian_host(tmp_path)
    h.package("linux-image-6.1.0-26-amd64", "6.1.112-1")
    h.package("linux-image-6.1.0-28-amd64", "6.1.119-1", status="deinstall ok config-files", boot=False)
    h.package("linux-image-6.1.0-29-amd64", "6.1.120-1", status="install ok half-installed", boot=False)
    h.package("linux-image-6.1.0-28-amd64-dbg", "6.1.119-1")
    assert h.status().state == "current"
    h.package("linux-image-6.1.0-27-amd64-unsigned", "6.1.115-1")
    s = h.status()
    assert (s.state, s.newest, s.package) == (
        "newer-installed", "6.1.0-27-amd64", "linux-image-6.1.0-27-amd64-unsigned")


def test_running_kernel_removed_and_nothing_newer(tmp_path: Path) -> None:
    h = debian_host(tmp_path, "6.1.0-27-amd64", "6.1.115-1")
    h.package("linux-image-6.1.0-26-amd64", "6.1.112-1")
    s = h.status()
    assert (s.state, s.installed_build) == ("current", None)
    assert "not installed" in s.detail


def test_locally_built_kernels_in_boot(tmp_path: Path) -> None:
    """No package (make install): releases are compared, the reason names no package."""
    h = KernelHost(tmp_path, "6.5.0", "Linux version 6.5.0 (me@box) (gcc (GCC) 13.2.0) #3 SMP @0\n")
    for release, mtime in (("6.5.0", 1_700_000_000), ("6.6.1", 1_720_000_000)):
        (h.boot / f"vmlinuz-{release}").write_bytes(b"k")
        os.utime(h.boot / f"vmlinuz-{release}", (mtime, mtime))
    (h.boot / "vmlinuz-7.0.0").symlink_to("vmlinuz-6.6.1")  # a link is not a kernel of its own
    s = h.status()
    assert (s.state, s.newest, s.package, s.since, s.running_build) == (
        "newer-installed", "6.6.1", None, 1_720_000_000, None)
    assert reasons([], s)[0] == RebootReason(ReasonKind.KERNEL, None, s.detail, 1_720_000_000)


def test_no_kernel_managed_here_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also (issue 15): saying so needs no python-apt (6 ms of every hook run in a container)."""
    monkeypatch.setitem(sys.modules, "apt_pkg", None)  # "import apt_pkg" would raise ImportError
    h = KernelHost(tmp_path, "6.18.44-fc-v769", "Linux version 6.18.44-fc-v769 (b@s) (gcc) #1 SMP @0\n")
    s = h.status()
    assert (s.state, s.running, s.reboot_needed) == ("unknown", "6.18.44-fc-v769", False)
    assert "6.18.44-fc-v769" in s.detail and "is not managed" in s.detail and reasons([], s) == []


def test_without_python3_apt_the_state_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = debian_host(tmp_path)
    h.package("linux-image-6.1.0-27-amd64", "6.1.115-1")
    monkeypatch.setitem(sys.modules, "apt_pkg", None)  # makes "import apt_pkg" raise ImportError
    s = h.status()
    assert (s.state, s.running, s.running_build) == ("unknown", "6.1.0-26-amd64", "6.1.112-1")
    assert "python3-apt" in s.detail


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run" / "restartctl"
    run.mkdir(parents=True)
    return run


def test_the_kernels_state_is_kept_and_taken_back_without_python_apt(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Most transactions touch no kernel: a later run with the same facts takes the kept answer, without
    python-apt's import and parse of the status file (6-9 ms of every hook run on a host with a kernel)."""
    h = debian_host(tmp_path / "h")
    h.package("linux-image-6.1.0-26-amd64", "6.1.112-1")
    h.package("linux-image-6.1.0-27-amd64", "6.1.115-1", installed_at=1_730_000_000)
    run = _run_dir(tmp_path)
    first = kernel_status(h.proc, h.admin, h.boot, cache=run)
    assert first.state == "newer-installed" and first == h.status()  # the same answer as without the cache
    assert (run / kernel.CACHE).stat().st_mode & 0o777 == 0o644
    monkeypatch.setitem(sys.modules, "apt_pkg", None)  # "import apt_pkg" would raise ImportError
    assert kernel_status(h.proc, h.admin, h.boot, cache=run) == first


def _newer_stanza(h: KernelHost) -> None:
    h.package("linux-image-6.1.0-28-amd64", "6.1.119-1", installed_at=1_735_000_000)


def _rebuilt(h: KernelHost) -> None:
    (h.proc / "version").write_text(DEBIAN_VERSION.format(rel="6.1.0-27-amd64", build="6.1.115-1"))
    (h.proc / "sys" / "kernel" / "osrelease").write_text("6.1.0-27-amd64\n")


def _in_boot(h: KernelHost) -> None:
    (h.boot / "vmlinuz-6.1.0-99-amd64").write_bytes(b"a kernel built here")


def _reinstalled(h: KernelHost) -> None:
    lst = h.admin / "info" / "linux-image-6.1.0-27-amd64.list"
    os.utime(lst, (1_740_000_000, 1_740_000_000))


def _removed(h: KernelHost) -> None:
    h.paragraphs = [p for p in h.paragraphs if "6.1.0-27" not in p]
    h._write()
    (h.boot / "vmlinuz-6.1.0-27-amd64").unlink()


@pytest.mark.parametrize("change", [_newer_stanza, _rebuilt, _in_boot, _reinstalled, _removed])
def test_a_kept_answer_is_taken_only_for_the_same_facts(tmp_path: Path, change: Callable[[KernelHost], None]) -> None:
    """Whatever the answer is made from changes it: a kernel package, the running kernel, /boot, when dpkg
    unpacked a kernel (the reason's ``since``)."""
    h = debian_host(tmp_path / "h")
    h.package("linux-image-6.1.0-26-amd64", "6.1.112-1")
    h.package("linux-image-6.1.0-27-amd64", "6.1.115-1", installed_at=1_730_000_000)
    run = _run_dir(tmp_path)
    before = kernel_status(h.proc, h.admin, h.boot, cache=run)
    change(h)
    after = kernel_status(h.proc, h.admin, h.boot, cache=run)
    assert after == h.status() != before  # what a run without the cache says, not the kept answer
    assert kernel_status(h.proc, h.admin, h.boot, cache=run) == after  # kept anew


def test_a_kept_answer_is_not_taken_after_a_reboot_into_a_rebuild(tmp_path: Path) -> None:
    """The same release (``uname -r``) rebuilt: only /proc/version tells the two boots apart."""
    h = debian_host(tmp_path / "h", build="6.1.112-1")
    h.package("linux-image-6.1.0-26-amd64", "6.1.112-2")
    run = _run_dir(tmp_path)
    assert kernel_status(h.proc, h.admin, h.boot, cache=run).state == "rebuilt"
    (h.proc / "version").write_text(DEBIAN_VERSION.format(rel="6.1.0-26-amd64", build="6.1.112-2"))
    assert kernel_status(h.proc, h.admin, h.boot, cache=run).state == "current"


@pytest.mark.parametrize("how", ["file others may write", "directory others may write", "symlink", "garbage",
                                 "wrong types"])
def test_a_kept_answer_is_never_trusted_from_anyone_but_root(tmp_path: Path, how: str) -> None:
    """A forged answer for the right facts ("current" on a host that needs a reboot) is not taken."""
    h = debian_host(tmp_path / "h")
    h.package("linux-image-6.1.0-26-amd64", "6.1.112-1")
    h.package("linux-image-6.1.0-27-amd64", "6.1.115-1", installed_at=1_730_000_000)
    run = _run_dir(tmp_path)
    truth = kernel_status(h.proc, h.admin, h.boot, cache=run)
    kept = json.loads((run / kernel.CACHE).read_text())
    kept["status"][0] = "current"
    forged = json.dumps(kept)
    if how == "garbage":
        forged = forged[:-5]
    if how == "wrong types":
        kept["status"][-2] = "yesterday"
        forged = json.dumps(kept)
    (run / kernel.CACHE).write_text(forged)
    if how == "file others may write":
        os.chmod(run / kernel.CACHE, 0o666)
    if how == "directory others may write":
        os.chmod(run, 0o777)
    if how == "symlink":
        elsewhere = tmp_path / "elsewhere.json"
        (run / kernel.CACHE).rename(elsewhere)
        (run / kernel.CACHE).symlink_to(elsewhere)
    assert kernel_status(h.proc, h.admin, h.boot, cache=run) == truth


def test_the_kernel_stanzas_are_what_dpkgs_parser_finds(tmp_path: Path) -> None:
    """The stanzas found by search (the answer's facts) name exactly the linux-image packages python-apt's
    parser reads from this host's status file, with kernel stanzas first, among the others and last."""
    import apt_pkg

    stanza = "Package: linux-image-{}\nStatus: install ok installed\nVersion: 1\nDescription: x\n y\n"
    others = (Path("/var/lib/dpkg/status").read_text(errors="surrogateescape").strip("\n").split("\n\n"))
    text = "\n\n".join([stanza.format("6.1.0-1-amd64").rstrip("\n"), *others[:5],
                         stanza.format("6.1.0-2-amd64").rstrip("\n"), *others[5:],
                         stanza.format("6.1.0-3-amd64").rstrip("\n")]) + "\n"
    (tmp_path / "status").write_text(text, errors="surrogateescape")
    with apt_pkg.TagFile(str(tmp_path / "status")) as tags:
        expected = [t.get("Package") for t in tags if (t.get("Package") or "").startswith("linux-image-")]
    found = kernel._kernel_stanzas((tmp_path / "status").read_bytes()).split(b"\n\n")
    assert [f.split(b"\n")[0].removeprefix(b"Package: ").decode() for f in found] == expected
    assert len(expected) == 3 and all(f.rstrip(b"\n").endswith(b" y") for f in found)  # whole stanzas


def test_unreadable_sources_are_unknown(tmp_path: Path) -> None:
    s = kernel_status(tmp_path / "noproc", tmp_path, tmp_path)
    assert s.state == "unknown" and "cannot read" in s.detail
    h = debian_host(tmp_path / "h")
    (h.admin / "status").unlink()
    s = h.status()
    assert s.state == "unknown" and "status" in s.detail


@pytest.mark.parametrize(("text", "build"), [
    (DEBIAN_VERSION.format(rel="6.1.0-26-amd64", build="6.1.112-1"), "6.1.112-1"),
    ("Linux version 6.1.0-26-amd64 (x) (gcc-12 (Debian 12.2.0-14) 12.2.0) #1 SMP PREEMPT_DYNAMIC @0", None),
    ("Linux version 5.15.0-91-generic (buildd@lcy02) (gcc (Ubuntu 11.4.0-1ubuntu1~22.04) 11.4.0) "
     "#101-Ubuntu SMP Tue Nov 14 13:30:08 UTC 2023", None),
    ("garbage", None),
])
def test_build_version_comes_only_after_the_build_number(text: str, build: str | None) -> None:
    assert kernel.running_build(text) == build


def test_real_host_kernel_is_self_consistent() -> None:
    """Whatever this host runs, the answer must agree with uname -r and dpkg's own view."""
    s = kernel_status()
    assert s.running == os.uname().release
    rows = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\t${db:Status-Abbrev}\n", "linux-image-*"],
                          capture_output=True, text=True, check=False).stdout.splitlines()
    installed = {}
    for row in rows:
        name, version, abbrev = row.split("\t")
        release = name.removeprefix("linux-image-").removesuffix("-unsigned")
        if abbrev.startswith("ii") and release[:1].isdigit() and not name.endswith("-dbg"):
            installed[release] = version
    boot = {p.name.removeprefix("vmlinuz-") for p in Path("/boot").glob("vmlinuz-*") if not p.is_symlink()}
    if not installed and not boot:
        assert s.state == "unknown" and s.running in s.detail
        return
    assert s.state in ("current", "newer-installed", "rebuilt")
    assert s.installed_build == installed.get(s.running)
    assert s.newest in set(installed) | boot
    if s.state == "newer-installed":
        assert s.newest != s.running
        if s.newest_version and (s.running_build or s.installed_build):
            mine = s.running_build or s.installed_build or ""
            assert subprocess.run(["dpkg", "--compare-versions", s.newest_version, "gt", mine]).returncode == 0
    if s.state == "rebuilt":
        assert subprocess.run(["dpkg", "--compare-versions", s.installed_build or "", "gt",
                               s.running_build or ""]).returncode == 0


# ---------------------------------------------------------------- real dpkg, in a container

def _status_in(c: Container) -> dict[str, Any]:
    code = ("import json, sys; from restart import kernel, reboot; s = kernel.kernel_status(); "
            "json.dump({**s._asdict(), 'reasons': [r._asdict() for r in reboot.reasons([], s)]}, sys.stdout)")
    out = c.check(["/usr/bin/python3", "-c", code], env={"PYTHONPATH": str(REPO)})
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.mark.real  # root and systemd-nspawn: dpkg runs in a container
def test_kernel_packages_installed_by_real_dpkg(plain_container: Container, tmp_path: Path) -> None:
    """Kernel image packages named after the running release, installed by dpkg in a container."""
    c = plain_container
    running = os.uname().release
    # A release of the same flavour (or, for a release without Debian's ABI form, any release).
    newer = f"99.0.0-1-{kernel.flavour(running)}" if kernel.flavour(running) else "99.0.0"
    own = build_deb(tmp_path, f"linux-image-{running}", "1.0-1", {f"/boot/vmlinuz-{running}": b"old kernel"})
    c.install_debs([own])
    before = _status_in(c)
    assert (before["state"], before["running"], before["installed_build"], before["reasons"]) == (
        "current", running, "1.0-1", [])
    c.install_debs([build_deb(tmp_path, f"linux-image-{newer}", "99.0-1", {f"/boot/vmlinuz-{newer}": b"new"})])
    after = _status_in(c)
    assert (after["state"], after["newest"], after["package"]) == ("newer-installed", newer, f"linux-image-{newer}")
    listed = float(c.check(["stat", "-c", "%Y", f"/var/lib/dpkg/info/linux-image-{newer}.list"]))
    [r] = after["reasons"]
    assert (r["kind"], r["package"], int(r["since"])) == ("kernel", f"linux-image-{newer}", int(listed))


# ---------------------------------------------------------------- reasons from plans

def affected(pid: int, unit: Unit, *packages: str) -> Affected:
    proc = ProcessInfo(pid, 1, 0, "x", "/usr/sbin/x", "", None, ())
    stale = StaleFile(FileKind.CODE, "/usr/lib/x86_64-linux-gnu/libc.so.6", Confidence.CERTAIN, Evidence.REPLACED)
    return Affected(proc, unit, tuple(OwnedFile(stale, p) for p in packages), ())


def plan_for(tmp_path: Path, admin_rules: str, *members: Affected) -> list[Action]:
    etc = tmp_path / "etc" / "restartctl"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "policy.toml").write_text(admin_rules)
    return make_plan(group(list(members)), load([etc / "policy.toml", VENDOR]))


def test_reasons_from_a_real_plan(tmp_path: Path) -> None:
    admin = tmp_path / "admin"
    (admin / "info").mkdir(parents=True)
    for name, when in (("libc6:amd64", 1_710_000_000), ("libfoo1", 1_720_000_000)):
        (admin / "info" / f"{name}.list").write_text("/.\n")
        os.utime(admin / "info" / f"{name}.list", (when, when))
    actions = plan_for(
        tmp_path,
        '[[rule]]\nunit = "legacy.service"\naction = "reboot"\nreason = "cannot restart live"\n'
        '[[rule]]\nunit = "init.scope"\naction = "defer"\n'
        '[[rule]]\nunit = "postgresql.service"\naction = "defer"\nreason = "maintenance window"\n',
        affected(10, Unit(SYSTEM, "dbus.service"), "libc6:amd64"),          # vendor: defer, reboot instead
        affected(11, Unit(SYSTEM, "systemd-logind.service"), "libc6:amd64"),  # vendor: defer; uses libc
        affected(12, Unit(SYSTEM, "postgresql.service"), "libc6:amd64", "libfoo1"),
        affected(13, Unit(SYSTEM, "legacy.service"), "libfoo1"),
        affected(1, Unit(INIT, "init.scope"), "libc6:amd64"),
        affected(14, Unit(SYSTEM, "NetworkManager.service"), "libfoo1"),   # deferred, not libc: not a reason
        affected(15, Unit(SYSTEM, "nginx.service"), "libc6:amd64"),        # restarted: not a reason
        affected(16, Unit(SESSION, "session-3.scope", 1000), "libc6:amd64"),  # left to its user
    )
    by_unit = {a.group.name: a.action for a in actions}
    assert by_unit == {"dbus.service": "defer", "systemd-logind.service": "defer", "postgresql.service": "defer",
                       "legacy.service": "reboot", "init.scope": "defer", "NetworkManager.service": "defer",
                       "nginx.service": "restart", "session-3.scope": "notify"}
    found = reasons(actions, admindir=admin)
    assert sorted((r.kind, r.package, r.since) for r in found) == [
        ("init", "libc6:amd64", 1_710_000_000),
        ("library", "libc6:amd64", 1_710_000_000),
        ("policy", "libfoo1", 1_720_000_000),
        ("service", "libc6:amd64", 1_710_000_000),
    ]
    [library] = [r for r in found if r.kind == "library"]
    assert set(library.detail.split("; ")) == {
        "systemd-logind.service: restarting the login manager can end user sessions",
        "postgresql.service: maintenance window"}
    [policy] = [r for r in found if r.kind == "policy"]
    assert policy.detail == "legacy.service: cannot restart live"
    assert reboot.required_since(found) == 1_710_000_000


def test_plain_pid1_reexec_and_ignored_units_are_not_reasons(tmp_path: Path) -> None:
    actions = plan_for(tmp_path, '[[rule]]\nunit = "cron.service"\naction = "ignore"\n',
                       affected(1, Unit(INIT, "init.scope"), "libc6:amd64"),
                       affected(10, Unit(SYSTEM, "cron.service"), "libc6:amd64"))
    assert sorted(a.action for a in actions) == ["ignore", "reexec"]
    assert reasons(actions) == []


def test_reason_kinds_and_units_are_configurable() -> None:
    g = UnitGroup(SYSTEM, "postgresql.service", None, False, True, (5,), ("libssl3:amd64",), ())
    deferred = [Action(g, Act.DEFER, None, "maintenance window")]
    assert reasons(deferred) == []
    assert [r.kind for r in reasons(deferred, core_packages=("libssl3*",))] == ["library"]
    assert [r.kind for r in reasons(deferred, reboot_units=("postgres*",))] == ["service"]


# ---------------------------------------------------------------- /run/reboot-required

@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir(mode=0o755)
    return d


KERNEL = RebootReason(ReasonKind.KERNEL, "linux-image-6.1.0-27-amd64", "newer kernel")
LIBC = RebootReason(ReasonKind.LIBRARY, "libc6:amd64", "dbus.service")


def test_writes_the_flag_and_the_packages(run_dir: Path) -> None:
    w = write_reboot_required(run_dir, [KERNEL, LIBC, RebootReason(ReasonKind.INIT, "libc6:i386", "pid 1")])
    assert w == reboot.Written(True, ("linux-image-6.1.0-27-amd64", "libc6"))
    assert (run_dir / "reboot-required").read_text() == "*** System restart required ***\n"
    assert (run_dir / "reboot-required.pkgs").read_text() == "linux-image-6.1.0-27-amd64\nlibc6\n"
    for name in ("reboot-required", "reboot-required.pkgs"):
        assert stat.S_IMODE(os.lstat(run_dir / name).st_mode) == 0o644
    assert sorted(p.name for p in run_dir.iterdir()) == ["reboot-required", "reboot-required.pkgs"]


def test_appends_only_what_is_missing_and_never_truncates(run_dir: Path) -> None:
    (run_dir / "reboot-required").write_text("")          # as `touch` leaves it: not rewritten
    (run_dir / "reboot-required.pkgs").write_text("libc6\nsystemd")  # another tool, no final newline
    before = os.stat(run_dir / "reboot-required")
    w = write_reboot_required(run_dir, [LIBC, KERNEL, KERNEL])
    assert w == reboot.Written(False, ("linux-image-6.1.0-27-amd64",))
    assert (run_dir / "reboot-required.pkgs").read_text() == "libc6\nsystemd\nlinux-image-6.1.0-27-amd64\n"
    after = os.stat(run_dir / "reboot-required")
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, 0, before.st_mtime_ns)
    assert write_reboot_required(run_dir, [LIBC, KERNEL]) == reboot.Written(False, ())


def test_nothing_without_reasons_and_no_list_without_packages(run_dir: Path) -> None:
    assert write_reboot_required(run_dir, []) == reboot.Written(False, ())
    assert list(run_dir.iterdir()) == []
    assert write_reboot_required(run_dir, [RebootReason(ReasonKind.KERNEL, None, "a kernel in /boot")]).flag_created
    assert [p.name for p in run_dir.iterdir()] == ["reboot-required"]


def test_hostile_names_are_never_written(run_dir: Path) -> None:
    hostile = [RebootReason(ReasonKind.POLICY, "evil\nroot", "x"), RebootReason(ReasonKind.POLICY, "", "y")]
    w = write_reboot_required(run_dir, hostile)
    assert w == reboot.Written(True, ())
    assert not (run_dir / "reboot-required.pkgs").exists()


def test_symlinks_are_never_followed(run_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (run_dir / "reboot-required").symlink_to(victim)
    (run_dir / "reboot-required.pkgs").symlink_to(victim)
    with pytest.raises(OSError):
        write_reboot_required(run_dir, [LIBC])
    os.unlink(run_dir / "reboot-required.pkgs")
    assert write_reboot_required(run_dir, [LIBC]) == reboot.Written(False, ("libc6",))  # flag: a link, left alone
    assert victim.read_text() == "keep\n"
    assert (run_dir / "reboot-required").is_symlink()


def test_a_fifo_does_not_hang_and_is_refused(run_dir: Path) -> None:
    os.mkfifo(run_dir / "reboot-required.pkgs")
    with pytest.raises(OSError):
        write_reboot_required(run_dir, [LIBC])


def test_a_directory_others_can_write_is_refused(run_dir: Path) -> None:
    os.chmod(run_dir, 0o777)
    with pytest.raises(OSError):
        write_reboot_required(run_dir, [LIBC])
    assert list(run_dir.iterdir()) == []


def test_a_symlinked_directory_is_refused(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "linked").symlink_to(run_dir)
    with pytest.raises(OSError):
        write_reboot_required(tmp_path / "linked", [LIBC])
    assert list(run_dir.iterdir()) == []


def _writer(run_dir: str, names: list[str]) -> None:
    for name in names:
        write_reboot_required(Path(run_dir), [RebootReason(ReasonKind.POLICY, name, "x")])


def test_concurrent_writers_and_readers(run_dir: Path) -> None:
    """Writers in several processes race; a reader never sees a partial line or a flag without text."""
    names = [f"pkg{i}" for i in range(40)]
    problems: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                flag = (run_dir / "reboot-required").read_text()
            except FileNotFoundError:
                flag = None
            if flag not in (None, "*** System restart required ***\n"):
                problems.append(f"flag {flag!r}")
            try:
                text = (run_dir / "reboot-required.pkgs").read_text()
            except FileNotFoundError:
                continue
            if text and not text.endswith("\n"):
                problems.append(f"partial {text[-20:]!r}")

    t = threading.Thread(target=read)
    t.start()
    ctx = multiprocessing.get_context("spawn")  # no fork: the reader thread runs already
    procs = [ctx.Process(target=_writer, args=(str(run_dir), names[i:] + names[:i])) for i in range(0, 40, 5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    stop.set()
    t.join()
    assert [p.exitcode for p in procs] == [0] * len(procs)
    assert problems == []
    lines = (run_dir / "reboot-required.pkgs").read_text().splitlines()
    assert sorted(lines) == sorted(names)
    assert sorted(p.name for p in run_dir.iterdir()) == ["reboot-required", "reboot-required.pkgs"]


def test_flagged_by_others(run_dir: Path) -> None:
    assert reboot.flagged(run_dir) == []
    (run_dir / "reboot-required").write_text("*** System restart required ***\n")
    os.utime(run_dir / "reboot-required", (1_700_000_000, 1_700_000_000))
    [r] = reboot.flagged(run_dir)
    assert (r.kind, r.package, r.since) == ("flag", None, 1_700_000_000)
    (run_dir / "reboot-required.pkgs").write_text("libc6\nlinux-image-6.1.0-27-amd64\nlibc6\nbad name\n")
    assert [(r.kind, r.package) for r in reboot.flagged(run_dir)] == [
        ("flag", "libc6"), ("flag", "linux-image-6.1.0-27-amd64")]
    assert [r.package for r in reboot.flagged(run_dir, known=[LIBC])] == ["linux-image-6.1.0-27-amd64"]
    assert reboot.flagged(run_dir, known=[LIBC, KERNEL]) == []


# ---------------------------------------------------------------- microcode

CPUINFO = ("processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
           "model name\t: Some CPU\nstepping\t: {stepping}\nmicrocode\t: {revision:#x}\nflags\t\t: fpu vme{flags}\n\n"
           "processor\t: 1\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
           "stepping\t: {stepping}\nmicrocode\t: 0x0\n\n")


def intel_update(revision: int, signature: int, platforms: int = 0xFF, data: int = 80) -> bytes:
    """One update as intel-ucode files hold them: the 48-byte header, then its data."""
    return struct.pack("<12I", 1, revision, 0x20240101, signature, 0, 1, platforms, data, 48 + data, 0, 0, 0) \
        + b"\x00" * data


def amd_container(signature: int, equiv_id: int, *patches: tuple[int, int]) -> bytes:
    """An amd-ucode container: magic, the equivalence table, then (patch id, for equivalence id) patches."""
    table = struct.pack("<IIIHH", signature, 0, 0, equiv_id, 0) + struct.pack("<IIIHH", 0, 0, 0, 0, 0)
    out = b"DMA\x00" + struct.pack("<II", 0, len(table)) + table
    for patch_id, for_id in patches:
        body = struct.pack("<IIHBBIIIHBBB3x", 0x20240101, patch_id, 0, 0, 0, 0, 0, 0, for_id, 0, 0, 0) + b"\x00" * 32
        out += struct.pack("<II", 1, len(body)) + body
    return out


class MicrocodeHost:
    def __init__(self, base: Path, vendor: str, family: int, model: int, stepping: int, revision: int,
                 *, virtual: bool = False) -> None:
        self.proc, self.root = base / "proc", base / "root"
        self.proc.mkdir(parents=True)
        (self.proc / "cpuinfo").write_text(CPUINFO.format(vendor=vendor, family=family, model=model, stepping=stepping,
                                                          revision=revision, flags=" hypervisor" if virtual else ""))
        self.firmware = self.root / "lib" / "firmware"

    def install(self, relative: str, data: bytes) -> None:
        path = self.firmware / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def status(self) -> RebootReason | None:
        return reboot.microcode_status(self.proc, self.firmware, sysfs=self.root / "sys")


SKYLAKE_X = (6, 0x55, 4)  # family, model, stepping: CPUID signature 0x50654


def test_cpuid_signature_as_microcode_files_name_processors() -> None:
    cpu = microcode.Cpu("GenuineIntel", *SKYLAKE_X, 0x2006e05, False)
    assert microcode.cpuid_signature(cpu) == 0x50654
    assert microcode.cpuid_signature(microcode.Cpu("AuthenticAMD", 0x19, 0x21, 0, 0, False)) == 0xA20F10
    assert microcode.cpuid_signature(microcode.Cpu("AuthenticAMD", 0x17, 0x31, 0, 0, False)) == 0x830F10


def test_newer_intel_microcode_installed_needs_a_reboot(tmp_path: Path) -> None:
    host = MicrocodeHost(tmp_path, "GenuineIntel", *SKYLAKE_X, revision=0x2006E05)
    assert host.status() is None  # no file for this CPU
    host.install("intel-ucode/06-55-04", intel_update(0x2007006, 0x50654, platforms=0x01)
                 + intel_update(0x2006D05, 0x50654, platforms=0x02) + intel_update(0x9999999, 0x50655))
    found = host.status()
    assert found is not None and (found.kind, found.package) == ("microcode", "intel-microcode")
    assert "0x2007006 is installed, 0x2006e05 is running" in found.detail
    # The kernel says which platform this CPU is: only updates for it count.
    flags = host.root / "sys/devices/system/cpu/cpu0/microcode/processor_flags"
    flags.parent.mkdir(parents=True)
    flags.write_text("0x2\n")
    assert host.status() is None  # 0x2006d05 is what this platform can load, and it is older


def test_current_or_virtual_intel_cpus_need_nothing(tmp_path: Path) -> None:
    current = MicrocodeHost(tmp_path / "a", "GenuineIntel", *SKYLAKE_X, revision=0x2007006)
    current.install("intel-ucode/06-55-04", intel_update(0x2007006, 0x50654))
    assert current.status() is None
    guest = MicrocodeHost(tmp_path / "b", "GenuineIntel", *SKYLAKE_X, revision=0x1, virtual=True)
    guest.install("intel-ucode/06-55-04", intel_update(0x2007006, 0x50654))
    assert guest.status() is None


def test_newer_amd_microcode_installed_needs_a_reboot(tmp_path: Path) -> None:
    host = MicrocodeHost(tmp_path, "AuthenticAMD", 0x19, 0x21, 0, revision=0xA201016)
    host.install("amd-ucode/microcode_amd_fam19h.bin",
                 amd_container(0xA20F10, 0xA210, (0xA201025, 0xA210), (0xA601209, 0xA600)))
    found = host.status()
    assert found is not None and (found.kind, found.package) == ("microcode", "amd64-microcode")
    assert "0xa201025 is installed, 0xa201016 is running" in found.detail


@pytest.mark.parametrize("data", [
    b"", b"\x01" * 47, struct.pack("<9I", 2, 5, 0, 0x50654, 0, 0, 0xFF, 0, 0),  # not version 1
    struct.pack("<9I", 1, 5, 0, 0x50654, 0, 0, 0xFF, 4000, 100),  # data larger than the whole
    intel_update(0x2007006, 0x50654)[:60],  # cut short: the header still reads, nothing past it
])
def test_malformed_intel_files_never_crash(tmp_path: Path, data: bytes) -> None:
    host = MicrocodeHost(tmp_path, "GenuineIntel", *SKYLAKE_X, revision=0x2006E05)
    host.install("intel-ucode/06-55-04", data)
    found = host.status()
    assert found is None or found.kind == "microcode"


@pytest.mark.parametrize("data", [b"DMA\x00", b"DMA\x00" + struct.pack("<II", 0, 10_000),
                                  amd_container(0xA20F10, 0xA210, (0xA201025, 0xA210))[:-20], b"XYZ\x00" * 10])
def test_malformed_amd_files_never_crash(tmp_path: Path, data: bytes) -> None:
    host = MicrocodeHost(tmp_path, "AuthenticAMD", 0x19, 0x21, 0, revision=0xA201016)
    host.install("amd-ucode/microcode_amd_fam19h.bin", data)
    assert host.status() is None


def test_odd_cpuinfo_is_no_answer(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text("processor : 0\nvendor_id : GenuineIntel\nmicrocode : zz\n")
    assert reboot.microcode_status(tmp_path, tmp_path) is None
    assert reboot.microcode_status(tmp_path / "missing", tmp_path) is None


def test_real_host_microcode_check_runs() -> None:
    """This host's own answer: none inside a VM (the hypervisor flag), else consistent with its files."""
    cpu = microcode.parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    found = reboot.microcode_status()
    if cpu is None or cpu.virtual:
        assert found is None
    else:
        assert found is None or found.kind == "microcode"


def test_microcode_is_a_reason_for_the_host(tmp_path: Path) -> None:
    host = MicrocodeHost(tmp_path, "GenuineIntel", *SKYLAKE_X, revision=0x2006E05)
    host.install("intel-ucode/06-55-04", intel_update(0x2007006, 0x50654))
    (tmp_path / "admin" / "info").mkdir(parents=True)
    found, _ = reboot.for_host([], proc=host.proc, root=host.root, admindir=tmp_path / "admin")
    assert [r.kind for r in found] == ["microcode"]
