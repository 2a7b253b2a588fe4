"""Stage 2b, interpreters: which executables are interpreters, and what their command lines say.

Pure functions over text: an interpreter is recognised by its resolved executable (an anchored
path of a Debian interpreter package, see :func:`interpreter_of`), and its script by parsing the
command line with that interpreter's own option grammar (:func:`script_of`).  Nothing here reads
``/proc`` or the dpkg database; :mod:`restart.observation` reads a process, and
:mod:`restart.interpreters` judges (the rules are in its docstring).
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections.abc import Sequence

from restart import NamedTuple

PYTHON, PERL, RUBY, NODE, SHELL, JAVA = "python", "perl", "ruby", "node", "shell", "java"
INFER_MODULES = frozenset({PYTHON, PERL, RUBY, NODE})  # families whose modules are not held open


class Interpreter(NamedTuple):
    """An interpreter executable and the Debian package that must own it."""

    family: str   # python | perl | ruby | node | shell | java
    exe: str      # the executable's path, as /proc/PID/exe says
    package: str  # the package that ships it (checked against the dpkg database)
    version: str = ""  # python: "3.11", for its standard library directory


# Anchored full paths only (CVE-2022-30688 was an unanchored pattern), one alternative per
# package; exe is already resolved by the kernel (/usr/bin/python3 -> python3.11, /bin/sh -> dash).
_INTERPRETERS = {  # group name -> (family, owning package, with the group's text in {0})
    "python": (PYTHON, "python{0}-minimal"),
    "perl": (PERL, "perl-base"),
    "libperl": (PERL, "libperl{0}"),
    "ruby": (RUBY, "ruby{0}"),
    "node": (NODE, "nodejs"),
    "dash": (SHELL, "dash"),
    "bash": (SHELL, "bash"),
    "java": (JAVA, "openjdk-{0}-jre-headless"),
}
_PREFIXES = ("/usr/bin/", "/bin/", "/usr/lib/jvm/")
# What an interpreter process always maps: its own executable, whose path starts with one of
# these (every path the pattern below accepts does).  Only such processes are observed: an
# ordinary program in /usr/bin (a real host's 900 sleeps) costs the interpreter stage nothing.
MAPPED_HINTS = (b"/usr/bin/python3.", b"/usr/bin/perl", b"/usr/bin/ruby", b"/usr/bin/node", b"/usr/bin/dash",
                b"/bin/dash", b"/usr/bin/bash", b"/bin/bash", b"/usr/lib/jvm/")


@functools.cache
def _interpreter_re() -> re.Pattern[str]:
    """Compiled on first use: most runs see only a few exes under the prefixes."""
    return re.compile(
        r"/usr/bin/(?:python(?P<python>3\.\d{1,2})|(?P<perl>perl(?:5\.\d{1,3}\.\d{1,3})?)"
        r"|perl(?P<libperl>5\.\d{1,3})-[a-z0-9_]+-linux-[a-z0-9_]+|ruby(?P<ruby>\d\.\d{1,2})|(?P<node>node(?:js)?))"
        r"|(?:/usr)?/bin/(?:(?P<dash>dash)|(?P<bash>bash))"
        r"|/usr/lib/jvm/java-(?P<java>\d{1,3})-openjdk-[a-z0-9]+/bin/java")


def interpreter_of(exe: str | None) -> Interpreter | None:
    """The interpreter an executable path designates, by anchored pattern (ownership is checked later)."""
    if not exe or not exe.startswith(_PREFIXES):
        return None
    m = _interpreter_re().fullmatch(exe)
    if m is None or m.lastgroup is None:
        return None
    family, package = _INTERPRETERS[m.lastgroup]
    value = m[m.lastgroup]
    return Interpreter(family, exe, package.format(value), value if family == PYTHON else "")


# ---------------------------------------------------------------------------- option grammars

class Script(NamedTuple):
    """What a command line says the interpreter runs: a file, or (python3 -m) a module."""

    path: str | None = None    # as written: absolute, or relative to the process's cwd
    module: str | None = None  # a dotted module name (python3 -m)
    chdir: str | None = None   # ruby -C DIR: where a relative path starts


# Patterns as text: re compiles (and caches) them on first use, so a run without interpreters pays nothing.
_MODULE = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"


def _file(args: Sequence[str], i: int, *, search: bool = False, chdir: str | None = None) -> Script | None:
    """The operand at ``i`` as the script file: none past the end, for ``-`` (stdin) or empty.

    ``search`` (perl -S, ruby -S): a bare name is looked up in the process's PATH,
    which is its environment: not resolved.
    """
    if i >= len(args) or args[i] in ("", "-") or (search and "/" not in args[i]):
        return None
    return Script(path=args[i], chdir=chdir)


_PY_FLAGS = frozenset("bBdEhiIOPqRsSuvVx?")


def _python(args: Sequence[str]) -> Script | None:
    """CPython 3's getopt: ``-c`` and ``-m`` end the options; ``-W``/``-X`` take a value."""
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            return _file(args, i + 1)
        if not a.startswith("-") or a == "-":
            break
        if a.startswith("--"):
            name, eq, _ = a[2:].partition("=")
            if name != "check-hash-based-pycs":
                return None  # --help, --version: nothing runs; anything else is refused by python
            i += 1 if eq else 2
            continue
        for j in range(1, len(a)):
            c = a[j]
            if c in "cm":
                value = a[j + 1:] or (args[i + 1] if i + 1 < len(args) else "")
                if c == "m" and re.fullmatch(_MODULE, value):
                    return Script(module=value)
                return None  # -c: a command string, no file
            if c in "WX":
                if j + 1 == len(a):
                    i += 1  # the value is the next argument
                break
            if c not in _PY_FLAGS:
                return None  # python refuses to start
        i += 1
    return _file(args, i)


