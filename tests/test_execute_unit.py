"""The executor's pure parts and its small I/O helpers, without systemd (the real restarts are in
test_apply.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from restart import execute


def test_parse_show_blocks_follow_the_argument_order() -> None:
    text = "ActiveState=active\nMainPID=5\n\nActiveState=inactive\nMainPID=0\n"
    assert execute.parse_show(text, ["a.service", "b.service"]) == {
        "a.service": {"ActiveState": "active", "MainPID": "5"},
        "b.service": {"ActiveState": "inactive", "MainPID": "0"}}
    assert execute.parse_show("", ["a.service"]) == {}


def test_programs_run_by_fixed_path() -> None:
    assert execute.resolved(("systemctl", "restart", "--", "x.service")) == [
        "/usr/bin/systemctl", "restart", "--", "x.service"]
    assert execute.resolved(("invoke-rc.d", "x", "restart")) == ["/usr/sbin/invoke-rc.d", "x", "restart"]
    assert execute.resolved(("/usr/local/sbin/mine", "x")) == ["/usr/local/sbin/mine", "x"]


def test_desktop_notification_uses_the_bus_of_the_uid() -> None:
    argv, env = execute.desktop_argv(1000, "alice", "t", "b")
    assert argv == ["/usr/sbin/runuser", "-u", "alice", "--", "/usr/bin/notify-send", "--app-name=restartctl",
                    "--", "t", "b"]
    assert env["DBUS_SESSION_BUS_ADDRESS"] == "unix:path=/run/user/1000/bus"
    assert set(env) == {"PATH", "LANG", "DBUS_SESSION_BUS_ADDRESS"}


def test_application_names_come_from_desktop_entries(tmp_path: Path) -> None:
    (tmp_path / "firefox.desktop").write_text(
        "[Desktop Entry]\nType=Application\nName=Firefox Web Browser\nExec=/usr/lib/firefox-esr/firefox-esr %u\n")
    (tmp_path / "broken.desktop").write_text("this is not a desktop entry\n\x00")
    (tmp_path / "term.desktop").write_text("[Desktop Entry]\nType=Application\nName=Terminal\nExec=xterm\n")
    names = execute.app_names({"/usr/lib/firefox-esr/firefox-esr", "/usr/bin/xterm", "/usr/bin/vim"}, tmp_path)
    assert names == {"firefox-esr": "Firefox Web Browser", "xterm": "Terminal"}


def test_sessions_from_logind_records(tmp_path: Path) -> None:
    d = tmp_path / "systemd" / "sessions"
    d.mkdir(parents=True)
    (d / "3").write_text("UID=1000\nUSER=alice\nTTY=pts/2\nTYPE=tty\n")
    (d / "4").write_text("UID=1001\nUSER=bob\nTYPE=wayland\n")
    (d / "5.ref").write_text("")
    (d / "6").write_text("UID=evil\nTTY=../../etc/passwd\n")
    assert execute.sessions(tmp_path) == [execute.Session(1000, "alice", "pts/2", False, "3"),
                                          execute.Session(1001, "bob", "", True, "4")]


def test_terminal_writes_only_to_the_users_own_terminal(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        name = Path(os.ttyname(slave))
        owner = os.fstat(slave).st_uid
        assert not execute.write_to_tty(name, owner + 4242, "nope")
        assert execute.write_to_tty(name, owner, "hello\n")
        assert b"hello" in os.read(master, 100)
        plain = tmp_path / "file"
        plain.write_text("")
        assert not execute.write_to_tty(plain, os.getuid(), "not a terminal")
        assert plain.read_text() == ""
        link = tmp_path / "link"
        link.symlink_to(name)
        assert not execute.write_to_tty(link, owner, "through a symlink")
    finally:
        os.close(master)
        os.close(slave)


def test_own_ancestry_is_never_restarted(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, ppid, cg in ((30, 20, "0::/system.slice/apt-daily-upgrade.service\n"),
                          (20, 1, "0::/system.slice/admin-job.service\n"),
                          (1, 0, "0::/init.scope\n")):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cgroup").write_text(cg)
        (proc / str(pid) / "stat").write_bytes(f"{pid} (x) S {ppid} 0 0\n".encode())
    assert execute.ancestor_units(proc, 30) == {"apt-daily-upgrade.service", "admin-job.service"}


@pytest.mark.parametrize("layout", ["", "unified", "systemd"])  # cgroup v2, hybrid, v1's name=systemd
def test_a_units_processes_come_from_its_cgroup_and_the_cgroups_below(tmp_path: Path, layout: str) -> None:
    top = tmp_path.joinpath(*filter(None, [layout, "system.slice", "demo.service"]))
    (top / "worker").mkdir(parents=True)
    (top / "cgroup.procs").write_text("10\n11\n")
    (top / "worker" / "cgroup.procs").write_text("12\n")
    (tmp_path.joinpath(*filter(None, [layout, "system.slice"])) / "cgroup.procs").write_text("99\n")
    assert sorted(execute.unit_pids(tmp_path, "/system.slice/demo.service") or []) == [10, 11, 12]
    for odd in ("", "system.slice/demo.service", "/system.slice/../system.slice/demo.service", "/gone.service"):
        assert execute.unit_pids(tmp_path, odd) is None, odd
