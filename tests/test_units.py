"""Unit resolution from cgroup paths, anchored at the root, and the unit-name grammar."""

from __future__ import annotations

from pathlib import Path

import pytest

from restart.packages import DpkgDatabase
from restart.processes import Confidence, Evidence, FileKind, ProcessInfo, ScanResult, StaleFile
from restart.units import (
    CONTAINER,
    INIT,
    NONE,
    SESSION,
    SYSTEM,
    USER,
    USER_MANAGER,
    attribute,
    cgroup_path,
    guess_init_script,
    resolve,
    valid_unit_name,
)


@pytest.mark.parametrize(("path", "kind", "name", "uid"), [
    ("/system.slice/nginx.service", SYSTEM, "nginx.service", None),
    ("/system.slice/system-getty.slice/getty@tty1.service", SYSTEM, "getty@tty1.service", None),
    ("/system.slice/docker.service/delegated/sub", SYSTEM, "docker.service", None),
    ("/system.slice/cron.service/ignored.scope", SYSTEM, "cron.service", None),
    ("/init.scope", INIT, "init.scope", None),
    ("/user.slice/user-1000.slice/user@1000.service/init.scope", USER_MANAGER, "user@1000.service", 1000),
    ("/user.slice/user-1000.slice/user@1000.service", USER_MANAGER, "user@1000.service", 1000),
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service", USER, "foo.service", 1000),
    ("/user.slice/user-1000.slice/session-3.scope", SESSION, "session-3.scope", 1000),
    ("/user.slice/user-1000.slice/session-c12.scope", SESSION, "session-c12.scope", 1000),
    ("/user.slice/user-1000.slice/user-runtime-dir@1000.service", SYSTEM,
     "user-runtime-dir@1000.service", None),
    ("/machine.slice/machine-web\\x2d1.scope/payload", CONTAINER, "web-1", None),
    ("/machine.slice/systemd-nspawn@db.service/payload/system.slice/x.service", CONTAINER, "db", None),
    ("/", NONE, None, None),
    ("/rctl-harness/spawn-2", NONE, None, None),
    ("/docker/0123abcd", NONE, None, None),
    ("/system.slice/not-a-unit", NONE, None, None),
    ("/top.service", SYSTEM, "top.service", None),
    ("/system.slice", NONE, None, None),
])
def test_resolve(path: str, kind: str, name: str | None, uid: int | None) -> None:
    unit = resolve(path)
    assert (unit.kind, unit.name, unit.uid) == (kind, name, uid)


@pytest.mark.parametrize("forged", [
    # A user's manager may create any cgroup below user@UID.service: all of it stays the user's.
    "/user.slice/user-1000.slice/user@1000.service/system.slice/sshd.service",
    "/user.slice/user-1000.slice/user@1000.service/app.slice/sshd.service",
    "/user.slice/user-1000.slice/user@1000.service/user.slice/user-0.slice/session-1.scope",
    "/user.slice/user-1000.slice/user@1000.service/app.slice/init.scope",
    "/user.slice/user-1000.slice/user@1000.service/app.slice/user@0.service",
    "/user.slice/user-1000.slice/user@1000.service/init.scope/dbus.service",
])
def test_forged_cgroups_below_a_user_manager_stay_the_users(forged: str) -> None:
    unit = resolve(forged)
    assert unit.kind in (USER, USER_MANAGER)
    assert unit.uid == 1000


def test_user_manager_with_mismatched_slice_is_not_trusted_as_a_user_manager() -> None:
    # user@0.service can only appear under user-0.slice; anything else is a system unit by that name.
    unit = resolve("/user.slice/user-1000.slice/user@0.service/init.scope")
    assert unit.kind == SYSTEM and unit.uid is None


def test_container_by_pid_namespace_wins_over_cgroup() -> None:
    unit = resolve("/system.slice/nginx.service", pid_namespace="pid:[4026532000]")
    assert unit.kind == CONTAINER and unit.name == "pid:[4026532000]"


def test_invalid_unit_name_is_flagged() -> None:
    unit = resolve("/system.slice/$(touch x).service")
    assert unit.kind == SYSTEM and not unit.valid


def test_cgroup_path_prefers_unified_then_named_v1() -> None:
    hybrid = "9:name=systemd:/system.slice/a.service\n1:cpu:/\n0::/system.slice/a.service\n"
    assert cgroup_path(hybrid) == "/system.slice/a.service"
    v1 = "12:memory:/x\n1:name=systemd:/system.slice/b.service\n"
    assert cgroup_path(v1) == "/system.slice/b.service"
    unified_empty = "1:name=systemd:/system.slice/c.service\n0::/\n"
    assert cgroup_path(unified_empty) == "/system.slice/c.service"
    assert cgroup_path("0::/system.slice/d.service\n") == "/system.slice/d.service"
    assert cgroup_path("garbage without colons") is None


