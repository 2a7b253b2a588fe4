"""Seeing a file as a process sees it: one view per mount namespace, each with a stat cache.

The kernel writes the paths in ``maps`` and ``fd`` relative to the *reader's* root.  So for a
process in our own mount namespace, chrooted or not, a plain stat() from here looks at the right
file; for one in another mount namespace (a container, a service with PrivateTmp=) we look
through ``/proc/PID/root``.  A scan sees thousands of processes in a handful of namespaces, so
what it learns about a path is kept per namespace, within a :class:`Room` bounded whatever users map.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from restart import procfs

MISSING = (errno.ENOENT, errno.ENOTDIR)
# What a scan remembers (lines known fresh, decoded paths, stat results) is bounded whatever users
# map: entries up to this long, up to this many bytes in all; past that, work is redone, not kept.
_KEEP_MAX = 512
_KEEP_BYTES = 32 << 20

# A stat result we keep: (inode, link count, device), or the errno when stat failed.
Stat = tuple[int, int, int] | int


class Room:
    """What a scan may still remember, shared by all its caches."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = _KEEP_BYTES

    def keeps(self, key: bytes | str) -> bool:
        """Whether there is room to remember something this long (and take that room)."""
        if len(key) > _KEEP_MAX or self.left < len(key):
            return False
        self.left -= len(key) + 64
        return True


class View:
    """How the processes of one mount namespace see files."""

    __slots__ = ("cache", "direct", "room", "root_device", "users_mounts")

    def __init__(self, room: Room, direct: bool, users_mounts: bool = False) -> None:
        self.room = room
        self.direct = direct
        self.cache: dict[str, Stat] = {}
        # Owned by another user namespace than ours: its mounts may be an unprivileged user's own
        # (``unshare -Urm``), so a file found there must also lie where a package's file can.
        self.users_mounts = users_mounts
        self.root_device: int | None = None  # the device of the namespace's root filesystem

    def stat(self, dfd: int, path: str) -> Stat:
        """Stat ``path`` as the process behind ``dfd`` sees it (inside its root), cached."""
        hit = self.cache.get(path)
        if hit is not None:
            return hit
        direct = self.direct
        try:
            st = os.stat(path) if direct else os.stat("root" + path, dir_fd=dfd)
            result: Stat = (st.st_ino, st.st_nlink, st.st_dev)
        except OSError as e:
            if e.errno in MISSING and not direct:
                # A missing file, or a process that just died?  Only the former may be cached.
                try:
                    os.stat("root", dir_fd=dfd)
                except OSError as gone:
                    raise procfs.ProcessGone() from gone
            result = e.errno or errno.EIO
        if self.room.keeps(path):
            self.cache[path] = result
        return result


class Views:
    """Our own identity (PID, namespaces, PID-namespace depth) and a :class:`View` per mount namespace."""

    def __init__(self, proc: Path) -> None:
        self.room = Room()
        try:
            self.pid = int(os.readlink(proc / "self"))
        except (OSError, ValueError):
            self.pid = -1
        self.mnt, self.user = _link(proc / "self" / "ns" / "mnt"), _link(proc / "self" / "ns" / "user")
        try:
            self.depth = procfs.parse_status((proc / "self" / "status").read_bytes())[3]
        except (OSError, ValueError):
            self.depth = 1
        self.ours = View(self.room, direct=True)
        self._by_mnt = {self.mnt: self.ours}

    def of(self, dfd: int) -> View:
        """The view of the process behind ``dfd`` (one ``ns/mnt`` link read)."""
        mnt = procfs.readlink(dfd, "ns/mnt")
        view = self._by_mnt.get(mnt)
        if view is None:
            try:
                users = os.readlink("ns/user", dir_fd=dfd) != self.user
            except OSError:
                users = False
            view = self._by_mnt[mnt] = View(self.room, direct=mnt == self.mnt,
                                            users_mounts=users and mnt != self.mnt)
        return view

    def unchanged_here(self, path: str, inode: int, device: int) -> bool:
        """The fast path: the very inode (device and number) still sits at the path we see.

        Then it is fresh for the process too, whatever its mount namespace, and we need
        not even look up which namespace that is.  Anything else (including stacked
        filesystems whose maps device differs from stat's) takes the careful path.
        """
        now = self.ours.stat(-1, path)
        return isinstance(now, tuple) and now[0] == inode and now[2] == device

    def reachable(self, dfd: int, view: View, path: str, device: int) -> bool:
        """Seen through a mount namespace of another user namespace, whether a mapped file can be a
        package's file at all.

        It can when it lies on that namespace's root filesystem (a rootless container's own) or on
        the filesystem that holds its directory here.  A file on some other filesystem mounted at
        that place inside the namespace (a user's own tmpfs over a library directory, in
        ``unshare -Urm``) is not the package's, replaced or not.
        """
        if view.root_device is None:
            try:
                view.root_device = os.stat("root", dir_fd=dfd).st_dev
            except OSError as e:
                raise procfs.ProcessGone() from e
        if device == view.root_device:
            return True
        here = self.ours.stat(-1, os.path.dirname(path))
        return isinstance(here, tuple) and here[2] == device


def _link(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""
