"""Plan decisions: pure functions from stale units and policy to actions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from restart.plan import decide, make_plan
from restart.policy import Policy, PolicyError, load, parse_rules
from restart.processes import Confidence, Evidence, FileKind, ProcessInfo, StaleFile
from restart.units import (
    CONTAINER,
    INIT,
    NONE,
    SESSION,
    SYSTEM,
    USER,
    USER_MANAGER,
    Affected,
    OwnedFile,
    Unit,
    UnitGroup,
    group,
)

VENDOR = load([Path(__file__).resolve().parent.parent / "data" / "policy.toml"])


def affected(pid: int, unit: Unit, package: str = "libc6:amd64") -> Affected:
    proc = ProcessInfo(pid, 1, 0, "x", "/usr/sbin/x", "", None, ())
    stale = StaleFile(FileKind.CODE, "/usr/lib/x86_64-linux-gnu/libc.so.6", Confidence.CERTAIN, Evidence.REPLACED)
    return Affected(proc, unit, (OwnedFile(stale, package),), ())


def one(unit: Unit, policy: Policy = VENDOR) -> tuple[str, tuple[str, ...] | None, tuple[str, ...] | None]:
    [g] = group([affected(10, unit)])
    a = decide(g, policy)
    return a.action, a.argv, a.suggested


def test_system_service_is_restarted() -> None:
    assert one(Unit(SYSTEM, "nginx.service")) == ("restart", ("systemctl", "restart", "--", "nginx.service"), None)


def test_guessed_init_script() -> None:
    assert one(Unit(SYSTEM, "nginx", guessed=True)) == ("restart", ("invoke-rc.d", "nginx", "restart"), None)


def test_pid1_is_reexecuted() -> None:
    assert one(Unit(INIT, "init.scope")) == ("reexec", ("systemctl", "daemon-reexec"), None)


def test_user_manager_is_reexecuted_through_its_own_manager() -> None:
    action, argv, _ = one(Unit(USER_MANAGER, "user@1000.service", 1000))
    assert (action, argv) == ("reexec", ("systemctl", "--user", "-M", "1000@", "daemon-reexec"))


def test_user_unit_is_left_to_its_owner_with_a_suggestion() -> None:
    assert one(Unit(USER, "foo.service", 1000)) == (
        "notify", None, ("systemctl", "--user", "-M", "1000@", "restart", "--", "foo.service"))


@pytest.mark.parametrize("unit", [
    Unit(SESSION, "session-3.scope", 1000), Unit(CONTAINER, "web"), Unit(NONE, None),
    Unit(SYSTEM, "run-r1234.scope"), Unit(USER, None, 1000, valid=False),
])
def test_things_restartctl_cannot_restart_are_notices(unit: Unit) -> None:
    action, argv, _ = one(unit)
    assert action == "notify" and argv is None


def test_invalid_unit_name_never_reaches_an_argv() -> None:
    # Even a policy that says "restart everything" cannot put it on a command line.
    everything = Policy(tuple(parse_rules('[[rule]]\nunit="*"\naction="restart"\n', "t")))
    for name in ("$(reboot).service", "a;b.service", "foo@.service", "x" * 300 + ".service"):
        action, argv, suggested = one(Unit(SYSTEM, name, valid=False), everything)
        assert argv is None and suggested is None and action == "notify"


@pytest.mark.parametrize("name", ["dbus.service", "systemd-logind.service", "gdm3.service", "getty@tty1.service",
                                  "NetworkManager.service", "docker.service", "apt-daily-upgrade.service",
                                  "serial-getty@ttyS0.service"])
def test_vendor_policy_defers_what_must_not_be_restarted_casually(name: str) -> None:
    action, argv, suggested = one(Unit(SYSTEM, name))
    assert action == "defer" and argv is None
    assert suggested == ("systemctl", "restart", "--", name)


@pytest.mark.parametrize("name", ["packagekit.service", "unattended-upgrades.service"])
def test_vendor_policy_restarts_the_package_daemons_like_any_service(name: str) -> None:
    """They are not deferred as "the very job that runs this transaction": when they are, the
    executor's ancestor check skips them; otherwise they stay stale until restarted."""
    assert one(Unit(SYSTEM, name)) == ("restart", ("systemctl", "restart", "--", name), None)


