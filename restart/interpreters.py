"""Stage 2b, interpreters: the scripts and modules of interpreted daemons, found without running anything.

A Python, Perl, Ruby or Node.js daemon never maps its program or its modules, so the
maps-based scan misses upgrades of the packages that ship them.  needrestart asked
the interpreter itself (run as root, with the process's environment) for its search
path, and that was a root exploit (CVE-2024-48990, CVE-2024-48992).  Here every fact
is static, from ``/proc`` and the dpkg database:

- An *interpreter* is recognised by its resolved executable: an anchored path of a
  Debian interpreter package (``/usr/bin/python3.N``, ``/usr/bin/perl``, ...), and that
  very package must own the file, so a user's ``/home/u/python3`` is never one.
- Its *script* comes from the command line, parsed with the interpreter's own option
  grammar (:func:`script_of`), and is looked at inside the process's root with
  ``lstat`` only: never opened, never read, never imported, never executed.  The
  process's environment is never read.
- The *modules* it may use are the packages in the dependency closure of the script's
  package (``Depends``/``Pre-Depends`` in the dpkg status file), not anything the
  process could choose.

The rules.  *start* is the process's start: ``/proc/PID/stat`` field 22 (clock ticks since
boot) plus the wall-clock time of boot taken as now minus ``CLOCK_BOOTTIME``, which is
what ``/proc/stat``'s ``btime`` is, without its rounding to whole seconds.  "Changed"
means later than *start* plus :data:`TOLERANCE`.

``script``, ``certain`` (evidence ``replaced``/``unlinked``)
    the process holds its script open (shells read scripts as they go, Perl keeps a
    script with an ``__END__`` section open, the JVM its jars) and the inode it holds
    is no longer the one at the path.
``script``, ``likely`` (evidence ``newer``)
    no open file proves it, but the file now at the path has a ctime that changed:
    dpkg writes a new inode and renames it into place, which sets its ctime (its mtime
    is the packaged one, so mtime proves nothing).  Which script the process runs is
    only what its command line says, and a process can rewrite that: never
    ``certain``.
``module``, ``likely`` (evidence ``depends``)
    a package that ships files on the interpreter's default search path (Debian's
    ``dist-packages`` and ``python3.N``, ``perl5``, ``vendor_ruby``, ``nodejs``
    directories; never what the process's environment adds) was unpacked after the
    process started and is in the dependency closure of the script's package (the
    script's own package included; for ``python3 -m mod``, the package of ``mod``'s file
    on Debian's path).  "Unpacked" is the mtime of ``info/PACKAGE.list``, which dpkg
    rewrites at every unpack; one finding per package, on one of its module files
    (:data:`MODULE_SUFFIXES`: source or C extension, never metadata or a directory).
    Only code that existed when the process started counts: a package whose first
    event in this boot's transaction journal is its installation, after the start,
    contributes nothing; of an upgraded package only the files of its old file list
    (kept by apt's hook before its last transaction) count; a file replaced by
    identical content (same md5sum) does not count.
``module``, ``likely`` (evidence ``imports``)
    the same for a process whose script lies where no package installs (``/usr/local``,
    ``/opt``, ``/home``...) or whose command line carries its code (``python3 -c``,
    ``perl -e``): :mod:`restart.imports` reads that source statically, as the process's
    user, and the closure is that of the packages shipping the modules it imports on
    Debian's path (plus the interpreter's own).  Read only when a module package of the
    interpreter changed after the process started.
``module``, ``likely`` (evidence ``search-path``)
    the same when the imports are not known (unreadable, unparseable, built at run time,
    a REPL, a rewritten command line), taken over every package on that search path; the
    vendor policy lists these findings (``list_evidence``) instead of restarting for
    them.  A script elsewhere that none
    of the packages depending on a changed module package owns gets no module finding:
    telling an unowned file in ``/usr/bin`` from an unrelated package's would take a
    search of every dpkg list (8 MB, 20 ms), for a layout Debian Policy forbids.
``module``, ``certain``
    a stale mapping or open file that the scan found (a C extension, a jar) lies on
    the interpreter's search path: that finding, renamed.

Java processes and shells get only the proven kinds: the JVM keeps every jar it uses
open, and shells have no modules.  Nothing here decides a unit: that stays the cgroup's.

Costs: :func:`observe` reads ``cmdline`` and ``stat`` (and stats the script) only for
processes whose exe is an interpreter path.  :class:`Context` reads nothing until asked,
and nothing but two inodes' times when dpkg has not run since the interpreters started;
otherwise the dpkg status file (3 ms for 900 packages), the ``.list`` mtimes, and the
lists of the few packages that matter, never all of them.
"""

from __future__ import annotations

