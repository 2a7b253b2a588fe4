"""Issue 20 (hardening, second round) at the unit level: root's policy slips, hostile state files.

The real reproductions (containers, a real user, real dpkg/apt) are in ``test_hardening.py``; these
cover the many odd inputs a kernel or apt would take too long to set up one by one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from restart import policy

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
