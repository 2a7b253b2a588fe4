"""The dpkg database: merged-/usr aliases, diversions, pkg:arch names, owner lookup."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from restart.packages import DpkgDatabase, canonical, list_paths, package_matches, parse_diversions, spellings

MERGED = frozenset({"bin", "sbin", "lib", "lib64"})


@pytest.fixture
def merged_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "usr").mkdir(parents=True)
    for name in ("bin", "sbin", "lib", "lib64"):
        (root / "usr" / name).mkdir()
        (root / name).symlink_to(f"usr/{name}")
    (root / "lib32").mkdir()  # a real directory: not an alias
    return root


def write_db(admin: Path, lists: dict[str, list[str]], diversions: Sequence[tuple[str, str, str]] = (),
             ages: dict[str, int] | None = None) -> Path:
    info = admin / "info"
    info.mkdir(parents=True)
    for i, (name, files) in enumerate(lists.items()):
        path = info / f"{name}.list"
        path.write_text("".join(f + "\n" for f in ["/.", *files]))
        age = (ages or {}).get(name, i)
        os.utime(path, (1_700_000_000 + age, 1_700_000_000 + age))
    (admin / "diversions").write_text("".join(f"{a}\n{b}\n{c}\n" for a, b, c in diversions))
    return admin


def test_usr_aliases_detected(merged_root: Path, tmp_path: Path) -> None:
    db = DpkgDatabase(tmp_path / "admin", merged_root)
    assert db.aliases == MERGED


@pytest.mark.parametrize(("path", "expected"), [
    ("/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
    ("/bin/sh", "/usr/bin/sh"), ("/sbin", "/usr/sbin"), ("/usr/lib/x", "/usr/lib/x"),
    ("/lib32/x", "/lib32/x"), ("/library/x", "/library/x"), ("/etc/init.d/ssh", "/etc/init.d/ssh"),
])
def test_canonical(path: str, expected: str) -> None:
    assert canonical(path, MERGED) == expected


def test_spellings_include_the_unmerged_form() -> None:
    assert spellings("/usr/lib/x/libc.so.6", MERGED) == ("/usr/lib/x/libc.so.6", "/lib/x/libc.so.6")
    assert spellings("/usr/share/doc/x", MERGED) == ("/usr/share/doc/x",)


def test_package_name_matching() -> None:
    assert package_matches("libc6:amd64", "libc6")
    assert package_matches("libc6:amd64", "libc6:amd64")
    assert not package_matches("libc6:i386", "libc6:amd64")
    assert not package_matches("libc6-dev:amd64", "libc6")
    assert package_matches("nginx", "nginx")


def test_owner_found_under_the_lib_alias(merged_root: Path, tmp_path: Path) -> None:
    admin = write_db(tmp_path / "admin", {
        "libc6:amd64": ["/lib", "/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu/libc.so.6"],
        "libssl3:amd64": ["/usr/lib/x86_64-linux-gnu/libssl.so.3"],
        "coreutils": ["/bin/cat"],
    })
    db = DpkgDatabase(admin, merged_root)
    owners = db.owners(["/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                        "/usr/bin/cat", "/opt/unowned.so"])
    assert owners == {"/usr/lib/x86_64-linux-gnu/libc.so.6": "libc6:amd64",
                      "/usr/lib/x86_64-linux-gnu/libssl.so.3": "libssl3:amd64",
                      "/usr/bin/cat": "coreutils"}


def test_owner_is_not_fooled_by_a_prefix(merged_root: Path, tmp_path: Path) -> None:
    admin = write_db(tmp_path / "admin", {"a": ["/usr/lib/libfoo.so.1.2"], "b": ["/usr/lib/libfoo.so.1"]})
    db = DpkgDatabase(admin, merged_root)
    assert db.owners(["/usr/lib/libfoo.so.1"]) == {"/usr/lib/libfoo.so.1": "b"}


def test_files_of_canonicalises_and_matches_arch_qualified_names(merged_root: Path, tmp_path: Path) -> None:
    admin = write_db(tmp_path / "admin", {
        "libc6:amd64": ["/lib/x86_64-linux-gnu/libc.so.6"],
        "libc6:i386": ["/lib/i386-linux-gnu/libc.so.6"],
        "other": ["/usr/bin/other"],
    })
    db = DpkgDatabase(admin, merged_root)
    assert db.files_of(["libc6"]) == {"/usr/lib/x86_64-linux-gnu/libc.so.6": "libc6:amd64",
                                      "/usr/lib/i386-linux-gnu/libc.so.6": "libc6:i386"}
    assert set(db.files_of(["libc6:i386"])) == {"/usr/lib/i386-linux-gnu/libc.so.6"}
    assert db.resolve_names(["libc6", "nope"]) == {"libc6": ["libc6:amd64", "libc6:i386"], "nope": []}


def _listings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The directories os.listdir is asked for from now on."""
    listed: list[str] = []
    real = os.listdir

    def listdir(path: str) -> list[str]:
        listed.append(str(path))
        return real(path)
    monkeypatch.setattr(os, "listdir", listdir)
    return listed


