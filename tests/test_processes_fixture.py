"""The process scan over fixture /proc trees: hostile and rare inputs a kernel won't make on demand."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from restart import formats, processes, procfs, report
from restart.processes import CODE, DATA, EXE, Selection, parse_map_line, scan
from restart.procfs import parse_status
from tests.fakeproc import FakeProcess, build, ino, map_line, rootfs

LIB = "/usr/lib/x86_64-linux-gnu/libdemo.so.1"
EVERYTHING = Selection(everything=True)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return rootfs(tmp_path / "rootfs", {LIB: b"v2", "/usr/sbin/daemon": b"bin",
                                        "/usr/share/x/data.bin": b"d", "/opt/a b/lib x.so": b"s",
                                        "/opt/odd (deleted)": b"literal"})


def test_fresh_mapping_is_not_stale(tmp_path: Path, root: Path) -> None:
    proc = build(tmp_path / "proc", [FakeProcess(10, map_line(LIB, ino(root, LIB)), root=root)])
    assert scan(proc, EVERYTHING).processes == []


def test_replaced_inode_is_stale_whatever_the_text_says(tmp_path: Path, root: Path) -> None:
    # No " (deleted)" text at all: only the inode tells.
    proc = build(tmp_path / "proc", [FakeProcess(10, map_line(LIB, ino(root, LIB) + 1), root=root)])
    [p] = scan(proc, EVERYTHING).processes
    assert [(s.kind, s.path, s.confidence, s.evidence) for s in p.stale] == [(CODE, LIB, "certain", "replaced")]


def test_deleted_suffix_with_missing_file(tmp_path: Path, root: Path) -> None:
    maps = map_line("/usr/lib/gone.so (deleted)", 77) + map_line("/usr/share/x/data.bin", 5, "r--p")
    proc = build(tmp_path / "proc", [FakeProcess(10, maps, root=root)])
    [p] = scan(proc, EVERYTHING).processes
    assert {(s.kind, s.path, s.evidence) for s in p.stale} == {
        (CODE, "/usr/lib/gone.so", "missing"), (DATA, "/usr/share/x/data.bin", "replaced")}


def test_file_literally_named_deleted_is_not_stale(tmp_path: Path, root: Path) -> None:
    maps = map_line("/opt/odd (deleted)", ino(root, "/opt/odd (deleted)"))
    proc = build(tmp_path / "proc", [FakeProcess(10, maps, root=root)])
    assert scan(proc, EVERYTHING).processes == []


def test_deleted_suffix_but_same_inode_in_place_is_fresh(tmp_path: Path, root: Path) -> None:
    # The kernel's hint is only a hint: the inode at the path is the mapped one.
    maps = map_line(LIB + " (deleted)", ino(root, LIB))
    proc = build(tmp_path / "proc", [FakeProcess(10, maps, root=root)])
    assert scan(proc, EVERYTHING).processes == []


def test_spaces_and_escaped_newlines_in_paths(tmp_path: Path, root: Path) -> None:
    (root / "opt" / "new\nline.so").write_bytes(b"n")
    maps = (map_line("/opt/a b/lib x.so", ino(root, "/opt/a b/lib x.so") + 9)
            + map_line(b"/opt/new\\012line.so", ino(root, "/opt/new\nline.so") + 9))
    proc = build(tmp_path / "proc", [FakeProcess(10, maps, root=root)])
    [p] = scan(proc, EVERYTHING).processes
    assert sorted(s.path for s in p.stale) == ["/opt/a b/lib x.so", "/opt/new\nline.so"]


def test_non_utf8_path(tmp_path: Path, root: Path) -> None:
    (root / "opt").mkdir(exist_ok=True)
    (root / "opt" / "caf\xe9.so".encode("latin-1").decode("utf-8", "surrogateescape")).write_bytes(b"x")
    maps = map_line(b"/opt/caf\xe9.so", 1)
    proc = build(tmp_path / "proc", [FakeProcess(10, maps, root=root)])
    [p] = scan(proc, EVERYTHING).processes
    assert p.stale[0].path.encode("utf-8", "surrogateescape") == b"/opt/caf\xe9.so"


def test_exe_kind_from_the_exe_link(tmp_path: Path, root: Path) -> None:
    maps = map_line("/usr/sbin/daemon (deleted)", 999)
    proc = build(tmp_path / "proc", [FakeProcess(10, maps, root=root, exe="/usr/sbin/daemon (deleted)")])
    [p] = scan(proc, EVERYTHING).processes
    assert (p.exe, p.stale[0].kind) == ("/usr/sbin/daemon", EXE)


def test_selection_limits_what_is_even_looked_at(tmp_path: Path, root: Path) -> None:
    maps = map_line(LIB, 1) + map_line("/memfd:jit (deleted)", 2) + map_line("/tmp/x.so (deleted)", 3)
    proc = build(tmp_path / "proc", [FakeProcess(10, maps, root=root)])
    only = Selection(only=frozenset({"/usr/lib/other.so"}))
    assert scan(proc, only).processes == []
    skip = Selection(skip_prefixes=("/memfd:", "/tmp/"))
    [p] = scan(proc, skip).processes
    assert [s.path for s in p.stale] == [LIB]
    [p] = scan(proc, EVERYTHING).processes
    assert len(p.stale) == 3


def test_vanished_processes_are_skipped_quietly(tmp_path: Path, root: Path) -> None:
    bad = map_line(LIB, 1)
    proc = build(tmp_path / "proc", [
        FakeProcess(10, bad, root=root, missing=("maps",)),
        FakeProcess(11, bad, root=root, missing=("status",)),
        FakeProcess(12, bad, root=root, missing=("root",), mnt="mnt:[4026532001]"),
        FakeProcess(13, bad, root=root),
    ])
    result = scan(proc, EVERYTHING)
    assert [p.pid for p in result.processes] == [13]
    assert result.vanished == 3


def test_kernel_threads_and_zombies_have_empty_maps(tmp_path: Path, root: Path) -> None:
    proc = build(tmp_path / "proc", [FakeProcess(2, b"", root=root, exe=None)])
    result = scan(proc, EVERYTHING)
    assert result.processes == [] and result.scanned == 1


def test_container_process_by_pid_namespace_depth(tmp_path: Path, root: Path) -> None:
    proc = build(tmp_path / "proc", [
        FakeProcess(10, map_line(LIB, 1), root=root, nspid=(10, 1), pidns="pid:[4026532999]"),
        FakeProcess(11, map_line(LIB, 1), root=root),
    ])
    by_pid = {p.pid: p for p in scan(proc, EVERYTHING).processes}
    assert by_pid[10].pid_namespace == "pid:[4026532999]"
    assert by_pid[11].pid_namespace is None


def test_hostile_maps_lines_do_not_crash() -> None:
    junk = (b"\x00\xff garbage\n" b"7f-80 r-xp 0 fe:01 notanumber /x\n" b"7f-80 r-xp 0 fe:01 0 /zero-inode\n"
            b"7f-80 r-xp 0 fe:01 12\n" b"7f-80 rw-p 0 00:00 0 [heap]\n" b"\n\n" b"7f-80 r-xp 0 fe:01 5 /ok\n"
            b"7f-80 rw-p 0 fe:01 5 /ok\n")
    parsed = [m for line in junk.split(b"\n") if (m := parse_map_line(line))]
    assert parsed == [(b"/ok", b"5", b"fe:01", True), (b"/ok", b"5", b"fe:01", False)]


def test_huge_maps(tmp_path: Path, root: Path) -> None:
    maps = b"".join(map_line(f"/usr/lib/l{i % 500}.so", 1000 + i % 500, start=0x10000 * i)
                    for i in range(100_000))
    assert len({m[:3] for line in maps.split(b"\n") if (m := parse_map_line(line))}) == 500
    proc = build(tmp_path / "proc", [FakeProcess(10, maps, root=root)])
    [p] = scan(proc, EVERYTHING).processes
    assert len(p.stale) == 500


def test_parse_status() -> None:
    text = b"Name:\tevil\\nname\nUmask:\t0022\nPPid:\t77\nUid:\t1000\t0\t0\t0\nNSpid:\t500\t3\t1\n"
    assert parse_status(text) == ("evil\\nname", 77, 1000, 3)
    assert parse_status(b"") == ("", 0, -1, 1)


def test_many_processes(tmp_path: Path, root: Path) -> None:
    fresh = map_line(LIB, ino(root, LIB))
    procs = [FakeProcess(100 + i, fresh if i % 10 else map_line(LIB, 1), root=root) for i in range(2000)]
    result = scan(build(tmp_path / "proc", procs), Selection())
    assert result.scanned == 2000 and len(result.processes) == 200


def _host_line(path: str, *, inode_delta: int = 0, start: int = 0x7F0000000000) -> bytes:
    """A maps line for a real file of this host, as a process in our own view would show it."""
    st = os.stat(path)
    return map_line(path, st.st_ino + inode_delta, dev=f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}",
                    start=start)


def test_an_observed_stale_process_has_its_exe_read_once(tmp_path: Path, root: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: each /proc fact is read once per process (a PID reused between two reads would mix two
    processes' facts); the interpreter stage and the report both read the exe link of an interpreter
    that also maps a replaced library."""
    proc = build(tmp_path / "proc", [FakeProcess(10, map_line("/usr/bin/python3.11", 5) +
                                                 map_line(LIB, ino(root, LIB) + 1), root=root)])
    links: list[str] = []
    real = procfs.readlink

    def spy(dfd: int, name: str) -> str:
        links.append(name)
        return real(dfd, name)

    monkeypatch.setattr(procfs, "readlink", spy)
    seen: list[str | None] = []
    [p] = scan(proc, EVERYTHING, observe=lambda dfd, pid, exe: seen.append(exe),
               observe_hints=(b"/usr/bin/",)).processes
    assert seen == [p.exe] and p.exe is not None
    assert links.count("exe") == 1