@pytest.mark.parametrize("name", ["dbus.service", "systemd-logind.service", "getty@tty1.service",
                                  "NetworkManager.service"])
def test_vendor_defer_rules_are_for_system_units_only(name: str) -> None:
    """A user's own dbus.service (systemctl --user) is not the system bus."""
    action, _, _ = one(Unit(USER, name, 1000))
    assert action == "notify"
    assert "system bus" not in decide(group([affected(1, Unit(USER, name, 1000))])[0], VENDOR).reason


def test_sd_pam_is_part_of_its_user_manager_and_never_acted_on() -> None:
    action, argv, suggested = one(Unit(USER, "user@1000.service", 1000, valid=False))
    [g] = group([affected(1, Unit(USER, "user@1000.service", 1000, valid=False))])
    assert (action, argv, suggested) == ("notify", None, None)
    assert "part of user@1000.service" in decide(g, VENDOR).reason


def test_policy_rule_can_opt_a_user_unit_into_restart() -> None:
    policy = Policy(tuple(parse_rules('[[rule]]\nscope="user"\nunit="*.service"\naction="restart"\n', "t")))
    assert one(Unit(USER, "foo.service", 1000), policy)[1] == (
        "systemctl", "--user", "-M", "1000@", "restart", "--", "foo.service")


def test_policy_matches_on_package() -> None:
    policy = Policy(tuple(parse_rules('[[rule]]\npackage="libc6"\naction="reboot"\nreason="glibc"\n', "t")))
    [g] = group([affected(1, Unit(SYSTEM, "a.service"))])
    a = decide(g, policy)
    assert (a.action, a.reason, a.rule) == ("reboot", "glibc", "t:1")


def test_a_reboot_rule_acts_on_users_units_only_when_it_says_scope_user() -> None:
    """Why (issue 13): the README's own `package = "libc6" action = "reboot"` fired for one user's unit
    alone; /run/reboot-required then has Automatic-Reboot or kured reboot the host for her process."""
    from restart.reboot import reasons
    rule = '[[rule]]\npackage="libc6"\naction="reboot"\n'
    hers = group([affected(1, Unit(USER, "app.service", 1000))])[0]
    for text in (rule, rule + 'scope="any"\n'):
        a = decide(hers, Policy(tuple(parse_rules(text, "t"))))
        assert a.action == "notify" and 'only with scope = "user"' in a.reason, a
        assert reasons([a]) == []
    explicit = decide(hers, Policy(tuple(parse_rules(rule + 'scope="user"\n', "t"))))
    assert explicit.action == "reboot" and [r.kind for r in reasons([explicit])] == ["policy"]
    root = decide(group([affected(2, Unit(SYSTEM, "a.service"))])[0], Policy(tuple(parse_rules(rule, "t"))))
    assert root.action == "reboot"


def test_grouping_and_order() -> None:
    items = [affected(30, Unit(NONE, None)), affected(31, Unit(NONE, None)),
             affected(20, Unit(INIT, "init.scope")), affected(11, Unit(SYSTEM, "b.service")),
             affected(10, Unit(SYSTEM, "a.service")), affected(12, Unit(SYSTEM, "a.service"), "libssl3:amd64"),
             Affected(ProcessInfo(40, 1, 0, "x", None, "", None, ()), Unit(SYSTEM, "c.service"), (), ())]
    groups = group(items)
    assert [(g.kind, g.name, g.pids) for g in groups] == [
        (SYSTEM, "a.service", (10, 12)), (SYSTEM, "b.service", (11,)), (INIT, "init.scope", (20,)),
        (NONE, None, (30,)), (NONE, None, (31,))]
    assert groups[0].packages == ("libc6:amd64", "libssl3:amd64")
    assert [a.action for a in make_plan(groups, VENDOR)] == ["reexec", "restart", "restart", "notify", "notify"]


@pytest.mark.parametrize(("text", "message"), [
    ('[[rule]]\naction="explode"\n', "key 'action' must be one of"),
    ('[[rule]]\naction="restart"\nscope="galaxy"\n', "key 'scope'"),
    ('[[rule]]\naction="restart"\nunit=3\n', "key 'unit'"),
    ('[[rule]]\naction="restart"\nfrobnicate=1\n', "unknown key 'frobnicate'"),
    ("rule = 1\n", "array of tables"),
    ("[[rule]\n", "t.toml"),
])
def test_bad_policy_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_rules(text, "t.toml")


