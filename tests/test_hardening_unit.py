"""Issue 20 (hardening, second round) at the unit level: root's policy slips, hostile state files.

The real reproductions (containers, a real user, real dpkg/apt) are in ``test_hardening.py``; these
cover the many odd inputs a kernel or apt would take too long to set up one by one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from restart import policy, state, transaction
from restart.cli import main

MALLORY = 1000


@pytest.mark.parametrize("value", ["nan", "inf", "+inf", "-nan"])
def test_timeout_must_be_finite(value: str) -> None:
    """Why: `timeout = nan` passed `policy check` and then every restart failed (int(nan))."""
    with pytest.raises(policy.PolicyError, match="finite"):
        policy.parse(f"[settings]\ntimeout = {value}\n", "p.toml")


def test_dotfiles_in_policy_d_are_not_policy(tmp_path: Path) -> None:
    """Why: an editor's lock symlink `.#10-site.toml` (dangling) made the whole policy invalid."""
    d = tmp_path / "etc" / "restartctl" / "policy.d"
    d.mkdir(parents=True)
    (d / "10-site.toml").write_text('[settings]\nmode = "list"\n')
    (d / ".#10-site.toml").symlink_to("root@host.1234:1700000000")
    (d / ".10-site.toml.swp").write_text("binary junk")
    found = policy.files(tmp_path / "etc", tmp_path / "data")
    assert [p.name for p in found] == ["10-site.toml", "policy.toml"]


