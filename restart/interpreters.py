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
  grammar (:func:`restart.grammars.script_of`), and is looked at inside the process's root with
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

Costs: :func:`restart.observation.observe` reads ``cmdline`` and ``stat`` (and stats the
script) only for processes that map an interpreter's own executable (the scanner's hint,
:data:`restart.grammars.MAPPED_HINTS`).  :class:`Context` reads nothing until asked,
and nothing but two inodes' times when dpkg has not run since the interpreters started;
otherwise the dpkg status file (3 ms for 900 packages), the ``.list`` mtimes, and the
lists of the few packages that matter, never all of them.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path

from restart import transaction
from restart.grammars import (
    INFER_MODULES,
    MODULE_SUFFIXES,
    NODE,
    PERL,
    PYTHON,
    RUBY,
    Interpreter,
    _is_module,
    search_path,
)
from restart.observation import FRESH, REPLACED, UNLINKED, Host, Observation
from restart.packages import DpkgDatabase, PackageGraph, closure, fs_encode, list_paths, spellings
from restart.processes import CERTAIN, CODE, DATA, EXE, FD, LIKELY, Evidence, FileKind, StaleFile

SCRIPT, MODULE = FileKind.SCRIPT, FileKind.MODULE
NEWER, DEPENDS, SEARCH_PATH, IMPORTS = Evidence.NEWER, Evidence.DEPENDS, Evidence.SEARCH_PATH, Evidence.IMPORTS

# Seconds by which a change must follow a process's start to count: the start is known to
# a clock tick (10 ms), file times are jiffy-coarse, and a change in the same instant as the
# start (a service restarted by the postinst of the package it runs) must never count.
TOLERANCE = 0.25

# One finding per path: the more specific kind wins (a mapped C extension is a module).
STRENGTH = {EXE: 5, SCRIPT: 4, MODULE: 3, CODE: 2, DATA: 1, FD: 0}


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
        self._files: dict[str, frozenset[str]] = {}
        self._modules: dict[tuple[str, str], tuple[str, ...]] = {}
        self._with_modules: dict[tuple[str, str, int], list[str]] = {}
        self._closures: dict[str, frozenset[str]] = {}
        self._dependents: dict[frozenset[str], frozenset[str]] = {}
        self._owners: dict[tuple[str, frozenset[str]], str | None] = {}
        self._genuine: dict[Interpreter, bool] = {}
        self._proofs: dict[tuple[tuple[StaleFile, ...], str | None, str | None],
                           tuple[dict[str, StaleFile], frozenset[str]]] = {}

    def owns(self, package: str, path: str) -> bool:
        """Does ``package``'s list name ``path`` (canonical), in any merged-/usr spelling?"""
        data = self.db.package_list(package)
        return any(b"\n" + fs_encode(s) + b"\n" in data for s in spellings(path, self.db.aliases))

    def files(self, package: str) -> frozenset[str]:
        """A package's paths, canonical (directories included)."""
        base = package.partition(":")[0]
        if base not in self._files:
            self._files[base] = frozenset(list_paths(self.db.package_list(base), self.db.aliases))
        return self._files[base]

    @cached_property
    def _diverted(self) -> dict[str, str]:
        return {d.path: d.by for d in self.db.diversions}

    def genuine(self, interpreter: Interpreter) -> bool:
        """Is the executable the expected package's own file (not diverted, not someone else's)?  Asked once
        per interpreter (a host runs many processes of the same one)."""
        if interpreter not in self._genuine:
            exe = self.db.canonical(interpreter.exe)
            by = self._diverted.get(exe)
            # Diverted: the file at that path is the diverter's (or the administrator's).
            self._genuine[interpreter] = by in (None, interpreter.package) and self.owns(interpreter.package, exe)
        return self._genuine[interpreter]

    def proof(self, stale: tuple[StaleFile, ...], pattern: re.Pattern[str] | None,
              script: str | None) -> tuple[dict[str, StaleFile], frozenset[str]]:
        """What a process's own ``stale`` files prove (see :func:`findings`): findings on its ``script``
        (canonical) and modules on the search path ``pattern``, and those modules' canonical paths.  The
        same for every process of an interpreter that maps the same files: worked out once."""
        key = (stale, None if pattern is None else pattern.pattern, script)
        if key not in self._proofs:
            out: dict[str, StaleFile] = {}
            proven: set[str] = set()
            for s in stale:
                path = self.db.canonical(s.path)
                if s.kind == FD and path == script:
                    out[s.path] = StaleFile(SCRIPT, s.path, s.confidence, s.evidence)
                elif s.kind in (CODE, DATA, FD) and pattern is not None and pattern.match(path):
                    out[s.path] = StaleFile(MODULE, s.path, s.confidence, s.evidence)
                    proven.add(path)
            self._proofs[key] = out, frozenset(proven)
        return self._proofs[key]

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
        names = None if self.in_scope is None else set(self.in_scope.values())
        ordered = sorted((t, n) for n, t in self.db.unpack_times(names).items())
        return [t for t, _ in ordered], [n for _, n in ordered]

    def changed_after(self, start: float) -> list[str]:
        """Packages (without architecture) unpacked after ``start`` (plus the tolerance)."""
        if self.last_change <= start + self.tolerance:
            return []  # dpkg has not run since: nothing to look up
        import bisect  # only here: most runs look at no interpreted program

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
        if key not in self._modules and not _loose(pattern.pattern).search(
                self.db.package_list(package.partition(":")[0])):
            self._modules[key] = ()  # not a line of its lists lies there (most packages: libraries)
        if key not in self._modules:
            files = self.files(package)
            parents = {posixpath.dirname(f) for f in files}
            self._modules[key] = tuple(sorted(f for f in files if f not in parents and pattern.match(f)
                                              and _is_module(f, suffixes)))
        return self._modules[key]

    def _module_packages_after(self, interpreter: Interpreter, start: float) -> list[str]:
        """Of the packages unpacked after ``start``, those with modules on the interpreter's path.

        The same for every process started between the same two unpacks: worked out once per
        interval, so that a host of many interpreters after a library upgrade (packages without
        modules) pays a lookup per process.
        """
        after = self.changed_after(start)  # a tail of one list: its length says which
        key = (interpreter.family, interpreter.version, len(after))
        if key not in self._with_modules:
            self._with_modules[key] = [p for p in after if self.modules(interpreter, p)]
        return self._with_modules[key]

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
        for package in self._module_packages_after(interpreter, start):
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
        import glob  # only here: most runs look at no interpreted program (0.3 ms of every run's imports)

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

    @property
    def graph(self) -> PackageGraph:
        return self.db.graph

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


@functools.cache
def _loose(search: str) -> re.Pattern[bytes]:
    """A search path's directories as they may stand in a ``.list`` before merged-/usr aliasing
    (``/lib/...`` for ``/usr/lib/...``): whatever the search path matches contains a match of this."""
    return re.compile(search.replace("/usr/", "/").encode())


def findings(obs: Observation, ctx: Context, stale: Sequence[StaleFile] = ()) -> tuple[StaleFile, ...]:
    """The script and module findings of one genuine interpreter process (see the module's rules).

    ``stale`` is what the scan found for the process (mappings, open files): those on the
    script or on the search path prove use and become ``script``/``module`` findings.
    """
    proved, proven = ctx.proof(tuple(stale), search_path(obs.interpreter),
                               ctx.db.canonical(obs.path) if obs.path else None)
    out = dict(proved)
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
