"""The scan on two cores: a forked child and the parent take shares of the processes in turn, then merge.

The result must be the one-process scan's, whatever the child does: a child that dies, hangs or
sends anything but a result leaves what it took unscanned (never clean), is killed and reaped (no
zombie), and prints nothing.  No fork with another thread alive, nor below the threshold.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from itertools import islice, pairwise
from pathlib import Path

import pytest

import restart.imports  # noqa: F401 - imported before any fork (see harness_threads)
from restart import observation, processes, procfs
from restart.processes import ScanResult, Selection, scan
from tests.fakeproc import FakeProcess, build, ino, map_line, rootfs

LIB = "/usr/lib/x86_64-linux-gnu/libdemo.so.1"
EVERYTHING = Selection(everything=True)
USERS = (100, 103, 116, 131, 133)  # their /proc directories are users': scanned last under a deadline
SERIAL = 10**9  # parallel_min no scan reaches
CANDIDATES = [*range(100, 140), 500, 501, 502, 503]  # the host's, in a scan's order without a deadline
KERNEL_THREADS = processes._threads  # the real count (harness_threads replaces it in each test)
# Python 3.12+ warns at a fork beside other threads: here the suite's own (see harness_threads), which
# the product never forks beside (processes._two_cores_free counts the kernel's threads).
pytestmark = pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\) may lead to deadlocks:DeprecationWarning")
SCRIPT = "import json, ctypes, sys, time\nctypes.CDLL(sys.argv[1])\nprint('ok', flush=True)\ntime.sleep(600)\n"


@pytest.fixture(autouse=True)
def harness_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's own threads (conftest's ``prepare_roots``, building the cached roots of other tests;
    pytest-xdist's worker thread, which :mod:`threading` does not list; what earlier tests of the same
    worker left running) are not counted, so that a test that expects a fork gets one: they hold
    nothing the child takes (the modules the child could import are imported above).  Any thread a
    test starts counts."""
    before = set(threading.enumerate())
    monkeypatch.setattr(processes, "_threads", lambda: 1 + sum(1 for t in threading.enumerate() if t not in before))


def children() -> list[int]:
    """Our own child processes, zombies included (a zombie keeps its /proc entry until reaped); the
    tests look only for those the scan forked (an earlier test of the same worker may have left its own)."""
    mine = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if procfs.stat_fields((Path("/proc") / name / "stat").read_bytes())[procfs.PPID] == b"%d" % os.getpid():
                    mine.append(int(name))
            except (OSError, IndexError):
                continue
    return mine


@pytest.fixture
def forks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The children forked by the scan (their PIDs, as the parent saw them)."""
    made: list[int] = []
    real = os.fork

    def fork() -> int:
        pid = real()
        if pid:
            made.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    return made


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A fixture /proc of 40 processes of every kind the merge must keep in order: stale (code, data,
    exe, missing), fresh, a kernel thread, vanished, one over a budget, one whose status no kernel
    writes (an error), users' processes (scanned last under a deadline), interpreters (observed)."""
    root = rootfs(tmp_path / "rootfs", {LIB: b"v2", "/usr/sbin/daemon": b"bin", "/usr/share/x/data.bin": b"d"})
    stale, fresh = map_line(LIB, ino(root, LIB) + 1), map_line(LIB, ino(root, LIB))
    kinds: list[Callable[[int], FakeProcess]] = [
        lambda pid: FakeProcess(pid, stale, root=root),
        lambda pid: FakeProcess(pid, fresh, root=root),
        lambda pid: FakeProcess(pid, map_line("/usr/share/x/data.bin", 5, "r--p") + fresh, root=root),
        lambda pid: FakeProcess(pid, map_line("/usr/sbin/daemon (deleted)", 9), root=root,
                                exe="/usr/sbin/daemon (deleted)"),
        lambda pid: FakeProcess(pid, map_line("/usr/lib/gone.so (deleted)", 77), root=root),
        lambda pid: FakeProcess(pid, b"", root=root, exe=None),
        lambda pid: FakeProcess(pid, stale, root=root, missing=("status",)),
        lambda pid: FakeProcess(pid, map_line("/usr/bin/python3.11", 3) + stale, root=root,
                                exe="/usr/bin/python3.11"),
    ]
    procs = [kinds[i % len(kinds)](100 + i) for i in range(40)]
    procs.append(FakeProcess(500, stale + b"".join(map_line(f"/home/m/f{i}", 100 + i, start=0x10000 * (i + 1))
                                                  for i in range(3000)), root=root))
    procs.append(FakeProcess(501, stale, root=root))
    # Names no result may lose a byte of: not UTF-8, an escape, a newline (the kernel's \\012).
    procs.append(FakeProcess(502, map_line(b"/opt/caf\xe9.so (deleted)", 1), root=root, name="e\x1b[1m\u00e9"))
    procs.append(FakeProcess(503, map_line(b"/opt/new\\012line.so", 5), root=root,
                             exe="/opt/b\udce9n"))
    proc = build(tmp_path / "proc", procs)
    (proc / "501" / "status").write_bytes(b"Name:\tx\nPPid:\tnot a number\n")
    for pid in USERS:
        os.chown(proc / str(pid), 1000 + pid, 1000 + pid)
    return proc


