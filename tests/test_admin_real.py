"""The admin's view for real: restartctl in a systemd 252 container, driven through a real
pseudo-terminal (python's pty module, inside the container) like an admin at the keyboard."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.container import Container
from tests.support.demohost import NAMES, RCTL, apply, setup, unit_file
from tests.support.terminal import at_terminal

pytestmark = pytest.mark.real

def status(c: Container) -> tuple[int, str]:
    r = c.exec([*RCTL, "status"])
    return r.returncode, r.stdout + r.stderr


def pending_units(c: Container) -> dict[str, str]:
    doc = json.loads(c.exec([*RCTL, "status", "--json"]).stdout)
    return {u["unit"]: u["status"] for u in doc["last_run"]["units"]}


@pytest.fixture
def c(container_factory: Callable[..., Container]) -> Container:
    return container_factory("rctl-admin", boot=True)


SLOW = unit_file("/usr/bin/rctl-sleeper", "ExecStop=/bin/sleep 8")
ORDER = '[settings]\nunattended_mode = "list"\nrestart_first = ["rctl-demod.service"]\n' \
        'restart_last = ["rctl-other.service"]\n'


def test_ctrl_c_during_a_slow_restart_records_the_partial_outcome(c: Container,
                                                                   demo_debs: dict[str, dict[str, Path]]) -> None:
    setup(c, demo_debs, units={"rctl-slow.service": SLOW, "rctl-other.service": unit_file("/usr/bin/rctl-sleeper")})
    c.write_file("/etc/restartctl/policy.toml", ORDER)
    code, out = at_terminal(c, [*RCTL, "apply", "--yes"], [
        ("expect", "3 units, 3 packages"),               # the summary comes first,
        ("expect", "rctl-demod.service: restarted"),      # then a line as each restart finishes
        ("send", "\x03"),                                 # Ctrl-C while rctl-slow.service stops (8 s)
        ("expect", "interrupted: 2 units not handled stay pending")])
    assert code == 130, out
    assert out.index("3 units, 3 packages") < out.index("rctl-demod.service: restarted")
    units = pending_units(c)
    assert units["rctl-demod.service"] == "done" and units["rctl-other.service"] != "done", units
    code, text = status(c)
    assert code == 1 and "1 restarted, 2 pending" in text, text
    c.wait_active("rctl-slow.service")  # systemd finishes the restart it was asked for


PROMPT = "restart them? y: all, n: none, p: pick [Y/n/p/?] "
THREE = {f"rctl-a{i}.service": unit_file("/usr/bin/rctl-sleeper") for i in range(3)}


def test_ask_mode_one_list_then_pick_then_waves(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    """Issue 14: the whole list once, one question (yes / no / pick by number), then the chosen
    restarts in waves: a canary, then the rest together."""
    setup(c, demo_debs, units=THREE)
    c.write_file("/etc/restartctl/policy.toml", '[settings]\nunattended_mode = "list"\nsettle = 0\n')
    old = {n: c.main_pid(n) for n in [*THREE, "rctl-demod.service"]}
    code, out = at_terminal(c, [*RCTL, "apply", "--mode", "ask"], [
        ("expect", PROMPT),
        ("send", "?\n"),
        ("expect", "p: pick which, by number"),
        ("send", "p\n"),
        ("expect", "which (numbers from 1 to 4, e.g. 1 3-5; Enter: none)? "),
        ("send", "7\n"),
        ("expect", "not numbers from 1 to 4: 7"),
        ("send", "1 3-4\n"),
        ("expect", "restarted, ")])
    assert code == 0, out
    question = out.index(PROMPT)
    listing = out[:question]
    assert re.search(r"4 units, \d+ packages", listing), out
    assert [line.split()[1:3] for line in listing.splitlines() if re.match(r"restartctl: +\d+  ", line)] == [
        ["1", "rctl-a0.service:"], ["2", "rctl-a1.service:"], ["3", "rctl-a2.service:"], ["4", "rctl-demod.service:"]]
    assert "within" in listing and "Enter means yes" in listing, out
    assert out.count("rctl-a0.service: systemctl restart") == 1  # the list is shown once
    assert "rctl-a1.service: left alone: declined at the prompt" in out, out
    now = {n: c.main_pid(n) for n in old}
    assert [n for n in old if now[n] != old[n]] == ["rctl-a0.service", "rctl-a2.service", "rctl-demod.service"]
    doc = json.loads(c.read_file("/var/lib/restartctl/pending.json"))
    waves = {u["unit"]: u.get("wave") for u in doc["units"] if u.get("status") == "done"}
    assert waves["rctl-a0.service"] == 1 and waves["rctl-a2.service"] == waves["rctl-demod.service"] == 2, waves
    assert pending_units(c)["rctl-a1.service"] == "declined"


def test_ask_mode_no_default_no_end_of_input_and_ctrl_c(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    setup(c, demo_debs, units={"rctl-other.service": unit_file("/usr/bin/rctl-sleeper")})
    c.write_file("/etc/restartctl/policy.toml", ORDER + 'ask_default = "no"\n')
    old = {n: c.main_pid(n) for n in ("rctl-demod.service", "rctl-other.service")}
    code, out = at_terminal(c, [*RCTL, "apply", "--mode", "ask"], [
        ("expect", "p: pick [y/N/p/?] "), ("send", "\n"),  # Enter: no
        ("expect", "rctl-other.service: left alone")])
    assert code == 0 and "Enter means no" in out, out
    assert "rctl-demod.service: left alone: declined at the prompt" in out, out
    code, out = at_terminal(c, [*RCTL, "apply", "--mode", "ask"], [
        ("expect", "p: pick [y/N/p/?] "), ("send", "p\n"), ("expect", "Enter: none)? "),
        ("send", "\x04"),  # Ctrl-D: end of input
        ("expect", "rctl-other.service: left alone")])
    assert code == 0, out
    assert "rctl-demod.service: left alone: not restarted: no answer at the prompt" in out, out
    code, out = at_terminal(c, [*RCTL, "apply", "--mode", "ask"], [
        ("expect", "p: pick [y/N/p/?] "), ("send", "\x03"),  # Ctrl-C at the question
        ("expect", "interrupted: 2 units not handled stay pending: rctl-demod.service, rctl-other.service")])
    assert code == 130, out
    assert pending_units(c) == {"rctl-demod.service": "listed", "rctl-other.service": "listed"}
    assert {n: c.main_pid(n) for n in old} == old


def test_ask_mode_without_a_terminal_says_it_only_lists(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    setup(c, demo_debs)
    code, out = apply(c, "--mode", "ask")
    assert "mode ask needs a terminal and there is none: only listing (mode list)" in out, out
    assert "[Y/n/p" not in out


def test_the_hook_ask_mode_on_the_apt_terminal(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    """apt at a terminal, the policy asks: Ctrl-C at the hook's prompt is recorded, never a traceback;
    the next apt run with -y does not stop at the prompt."""
    setup(c, demo_debs)
    c.write_file("/etc/restartctl/policy.toml", '[settings]\nmode = "ask"\n')
    c.install_debs([demo_debs["1.0"][n] for n in NAMES])   # back to v1, restarted onto it
    c.systemctl("restart", "rctl-demod.service")
    c.wait_active("rctl-demod.service")
    c.exec(["rm", "-f", "/var/lib/restartctl/pending.json"])
    cfg = c.local_repo([demo_debs["2.0"][n] for n in NAMES])
    c.check(["apt-get", "-q", "update"], env={"APT_CONFIG": cfg})
    # The harness's apt configuration assumes yes: this first run is told not to.
    apt = ["/usr/bin/apt-get", "-q", "-o", "Dpkg::Use-Pty=0", "-o", "APT::Get::Assume-Yes=false", "install", *NAMES]
    code, out = at_terminal(c, apt, [("expect", "p: pick [Y/n/p/?] "), ("send", "\x03"),
                                     ("expect", "not handled stay")], env={"APT_CONFIG": cfg})
    assert "interrupted: 1 unit not handled stays pending" in out, out
    assert pending_units(c) == {"rctl-demod.service": "listed"}
    # -y: apt was told to assume yes, so the hook does not ask either.
    c.install_debs([demo_debs["1.0"][n] for n in NAMES])
    installed = c.check(["dpkg-query", "-W", "-f", "${Version}\n", *NAMES]).split()
    assert installed == ["1.0"] * len(NAMES), installed
    c.systemctl("restart", "rctl-demod.service")
    c.wait_active("rctl-demod.service")
    old = c.main_pid("rctl-demod.service")
    # No binary cache: apt reads the status file dpkg just wrote. (Once, on a loaded machine, apt said
    # "already the newest version (2.0)" right after this downgrade; a stale cache is the suspect, the
    # versions check above tells the two apart if it happens again.)
    code, out = at_terminal(c, ["/usr/bin/apt-get", "-q", "-o", "Dpkg::Use-Pty=0", "-o", "Dir::Cache::pkgcache=",
                                "-o", "Dir::Cache::srcpkgcache=", "-y", "install", *NAMES],
                            [("expect", "restarted")],
                            env={"APT_CONFIG": cfg})
    assert "[Y/n/p" not in out and "assume yes (-y): restarting without asking" in out, out
    c.wait_active("rctl-demod.service")
    assert c.main_pid("rctl-demod.service") not in (0, old)


def restartctl_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("restartctl: ")]


def test_the_apt_terminal_summary_backlog_and_next_step(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    """What a real apt upgrade prints: a short summary, a line per unit, the next step; the next apt run
    names this transaction's units only and the earlier backlog in one line."""
    from tests.support.checkout import install_hooks

    install_hooks(c)
    c.check(["rm", "-f", "/usr/sbin/policy-rc.d"])
    c.write_file("/etc/restartctl/policy.toml", '[settings]\nunattended_mode = "list"\n')
    c.install_debs([demo_debs["1.0"][n] for n in NAMES])
    c.write_file("/etc/systemd/system/rctl-other.service", unit_file("/usr/bin/rctl-sleeper"))
    c.systemctl("daemon-reload")
    for unit in ("rctl-demod.service", "rctl-other.service"):
        c.systemctl("start", unit)
        c.wait_active(unit)
    cfg = c.local_repo([demo_debs["2.0"][n] for n in (*NAMES, "rctl-oldlib1")])
    c.check(["apt-get", "-q", "update"], env={"APT_CONFIG": cfg})
    apt = ["apt-get", "-q", "-o", "Dpkg::Use-Pty=0", "install"]
    r = c.exec([*apt, *NAMES], env={"APT_CONFIG": cfg}, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = restartctl_lines(r.stdout)
    assert lines[0] == ("restartctl: 2 units, 3 packages (rctl-demod, rctl-libdemo1:amd64, rctl-sleeper) "
                        "use replaced files:"), r.stdout
    assert sorted(lines[1:3]) == [
        "restartctl:   rctl-demod.service: restart: systemctl restart -- rctl-demod.service",
        "restartctl:   rctl-other.service: restart: systemctl restart -- rctl-other.service"], r.stdout
    assert lines[-1] == "restartctl: next: 'restartctl apply' restarts the 2 units listed", r.stdout
    # The next transaction touches nothing those units use: they are the backlog, in one line.
    r = c.exec([*apt, "rctl-oldlib1"], env={"APT_CONFIG": cfg}, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert restartctl_lines(r.stdout) == [
        "restartctl: 2 units still pending from earlier runs ('restartctl status' lists them)",
        "restartctl: nothing was restarted (list mode); 'restartctl plan' shows the details",
        "restartctl: next: 'restartctl apply' restarts the 2 units listed"], r.stdout
    code, text = status(c)
    assert code == 1 and "rctl-demod.service (system): restart: service uses replaced files" in text, text


def test_dry_run_agrees_with_the_real_run(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    script = ("/usr/bin/rctl-sleeper & while [ ! -e /srv/rctl/go ]; do sleep 0.1; done; "
              "/usr/sbin/restartctl apply --dry-run > /srv/rctl/admin.out 2>&1; echo $? > /srv/rctl/admin.rc; "
              "sleep 600")
    setup(c, demo_debs, units={"rctl-admin.service": unit_file(f"/bin/sh -c '{script}'")})
    c.write_file("/srv/rctl/go", "")
    deadline = 60
    while c.exec(["test", "-s", "/srv/rctl/admin.rc"]).returncode != 0:
        deadline -= 1
        assert deadline > 0, c.exec(["cat", "/srv/rctl/admin.out"]).stdout
        c.exec(["sleep", "1"])
    out = c.read_file("/srv/rctl/admin.out").decode()
    assert ("rctl-admin.service: restart: systemctl restart -- rctl-admin.service "
            "(would be skipped: restartctl itself runs inside this unit)") in out, out
    assert "rctl-demod.service: restart: systemctl restart -- rctl-demod.service\n" in out, out
    assert c.read_file("/srv/rctl/admin.rc").decode().strip() == "1"  # as plan: something to do
    assert c.exec([*RCTL, "plan"]).returncode == 1


def test_check_and_status_after_a_failed_restart(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    breakable = unit_file("/usr/bin/rctl-sleeper", "ExecStartPre=/bin/sh -c 'test ! -e /srv/rctl/break'")
    setup(c, demo_debs, units={"rctl-bad.service": breakable})
    c.write_file("/srv/rctl/break", "")
    code, out = apply(c, "--yes")
    assert code == 1 and "rctl-bad.service: FAILED" in out, out
    assert "next: see why rctl-bad.service failed ('systemctl status rctl-bad.service')" in out, out
    r = c.exec([*RCTL, "check"])
    assert r.returncode == 2, r.stdout
    assert r.stdout.startswith("RESTARTCTL CRITICAL - 1 unit down after a failed restart (rctl-bad.service)"), r.stdout
    code, text = status(c)
    assert code == 1 and "rctl-bad.service (system): restart FAILED" in text, text
    assert "rctl-bad.service is not running now" in text, text
    c.exec(["rm", "/srv/rctl/break"])
    c.systemctl("start", "rctl-bad.service")
    c.wait_active("rctl-bad.service")
    r = c.exec([*RCTL, "check"])
    assert "down after a failed restart" not in r.stdout, r.stdout
