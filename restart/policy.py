"""Stage 4, policy: declarative rules and settings (TOML, never code).

Files, in the order they are consulted for rules (the first matching rule wins):
the administrator's ``/etc/restartctl/policy.toml``, then its drop-ins
``/etc/restartctl/policy.d/*.toml`` (in name order), then the vendor defaults
``/usr/share/restartctl/policy.toml``.  Settings (``[settings]``) are taken from
the most specific file that sets them: a drop-in over ``policy.toml`` over the
vendor file.  A policy file that a user other than root could have written (not
root-owned, group- or world-writable, or a symlink) is refused: it decides what
root restarts.
"""

from __future__ import annotations

import math
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from fnmatch import fnmatchcase
from pathlib import Path

from restart import TYPE_CHECKING, NamedTuple, fsutil
from restart.processes import Evidence, FileKind
from restart.units import SYSTEM, UNIT_TYPES, USER

if TYPE_CHECKING:
    from typing import Any


class Act(StrEnum):
    """What is done about a unit (``action`` of a rule, ``actions[].action`` in the JSON)."""

    RESTART = "restart"
    TRY_RESTART = "try-restart"
    RELOAD_OR_RESTART = "reload-or-restart"
    DEFER = "defer"      # left for a person: restarting it needs care
    IGNORE = "ignore"    # not even pending
    NOTIFY = "notify"    # told to the user (or admin) whose it is
    REEXEC = "reexec"    # PID 1's or a user manager's daemon-reexec
    REBOOT = "reboot"    # only a reboot resolves it
    EXEC = "exec"        # the administrator's command


ACTIONS: tuple[Act, ...] = tuple(Act)
SCOPES = ("system", "user", "any")
MODES = ("auto", "ask", "list")
KINDS: tuple[FileKind, ...] = tuple(FileKind)
MAX_BYTES = 1 << 20  # a policy file is a few kB; a bigger one is a mistake, refused before it is parsed
EVIDENCE: tuple[Evidence, ...] = tuple(Evidence)
RULE_KEYS = {"unit", "scope", "package", "action", "exec", "reason"}


class PolicyError(Exception):
    """A policy file that cannot be used; the message names the file, the line and the key."""


class Settings(NamedTuple):
    """Global behaviour; every field has a vendor default and may be set by the administrator."""

    mode: str = "auto"              # interactive runs (a terminal): auto | ask | list
    unattended_mode: str = "auto"   # no terminal, DEBIAN_FRONTEND=noninteractive, unattended-upgrades
    timeout: float = 30.0           # seconds one restart (and its verification) may take
    verify: bool = True             # re-check each restarted unit: active again, nothing stale left
    settle: float = 3.0             # seconds a restarted unit must then stay up (same main PID), 0: off
    max_failures: int = 3           # circuit breaker: stop after this many failed restarts in one run
    max_parallel: int = 128         # system services restarted together in one wave, after a canary; 1: one by one
    hook_budget: float = 120.0      # seconds a hook run may take (its watchdog), unless --budget says otherwise
    restart_on: tuple[str, ...] = ("exe", "code", "script", "module")  # other kinds are listed only
    # Findings with this evidence are listed only: a module guessed from the whole search path
    # because the script's imports could not be read.
    list_evidence: tuple[str, ...] = ("search-path",)
    restart_first: tuple[str, ...] = ()  # unit globs restarted before all others
    restart_last: tuple[str, ...] = ()   # unit globs restarted after all others
    ask_default: str = "yes"        # what Enter answers at the ask prompt: yes | no
    ignore_exe: tuple[str, ...] = ()  # globs over executable paths: units only such programs make stale are ignored
    quiet: bool = False             # the hook shows only what needs someone (failures, the next step)
    notify_users: bool = True       # tell logged-in users about what only they can restart


_SETTING_TYPES: dict[str, type] = {"mode": str, "unattended_mode": str, "timeout": float, "verify": bool,
                                   "settle": float, "max_failures": int, "max_parallel": int,
                                   "hook_budget": float, "restart_on": tuple, "list_evidence": tuple,
                                   "restart_first": tuple, "restart_last": tuple, "ask_default": str,
                                   "ignore_exe": tuple, "quiet": bool, "notify_users": bool}


