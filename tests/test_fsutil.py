"""restart/fsutil.py: the one trusted-directory check and the one atomic writer, on real files.

Every writer and every reader of root's files goes through these, so each promise is pinned here:
a symlink is never followed, a directory or file others could write is refused, a failure or a
crash mid-write leaves the old file whole, the data is fsynced before the rename and the directory
after it.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from restart import fsutil

REPO = Path(__file__).resolve().parent.parent


def test_a_directory_others_could_write_is_not_trusted(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir(mode=0o755)
    assert fsutil.trusted_dir(d)
    os.close(fsutil.open_trusted_dir(d))
    for mode in (0o775, 0o757, 0o1777):
        os.chmod(d, mode)
        assert not fsutil.trusted_dir(d), oct(mode)
        with pytest.raises(PermissionError):
            fsutil.open_trusted_dir(d)
        with pytest.raises(PermissionError):
            fsutil.write_atomic(d / "f", b"x")
    os.chmod(d, 0o755)
    os.chown(d, 65534, 65534)  # another account's, even if only it can write
    assert not fsutil.trusted_dir(d)
    with pytest.raises(PermissionError):
        fsutil.write_atomic(d / "f", b"x")
    assert list(d.iterdir()) == []


def test_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    (tmp_path / "link").symlink_to(real)
    assert not fsutil.trusted_dir(tmp_path / "link")
    with pytest.raises(OSError):
        fsutil.write_atomic(tmp_path / "link" / "f", b"x")
    assert list(real.iterdir()) == []


def test_a_symlink_at_the_target_is_replaced_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep\n")
    d = tmp_path / "d"
    d.mkdir(mode=0o755)
    (d / "f").symlink_to(victim)
    fsutil.write_atomic(d / "f", b"new\n")
    assert victim.read_bytes() == b"keep\n"
    assert not (d / "f").is_symlink() and (d / "f").read_bytes() == b"new\n"
    dfd = fsutil.open_trusted_dir(d)
    try:
        (d / "g").symlink_to(victim)
        assert fsutil.write_at(dfd, "g", b"new\n", replace=False) is False  # something is there: untouched
        assert (d / "g").is_symlink() and victim.read_bytes() == b"keep\n"
        assert fsutil.write_at(dfd, "h", b"flag\n", replace=False) is True
    finally:
        os.close(dfd)
    assert (d / "h").read_bytes() == b"flag\n"
    assert sorted(p.name for p in d.iterdir()) == ["f", "g", "h"]


def test_the_mode_is_what_was_asked_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        fsutil.write_atomic(tmp_path / "f", b"x")
        fsutil.write_atomic(tmp_path / "g", b"x", mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "g").st_mode) == 0o600


def test_a_failure_mid_write_leaves_the_old_file_and_no_temporary(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old\n")
    real_write = os.write
    calls = []

    def short_then_full_disk(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:3]))  # a short write: the rest must follow
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full_disk)
    with pytest.raises(OSError, match="No space"):
        fsutil.write_atomic(target, b"new contents\n")
    assert calls == [13, 10]
    assert target.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "Input/output error")))
    monkeypatch.setattr(os, "write", real_write)
    with pytest.raises(OSError, match="Input/output"):
        fsutil.write_atomic(target, b"new contents\n")
    assert target.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_a_crash_mid_write_leaves_the_old_file_whole(tmp_path: Path) -> None:
    """A real process killed (SIGKILL) after writing part of the new file: the target is the old one."""
    target = tmp_path / "f"
    target.write_bytes(b"old\n")
    child = f"""
import os, signal, sys
sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from restart import fsutil
real = os.write
def write(fd, data):
    real(fd, bytes(data[:4]))
    os.kill(os.getpid(), signal.SIGKILL)
fsutil.os.write = write
fsutil.write_atomic(Path({str(target)!r}), b"new contents\\n" * 1000)
"""
    r = subprocess.run([sys.executable, "-c", child], timeout=60, check=False)
    assert r.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old\n"
    left = [p.name for p in tmp_path.iterdir() if p.name != "f"]
    assert len(left) == 1 and left[0].startswith(".f.") and left[0].endswith(".tmp")  # a name readers ignore


def test_the_file_is_fsynced_before_the_rename_and_the_directory_after(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(*args: object, **kwargs: object) -> None:
        events.append("rename")
        real_replace(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    fsutil.write_atomic(tmp_path / "f", b"x")
    assert events == ["fsync-file", "rename", "fsync-dir"]


@pytest.mark.timeout(20)  # a FIFO opened blocking would hang here: bounded, it fails instead
def test_read_trusted_refuses_what_others_could_have_written(tmp_path: Path) -> None:
    d = tmp_path / "etc"
    d.mkdir(mode=0o755)
    f = d / "conf"
    f.write_bytes(b"data\n")
    os.chmod(f, 0o644)
    assert fsutil.read_trusted(f, 1 << 20) == b"data\n"
    assert fsutil.read_trusted(f, 2) == b"da"
    (d / "link").symlink_to(f)
    with pytest.raises(fsutil.Untrusted, match="symlink"):
        fsutil.read_trusted(d / "link", 100)
    os.mkfifo(d / "fifo")
    with pytest.raises(fsutil.Untrusted, match="not a regular file"):  # and never blocks on it
        fsutil.read_trusted(d / "fifo", 100)
    os.chmod(f, 0o664)
    with pytest.raises(fsutil.Untrusted, match="writable only by root"):
        fsutil.read_trusted(f, 100)
    os.chmod(f, 0o644)
    os.chmod(d, 0o777)
    with pytest.raises(fsutil.Untrusted, match="writable only by root"):
        fsutil.read_trusted(f, 100)


def test_no_other_module_carries_its_own_copy_of_these_rules() -> None:
    """Why: five trust checks and four writers of differing rigour were once spread over the package;
    a new copy would drift again.  Only fsutil may judge a mode or fsync."""
    markers = ("0o022", "S_IWGRP", "S_IWOTH", "os.fsync", "O_EXCL")
    found = [f"{p.name}: {m}" for p in sorted((REPO / "restart").glob("*.py")) if p.name != "fsutil.py"
             for m in markers if m in p.read_text(encoding="utf-8")]
    assert found == []
