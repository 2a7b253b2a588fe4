"""The package's layout is the pipeline: a module imports only from modules before it here.

Why: data flows one way (transaction -> processes -> units -> policy -> plan -> execute -> report);
a stage that imported a later one would tangle the pipeline and let I/O leak into the pure stages.
The README's layout section lists the same modules in the same order (checked below), so a new
module is placed deliberately, in both.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

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


def imported(path: Path) -> set[str]:
    """The package modules a module imports (``from restart import x``, ``from restart.x import y``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "restart":
            found |= {a.name for a in node.names if a.name not in ("__version__", "NamedTuple", "Importing")}
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