def test_a_few_names_are_looked_up_without_listing_the_database(merged_root: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: the hook's transaction names a few packages; listing dpkg's info directory (3,200 files) and
    indexing it were 2.5 ms of every hook run.  ``name.list`` is its package's only instance (dpkg names a
    file ``name:arch.list`` exactly for a Multi-Arch: same instance, and only those share a name), and a
    ``name:arch`` has its own list or is not installed: neither needs the listing.  A bare name without
    ``name.list`` (a Multi-Arch: same package, or none installed), and many names, still read it."""
    admin = write_db(tmp_path / "admin", {
        "libc6:amd64": ["/lib/x86_64-linux-gnu/libc.so.6"], "libc6:i386": ["/lib/i386-linux-gnu/libc.so.6"],
        "tool": ["/usr/bin/tool"], **{f"p{i}": [f"/usr/bin/p{i}"] for i in range(40)}})
    (admin / "info" / "tool.md5sums").write_text(f"{'0' * 32}  usr/bin/tool\n")
    listed = _listings(monkeypatch)
    db = DpkgDatabase(admin, merged_root)
    assert db.resolve_names(["tool", "tool:amd64", "libc6:i386", "libc6:arm64"]) == {
        "tool": ["tool"], "tool:amd64": [], "libc6:i386": ["libc6:i386"], "libc6:arm64": []}
    assert db.files_of(["tool", "libc6:amd64"]) == {"/usr/bin/tool": "tool",
                                                    "/usr/lib/x86_64-linux-gnu/libc.so.6": "libc6:amd64"}
    assert db.md5sums(["tool"]) == {"/usr/bin/tool": "0" * 32}
    assert listed == []
    assert db.resolve_names(["../x"]) == {"../x": []}  # no file name: looked up in the listing
    assert listed == [str(admin / "info")]
    # The same answers from the listing: a bare name of a Multi-Arch: same package, and many names
    many = {f"p{i}": [f"p{i}"] for i in range(40)}
    for names, expected in ([["libc6"], {"libc6": ["libc6:amd64", "libc6:i386"]}], [list(many), many]):
        fresh = DpkgDatabase(admin, merged_root)
        listed.clear()
        assert fresh.resolve_names(names) == expected
        assert listed == [str(admin / "info")]
    fresh = DpkgDatabase(admin, merged_root)
    assert fresh.resolve_names(["tool", "libc6:i386"]) == {"tool": ["tool"], "libc6:i386": ["libc6:i386"]}
    fresh.owners(["/usr/bin/tool"])  # the listing read: later names are looked up there
    assert fresh.resolve_names(["tool", "libc6"]) == {"tool": ["tool"], "libc6": ["libc6:amd64", "libc6:i386"]}


def test_diversions(merged_root: Path, tmp_path: Path) -> None:
    # "tool" ships /usr/bin/foo; "wrapper" diverts it to /usr/bin/foo.real and ships its own /usr/bin/foo.
    admin = write_db(tmp_path / "admin", {
        "tool": ["/usr/bin/foo"], "wrapper": ["/usr/bin/foo"], "x": ["/bin/ls"]},
        diversions=[("/usr/bin/foo", "/usr/bin/foo.real", "wrapper"), ("/bin/ls", "/bin/ls.local", ":")])
    db = DpkgDatabase(admin, merged_root)
    assert db.owners(["/usr/bin/foo", "/usr/bin/foo.real"]) == {
        "/usr/bin/foo": "wrapper", "/usr/bin/foo.real": "tool"}
    assert db.files_of(["tool"]) == {"/usr/bin/foo.real": "tool"}
    assert db.files_of(["wrapper"]) == {"/usr/bin/foo": "wrapper"}
    # A local diversion: the file at the path is the admin's, no package's.
    assert db.owners(["/usr/bin/ls"]) == {}
    assert db.owners(["/usr/bin/ls.local"]) == {"/usr/bin/ls.local": "x"}


def test_parse_diversions_tolerates_truncation() -> None:
    text = b"/a\n/b\npkg\n/c\n/d"
    assert [(d.path, d.moved_to, d.by) for d in parse_diversions(text, frozenset())] == [("/a", "/b", "pkg")]


def test_owner_lookup_reads_newest_lists_first_and_stops(merged_root: Path, tmp_path: Path) -> None:
    lists = {f"pkg{i}": [f"/usr/lib/lib{i}.so"] for i in range(50)}
    admin = write_db(tmp_path / "admin", lists, ages={f"pkg{i}": i for i in range(50)})
    db = DpkgDatabase(admin, merged_root)
    assert db.owners(["/usr/lib/lib49.so"]) == {"/usr/lib/lib49.so": "pkg49"}
    assert len(db._list_cache) == 1  # the newest list answered; no other was read


def test_owners_break_ties_in_the_listing_order_and_a_list_gone_meanwhile_counts_as_oldest(
        merged_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: the lists' times are stat()ed in one pass over the listing (issue 14: 0.2-0.3 ms of every scan
    after an upgrade); the owner of a file in two lists must stay the one it always was: the newer list's,
    between equal times the one listed first, and a list that vanished after the listing (dpkg removing a
    package meanwhile) is the oldest, read as empty, and every other list keeps its time."""
    shared = "/usr/lib/x86_64-linux-gnu/libshared.so.1"
    lists = {name: [shared, f"/usr/lib/{name}.so"] for name in ("a", "b", "c", "d")}
    admin = write_db(tmp_path / "admin", lists, ages={"a": 5, "b": 5, "c": 5, "d": 1})
    first = next(n[:-5] for n in os.listdir(admin / "info") if n[:-5] in ("a", "b", "c"))
    assert DpkgDatabase(admin, merged_root).owners([shared]) == {shared: first}
    os.utime(admin / "info" / "d.list", (1_700_000_009, 1_700_000_009))
    db = DpkgDatabase(admin, merged_root)
    assert db.owners([shared]) == {shared: "d"}
    # d vanishes between the listing and the stat() of the lists: the rest keep their times and order
    db = DpkgDatabase(admin, merged_root)
    assert db.installed_packages() == ["a", "b", "c", "d"]
    (admin / "info" / "d.list").unlink()
    assert db.unpack_times() == {"a": 1_700_000_005, "b": 1_700_000_005, "c": 1_700_000_005}
    assert db.owners([shared]) == {shared: first}
    assert list(db._list_cache) == [first]  # the vanished list came last: it was not read before the answer
    assert db.owners(["/usr/lib/d.so"]) == {}


