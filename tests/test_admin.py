"""The admin's view over fixture hosts: the pending record is never lost or narrowed, exit codes and
one-line errors tell the truth.  (Real-terminal and real-upgrade checks are in tests/test_admin_real.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from restart import apply, hook, state
from restart import ask as ask_mode
from restart.cli import main
from restart.plan import Status
from restart.policy import Act
from restart.roots import Roots
from restart.units import SYSTEM, UnitKind
from tests.support.fixturehost import REPO, Host

BOOT = "0f0e0d0c-0b0a-0908-0706-050403020100"


def fixture_host(tmp_path: Path) -> tuple[Host, Roots]:
    host = Host(tmp_path, systemd=True)
    host.add(10, cgroup="0::/system.slice/demod.service\n", name="demod")
    roots = host.roots()
    (roots.proc / "sys" / "kernel" / "random").mkdir(parents=True)
    (roots.proc / "sys" / "kernel" / "random" / "boot_id").write_text(BOOT + "\n")
    return host, roots


def earlier_record(roots: Roots) -> None:
    """An earlier run of this boot left other.service pending on libother1."""
    other = {"unit": "other.service", "kind": "system", "uid": None, "pids": [20], "packages": ["libother1:amd64"],
             "action": "restart", "argv": None, "reason": "", "suggested": None, "rule": None,
             "status": "failed", "detail": "exit status 1"}
    state.save_pending(roots.state, BOOT, trigger="apt", packages=frozenset({"libother1:amd64", "libdemo1:amd64"}),
                       units=[other])


def act(roots: Roots, scope: list[str] | None, *, deadline: float) -> int:
    return apply.act(roots, "manual", apply.Log(sys.stdout, sys.stderr, quiet=True), scope=scope, old_files=None,
                    failed=[], mode="list", deadline=deadline)


def record(roots: Roots) -> dict[str, Any]:
    doc = state.read_json(roots.state, state.PENDING)
    assert doc is not None
    return doc


def test_a_scoped_run_merges_into_the_pending_record(tmp_path: Path) -> None:
    _, roots = fixture_host(tmp_path)
    earlier_record(roots)
    act(roots, ["libdemo1"], deadline=time.monotonic() + 60)
    doc = record(roots)
    assert sorted(doc["packages"]) == ["libdemo1:amd64", "libother1:amd64"]
    assert sorted(u["unit"] for u in doc["units"]) == ["demod.service", "other.service"]


def test_an_apply_keeps_what_only_a_hook_run_records(tmp_path: Path) -> None:
    """Why: an apply reads the last record once, before its restarts, and replaces it at the end: how far
    the hook runs read the journal, when the last complete one began and what the runs since missed
    must come through (else the next hook run reads the whole journal again, or forgets a gap)."""
    _, roots = fixture_host(tmp_path)
    state.save_pending(roots.state, BOOT, trigger="apt", packages=frozenset(), units=[], journal=(5, 38),
                       started=1000.0, incomplete=["the journal lost events"])
    act(roots, None, deadline=time.monotonic() + 60)
    doc = record(roots)
    assert doc["trigger"] == "manual" and [u["unit"] for u in doc["units"]] == ["demod.service"]
    assert (doc["journal"], doc["complete"], doc["incomplete"]) == \
        ({"inode": 5, "offset": 38}, 1000.0, ["the journal lost events"])


def test_a_scoped_run_settles_what_it_looked_at(tmp_path: Path) -> None:
    _, roots = fixture_host(tmp_path)
    earlier_record(roots)
    act(roots, ["libother1"], deadline=time.monotonic() + 60)  # other.service is no longer stale
    doc = record(roots)
    assert doc["packages"] == ["libdemo1:amd64"]
    assert doc["units"] == []


def test_a_run_out_of_time_keeps_everything_pending(tmp_path: Path) -> None:
    _, roots = fixture_host(tmp_path)
    earlier_record(roots)
    act(roots, None, deadline=time.monotonic() - 1)
    doc = record(roots)
    assert sorted(doc["packages"]) == ["libdemo1:amd64", "libother1:amd64"]
    assert [u["unit"] for u in doc["units"]] == ["other.service"]


def test_a_complete_unscoped_run_replaces_the_record(tmp_path: Path) -> None:
    _, roots = fixture_host(tmp_path)
    earlier_record(roots)
    act(roots, None, deadline=time.monotonic() + 60)
    doc = record(roots)
    assert doc["packages"] == ["libdemo1:amd64"]
    assert [u["unit"] for u in doc["units"]] == ["demod.service"]


def test_a_record_of_an_earlier_boot_is_not_carried_over(tmp_path: Path) -> None:
    _, roots = fixture_host(tmp_path)
    earlier_record(roots)
    (roots.proc / "sys" / "kernel" / "random" / "boot_id").write_text("another-boot\n")
    act(roots, ["libdemo1"], deadline=time.monotonic() + 60)
    assert record(roots)["packages"] == ["libdemo1:amd64"]


# ---- every bad input: one line, the right exit code, never a silent all-clear -----------------

@pytest.mark.parametrize(("args", "code", "words"), [
    (["scan", "--admindir", "/nonexistent"], 2, "/nonexistent: not a dpkg database"),
    (["plan", "--packages", "no-such-package"], 2, "not an installed package: no-such-package"),
    (["scan", "--textfile", "/tmp/x.prom"], 2, "needs --format openmetrics"),
    (["apply", "--budget", "-1"], 2, "--budget: must not be negative"),
    (["hook", "--budget", "-5"], 2, "--budget: must not be negative"),
    (["plan", "--bogus"], 2, "unrecognized arguments: --bogus (see 'restartctl plan --help')"),
    (["check", "--json"], 3, "RESTARTCTL UNKNOWN - usage: unrecognized arguments: --json"),
    (["check", "--services-warning", "-1"], 3, "RESTARTCTL UNKNOWN - usage: argument --services-warning"),
    (["check", "--admindir", "/nonexistent"], 3, "RESTARTCTL UNKNOWN - /nonexistent: not a dpkg database"),
])
def test_bad_input_is_one_line_with_its_exit_code(tmp_path: Path, args: list[str], code: int, words: str) -> None:
    host, _ = fixture_host(tmp_path)
    argv = host.argv(*args)
    if "--admindir" in args:  # the fixture's own comes after: put the bad one last
        argv += ["--admindir", "/nonexistent"]
    r = subprocess.run([sys.executable, "-m", "restart", *argv, "--state", str(tmp_path / "state")],
                       capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    out = r.stdout + r.stderr
    assert r.returncode == code, out
    assert words in out and out.count("\n") == 1, out


def test_textfile_without_the_node_exporter_directory_is_an_error(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from restart import formats

    monkeypatch.setattr(formats, "TEXTFILE_DIR", tmp_path / "no-node-exporter")
    host, _ = fixture_host(tmp_path)
    assert main(host.argv("scan", "--format", "openmetrics", "--textfile")) == 2
    assert "textfile directory" in capsys.readouterr().err


def test_a_unit_glob_without_a_type_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host, roots = fixture_host(tmp_path)
    (roots.etc / "restartctl").mkdir(parents=True)
    (roots.etc / "restartctl" / "policy.toml").write_text('[[rule]]\nunit = "nginx"\naction = "ignore"\n')
    assert main([*host.argv("policy", "check")[:1], "check", *host.argv()]) == 2
    err = capsys.readouterr().err
    assert "policy.toml:2: rule #1: unit 'nginx' can never match" in err and "'nginx.service'" in err


def test_apply_as_a_user_is_one_clear_line(tmp_path: Path) -> None:
    host, _ = fixture_host(tmp_path)
    r = subprocess.run(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        sys.executable, "-m", "restart", *host.argv("apply", "--yes"), "--state", str(tmp_path / "s")],
                       capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("restartctl: apply must run as root") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr and "Errno" not in r.stderr


def test_apply_out_of_time_exits_non_zero_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host, _ = fixture_host(tmp_path)
    assert main([*host.argv("apply", "--dry-run", "--budget", "0"), "--state", str(tmp_path / "state")]) == 2
    assert "not scanned before the time ran out" in capsys.readouterr().err


def test_dry_run_exits_as_plan_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host, _ = fixture_host(tmp_path)
    assert main(host.argv("plan")) == 1
    assert main([*host.argv("apply", "--dry-run"), "--state", str(tmp_path / "state")]) == 1


# ---- status: an unusable record is said, a needed reboot is shown --------------------------------

def test_status_of_a_damaged_record_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host, roots = fixture_host(tmp_path)
    roots.state.mkdir(mode=0o755)
    (roots.state / "pending.json").write_text("{not json")
    assert main(["status", *host.argv()[:0], "--proc", str(roots.proc), "--run", str(roots.run),
                 "--state", str(roots.state), "--admindir", str(roots.admindir), "--root", str(roots.root)]) == 2
    out, err = capsys.readouterr()
    assert "No run recorded yet" not in out and "pending.json: not JSON" in err and "set aside" in err


def test_status_of_a_world_writable_record_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, roots = fixture_host(tmp_path)
    earlier_record(roots)
    os.chmod(roots.state / "pending.json", 0o666)
    assert main(["status", "--proc", str(roots.proc), "--run", str(roots.run), "--state", str(roots.state),
                 "--admindir", str(roots.admindir), "--root", str(roots.root)]) == 2
    assert "could have been written by someone other than root" in capsys.readouterr().err


def test_status_shows_a_needed_reboot_and_what_became_of_each_unit(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _, roots = fixture_host(tmp_path)
    earlier_record(roots)
    (roots.run / "reboot-required").write_text("*** System restart required ***\n")
    (roots.run / "reboot-required.pkgs").write_text("linux-image-amd64\n")
    code = main(["status", "--proc", str(roots.proc), "--run", str(roots.run), "--state", str(roots.state),
                 "--admindir", str(roots.admindir), "--root", str(roots.root)])
    out = capsys.readouterr().out
    assert code == 1
    assert "Reboot needed: flag" in out and "linux-image-amd64" in out, out
    assert "other.service (system): restart FAILED: exit status 1" in out, out


# ---- the ask-mode prompt (the real terminal is in test_admin_real.py) ------------------------------

def ask(answers: str, *, default_yes: bool = True, units: int = 3) -> tuple[list[bool | None], str]:
    """The answers the one question gives for a list of ``units`` restarts, and what it showed."""
    import io

    from restart.plan import Action
    from restart.units import UnitGroup

    prompts = io.StringIO()
    choose = ask_mode.chooser(io.StringIO(answers), prompts, default_yes=default_yes, deadline=time.monotonic() + 60)
    actions = [Action(UnitGroup(SYSTEM, f"u{i}.service", None, False, True, (i,), ("p",), ()), Act.RESTART,
                      ("systemctl", "restart", "--", f"u{i}.service"), "it uses replaced files") for i in range(units)]
    return choose(actions), prompts.getvalue()


def test_ask_shows_the_whole_list_once_then_one_question() -> None:
    answers, shown = ask("y\n")
    assert answers == [True, True, True]
    assert shown.count("restartctl:    2  u1.service: systemctl restart -- u1.service (it uses replaced files)") == 1
    assert shown.count("restart them? y: all, n: none, p: pick [Y/n/p/?]") == 1
    assert ask("n\n")[0] == [False, False, False]
    assert ask("\n")[0] == [True, True, True]  # Enter: the policy's default


def test_ask_default_no() -> None:
    answers, shown = ask("\n", default_yes=False)
    assert answers == [False, False, False] and "[y/N/p/?]" in shown


def test_ask_pick_by_number() -> None:
    assert ask("p\n1 3\n")[0] == [True, False, True]
    assert ask("2-3\n")[0] == [False, True, True]  # the numbers at once
    assert ask("p\n\n")[0] == [False, False, False]  # Enter: none
    answers, shown = ask("p\n4\n0\n2\n")
    assert answers == [False, True, False]
    assert "not numbers from 1 to 3: 4" in shown and "not numbers from 1 to 3: 0" in shown


def test_picked_numbers() -> None:
    assert ask_mode.picked("1, 3-4 2", 5) == {1, 2, 3, 4}
    assert ask_mode.picked("", 5) == set()
    for wrong in ("0", "6", "3-2", "a", "1-", "-1", "1 x"):
        assert ask_mode.picked(wrong, 5) is None, wrong


def test_ask_explains_the_answers_on_a_question_mark() -> None:
    answers, shown = ask("?\nwhat\ny\n")
    assert answers == [True, True, True]
    assert shown.count("p: pick which, by number") == 2 and shown.count("restart them?") == 3
    assert shown.count("u0.service: systemctl restart") == 1  # the list is shown once


def test_ask_end_of_input_restarts_nothing() -> None:
    assert ask("")[0] == [None, None, None]
    assert ask("p\n")[0] == [None, None, None]  # the input ended while picking


def test_ask_gives_up_when_no_answer_comes_in_time(tmp_path: Path) -> None:
    import io

    from restart.plan import Action
    from restart.units import UnitGroup

    read_end, write_end = os.pipe()  # nobody ever writes: the admin went away
    prompts = io.StringIO()
    with os.fdopen(read_end) as answers:
        choose = ask_mode.chooser(answers, prompts, deadline=time.monotonic() + 0.3)
        started = time.monotonic()
        action = Action(UnitGroup(SYSTEM, "u.service", None, False, True, (1,), ("p",), ()), Act.RESTART,
                        ("systemctl", "restart", "--", "u.service"), "")
        assert choose([action]) == [None]
    os.close(write_end)
    assert time.monotonic() - started < 5 and "no answer in time" in prompts.getvalue()


# ---- words ----------------------------------------------------------------------------------------

def plan_action(name: str | None, packages: tuple[str, ...], *, kind: UnitKind = SYSTEM, action: str = "restart",
                uid: int | None = None, members: tuple[Any, ...] = ()) -> Any:
    from restart.plan import Action
    from restart.units import UnitGroup

    argv = ("systemctl", "restart", "--", name) if action == "restart" and name else None
    return Action(UnitGroup(kind, name, uid, False, True, (1,), packages, members), Act(action), argv, "why")


def test_the_headline_is_short_however_many_packages() -> None:
    from restart import report

    actions = [plan_action(f"u{i}.service", (f"lib{i:02}",)) for i in range(11)]
    actions.append(plan_action("x.service", tuple(f"more{i:02}" for i in range(17))))
    assert report.headline(actions) == "12 units, 28 packages (lib00, lib01, lib02, … 25 more) use replaced files:"


def test_reboot_reasons_are_one_line_per_cause() -> None:
    from restart import report
    from restart.reboot import ReasonKind, RebootReason

    found = [RebootReason(ReasonKind.SERVICE, f"lib{i}", "dbus.service: restarting the system bus; reboot instead")
             for i in range(7)]
    assert report.reboot_lines(found) == [
        "a reboot is needed: service (lib0, lib1, lib2, … 4 more): dbus.service: restarting the system bus; "
        "reboot instead"]


def test_the_backlog_is_one_line_and_the_run_ends_with_the_next_step(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    host, roots = fixture_host(tmp_path)
    apply.act(roots, "apt", apply.Log(sys.stdout, sys.stderr, quiet=False), scope=["libdemo1", "libother1"],
             old_files=None, failed=[], mode="list", deadline=time.monotonic() + 60, fresh=frozenset({"libother1"}))
    out = capsys.readouterr().out.splitlines()
    assert out == ["restartctl: 1 unit still pending from earlier runs ('restartctl status' lists them)",
                   "restartctl: nothing was restarted (list mode); 'restartctl plan' shows the details",
                   "restartctl: next: 'restartctl apply' restarts the 1 unit listed"], out
    apply.act(roots, "apt", apply.Log(sys.stdout, sys.stderr, quiet=False), scope=["libdemo1"],
             old_files=None, failed=[], mode="list", deadline=time.monotonic() + 60,
             fresh=frozenset({"libdemo1:amd64"}))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "restartctl: 1 unit, 1 package (libdemo1:amd64) uses replaced files:", out
    assert out[1].startswith("restartctl:   demod.service: restart: systemctl restart"), out


def test_the_next_step_names_failures_units_left_to_people_and_a_reboot() -> None:
    from restart import report
    from restart.verify import Outcome

    failed, left, person = (plan_action("a.service", ("p",)), plan_action("b.service", ("p",)),
                            plan_action("c.service", ("p",), action="notify"))
    outcomes = [Outcome(failed, Status.FAILED, "x"), Outcome(left, Status.DECLINED, "")]
    step = report.next_step([failed, left, person], outcomes, listing=False, reboot=True)
    assert step == ("next: see why a.service failed ('systemctl status a.service'), then 'restartctl apply'; "
                    "'restartctl apply' retries the 1 unit not restarted; 'restartctl status' lists the 1 unit "
                    "left to people; reboot when convenient")
    assert report.next_step([failed], [Outcome(failed, Status.DONE, "")], listing=False, reboot=False) is None


def test_sd_pam_is_shown_as_a_helper_of_the_user_manager() -> None:
    from restart import report
    from restart.processes import ProcessInfo
    from restart.units import USER, Affected, Unit

    cgroup = "/user.slice/user-1000.slice/user@1000.service/init.scope"
    info = ProcessInfo(50, 40, 1000, "(sd-pam)", "/usr/lib/systemd/systemd", f"0::{cgroup}\n", None, ())
    member = Affected(info, Unit(USER, None, 1000, valid=False, cgroup=cgroup), (), ())
    title = report.title(plan_action(None, ("libc6",), kind=USER, uid=1000, members=(member,)).group)
    assert title == '"(sd-pam)" of the service manager of user 1000 (user@1000.service)'


@pytest.mark.parametrize(("unit", "action", "argv"), [
    ("user@1000.service", "reexec", "systemctl --user -M 1000@ daemon-reexec"),
    ("init.scope", "reexec", "systemctl daemon-reexec"),
    ("nginx.service", "restart", "systemctl restart -- nginx.service"),
])
def test_policy_explain_classifies_as_the_plan_does(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    unit: str, action: str, argv: str) -> None:
    host, _ = fixture_host(tmp_path)
    assert main(["policy", "explain", unit, *host.argv()]) == 0
    assert f"action: {action}: {argv}" in capsys.readouterr().out


def test_plan_text_names_the_deciding_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host, roots = fixture_host(tmp_path)
    (roots.etc / "restartctl").mkdir(parents=True)
    (roots.etc / "restartctl" / "policy.toml").write_text('# mine\n[[rule]]\nunit = "demod.service"\n'
                                                          'action = "try-restart"\n')
    assert main(host.argv("plan")) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[1] == "Plan: 1 try-restart."
    assert (f"  try-restart: systemctl try-restart -- demod.service  (rule {roots.etc}/restartctl/policy.toml:2)"
            in out), out


# ---- what needrestart users look for ----------------------------------------------------------------

def admin_policy(roots: Roots, text: str) -> None:
    (roots.etc / "restartctl").mkdir(parents=True, exist_ok=True)
    (roots.etc / "restartctl" / "policy.toml").write_text(text)


def test_a_program_is_ignored_by_its_executable_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host, roots = fixture_host(tmp_path)
    admin_policy(roots, '[settings]\nignore_exe = ["/usr/sbin/demo*"]\n')
    assert main(host.argv("plan")) == 0
    assert "ignore: the program is ignored (setting ignore_exe '/usr/sbin/demo*')" in capsys.readouterr().out
    admin_policy(roots, '[settings]\nignore_exe = ["demod"]\n')
    assert main(host.argv("plan")) == 2
    assert "ignore_exe' takes globs over absolute executable paths" in capsys.readouterr().err


def test_the_admin_extends_the_never_packaged_prefixes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host, roots = fixture_host(tmp_path)
    (roots.etc / "restartctl").mkdir(parents=True)
    mine = roots.etc / "restartctl" / "never-packaged"
    mine.write_text("# ours\n/usr/lib/x86_64-linux-gnu/libdemo\n")
    assert main(host.argv("scan")) == 0
    assert "No process uses replaced package files" in capsys.readouterr().out
    assert main(host.argv("scan", "--all")) == 1  # still listed with --all, never acted on
    capsys.readouterr()
    os.chmod(mine, 0o666)
    assert main(host.argv("scan")) == 2
    assert "writable only by root" in capsys.readouterr().err


def test_quiet_shows_only_the_next_step_on_the_apt_terminal(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    _, roots = fixture_host(tmp_path)
    admin_policy(roots, "[settings]\nquiet = true\n")
    apply.act(roots, "apt", apply.Log(sys.stdout, sys.stderr, quiet=False), scope=["libdemo1"], old_files=None,
             failed=[], mode="list", deadline=time.monotonic() + 60, fresh=frozenset({"libdemo1:amd64"}))
    assert capsys.readouterr().out == "restartctl: next: 'restartctl apply' restarts the 1 unit listed\n"


def test_users_are_not_notified_when_the_policy_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from restart import execute, notify, verify
    from restart.policy import Settings

    told: list[object] = []

    def tell(groups: object, run_dir: object, log: object, **kwargs: object) -> int:
        told.append(groups)
        return 1
    monkeypatch.setattr(notify, "notify", tell)
    action = plan_action("session-1.scope", ("p",), kind=UnitKind.SESSION, action="notify", uid=1000)
    for setting, expected in ((True, 1), (False, 0)):
        applied = execute.apply([action], Settings(notify_users=setting), proc=tmp_path, run_dir=tmp_path,
                                deadline=time.monotonic() + 60,
                                still_stale=lambda checks, until: [verify.Recheck([]) for _ in checks], choose=None,
                                report=lambda o: None, log=lambda line: None)
        assert applied.notified == expected
    assert len(told) == 1


def test_a_zero_hook_budget_still_bounds_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def forever(*args: object) -> None:
        while True:
            time.sleep(0.01)
    monkeypatch.setattr(hook, "_run", forever)
    assert hook.run(Roots(run=tmp_path), "manual", budget=0) == 0  # setitimer(0) would never fire
    assert "gave up after 0 s" in capsys.readouterr().err


def test_a_ctrl_c_at_the_prompt_stops_the_run_even_when_select_was_not_woken() -> None:
    """Why: a Ctrl-C that reached the process just before ``select`` went to sleep, or in another
    thread, left the prompt waiting out the whole deadline (seen once under load: the run hung).
    Here the signal is sent while the main thread blocks it, so its select is never interrupted."""
    import signal
    import threading

    from restart import ask as ask_mode

    class Stop(Exception):
        pass

    def stop(signum: int, frame: object) -> None:
        raise Stop

    def send() -> None:
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGUSR1)

    r, w = os.pipe()
    sender = threading.Thread(target=send)
    old = signal.signal(signal.SIGUSR1, stop)
    sender.start()  # before the mask: the sender's thread takes the signal
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    started = time.monotonic()
    try:
        with open(r, encoding="utf-8", closefd=False) as answers, pytest.raises(Stop):
            ask_mode._answer_ready(answers, 20)
        assert time.monotonic() - started < 5
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        signal.signal(signal.SIGUSR1, old)
        sender.join()
        os.close(r)
        os.close(w)
