"""The package's layout is the pipeline: a module imports only from modules before it here.

Why: data flows one way (transaction -> processes -> units -> policy -> plan -> execute -> report);
a stage that imported a later one would tangle the pipeline and let I/O leak into the pure stages.
The README's layout section lists the same modules in the same order (checked below), so a new
module is placed deliberately, in both.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ORDER = (
    # primitives: no stage of their own, import nothing of the package but each other
    "roots", "text", "fsutil", "procfs", "runner",
    # 1. what changed
    "packages", "transaction",
    # 2. which processes use it (2b: interpreted programs)
    "views", "processes", "imports", "grammars", "observation", "interpreters",
    # 3. what manages them, and stages 1-3 composed
    "units", "scan",
    # 4.-6. what to do, and doing it (verify: whether a restart worked, which execute asks after each)
    "policy", "plan", "unitstate", "notify", "verify", "execute",
    # 7. reporting, reboot reasons, what is remembered
    "kernel", "microcode", "reboot", "report", "admintext", "formats", "state",
    # stages 1-7 composed for a run that acts (runs: the lock and the transaction's own processes;
    # ask: mode ask's question), and the entry points
    "runs", "ask", "apply", "hook", "cli", "__main__",
)
# What the package itself defines (restart/__init__.py), not modules of it
PACKAGE_NAMES = ("__version__", "Importing", "TYPE_CHECKING", "NamedTuple", "Generic", "TypeVar")


def imported(path: Path) -> set[str]:
    """The package modules a module imports (``from restart import x``, ``from restart.x import y``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "restart":
            found |= {a.name for a in node.names if a.name not in PACKAGE_NAMES}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("restart."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("restart.")}
    return found


def test_every_module_has_its_place() -> None:
    modules = {p.stem for p in (REPO / "restart").glob("*.py")} - {"__init__"}
    assert sorted(modules - set(ORDER)) == [], "place the new module in ORDER (and in the README's layout)"
    assert sorted(set(ORDER) - modules) == []


def test_a_module_imports_only_from_earlier_ones() -> None:
    later = [f"{name} imports {dep}" for i, name in enumerate(ORDER)
             for dep in sorted(imported(REPO / "restart" / f"{name}.py")) if dep not in ORDER[:i]]
    assert later == []


def test_the_readme_lists_the_modules_in_this_order() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    listed = [m for m in re.findall(r"^  ([a-z_]+)\.py", text, re.M)]
    assert listed == [m for m in ORDER if m != "__main__"]


def test_test_modules_share_helpers_through_tests_support_only() -> None:
    """A test module imported by another runs its tests' module-level code twice and ties the two
    together; what tests share lives in tests/support."""
    offenders = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("tests.test_")]
    assert not offenders, offenders


def test_typing_is_imported_only_for_the_type_checker() -> None:
    """Why (issue 14): typing's import and its NamedTuple classes (each field's string annotation compiled
    into a ForwardRef) were ~5 ms of every run, ``apply``'s before its first restart and the apt hook's.
    Every module names typing under ``if TYPE_CHECKING:`` only (the package's NamedTuple, Generic and
    TypeVar stand in at run time), and no module of the standard library a run imports brings it back.
    Nor ``glob`` and ``bisect`` (0.4 ms), which only a look at interpreted programs (and a bare package
    name's unpack time) needs: imported where they are used, unless the standard library a run imports
    brings them itself (Python 3.13's pathlib imports glob)."""
    outside = []
    for path in sorted((REPO / "restart").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        checked = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                   for statement in block.body for n in ast.walk(statement)}
        outside += [f"{path.name}:{node.lineno}" for node in ast.walk(tree) if id(node) not in checked and (
            (isinstance(node, ast.ImportFrom) and node.module == "typing")
            or (isinstance(node, ast.Import) and any(a.name == "typing" for a in node.names)))]
    assert outside == []
    modules = sorted(f"restart.{p.stem}" for p in (REPO / "restart").glob("*.py") if p.stem != "__main__")
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r})\nimport contextlib, io, {', '.join(modules)}\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    restart.cli.main(['--version'])\n"
            "print(' '.join(sorted(m for m in sys.modules if not m.startswith('restart'))))")
    out = subprocess.run(["/usr/bin/python3", "-IS", "-c", code], capture_output=True, text=True, check=False)
    imported = set(out.stdout.split())
    assert "os" in imported and "typing" not in imported, out.stdout + out.stderr
    lazy = {"glob", "bisect"}
    stdlib = sorted(m for m in imported if "." not in m and not m.startswith("_") and m not in lazy)  # (parents too)
    brought = subprocess.run(["/usr/bin/python3", "-IS", "-c", f"import sys, {', '.join(stdlib)}\n"
                              "print(' '.join(sorted({'glob', 'bisect', 'typing'} & set(sys.modules))))"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert "typing" not in brought
    assert sorted(imported & lazy - set(brought)) == []


def test_the_run_time_named_tuples_are_typing_s() -> None:
    """The package's NamedTuple (at run time) makes the class typing's does: the same fields, defaults,
    docstring, methods and class attributes, the same ``repr``, equality and ``_replace`` (only not typing's
    ``__orig_bases__`` and its annotations as ForwardRefs, which nothing reads)."""
    import inspect
    import typing

    import restart

    def point(base: Any) -> Any:
        class Point(base):  # type: ignore[misc]
            """A point."""

            x: int
            y: list[str] | None = None
            z: int = 3
            ORIGIN = "o"

            def moved(self) -> int:
                return self.x + self.z

            @property
            def far(self) -> bool:
                return self.x > 10

            @classmethod
            def made(cls, x: int) -> Any:
                return cls(x)
        return Point

    typings, ours = point(typing.NamedTuple), point(restart.NamedTuple)
    for cls in (typings, ours):
        p = cls.made(12)._replace(y=["a"])
        assert (repr(p), p.moved(), p.far, p == (12, ["a"], 3), cls.ORIGIN) == \
            ("Point(x=12, y=['a'], z=3)", 15, True, True, "o")
    same = ("_fields", "_field_defaults", "__doc__", "__qualname__", "__module__", "__bases__")
    assert [getattr(ours, a) for a in same] == [getattr(typings, a) for a in same]
    assert ours is not typings and type(ours) is type(typings) is type
    assert [(p.name, p.default) for p in inspect.signature(ours).parameters.values()] == \
        [(p.name, p.default) for p in inspect.signature(typings).parameters.values()]
    assert set(dir(typings)) - set(dir(ours)) == {"__orig_bases__"} and set(dir(ours)) <= set(dir(typings))
