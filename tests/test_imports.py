"""The static import reader (restart/imports.py) on hostile scripts: no hang, no crash, no leak,
nothing executed.  Files are real (a FIFO, a device, symlinks, a 1 GB sparse file); the "root"
is a temporary directory opened the way a process's /proc/PID/root is."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from restart import imports
from restart.imports import Identity, Imports, Source, gather, node_imports, perl_imports, python_imports, ruby_imports

ROOT = Identity(0, frozenset({0}))
ALICE = Identity(4242, frozenset({4242}))


@pytest.fixture
def root(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    top = tmp_path / "root"
    (top / "srv").mkdir(parents=True)
    fd = os.open(top, os.O_PATH | os.O_DIRECTORY)
    try:
        yield top, fd
    finally:
        os.close(fd)


def test_python_imports_are_read_as_python_reads_them() -> None:
    src = b"import os, a.b as c\nfrom d.e import f\nfrom k import *\nfrom . import local\nimport importlib\n" \
          b"importlib.import_module('g')\n__import__('h')\ndef x():\n    import i\n"
    assert python_imports(src) == Imports(frozenset({"os", "a.b", "d.e", "d.e.f", "k", "importlib", "g", "h", "i"}))


@pytest.mark.parametrize("src", [
    b"exec('import ' + 'rctl_mod')\n",
    b"eval(compile('import x', 'f', 'exec'))\n",
    b"import importlib\nimportlib.import_module(name)\n",
    b"__import__(''.join(['o', 's']))\n",
])
def test_imports_built_at_run_time_are_a_problem(src: bytes) -> None:
    found = python_imports(src)
    assert found.problem is not None and "run time" in found.problem


def test_non_utf8_and_unparseable_python_is_a_problem_never_a_crash() -> None:
    assert python_imports(b"import os\n\xff\xfe = 1\n").problem is not None
    assert python_imports(b"def (:\n").problem is not None
    assert python_imports(b"\x00import os").problem is not None


def test_deep_nesting_is_bounded_by_the_parser() -> None:
    started = time.monotonic()
    for src in (b"x = " + b"(" * 100_000 + b")" * 100_000 + b"\n",
                b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n",
                b"".join(b" " * i + b"if 1:\n" for i in range(1000)) + b" " * 1000 + b"pass\n",
                b"x = " + b"-" * 200_000 + b"1\n"):
        assert python_imports(src).problem is not None
    assert time.monotonic() - started < 10


def test_perl_ruby_node_imports() -> None:
    assert perl_imports(b"use strict;\nuse warnings;\nuse 5.010;\nuse Foo::Bar qw(x);\nrequire Baz;\n"
                        b"use parent -norequire, 'Local';\nuse base qw(One Two);\n# use Commented;\n"
                        b"=pod\n\nuse InPod;\n\n=cut\n__END__\nuse AfterEnd;\n") == Imports(frozenset(
                            {"Foo::Bar", "Baz", "Local", "One", "Two"}))
    assert perl_imports(b"my $m = 'X'; require $m;\n").problem is not None
    assert perl_imports(b"eval \"use X\";\n").problem is not None
    assert ruby_imports(b"require 'json'\nrequire_relative 'lib/x'\nload \"y.rb\"\n# require 'no'\n"
                        b"__END__\nrequire 'data'\n") == Imports(frozenset({"json", "./lib/x", "y.rb"}))
    assert ruby_imports(b"require name\n").problem is not None
    assert node_imports(b'const a = require("a");\nimport b from "@s/b";\nimport "c";\n'
                        b'const d = await import("./d.js");\n// require("no")\n') == Imports(
                            frozenset({"a", "@s/b", "c", "./d.js"}))
    assert node_imports(b"require(name)\n").problem is not None
    assert node_imports(b"require(`x${y}`)\n").problem is not None


def test_the_reader_refuses_what_is_not_a_plain_readable_file(root: tuple[Path, int], tmp_path: Path) -> None:
    top, fd = root
    (top / "srv" / "ok.py").write_bytes(b"import os\n")
    assert imports.read_in_root(fd, "/srv/ok.py", ROOT) == b"import os\n"
    os.mkfifo(top / "srv" / "fifo.py")
    os.mknod(top / "srv" / "null.py", 0o666 | 0o020000, os.makedev(1, 3))  # a character device: /dev/null's
    (top / "srv" / "out.py").symlink_to(tmp_path / "secret")                # out of the root
    (tmp_path / "secret").write_text("import secret\n")
    (top / "srv" / "in.py").symlink_to("ok.py")                             # even inside: refused
    with open(top / "srv" / "big.py", "wb") as f:                            # 1 GB, sparse
        f.truncate(1 << 30)
    (top / "srv" / "private.py").write_text("import private\n")
    os.chmod(top / "srv" / "private.py", 0o600)
    (top / "srv" / "closed").mkdir(mode=0o700)
    (top / "srv" / "closed" / "x.py").write_text("import x\n")
    os.chmod(top / "srv" / "closed" / "x.py", 0o644)
    started = time.monotonic()
    for path, who in [("/srv/fifo.py", ROOT), ("/srv/null.py", ROOT), ("/srv/out.py", ROOT), ("/srv/in.py", ROOT),
                      ("/srv/big.py", ROOT), ("/srv/private.py", ALICE), ("/srv/closed/x.py", ALICE),
                      ("/srv/../../secret", ROOT), ("srv/ok.py", ROOT), ("/srv/missing.py", ROOT)]:
        assert isinstance(imports.read_in_root(fd, path, who), str), path
    assert time.monotonic() - started < 5  # no read blocked on the FIFO, none read the 1 GB
    assert imports.read_in_root(fd, "/srv/private.py", Identity(4242, frozenset({0}))) is not None
    os.chown(top / "srv" / "private.py", 4242, 4242)
    assert imports.read_in_root(fd, "/srv/private.py", ALICE) == b"import private\n"


def test_local_modules_beside_the_script_are_followed_and_bounded(root: tuple[Path, int]) -> None:
    top, fd = root
    (top / "srv" / "helper.py").write_bytes(b"import json\nimport helper2\n")
    (top / "srv" / "helper2.py").write_bytes(b"import helper\nimport xml.dom\n")  # a cycle
    read = imports.Reader(fd, ROOT)
    found = gather("python", [Source(b"import helper\nimport os\n", "/srv")], read)
    assert found == Imports(frozenset({"os", "json", "xml.dom"}))
    for i in range(imports.MAX_FILES + 2):
        (top / "srv" / f"m{i}.py").write_bytes(f"import m{i + 1}\n".encode())
    assert gather("python", [Source(b"import m0\n", "/srv")], read).problem is not None
    (top / "srv" / "dyn.py").write_bytes(b"exec(open('x').read())\n")
    assert gather("python", [Source(b"import dyn\n", "/srv")], read).problem is not None  # seen through


def test_nothing_is_ever_executed(root: tuple[Path, int], tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    payloads = {
        "python": f"import os\nos.system('touch {canary}')\nexec(\"open('{canary}', 'w')\")\n",
        "perl": f"BEGIN {{ system('touch {canary}') }}\nuse POSIX;\n",
        "ruby": f"`touch {canary}`\nrequire 'json'\n",
        "node": f"require('child_process').execSync('touch {canary}')\n",
    }
    for family, text in payloads.items():
        gather(family, [Source(text.encode(), None)], imports.Reader(root[1], ROOT))
    assert not canary.exists()
