"""restart/procfs.py: the one /proc/PID/stat parser, the one ancestry walk, vanishing processes.

The stat parser is shown both on a real kernel (a process renaming itself to the worst name
``comm`` allows) and on hostile fixture text; the walk on fixture trees (a loop, a deep chain,
a parent that exited), since a kernel will not build those on demand.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from restart import procfs

WORST = [b"a) 1 2 (b", b"x\ny) R 9", b") ) )", b"(((", b"  sp ace  ", b"1 2 3 4 5 6 7"]


def stat_text(comm: bytes, ppid: int = 7, start: int = 123456) -> bytes:
    """A stat line as the kernel writes it (fields 3..22 after the name)."""
    after = [b"S", b"%d" % ppid] + [b"0"] * 17 + [b"%d" % start] + [b"0"] * 30
    return b"%d (%s) %s\n" % (4242, comm, b" ".join(after))


@pytest.mark.parametrize("comm", WORST)
def test_stat_fields_after_any_name(comm: bytes) -> None:
    fields = procfs.stat_fields(stat_text(comm))
    assert fields[0] == b"S"
    assert int(fields[procfs.PPID]) == 7 and int(fields[procfs.STARTTIME]) == 123456


def test_stat_field_of_a_real_process_that_names_itself_like_stat(tmp_path: Path) -> None:
    """A real process sets its comm (prctl PR_SET_NAME) to text with ")", spaces and a newline:
    its parent and start time are still read right."""
    name = b"x) Z 1 (\ny"
    # A program of its own, not a fork: this test process has threads (pytest-xdist's), and a forked
    # child of a threaded process may deadlock in ctypes or malloc.
    code = (f"import ctypes, os, signal; ctypes.CDLL(None).prctl(15, {name!r}, 0, 0, 0); "
            "os.write(1, b'1'); signal.pause()")
    proc_ = subprocess.Popen(["/usr/bin/python3", "-c", code], stdout=subprocess.PIPE, env={})
    child = proc_.pid
    try:
        assert proc_.stdout is not None and proc_.stdout.read(1) == b"1"
        assert Path(f"/proc/{child}/comm").read_bytes() == name + b"\n"
        proc = Path("/proc")
        assert procfs.stat_field(proc, child, procfs.PPID) == os.getpid()
        plain = Path(f"/proc/{child}/stat").read_bytes().replace(b"(" + name + b")", b"(n)")
        expected = int(plain.split()[21])  # field 22, once the name holds no space
        assert procfs.stat_field(proc, child, procfs.STARTTIME) == expected
    finally:
        proc_.kill()
        proc_.wait()
        assert proc_.stdout is not None
        proc_.stdout.close()
    assert procfs.stat_field(Path("/proc"), child, procfs.PPID) is None  # gone: None, never a raise


def write_tree(proc: Path, parents: dict[int, int]) -> Path:
    for pid, ppid in parents.items():
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "stat").write_bytes(stat_text(b"sh) 5 (x", ppid))
    return proc


def test_lineage_goes_up_to_pid_1_and_stops_where_a_parent_is_gone(tmp_path: Path) -> None:
    proc = write_tree(tmp_path / "proc", {30: 20, 20: 10, 10: 1, 1: 0, 99: 98})
    assert list(procfs.lineage(proc, 30)) == [30, 20, 10, 1]
    assert list(procfs.lineage(proc, 1)) == [1]
    assert list(procfs.lineage(proc, 99)) == [99, 98]  # 98 exited: named by its child, its own parent unknown
    assert list(procfs.lineage(proc, 0)) == []


def test_lineage_is_bounded_on_a_loop_and_a_deep_chain(tmp_path: Path) -> None:
    loop = write_tree(tmp_path / "loop", {5: 6, 6: 5})
    assert len(list(procfs.lineage(loop, 5))) == procfs.ANCESTRY_MAX
    deep = write_tree(tmp_path / "deep", {n: n - 1 for n in range(2, 500)})
    walked = list(procfs.lineage(deep, 499))
    assert walked == list(range(499, 499 - procfs.ANCESTRY_MAX, -1))


def test_a_process_that_exits_is_process_gone_never_another_error() -> None:
    child = subprocess.Popen(["/usr/bin/sleep", "60"])
    dfd = os.open(f"/proc/{child.pid}", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert procfs.exe_of(dfd) == "/usr/bin/sleep"
        assert procfs.stat_fields(procfs.read_proc(dfd, "stat"))[0] in (b"S", b"R")
        child.kill()
        child.wait(timeout=10)
        with pytest.raises(procfs.ProcessGone):
            procfs.read_proc(dfd, "stat")
        with pytest.raises(procfs.ProcessGone):
            procfs.readlink(dfd, "exe")
    finally:
        os.close(dfd)
        if child.poll() is None:
            child.kill()


def test_parse_status_keeps_odd_bytes_of_a_name() -> None:
    name, ppid, uid, depth = procfs.parse_status(b"Name:\tx\xff\\ny\nPPid:\t3\nUid:\t1000\t1000\t1000\t1000\n"
                                                 b"NSpid:\t40\t2\n")
    assert (ppid, uid, depth) == (3, 1000, 2)
    assert name.encode("utf-8", "surrogateescape") == b"x\xff\\ny"


def test_read_lines_hands_over_every_whole_line_in_blocks_and_drops_only_overlong_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: maps text is handed over in blocks of many reads (what is done per block, set operations,
    is then done once per process, not per page), and a line may end in any read, or run past
    LINE_MAX over several: every line up to LINE_MAX must come out whole, in order, and none longer,
    whatever the read sizes; nor may a block ever hold more than about BATCH_BYTES and a line."""
    import random

    monkeypatch.setattr(procfs, "LINE_MAX", 50)
    monkeypatch.setattr(procfs, "BATCH_BYTES", 64)
    budget = procfs.Budget(float("inf"), lambda: 0.0, lambda: 0.0)
    rnd = random.Random(15)  # noqa: S311 (test data, reproducible)
    real_read = os.read
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(3000):
            lines = [b"x" * rnd.choice([0, 1, 5, 20, 49, 50, 51, 80, 200]) for _ in range(rnd.randint(0, 30))]
            (tmp_path / "maps").write_bytes(b"\n".join(lines) + (b"\n" if rnd.random() < 0.5 else b""))
            size = rnd.choice([1, 3, 7, 33, 51, 52, 100, 1000])
            monkeypatch.setattr(os, "read", lambda fd, n, size=size: real_read(fd, size))
            handed = list(procfs.read_lines(dfd, "maps", budget, bytes.splitlines))
            monkeypatch.setattr(os, "read", real_read)
            assert all(items == block.splitlines() for block, items in handed)
            blocks = [block for block, _ in handed]
            got = [line for block in blocks for line in block.split(b"\n")]
            assert [line for line in got if line] == [line for line in lines if line and len(line) <= 50], (size, lines)
            assert all(len(line) <= 50 for line in got) and all(len(block) <= 64 + 1000 + 51 for block in blocks)
    finally:
        os.close(dfd)