class Rule(NamedTuple):
    units: tuple[str, ...]     # globs over unit names; empty matches every unit
    scope: str                 # system | user | any
    packages: tuple[str, ...]  # globs over package names; empty matches any package
    action: Act
    reason: str
    source: str                # "file:LINE": where the rule is, for explain and reports
    argv: tuple[str, ...] = ()  # the administrator's command, for action "exec"

    def matches(self, unit: str, scope: str, packages: Iterable[str]) -> bool:
        if self.scope != "any" and self.scope != scope:
            return False
        if self.units and not any_matches(unit, self.units):
            return False
        if self.packages:
            names = [p.partition(":")[0] for p in packages]
            return any(any_matches(n, self.packages) for n in names)
        return True


def glob_matches(name: str, glob: str) -> bool:
    """``fnmatchcase``, without compiling a pattern for a glob it can be told without: one with no wildcard
    (most of the vendor rules' unit names: 65 patterns compiled, 5 ms of every run before its first
    restart), or with ``*`` its only one (``systemd-*``, ``*@*.service``: the vendor rules' 17 were 1 ms
    more), whose pieces are found in order, the first at the start and the last at the end."""
    if "?" in glob or "[" in glob:
        return fnmatchcase(name, glob)
    if "*" not in glob:
        return name == glob
    first, *middle, last = glob.split("*")
    if len(name) < len(first) + len(last) or not name.startswith(first) or not name.endswith(last):
        return False
    at, end = len(first), len(name) - len(last)
    for piece in middle:
        at = name.find(piece, at, end)
        if at < 0:
            return False
        at += len(piece)
    return True


# A rule's globs -> those without a wildcard (names: one set lookup for all of them) and the others.
_PLAIN: dict[tuple[str, ...], tuple[frozenset[str], tuple[str, ...]]] = {}


def any_matches(name: str, globs: tuple[str, ...]) -> bool:
    """Whether one of ``globs`` matches ``name`` (:func:`glob_matches`): the plain names among them are
    looked up in a set, split from the rest once per tuple (the vendor rules' 65 unit globs, 48 of them
    names, were 1,950 calls for 30 stale units, 0.3 ms before the first restart)."""
    try:
        plain, wild = _PLAIN[globs]
    except KeyError:
        plain = frozenset(g for g in globs if "*" not in g and "?" not in g and "[" not in g)
        wild = tuple(g for g in globs if g not in plain)
        _PLAIN[globs] = plain, wild
    return name in plain or any(glob_matches(name, g) for g in wild)


class Policy(NamedTuple):
    rules: tuple[Rule, ...] = ()
    settings: Settings = Settings()
    sources: tuple[tuple[str, str], ...] = ()  # (setting, file) for every setting a file set

    def decide(self, unit: str, scope: str, packages: Iterable[str]) -> Rule | None:
        pkgs = list(packages)
        for rule in self.rules:
            if rule.matches(unit, scope, pkgs):
                return rule
        return None


def rule_header(line: str) -> bool:
    """Whether ``line`` begins with a ``[[rule]]`` header (whitespace before it and around ``rule``), as
    ``\\s*\\[\\[\\s*rule\\s*\\]\\]`` would match it: told without compiling that pattern (0.14 ms of
    every run that reads a policy, before its first restart)."""
    rest = line.lstrip()
    if not rest.startswith("[["):
        return False
    rest = rest[2:].lstrip()
    return rest.startswith("rule") and rest[4:].lstrip().startswith("]]")


def _rule_lines(text: str) -> list[int]:
    """The line number of each ``[[rule]]`` header, in order: every rule's source at once (one pass,
    not one from the top per rule: 0.2 ms of every hook run for the vendor's 40 rules)."""
    return [n for n, line in enumerate(text.splitlines(), 1) if rule_header(line)]