import bisect
import functools
import glob
import os
import posixpath
import re
import stat
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from restart import transaction
from restart.imports import Imports, Reader, Source, gather, identity_of
from restart.packages import DpkgDatabase, fs_decode, fs_encode, spellings
from restart.processes import CERTAIN, CODE, DATA, EXE, FD, LIKELY, Evidence, FileKind, StaleFile
from restart.procfs import STARTTIME, ProcessGone, exe_of, read_proc, stat_fields

SCRIPT, MODULE = FileKind.SCRIPT, FileKind.MODULE
NEWER, DEPENDS, SEARCH_PATH, IMPORTS = Evidence.NEWER, Evidence.DEPENDS, Evidence.SEARCH_PATH, Evidence.IMPORTS
REPLACED, UNLINKED, FRESH = Evidence.REPLACED, Evidence.UNLINKED, "fresh"  # what a held script says
PYTHON, PERL, RUBY, NODE, SHELL, JAVA = "python", "perl", "ruby", "node", "shell", "java"

# Seconds by which a change must follow a process's start to count: the start is known to
# a clock tick (10 ms), file times are jiffy-coarse, and a change in the same instant as the
# start (a service restarted by the postinst of the package it runs) must never count.
TOLERANCE = 0.25
MAX_SYMLINKS = 40  # as the kernel: more is a loop
INFER_MODULES = frozenset({PYTHON, PERL, RUBY, NODE})  # families whose modules are not held open

# One finding per path: the more specific kind wins (a mapped C extension is a module).
STRENGTH = {EXE: 5, SCRIPT: 4, MODULE: 3, CODE: 2, DATA: 1, FD: 0}

# Never walked into: no package ships a script there, and procfs links (/proc/self,
# /dev/fd -> /proc/self/fd) would name the reader's files, not the process's.
_VIRTUAL = frozenset({"proc", "sys", "dev"})
_DELETED = " (deleted)"


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
# Where an interpreter process always maps something: its own executable.
MAPPED_HINTS = tuple(p.encode() for p in _PREFIXES)


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


# ---------------------------------------------------------------------------- the dependency graph

class PackageGraph(NamedTuple):
    """Installed packages (names without architecture) and what they depend on."""

    depends: dict[str, frozenset[str]]   # package -> every name in its Depends and Pre-Depends
    provides: dict[str, frozenset[str]]  # virtual name -> installed packages that provide it


_FIELD = rb"\n(Package|Status|Depends|Pre-Depends|Provides):[ \t]*([^\n]*)"
_NAME = r"(?:^|[,|])\s*([a-z0-9][a-z0-9+.-]*)"  # each alternative's name; versions and :arch dropped
_NOT_INSTALLED = (b"not-installed", b"config-files")


def _names(field: str) -> list[str]:
    """Package names of a relation field, every alternative."""
    return re.findall(_NAME, field)


def parse_status(text: bytes) -> PackageGraph:
    """The dependency graph of the installed packages in a dpkg ``status`` file.

    Five fields matter, so one regex pass over the text does (2 ms for 900 packages, less
    than importing apt_pkg): dpkg writes ``Package`` first in every stanza and each
    relation field on one line; continuation lines (descriptions) start with a space.
    """
    depends: dict[str, set[str]] = {}
    provides: dict[str, set[str]] = {}
    package: str | None = None
    relations: list[bytes] = []
    offers: list[bytes] = []

    def close() -> None:
        if package is not None:
            deps = depends.setdefault(package, set())  # Multi-Arch: same: a stanza per architecture
            for field in relations:
                deps.update(_names(fs_decode(field)))
            for field in offers:
                for virtual in _names(fs_decode(field)):
                    provides.setdefault(virtual, set()).add(package)

    installed = False
    for key, value in re.findall(_FIELD, b"\n" + text):
        if key == b"Package":
            if installed:
                close()
            package, installed, relations, offers = fs_decode(value.rstrip()), False, [], []
        elif key == b"Status":
            state = value.split()
            installed = len(state) == 3 and state[2] not in _NOT_INSTALLED
        elif key == b"Provides":
            offers.append(value)
        else:
            relations.append(value)
    if installed:
        close()
    return PackageGraph({k: frozenset(v) for k, v in depends.items()},
                        {k: frozenset(v) for k, v in provides.items()})


def closure(graph: PackageGraph, package: str) -> frozenset[str]:
    """``package`` and every installed package it depends on, directly or not (all alternatives)."""
    start = package.partition(":")[0]
    seen = {start}
    todo = [start]
    while todo:
        for name in graph.depends.get(todo.pop(), ()):
            targets = graph.provides.get(name, frozenset())
            if name in graph.depends:
                targets = targets | {name}
            for t in targets - seen:
                seen.add(t)
                todo.append(t)
    return frozenset(seen)


# ---------------------------------------------------------------------------- reading one process

