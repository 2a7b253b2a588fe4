"""Property-based tests (hypothesis) for every parser that reads user-controlled text, and for the plan.

Why: restartctl parses maps, status, cgroup paths, diversions and policy text as root; a crash is a
denial of service and a mis-parse can be a privilege problem.  These properties say what must hold
for *any* input: no exception beyond the documented ones, nothing unprintable reaches a terminal,
and no invalid or user-chosen unit name reaches a command line.  Runs are derandomized (the same
examples every time) and kept small so the suite stays fast.
"""

from __future__ import annotations

import contextlib
import re
import string
import unicodedata
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from restart import plan, policy, units
from restart.packages import fs_decode, parse_diversions
from restart.processes import Confidence, Evidence, FileKind, ProcessInfo, StaleFile, parse_map_line
from restart.procfs import parse_status
from restart.text import printable
from restart.units import (
    CONTAINER,
    INIT,
    NONE,
    SESSION,
    SYSTEM,
    UNIT_TYPES,
    USER,
    USER_MANAGER,
    Affected,
    OwnedFile,
    UnitGroup,
    UnitKind,
    cgroup_path,
    resolve,
    valid_init_script,
    valid_unit_name,
)

REPO = Path(__file__).resolve().parent.parent
SURROGATES: tuple[Literal["Cs"], ...] = ("Cs",)
FAST = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# Characters str.splitlines() treats as line ends (the kernel only forbids "\n" in cgroup names).
LINE_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
# Text that tends to matter to these parsers, mixed with anything at all.
INTERESTING = ("/", "\n", " ", ":", ".", "@", "-", "\\", "0::", "name=systemd", ".service", ".scope",
               ".slice", "user@", "user-", "session-", "init.scope", "machine-", "(deleted)", "\x1b",
               *LINE_BREAKS)
# Text as restartctl holds it: any character, and the surrogates fs_decode() uses for undecodable bytes.
ANY_CHAR = st.one_of(st.characters(blacklist_categories=SURROGATES), st.integers(0xDC80, 0xDCFF).map(chr))
any_text = st.lists(st.one_of(st.sampled_from(INTERESTING), ANY_CHAR), max_size=40).map("".join)
any_bytes = st.one_of(st.binary(max_size=400),
                      any_text.map(lambda t: t.encode("utf-8", "surrogateescape")))


# ---------------------------------------------------------------------------------- /proc parsers

@FAST
@given(any_bytes)
def test_parse_maps_never_raises(data: bytes) -> None:
    """Why: a process chooses its mapped file names; nothing in them may stop the scan."""
    for path, inode, _dev, executable in filter(None, map(parse_map_line, data.split(b"\n"))):
        assert path.startswith(b"/") and b"\n" not in path
        assert inode.isdigit() and inode != b"0"
        assert isinstance(executable, bool)


path_bytes = st.binary(min_size=1, max_size=120).filter(lambda b: b"\n" not in b)


@FAST
@given(st.lists(st.tuples(path_bytes, st.integers(1, 2**64 - 1), st.sampled_from(["r-xp", "r--p", "rw-s"])),
                max_size=8))
def test_parse_maps_keeps_any_path_whole(entries: list[tuple[bytes, int, str]]) -> None:
    """Why: spaces, '(deleted)' or escapes in a name must not split or shorten the path we check."""
    data = b"".join(b"7f00-7f01 %s 00000000 fe:01 %d                   /%s\n" % (p.encode(), i, raw)
                    for raw, i, p in entries)
    parsed = {m[:3] for line in data.split(b"\n") if (m := parse_map_line(line))}
    for raw, inode, _perms in entries:
        assert (b"/" + raw, str(inode).encode(), b"fe:01") in parsed


status_line = st.tuples(st.sampled_from([b"Name", b"PPid", b"Uid", b"Gid", b"NSpid", b"State", b"Junk", b""]),
                        st.binary(max_size=30).filter(lambda b: b"\n" not in b))


@FAST
@given(st.lists(status_line, max_size=10))
def test_parse_status_raises_at_most_valueerror(lines: list[tuple[bytes, bytes]]) -> None:
    """Why: scan() turns ValueError into 'vanished'; any other exception would abort the whole scan."""
    data = b"\n".join(k + b":" + v for k, v in lines)
    try:
        name, _ppid, _uid, depth = parse_status(data)
    except ValueError:
        return
    assert depth >= 1 and "\n" not in name


def test_parse_status_with_an_empty_uid() -> None:
    """Why: found by this suite: an empty 'Uid:' value raised IndexError, which scan() did not catch."""
    with contextlib.suppress(ValueError):
        parse_status(b"Name:\tx\nUid:\t\n")


# ---------------------------------------------------------------------------------- cgroups

