"""Stage 2b, imports: what a script no package owns imports, read statically and never run.

A daemon in ``/usr/local/bin``, ``/opt`` or ``/home`` (or ``python3 -c CODE``) has no
package whose dependencies say which modules it uses.  Its source says it: this module
reads the script as data and extracts the modules it names, with each language's own
rules, and nothing more.  Nothing is executed, imported or evaluated; the process's
environment is never read (its search path is Debian's default one, see
:mod:`restart.interpreters`).

Reading rules (the file is the process owner's, and root reads it):

- inside the process's root only: a walk of ``O_PATH|O_NOFOLLOW`` directory handles from
  its ``/proc/PID/root``, every component a real directory (a symlink anywhere is refused,
  the script's own path was already resolved inside the root);
- the file is opened ``O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_NOCTTY`` only after ``lstat``
  said it is a regular file, and ``fstat`` must say so again (same inode): a FIFO, a
  device or a socket is never opened for reading, a swapped file is refused;
- at most :data:`MAX_BYTES` (a larger file, a 1 GB sparse one, is refused unread);
- readable by the process's own uid and groups (the mode bits of the file, and search
  permission on every directory on the way): root never reads for a user what she could
  not read herself;
- at most :data:`MAX_FILES` files per process (the script, ``-c`` code, local modules
  beside the script) and :data:`MAX_NODES` syntax nodes per Python file; Python's own
  parser bounds nesting (a ``SyntaxError``).

What cannot be read or parsed, and code that builds imports at run time (``exec``,
``eval``, ``__import__``/``importlib.import_module`` or ``require`` of a non-literal), is a
*problem*: the caller then falls back to every changed module package on the search path,
marked with its own evidence, and the vendor policy lists such findings instead of
restarting for them.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Callable

from restart import NamedTuple

MAX_BYTES = 1 << 20   # per file
MAX_FILES = 16        # per process: the script, -c code and local modules beside it
MAX_NODES = 200_000   # Python syntax nodes per file
PYTHON, PERL, RUBY, NODE = "python", "perl", "ruby", "node"


class Identity(NamedTuple):
    """Whose permissions a read must respect: the process's real uid and its groups."""

    uid: int
    gids: frozenset[int]


class Imports(NamedTuple):
    """The modules a script names, or why that is not known."""

    names: frozenset[str] = frozenset()   # module names (python: dotted; perl: Foo::Bar; ruby/node: as written)
    problem: str | None = None            # unreadable, unparseable, dynamic: the names are not all known


class Source(NamedTuple):
    text: bytes
    directory: str | None  # where local modules beside it are looked for (inside the root); None for -c code


def identity_of(status: bytes) -> Identity | None:
    """The real uid and every group of a process, from ``/proc/PID/status``."""
    uid: int | None = None
    gids: set[int] = set()
    for line in status.split(b"\n"):
        key, _, value = line.partition(b":")
        fields = value.split()
        try:
            if key == b"Uid" and fields:
                uid = int(fields[0])
            elif key == b"Gid" and fields:
                gids.add(int(fields[0]))
            elif key == b"Groups":
                gids.update(int(f) for f in fields)
        except ValueError:
            return None
    return Identity(uid, frozenset(gids)) if uid is not None else None


def _allows(st: os.stat_result, who: Identity, bit: int) -> bool:
    """The owner/group/other permission ``bit`` (4 read, 1 search) for that identity (ACLs aside)."""
    if who.uid == 0:
        return True
    if st.st_uid == who.uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid in who.gids:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)