class Host(NamedTuple):
    """What a scan knows of its own host: its clock, and the root its dpkg database describes."""

    boot: float  # wall-clock time of boot: now - CLOCK_BOOTTIME, finer than /proc/stat's btime
    hz: int      # clock ticks per second
    root: tuple[int, int] | None = None  # (st_dev, st_ino) of that root; None: judge every process

    @classmethod
    def of(cls, root: Path = Path("/")) -> Host:
        try:
            st = os.stat(root)
            ident: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            ident = None
        return cls(time.time() - time.clock_gettime(time.CLOCK_BOOTTIME), os.sysconf("SC_CLK_TCK"), ident)

    def wall(self, ticks: int) -> float:
        """A ``/proc/PID/stat`` start time as wall-clock seconds."""
        return self.boot + ticks / self.hz


class Observation(NamedTuple):
    """What ``/proc`` says about one interpreter process: facts only, no judgement."""

    pid: int
    interpreter: Interpreter
    start: float              # wall-clock seconds
    script: Script | None     # what its command line says it runs
    path: str | None          # that file, resolved inside the process's root; None if not found
    ctime: float | None       # ctime of the regular file now at ``path``
    held: str | None          # the process holds it open: fresh | replaced | unlinked
    imports: Imports | None = None  # what its unowned script or -c code imports (read only when it matters)


def start_ticks(stat_text: bytes) -> int:
    """Field 22 of ``/proc/PID/stat``; the name field before it may hold spaces and parentheses."""
    return int(stat_fields(stat_text)[STARTTIME])


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def argv_of(cmdline: bytes) -> list[str]:
    """``/proc/PID/cmdline``: NUL-terminated arguments (a trailing NUL is no empty argument)."""
    parts = cmdline.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return [fs_decode(p) for p in parts]


def resolve_in_root(rootfd: int, path: str) -> tuple[str, os.stat_result] | None:
    """Follow ``path`` as the process would, without ever leaving its root; lstat what it names.

    A walk of ``O_PATH`` directory handles: ``..`` pops the walk (never above the root),
    an absolute symlink restarts at the root, a relative one is spliced in.  Nothing but
    directories is opened (``O_PATH``, which reads nothing), and the last component is
    only ``lstat``ed.  Returns the resolved path and its stat, for a regular file only;
    never anything under ``/proc``, ``/sys`` or ``/dev`` (bash's ``/dev/fd/N``).
    """
    todo = [c for c in reversed(path.split("/")) if c]
    walk: list[tuple[str, int]] = []
    links = 0
    try:
        while todo:
            name = todo.pop()
            if name == ".":
                continue
            if name == "..":
                if walk:
                    os.close(walk.pop()[1])
                continue
            here = walk[-1][1] if walk else rootfd
            st = os.stat(name, dir_fd=here, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    return None
                target = os.readlink(name, dir_fd=here)
                if target.startswith("/"):
                    while walk:
                        os.close(walk.pop()[1])
                todo.extend(c for c in reversed(target.split("/")) if c)
                continue
            if not todo:
                if not stat.S_ISREG(st.st_mode):
                    return None
                return "/" + "/".join([*(n for n, _ in walk), name]), st
            if not stat.S_ISDIR(st.st_mode) or (not walk and name in _VIRTUAL):
                return None
            walk.append((name, os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                       dir_fd=here)))
    except OSError:
        return None
    finally:
        for _, fd in walk:
            os.close(fd)
    return None


def _absolute(dfd: int, script: Script) -> str | None:
    """The script's path inside the process's root; a relative one starts at its cwd."""
    path = script.path or ""
    if script.chdir and not path.startswith("/"):
        path = posixpath.join(script.chdir, path)
    if path.startswith("/"):
        return path
    # Relative: the cwd's text is relative to *our* root; keep only what lies inside the process's.
    try:
        root, cwd = os.readlink("root", dir_fd=dfd), os.readlink("cwd", dir_fd=dfd)
    except OSError:
        return None
    if not cwd.startswith("/") or cwd.endswith(_DELETED):
        return None
    if root != "/":
        if cwd != root and not cwd.startswith(root + "/"):
            return None
        cwd = cwd[len(root):] or "/"
    return posixpath.join(cwd, path)