def _both(proc: Path, **kwargs: object) -> tuple[ScanResult, list[tuple[int, str]], ScanResult, list[tuple[int, str]]]:
    one: list[tuple[int, str]] = []
    two: list[tuple[int, str]] = []
    serial = scan(proc, EVERYTHING, parallel_min=SERIAL, on_error=lambda pid, e: one.append((pid, str(e))),
                  **kwargs)  # type: ignore[arg-type]
    parallel = scan(proc, EVERYTHING, parallel_min=2, on_error=lambda pid, e: two.append((pid, str(e))),
                    **kwargs)  # type: ignore[arg-type]
    return serial, one, parallel, two


def observer(dfd: int, pid: int, exe: str | None) -> object | None:
    return ("observed", pid, exe)  # what it returns is its whole answer (it runs in the child for its half)


def _slow(monkeypatch: pytest.MonkeyPatch, who: str) -> None:
    """Make ``who`` slow: the child waits 1.5 s before its first share (the parent, done with its 0.5 s
    ``meanwhile``, takes them all: a wait after taking a share left that share to the child), or both
    wait a little after taking each share (they take turns)."""
    parent, real = os.getpid(), processes._shares

    def shares(queue: int, candidates: list[int], bounds: list[int]) -> Iterator[list[int]]:
        if who == "child" and os.getpid() != parent:
            time.sleep(1.5)
        for share in real(queue, candidates, bounds):
            if who == "both":
                time.sleep(0.005)
            yield share

    monkeypatch.setattr(processes, "_shares", shares)


@pytest.mark.parametrize(("deadline", "who", "piece"), [(None, "child", 16), ("far", "parent", 16), (None, "both", 16),
                                                   ("far", "both", 16), (None, "child", 1), ("far", "both", 1)])
