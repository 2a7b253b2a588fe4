"""A fixture host for the command line: a merged-/usr root, a dpkg database, /run and a fixture /proc.

Shared by the tests that drive ``restartctl`` end to end without a container (cli, admin, formats,
fleet, hook): fixture trees only, for inputs a kernel will not produce on demand.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from restart.cli import main
from restart.roots import Roots
from tests.fakeproc import FakeProcess, build, ino, map_line, rootfs

REPO = Path(__file__).resolve().parent.parent.parent
LIB = "/usr/lib/x86_64-linux-gnu/libdemo.so.1"
EXE = "/usr/sbin/demod"


class Host:
    """A fixture host: merged-/usr root, a dpkg database and a /proc with stale processes."""

    def __init__(self, base: Path, *, systemd: bool) -> None:
        self.base = base
        self.root = rootfs(base / "root", {LIB: b"v2", EXE: b"bin", "/etc/init.d/demod": b"#!/bin/sh\n"})
        for name in ("bin", "sbin", "lib"):
            (self.root / "usr" / name).mkdir(parents=True, exist_ok=True)
            (self.root / name).symlink_to(f"usr/{name}")
        info = base / "admin" / "info"
        info.mkdir(parents=True)
        lib_list = "/.\n/lib\n/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu/libdemo.so.1\n"
        (info / "libdemo1:amd64.list").write_text(lib_list)
        (info / "demod.list").write_text(f"/.\n{EXE}\n/etc/init.d/demod\n")
        (base / "run").mkdir()
        if systemd:
            (base / "run" / "systemd" / "system").mkdir(parents=True)
        self.processes: list[FakeProcess] = []

    def add(self, pid: int, **kw: object) -> None:
        maps = map_line(EXE, ino(self.root, EXE)) + map_line(LIB, ino(self.root, LIB) + 1)
        self.processes.append(FakeProcess(pid, kw.pop("maps", maps), root=self.root, exe=EXE, **kw))  # type: ignore[arg-type]

    def argv(self, *args: str) -> list[str]:
        proc = self.base / "proc"
        if not proc.exists():
            build(proc, self.processes)
        return [*args, "--proc", str(proc), "--root", str(self.root), "--admindir", str(self.base / "admin"),
                "--run", str(self.base / "run"), "--etc", str(self.root / "etc")]

    def roots(self) -> Roots:
        """The same host as :class:`Roots`, for calling the stages directly (its /proc built on first use)."""
        self.argv()
        return Roots(proc=self.base / "proc", root=self.root, admindir=self.base / "admin", run=self.base / "run",
                     etc=self.root / "etc", state=self.base / "state")

    def run(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
        code = main(self.argv(*args))
        return code, capsys.readouterr().out


def fixture_host(base: Path, *, stale: bool = True, flagged: bool = False) -> list[str]:
    """A fixture host (:class:`Host`): a stale service, a deferred dbus and a login session;
    returns the root options restartctl needs to look at it."""
    host = Host(base, systemd=True)
    if stale:
        host.add(100, cgroup="0::/system.slice/demod.service\n", name="demod")
        host.add(101, cgroup="0::/system.slice/dbus.service\n", name="dbus-daemon")
        host.add(102, cgroup="0::/user.slice/user-1000.slice/session-4.scope\n", uid=1000)
    else:
        fresh = map_line(EXE, ino(host.root, EXE)) + map_line(LIB, ino(host.root, LIB))
        host.add(100, cgroup="0::/system.slice/demod.service\n", maps=fresh)
    if flagged:
        (base / "run" / "reboot-required").write_text("*** System restart required ***\n")
    return [*host.argv(), "--state", str(base / "state")]