def test_non_utf8_paths_survive(merged_root: Path, tmp_path: Path) -> None:
    admin = tmp_path / "admin"
    (admin / "info").mkdir(parents=True)
    (admin / "info" / "weird.list").write_bytes(b"/usr/lib/caf\xe9.so\n")
    db = DpkgDatabase(admin, merged_root)
    path = b"/usr/lib/caf\xe9.so".decode("utf-8", "surrogateescape")
    assert db.owners([path]) == {path: "weird"}


def test_init_scripts(merged_root: Path, tmp_path: Path) -> None:
    admin = write_db(tmp_path / "admin", {"nginx": ["/etc/init.d", "/etc/init.d/nginx", "/usr/sbin/nginx"]})
    assert DpkgDatabase(admin, merged_root).init_scripts("nginx") == ["nginx"]


def test_missing_database_is_empty(tmp_path: Path) -> None:
    db = DpkgDatabase(tmp_path / "nothing", tmp_path)
    assert db.owners(["/usr/bin/x"]) == {}
    assert db.files_of(["x"]) == {}
    assert db.diversions == []


def test_many_owner_queries_read_only_the_newest_lists(merged_root: Path, tmp_path: Path) -> None:
    """Why: after an upgrade the stale files are the newest lists' (dpkg rewrites a list at unpack); a
    scan by hand must not pay for the whole database (an index of every list cost 0.2 s on a real host)."""
    lists = {f"pkg{i}": [f"/usr/lib/lib{i}.so"] for i in range(100)}
    admin = write_db(tmp_path / "admin", lists, ages={f"pkg{i}": i for i in range(100)})
    db = DpkgDatabase(admin, merged_root)
    queries = [f"/usr/lib/lib{i}.so" for i in range(70, 100)]
    assert db.owners(queries) == {q: f"pkg{q[12:-3]}" for q in queries}
    assert len(db._list_cache) == 30  # the 30 newest lists answered; no older one was read