@FAST
@given(any_text)
def test_cgroup_path_and_resolve_never_raise(text: str) -> None:
    """Why: /proc/PID/cgroup carries names a user chose below their delegated user@UID.service."""
    path = cgroup_path(text)
    unit = resolve(path)
    assert unit.kind in (SYSTEM, USER, SESSION, INIT, USER_MANAGER, CONTAINER, NONE)
    resolve(path, pid_namespace="pid:[4026532000]")


# One cgroup directory name a user may create: anything but "/" and "\n" (the kernel refuses those), <= 255.
NAME_CHAR = st.one_of(st.sampled_from([t for t in INTERESTING if "/" not in t and "\n" not in t]),
                      st.characters(blacklist_categories=SURROGATES, blacklist_characters="/\n"),
                      st.integers(0xDC80, 0xDCFF).map(chr))
cgroup_name = st.lists(NAME_CHAR, min_size=1, max_size=12).map(lambda c: "".join(c)[:255]).filter(
    lambda s: s not in (".", ".."))


@FAST
@given(st.integers(1000, 2**31), st.lists(cgroup_name, max_size=6))
def test_anything_below_a_user_manager_stays_that_users(uid: int, below: list[str]) -> None:
    """Why: a user's manager may create any cgroup below user@UID.service; none of it is root's."""
    path = f"/user.slice/user-{uid}.slice/user@{uid}.service/" + "/".join(below)
    unit = resolve(path)
    assert (unit.kind, unit.uid) in ((USER, uid), (USER_MANAGER, uid))


@FAST
@given(st.integers(1000, 2**31), st.lists(cgroup_name, min_size=1, max_size=6))
def test_a_kernel_cgroup_file_yields_its_unified_path(uid: int, below: list[str]) -> None:
    """Why: the cgroup file must parse to exactly the path the kernel wrote, whatever the names hold:
    \r, \v, U+2028 and the other characters ``str.splitlines`` ends lines at are name characters
    (only "\n" ends a line; the kernel refuses it in names)."""
    path = f"/user.slice/user-{uid}.slice/user@{uid}.service/" + "/".join(below)
    for text in (f"1:name=systemd:{path}\n0::{path}\n", f"0::{path}\n", f"1:name=systemd:{path}\n"):
        assert cgroup_path(text) == path
    assert resolve(cgroup_path(f"0::{path}\n")).uid == uid


@pytest.mark.parametrize("sep", list(LINE_BREAKS), ids=[f"U+{ord(c):04X}" for c in LINE_BREAKS])
def test_only_a_newline_ends_a_cgroup_line(sep: str) -> None:
    """Why: pins the exact splitting that the property test above samples.  With ``splitlines`` (the
    bug this suite once found) each of these texts holds two hierarchies of one kind, and the parse
    changes: a system unit's own path is lost, a forged second line is read."""
    system = f"/system.slice/a{sep}0::/system.slice/b.service"
    assert cgroup_path(f"1:name=systemd:{system}\n0::{system}\n") == system
    assert cgroup_path(f"0::/init.scope{sep}x\n") == f"/init.scope{sep}x"
    assert cgroup_path(f"1:name=systemd:/system.slice/c.service{sep}1:name=systemd:/init.scope\n") == \
        f"/system.slice/c.service{sep}1:name=systemd:/init.scope"
    assert cgroup_path(f"0::/{sep}\n1:name=systemd:/system.slice/d.service\n") == f"/{sep}"


# ---------------------------------------------------------------------------------- dpkg data

@FAST
@given(any_bytes)
def test_parse_diversions_never_raises(data: bytes) -> None:
    """Why: a corrupt diversions file must not stop a scan; only absolute paths are believed."""
    for d in parse_diversions(data, frozenset({"lib", "bin"})):
        assert d.path.startswith("/") and d.moved_to.startswith("/") and d.by


# ---------------------------------------------------------------------------------- policy

toml_value = st.one_of(st.text(max_size=12), st.integers(), st.booleans(), st.lists(st.text(max_size=8), max_size=3),
                       st.sampled_from(policy.ACTIONS), st.sampled_from(policy.SCOPES))


def _toml(value: object) -> str:
    """A TOML rendering of simple values (JSON string escapes are TOML's too)."""
    import json
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else str(value)


rule_table = st.dictionaries(st.sampled_from(["unit", "scope", "package", "action", "reason", "bogus"]),
                             toml_value, max_size=5)


