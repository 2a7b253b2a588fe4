"""Static rules over the code base: nothing in it can run a shell, evaluate text or unpickle data.

Why an AST walk and not grep: ``c.exec([...])`` (the container harness), ``os.execve`` and the
word "eval" in a comment are fine; the builtin ``exec(...)``, ``subprocess.run("...", shell=True)``
and ``pickle.loads`` are not.  Names are resolved through import aliases, plain assignments
(``run = os.system``) and ``getattr(os, "system")``; every *reference* counts, not only calls
(``map(os.system, ...)``); computed lookups on sensitive modules (``vars(os)[x]``) are findings.
And since a list of forbidden names is never complete, processes may be started (and shells run)
only at an allow-list of call sites (file, function).  The checker is itself tested on snippets,
including the nine evasions issue 20 found, so a bug in it cannot make the real check pass vacuously.
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
# Everything that starts a process.  Each is allowed only at the call sites of ALLOWED_STARTERS.
PROCESS_STARTERS = SUBPROCESS_CALLS | {"os." + n for n in (
    "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe", "spawnv", "spawnve",
    "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp",
    "fork", "forkpty")} | {"pty.fork", "asyncio.create_subprocess_exec", "multiprocessing.Process"}
ALWAYS_SHELL = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
                "asyncio.create_subprocess_shell", "commands.getoutput", "pty.spawn"}
EVALUATORS = {"builtins.eval", "builtins.exec", "builtins.compile", "builtins.breakpoint"}
# Ways to run Python code from a file or a string other than importing a fixed module.
CODE_RUNNERS = {"runpy.run_path", "runpy.run_module", "code.InteractiveInterpreter", "code.InteractiveConsole",
                "code.interact", "code.compile_command", "codeop.compile_command", "codeop.Compile",
                "codeop.CommandCompiler", "importlib.machinery.SourceFileLoader",
                "importlib.machinery.SourcelessFileLoader", "importlib.machinery.ExtensionFileLoader",
                "importlib.util.spec_from_file_location", "importlib.util.spec_from_loader",
                "importlib.util.module_from_spec", "importlib.reload", "imp.load_source", "imp.load_module",
                "zipimport.zipimporter", "ctypes.CDLL", "ctypes.cdll", "ctypes.PyDLL"}
# Loader methods, whatever object they are called on.
LOADER_METHODS = {"exec_module", "load_module", "runsource", "runcode", "interact"}
DESERIALIZERS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "cPickle.loads",
                 "marshal.load", "marshal.loads", "shelve.open", "yaml.load", "yaml.load_all",
                 "yaml.unsafe_load", "yaml.full_load", "dill.load", "dill.loads", "jsonpickle.decode"}
DYNAMIC_IMPORTS = {"importlib.import_module", "builtins.__import__", "importlib.__import__"}
BUILTIN_NAMES = {"eval", "exec", "compile", "__import__", "breakpoint", "getattr", "vars"}
# Modules whose attributes must never be looked up by a computed name (getattr(os, name), vars(os)[name]).
SENSITIVE_MODULES = {"os", "subprocess", "builtins", "importlib", "runpy", "code", "pty", "posix", "shutil",
                     "pickle", "marshal", "ctypes", "asyncio"}
SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "mksh", "busybox", "csh", "tcsh", "fish"}


def _qualify(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """The dotted name an expression refers to, with imports, assignments and ``getattr(m, "x")``
    resolved; None for anything else (``self.x``, a local object's method such as ``c.exec``)."""
    if isinstance(node, ast.Attribute):
        base = _qualify(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    if isinstance(node, ast.Call) and _qualify(node.func, aliases) == "builtins.getattr" and len(node.args) >= 2:
        attr = node.args[1]
        base = _qualify(node.args[0], aliases)
        if base and isinstance(attr, ast.Constant) and isinstance(attr.value, str):
            return f"{base}.{attr.value}"
        return None
    if isinstance(node, ast.Name):
        if node.id in aliases:
            return aliases[node.id]
        if node.id in BUILTIN_NAMES:
            return f"builtins.{node.id}"
    return None


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> what it stands for, for the whole module (imports inside functions too, and
    plain assignments of a module's function: ``run = os.system``, ``f = getattr(os, "system")``)."""
    found: dict[str, str] = {"__builtins__": "builtins"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                found[a.asname or a.name.partition(".")[0]] = a.name if a.asname else a.name.partition(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                found[a.asname or a.name] = f"{node.module}.{a.name}"
    for _ in range(3):  # chains of assignments: a = os.system; b = a
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                if isinstance(node, ast.AnnAssign | ast.NamedExpr) and node.value is not None else []
            value = getattr(node, "value", None)
            for t in targets:
                if isinstance(t, ast.Name) and isinstance(value, ast.expr):
                    q = _qualify(value, found)
                    if q is not None and "." in q:
                        found[t.id] = q
    return found


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "text"`` constants (``SH = "/bin/sh"``), to see what an argv starts with."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            out.update({t.id: node.value.value for t in node.targets if isinstance(t, ast.Name)})
    return out


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


# Where a process may be started (file, function), and where a shell may be: everything else is a finding.
# A new call site is a deliberate change to this list, reviewed like any other code that runs as root.
ALLOWED_STARTERS: dict[str, set[str]] = {
    "restart/runner.py": {"run"},
    "restart/hook.py": {"_run_quietly", "defer_until_exit"},
    "restart/processes.py": {"_on_two_cores"},  # the scan on two cores: a fork, never an exec (security.md P9)
    "bench/hook.py": {"main", "install_before"},  # git archive of the checkout to compare with
    "bench/restarts.py": {"main"},
    "bench/restart_trace.py": {"Popen", "main"},  # times restartctl's own programs: a Popen subclass in its place
    "bench/interpreters.py": {"bench"},
    "bench/scan.py": {"download", "timed", "main", "save"},
    "tests/support/container.py": {"Container._run", "Container._start", "make_local_repo.index"},
    "tests/support/debs.py": {"_run"},
    "tests/support/package.py": {"run"},
    "tests/support/rootfs.py": {"_run"},
    "tests/support/tools.py": {"promtool"},
}
# Fixed scripts only: the harness's nsenter/spawn/write glue, the benchmarks' floor and fillers.
ALLOWED_SHELLS: dict[str, set[str]] = {
    "bench/interpreters.py": {"bench"},
    "bench/scan.py": {"commands", "idle_unit"},
    "tests/support/container.py": {"Container._run", "Container.spawn", "Container.write_file"},
}


class _Checker(ast.NodeVisitor):
    """Every forbidden reference or call in one module, with the function it is in."""

    def __init__(self, filename: str, tree: ast.Module, starters: set[str], shells: set[str]) -> None:
        self.filename = filename
        self.starters, self.shells = starters, shells
        self.aliases = _aliases(tree)
        self.constants = _constants(tree)
        self.stack: list[str] = []
        self.approved: set[int] = set()  # ids of references checked as a call's target already
        self.out: list[str] = []

    def site(self) -> str:
        return ".".join(self.stack) or "<module>"

    def flag(self, node: ast.AST, what: str) -> None:
        self.out.append(f"{self.filename}:{getattr(node, 'lineno', 0)}: {what} (in {self.site()})")

    def _scope(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.stack.append(node.name)
        for d in node.decorator_list:
            self.visit(d)
        if isinstance(node, ast.ClassDef):
            for b in node.bases:
                self.visit(b)
        else:  # defaults are code; annotations only name types
            for default in [*node.args.defaults, *node.args.kw_defaults]:
                if default is not None:
                    self.visit(default)
        for stmt in node.body:
            self.visit(stmt)
        self.stack.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scope

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.visit(node.target)
        if node.value is not None:
            self.visit(node.value)

    def _reference(self, node: ast.expr) -> bool:
        """Check what ``node`` refers to; True when it was a name worth reporting (do not descend)."""
        name = _qualify(node, self.aliases)
        if name is None:
            return False
        label = name.removeprefix("builtins.")
        if name in EVALUATORS:
            self.flag(node, f"{label}()")
        elif name in ALWAYS_SHELL:
            self.flag(node, f"{name}() runs a shell")
        elif name in DESERIALIZERS:
            self.flag(node, f"{name}() deserializes code-capable data")
        elif name in CODE_RUNNERS:
            self.flag(node, f"{name} runs or loads code from a file or a string")
        elif name in DYNAMIC_IMPORTS and id(node) not in self.approved:
            self.flag(node, f"{label}() with a non-constant module name")
        elif name in PROCESS_STARTERS and self.site() not in self.starters:
            self.flag(node, f"{name}() starts a process outside the allowed call sites")
        else:
            return False
        return True

    def visit_Name(self, node: ast.Name) -> None:
        self._reference(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.ctx, ast.Load) and node.attr in LOADER_METHODS:
            self.flag(node, f".{node.attr}() runs loaded code")
        if not self._reference(node):
            self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        """``vars(os)["system"]``, ``os.__dict__[name]``: a module's functions by computed name."""
        holder = node.value
        module = None
        if isinstance(holder, ast.Call) and _qualify(holder.func, self.aliases) == "builtins.vars" and holder.args:
            module = _qualify(holder.args[0], self.aliases)
        elif isinstance(holder, ast.Attribute) and holder.attr == "__dict__":
            module = _qualify(holder.value, self.aliases)
        if module in SENSITIVE_MODULES:
            self.flag(node, f"a function of {module} looked up by name")
        self.generic_visit(node)

    def _program(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return self.constants.get(node.id)
        return None

    def _shell(self, node: ast.AST, program: ast.expr) -> None:
        text = self._program(program)
        if text is not None and text.rsplit("/", 1)[-1] in SHELLS \
                and self.site() not in self.shells:
            self.flag(node, f"runs a shell ({text})")

    def visit_List(self, node: ast.List | ast.Tuple) -> None:
        if node.elts:
            self._shell(node, node.elts[0])
        self.generic_visit(node)

    visit_Tuple = visit_List

    def visit_Call(self, node: ast.Call) -> None:
        if self._reference(node):  # getattr(os, "system") is os.system
            return
        name = _qualify(node.func, self.aliases)
        shell = next((k.value for k in node.keywords if k.arg == "shell"), None)
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            self.flag(node, "shell= other than False")
        if name in DYNAMIC_IMPORTS and node.args and all(_constant(a) for a in node.args):
            self.approved.add(id(node.func))
        if name in SUBPROCESS_CALLS and node.args and _is_string_command(node.args[0]):
            self.flag(node, f"{name}() with a string command")
        if name is not None and name.startswith(("os.exec", "os.spawn", "os.posix_spawn")) and node.args:
            self._shell(node, node.args[0 if not name.startswith("os.spawn") else 1])
        if name == "builtins.getattr" and len(node.args) >= 2 and not _constant(node.args[1]) \
                and _qualify(node.args[0], self.aliases) in SENSITIVE_MODULES:
            self.flag(node, f"getattr() of {_qualify(node.args[0], self.aliases)} by a computed name")
        if isinstance(node.func, ast.Call) or not self._reference(node.func):
            self.visit(node.func)
        for a in [*node.args, *(k.value for k in node.keywords)]:
            self.visit(a)

def violations(source: str, filename: str = "<snippet>", *, starters: set[str] | None = None,
               shells: set[str] | None = None) -> list[str]:
    """Every forbidden call or reference in one Python source, as ``file:line: what (in function)``.

    ``starters``/``shells``: the functions of this file allowed to start processes / shells
    (default: this file's entries in ALLOWED_STARTERS / ALLOWED_SHELLS).
    """
    tree = ast.parse(source, filename)
    checker = _Checker(filename, tree, ALLOWED_STARTERS.get(filename, set()) if starters is None else starters,
                       ALLOWED_SHELLS.get(filename, set()) if shells is None else shells)
    checker.visit(tree)
    return checker.out


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


# `eval` as a command word: at the start of a command (after ; & | ( { ` $( or a newline, a keyword or
# an assignment prefix), not in a comment.
_SH_EVAL = re.compile(r"(^|[;&|({`]|\$\(|\bthen\b|\bdo\b|\belse\b|\b[A-Za-z_]\w*=\S*\s)"
                      r"\s*(command\s+|builtin\s+)?eval\b")


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

# Process starts are allowed in these snippets (as at an allowed call site): what must catch them is
# the specific rule, so that an allowed call site cannot become a hole either.
AT_AN_ALLOWED_SITE = {"<module>", "f"}


@pytest.mark.parametrize("snippet", [
    "eval(text)",
    "exec(code)",
    "compile(src, 'f', 'exec')",
    "breakpoint()",
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
    # More ways around a name check: computed lookups, references passed on, builtins by module, constants.
    "import os\nvars(os)['system'](cmd)",
    "import os\nos.__dict__['popen'](cmd)",
    "import os\ngetattr(os, name)(cmd)",
    "import os\nlist(map(os.system, cmds))",
    "__builtins__.eval(text)",
    "import builtins\nbuiltins.exec(code)",
    "import subprocess\nSH = '/bin/bash'\nsubprocess.Popen([SH, '-c', x])",
    "import ctypes\nctypes.CDLL(path)",
    "import importlib\nrun = importlib.import_module\nrun(name)",
])
def test_checker_flags_forbidden_calls(snippet: str) -> None:
    """Why: a checker that flags nothing would make the real check pass vacuously."""
    assert violations(snippet, starters=AT_AN_ALLOWED_SITE), snippet


# Issue 20 point 9: the nine ways the old name check (grep, then a plain AST walk) was evaded.
EVASIONS = [
    "import os\ngetattr(os, 'system')(cmd)",
    "import os\nrun = os.system\nrun(cmd)",
    "import runpy\nrunpy.run_path(path)",
    "from runpy import run_module\nrun_module(name)",
    "from importlib.machinery import SourceFileLoader\nSourceFileLoader('m', path).load_module()",
    "import importlib.util\nspec = importlib.util.spec_from_file_location('m', path)\n"
    "mod = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(mod)",
    "import code\ncode.InteractiveInterpreter().runsource(src)",
    "import subprocess\nsubprocess.run(['sh', '-c', x])",
    "import os\nos.execv('/bin/sh', ['sh', '-c', x])",
]


@pytest.mark.parametrize("snippet", EVASIONS)
def test_checker_catches_each_evasion(snippet: str) -> None:
    """Why: each of these ran a shell or arbitrary code past the E5 guard before issue 20."""
    assert violations(snippet, starters=AT_AN_ALLOWED_SITE), snippet


@pytest.mark.parametrize("snippet", [
    "import subprocess\nsubprocess.run(argv, check=True)",
    "import os\ndef detach():\n    os.execve(path, argv, env)",
    "import os\nos.fork()",
    "from subprocess import Popen as P\nclass C:\n    def go(self):\n        P(argv)",
])
def test_a_process_start_outside_the_allowed_call_sites_is_flagged(snippet: str) -> None:
    """Why: a list of forbidden names is never complete; where processes start at all is a short list."""
    assert any("outside the allowed call sites" in v for v in violations(snippet)), snippet


@pytest.mark.parametrize("snippet", [
    "c.exec(['systemctl', 'restart', '--', unit])",
    "self.exec(argv)",
    "import os\nos.execve('/usr/bin/x', ['x'], {})",
    "import os\nos.execv(path, argv)",
    "import subprocess\nsubprocess.run(['ls'], shell=False)",
    "import subprocess\nsubprocess.run(argv, check=True)",
    "import subprocess\nsubprocess.run(['/usr/bin/systemctl', 'show', '--', unit], timeout=5)",
    "import importlib\nimportlib.import_module('json')",
    "# eval(x) in a comment\nx = 'exec(y)'",
    "import re\nre.compile(r'x')",
    "import json\njson.loads(text)",
    "import os\nos.path.join(a, b)",
    "getattr(obj, name)",
    "import subprocess\ndef f() -> subprocess.Popen[bytes]:\n    pass",
    "shells = {'sh', 'bash'}",
])
def test_checker_allows_safe_calls(snippet: str) -> None:
    """Why: false positives would push people to weaken the check."""
    assert violations(snippet, starters=AT_AN_ALLOWED_SITE) == [], snippet


def test_shell_eval_detector() -> None:
    """Why: the hook scripts are checked with it; it must see eval where a shell would run it."""
    assert shell_eval_lines("eval \"$x\"\n") == [1]
    assert shell_eval_lines("a=1; eval $cmd\n") == [1]
    assert shell_eval_lines("if true; then eval x; fi\n") == [1]
    assert shell_eval_lines("out=$(eval x)\n") == [1]
    assert shell_eval_lines("X=pre-install eval 'exec hook'\n") == [1]  # after an assignment prefix
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


def snippet_commands(path: Path) -> str:
    """The shell commands of an apt.conf.d snippet (its double-quoted strings, outside ``//`` comments)
    or a dpkg.cfg.d one (each option's value), one per line: apt and dpkg run them with ``sh -c``."""
    text = path.read_text(encoding="utf-8")
    if path.parent.name == "apt.conf.d":
        code = [line for line in text.splitlines() if not line.strip().startswith("//")]
        return "\n".join(re.findall(r'"((?:[^"\\]|\\.)*)"', "\n".join(code)))
    return "\n".join(line.partition("=")[2] for line in text.splitlines()
                     if "=" in line and not line.lstrip().startswith("#"))


def test_hook_shell_scripts_never_eval() -> None:
    """Why: the dpkg/apt hooks run as root mid-transaction; eval would turn data into code.  The shell
    commands in the apt.conf.d and dpkg.cfg.d snippets count too (a constant ``eval`` is still one)."""
    found = []
    for path in shell_files():
        found += [f"{path.relative_to(REPO)}:{n}" for n in shell_eval_lines(path.read_text(encoding="utf-8"))]
    snippets = [*(REPO / "hook" / "apt.conf.d").iterdir(), *(REPO / "hook" / "dpkg.cfg.d").iterdir()]
    assert len(snippets) == 2 and all(snippet_commands(p).count("dpkg-hook") >= 2 for p in snippets)
    for path in snippets:
        found += [f"{path.relative_to(REPO)}: {line}" for line in snippet_commands(path).splitlines()
                  if shell_eval_lines(line)]
    assert found == []


# /proc files that only carry what a process chose to say about itself; restartctl needs none of them.
PROCESS_CHOSEN = {"environ", "cmdline", "cwd"}
# The exceptions: the hook compares its own ancestors' command lines with a fixed program path; the
# interpreter stage parses a genuine interpreter's command line (as data, with the interpreter's own
# option grammar) and resolves a relative script against its cwd, only to lstat() that file inside the
# process's root.  The environment stays forbidden everywhere.
ALLOWED_PROCESS_CHOSEN = {("restart/hook.py", "cmdline"), ("restart/observation.py", "cmdline"),
                          ("restart/observation.py", "cwd")}


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
