"""Precision (issue 12) over fixture trees: the pure parts of what is and is not a finding."""

from __future__ import annotations

import os
from pathlib import Path

from restart import transaction
from restart.packages import DpkgDatabase

A = "0123456789abcdef0123456789abcdef"
B = "fedcba9876543210fedcba9876543210"


def _tree(tmp_path: Path) -> tuple[Path, DpkgDatabase]:
    admin = tmp_path / "dpkg"
    (admin / "info").mkdir(parents=True)
    run = tmp_path / "run" / "restartctl"
    (run / "lists").mkdir(parents=True)
    for d in (run, run / "lists"):
        os.chmod(d, 0o755)
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    os.symlink("usr/lib", tmp_path / "lib")
    return run, DpkgDatabase(admin, tmp_path)


def test_only_files_with_the_same_checksum_before_and_after_are_unchanged(tmp_path: Path) -> None:
    run, db = _tree(tmp_path)
    info, lists = db.admindir / "info", run / "lists"
    (info / "libx1:amd64.list").write_text("/.\n/lib/libx.so.1\n/usr/lib/liby.so.1\n")
    (info / "libx1:amd64.md5sums").write_text(f"{A}  lib/libx.so.1\n{A}  usr/lib/liby.so.1\n")
    (lists / "libx1:amd64.md5sums").write_text(f"{A}  lib/libx.so.1\n{B}  usr/lib/liby.so.1\n")
    # the merged-/usr spelling of the database is the one maps show
    assert transaction.unchanged(run, db, ["libx1:amd64"]) == {"/usr/lib/libx.so.1"}
    assert transaction.unchanged(run, db, None) == {"/usr/lib/libx.so.1"}
    assert transaction.unchanged(run, db, ["other"]) == frozenset()


def test_unknown_old_content_is_never_unchanged(tmp_path: Path) -> None:
    """An empty snapshot (a plain dpkg run changed the package first), a missing one, a
    symlinked or others-writable directory: nothing is unchanged."""
    run, db = _tree(tmp_path)
    info, lists = db.admindir / "info", run / "lists"
    (info / "liba.list").write_text("/usr/lib/liba.so\n")
    (info / "liba.md5sums").write_text(f"{A}  usr/lib/liba.so\n")
    (lists / "liba.md5sums").write_text("")
    assert transaction.unchanged(run, db, ["liba"]) == frozenset()
    (lists / "liba.md5sums").write_text(f"{A}  usr/lib/liba.so\n")
    assert transaction.unchanged(run, db, ["liba"]) == {"/usr/lib/liba.so"}
    os.chmod(lists, 0o777)
    assert transaction.unchanged(run, db, ["liba"]) == frozenset()