def test_lines_judged_once_per_scan_never_hide_a_stale_process(tmp_path: Path) -> None:
    # Processes in our own mount namespace, mapping a real file: the same line (from the
    # offset on) is judged once for all; the one mapping another inode is still found.
    lib = os.path.realpath(sys.executable)
    procs = [FakeProcess(100 + i, _host_line(lib, start=0x7F0000000000 + i * 0x10000), mnt="mnt:[1]")
             for i in range(50)]
    procs.append(FakeProcess(999, _host_line(lib, inode_delta=1), mnt="mnt:[1]"))
    result = scan(build(tmp_path / "proc", procs), EVERYTHING)
    assert [(p.pid, [(s.path, s.evidence) for s in p.stale]) for p in result.processes] == [
        (999, [(lib, "replaced")])]


def test_observer_sees_the_processes_that_map_a_hinted_directory(tmp_path: Path, root: Path) -> None:
    # 11 is clean at a glance and maps nothing under the hint: not even its exe is read.
    seen: list[int] = []
    procs = [FakeProcess(10, map_line("/usr/bin/python3.11", 5) + map_line(LIB, ino(root, LIB)), root=root),
             FakeProcess(11, _host_line(os.path.realpath(os.__file__)), mnt="mnt:[1]")]
    scan(build(tmp_path / "proc", procs), Selection(), observe=lambda dfd, pid, exe: seen.append(pid),
         observe_hints=(b"/usr/bin/",))
    assert seen == [10]
    scan(build(tmp_path / "proc2", procs), Selection(), observe=lambda dfd, pid, exe: seen.append(pid))
    assert seen == [10, 10, 11]  # no hints: every process is observed


