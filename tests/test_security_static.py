"""Static rules over the code base: nothing in it can run a shell, evaluate text or unpickle data.

Why an AST walk and not grep: ``c.exec([...])`` (the container harness), ``os.execve`` and the
word "eval" in a comment are fine; the builtin ``exec(...)``, ``subprocess.run("...", shell=True)``
and ``pickle.loads`` are not.  Import aliases (``from subprocess import run as r``) are resolved,
so renaming a call does not hide it.  The checker is itself tested on snippets, so a bug in it
cannot make the real check pass vacuously.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Everything that runs as root or drives root: the package, the hooks, the benchmarks, the harness.
SCANNED = ("restart", "hook", "bench", "tests/support")
# Not ours: third-party trees the benchmark downloads (gitignored), caches.
SKIP_DIRS = {".cache", "__pycache__", ".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache"}

SUBPROCESS_CALLS = {"subprocess." + n for n in (
    "Popen", "run", "call", "check_call", "check_output")}
ALWAYS_SHELL = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
                "asyncio.create_subprocess_shell", "commands.getoutput", "pty.spawn"}
EVALUATORS = {"builtins.eval", "builtins.exec", "builtins.compile"}
DESERIALIZERS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "cPickle.loads",
                 "marshal.load", "marshal.loads", "shelve.open", "yaml.load", "yaml.load_all",
                 "yaml.unsafe_load", "yaml.full_load", "dill.load", "dill.loads", "jsonpickle.decode"}
DYNAMIC_IMPORTS = {"importlib.import_module", "builtins.__import__", "importlib.__import__"}
BUILTIN_NAMES = {"eval", "exec", "compile", "__import__"}


def _qualify(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """The dotted name a call target refers to, with imports resolved; None for ``self.x()`` etc."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    base = aliases.get(node.id)
    if base is None:
        if parts or node.id not in BUILTIN_NAMES:
            return None  # a local object's method (c.exec, self.run): not a module function
        base = f"builtins.{node.id}"
    return ".".join([base, *reversed(parts)])


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> what it was imported as, for the whole module (imports inside functions too)."""
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                found[a.asname or a.name.partition(".")[0]] = a.name if a.asname else a.name.partition(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                found[a.asname or a.name] = f"{node.module}.{a.name}"
    return found


def _is_string_command(arg: ast.expr) -> bool:
    """A command given as text: a literal, an f-string, a concatenation or a formatting of one."""
    if isinstance(arg, ast.Constant):
        return isinstance(arg.value, str | bytes)
    if isinstance(arg, ast.JoinedStr):
        return True
    if isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Add | ast.Mod):
        return _is_string_command(arg.left) or _is_string_command(arg.right)
    if isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute) and arg.func.attr in ("format", "join"):
        return _is_string_command(arg.func.value)
    return False


def _constant(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant)


def violations(source: str, filename: str = "<snippet>") -> list[str]:
    """Every forbidden call in one Python source, as ``file:line: what``."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    out: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _qualify(node.func, aliases)
        where = f"{filename}:{node.lineno}"
        shell = next((k.value for k in node.keywords if k.arg == "shell"), None)
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            out.append(f"{where}: shell= other than False")
        if name is None:
            continue
        if name in EVALUATORS:
            out.append(f"{where}: {name.removeprefix('builtins.')}()")
        elif name in ALWAYS_SHELL:
            out.append(f"{where}: {name}() runs a shell")
        elif name in DESERIALIZERS:
            out.append(f"{where}: {name}() deserializes code-capable data")
        elif name in DYNAMIC_IMPORTS and not (node.args and all(_constant(a) for a in node.args)):
            out.append(f"{where}: {name}() with a non-constant module name")
        elif name in SUBPROCESS_CALLS and node.args and _is_string_command(node.args[0]):
            out.append(f"{where}: {name}() with a string command")
    return out


def python_files() -> Iterator[Path]:
    for top in SCANNED:
        base = REPO / top
        if not base.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
            for name in filenames:
                path = Path(dirpath) / name
                if name.endswith(".py") or re.match(rb"#!.*python", _shebang(path)):
                    yield path


def shell_files() -> Iterator[Path]:
    base = REPO / "hook"
    if not base.exists():
        return
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for name in filenames:
            path = Path(dirpath) / name
            if re.match(rb"#!\s*/(usr/)?bin/(env\s+)?(ba|da|k|z)?sh\b", _shebang(path)):
                yield path