@pytest.fixture
def root_dir() -> Iterator[Path]:
    """A scratch directory whose every ancestor only root can write (pytest's tmp_path is below /tmp)."""
    d = Path(tempfile.mkdtemp(prefix="rctl-test-", dir="/run"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def _policy_with_exec(tmp_path: Path, program: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(f'[[rule]]\nunit = "a.service"\nexec = ["{program}", "{{unit}}"]\n')
    return path


@pytest.mark.parametrize("make", ["user-owned", "group-writable", "in-a-users-directory", "world-writable-dir",
                                  "symlink-to-users-file", "symlink-in-a-users-directory", "missing",
                                  "a-directory"])
def test_an_exec_program_others_could_write_is_refused(root_dir: Path, make: str) -> None:
    """Why: an `exec` program runs as root; whoever may rewrite it (or swap it) gets root."""
    tmp_path = root_dir
    safe = tmp_path / "sbin"
    safe.mkdir(mode=0o755)
    users = tmp_path / "home"
    users.mkdir(mode=0o755)
    os.chown(users, MALLORY, MALLORY)
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o1777)
    program = safe / "bounce"
    if make == "user-owned":
        program.write_text("#!/bin/sh\n")
        os.chown(program, MALLORY, MALLORY)
    elif make == "group-writable":
        program.write_text("#!/bin/sh\n")
        os.chmod(program, 0o775)
    elif make in ("in-a-users-directory", "world-writable-dir"):
        program = (users if make == "in-a-users-directory" else loose) / "bounce"
        program.write_text("#!/bin/sh\n")
        os.chmod(program, 0o755)
    elif make == "symlink-to-users-file":
        (users / "bounce").write_text("#!/bin/sh\n")
        program.symlink_to(users / "bounce")
    elif make == "symlink-in-a-users-directory":
        (safe / "real").write_text("#!/bin/sh\n")
        os.chmod(safe / "real", 0o755)
        (users / "link").symlink_to(safe / "real")
        program = users / "link"
    elif make == "a-directory":
        program.mkdir()
    with pytest.raises(policy.PolicyError, match="exec program"):
        policy.load([_policy_with_exec(tmp_path, str(program))])


def test_an_exec_program_only_root_can_write_is_accepted(root_dir: Path) -> None:
    """Why: the check must not refuse the administrator's own, properly installed command."""
    tmp_path = root_dir
    (tmp_path / "sbin").mkdir(mode=0o755)
    program = tmp_path / "sbin" / "bounce"
    program.write_text("#!/bin/sh\n")
    os.chmod(program, 0o755)
    (tmp_path / "bin").symlink_to("sbin")
    for path in (program, tmp_path / "bin" / "bounce"):
        loaded = policy.load([_policy_with_exec(tmp_path, str(path))])
        assert loaded.rules[0].argv[0] == str(path)


# ---------------------------------------------------------------------------------- state

def _record(**fields: object) -> dict[str, object]:
    return {"schema": state.STATE_SCHEMA, "boot_id": "b", "time": 1, "trigger": "apt", "packages": [],
            "units": [], **fields}


@pytest.mark.timeout(20)  # a FIFO opened blocking would hang here: bounded, it fails instead
@pytest.mark.parametrize("make", ["fifo", "deep", "deep-object", "huge", "symlink", "not-utf8", "not-json",
                                  "time-string", "time-huge", "units-number", "units-of-strings",
                                  "packages-of-numbers", "a-list", "other-schema"])
def test_a_bad_state_file_is_set_aside_never_fatal(tmp_path: Path, make: str) -> None:
    """Why: a FIFO at pending.json hung `status`; nested JSON raised RecursionError in every hook run;
    odd but well-formed content made `status` trace back.  Read bounded, judged, renamed out of the way."""
    d = tmp_path / "state"
    d.mkdir(mode=0o755)
    path = d / state.PENDING
    content = {
        "deep": "[" * 100_000 + "]" * 100_000, "deep-object": '{"a":' * 50_000 + "1" + "}" * 50_000,
        "not-json": "{", "a-list": "[]",
        "time-string": json.dumps(_record(time="noon")), "time-huge": json.dumps(_record(time=10**300)),
        "units-number": json.dumps(_record(units=5)), "units-of-strings": json.dumps(_record(units=["x"])),
        "packages-of-numbers": json.dumps(_record(packages=[1])),
        "other-schema": json.dumps({**_record(), "schema": "other/1"}),
    }
    if make == "fifo":
        os.mkfifo(path)
    elif make == "huge":
        with open(path, "wb") as f:
            f.truncate(state.MAX_BYTES + 1)
    elif make == "symlink":
        (tmp_path / "elsewhere").write_text(json.dumps(_record()))
        path.symlink_to(tmp_path / "elsewhere")
    elif make == "not-utf8":
        path.write_bytes(b'{"schema": "\xff"}')
    else:
        path.write_text(content[make])
    said: list[str] = []
    assert state.read_json(d, state.PENDING, log=said.append) is None
    assert not os.path.lexists(path)
    [aside] = [p for p in d.iterdir() if p.name.startswith(f"{state.PENDING}.bad-")]
    assert len(said) == 1 and aside.name in said[0]
    assert state.pending_packages(d, "b") == frozenset()


def test_a_good_state_file_with_extra_fields_is_read(tmp_path: Path) -> None:
    """Why: the set-aside must not eat records that are ours (or a newer version's, with more fields)."""
    d = tmp_path / "state"
    state.save_pending(d, "b", trigger="apt", packages=frozenset({"libc6"}), units=[{"unit": "a.service"}])
    doc = json.loads((d / state.PENDING).read_text())
    doc["duration"] = 1.5
    doc["future"] = {"nested": [1, [2, "]]]]"]]}
    (d / state.PENDING).write_text(json.dumps(doc))
    assert state.read_json(d, state.PENDING, log=pytest.fail) == doc
    assert state.pending_packages(d, "b", log=pytest.fail) == {"libc6"}


def test_a_state_files_nesting_is_measured_as_a_scan_of_its_tokens_would(tmp_path: Path) -> None:
    """Why (issue 14, F3b): the nesting check before parsing cuts the strings out by regular expressions (0.4 ms
    of a Python step per token was spent three times an apply); it must measure what a left-to-right scan of
    strings and brackets measures, on any text: escapes, unterminated strings, brackets in strings."""
    import random
    import re

    def scanned(text: str) -> int:
        depth = deepest = 0
        for m in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
            depth += m[0] in "[{"
            depth -= m[0] in "]}"
            deepest = max(deepest, depth)
        return deepest
    rng = random.Random(14)  # noqa: S311 - test texts, not secrets
    for _ in range(3000):
        text = "".join(rng.choice('[]{}"\\ab\n') for _ in range(rng.randrange(40)))
        assert state._nesting(text) == scanned(text), text
    record = json.dumps({"units": [{"argv": ["a[", "]}"], "x": [[["\"["]]]}]})
    assert state._nesting(record) == scanned(record) == 6


def test_status_and_the_hook_survive_a_bad_state_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Why: the journal was never consumed while pending.json raised in every hook run."""
    run, st = tmp_path / "run", tmp_path / "state"
    (run / "restartctl").mkdir(parents=True, mode=0o755)
    (run / "restartctl" / "journal").write_bytes(b"1 dpkg upgrade rctl-nothing\n")
    st.mkdir(mode=0o755)
    (st / state.PENDING).write_text("[" * 100_000)
    assert main(["status", "--state", str(st)]) == 2  # says so (issue 19), never "No run recorded yet"
    assert "nested deeper than 32 levels; set aside" in capsys.readouterr().err
    assert main(["hook", "--trigger", "dpkg", "--run", str(run), "--state", str(st)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "RecursionError" not in err
    cursor = state.journal_cursor(state.read_json(st, state.PENDING))
    assert transaction.read(run / "restartctl", cursor).packages == frozenset()  # consumed


def test_the_hook_never_locks_through_a_symlinked_run_directory(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Why: the Python hook created its lock file through a planted /run/restartctl symlink."""
    run, elsewhere = tmp_path / "run", tmp_path / "victim"
    run.mkdir()
    elsewhere.mkdir()
    (run / "restartctl").symlink_to(elsewhere)
    assert main(["hook", "--trigger", "dpkg", "--run", str(run), "--state", str(tmp_path / "state")]) == 0
    assert list(elsewhere.iterdir()) == []
    assert "not a directory only root can write" in capsys.readouterr().err