def test_every_process_mapping_a_hinted_file_is_observed_once_its_line_is_known(tmp_path: Path) -> None:
    """Why: a line known fresh is settled with a set operation for the whole batch, never looked at
    again; whether it lies under a hinted directory must be remembered with it, or only the first
    of 50 python3 processes would reach the interpreter stage."""
    python = os.path.realpath(sys.executable)
    procs = [FakeProcess(100 + i, _host_line(python, start=0x7F0000000000 + i * 0x10000), mnt="mnt:[1]")
             for i in range(5)]
    seen: list[int] = []
    scan(build(tmp_path / "proc", procs), Selection(), observe=lambda dfd, pid, exe: seen.append(pid),
         observe_hints=(os.path.dirname(python).encode() + b"/",))
    assert seen == [100, 101, 102, 103, 104]


def test_exe_link_is_taken_as_written(tmp_path: Path, root: Path) -> None:
    # readlink() gives names as they are; only maps escapes (a newline as \012).
    odd = "/opt/back\\012slash"
    proc = build(tmp_path / "proc", [FakeProcess(10, map_line(LIB, ino(root, LIB) + 1), root=root, exe=odd)])
    [p] = scan(proc, EVERYTHING).processes
    assert p.exe == odd


def test_with_a_deadline_system_processes_go_first_and_the_rest_is_counted(tmp_path: Path, root: Path) -> None:
    # A user's processes (their /proc directories are theirs) are scanned after root's and
    # system accounts'; when the deadline passes, what is left is counted, never reported as clean.
    stale = map_line(LIB, ino(root, LIB) + 1)
    procs = [FakeProcess(pid, stale, root=root) for pid in (10, 20, 30, 40)]
    proc = build(tmp_path / "proc", procs)
    for pid, uid in ((10, 1000), (30, 1001), (40, 101)):
        os.chown(proc / str(pid), uid, uid)
    ticks = iter(range(100))  # the clock is read before each process (and after each 64 KiB of one)
    result = scan(proc, EVERYTHING, deadline=2.5, clock=lambda: next(ticks))
    assert [p.pid for p in result.processes] == [20, 40, 10]  # started at 0, 1, 2 <= 2.5; then 3 > 2.5
    assert (result.scanned, result.unscanned) == (3, 1)
    unbounded = scan(proc, EVERYTHING)
    assert [p.pid for p in unbounded.processes] == [10, 20, 30, 40] and unbounded.unscanned == 0


