"""The acting run (restart/apply.py) cut short, without systemd: what it records and says."""

from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path

import pytest

from restart import apply, execute, packages, report, state, unitstate, verify
from restart.plan import Action
from restart.policy import Act, Settings
from restart.processes import Confidence, Evidence, FileKind, ProcessInfo, StaleFile
from restart.roots import Roots
from restart.units import SYSTEM, USER, Affected, OwnedFile, Unit, UnitKind, group


def cut_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...]) -> tuple[Roots, list[Action]]:
    """A host without systemd whose first ``systemctl restart`` the hook's watchdog ends; restarts of ``names``."""
    def run(argv: list[str], timeout: float, **kwargs: object) -> subprocess.CompletedProcess[str]:
        if argv[1] == "restart":
            raise apply.Timeout  # the watchdog, while systemctl restart runs
        return subprocess.CompletedProcess(argv, 0, "ActiveState=active\nMainPID=5\n", "")
    monkeypatch.setattr(execute, "run", run)
    monkeypatch.setattr(unitstate, "POLICY_RC_D", str(tmp_path / "no-policy-rc.d"))
    roots = Roots(proc=tmp_path / "proc", run=tmp_path / "run", state=tmp_path / "state", root=tmp_path)
    for d in (roots.proc, roots.run, roots.state):
        d.mkdir(mode=0o755)
    (roots.proc / "sys" / "kernel" / "random").mkdir(parents=True)
    (roots.proc / "sys" / "kernel" / "random" / "boot_id").write_text("7d3e4c3a-0000-4000-8000-000000000001\n")
    lib = StaleFile(FileKind.CODE, "/usr/lib/libdemo.so.1", Confidence.CERTAIN, Evidence.REPLACED)
    stale = (OwnedFile(lib, "libdemo1"),)
    return roots, [Action(group([Affected(ProcessInfo(10 + i, 1, 0, "d", "/usr/sbin/d", "", None, ()), Unit(SYSTEM, n),
                                          stale, ())])[0], Act.RESTART, ("systemctl", "restart", "--", n), "")
                   for i, n in enumerate(names)]