def test_unit_group_key_is_total() -> None:
    g = UnitGroup(NONE, None, None, False, True, (1,), ("p",), ())
    assert g.key == (6, "", "None", 1)


def test_exec_rules_apply_to_system_units_only_and_never_to_option_like_names() -> None:
    policy = Policy(tuple(parse_rules('[[rule]]\nunit = "*"\nexec = ["/usr/local/sbin/bounce", "{unit}"]\n', "t")))
    assert one(Unit(SYSTEM, "web.service"), policy)[:2] == ("exec", ("/usr/local/sbin/bounce", "web.service"))
    # A user names her own units: her name must never reach a command root runs.
    action, argv, _ = one(Unit(USER, "web.service", 1000), policy)
    assert argv != ("/usr/local/sbin/bounce", "web.service") and action == "notify"
    action, argv, _ = one(Unit(SYSTEM, "-rf.service"), policy)
    assert argv == ("systemctl", "restart", "--", "-rf.service")  # the default, with "--"


def test_policy_files_others_could_write_are_refused(tmp_path: Path) -> None:
    good = tmp_path / "etc" / "restartctl"
    good.mkdir(parents=True)
    (good / "policy.toml").write_text('[settings]\nmode = "list"\n')
    assert load([good / "policy.toml"]).settings.mode == "list"
    os.chmod(good, 0o777)
    with pytest.raises(PolicyError, match="writable only by root"):
        load([good / "policy.toml"])
    os.chmod(good, 0o755)
    (good / "evil.toml").symlink_to(good / "policy.toml")
    with pytest.raises(PolicyError, match="symlink"):
        load([good / "evil.toml"])
    os.chmod(good / "policy.toml", 0o666)
    with pytest.raises(PolicyError, match="writable only by root"):
        load([good / "policy.toml"])
    os.chmod(good / "policy.toml", 0o644)
    (good / "policy.toml").write_text("#" * (1 << 20) + '\n[settings]\nmode = "list"\n')  # comments: valid TOML
    with pytest.raises(PolicyError, match="larger than"):  # read bounded, never parsed
        load([good / "policy.toml"])


def test_settle_takes_seconds_and_zero_turns_it_off() -> None:
    from restart.policy import parse
    assert parse("[settings]\nsettle = 0\n", "t")[1] == {"settle": 0.0}
    assert parse("[settings]\nsettle = 2.5\n", "t")[1] == {"settle": 2.5}
    with pytest.raises(PolicyError, match="settle"):
        parse("[settings]\nsettle = -1\n", "t")
    with pytest.raises(PolicyError, match="timeout"):
        parse("[settings]\ntimeout = 0\n", "t")


def test_findings_guessed_from_the_search_path_are_listed_not_restarted() -> None:
    """A module guessed from the whole search path (the script's imports could not be read) is
    listed by the vendor policy; one found through the imports that were read is restarted for."""
    proc = ProcessInfo(10, 1, 0, "python3", "/usr/bin/python3.11", "", None, ())
    unit = Unit(SYSTEM, "app.service")

    def plan_for(evidence: str) -> str:
        stale = StaleFile(FileKind.MODULE, "/usr/lib/python3/dist-packages/x.py", Confidence.LIKELY, Evidence(evidence))
        [action] = make_plan(group([Affected(proc, unit, (OwnedFile(stale, "python3-x"),), ())]), VENDOR)
        return action.action

    assert plan_for("search-path") == "notify"
    assert plan_for("imports") == "restart"
    assert plan_for("depends") == "restart"


def test_a_glob_without_wildcards_is_compared_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """Why (issue 14): every glob of the vendor rules became a compiled pattern in every run, most of
    them plain unit names (65 patterns: 5 ms before the first restart)."""
    from restart import policy

    assert policy.glob_matches("getty@tty1.service", "getty@*.service")
    assert policy.glob_matches("a-1.service", "a-[0-9].service") and not policy.glob_matches("a.service", "b?service")
    monkeypatch.setattr(policy, "fnmatchcase", lambda name, glob: pytest.fail(f"{glob} compiled"))
    assert policy.glob_matches("dbus.service", "dbus.service")
    assert not policy.glob_matches("dbus.service", "dbus-broker.service")
    assert not policy.glob_matches("Dbus.service", "dbus.service")  # as fnmatchcase: case counts