def _held(dfd: int, path: str, st: os.stat_result) -> str | None:
    """Does the process hold ``path`` open, and is what it holds still the file at the path?"""
    try:
        fdd = os.open("fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        return None
    verdict = None
    try:
        for name in os.listdir(fdd):
            try:
                target = os.readlink(name, dir_fd=fdd)
                if target not in (path, path + _DELETED):
                    continue
                held = os.stat(name, dir_fd=fdd)
            except OSError:
                continue  # closed meanwhile
            if not stat.S_ISREG(held.st_mode):
                continue
            if (held.st_dev, held.st_ino) != (st.st_dev, st.st_ino):
                return UNLINKED if held.st_nlink == 0 else REPLACED
            verdict = FRESH
    except OSError:
        return verdict
    finally:
        os.close(fdd)
    return verdict


def _locate(dfd: int, interpreter: Interpreter, script: Script) -> tuple[str, os.stat_result] | None:
    """The regular file the script names, inside the process's root (the first, for python3 -m)."""
    if script.module is not None:
        candidates: Sequence[str] = module_files(interpreter.version, script.module)
    else:
        absolute = _absolute(dfd, script)
        candidates = (absolute,) if absolute else ()
    if not candidates:
        return None
    try:
        rootfd = os.open("root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        return None  # not ours to see (as non-root), or gone
    try:
        return next((found for c in candidates if (found := resolve_in_root(rootfd, c))), None)
    finally:
        os.close(rootfd)


def _same_root(dfd: int, host: Host) -> bool:
    """Does the process see the files our dpkg database describes (its root is ours)?

    True for services in their own mount namespace (PrivateTmp=, ProtectSystem= keep the
    root directory); False for containers and chroots, whose packages are not ours.
    """
    if host.root is None:
        return True
    try:
        st = os.stat("root", dir_fd=dfd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == host.root


def inline_code(family: str, argv: Sequence[str]) -> str | None:
    """The program text a command line carries (``python3 -c``, ``perl -e``, ``ruby -e``, ``node -e``)."""
    flags = {PYTHON: ("-c",), PERL: ("-e", "-E"), RUBY: ("-e",), NODE: ("-e", "--eval", "-p", "--print")}
    wanted = flags.get(family, ())
    parts = []
    for i, arg in enumerate(argv[1:], 1):
        if arg in wanted and i + 1 < len(argv):
            parts.append(argv[i + 1])
        elif family == PYTHON and arg.startswith("-c") and len(arg) > 2:
            parts.append(arg[2:])
        if family == PYTHON and parts:
            break  # -c ends python's options: the rest are the program's arguments
    return "\n".join(parts) if parts else None


# Whether a process's imports are worth reading: (interpreter, start, script path) -> bool.
WantsImports = Callable[[Interpreter, float, str | None], bool]


def _read_imports(dfd: int, interpreter: Interpreter, argv: Sequence[str], path: str | None) -> Imports | None:
    """What the unowned script (or the command line's code) imports, read as its user (see imports)."""
    code = inline_code(interpreter.family, argv) if path is None else None
    if path is None and code is None:
        return None  # a REPL, a script on stdin, a rewritten command line: nothing to read
    who = identity_of(read_proc(dfd, "status"))
    if who is None:
        return Imports(problem="the process's user is unknown")
    try:
        rootfd = os.open("root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        return Imports(problem="its root cannot be opened")
    try:
        read = Reader(rootfd, who)
        if path is not None:
            data = read(path)
            if isinstance(data, str):
                return Imports(problem=f"{path}: {data}")
            sources = [Source(data, posixpath.dirname(path))]
        else:
            sources = [Source(fs_encode(code or ""), None)]
        return gather(interpreter.family, sources, read)
    finally:
        os.close(rootfd)


def observe(dfd: int, pid: int, exe: str | None, host: Host, cmdline: bytes | None = None,
            wants: WantsImports | None = None) -> Observation | None:
    """Read what an interpreter process runs, through its ``/proc/PID`` directory handle.

    None for anything that is not an interpreter path (nothing else is read then), for
    a process in another root (a container: its interpreters are its own packages'),
    and for a ``stat`` no kernel writes.  ``cmdline`` is read here unless the caller
    already has it.  Raises :class:`processes.ProcessGone` when the process exits
    meanwhile, so that the scanner counts it as it counts any other.
    """
    interpreter = interpreter_of(exe)
    if interpreter is None or not _same_root(dfd, host):
        return None
    if cmdline is None:
        cmdline = read_proc(dfd, "cmdline")
    try:
        start = host.wall(start_ticks(read_proc(dfd, "stat")))
    except (ValueError, IndexError):
        return None
    argv = argv_of(cmdline)
    script = script_of(interpreter, argv)
    found = _locate(dfd, interpreter, script) if script is not None else None
    path = found[0] if found else None
    imports = (_read_imports(dfd, interpreter, argv, path)
               if wants is not None and (found or script is None) and wants(interpreter, start, path) else None)
    if found is None:
        return Observation(pid, interpreter, start, script, None, None, None, imports)
    path, st = found
    return Observation(pid, interpreter, start, script, path, st.st_ctime_ns / 1e9, _held(dfd, path, st), imports)


# ---------------------------------------------------------------------------- judging, per run

# Where Debian packages never install (FHS; Debian Policy 9.1): a script there is nobody's,
# known without searching the dpkg lists.  scan.find passes the vendor data/never-packaged.
RESERVED = ("/usr/local/", "/opt/", "/home/", "/root/", "/srv/", "/tmp/", "/var/tmp/", "/run/",  # noqa: S108
            "/dev/")  # (prefixes compared with, never files created)
OUTSIDE = ""  # owner(): owned by no package that could matter here (see Context.owner)


class Context:
    """What one run knows about packages, computed lazily, once, and shared by every process.

    ``in_scope`` (canonical path -> package, as :func:`scan.find` builds it) restricts
    "changed" to the packages of a transaction; None means every installed package.
    ``unowned`` are path prefixes no package installs into.  Nothing is read before a
    process needs it, and a run where dpkg has not run since the interpreters started
    reads two inodes' times and nothing else.
    """

    def __init__(self, db: DpkgDatabase, *, in_scope: Mapping[str, str] | None = None,
                 host: Host | None = None, tolerance: float = TOLERANCE,
                 unowned: tuple[str, ...] = RESERVED, unchanged: Mapping[str, float] | None = None,
                 history: Path | None = None) -> None:
        self.db = db
        self.unchanged = unchanged or {}  # canonical path -> since when its (identical) content was on disk
        self.history = history      # the hooks' run directory (journal, old file lists), if any
        self._old_files: dict[str, frozenset[str] | None] = {}
        self._listings: dict[str, tuple[str, ...]] = {}
        self.in_scope = in_scope
        self.host = host or Host.of(db.root)
        self.tolerance = tolerance
        self.unowned = unowned
        self._lists: dict[str, bytes] = {}
        self._files: dict[str, frozenset[str]] = {}
        self._modules: dict[tuple[str, str], tuple[str, ...]] = {}
        self._closures: dict[str, frozenset[str]] = {}
        self._dependents: dict[frozenset[str], frozenset[str]] = {}
        self._owners: dict[tuple[str, frozenset[str]], str | None] = {}

    # -- the dpkg lists, one package at a time (never all of them: 8 MB on a small server)

    @cached_property
    def _list_names(self) -> dict[str, list[str]]:
        """Package (without architecture) -> its .list names (``libfoo:amd64``, ``libfoo:i386``)."""
        names: dict[str, list[str]] = {}
        for name in self.db.installed_packages():
            names.setdefault(name.partition(":")[0], []).append(name)
        return names

    def _list(self, package: str) -> bytes:
        """A package's file lists, every architecture, each line between newlines."""
        base = package.partition(":")[0]
        if base not in self._lists:
            info = f"{self.db.admindir}/info"
            try:  # most packages: one list, named without architecture
                parts = [_read_file(f"{info}/{base}.list")]
            except OSError:  # Multi-Arch: same ones have one per architecture
                parts = []
                for name in self._list_names.get(base, ()):
                    try:
                        parts.append(_read_file(f"{info}/{name}.list"))
                    except OSError:
                        continue
            self._lists[base] = b"\n" + b"\n".join(parts) + b"\n"
        return self._lists[base]

    def owns(self, package: str, path: str) -> bool:
        """Does ``package``'s list name ``path`` (canonical), in any merged-/usr spelling?"""
        data = self._list(package)
        return any(b"\n" + fs_encode(s) + b"\n" in data for s in spellings(path, self.db.aliases))

    def files(self, package: str) -> frozenset[str]:
        """A package's paths, canonical (directories included)."""
        base = package.partition(":")[0]
        if base not in self._files:
            lines = self._list(base).split(b"\n")
            self._files[base] = frozenset(self.db.canonical(fs_decode(x)) for x in lines if x.startswith(b"/"))
        return self._files[base]

    @cached_property
    def _diverted(self) -> dict[str, str]:
        return {d.path: d.by for d in self.db.diversions}

    def genuine(self, interpreter: Interpreter) -> bool:
        """Is the executable the expected package's own file (not diverted, not someone else's)?"""
        exe = self.db.canonical(interpreter.exe)
        by = self._diverted.get(exe)
        if by is not None and by != interpreter.package:
            return False  # the file at that path is the diverter's (or the administrator's)
        return self.owns(interpreter.package, exe)

    # -- what changed, and when

    @cached_property
    def _first_events(self) -> dict[str, tuple[int, str]]:
        return transaction.first_events(self.history) if self.history else {}

    def _old(self, package: str) -> frozenset[str] | None:
        """A package's files before its last apt transaction (the hook's snapshot); None: not known."""
        if package not in self._old_files:
            old = transaction.old_files(self.history, frozenset({package}), self.db.aliases) if self.history else {}
            self._old_files[package] = frozenset(old) or None
        return self._old_files[package]

    @cached_property
    def last_change(self) -> float:
        """When dpkg last wrote its database (status, or a journal entry in updates/)."""
        times = [0.0]
        for name in ("status", "updates"):
            try:
                times.append(os.stat(self.db.admindir / name).st_mtime)
            except OSError:
                continue
        return max(times)

    @cached_property
    def _unpacked(self) -> tuple[list[float], list[str]]:
        """When dpkg last unpacked each package (in scope), oldest first: the mtime of its .list."""
        info = f"{self.db.admindir}/info"
        times: dict[str, float] = {}

        def note(name: str, mtime: float) -> None:
            base = name.partition(":")[0]
            times[base] = max(mtime, times.get(base, mtime))

        if self.in_scope is not None:
            for name in set(self.in_scope.values()):
                try:
                    note(name, os.stat(f"{info}/{name}.list").st_mtime)
                except (OSError, ValueError):
                    continue  # removed by the transaction: nothing left to run old code of
        else:
            try:
                with os.scandir(info) as entries:
                    for e in entries:
                        if e.name.endswith(".list"):
                            try:
                                note(e.name[:-5], e.stat().st_mtime)
                            except OSError:
                                continue
            except OSError:
                pass
        ordered = sorted((t, n) for n, t in times.items())
        return [t for t, _ in ordered], [n for _, n in ordered]

    def changed_after(self, start: float) -> list[str]:
        """Packages (without architecture) unpacked after ``start`` (plus the tolerance)."""
        if self.last_change <= start + self.tolerance:
            return []  # dpkg has not run since: nothing to look up
        times, names = self._unpacked
        return names[bisect.bisect_right(times, start + self.tolerance):]

    def modules(self, interpreter: Interpreter, package: str) -> tuple[str, ...]:
        """The module files ``package`` ships on the interpreter's search path, sorted.

        Code only (:data:`MODULE_SUFFIXES`: source modules and C extensions), never metadata
        (``PKG-INFO``, ``Makefile``) or a directory.
        """
        pattern = search_path(interpreter)
        suffixes = MODULE_SUFFIXES.get(interpreter.family)
        if pattern is None or suffixes is None:
            return ()
        key = (pattern.pattern, package)
        if key not in self._modules:
            files = self.files(package)
            parents = {posixpath.dirname(f) for f in files}
            self._modules[key] = tuple(sorted(f for f in files if f not in parents and pattern.match(f)
                                              and _is_module(f, suffixes)))
        return self._modules[key]

    def changed_modules(self, interpreter: Interpreter, start: float) -> dict[str, str]:
        """Module packages of this interpreter unpacked after ``start``: package -> one of its module files
        that the process can have loaded and whose content changed.

        Only files that existed when the process started count: a package first installed
        after it (the journal's first event for it) contributes nothing, and of an upgraded
        package only the files of its old file list (kept by apt's hook) count.  Files
        replaced by identical content do not count either.
        """
        if interpreter.family not in INFER_MODULES:
            return {}
        found = {}
        for package in self.changed_after(start):
            when, event = self._first_events.get(package, (0, ""))
            if event == "install" and when > start:
                continue  # none of it existed when the process started
            old = self._old(package)
            files = [f for f in self.modules(interpreter, package)
                     if not (f in self.unchanged and start >= self.unchanged[f]) and (old is None or f in old)]
            if files:
                found[package] = files[0]
        return found

    # -- what an unowned script imports (restart.imports reads it; here: which packages ship those modules)

    def wants_imports(self, interpreter: Interpreter, start: float, path: str | None) -> bool:
        """Read a process's imports only when it matters: its script is nobody's (or it runs
        command-line code) and a module package of its interpreter changed after it started."""
        if interpreter.family not in INFER_MODULES:
            return False
        if path is not None and not self.db.canonical(path).startswith(self.unowned):
            return False
        return bool(self.changed_modules(interpreter, start))

    @cached_property
    def _module_dirs(self) -> dict[str, tuple[str, ...]]:
        """Debian's default module directories per family, as they exist on this root."""
        root = str(self.db.root).rstrip("/")

        def existing(*patterns: str) -> tuple[str, ...]:
            found: list[str] = []
            for pattern in patterns:
                found += sorted(p[len(root):] for p in glob.glob(root + pattern) if os.path.isdir(p))
            return tuple(found)

        return {
            PERL: existing("/etc/perl", "/usr/share/perl5", "/usr/lib/*/perl5/*", "/usr/lib/*/perl-base",
                           "/usr/lib/*/perl/*", "/usr/share/perl/*"),
            RUBY: existing("/usr/lib/ruby/vendor_ruby", "/usr/lib/ruby/vendor_ruby/*", "/usr/lib/ruby/*",
                           "/usr/lib/*/ruby/vendor_ruby/*", "/usr/lib/*/ruby/*"),
            NODE: existing("/usr/share/nodejs", "/usr/lib/nodejs", "/usr/lib/*/nodejs"),
        }

    def _module_paths(self, interpreter: Interpreter, name: str) -> list[str]:
        """Where Debian's default search path finds module ``name`` (files or package directories)."""
        family = interpreter.family
        if family == PYTHON:
            top = name.split(".")[0]
            dirs = ("/usr/lib/python3/dist-packages", f"/usr/lib/python{interpreter.version}",
                    f"/usr/lib/python{interpreter.version}/lib-dynload")
            out = []
            for d in dirs:
                out += [f"{d}/{top}/__init__.py", f"{d}/{top}.py", f"{d}/{top}"]
                out += [f"{d}/{n}" for n in self._listing(d) if n.startswith(top + ".") and n.endswith(".so")]
            return out
        if family == PERL:
            rel = name.replace("::", "/") + ".pm"
            return [f"{d}/{rel}" for d in self._module_dirs[PERL]]
        if family == RUBY:
            return [f"{d}/{name}{ext}" for d in self._module_dirs[RUBY] for ext in (".rb", ".so")]
        if family == NODE:
            if name.startswith("/"):
                return [name, f"{name}.js", f"{name}/index.js"]
            parts = name.removeprefix("node:").split("/")
            top = "/".join(parts[:2]) if name.startswith("@") else parts[0]
            return [f"{d}/{top}{ext}" for d in self._module_dirs[NODE] for ext in ("", ".js")]
        return []

    def _listing(self, directory: str) -> tuple[str, ...]:
        if directory not in self._listings:
            try:
                self._listings[directory] = tuple(os.listdir(f"{str(self.db.root).rstrip('/')}{directory}"))
            except OSError:
                self._listings[directory] = ()
        return self._listings[directory]

    def import_closure(self, interpreter: Interpreter, names: Iterable[str]) -> frozenset[str]:
        """The packages a script importing ``names`` can run code of: the packages that ship those
        modules on Debian's path and the interpreter's own, with their dependency closures."""
        root = str(self.db.root).rstrip("/")
        paths = []
        for name in sorted(names):
            found = next((p for p in self._module_paths(interpreter, name) if os.path.lexists(root + p)), None)
            if found is not None:
                paths.append(self.db.canonical(found))
        owners = set(self.db.owners(paths).values()) | {interpreter.package}
        return frozenset().union(*(self.closure(p) for p in owners))

    # -- dependencies

    @cached_property
    def graph(self) -> PackageGraph:
        try:
            text = (self.db.admindir / "status").read_bytes()
        except OSError:
            text = b""
        return parse_status(text)

    def closure(self, package: str) -> frozenset[str]:
        base = package.partition(":")[0]
        if base not in self._closures:
            self._closures[base] = closure(self.graph, base)
        return self._closures[base]

    @cached_property
    def _reverse(self) -> dict[str, set[str]]:
        """Installed package -> the installed packages that depend on it (through virtual names too)."""
        graph = self.graph
        reverse: dict[str, set[str]] = {}
        for package, deps in graph.depends.items():
            for name in deps:
                for target in graph.provides.get(name, frozenset()) | ({name} if name in graph.depends else set()):
                    reverse.setdefault(target, set()).add(package)
        return reverse

    def dependents(self, packages: frozenset[str]) -> frozenset[str]:
        """``packages`` and every package whose dependency closure holds one of them."""
        if packages not in self._dependents:
            seen = set(packages)
            todo = list(packages)
            while todo:
                for p in self._reverse.get(todo.pop(), ()):
                    if p not in seen:
                        seen.add(p)
                        todo.append(p)
            self._dependents[packages] = frozenset(seen)
        return self._dependents[packages]

    def owner(self, path: str, candidates: frozenset[str]) -> str | None:
        """The package that owns ``path``, looked for among ``candidates`` only.

        None: no package owns it (in scope, or under a prefix no package installs into).
        :data:`OUTSIDE`: not one of the candidates, owned or not; the candidates are the
        packages whose dependency closure holds a changed module package, so a script
        outside them cannot depend on one.  (A search of every list, 8 MB, would tell an
        unowned file in a package directory from another package's: not worth it here.)
        """
        canonical = self.db.canonical(path)
        if self.in_scope is not None and canonical in self.in_scope:
            return self.in_scope[canonical]
        if canonical.startswith(self.unowned):
            return None
        key = (canonical, candidates)
        if key not in self._owners:
            if canonical in self._diverted:
                found: str | None = self.db.owners([canonical]).get(canonical) or OUTSIDE
            else:
                found = next((p for p in sorted(candidates) if self.owns(p, canonical)), OUTSIDE)
            self._owners[key] = found
        return self._owners[key]


def findings(obs: Observation, ctx: Context, stale: Sequence[StaleFile] = ()) -> tuple[StaleFile, ...]:
    """The script and module findings of one genuine interpreter process (see the module's rules).

    ``stale`` is what the scan found for the process (mappings, open files): those on the
    script or on the search path prove use and become ``script``/``module`` findings.
    """
    out: dict[str, StaleFile] = {}
    pattern = search_path(obs.interpreter)
    script = ctx.db.canonical(obs.path) if obs.path else None
    proven: set[str] = set()
    for s in stale:
        path = ctx.db.canonical(s.path)
        if s.kind == FD and path == script:
            out[s.path] = StaleFile(SCRIPT, s.path, s.confidence, s.evidence)
        elif s.kind in (CODE, DATA, FD) and pattern is not None and pattern.match(path):
            out[s.path] = StaleFile(MODULE, s.path, s.confidence, s.evidence)
            proven.add(path)
    if obs.path is not None and obs.path not in out:
        if obs.held in (REPLACED, UNLINKED):
            out[obs.path] = StaleFile(SCRIPT, obs.path, CERTAIN, Evidence(obs.held))
        elif obs.held != FRESH and obs.ctime is not None and obs.ctime > obs.start + ctx.tolerance:
            out[obs.path] = StaleFile(SCRIPT, obs.path, LIKELY, NEWER)
    changed = ctx.changed_modules(obs.interpreter, obs.start)
    if changed:
        owner = ctx.owner(obs.path, ctx.dependents(frozenset(changed))) if obs.path else None
        if owner == OUTSIDE:
            changed = {}
        elif owner is not None:
            within = ctx.closure(owner)
            changed = {p: f for p, f in changed.items() if p in within}
        elif obs.imports is not None and obs.imports.problem is None:
            within = ctx.import_closure(obs.interpreter, obs.imports.names)
            changed = {p: f for p, f in changed.items() if p in within}
        evidence = DEPENDS if owner else IMPORTS if obs.imports and obs.imports.problem is None else SEARCH_PATH
        for package, path in sorted(changed.items()):
            files = ctx.files(package)
            if path not in out and not proven & files:
                out[path] = StaleFile(MODULE, path, LIKELY, evidence)
    return tuple(sorted(out.values(), key=lambda s: (-STRENGTH[s.kind], s.path)))


def judge(observations: Iterable[Observation], ctx: Context,
          stale: Mapping[int, Sequence[StaleFile]] | None = None) -> dict[int, tuple[StaleFile, ...]]:
    """Findings per PID; observations whose executable its expected package does not own are dropped."""
    result = {}
    for obs in observations:
        if ctx.genuine(obs.interpreter):
            found = findings(obs, ctx, (stale or {}).get(obs.pid, ()))
            if found:
                result[obs.pid] = found
    return result


def merge(stale: Iterable[StaleFile], extra: Iterable[StaleFile]) -> tuple[StaleFile, ...]:
    """One finding per path (the more specific kind, then the surer), ordered as the scan orders them."""
    best: dict[str, StaleFile] = {}
    for item in (*stale, *extra):
        old = best.get(item.path)
        if old is None or (STRENGTH[item.kind], item.confidence == CERTAIN) > (
                STRENGTH[old.kind], old.confidence == CERTAIN):
            best[item.path] = item
    return tuple(sorted(best.values(), key=lambda s: (-STRENGTH[s.kind], s.path)))


# ---------------------------------------------------------------------------- entry points

def detect(proc: Path, pid: int, exe: str | None, ctx: Context,
           stale: Sequence[StaleFile] = ()) -> tuple[StaleFile, ...]:
    """The extra findings of one process, opening ``proc/PID`` itself (``exe`` read if None).

    For callers without the scanner's directory handle; the scanner should rather call
    :func:`observe` with its own and :func:`judge` once after the scan.
    """
    try:
        dfd = os.open(proc / str(pid), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return ()
    try:
        obs = observe(dfd, pid, exe if exe is not None else exe_of(dfd), ctx.host)
    except (ProcessGone, OSError):
        return ()
    finally:
        os.close(dfd)
    return judge([obs], ctx, {pid: stale}).get(pid, ()) if obs is not None else ()


def scan(proc: Path, ctx: Context, *, pids: Iterable[int] | None = None,
         stale: Mapping[int, Sequence[StaleFile]] | None = None) -> dict[int, tuple[StaleFile, ...]]:
    """A pass of its own over ``proc`` (until the scanner calls :func:`observe`): findings per PID."""
    try:
        me = int(os.readlink(proc / "self"))
    except (OSError, ValueError):
        me = -1
    observations = []
    procfd = os.open(proc, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        candidates = sorted(pids) if pids is not None else sorted(int(n) for n in os.listdir(procfd) if n.isdigit())
        for pid in candidates:
            if pid == me:
                continue
            try:
                dfd = os.open(str(pid), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=procfd)
            except OSError:
                continue
            try:
                obs = observe(dfd, pid, exe_of(dfd), ctx.host)
            except (ProcessGone, OSError):
                continue  # gone, or unreadable
            finally:
                os.close(dfd)
            if obs is not None:
                observations.append(obs)
    finally:
        os.close(procfd)
    return judge(observations, ctx, stale)