def test_many_owner_queries_answer_as_one_at_a_time(merged_root: Path, tmp_path: Path) -> None:
    lists = {f"pkg{i}": [f"/usr/lib/lib{i}.so"] for i in range(40)}
    lists["libc6:amd64"] = ["/lib/x86_64-linux-gnu/libc.so.6"]
    admin = write_db(tmp_path / "admin", lists,
                     diversions=[("/usr/lib/lib3.so", "/usr/lib/lib3.so.real", "pkg4")])
    db = DpkgDatabase(admin, merged_root)
    queries = [f"/usr/lib/lib{i}.so" for i in range(30)] + [f"/opt/unowned{i}" for i in range(30)]
    queries += ["/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/lib3.so.real"]
    owners = db.owners(queries)
    expected = {f"/usr/lib/lib{i}.so": f"pkg{i}" for i in range(30)}
    expected["/usr/lib/lib3.so"] = "pkg4"  # diverted: the diverter's file is at the path
    expected["/usr/lib/lib3.so.real"] = "pkg3"
    expected["/usr/lib/x86_64-linux-gnu/libc.so.6"] = "libc6:amd64"
    assert owners == expected
    assert owners == {p: o for p in queries if (o := db.owners([p]).get(p))}  # same as one at a time


def test_a_path_with_a_newline_is_never_owned(merged_root: Path, tmp_path: Path) -> None:
    admin = write_db(tmp_path / "admin", {"a": ["/usr/lib/a", "/usr/lib/b"]})
    assert DpkgDatabase(admin, merged_root).owners(["/usr/lib/a\n/usr/lib/b"]) == {}


def test_unconfigured_reads_status_then_the_updates_of_a_killed_dpkg(tmp_path: Path) -> None:
    from restart.packages import unconfigured

    def stanza(name: str, arch: str, status: str) -> str:
        return f"Package: {name}\nStatus: {status}\nArchitecture: {arch}\nVersion: 1\n\n"

    (tmp_path / "updates").mkdir()
    (tmp_path / "status").write_text(stanza("demod", "amd64", "install ok installed")
                                     + stanza("lib1", "amd64", "install ok installed")
                                     + stanza("lib1", "i386", "install ok unpacked")
                                     + stanza("broken", "all", "install reinstreq half-installed")
                                     + stanza("waiting", "all", "install ok triggers-pending"))
    (tmp_path / "updates" / "0000").write_text(stanza("demod", "amd64", "install ok half-configured"))
    (tmp_path / "updates" / "tmp.i").write_text(stanza("waiting", "all", "install ok unpacked"))  # not a record
    found = unconfigured(tmp_path, ["demod", "lib1:amd64", "lib1:i386", "broken", "waiting", "gone"])
    assert found == {"demod": "half-configured", "lib1:i386": "unpacked", "broken": "reinstreq"}
    assert unconfigured(tmp_path, ["lib1"]) == {"lib1": "unpacked"}  # any architecture of it
    assert unconfigured(tmp_path / "missing", ["demod"]) == {}