def test_mount_points_are_never_looked_at(tmp_path: Path, root: Path) -> None:
    # A stat below an autofs map (/net/HOST/...) mounts it: the vendor data keeps such paths out.
    from restart.roots import default_data_dir
    from restart.scan import never_packaged

    prefixes = never_packaged(default_data_dir())
    maps = b"".join(map_line(f"{d}/host/lib.so (deleted)", 7 + i)
                    for i, d in enumerate(("/net", "/mnt", "/media", "/afs", "/misc")))
    proc = build(tmp_path / "proc", [FakeProcess(10, maps, root=root)])
    assert scan(proc, Selection(skip_prefixes=prefixes)).processes == []
    assert len(scan(proc, EVERYTHING).processes[0].stale) == 5


def test_lines_of_any_layout_are_judged_by_dev_inode_and_path(tmp_path: Path) -> None:
    # Narrower or wider address columns than the kernel's user-space ones shift the fields; a
    # line's cached judgement must still cover exactly its device, inode and path.
    lib = os.path.realpath(sys.executable)
    for start in (0x1000, 0x7F0000000000, 0xFFFFFFFFFF600000):
        fresh, stale = _host_line(lib, start=start), _host_line(lib, inode_delta=1, start=start)
        procs = [FakeProcess(10, fresh, mnt="mnt:[1]"), FakeProcess(11, stale, mnt="mnt:[1]"),
                 FakeProcess(12, fresh, mnt="mnt:[1]")]
        result = scan(build(tmp_path / f"proc-{start:x}", procs), EVERYTHING)
        assert [p.pid for p in result.processes] == [11], hex(start)