def _line_of(text: str, table_index: int | None, key: str | None) -> int:
    """Line number of the ``table_index``-th ``[[rule]]`` (or of ``[settings]``) and its ``key``."""
    lines = text.splitlines()
    header: Callable[[str], object] = rule_header if table_index is not None else \
        re.compile(r"\s*\[\s*settings\s*\]").match
    seen, start = 0, 0
    for n, line in enumerate(lines):
        if header(line):
            seen += 1
            if table_index is None or seen == table_index:
                start = n
                break
    if key is not None:
        keyline = re.compile(rf"\s*{re.escape(key)}\s*=")
        for n in range(start + 1, len(lines)):
            if lines[n].lstrip().startswith("["):
                break
            if keyline.match(lines[n]):
                return n + 1
    return start + 1


def _globs(value: object) -> tuple[str, ...] | None:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def _toml(text: str, source: str) -> dict[str, Any]:
    import tomllib  # kept off the scan path (and, with a cache, off the hook's): ~10 ms to import

    try:
        return tomllib.loads(text)
    except ValueError as e:  # tomllib.TOMLDecodeError says "(at line N, column M)"
        raise PolicyError(f"{source}: {e}") from e
    except RecursionError as e:  # absurdly nested arrays or tables
        raise PolicyError(f"{source}: nested too deeply") from e


def parse(text: str, source: str, doc: dict[str, Any] | None = None) -> tuple[list[Rule], dict[str, Any]]:
    """The rules and the settings of one policy file (``doc``: its text as TOML, when already known)."""
    doc = _toml(text, source) if doc is None else doc
    unknown = set(doc) - {"rule", "settings"}
    if unknown:
        key = sorted(unknown)[0]
        line = next((n for n, t in enumerate(text.splitlines(), 1)
                     if re.match(rf"\s*(\[+\s*)?{re.escape(key)}\b", t)), 1)
        raise PolicyError(f"{source}:{line}: unknown table or key {key!r} (expected [settings] and [[rule]])")
    return _rules(doc.get("rule", []), text, source), _settings(doc.get("settings", {}), text, source)


def parse_rules(text: str, source: str) -> list[Rule]:
    """Only the rules of one policy file."""
    return parse(text, source)[0]


def _rules(raw_rules: object, text: str, source: str) -> list[Rule]:
    if not isinstance(raw_rules, list):
        raise PolicyError(f"{source}: 'rule' must be an array of tables ([[rule]])")
    rules = []
    at = _rule_lines(text)
    for n, raw in enumerate(raw_rules, 1):
        def fail(key: str | None, message: str, n: int = n) -> PolicyError:
            return PolicyError(f"{source}:{_line_of(text, n, key)}: rule #{n}: {message}")
        if not isinstance(raw, dict):
            raise fail(None, "not a table")
        unknown = set(raw) - RULE_KEYS
        if unknown:
            key = sorted(unknown)[0]
            raise fail(key, f"unknown key {key!r}")
        argv: tuple[str, ...] = ()
        if "exec" in raw:
            exec_argv = _globs(raw["exec"])
            if not isinstance(raw["exec"], list) or not exec_argv or not exec_argv[0].startswith("/"):
                raise fail("exec", "key 'exec' must be a list of strings starting with an absolute program path")
            if raw.get("action", Act.EXEC) != Act.EXEC:
                raise fail("action", "a rule with 'exec' has action \"exec\" (or none)")
            argv, action = exec_argv, Act.EXEC
        else:
            named = str(raw.get("action"))
            if named not in ACTIONS or named == Act.EXEC:
                raise fail("action", f"key 'action' must be one of {', '.join(a for a in ACTIONS if a != Act.EXEC)}"
                                     " (or give 'exec')")
            action = Act(named)
        scope = raw.get("scope", "any")
        if scope not in SCOPES:
            raise fail("scope", f"key 'scope' must be one of {', '.join(SCOPES)}")
        reason = raw.get("reason", "")
        if not isinstance(reason, str):
            raise fail("reason", "key 'reason' must be a string")
        globs = {}
        for key in ("unit", "package"):
            value = _globs(raw[key]) if key in raw else ()
            if value is None:
                raise fail(key, f"key {key!r} must be a string or a list of strings")
            never = next((g for g in value if key == "unit" and not _may_name_a_unit(g)), None)
            if never is not None:
                raise fail(key, f"unit {never!r} can never match: unit names end in a type such as "
                                f"'.service' (did you mean '{never}.service'?)")
            globs[key] = value
        rules.append(Rule(globs["unit"], scope, globs["package"], action, reason,
                          f"{source}:{at[n - 1] if n <= len(at) else 1}", argv))
    return rules


