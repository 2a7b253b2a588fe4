"""Which files restartctl trusts and how it writes its own: the one place for both rules.

restartctl runs as root and reads configuration, state and flags from directories that a
package, an admin or a user's mistake could leave writable by others.  A file or directory is
*trusted* when it is root's (or, for tests run as a user, our own) and writable by nobody else:
anyone else who could write it could choose what root reads or where root writes.

Files are *written* whole or not at all, and durably: a temporary file in the same directory
(created exclusively, never through a symlink), written, fsynced, renamed over the target,
then the directory fsynced.  A crash leaves the old file or the new one, never part of one,
and a failure leaves no temporary file behind.  Everything happens relative to the directory
opened once without following a symlink, so nothing can be swapped in between check and use.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from restart import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any


def untrusted(st: os.stat_result) -> str | None:
    """Why a file or directory with this status could have been written by someone other than root
    (its owner and mode, for the message); None when it could not."""
    if st.st_uid in (0, os.geteuid()) and not st.st_mode & 0o022:
        return None
    return f"owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}"


class Untrusted(ValueError):
    """A file restartctl was to read could have been written by someone other than root."""


def read_trusted(path: Path, limit: int) -> bytes:
    """The first ``limit`` bytes of a regular file, refused (:class:`Untrusted`, saying why) if
    anyone but root could have written it or its directory.

    Opened without following a symlink and without blocking (a FIFO), and judged by the
    descriptor actually opened, so nothing can be swapped in between the check and the read.
    """
    why = untrusted(os.stat(path.parent))
    if why is not None:
        raise Untrusted(f"{path.parent}: must be owned by root and writable only by root ({why})")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if os.path.islink(path):
            raise Untrusted(f"{path}: is a symlink; it must be a regular file") from e
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Untrusted(f"{path}: not a regular file")
        why = untrusted(st)
        if why is not None:
            raise Untrusted(f"{path}: must be owned by root and writable only by root ({why})")
        return f.read(limit)


def trusted_dir(path: Path) -> bool:
    """Whether ``path`` is a directory, not a symlink, that only root can write to."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and untrusted(st) is None


def open_trusted_dir(path: Path) -> int:
    """The directory, opened once without following a symlink; PermissionError unless only root can write to it."""
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    if untrusted(os.fstat(dfd)) is not None:
        os.close(dfd)
        raise PermissionError(errno.EPERM, "not a directory only root can write to", str(path))
    return dfd


def write_at(dfd: int, name: str, data: bytes, *, replace: bool = True, mode: int = 0o644) -> bool:
    """Put ``data`` at ``name`` in the trusted directory ``dfd``, whole and durably (mode ``mode``
    whatever the umask).

    ``replace=False`` creates the file only if nothing is there yet (a hard link of the complete
    temporary file, so it appears whole too) and returns False when something was.  A symlink at
    ``name`` is replaced, never followed.
    """
    tmp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
    placed = False
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            placed = True
        else:
            try:
                os.link(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
            except FileExistsError:
                return False
        os.fsync(dfd)
        return True
    finally:
        if not placed:
            os.unlink(tmp, dir_fd=dfd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` whole and durably (see :func:`write_at`); its directory must be trusted."""
    dfd = open_trusted_dir(path.parent)
    try:
        write_at(dfd, path.name, data, mode=mode)
    finally:
        os.close(dfd)


def read_kept(path: Path, limit: int) -> Any:
    """What a run kept at ``path`` for the next (JSON), read by :func:`read_trusted` to ``limit`` bytes;
    None when it is missing, untrusted, cut short or not JSON: the caller works it out afresh."""
    import json  # (imported by every run that gets here; not by what imports this module only to write)

    try:
        return json.loads(read_trusted(path, limit))
    except (OSError, ValueError, RecursionError):
        return None


def keep(path: Path, doc: object, *, limit: int | None = None, mode: int = 0o644) -> None:
    """Keep ``doc`` (JSON) at ``path`` for the next run, by :func:`write_atomic`, when it takes at most
    ``limit`` bytes; nothing when it cannot be (no trusted directory, data JSON cannot carry)."""
    import json

    try:
        data = json.dumps(doc).encode()
        if limit is None or len(data) <= limit:
            write_atomic(path, data, mode=mode)
    except (OSError, TypeError, ValueError, RecursionError):
        pass