@pytest.mark.parametrize("budget", ["PROCESS_BYTES", "PROCESS_LINES", "PROCESS_SECONDS"])
def test_a_process_over_a_budget_is_named_unscanned_never_clean(tmp_path: Path, root: Path, budget: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: a user decides how long her maps are and how slowly the kernel writes them; the budget is
    checked while they are read, and what was read of a process over it is never a finding."""
    stale = map_line(LIB, ino(root, LIB) + 1)
    filler = b"".join(map_line(f"/home/m/f{i}", 100 + i, start=0x10000 * (i + 1)) for i in range(20_000))
    proc = build(tmp_path / "proc", [FakeProcess(10, stale, root=root), FakeProcess(20, stale + filler, root=root),
                                     FakeProcess(30, stale, root=root)])
    (proc / "20" / "comm").write_bytes(b"big\x1b[1m\n")
    ticks = iter(range(10_000))  # CPU seconds: one per read() and per look at the clock
    cpu = (lambda: next(ticks)) if budget == "PROCESS_SECONDS" else time.thread_time
    monkeypatch.setattr(procfs, budget, {"PROCESS_BYTES": 200_000, "PROCESS_LINES": 10_000,
                                            "PROCESS_SECONDS": 5}[budget])
    result = scan(proc, EVERYTHING, cpu_clock=cpu)
    assert [p.pid for p in result.processes] == [10, 30]  # the run goes on past it
    assert result.unscanned == 1 and [(u.pid, u.comm) for u in result.over_budget] == [(20, "big\x1b[1m")]
    # Named in the report (its name quoted and escaped) and in the metrics.
    assert 'process 20 "big\\x1b[1m" of uid 0 was not scanned: ' in report.unscanned_note(result)
    metrics = formats.openmetrics(None, [], result, [], last_run=None, current_boot=True)
    assert 'restartctl_unscanned_process{pid="20",uid="0"} 1' in metrics
    assert 'restartctl_unreadable_processes{why="budget"} 1' in metrics
    monkeypatch.undo()
    assert [p.pid for p in scan(proc, EVERYTHING).processes] == [10, 20, 30]


def test_a_pool_of_workers_takes_the_first_ones_answers_only_in_its_own_mount_namespace(
        tmp_path: Path, root: Path) -> None:
    """Why: the workers of a pool map the same lines at other addresses, so a block of lines all known
    takes the answers of the last such block without a look-up of its keys; but a verdict on a file
    seen through a mount namespace holds there only: in another, the same lines may be stale."""
    other = rootfs(tmp_path / "other", {LIB: b"v3"})  # another inode at the same path there
    lines = [map_line(LIB, ino(root, LIB), dev="ab:cd", start=0x10000 * (i + 1)) for i in range(20)]
    mnts = {10: "mnt:[5]", 11: "mnt:[5]", 12: "mnt:[6]", 13: "mnt:[5]", 14: "mnt:[6]", 15: "mnt:[6]"}
    procs = [FakeProcess(pid, b"".join(lines[n:n + 2]) + map_line(LIB, ino(root, LIB), "r--p", dev="ab:cd"),
                         root=root if mnt == "mnt:[5]" else other, mnt=mnt)
             for n, (pid, mnt) in enumerate(mnts.items())]
    found = scan(build(tmp_path / "proc", procs), EVERYTHING).processes
    assert [(p.pid, [(s.kind, s.path, s.evidence) for s in p.stale]) for p in found] == [
        (pid, [(CODE, LIB, "replaced")]) for pid in (12, 14, 15)]


@pytest.mark.parametrize("kept", [processes.FOLDS_KEPT, 3, 0])
def test_processes_with_the_same_stale_files_get_findings_of_their_own(tmp_path: Path, root: Path, kept: int,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: the findings of a set of stale files are worked out once and shared by the processes that
    map that set; each process's own facts (which of them is its executable; what it has judged
    itself) must still change its own findings only."""
    monkeypatch.setattr(processes, "FOLDS_KEPT", kept)  # all, the first set only, none
    daemon = "/usr/sbin/daemon"
    exe, data = map_line(daemon, ino(root, daemon) + 1), map_line(LIB, ino(root, LIB) + 1, "r--p", start=0x7F0000002000)
    maps = exe + data + map_line(LIB, ino(root, LIB) + 1, start=0x7F0000004000)
    code = map_line(LIB, ino(root, LIB) + 1, start=0x7F0000008000).replace(b" 00000000 ", b" 00001000 ")
    procs = [FakeProcess(10, maps, root=root), FakeProcess(11, maps, root=root, exe="/usr/bin/other"),
             FakeProcess(12, maps.replace(b"7f000000", b"7f000100"), root=root),
             FakeProcess(13, exe + data + code, root=root, exe="/usr/bin/other"),  # its code piece judged here
             FakeProcess(14, maps, root=root, exe="/usr/bin/other")]
    proc = build(tmp_path / "proc", procs)
    scanner = processes._Scanner(proc, EVERYTHING, True)
    procfd = os.open(proc, os.O_RDONLY | os.O_DIRECTORY)
    try:
        result = processes._scan_these(scanner, procfd, [10, 11, 12, 13, 14], None, None, time.monotonic,
                                       time.thread_time)
    finally:
        os.close(procfd)
    assert sum(map(len, scanner.folds)) == min(kept, 5)  # the files of the sets kept: never more than FOLDS_KEPT
    found = {p.pid: [(s.kind, s.path) for s in p.stale] for p in result.processes}
    assert found == {10: [(EXE, daemon), (CODE, LIB)], 11: [(CODE, LIB), (CODE, daemon)],
                     12: [(EXE, daemon), (CODE, LIB)], 13: [(CODE, LIB), (CODE, daemon)],
                     14: [(CODE, LIB), (CODE, daemon)]}


def test_an_overlong_maps_line_is_dropped_without_being_held(tmp_path: Path, root: Path) -> None:
    """Why: no package file has a path longer than PATH_MAX; such a line (a user's file 16,000
    directories deep) is skipped, and the line after it is still read whole."""
    deep = "/srv" + "/d" * 20_000 + "/lib.so"
    stale = map_line(LIB, ino(root, LIB) + 1, start=0x20000)
    proc = build(tmp_path / "proc", [FakeProcess(10, map_line(deep, 77) * 3 + stale, root=root)])
    [p] = scan(proc, EVERYTHING).processes
    assert [s.path for s in p.stale] == [LIB]


def test_a_line_is_judged_once_per_mount_namespace(tmp_path: Path, root: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: after a real upgrade, 100 processes mapped the same replaced libraries, and on overlayfs
    (and btrfs) the device maps writes differs from stat's, so fresh lines could not be settled either:
    every such line was parsed and judged again in every process (two thirds of a scan's time)."""
    maps = map_line(LIB, ino(root, LIB) + 1) + map_line(LIB, ino(root, LIB) + 1, "r--p", start=0x7F0000002000)
    maps += map_line("/usr/sbin/daemon", ino(root, "/usr/sbin/daemon"), dev="ab:cd")  # fresh; another device
    proc = build(tmp_path / "proc", [FakeProcess(pid, maps, root=root) for pid in range(10, 30)])
    parsed: list[bytes] = []
    real = processes.parse_map_line

    def spy(line: bytes) -> tuple[bytes, bytes, bytes, bool] | None:
        parsed.append(line)
        return real(line)

    monkeypatch.setattr(processes, "parse_map_line", spy)
    found = scan(proc, EVERYTHING).processes
    assert [p.pid for p in found] == list(range(10, 30))
    assert {(s.kind, s.path, s.evidence) for p in found for s in p.stale} == {(CODE, LIB, "replaced")}
    # The first process's three distinct lines (a line is known by all of it past the address range:
    # the library's two pieces are two keys, the second taking the first's verdict without a look);
    # the other 19 reuse the verdicts.
    assert len(parsed) == 3