@pytest.mark.parametrize(("name", "ok"), [
    ("nginx.service", True), ("getty@tty1.service", True), ("a:b_c.d-e\\x2d.service", True),
    ("foo@bar@baz.service", True), ("foo@.service", False), ("@foo.service", False),
    ("foo", False), ("foo.bogus", False), (".service", False), ("foo bar.service", False),
    ("foo;reboot.service", False), ("$(id).service", False), ("foo*.service", False),
    ("x" * 247 + ".service", True), ("x" * 248 + ".service", False), ("", False),
    ("-foo.service", True), ("foo.service\n", False), ("ünïcode.service", False),
])
def test_unit_name_grammar(name: str, ok: bool) -> None:
    assert valid_unit_name(name) is ok


def test_template_allowed_only_when_asked() -> None:
    assert valid_unit_name("foo@.service", allow_template=True)


def test_guess_init_script() -> None:
    assert guess_init_script("/usr/sbin/nginx", ["nginx"], {"nginx", "ssh"}) == "nginx"
    assert guess_init_script("/usr/sbin/apache2", ["apache2", "apache-htcacheclean"],
                             {"apache2", "apache-htcacheclean"}) == "apache2"
    assert guess_init_script("/usr/sbin/smbd", ["smbd"], {"smbd"}) == "smbd"
    assert guess_init_script("/usr/sbin/x", ["a", "b"], {"a", "b"}) is None
    assert guess_init_script("/usr/bin/foo", [], {"foo"}) is None  # another package's (or no package's) script
    assert guess_init_script("/usr/bin/foo", [], set()) is None
    assert guess_init_script("/usr/bin/foo", ["gone"], set()) is None
    assert guess_init_script("/tmp/;reboot", [], {";reboot"}) is None


def test_helpers_of_a_user_manager_are_not_the_manager(tmp_path: Path) -> None:
    # "(sd-pam)" lives in user@UID.service/init.scope too, but a re-exec of the manager does not
    # replace it: only the process PID 1 started is the manager.
    cg = "0::/user.slice/user-1000.slice/user@1000.service/init.scope\n"
    stale = (StaleFile(FileKind.CODE, "/usr/lib/libx.so", Confidence.CERTAIN, Evidence.REPLACED),)
    scan = ScanResult([ProcessInfo(50, 1, 1000, "systemd", "/usr/lib/systemd/systemd", cg, None, stale),
                       ProcessInfo(51, 50, 1000, "(sd-pam)", "/usr/lib/systemd/systemd", cg, None, stale)], 2, 0, 0)
    db = DpkgDatabase(tmp_path, tmp_path)
    [manager, helper] = attribute(scan, db, in_scope={"/usr/lib/libx.so": "libx"}, systemd=True, init_d=set())
    assert (manager.unit.kind, manager.unit.name) == (USER_MANAGER, "user@1000.service")
    # It is part of user@1000.service (it ends when that unit stops), never acted on.
    assert (helper.unit.kind, helper.unit.name, helper.unit.uid, helper.unit.valid) == (
        USER, "user@1000.service", 1000, False)


@pytest.mark.parametrize("sep", ["\r", "\x0b", "\x0c", "\x1c", "\u2028", "\u0085"])
def test_only_newline_ends_a_cgroup_line(sep: str) -> None:
    text = f"0::/user.slice/user-1000.slice/user@1000.service/app.slice/a{sep}0::/system.slice/victim.service\n"
    unit = resolve(cgroup_path(text))
    assert unit.kind == USER and unit.uid == 1000 and not unit.valid


@pytest.mark.parametrize("text", [
    # A newline in her cgroup's name forges a whole line, in the unified path or in the v1 one.
    "0::/user.slice/user-1000.slice/user@1000.service/app.slice/a\n0::/system.slice/victim.service\n",
    "9:name=systemd:/user.slice/user-1000.slice/user@1000.service/a\n0::/system.slice/victim.service\n"
    "0::/user.slice/user-1000.slice/user@1000.service/a\n0::/system.slice/victim.service\n",
    "0::/user.slice/user-1000.slice/user@1000.service/a\n0::/init.scope\n",
])
def test_a_forged_cgroup_line_never_names_a_system_unit(text: str) -> None:
    unit = resolve(cgroup_path(text))
    assert unit.kind in (USER, USER_MANAGER) and unit.uid == 1000


def test_ambiguous_cgroup_text_outside_user_territory_is_unmanaged() -> None:
    assert cgroup_path("0::/system.slice/a.service\n0::/system.slice/b.service\n") is None


def test_a_users_own_pid_namespace_stays_hers() -> None:
    path = "/user.slice/user-1000.slice/user@1000.service/machine.slice/machine-prod.scope"
    unit = resolve(path, pid_namespace="pid:[4026532999]")
    assert (unit.kind, unit.uid) == (USER, 1000)
    session = resolve("/user.slice/user-1000.slice/session-2.scope", pid_namespace="pid:[4026532999]")
    assert (session.kind, session.uid) == (SESSION, 1000)