def test_a_run_cut_short_by_the_watchdog_records_and_names_what_it_did_not_attempt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why (issue 14): a run the hook's watchdog ends in the middle of a restart must still say which
    units it never got to (they stay pending), and the one it was restarting is on record for the next run."""
    roots, actions = cut_short(tmp_path, monkeypatch, ("a.service", "b.service"))
    outcomes: list[verify.Outcome] = []
    log = apply.Log(io.StringIO(), io.StringIO(), quiet=True)
    begun: list[int] = []  # told as the first restart begins (the reboot state is read meanwhile): once
    importing: list[bool] = []  # the executor's modules are imported out of the collector's way (issue 14)

    class Importing:
        def __enter__(self) -> None:
            importing.append(True)

        def __exit__(self, *exc: object) -> None:
            importing.append(False)
    monkeypatch.setattr(apply, "Importing", Importing)
    why = apply._carry_out(roots, "apt", log, actions, Settings(), outcomes, failed=[], choose=None,
                           deadline=time.monotonic() + 60, earlier=set(), quiet=True,
                           db=packages.DpkgDatabase(tmp_path / "dpkg", tmp_path),
                           boot=state.boot_id(roots.proc), again={},
                           first=lambda: begun.append(1))
    assert why == "out of time" and outcomes == [] and begun == [1] and importing == [True, False]
    assert report.cut_short_line(actions, outcomes, why) == \
        "out of time: 2 units not handled stay pending: a.service, b.service"
    pid, entries = state.interrupted(roots.state, state.boot_id(roots.proc))
    assert [(e["unit"], e["status"]) for e in entries] == [("a.service", "started")]  # the next run checks it


def test_only_the_hook_command_imports_the_hook_module(tmp_path: Path) -> None:
    """Why (issue 17): the orchestrator lives in restart/apply.py; hook.py is the package hook's edge only
    (and status, which only reads the lock's neighbour records, imports neither: restart/runs.py)."""
    code = ("import sys; from restart import cli; cli.main(sys.argv[1:]); "
            "print(sorted(m for m in sys.modules if m in ('restart.hook', 'restart.apply')))")
    out = subprocess.run(["/usr/bin/python3", "-c", code, "status", "--state", str(tmp_path), "--run", str(tmp_path)],
                         capture_output=True, text=True, env={"PYTHONPATH": str(Path(__file__).parent.parent)},
                         check=False)
    assert out.stdout.splitlines()[-1] == "[]", out.stdout + out.stderr


def test_the_hooks_watchdog_is_the_policys_hook_budget(tmp_path: Path) -> None:
    """Why (issue 14): the hook's time is sized by the policy (a large server needs more than 60 s);
    a policy that cannot be read leaves the vendor default, never no watchdog."""
    from restart import hook

    data, etc = tmp_path / "data", tmp_path / "etc"
    (etc / "restartctl").mkdir(parents=True)
    data.mkdir()
    (data / "policy.toml").write_text("[settings]\nhook_budget = 120\n")
    roots = Roots(etc=etc, data=data, state=tmp_path / "state")
    assert hook.hook_budget(hook.hook_policy(roots)) == 120
    (etc / "restartctl" / "policy.toml").write_text("[settings]\nhook_budget = 400\n")
    assert hook.hook_budget(hook.hook_policy(roots)) == 400
    (etc / "restartctl" / "policy.toml").write_text("[settings]\nhook_budget = -1\n")
    assert hook.hook_budget(hook.hook_policy(roots)) == Settings().hook_budget == 120


def test_the_vendor_wave_size_is_one_wave_after_the_canary_on_a_server() -> None:
    """Why (issue 14): with waves of 32, 100 services took four service starts after the canary
    (3.6 x one systemctl restart of them all); the canary guards against a broken library, the
    breaker stops later waves, and after the canary one wave is what a boot does.  The vendor
    policy file and the built-in default agree."""
    from restart import policy

    shipped = policy.vendor(Path(__file__).resolve().parent.parent / "data").settings
    assert shipped.max_parallel == Settings().max_parallel == 128
    assert shipped == Settings()  # every vendor setting is the built-in default


def test_pid1s_socket_is_connected_ahead_only_for_restarts_asked_of_it_without_a_question(tmp_path: Path) -> None:
    """Why (issue 14): connecting while the plan's last steps run takes ~2 ms off the way to the canary;
    it is done only when system services are to be restarted on PID 1's socket, in mode auto (no
    question that could keep the connection waiting), on a host booted with systemd."""
    lib = StaleFile(FileKind.CODE, "/usr/lib/libdemo.so.1", Confidence.CERTAIN, Evidence.REPLACED)

    def action(kind: UnitKind, act: Act, uid: int | None = None) -> Action:
        g = group([Affected(ProcessInfo(10, 1, 0, "d", "/usr/sbin/d", "", None, ()), Unit(kind, "a.service", uid),
                            (OwnedFile(lib, "libdemo1"),), ())])[0]
        return Action(g, act, ("systemctl", "restart", "--", "a.service"), "")
    booted = Roots(run=tmp_path / "run")
    (booted.run / "systemd" / "system").mkdir(parents=True)
    restart = [action(SYSTEM, Act.RESTART)]
    assert apply.connect_ahead(booted, "auto", restart)
    assert not apply.connect_ahead(booted, "list", restart) and not apply.connect_ahead(booted, "ask", restart)
    assert not apply.connect_ahead(Roots(run=tmp_path / "none"), "auto", restart)
    assert not apply.connect_ahead(booted, "auto", [action(SYSTEM, Act.NOTIFY), action(USER, Act.RESTART, 1000)])


def test_the_boot_id_is_read_without_a_codec_of_its_own() -> None:
    """Why (issue 14): read as an ASCII text file, the boot id imported that codec, 0.2 ms of every apply
    before its first restart (it is read before the first intent is recorded); bytes decode it without."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent.parent)!r}); from pathlib import Path; "
            "from restart import state; print(bool(state.boot_id(Path('/proc'))), 'encodings.ascii' in sys.modules)")
    out = subprocess.run(["/usr/bin/python3", "-I", "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.split() == ["True", "False"], out.stdout + out.stderr


def test_an_apply_that_cannot_ask_loads_no_ask_module() -> None:
    """Why (issue 14): ``apply --yes`` (and a run given its mode) never asks; importing the question's module
    was 0.2 ms before its first restart.  A run whose mode may be ask still loads it (test_apply's ask tests)."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent.parent)!r}); "
            "import restart.cli, restart.apply, restart.execute; print('restart.ask' in sys.modules)")
    out = subprocess.run(["/usr/bin/python3", "-I", "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.split() == ["False"], out.stdout + out.stderr


def test_what_the_checks_need_is_prepared_beside_the_first_restart_and_an_error_left_to_them(tmp_path: Path) -> None:
    """Why (issue 14): the checks after the restarts look their packages' files up in the dpkg database;
    its indexes for that were built after the canary's restart, 0.4 ms before the wave's.  They are
    built in the thread that reads the reboot state once the first restart is under way; an error there
    is the checks' to meet (they read the same files), never the run's end."""
    import threading

    seen: list[bool] = []

    def prepare() -> None:
        seen.append(threading.current_thread() is not threading.main_thread())
        raise OSError("an unreadable list")
    roots = Roots(proc=tmp_path / "proc", run=tmp_path / "run", state=tmp_path / "state", root=tmp_path,
                  admindir=tmp_path / "dpkg")
    ahead = apply.Ahead(roots, prepare)
    assert seen == []  # nothing before the first restart
    ahead.start()
    ahead.start()  # (each restart tells it: once)
    assert ahead.result() is not None and seen == [True]


def test_the_intro_is_said_as_the_first_restart_is_under_way_and_before_anything_else(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why (issue 14): the intro's lines (to the terminal and the system log) were 0.1-0.4 ms before the
    canary's restart was asked for; said once it is under way, they still come before every outcome, and
    in ask mode before the question (test_apply's ask tests)."""
    roots, actions = cut_short(tmp_path, monkeypatch, ("a.service",))
    out = io.StringIO()
    log = apply.Log(out, io.StringIO(), quiet=False)
    said_at: dict[str, str] = {}
    real_save = state.save_actions

    def save_actions(*args: object, **kwargs: object) -> None:
        said_at["intent"] = out.getvalue()
        real_save(*args, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(state, "save_actions", save_actions)

    def under_way() -> None:
        said_at.setdefault("under way", out.getvalue())
    why = apply._carry_out(roots, "manual", log, actions, Settings(), [], failed=[], choose=None,
                           deadline=time.monotonic() + 60, earlier=set(), quiet=False,
                           db=packages.DpkgDatabase(tmp_path / "dpkg", tmp_path),
                           boot=state.boot_id(roots.proc), again={},
                           first=under_way)
    intro = out.getvalue().splitlines()[0]
    assert why == "out of time" and "replaced files" in intro, out.getvalue()
    assert said_at["intent"] == "" and said_at["under way"].splitlines() == [intro]