@FAST
@given(st.lists(rule_table, max_size=4))
def test_parse_rules_on_generated_policies(tables: list[dict[str, object]]) -> None:
    """Why: a policy is data: it either loads as rules with known actions or fails with PolicyError."""
    text = "".join("[[rule]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in t.items()) for t in tables)
    try:
        rules = policy.parse_rules(text, "gen.toml")
    except policy.PolicyError:
        return
    for rule in rules:
        assert rule.action in policy.ACTIONS and rule.scope in policy.SCOPES
        assert all(isinstance(g, str) for g in (*rule.units, *rule.packages))


@FAST
@given(any_text)
def test_parse_rules_on_arbitrary_text(text: str) -> None:
    """Why: the only exception a bad policy file may cause is PolicyError (the CLI reports it)."""
    with contextlib.suppress(policy.PolicyError):
        policy.parse_rules(text, "any.toml")


def test_deeply_nested_policy_is_a_policy_error() -> None:
    """Why: a corrupt (root-owned) policy must be reported as such, not crash restartctl."""
    with pytest.raises(policy.PolicyError):
        policy.parse_rules("[[rule]]\nunit = " + "[" * 5000 + "\n", "deep.toml")


# ---------------------------------------------------------------------------------- terminal text

def _unsafe(c: str) -> bool:
    return unicodedata.category(c)[0] in "CZ" and c != " "


@FAST
@given(st.text(alphabet=ANY_CHAR, max_size=60))
def test_printable_escapes_every_control_and_format_character(text: str) -> None:
    """Why: process names and paths can carry terminal escapes and bidi overrides."""
    out = printable(text)
    assert not any(_unsafe(c) for c in out), ascii(out)
    out.encode("utf-8")  # no lone surrogates survive either


@FAST
@given(st.binary(max_size=60))
def test_printable_of_any_file_name(raw: bytes) -> None:
    """Why: file names are bytes; whatever they hold, the text we print is safe and non-empty for non-empty input."""
    out = printable(fs_decode(raw))
    assert not any(_unsafe(c) for c in out)
    assert bool(out) == bool(raw)


# ---------------------------------------------------------------------------------- unit names

_SYSTEMD_CHARS = set(string.ascii_letters + string.digits + ":-_.\\@")


def systemd_unit_name_is_valid(name: str, *, template: bool) -> bool:
    """An independent transcription of systemd's unit_name_is_valid() (src/basic/unit-name.c)."""
    if not name or len(name.encode("utf-8", "surrogatepass")) >= 256:
        return False
    e = name.rfind(".")
    if e <= 0 or name[e + 1:] not in UNIT_TYPES:
        return False
    if any(c not in _SYSTEMD_CHARS for c in name[:e]):
        return False
    at = name.find("@", 0, e)
    if at == 0:
        return False
    if at < 0:
        return True                      # UNIT_NAME_PLAIN
    if e > at + 1:
        return True                      # UNIT_NAME_INSTANCE
    return template                      # UNIT_NAME_TEMPLATE


unit_like = st.lists(st.one_of(st.sampled_from(["@", ".", "-", "\\", ":", "_", "a", "Z", "0", " ", ";", "$(", "\n",
                                                "é", "*", ".service", ".scope", ".slice", ".bogus", "Service"]),
                               ANY_CHAR), max_size=16).map("".join)


@FAST
@given(st.one_of(unit_like, st.integers(240, 260).map(lambda n: "x" * n + ".service")))
def test_valid_unit_name_agrees_with_systemd(name: str) -> None:
    """Why: the grammar is the gate between a cgroup name and a root command line."""
    assert valid_unit_name(name) is systemd_unit_name_is_valid(name, template=False)
    assert valid_unit_name(name, allow_template=True) is systemd_unit_name_is_valid(name, template=True)


# ---------------------------------------------------------------------------------- plan argv

_VERBS = {"restart", "try-restart", "reload-or-restart", "daemon-reexec", "--user", "-M"}


def check_argv(action: plan.Action) -> None:
    """What every command restartctl builds must look like."""
    g = action.group
    if action.action == "exec":
        # The administrator's own command; restartctl only substitutes a valid unit name for {unit}.
        assert action.argv is not None and action.argv[0] == EXEC_ARGV[0], action
        assert g.kind in (SYSTEM, USER) and g.name is not None and valid_unit_name(g.name), action
        assert action.argv == tuple(a.replace("{unit}", g.name) for a in EXEC_ARGV), action
        return
    for argv in (action.argv, action.suggested):
        if argv is None:
            continue
        assert argv[0] in ("systemctl", "invoke-rc.d"), argv
        if argv[0] == "invoke-rc.d":
            assert g.kind == SYSTEM and g.guessed, argv
            assert len(argv) == 3 and argv[2] == "restart" and valid_init_script(argv[1]), argv
            assert not argv[1].startswith("-"), argv
            continue
        cut = argv.index("--") if "--" in argv else len(argv)
        head, names = argv[1:cut], argv[cut + 1:]
        assert all(t in _VERBS or re.fullmatch(r"[0-9]+@", t) for t in head), argv
        assert all(valid_unit_name(n) for n in names), argv
        if "--" not in argv:
            assert head in (("daemon-reexec",), ("--user", "-M", f"{g.uid}@", "daemon-reexec")), argv
    if action.argv is not None:
        assert g.valid or g.kind in (INIT, USER_MANAGER), action
        if g.kind not in (SYSTEM, INIT):
            # Anything of a user's runs in that user's manager, never as a system unit.
            assert action.argv[1:4] == ("--user", "-M", f"{g.uid}@"), action.argv


def _group(kind: UnitKind, name: str | None, uid: int, guessed: bool, valid: bool) -> UnitGroup:
    owned = kind in (USER, USER_MANAGER, SESSION)
    return UnitGroup(kind, name, uid if owned else None, guessed and kind == SYSTEM, valid, (100,),
                     ("libc6:amd64",), ())


EXEC_ARGV = ("/usr/local/sbin/fix-unit", "--", "{unit}")


def _rule(units: tuple[str, ...], scope: str, action: policy.Act, reason: str) -> policy.Rule:
    return policy.Rule(units, scope, (), action, reason, "gen.toml:1", EXEC_ARGV if action == "exec" else ())


policies = st.lists(st.builds(
    _rule, st.one_of(st.just(()), st.tuples(st.sampled_from(["*", "*.service", "ssh*", "*@*", "[a-z]*"]))),
    st.sampled_from(policy.SCOPES), st.sampled_from(policy.ACTIONS), st.text(max_size=5)),
    max_size=3).map(lambda rules: policy.Policy(tuple(rules)))
VENDOR = policy.load([REPO / "data" / "policy.toml"])


@FAST
@given(st.lists(st.builds(_group, st.sampled_from(units.KIND_ORDER), st.one_of(st.none(), unit_like),
                          st.integers(0, 2**32), st.booleans(), st.booleans()), min_size=1, max_size=6),
       policies)
def test_no_invalid_unit_name_reaches_an_argv(groups: list[UnitGroup], extra: policy.Policy) -> None:
    """Why: whatever a group is called and whatever the policy says, argvs keep their shape."""
    for p in (VENDOR, extra, policy.Policy(extra.rules + VENDOR.rules)):
        for action in plan.make_plan(groups, p):
            check_argv(action)


@FAST
@given(st.lists(st.tuples(any_text, st.booleans(), st.integers(0, 70000)), min_size=1, max_size=6), policies)
def test_from_cgroup_text_to_argv(cgroups: list[tuple[str, bool, int]], extra: policy.Policy) -> None:
    """Why: the end-to-end path from a /proc/PID/cgroup text to a command line keeps the argv invariants."""
    affected = []
    for pid, (text, in_pidns, uid) in enumerate(cgroups, 100):
        ns = "pid:[4026532000]" if in_pidns else None
        stale = StaleFile(FileKind.CODE, "/usr/lib/libx.so", Confidence.CERTAIN, Evidence.REPLACED)
        proc = ProcessInfo(pid, 1, uid, "x", "/usr/bin/x", text, ns, (stale,))
        affected.append(Affected(proc, resolve(cgroup_path(text), pid_namespace=ns), (OwnedFile(stale, "x"),), ()))
    for action in plan.make_plan(units.group(affected), policy.Policy(extra.rules + VENDOR.rules)):
        check_argv(action)



def _bus_reply(serial: int, body: bytes) -> bytes:
    """A method return from PID 1 (as tests/test_execute_unit.py builds them): the value is ``body``."""
    import struct

    fields = bytearray(b"\x05\x01u\x00" + struct.pack("<I", serial)) + b"\x08\x01g\x00\x01v\x00"
    head = b"l\x02\x01\x01" + struct.pack("<III", len(body), 7, len(fields)) + fields
    return head + bytes(-len(head) % 8) + body


def _flipped(message: bytes, at: int, byte: int) -> bytes:
    m = bytearray(message)
    m[at % len(m)] = byte
    return bytes(m)


bus_replies = st.one_of(
    st.binary(max_size=200),
    st.builds(_bus_reply, st.integers(0, 2**32 - 1), st.binary(max_size=40)),
    st.builds(_flipped, st.builds(_bus_reply, st.integers(0, 2**32 - 1), st.binary(max_size=40)),
              st.one_of(st.integers(0, 40), st.integers(0, 200)), st.integers(0, 255)))  # the header, or anywhere


@FAST
@given(bus_replies)
def test_a_reply_on_pid1s_bus_is_an_answer_or_a_documented_error(message: bytes) -> None:
    """Why: whatever bytes come back (a torn read, a systemd that answers otherwise), reading them is
    an answer or one of the errors the caller turns into "ask systemctl": never another exception."""
    import struct

    from restart import unitstate

    try:
        serial, value = unitstate._reply(message)
    except (ValueError, IndexError, struct.error):
        return
    assert isinstance(serial, int) and (value is None or isinstance(value, str))