def test_two_cores_give_the_one_process_result(host: Path, forks: list[int], deadline: str | None, who: str,
                                               piece: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever scans what: the child all (the parent is busy with its ``meanwhile``), the parent all (the
    child is slow), or both in turn; the child's answer in a few lines, or in a line per process found
    (the stale files each sent once, named by later lines)."""
    monkeypatch.setattr(procfs, "PROCESS_LINES", 2000)
    monkeypatch.setattr(processes, "PIECE", piece)
    until = None if deadline is None else time.monotonic() + 600
    if who != "child":
        _slow(monkeypatch, "child" if who == "parent" else who)
    meanwhile: list[float] = []

    def busy() -> None:
        time.sleep(0.5)
        meanwhile.append(time.monotonic())

    serial, one, parallel, two = _both(host, observe=observer, observe_hints=(b"/usr/bin/",), deadline=until,
                                       meanwhile=busy)
    assert len(meanwhile) == 2  # once each way: after the one-process scan, during the child's
    assert len(forks) == 1 and set(children()).isdisjoint(forks)
    assert parallel == serial
    assert (serial.scanned, serial.unscanned, serial.errors) == (44, 1, 1)
    assert serial.vanished == 5 and len(serial.observed) == 5 and len(serial.processes) == 27
    odd = {p.pid: p for p in parallel.processes if p.pid in (502, 503)}
    assert odd[502].comm == "e\x1b[1m\u00e9" and odd[502].stale[0].path == "/opt/caf\udce9.so"
    assert odd[503].stale[0].path == "/opt/new\nline.so" and odd[503].exe == "/opt/b\udce9n"
    assert [u.pid for u in serial.over_budget] == [500]
    # 501's error reaches on_error in the parent; from the child as its text.
    assert [pid for pid, _ in one] == [pid for pid, _ in two] == [501]
    from_child = f"ValueError: {one[0][1]}"
    assert two[0][1] == {"child": from_child, "parent": one[0][1]}.get(who, two[0][1])
    assert two[0][1] in (from_child, one[0][1])
    if deadline:  # users' processes last, in both halves and in the merge
        assert [p.pid for p in parallel.processes][-4:] == [100, 103, 116, 131]


def test_two_cores_give_the_one_process_result_on_the_real_proc(tmp_path: Path, forks: list[int]) -> None:
    """Real interpreters on a replaced library, some running an unowned script (their imports read: the
    observations hold every class of stage 2b), some ``-c`` code; scanned as a whole, both ways."""
    lib = tmp_path / "libx.so"
    shutil.copy(os.path.realpath("/lib/x86_64-linux-gnu/libz.so.1"), lib)
    script = tmp_path / "daemon.py"
    script.write_text(SCRIPT)
    started = []
    try:
        for i in range(12):
            argv = [sys.executable, str(script), str(lib)] if i % 2 else [sys.executable, "-c", SCRIPT, str(lib)]
            p = subprocess.Popen(argv, stdout=subprocess.PIPE)  # our own test programs
            started.append(p)
        for p in started:
            assert p.stdout is not None and p.stdout.readline() == b"ok\n"
        new = tmp_path / "libx.so.new"
        shutil.copy(lib, new)
        os.rename(new, lib)
        host = observation.Host.of()

        def observe(dfd: int, pid: int, exe: str | None) -> object | None:
            return observation.observe(dfd, pid, exe, host, wants=lambda *_: True)

        pids = [p.pid for p in started]
        serial = scan(Path("/proc"), EVERYTHING, pids=pids, observe=observe, parallel_min=SERIAL)
        parallel = scan(Path("/proc"), EVERYTHING, pids=pids, observe=observe, parallel_min=2,
                        facts=observation.facts)
    finally:
        for p in started:
            p.kill()
            p.wait()
    assert len(forks) == 1
    assert parallel == serial
    assert [p.pid for p in serial.processes] == sorted(pids)
    seen = [o for _, o in serial.observed]
    assert len(seen) == 12 and all(isinstance(o, observation.Observation) and o.imports is not None for o in seen)


TAKEN = 16  # candidates the child of _child_does takes (two shares) before it does what it does


_TOOK: list[int] = []  # the pipe on which the child says it has taken its shares (see late)


def _takes_first(shares: Iterator[list[int]]) -> list[int]:
    """In the child: take the first two shares, then tell the parent waiting in :func:`late`; their PIDs."""
    taken = [pid for share in islice(shares, 2) for pid in share]
    assert len(taken) == TAKEN
    os.write(_TOOK[1], b".")
    return taken


def _child_does(monkeypatch: pytest.MonkeyPatch, act: Callable[[int], None]) -> None:
    """Replace what the forked child does: it takes the first two shares (the parent waits in its
    ``meanwhile``: :func:`late`), then ``act(write_end)``, then it leaves as the real one does."""
    def child(read_end: int, write_end: int, shares: Iterator[list[int]], *_: object) -> None:
        try:
            _takes_first(shares)
            act(write_end)
        finally:
            os._exit(0)

    monkeypatch.setattr(processes, "_child", child)


@pytest.fixture(autouse=True)
def took() -> Iterator[None]:
    _TOOK[:] = os.pipe()
    yield
    for end in _TOOK:
        os.close(end)


def late() -> None:
    """The parent's ``meanwhile``: until the child has taken its shares (by a sleep, the parent took them
    first now and then on a loaded machine; 10 s at most: a child that never says so fails the test)."""
    if select.select([_TOOK[0]], [], [], 10.0)[0]:
        os.read(_TOOK[0], 1)


def _hang(write_end: int) -> None:
    time.sleep(600)


def _garbage(write_end: int) -> None:
    os.write(write_end, b"\x80\x05garbage, not a result")


def _write(write_end: int, data: bytes) -> None:
    os.write(write_end, data)


def _send(write_end: int, answer: object) -> None:
    """``answer`` as a line of the child's, then the end: all a good answer has but its content."""
    _write(write_end, json.dumps(answer).encode() + b"\n" + processes.ANSWER_END)


def _empty() -> bytes:
    """A line of the child's for shares it scanned and found nothing in."""
    return processes._encode(ScanResult([], 1, 0, 0), [], {})