def _may_name_a_unit(glob: str) -> bool:
    """A unit glob that could match some unit name: it ends in a unit type, or in a wildcard."""
    return glob[-1:] in ("*", "?", "]") or glob.rpartition(".")[2] in UNIT_TYPES


def _settings(raw: object, text: str, source: str) -> dict[str, Any]:
    def fail(key: str, message: str) -> PolicyError:
        return PolicyError(f"{source}:{_line_of(text, None, key)}: settings: {message}")
    if not isinstance(raw, dict):
        raise PolicyError(f"{source}: 'settings' must be a table ([settings])")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        kind = _SETTING_TYPES.get(key)
        if kind is None:
            raise fail(key, f"unknown key {key!r}")
        if kind is tuple:
            items = _globs(value)
            if items is None:
                raise fail(key, f"key {key!r} must be a string or a list of strings")
            if key == "restart_on" and not set(items) <= set(KINDS):
                raise fail(key, f"key 'restart_on' takes kinds among {', '.join(KINDS)}")
            if key == "list_evidence" and not set(items) <= set(EVIDENCE):
                raise fail(key, f"key 'list_evidence' takes evidence among {', '.join(EVIDENCE)}")
            if key == "ignore_exe" and not all(g.startswith(("/", "*")) for g in items):
                raise fail(key, "key 'ignore_exe' takes globs over absolute executable paths")
            out[key] = items
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf \
                    or (value == 0 and key != "settle"):  # settle = 0 turns the settle time off
                raise fail(key, f"key {key!r} must be a positive, finite number of seconds")
            out[key] = float(value)
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise fail(key, f"key {key!r} must be a positive whole number")
            out[key] = value
        elif kind is bool:
            if not isinstance(value, bool):
                raise fail(key, f"key {key!r} must be true or false")
            out[key] = value
        else:
            allowed = ("auto", "list") if key == "unattended_mode" else ("yes", "no") if key == "ask_default" \
                else MODES
            if value not in allowed:
                raise fail(key, f"key {key!r} must be one of {', '.join(allowed)}")
            out[key] = value
    return out


def _trusted(path: Path, st: os.stat_result) -> None:
    why = fsutil.untrusted(st)
    if why is not None:
        raise PolicyError(f"{path}: must be owned by root and writable only by root ({why})")


