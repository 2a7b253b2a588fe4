"""Stage 2b, interpreters: what ``/proc`` says about one interpreter process (facts, no judgement).

Read through the scanner's own ``/proc/PID`` directory handle, each fact once: the command line
and start time of a process whose executable is an interpreter path, its script resolved inside
the process's root with ``lstat`` only (never opened for reading, never executed), whether the
process holds that script open, and, only when :mod:`restart.interpreters` says it matters, what an
unowned script imports (:mod:`restart.imports`, read as the process's user).  The environment is
never read.
"""

from __future__ import annotations

import os
import posixpath
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from restart import TYPE_CHECKING, NamedTuple
from restart.grammars import NODE, PERL, PYTHON, RUBY, Interpreter, Script, interpreter_of, module_files, script_of
from restart.packages import fs_decode, fs_encode
from restart.processes import Evidence
from restart.procfs import STARTTIME, read_proc, stat_fields

if TYPE_CHECKING:  # imported when an unowned script's imports are read (most runs read none)
    from restart.imports import Imports

REPLACED, UNLINKED, FRESH = Evidence.REPLACED, Evidence.UNLINKED, "fresh"  # what a held script says
MAX_SYMLINKS = 40  # as the kernel: more is a loop

# Never walked into: no package ships a script there, and procfs links (/proc/self,
# /dev/fd -> /proc/self/fd) would name the reader's files, not the process's.
_VIRTUAL = frozenset({"proc", "sys", "dev"})
_DELETED = " (deleted)"


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


def facts() -> tuple[type, ...]:
    """The classes an :class:`Observation` is made of: what a scan on two cores rebuilds the
    observations of its forked child's half from (:func:`restart.processes.scan`'s ``facts``)."""
    from restart.imports import Imports

    return Observation, Interpreter, Script, Imports


def start_ticks(stat_text: bytes) -> int:
    """Field 22 of ``/proc/PID/stat``; the name field before it may hold spaces and parentheses."""
    return int(stat_fields(stat_text)[STARTTIME])


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
    from restart.imports import Imports, Reader, Source, gather, identity_of

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
    already has it.  Raises :class:`procfs.ProcessGone` when the process exits
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