def test_the_lines_budget_cuts_a_read_as_the_lines_arrive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: a block's lines are counted where the keys are found (no pass of their own), but a process
    over PROCESS_LINES must still be given up on as the lines arrive, not a block later: a block is
    handed over early once the lines read and not counted yet could pass the budget."""
    monkeypatch.setattr(procfs, "PROCESS_LINES", 1000)
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: real_read(fd, 100))
    keys = re.compile(rb" (.*)").findall
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        (tmp_path / "maps").write_bytes(b"a b\n" * 900)
        budget = procfs.Budget(float("inf"), lambda: 0.0, lambda: 0.0)
        assert sum(len(items) for _, items in procfs.read_lines(dfd, "maps", budget, keys)) == 900
        assert (budget.lines, budget.bytes) == (900, 3600)
        (tmp_path / "maps").write_bytes(b"a b\n" * 100_000)
        budget = procfs.Budget(float("inf"), lambda: 0.0, lambda: 0.0)
        with pytest.raises(procfs.OverBudget, match="more than 1000 mappings"):
            for _ in procfs.read_lines(dfd, "maps", budget, keys):
                pass
        assert budget.bytes <= 4 * 1000 + 2 * 100  # the 1,001st line and at most one read() more
    finally:
        os.close(dfd)


def test_the_cpu_clock_is_read_past_an_interval_and_counts_from_the_first_look() -> None:
    """Why: the CPU clock is a system call; most processes are read whole within one interval and
    need no look at all, but a process read longer is still cut PROCESS_SECONDS after the first."""
    looks: list[float] = []
    times = iter([100.0, 100.0 + procfs.PROCESS_SECONDS, 100.5 + procfs.PROCESS_SECONDS])

    def cpu() -> float:
        looks.append(next(times))
        return looks[-1]

    budget = procfs.Budget(float("inf"), lambda: 0.0, cpu)
    budget.spend(procfs.CLOCK_BYTES - 1000, 10)
    assert looks == []
    budget.spend(1000, 0)  # the first look: counted from here
    budget.spend(procfs.CLOCK_BYTES, 0)  # PROCESS_SECONDS later: not more
    assert len(looks) == 2
    with pytest.raises(procfs.OverBudget, match="took more than"):
        budget.spend(0, procfs.CLOCK_LINES)


def test_a_stat_field_is_read_by_its_path_without_pathlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why (issue 14): pathlib's joins and buffered read made each look 9 us (6 for a process that exited),
    and an apply looks at every stale process of its record after the restarts; the same answer, by path."""
    fake = tmp_path / "proc" / "42"
    fake.mkdir(parents=True)
    (fake / "stat").write_bytes(stat_text(b"a) b"))
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"{self} read through pathlib"))
    assert procfs.stat_field(tmp_path / "proc", 42, procfs.STARTTIME) == 123456
    assert procfs.stat_field(Path("/proc"), os.getpid(), procfs.PPID) == os.getppid()
    assert procfs.stat_field(tmp_path / "proc", 43, procfs.PPID) is None