def read_trusted(path: Path) -> str:
    """A policy file's text, refused if anyone but root could have written it or its directory
    (see :func:`fsutil.read_trusted`)."""
    try:
        data = fsutil.read_trusted(path, MAX_BYTES + 1)
    except fsutil.Untrusted as e:
        raise PolicyError(str(e)) from e
    except OSError as e:
        raise PolicyError(f"{path}: {e.strerror}") from e
    if len(data) > MAX_BYTES:
        raise PolicyError(f"{path}: larger than {MAX_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(f"{path}: not UTF-8 ({e})") from e


def trusted_program(argv: tuple[str, ...], source: str) -> None:
    """An ``exec`` rule's program is held to the rules of a policy file: it runs as root.

    The file it resolves to must be a regular file owned by root and writable only by
    root, and so must every directory on the way to it, through every symlink of the
    path as written (a user who may rename an entry of any of them could swap the program).
    """
    program = argv[0]
    real = os.path.realpath(program)
    parts = Path(program).parts
    directories = {os.path.realpath(os.path.join(*parts[:i])) for i in range(1, len(parts))}
    directories |= {str(p) for p in Path(real).parents}
    try:
        for directory in sorted(directories):
            _trusted(Path(directory), os.stat(directory))
        st = os.stat(real)
    except OSError as e:
        raise PolicyError(f"{source}: exec program {program}: {e.strerror}") from e
    except PolicyError as e:
        raise PolicyError(f"{source}: exec program {program}: {e}") from e
    if not stat.S_ISREG(st.st_mode):
        raise PolicyError(f"{source}: exec program {program}: not a regular file")
    try:
        _trusted(Path(real), st)
    except PolicyError as e:
        raise PolicyError(f"{source}: exec program {program}: {e}") from e


def files(etc: Path, data: Path) -> list[Path]:
    """The policy files, administrator's first; missing ones are simply absent.

    Drop-ins are ``policy.d/*.toml`` whose names do not start with a dot: editors leave
    hidden lock files and backups there (Emacs's ``.#10-site.toml`` is a dangling symlink).
    """
    admin = etc / "restartctl"
    dropins = (sorted(p for p in (admin / "policy.d").glob("*.toml") if not p.name.startswith("."))
               if (admin / "policy.d").is_dir() else [])
    return [p for p in (admin / "policy.toml", *dropins) if os.path.lexists(p)] + [data / "policy.toml"]


CACHE = "policy-cache.json"  # in the state directory (see :func:`load`)
_CACHE_KEY = f"restartctl policy cache 1, python {sys.version}"  # tomllib is part of the interpreter


def _cached(cache: Path | None) -> dict[str, Any]:
    """The documents a previous run parsed, by their exact text; none when there is no trusted cache."""
    if cache is None:
        return {}
    raw = fsutil.read_kept(cache, 64 * MAX_BYTES)
    docs = raw.get("docs") if isinstance(raw, dict) and raw.get("key") == _CACHE_KEY else None
    return docs if isinstance(docs, dict) else {}


def _keep(cache: Path, docs: dict[str, Any]) -> None:
    """Keep this run's documents for the next (root only, mode 0600, in a directory only root can write)."""
    if os.geteuid() == 0:  # (nothing when there is no state directory yet, or a TOML date is in a document)
        fsutil.keep(cache, {"key": _CACHE_KEY, "docs": docs}, mode=0o600)


def load(paths: Sequence[Path], cache: Path | None = None) -> Policy:
    """Rules from ``paths`` in order (first match wins).  Settings: the last file is the base
    (the vendor's) and the others override it in their order (main file, then drop-ins).

    ``cache`` (the hook's): a file where the TOML documents of the files' texts are kept, so
    that a run whose policy did not change needs no TOML parser (``tomllib`` is a tenth of a
    hook run with nothing to do).  Each file is still read and trusted, and checked in full, as
    without it; the cache only stands in for ``tomllib.loads`` of exactly the same text, and is
    itself trusted only as a policy file is (root's, writable only by root).
    """
    rules: list[Rule] = []
    layers: list[tuple[str, dict[str, Any]]] = []
    known = _cached(cache)
    docs: dict[str, Any] = {}
    for path in paths:
        if not os.path.lexists(path):
            continue
        text = read_trusted(path)
        doc = known.get(text)
        docs[text] = doc if isinstance(doc, dict) else _toml(text, str(path))
        file_rules, file_settings = parse(text, str(path), docs[text])
        for rule in file_rules:
            if rule.argv:
                trusted_program(rule.argv, rule.source)
        rules.extend(file_rules)
        layers.append((str(path), file_settings))
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, layer in layers[-1:] + layers[:-1]:
        for key, value in layer.items():
            merged[key] = value
            sources[key] = source
    policy = Policy(tuple(rules), Settings(**merged), tuple(sorted(sources.items())))
    if cache is not None and docs != known:
        _keep(cache, docs)
    return policy


def vendor(data: Path) -> Policy:
    """The vendor defaults shipped in ``data/policy.toml``."""
    return load([data / "policy.toml"])


def for_host(etc: Path, data: Path, cache: Path | None = None) -> Policy:
    """The administrator's policy over the vendor's (``cache``: see :func:`load`)."""
    return load(files(etc, data), cache)


def scope_of(kind: str) -> str:
    """The policy scope of a unit kind: user units are the user's, everything else the system's."""
    return USER if kind == USER else SYSTEM