def test_unconfigured_loads_no_python_apt_when_no_record_can_be_unfinished(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why (issue 14): loading python-apt and parsing the status file cost 5-7 ms before the first
    restart of every run, nearly always to find nothing.  A state word that does not end a Status
    line (a description) is no state; one that does is still found, in the last line too."""
    import sys

    from restart.packages import unconfigured

    status = ("Package: demod\nStatus: install ok installed\nArchitecture: amd64\nDescription: a demo\n"
              " a package that unpacked to an excess of 30 megs, never half-installed.\n\n")
    (tmp_path / "status").write_text(status)
    monkeypatch.setitem(sys.modules, "apt_pkg", None)  # importing it fails
    assert unconfigured(tmp_path, ["demod"]) == {}
    monkeypatch.undo()
    (tmp_path / "status").write_text(status + "Package: lib1\nArchitecture: all\nStatus: install ok unpacked")
    assert unconfigured(tmp_path, ["lib1", "demod"]) == {"lib1": "unpacked"}


def test_one_layer_for_lists_and_unpack_times_of_multi_arch_packages(merged_root: Path, tmp_path: Path) -> None:
    """Why: the interpreter stage and the reboot reasons each had their own list reader and unpack clock."""
    from restart.packages import unpack_time

    admin = write_db(tmp_path / "admin", {"libc6:amd64": ["/lib/x86_64-linux-gnu/libc.so.6"],
                                          "libc6:i386": ["/lib/i386-linux-gnu/libc.so.6"], "app": ["/usr/bin/app"]},
                     ages={"libc6:amd64": 5, "libc6:i386": 9, "app": 1})
    db = DpkgDatabase(admin, merged_root)
    assert unpack_time(admin, "libc6:amd64") == 1_700_000_005
    assert unpack_time(admin, "libc6") == 1_700_000_009  # the latest of its architectures
    assert unpack_time(admin, "gone") is None
    assert db.unpack_times(["libc6:amd64", "app"]) == {"libc6": 1_700_000_005, "app": 1_700_000_001}
    assert db.unpack_times() == {"libc6": 1_700_000_009, "app": 1_700_000_001}
    assert set(list_paths(db.package_list("libc6:i386"), db.aliases)) == {
        "/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/i386-linux-gnu/libc.so.6"}  # every architecture


def test_the_listing_of_info_is_kept_while_info_is_unchanged(merged_root: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: a scan by hand (and apply's) listed dpkg's info directory and stat()ed its 889 lists in each of
    its two processes, 3.4-4 ms each, on every run.  dpkg replaces a ``.list`` by a rename, so info's mtime
    says whether any changed; the listing is kept for it, once info has been quiet for LISTING_QUIET seconds."""
    from restart.packages import LISTING

    admin = write_db(tmp_path / "admin", {"app": ["/usr/bin/app"], "libc6:amd64": ["/lib/x86_64-linux-gnu/libc.so.6"]})
    info, run = admin / "info", tmp_path / "run"
    run.mkdir(mode=0o755)
    os.utime(info, (1_700_000_100, 1_700_000_100))
    expected = {"app": 1_700_000_000, "libc6": 1_700_000_001}
    assert DpkgDatabase(admin, merged_root, cache=run).unpack_times() == expected
    assert (run / LISTING).is_file()
    listed = _listings(monkeypatch)
    kept = DpkgDatabase(admin, merged_root, cache=run)
    assert kept.unpack_times() == expected
    assert kept.owners(["/usr/bin/app"]) == {"/usr/bin/app": "app"}
    assert listed == []
    # dpkg's way: a new list by a rename (info changes), then another package, then a removal
    (info / "app.list.new").write_text("/.\n/usr/bin/app\n/usr/bin/app2\n")
    os.utime(info / "app.list.new", (1_700_000_050, 1_700_000_050))
    os.replace(info / "app.list.new", info / "app.list")
    fresh = DpkgDatabase(admin, merged_root, cache=run)
    assert fresh.unpack_times() == {**expected, "app": 1_700_000_050}
    assert fresh.owners(["/usr/bin/app2"]) == {"/usr/bin/app2": "app"}
    assert listed == [str(info)]
    (info / "new.list").write_text("/.\n/usr/bin/new\n")
    assert "new" in DpkgDatabase(admin, merged_root, cache=run).unpack_times()
    (info / "new.list").unlink()
    assert "new" not in DpkgDatabase(admin, merged_root, cache=run).unpack_times()
    # changed within LISTING_QUIET seconds (the file system's clock ticks coarsely): not kept
    (run / LISTING).unlink()
    DpkgDatabase(admin, merged_root, cache=run).unpack_times()
    assert not (run / LISTING).exists()


@pytest.mark.parametrize("forgery", ["writable-dir", "symlink", "garbage", "types", "name", "twice", "other-info"])
def test_a_kept_listing_is_never_trusted_unless_root_alone_wrote_it_for_this_info(
        merged_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forgery: str) -> None:
    """Why: the kept listing says which files are dpkg's lists (read for the owner of a stale file) and
    when each package was unpacked (which interpreters' modules changed): a forged one would name
    another file, or hide an upgrade."""
    import json

    from restart.packages import LISTING

    admin = write_db(tmp_path / "admin", {"app": ["/usr/bin/app"]})
    info, run = admin / "info", tmp_path / "run"
    run.mkdir(mode=0o755)
    os.utime(info, (1_700_000_100, 1_700_000_100))
    DpkgDatabase(admin, merged_root, cache=run).unpack_times()
    kept = json.loads((run / LISTING).read_text())
    assert kept["lists"] == [["app"], [1_700_000_000.0]]
    forged = {"info": kept["info"], "lists": [["app"], [1_900_000_000.0]]}  # hides nothing but says "later"
    if forgery == "writable-dir":
        run.chmod(0o777)
    elif forgery == "symlink":
        (tmp_path / "elsewhere.json").write_text(json.dumps(forged))
        (run / LISTING).unlink()
        (run / LISTING).symlink_to(tmp_path / "elsewhere.json")
    elif forgery == "garbage":
        (run / LISTING).write_text("{not json")
    elif forgery == "types":
        (run / LISTING).write_text(json.dumps({"info": kept["info"], "lists": [["app"], ["1900000000"]]}))
    elif forgery == "name":
        (run / LISTING).write_text(json.dumps({"info": kept["info"], "lists": [["../../etc/shadow"], [1.0]]}))
    elif forgery == "twice":  # a name listed twice: which of its times would hold?
        (run / LISTING).write_text(json.dumps({"info": kept["info"], "lists": [["app", "app"], [1.0, 1.9e9]]}))
    else:
        (run / LISTING).write_text(json.dumps({**forged, "info": [*kept["info"][:2], kept["info"][2] + 1]}))
    if forgery not in ("symlink", "garbage", "types", "name", "twice", "other-info"):
        (run / LISTING).write_text(json.dumps(forged))
    listed = _listings(monkeypatch)
    db = DpkgDatabase(admin, merged_root, cache=run)
    assert db.unpack_times() == {"app": 1_700_000_000}
    assert db.owners(["/usr/bin/app"]) == {"/usr/bin/app": "app"}
    assert listed == [str(info)]


def test_unconfigured_finds_a_record_whose_status_line_is_spelled_otherwise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: a settled status file is told by its ``Status:`` lines in one pass (issue 14: 0.9 against 1.7 ms
    before every first restart); a record whose line that pass does not see (a field name spelled as dpkg
    also reads it, a line first in the file) must still be found, never taken as settled."""
    import sys

    from restart.packages import unconfigured

    ok = "Package: demod\nStatus: install ok installed\nArchitecture: amd64\n\n"
    for odd in ("Package: lib1\nstatus: install ok half-configured\nArchitecture: all\n\n",
                "Status: install ok unpacked\nPackage: lib1\nArchitecture: all\n\n",
                "Package: lib1\nStatus:\tinstall ok unpacked\nArchitecture: all\n\n"):
        (tmp_path / "status").write_text(ok + odd + ok.replace("demod", "other"))
        assert unconfigured(tmp_path, ["lib1"]) == {"lib1": odd.split("ok ")[1].split("\n")[0]}, odd
    # Settled, though a description's line ends in a state word: not parsed (the words alone would have it parsed).
    held = ok.replace("demod", "other").replace("install ok", "hold ok")
    (tmp_path / "status").write_text(ok + held.replace("\n\n", "\nDescription: x\n left unpacked\n\n"))
    monkeypatch.setitem(sys.modules, "apt_pkg", None)  # importing it fails
    assert unconfigured(tmp_path, ["demod", "other"]) == {}
