"""Stage 4, policy: declarative rules (TOML, never code) that say what to do with a unit.

The first matching rule wins; rules are read in order from the files given
(administrator's before the vendor's).  Rules match on the unit name (globs),
the scope (system or user) and the packages that left the unit stale.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import NamedTuple

from restart.units import SYSTEM, USER

ACTIONS = ("restart", "try-restart", "reload-or-restart", "defer", "ignore", "notify", "reexec", "reboot")
SCOPES = ("system", "user", "any")


class PolicyError(Exception):
    """A policy file that cannot be used; the message names the file and the key."""


class Rule(NamedTuple):
    units: tuple[str, ...]     # globs over unit names; empty matches every unit
    scope: str                 # system | user | any
    packages: tuple[str, ...]  # globs over package names; empty matches any package
    action: str
    reason: str
    source: str                # "file#N": where the rule came from, for explain

    def matches(self, unit: str, scope: str, packages: Iterable[str]) -> bool:
        if self.scope != "any" and self.scope != scope:
            return False
        if self.units and not any(fnmatchcase(unit, g) for g in self.units):
            return False
        if self.packages:
            names = [p.partition(":")[0] for p in packages]
            return any(fnmatchcase(n, g) for n in names for g in self.packages)
        return True


class Policy(NamedTuple):
    rules: tuple[Rule, ...] = ()

    def decide(self, unit: str, scope: str, packages: Iterable[str]) -> Rule | None:
        pkgs = list(packages)
        for rule in self.rules:
            if rule.matches(unit, scope, pkgs):
                return rule
        return None


def _globs(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise PolicyError(f"{where}: expected a string or a list of strings")


def parse_rules(text: str, source: str) -> list[Rule]:
    """The ``[[rule]]`` tables of one policy file."""
    import tomllib  # kept off the scan path: only plans read policy
    try:
        doc = tomllib.loads(text)
    except ValueError as e:  # tomllib.TOMLDecodeError
        raise PolicyError(f"{source}: {e}") from e
    raw_rules = doc.get("rule", [])
    if not isinstance(raw_rules, list):
        raise PolicyError(f"{source}: 'rule' must be an array of tables ([[rule]])")
    rules = []
    for n, raw in enumerate(raw_rules, 1):
        where = f"{source}: rule #{n}"
        if not isinstance(raw, dict):
            raise PolicyError(f"{where}: not a table")
        unknown = set(raw) - {"unit", "scope", "package", "action", "reason"}
        if unknown:
            raise PolicyError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        action = raw.get("action")
        if action not in ACTIONS:
            raise PolicyError(f"{where}: key 'action' must be one of {', '.join(ACTIONS)}")
        scope = raw.get("scope", "any")
        if scope not in SCOPES:
            raise PolicyError(f"{where}: key 'scope' must be one of {', '.join(SCOPES)}")
        reason = raw.get("reason", "")
        if not isinstance(reason, str):
            raise PolicyError(f"{where}: key 'reason' must be a string")
        rules.append(Rule(_globs(raw.get("unit"), f"{where}: key 'unit'"), scope,
                          _globs(raw.get("package"), f"{where}: key 'package'"), action, reason,
                          f"{source}#{n}"))
    return rules


def load(files: Sequence[Path]) -> Policy:
    """Rules from ``files`` in order; a file that does not exist is skipped."""
    rules: list[Rule] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as e:
            raise PolicyError(f"{path}: {e}") from e
        rules.extend(parse_rules(text, str(path)))
    return Policy(tuple(rules))


def vendor(data: Path) -> Policy:
    """The vendor defaults shipped in ``data/policy.toml``."""
    return load([data / "policy.toml"])


def scope_of(kind: str) -> str:
    """The policy scope of a unit kind: user units are the user's, everything else the system's."""
    return USER if kind == USER else SYSTEM