def _perl(args: Sequence[str]) -> Script | None:
    """perlrun(1): switches bundle (``-wT``); ``-e``/``-E`` mean no file; ``--`` ends them.

    ``-I`` takes the rest of its argument or the next one; ``-C -d -D -F -i -m -M -x -V``
    take the rest of their argument; ``-0`` and ``-l`` a number.  A ``#!`` line passes
    its switches as one argument (``-w -T``): a space followed by ``-`` goes on.
    """
    i = 0
    search = False
    while i < len(args):
        a = args[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            break
        s, j = a[1:], 0
        while j < len(s):
            c = s[j]
            if c in "eE":
                return None
            if c == "I":
                if j + 1 == len(s):
                    i += 1
                break
            if c in "CdDFimMxV":
                break
            if c in "0l":
                j += 1
                while j < len(s) and (s[j] in "0123456789abcdefABCDEF" or (c == "0" and s[j] == "x")):
                    j += 1
                continue
            if c in " \t":
                while j < len(s) and s[j] in " \t":
                    j += 1
                if j < len(s) and s[j] == "-":
                    j += 1
                    continue
                break
            if c == "S":
                search = True
            elif c not in "acfhnpstTuUvwWX":
                return None  # "Unrecognized switch": perl refuses to run
            j += 1
        i += 1
    return _file(args, i, search=search)


_RUBY_LONG_VALUE = frozenset({"enable", "disable", "encoding", "external-encoding", "internal-encoding", "dump",
                              "backtrace-limit", "crash-report"})


def _ruby(args: Sequence[str]) -> Script | None:
    """ruby(1): ``-e`` means no file; ``-I -r -C -X -E`` take a value; ``-C`` moves the start."""
    i = 0
    chdir: str | None = None
    search = False
    while i < len(args):
        a = args[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            break
        if a.startswith("--"):
            name, eq, _ = a[2:].partition("=")
            i += 2 if name in _RUBY_LONG_VALUE and not eq else 1
            continue
        s, j = a[1:], 0
        while j < len(s):
            c = s[j]
            if c == "e":
                return None
            if c in "ICXEr":
                value = s[j + 1:]
                if not value:
                    i += 1
                    value = args[i] if i < len(args) else ""
                if c in "CX":
                    chdir = posixpath.join(chdir, value) if chdir else value
                break
            if c in "Fix" or (c == "W" and s[j + 1:j + 2] == ":"):
                break
            if c in "0WT":
                j += 1
                while j < len(s) and s[j].isdigit():
                    j += 1
                continue
            if c == "K":
                j += 2
                continue
            if c == "S":
                search = True
            elif c not in "acdhlnpsvwy":
                return None
            j += 1
        i += 1
    return _file(args, i, search=search, chdir=chdir)


# Node options that take the next argument when not written as --name=value (node 18-22).
_NODE_VALUE = frozenset({
    "allow-fs-read", "allow-fs-write", "build-snapshot-config", "conditions", "cpu-prof-dir", "cpu-prof-interval",
    "cpu-prof-name", "diagnostic-dir", "disable-proto", "disable-warning", "dns-result-order", "env-file",
    "env-file-if-exists", "experimental-default-type", "loader", "experimental-loader", "experimental-policy",
    "experimental-sea-config", "heap-prof-dir", "heap-prof-interval", "heap-prof-name",
    "heapsnapshot-near-heap-limit", "heapsnapshot-signal", "icu-data-dir", "import", "input-type", "debug-port",
    "inspect-port", "inspect-publish-uid", "max-http-header-size", "network-family-autoselection-attempt-timeout",
    "openssl-config", "policy-integrity", "redirect-warnings", "report-directory", "report-dir", "report-filename",
    "report-signal", "require", "secure-heap", "secure-heap-min", "snapshot-blob", "test-concurrency",
    "test-name-pattern", "test-reporter", "test-reporter-destination", "test-shard", "test-timeout", "title",
    "tls-cipher-list", "tls-keylog", "trace-event-categories", "trace-event-file-pattern", "trace-require-module",
    "unhandled-rejections", "use-largepages", "v8-pool-size", "max-old-space-size", "max-semi-space-size",
    "stack-size", "stack-trace-limit",
})


def _node(args: Sequence[str]) -> Script | None:
    """node(1): ``-e``/``-p`` evaluate a string; ``-r``/``-C`` and the value options take the next argument."""
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            break
        name = a[2:].partition("=")[0] if a.startswith("--") else ""
        if a in ("-e", "-p", "-pe", "-ep") or name in ("eval", "print"):
            return None
        if a in ("-r", "-C") or (name in _NODE_VALUE and "=" not in a):
            i += 2
            continue
        i += 1
    return _file(args, i)


_SH_FLAGS = frozenset("abCefhilmnpruvxBDEHPTkt")


def _shell(args: Sequence[str], *, bash: bool) -> Script | None:
    """sh(1)/bash(1): ``-c`` and ``-s`` mean no file; ``-o``/``-O`` take a value; ``-``/``--`` end options."""
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-", "--"):
            i += 1
            break
        if bash and a.startswith("--"):
            i += 2 if a[2:] in ("rcfile", "init-file") else 1
            continue
        if a[:1] not in ("-", "+") or len(a) < 2:
            break
        values = 0
        for c in a[1:]:
            if c in "cs":
                return None
            if c in "oO":
                values += 1
            elif c not in _SH_FLAGS:
                return None
        i += 1 + values
    return _file(args, i)


_JAVA_VALUE = frozenset({"-cp", "-classpath", "--class-path", "-p", "--module-path", "--upgrade-module-path",
                         "--add-modules", "--limit-modules", "--add-reads", "--add-exports", "--add-opens",
                         "--patch-module", "--enable-native-access", "--source"})


def _java(args: Sequence[str]) -> Script | None:
    """java(1): ``-jar FILE``, or a ``.java`` source file; a main class or module is no file."""
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-jar":
            return _file(args, i + 1)
        if a in ("-m", "--module") or a.startswith(("--module=", "@")):
            return None  # a module, or an argument file (never read)
        if a in _JAVA_VALUE:
            i += 2
            continue
        if not a.startswith("-"):
            break
        i += 1
    return _file(args, i) if i < len(args) and args[i].endswith(".java") else None


def script_of(interpreter: Interpreter | str, argv: Sequence[str]) -> Script | None:
    """What ``argv`` (argv[0] included) runs, by the interpreter's option grammar; None: no file.

    Pure: nothing is looked up.  ``interpreter`` is an :class:`Interpreter` or a family name
    (``"bash"`` and ``"dash"`` name shells).
    """
    family = interpreter.family if isinstance(interpreter, Interpreter) else interpreter
    bash = interpreter.package == "bash" if isinstance(interpreter, Interpreter) else interpreter == "bash"
    args = argv[1:]
    if family == PYTHON:
        return _python(args)
    if family == PERL:
        return _perl(args)
    if family == RUBY:
        return _ruby(args)
    if family == NODE:
        return _node(args)
    if family in (SHELL, "bash", "dash", "sh"):
        return _shell(args, bash=bash)
    if family == JAVA:
        return _java(args)
    return None


def module_files(version: str, module: str) -> tuple[str, ...]:
    """Where ``python3.VERSION -m MODULE`` finds its code on Debian's default path, in order.

    The standard library, then the local and the packaged ``dist-packages``; in each, a
    package's ``__main__.py`` before a plain module.  The process's own ``sys.path``
    (cwd, PYTHONPATH) is deliberately not used: it is the process's to forge.
    """
    if not re.fullmatch(_MODULE, module) or not re.fullmatch(r"3\.\d{1,2}", version):
        return ()
    rel = module.replace(".", "/")
    dirs = (f"/usr/lib/python{version}", f"/usr/local/lib/python{version}/dist-packages",
            "/usr/lib/python3/dist-packages")
    return tuple(f"{d}/{rel}{suffix}" for d in dirs for suffix in ("/__main__.py", ".py"))


_SEARCH = {
    PERL: r"/usr/share/perl5?/|/usr/lib/[^/]+/perl(?:5|-base)?/|/etc/perl/",
    RUBY: r"/usr/lib/ruby/|/usr/share/rubygems-integration/|/usr/lib/[^/]+/ruby/",
    NODE: r"/usr/share/nodejs/|/usr/lib/nodejs/|/usr/lib/[^/]+/nodejs/",
    JAVA: r"/usr/share/java/",
}


# What a module file of each family is called: code the interpreter loads, C extensions included.
MODULE_SUFFIXES = {
    PYTHON: (".py", ".so"),
    PERL: (".pm", ".pl", ".so"),
    RUBY: (".rb", ".so"),
    NODE: (".js", ".mjs", ".cjs", ".node"),
    JAVA: (".jar",),
}


def _is_module(path: str, suffixes: tuple[str, ...]) -> bool:
    """Named like a module (``x.cpython-311-x86_64-linux-gnu.so`` and ``x.so.1`` are C extensions)."""
    name = path.rpartition("/")[2]
    return name.endswith(suffixes) or (".so" in suffixes and ".so." in name)


def search_path(interpreter: Interpreter) -> re.Pattern[str] | None:
    """Debian's default module directories of an interpreter (static: never asked of it)."""
    if interpreter.family == PYTHON:
        return re.compile(rf"/usr/lib/python3/dist-packages/|/usr/lib/python{re.escape(interpreter.version)}/")
    pattern = _SEARCH.get(interpreter.family)
    return re.compile(pattern) if pattern else None
