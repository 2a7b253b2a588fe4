"""The copies apt's hook keeps in ``lists/``: one reader of their names for the lists and the checksums."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from restart import transaction
from tests.test_precision_unit import A, _tree


@pytest.mark.parametrize(("name", "kind", "expected"), [
    ("liba1:amd64.list", "list", ("liba1:amd64", False)),
    ("liba1:amd64.list.old.1700000000.99", "list", ("liba1:amd64", True)),
    ("liba.md5sums", "md5sums", ("liba", False)),
    ("liba.md5sums.old.1700000100.7", "md5sums", ("liba", True)),
    ("lib.list.md5sums", "md5sums", ("lib.list", False)),  # the last ".KIND" ends the name
    ("liba.md5sums.new", "md5sums", None),  # the hook's copy being written
    ("liba.md5sums.old.garbage", "md5sums", None),  # not what mv --backup --suffix=.old.<epoch>.<pid> makes
    ("liba.md5sums.old.1700000100", "md5sums", None),
    ("liba.md5sums.old.1700000100.7.x", "md5sums", None),
    ("liba.md5sums", "list", None),
    (".list", "list", None),
])
def test_a_kept_copy_is_named_by_one_reader(name: str, kind: str, expected: tuple[str, bool] | None) -> None:
    assert transaction.kept_copy(name, kind) == expected


def test_only_what_the_hook_set_aside_counts_as_an_earlier_copy(tmp_path: Path) -> None:
    """A name that is not ``.old.<epoch>.<pid>`` is no earlier transaction's checksums (``unchanged``
    read any ``.old.`` suffix as one, ``old_files`` only the hook's): it extends no "unchanged since"."""
    run, db = _tree(tmp_path)
    lists = run / "lists"

    def copy(path: Path, when: int) -> None:
        path.write_text(f"{A}  usr/lib/liba.so\n")  # the same content as this version's, in every copy
        os.utime(path, (when, when))

    (db.admindir / "info" / "liba.list").write_text("/usr/lib/liba.so\n")
    copy(db.admindir / "info" / "liba.md5sums", 1_700_000_300)
    copy(lists / "liba.md5sums", 1_700_000_200)
    copy(lists / "liba.md5sums.old.planted", 1_600_000_000)
    assert transaction.unchanged(run, db, ["liba"]) == {"/usr/lib/liba.so": 1_700_000_200}
    copy(lists / "liba.md5sums.old.1700000100.7", 1_700_000_000)
    assert transaction.unchanged(run, db, ["liba"]) == {"/usr/lib/liba.so": 1_700_000_000}
    # old_files: this transaction's list answers; the ones set aside are removed, the planted name left alone
    (lists / "liba.list").write_text("/usr/lib/liba.so.0\n")
    (lists / "liba.list.old.1700000100.7").write_text("/usr/lib/liba.so.old\n")
    (lists / "liba.list.old.planted").write_text("/usr/lib/liba.so.planted\n")
    assert transaction.old_files(run, frozenset({"liba"}), frozenset()) == {"/usr/lib/liba.so.0": "liba"}
    assert sorted(p.name for p in lists.glob("liba.list*")) == ["liba.list", "liba.list.old.planted"]