def _shebang(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.readline()
    except OSError:
        return b""


# `eval` as a command word: at the start of a command (after ; & | ( { ` $( or a newline), not in a comment.
_SH_EVAL = re.compile(r"(^|[;&|({`]|\$\(|\bthen\b|\bdo\b|\belse\b)\s*(command\s+|builtin\s+)?eval\b")


def shell_eval_lines(text: str) -> list[int]:
    """Line numbers that use the shell's ``eval`` (comments and quoted words are ignored)."""
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        code = re.sub(r"'[^']*'", "''", line)        # single-quoted text is never code
        code = re.sub(r"(^|\s)#.*$", "", code)        # comments
        if _SH_EVAL.search(code.strip()):
            found.append(n)
    return found


# ---------------------------------------------------------------------------------- the checker

@pytest.mark.parametrize("snippet", [
    "eval(text)",
    "exec(code)",
    "compile(src, 'f', 'exec')",
    "import os\nos.system('ls')",
    "import os\nos.popen(cmd)",
    "from os import system as s\ns(cmd)",
    "import subprocess\nsubprocess.run(cmd, shell=True)",
    "import subprocess as sp\nsp.Popen(['ls'], shell=flag)",
    "import subprocess\nsubprocess.check_output('ls -l')",
    "import subprocess\nsubprocess.run(f'systemctl restart {unit}')",
    "import subprocess\nsubprocess.call('kill ' + pid)",
    "import subprocess\nsubprocess.run('kill %s' % pid)",
    "from subprocess import getoutput\ngetoutput('id')",
    "import pickle\npickle.loads(blob)",
    "from pickle import load\nload(f)",
    "import yaml\nyaml.load(text)",
    "import marshal\nmarshal.loads(b)",
    "import importlib\nimportlib.import_module(name)",
    "__import__(modname)",
    "def f():\n    import subprocess\n    subprocess.run(x, shell=True)",
])
def test_checker_flags_forbidden_calls(snippet: str) -> None:
    """Why: a checker that flags nothing would make the real check pass vacuously."""
    assert violations(snippet), snippet


@pytest.mark.parametrize("snippet", [
    "c.exec(['systemctl', 'restart', '--', unit])",
    "self.exec(argv)",
    "import os\nos.execve('/usr/bin/x', ['x'], {})",
    "import os\nos.execv(path, argv)",
    "import subprocess\nsubprocess.run(['ls'], shell=False)",
    "import subprocess\nsubprocess.run(argv, check=True)",
    "import importlib\nimportlib.import_module('json')",
    "# eval(x) in a comment\nx = 'exec(y)'",
    "import re\nre.compile(r'x')",
    "import json\njson.loads(text)",
])
def test_checker_allows_safe_calls(snippet: str) -> None:
    """Why: false positives would push people to weaken the check."""
    assert violations(snippet) == [], snippet


def test_shell_eval_detector() -> None:
    """Why: the hook scripts are checked with it; it must see eval where a shell would run it."""
    assert shell_eval_lines("eval \"$x\"\n") == [1]
    assert shell_eval_lines("a=1; eval $cmd\n") == [1]
    assert shell_eval_lines("if true; then eval x; fi\n") == [1]
    assert shell_eval_lines("out=$(eval x)\n") == [1]
    assert shell_eval_lines("# eval is forbidden\necho 'eval x'\nmedieval=1\n") == []


# ---------------------------------------------------------------------------------- the code base

def test_there_is_code_to_check() -> None:
    """Why: a moved directory must not silently turn the checks below into no-ops."""
    files = {p.relative_to(REPO).as_posix() for p in python_files()}
    assert {"restart/processes.py", "restart/units.py", "restart/plan.py", "restart/cli.py",
            "tests/support/container.py"} <= files
    if (REPO / "hook").is_dir():
        assert [p for p in shell_files() if p.name == "dpkg-hook"], "hook/dpkg-hook is not recognised as sh"


def test_no_shell_eval_or_unpickling_in_the_code_base() -> None:
    """Why: restartctl runs as root on data users control; no code path may evaluate or shell out."""
    found = []
    for path in python_files():
        found += violations(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert found == []


def test_hook_shell_scripts_never_eval() -> None:
    """Why: the dpkg/apt hooks run as root mid-transaction; eval would turn data into code."""
    found = []
    for path in shell_files():
        found += [f"{path.relative_to(REPO)}:{n}" for n in shell_eval_lines(path.read_text(encoding="utf-8"))]
    assert found == []


# /proc files that only carry what a process chose to say about itself; restartctl needs none of them.
PROCESS_CHOSEN = {"environ", "cmdline", "cwd"}
# The exceptions: the hook compares its own ancestors' command lines with a fixed program path; the
# interpreter stage parses a genuine interpreter's command line (as data, with the interpreter's own
# option grammar) and resolves a relative script against its cwd, only to lstat() that file inside the
# process's root.  The environment stays forbidden everywhere.
ALLOWED_PROCESS_CHOSEN = {("restart/hook.py", "cmdline"), ("restart/interpreters.py", "cmdline"),
                          ("restart/interpreters.py", "cwd")}


def test_process_environment_cmdline_and_cwd_are_never_read() -> None:
    """Why: needrestart ran interpreters with a process's PYTHONPATH/RUBYLIB (CVE-2024-48990/48992);
    restartctl never opens /proc/PID/environ, and cmdline and cwd only where said above."""
    found = []
    for path in sorted((REPO / "restart").glob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                word = node.value.rsplit("/", 1)[-1]
                if word in PROCESS_CHOSEN and (rel, word) not in ALLOWED_PROCESS_CHOSEN:
                    found.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert found == []