def test_each_rule_names_the_line_of_its_header() -> None:
    """Why: every rule's source (``file:LINE``, shown by ``policy explain`` and the reports) is found in one
    pass over the file, not one from the top per rule; headers with spaces, comments and blank lines between,
    and rules as an array of inline tables (no header: line 1) are all counted as before."""
    text = ('# the vendor\'s\n[settings]\nmode = "list"\n\n[[rule]]\nunit = "a.service"\naction = "defer"\n'
            '  [[ rule ]]  # indented\nunit = "b.service"\naction = "ignore"\n\n\n[[rule]]\npackage = "c"\n'
            'action = "reboot"\n')
    assert [r.source for r in parse_rules(text, "p.toml")] == ["p.toml:5", "p.toml:8", "p.toml:13"]
    inline = 'rule = [{unit = "a.service", action = "defer"}, {unit = "b.service", action = "ignore"}]\n'
    assert [r.source for r in parse_rules(inline, "q.toml")] == ["q.toml:1", "q.toml:1"]


def test_a_glob_matches_exactly_what_fnmatchcase_matches() -> None:
    """Why (issue 14): a glob whose only wildcard is ``*`` is told by its pieces, not by a compiled pattern
    (the vendor rules' 17 were 1 ms before every first restart); it must match exactly what ``fnmatchcase``
    matches, whatever the pieces (empty, repeated, overlapping the ends)."""
    import random
    from fnmatch import fnmatchcase

    from restart.policy import glob_matches

    rng = random.Random(14)  # noqa: S311 - test texts, not secrets
    for _ in range(5000):
        glob = "".join(rng.choice("ab*.?") for _ in range(rng.randrange(7)))
        name = "".join(rng.choice("ab.\n") for _ in range(rng.randrange(8)))
        assert glob_matches(name, glob) == fnmatchcase(name, glob), (name, glob)
    for name, glob in [("a", "a*a"), ("aa", "a*a"), ("ab", "a*b*b"), ("abb", "a*b*b"), ("", "*"), ("ba", "*a*a")]:
        assert glob_matches(name, glob) == fnmatchcase(name, glob), (name, glob)
    assert glob_matches("systemd-logind.service", "systemd-*") and not glob_matches("dbus.service", "systemd-*")
    assert glob_matches("getty@tty1.service", "*@*.service") and not glob_matches("a@.socket", "*@*.service")


def test_a_rules_globs_match_as_fnmatch_says_with_its_plain_names_looked_up_at_once() -> None:
    """Why: a rule's names without a wildcard are found in a set (issue 14): a glob with one, or with a
    bracket (``[d].service`` is not that name), must still match as fnmatch says."""
    from fnmatch import fnmatchcase

    from restart.policy import any_matches

    globs = ("a.service", "b*.service", "c?.service", "[d].service", "e[!x]@*.service")
    for name in ("a.service", "a.servicex", "bb.service", "b.service", "c1.service", "c.service", "d.service",
                 "[d].service", "ey@1.service", "ex@1.service", "b*.service"):
        assert any_matches(name, globs) == any(fnmatchcase(name, g) for g in globs), name
    assert not any_matches("a.service", ())


def test_a_rule_header_is_told_as_its_pattern_would_tell_it() -> None:
    """Why (issue 14): a rule's source line is found without compiling a pattern in every run; what
    counts as a ``[[rule]]`` header (and what does not) stays what the pattern said."""
    import re

    from restart.policy import rule_header

    pattern = re.compile(r"\s*\[\[\s*rule\s*\]\]")
    for line in ("[[rule]]", "  [[ rule ]]  # x", "\t[[\u00a0rule\t]]", "[[rules]]", "[[rule]", "[rule]]", "[ [rule]]",
                 "# [[rule]]", "[[ruler]]", "[[]]", "", "[[rule ]]x", "[[settings]]", "[[rule", "rule]]"):
        assert rule_header(line) == bool(pattern.match(line)), line
