"""Build fake /proc trees (and the root filesystems they point into) for hostile inputs.

A real kernel will not produce forged cgroups, ten thousand processes or a PID that
vanishes between two reads on demand; these fixtures do.  They complement the
real-process tests, never replace them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FakeProcess:
    pid: int
    maps: bytes = b""
    name: str = "daemon"
    ppid: int = 1
    uid: int = 0
    nspid: tuple[int, ...] = ()
    cgroup: str = "0::/system.slice/demo.service\n"
    exe: str | None = "/usr/sbin/daemon"
    mnt: str = "mnt:[4026531841]"
    pidns: str = "pid:[4026531836]"
    root: Path | None = None  # where "root" points: a fixture root filesystem
    fds: dict[int, Path | str] = field(default_factory=dict)
    missing: tuple[str, ...] = ()  # files that vanish as if the process exited mid-scan


def map_line(path: str | bytes, inode: int, perms: str = "r-xp", dev: str = "fe:01",
             start: int = 0x7F0000000000) -> bytes:
    raw = path if isinstance(path, bytes) else os.fsencode(path)
    return b"%x-%x %s 00000000 %s %d                     %s\n" % (
        start, start + 0x1000, perms.encode(), dev.encode(), inode, raw)


def build(proc: Path, processes: list[FakeProcess], *, self_mnt: str = "mnt:[1]") -> Path:
    """Write a /proc tree; ``self`` is a directory standing for the scanner itself."""
    proc.mkdir(parents=True, exist_ok=True)
    me = proc / "self"
    (me / "ns").mkdir(parents=True, exist_ok=True)
    (me / "ns" / "mnt").symlink_to(self_mnt)
    (me / "root").symlink_to("/")
    (me / "status").write_bytes(b"Name:\tpytest\nNSpid:\t1\n")
    for p in processes:
        d = proc / str(p.pid)
        (d / "ns").mkdir(parents=True)
        (d / "fd").mkdir()
        files = {
            "maps": p.maps,
            "status": (f"Name:\t{p.name}\nPPid:\t{p.ppid}\nUid:\t{p.uid}\t{p.uid}\t{p.uid}\t{p.uid}\n"
                       f"NSpid:\t{chr(9).join(str(n) for n in (p.nspid or (p.pid,)))}\n").encode(),
            "cgroup": p.cgroup.encode(),
        }
        for name, data in files.items():
            if name not in p.missing:
                (d / name).write_bytes(data)
        (d / "ns" / "mnt").symlink_to(p.mnt)
        (d / "ns" / "pid").symlink_to(p.pidns)
        if "root" not in p.missing:
            (d / "root").symlink_to(p.root or "/")
        if p.exe is not None:
            (d / "exe").symlink_to(p.exe)
        for fd, target in p.fds.items():
            (d / "fd" / str(fd)).symlink_to(target)
    return proc


def rootfs(base: Path, files: dict[str, bytes]) -> Path:
    """A root filesystem with the given files; returns it.  Inodes are real, so tests can
    write maps lines that match them (fresh) or not (replaced)."""
    for path, data in files.items():
        target = base / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return base


def ino(root: Path, path: str) -> int:
    return os.stat(root / path.lstrip("/")).st_ino