def read_in_root(rootfd: int, path: str, who: Identity) -> bytes | str:
    """The bytes of ``path`` inside the root, under the reading rules; else why not (a str)."""
    parts = [p for p in path.split("/") if p]
    if not path.startswith("/") or not parts or any(p in (".", "..") for p in parts):
        return "not a plain absolute path"
    opened: list[int] = []
    try:
        here = rootfd
        for name in parts[:-1]:
            here = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=here)
            opened.append(here)
            if not _allows(os.fstat(here), who, 1):
                return "a directory on its path is not searchable by the process's user"
        st = os.stat(parts[-1], dir_fd=here, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_size > MAX_BYTES:
            return f"larger than {MAX_BYTES} bytes"
        if not _allows(st, who, 4):
            return "not readable by the process's user"
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                     dir_fd=here)
        opened.append(fd)
        again = os.fstat(fd)
        if not stat.S_ISREG(again.st_mode) or (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
            return "replaced while being read"
        data = os.read(fd, MAX_BYTES + 1)
        return data if len(data) <= MAX_BYTES else f"larger than {MAX_BYTES} bytes"
    except OSError as e:
        return f"cannot be read ({os.strerror(e.errno) if e.errno else e})"
    finally:
        for fd in opened:
            os.close(fd)


# ---------------------------------------------------------------------------- the languages

_PY_DYNAMIC = frozenset({"exec", "eval", "compile", "__import__"})


def python_imports(text: bytes) -> Imports:
    """``import a.b``, ``from a import b`` (absolute ones), and ``importlib.import_module("a")``
    with a literal; ``exec``/``eval`` or a computed import make the result a problem."""
    import ast  # only for an unowned script's imports: not on every run's path

    try:
        tree = ast.parse(text, mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        return Imports(problem=f"cannot be parsed ({type(e).__name__})")
    names: set[str] = set()
    for count, node in enumerate(ast.walk(tree)):
        if count > MAX_NODES:
            return Imports(problem=f"more than {MAX_NODES} syntax nodes")
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names if a.name != "*")
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if called in _PY_DYNAMIC or called == "import_module":
                arg = node.args[0] if node.args else None
                if called in ("import_module", "__import__") and isinstance(arg, ast.Constant) \
                        and isinstance(arg.value, str):
                    names.add(arg.value)
                else:
                    return Imports(problem=f"builds code or imports at run time ({called})")
    return Imports(frozenset(names))


# Patterns compiled when first used (re's own cache): most runs read no script at all.
_PERL_CODE_END = rb"(?m)^__(?:END|DATA)__\s*$"
_PERL_POD = rb"(?ms)^=[a-zA-Z].*?(?:^=cut\b.*?$|\Z)"
_PERL_USE = rb"\b(?:use|require|no)\s+([A-Za-z_][\w:]*|\S)"
_PERL_BASES = rb"\buse\s+(?:parent|base)\s+(?:-norequire\s*,\s*)?(?:qw\s*[(/\[{]([^)/\]}]*)|['\"]([\w:]+))"
_PERL_EVAL = rb"\beval\s*[\"'q$]|\bdo\s+[\"'$]"


def perl_imports(text: bytes) -> Imports:
    """``use Foo::Bar``, ``require Foo::Bar``, ``use parent``/``use base`` classes; pragmas
    (lowercase names) and version numbers are no modules; code after ``__END__`` and POD is not
    code; ``require $x``, string ``eval`` and ``do FILE`` make the result a problem."""
    code = re.split(_PERL_CODE_END, text, maxsplit=1)[0]
    code = re.sub(_PERL_POD, b"", code)
    code = re.sub(rb"(?m)^\s*#.*$", b"", code)
    names: set[str] = set()
    for m in re.finditer(_PERL_USE, code):
        word = m[1].decode("ascii", "replace")
        if word[:1].isdigit() or word == "v":
            continue
        if not re.fullmatch(r"[A-Za-z_][\w:]*", word):
            return Imports(problem="requires a module named at run time")
        if not word.islower():
            names.add(word)
    for m in re.finditer(_PERL_BASES, code):
        names.update(w.decode("ascii", "replace") for w in (m[1] or m[2] or b"").split() if w.strip(b"'\""))
    if re.search(_PERL_EVAL, code):
        return Imports(problem="builds code at run time (eval STRING or do FILE)")
    return Imports(frozenset(names))


_RUBY_REQ = rb"\b(require|require_relative|load|autoload)\b[ \t(]*(?::\w+\s*,\s*)?(\S)"
_RUBY_LITERAL = rb"""['"]([\w./+-]+)['"]"""


def ruby_imports(text: bytes) -> Imports:
    """``require "x"``, ``require_relative "x"`` (as ``./x``), ``load``, ``autoload``; a
    non-literal name or ``eval`` makes the result a problem.  Code after ``__END__`` is data."""
    code = re.split(rb"(?m)^__END__\s*$", text, maxsplit=1)[0]
    code = re.sub(rb"(?m)^\s*#.*$", b"", code)
    code = re.sub(rb"(?ms)^=begin\b.*?^=end\b", b"", code)
    names: set[str] = set()
    for m in re.finditer(_RUBY_REQ, code):
        literal = re.compile(_RUBY_LITERAL).match(code, m.start(2))
        if literal is None:
            return Imports(problem=f"{m[1].decode()} of a name built at run time")
        name = literal[1].decode("ascii", "replace")
        names.add(f"./{name}" if m[1] == b"require_relative" and not name.startswith(".") else name)
    if re.search(rb"\b(?:eval|instance_eval|class_eval)\s*[(\"']", code):
        return Imports(problem="builds code at run time (eval)")
    return Imports(frozenset(names))


_JS_REQ = (rb"""\brequire\s*\(\s*(\S)|\bimport\s*\(\s*(\S)|\bimport\s+(?:[\w*{}\s,$]+\s+from\s+)?(['"])"""
           rb"""|\bfrom\s+(['"])""")
_JS_LITERAL = rb"""['"`]([^'"`\s]+)['"`]"""


def node_imports(text: bytes) -> Imports:
    """``require("x")``, ``import ... from "x"``, ``import "x"``, ``import("x")``; a computed
    name or ``eval``/``new Function`` makes the result a problem."""
    code = re.sub(rb"(?m)^\s*//.*$", b"", text)
    names: set[str] = set()
    for m in re.finditer(_JS_REQ, code):
        start = next(m.start(i) for i in range(1, 5) if m[i] is not None)
        literal = re.compile(_JS_LITERAL).match(code, start)
        if literal is None or (literal[0][:1] == b"`" and b"${" in literal[0]):
            return Imports(problem="requires a module named at run time")
        names.add(literal[1].decode("utf-8", "replace"))
    if re.search(rb"\beval\s*\(|\bnew\s+Function\s*\(", code):
        return Imports(problem="builds code at run time (eval)")
    return Imports(frozenset(names))


PARSERS = {PYTHON: python_imports, PERL: perl_imports, RUBY: ruby_imports, NODE: node_imports}


def local_candidates(family: str, directory: str, name: str) -> tuple[str, ...]:
    """Files beside the script that ``name`` may mean (the script's own directory first, as the
    interpreters look there: Python's sys.path[0], Ruby's require_relative, Node's ./x)."""
    if family == PYTHON:
        rel = name.split(".")[0]
        return (f"{directory}/{rel}.py", f"{directory}/{rel}/__init__.py")
    if family == PERL:
        rel = name.replace("::", "/")
        return (f"{directory}/{rel}.pm", f"{directory}/lib/{rel}.pm")
    if name.startswith(("./", "../")):
        path = posixpath.normpath(posixpath.join(directory, name))
        if family == RUBY:
            return (path if path.endswith(".rb") else f"{path}.rb",)
        return (path, f"{path}.js", f"{path}/index.js")
    return ()


def gather(family: str, sources: list[Source], read: Callable[[str], bytes | str]) -> Imports:
    """The imports of the script (and ``-c`` code) and of the local modules beside it, bounded;
    a local module found is followed, not reported (no package ships it)."""
    parse = PARSERS.get(family)
    if parse is None:
        return Imports(problem=f"no import reader for {family}")
    names: set[str] = set()
    seen: set[str] = set()
    todo = list(sources)
    files = 0
    while todo:
        source = todo.pop()
        files += 1
        if files > MAX_FILES:
            return Imports(problem=f"more than {MAX_FILES} local files")
        found = parse(source.text)
        if found.problem is not None:
            return found
        for name in sorted(found.names):
            local = None
            for candidate in local_candidates(family, source.directory, name) if source.directory else ():
                if candidate in seen:
                    local = candidate
                    break
                data = read(candidate)
                if isinstance(data, bytes):
                    seen.add(candidate)
                    todo.append(Source(data, posixpath.dirname(candidate)))
                    local = candidate
                    break
            if local is None:
                if name.startswith(("./", "../")):
                    return Imports(problem=f"a local module {name!r} cannot be read")
                names.add(name)
    return Imports(frozenset(names))


class Reader:
    """Reads files inside one process's root as that process's user (see the module's rules)."""

    def __init__(self, rootfd: int, who: Identity) -> None:
        self.rootfd, self.who = rootfd, who

    def __call__(self, path: str) -> bytes | str:
        return read_in_root(self.rootfd, path, self.who)