def _truncated(write_end: int) -> None:
    os.write(write_end, (_empty() + processes.ANSWER_END)[:-3])


def _naming_files(numbers: list[int]) -> list[object]:
    """A line whose one process names the stale files ``numbers`` of a table of one."""
    return [processes.ANSWER, [{"F": ["exe", "/x", "certain", "replaced"]}], {
        "n": "restart.processes.ScanResult", "v": [[{"n": "restart.processes.ProcessInfo", "v": [
            100, 1, 0, "x", None, "", None, {"s": numbers}]}], 1, 0, 0]}, []]


@pytest.mark.parametrize("what", ["dies", "exits", "hangs", "garbage", "truncated", "no end", "after the end",
                                  "foreign", "other shape", "not a result", "no such file", "a negative file number"])
def test_a_child_without_a_result_leaves_what_it_took_unscanned(host: Path, tmp_path: Path, forks: list[int],
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capfd: pytest.CaptureFixture[str], what: str) -> None:
    ran = tmp_path / "ran"
    acts: dict[str, Callable[[int], None]] = {
        "dies": lambda w: os.kill(os.getpid(), signal.SIGKILL),
        "exits": lambda w: None,
        "hangs": _hang,
        "garbage": _garbage,
        "truncated": _truncated,
        "no end": lambda w: _write(w, _empty()),  # answered for a share, then died
        "after the end": lambda w: _write(w, _empty() + processes.ANSWER_END + _empty()),
        # a class no result is made of, called with its "fields": it would make the directory
        "foreign": lambda w: _send(w, [processes.ANSWER, [], {"n": "posix.mkdir", "v": [str(ran)]}, []]),
        "other shape": lambda w: _write(w, _empty().replace(processes.ANSWER.encode(), b"x") + processes.ANSWER_END),
        "not a result": lambda w: _send(w, [processes.ANSWER, [], {"n": "restart.processes.StaleFile",
                                                                   "v": ["exe", "/x", "certain", "replaced"]}, []]),
        "no such file": lambda w: _send(w, _naming_files([0, 1])),
        "a negative file number": lambda w: _send(w, _naming_files([-1])),  # (Python would take the last)
    }
    _child_does(monkeypatch, acts[what])
    monkeypatch.setattr(processes, "CHILD_GRACE", 0.5)
    serial = scan(host, EVERYTHING, parallel_min=SERIAL)
    result = scan(host, EVERYTHING, parallel_min=2, deadline=time.monotonic() + 1.3, meanwhile=late)
    assert len(forks) == 1 and set(children()).isdisjoint(forks)
    assert (result.scanned, result.unscanned) == (44 - TAKEN, TAKEN)  # what the child took: unscanned
    candidates = sorted(CANDIDATES, key=lambda pid: (pid in USERS, pid))
    order = sorted((p.pid for p in serial.processes), key=candidates.index)
    mine = [pid for pid in order if candidates.index(pid) >= TAKEN]  # the parent's: the shares after the child's
    assert [p.pid for p in result.processes] == mine
    assert not ran.exists()
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_the_childs_lines_are_read_while_the_parent_scans(host: Path, forks: list[int],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """What the child has sent is rebuilt before the parent takes each share, not all after its last: here
    the child's first share's line is in the pipe before the parent takes one (it waits in ``late``)."""
    parent, real_write, real_result = os.getpid(), processes._write_all, processes._Answer.result
    monkeypatch.setattr(processes, "PIECE", 0)  # each share's result sent as soon as it is scanned
    read_before: list[int] = []

    def write_all(end: int, data: bytes) -> None:
        real_write(end, data)
        if os.getpid() != parent and not read_before:
            read_before.append(0)  # (the child's own copy: once)
            os.write(_TOOK[1], b".")
            time.sleep(0.2)  # the parent takes a share meanwhile

    def result(self: processes._Answer, until: float) -> object:
        read_before.append(len(self.parts))
        return real_result(self, until)

    monkeypatch.setattr(processes, "_write_all", write_all)
    monkeypatch.setattr(processes._Answer, "result", result)
    assert scan(host, EVERYTHING, parallel_min=2, meanwhile=late) == scan(host, EVERYTHING, parallel_min=SERIAL)
    assert len(forks) == 1 and read_before[0] >= 1


def test_an_answer_longer_than_the_cap_is_no_answer(host: Path, forks: list[int],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Read no further than ``ANSWER_MAX``: a child that sends more (here a valid result after 2 MiB of
    JSON whitespace) leaves its half unscanned, is killed in its write and reaped."""
    answer = processes._encode(ScanResult([], TAKEN, 0, 0), [], {}) + processes.ANSWER_END

    def padded(write_end: int) -> None:
        data = memoryview(b" " * (2 << 20) + answer)
        while data:
            data = data[os.write(write_end, data):]

    _child_does(monkeypatch, padded)
    monkeypatch.setattr(processes, "ANSWER_MAX", 3 << 20)
    assert scan(host, EVERYTHING, parallel_min=2, meanwhile=late).unscanned == 0  # within the cap: a result
    monkeypatch.setattr(processes, "ANSWER_MAX", 1 << 20)
    result = scan(host, EVERYTHING, parallel_min=2, meanwhile=late)
    assert len(forks) == 2 and set(children()).isdisjoint(forks)
    assert (result.scanned, result.unscanned) == (44 - TAKEN, TAKEN)


def test_a_child_whose_scan_raises_leaves_quietly(host: Path, tmp_path: Path, forks: list[int],
                                                monkeypatch: pytest.MonkeyPatch,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    """The real child: whatever goes wrong in it ends it (os._exit), never returns into the caller's code
    (here: pytest's, which would go on running tests in the child) and prints nothing.  What it answered
    for before (its first share's result, sent) counts for nothing: an answer without its end is none."""
    parent = os.getpid()
    real = processes._scan_these
    shares: list[object] = []

    def scan_these(*args: object) -> ScanResult:
        if os.getpid() != parent:
            shares.append(args[2])
            if len(shares) == 2:
                os.write(_TOOK[1], b".")
                raise RuntimeError("in the child")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(processes, "_scan_these", scan_these)
    monkeypatch.setattr(processes, "PIECE", 0)  # each share's result sent as soon as it is scanned
    escaped = tmp_path / "escaped"
    try:
        result = scan(host, EVERYTHING, parallel_min=2, meanwhile=late)
    finally:
        if os.getpid() != parent:  # the child came back into this test: say so (before the parent reads EOF)
            escaped.touch()
            os._exit(0)
    assert not escaped.exists()
    assert len(forks) == 1 and set(children()).isdisjoint(forks)
    assert (result.scanned, result.unscanned) == (44 - TAKEN, TAKEN)
    assert capfd.readouterr() == ("", "")


def test_a_child_that_exceeds_no_deadline_waits_its_bound(host: Path, forks: list[int],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Without a deadline the wait is still bounded: CHILD_WAIT past the end of the parent's half.
    _child_does(monkeypatch, _hang)
    monkeypatch.setattr(processes, "CHILD_WAIT", 0.3)
    result = scan(host, EVERYTHING, parallel_min=2, meanwhile=late)
    assert len(forks) == 1 and set(children()).isdisjoint(forks)
    assert result.unscanned == TAKEN


class Watchdog(Exception):
    pass


def test_a_watchdog_during_the_wait_still_kills_and_reaps_the_child(host: Path, forks: list[int],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook's setitimer watchdog raises in whatever the run is doing; waiting for the child, too."""
    _child_does(monkeypatch, _hang)

    def expire(signum: int, frame: object) -> None:
        raise Watchdog()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(Watchdog):
            scan(host, EVERYTHING, parallel_min=2, meanwhile=late)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert len(forks) == 1 and set(children()).isdisjoint(forks)


def test_a_fork_that_fails_leaves_the_scan_to_this_process(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No child (the process table is full): this process scans them all, as a one-process scan does,
    does the caller's work once, and keeps no pipe open."""
    def fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    serial = scan(host, EVERYTHING, parallel_min=SERIAL)
    monkeypatch.setattr(os, "fork", fork)
    called: list[int] = []
    fds = os.listdir("/proc/self/fd")
    assert scan(host, EVERYTHING, parallel_min=2, meanwhile=lambda: called.append(1)) == serial
    assert called == [1] and os.listdir("/proc/self/fd") == fds


@pytest.fixture
def no_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    def fork() -> int:
        raise AssertionError("forked")

    monkeypatch.setattr(os, "fork", fork)


@pytest.fixture
def thread() -> Iterator[None]:
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    yield
    stop.set()
    t.join()


@pytest.mark.usefixtures("no_fork", "thread")
def test_no_fork_while_another_thread_is_alive(host: Path) -> None:
    assert scan(host, EVERYTHING, parallel_min=2) == scan(host, EVERYTHING, parallel_min=SERIAL)


def test_the_kernel_counts_every_thread() -> None:
    # Also those threading does not list (pytest-xdist's worker has one): compared before and after.
    before = KERNEL_THREADS()
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert KERNEL_THREADS() == before + 1
    finally:
        stop.set()
        t.join()


def test_no_fork_below_the_threshold(host: Path, forks: list[int]) -> None:
    scan(host, EVERYTHING, parallel_min=45)  # 44 processes
    assert forks == []
    scan(host, EVERYTHING, parallel_min=44)
    assert len(forks) == 1


def test_no_fork_on_one_cpu(host: Path, forks: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    scan(host, EVERYTHING, parallel_min=2)
    assert forks == []


def test_the_pipe_is_the_two_processes_own(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither end leaks into a program started later (close-on-exec), nor stays open in the parent."""
    made: list[tuple[int, tuple[int, int]]] = []
    real = os.pipe2

    def pipe2(flags: int) -> tuple[int, int]:
        ends = real(flags)
        made.append((flags, ends))
        return ends

    monkeypatch.setattr(os, "pipe2", pipe2)
    scan(host, EVERYTHING, parallel_min=2)
    assert len(made) == 2  # the queue of shares, the answer
    for flags, ends in made:
        assert flags & os.O_CLOEXEC
        for end in ends:
            with pytest.raises(OSError):
                os.fstat(end)  # closed (nothing opened since could have taken the number)


def test_an_orphaned_child_stops_scanning(host: Path) -> None:
    """The child's loop ends once its parent is gone (it was handed to another): no one reads its answer,
    and it would hold what it inherited (apply's lock file) to the end of its budgets."""
    candidates = sorted(int(n) for n in os.listdir(host) if n.isdigit())
    procfd = os.open(host, os.O_RDONLY | os.O_DIRECTORY)
    try:
        def run(parent: int) -> ScanResult:
            return processes._scan_these(processes._Scanner(host, EVERYTHING, True), procfd, candidates,
                                         None, None, time.monotonic, time.thread_time, parent)
        alive = run(os.getppid())
        gone = run(os.getppid() + 1)  # not our parent: as if ours had ended
    finally:
        os.close(procfd)
    assert alive.scanned == len(candidates) and alive.processes
    assert (gone.scanned, gone.unscanned, gone.processes) == (0, 0, [])  # none begun (the caller counts the rest)


@pytest.mark.parametrize("count", [1, 7, 44, 1004, 100_000, 4_194_304])
def test_the_shares_cover_every_candidate_once_and_the_last_ones_are_smaller(count: int) -> None:
    bounds = processes._bounds(count)
    sizes = [end - start for start, end in pairwise(bounds)]
    assert bounds[0] == 0 and bounds[-1] == count and all(size >= 1 for size in sizes)
    assert len(sizes) <= processes.SHARES_MAX  # the queue holds them all
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[-1] == 1 and (count < 4 * processes.SHARE or sizes[0] >= processes.SHARE)


def test_the_callers_work_on_the_result_is_done_while_the_child_exits(host: Path, forks: list[int],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``then`` gets the merged result once: while a child that answered still exists (its exit, freeing its
    pages, is not waited for first), after the reaping when it did not answer, after a one-process scan."""
    seen: list[tuple[ScanResult, bool]] = []

    def then(result: ScanResult) -> None:
        seen.append((result, bool(forks) and forks[-1] in children()))

    before = ScanResult([], 0, 0, 0)
    serial = scan(host, EVERYTHING, parallel_min=SERIAL, meanwhile=lambda: seen.append((before, False)), then=then)
    assert [r for r, _ in seen] == [before, serial]  # (after meanwhile)
    seen.clear()
    assert scan(host, EVERYTHING, parallel_min=2, then=then) == serial
    assert seen == [(serial, True)] and set(children()).isdisjoint(forks)
    seen.clear()
    _child_does(monkeypatch, _hang)
    monkeypatch.setattr(processes, "CHILD_WAIT", 0.3)
    result = scan(host, EVERYTHING, parallel_min=2, meanwhile=late, then=then)
    assert seen == [(result, False)] and result.unscanned == TAKEN and set(children()).isdisjoint(forks)
