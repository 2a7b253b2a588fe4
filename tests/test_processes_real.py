"""The process scan against real processes and a real kernel (no dpkg needed).

Each test starts its own processes, replaces their files the way dpkg does
(write a new file, rename it over the old path) and scans exactly those PIDs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from restart.processes import CODE, DATA, EXE, FD, ScanResult, Selection, scan
from restart.units import CONTAINER, SYSTEM, cgroup_path, resolve
from tests.support.container import cgroup_roots

EVERYTHING = Selection(everything=True)
PYTHON = "/usr/bin/python3"
SLEEPER_C = "#include <unistd.h>\nint main(void){for(;;)pause();}\n"
LIB_C = 'const char *tiny_version(void){return "%s";}\n'
USER_C = ('#include <unistd.h>\nconst char *tiny_version(void);\n'
          'int main(void){tiny_version();for(;;)pause();}\n')


def gcc(source: str, out: Path, *args: str) -> Path:
    src = out.with_suffix(".c")
    src.write_text(source)
    subprocess.run(["gcc", "-O1", "-o", str(out), str(src), *args], check=True)
    return out


def replace(path: Path, data: bytes) -> None:
    """What dpkg does: new file beside the old one, then rename() over it."""
    new = path.with_name(path.name + ".dpkg-new")
    new.write_bytes(data)
    os.chmod(new, os.stat(path).st_mode)
    os.rename(new, path)


@pytest.fixture
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Not under /tmp or /var/tmp conventions that matter: the selection here is "everything".
    return tmp_path_factory.mktemp("real")


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def start(procs: list[subprocess.Popen[bytes]], argv: list[str], wait_for: str, **kw: object) -> int:
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    procs.append(p)
    deadline = time.monotonic() + 10
    maps = Path(f"/proc/{p.pid}/maps")
    while time.monotonic() < deadline:
        try:
            if wait_for.encode() in maps.read_bytes() or wait_for.encode() in _fds(p.pid):
                return int(p.pid)
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"process {argv} never mapped {wait_for}")


def _fds(pid: int) -> bytes:
    out = b""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            out += os.fsencode(os.readlink(f"/proc/{pid}/fd/{fd}")) + b"\n"
    return out


def scan_pid(pid: int) -> ScanResult:
    return scan(Path("/proc"), EVERYTHING, pids=[pid])


def kinds(result: ScanResult) -> set[tuple[str, str, str]]:
    return {(s.kind, s.path, s.evidence) for p in result.processes for s in p.stale}


def test_untouched_process_is_not_stale(work: Path, spawn: list[subprocess.Popen[bytes]]) -> None:
    exe = gcc(SLEEPER_C, work / "sleeper")
    pid = start(spawn, [str(exe)], str(exe))
    assert scan_pid(pid).processes == []


def test_replaced_executable(work: Path, spawn: list[subprocess.Popen[bytes]]) -> None:
    exe = gcc(SLEEPER_C, work / "sleeper")
    pid = start(spawn, [str(exe)], str(exe))
    replace(exe, exe.read_bytes() + b"\0")
    result = scan_pid(pid)
    assert kinds(result) == {(EXE, str(exe), "replaced")}
    [p] = result.processes
    assert p.exe == str(exe) and p.ppid == os.getpid() and p.uid == 0 and p.pid_namespace is None


def test_deleted_executable(work: Path, spawn: list[subprocess.Popen[bytes]]) -> None:
    exe = gcc(SLEEPER_C, work / "sleeper")
    pid = start(spawn, [str(exe)], str(exe))
    exe.unlink()
    assert kinds(scan_pid(pid)) == {(EXE, str(exe), "missing")}


def test_replaced_shared_library(work: Path, spawn: list[subprocess.Popen[bytes]]) -> None:
    lib = gcc(LIB_C % "1", work / "libtiny.so.1", "-shared", "-fPIC", "-Wl,-soname,libtiny.so.1")
    user = gcc(USER_C, work / "user", str(lib), f"-Wl,-rpath,{work}")
    pid = start(spawn, [str(user)], str(lib))
    assert scan_pid(pid).processes == []
    gcc(LIB_C % "2", work / "libtiny.new", "-shared", "-fPIC", "-Wl,-soname,libtiny.so.1")
    os.rename(work / "libtiny.new", lib)
    assert kinds(scan_pid(pid)) == {(CODE, str(lib), "replaced")}


def test_data_mapping_and_open_file(work: Path, spawn: list[subprocess.Popen[bytes]]) -> None:
    mapped, held = work / "table.dat", work / "held.txt"
    mapped.write_bytes(b"x" * 4096)
    held.write_bytes(b"y")
    code = ("import mmap,sys,time\n"
            f"f=open({str(mapped)!r},'rb'); m=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ); f.close()\n"
            f"h=open({str(held)!r},'rb')\n"
            "time.sleep(60)\n")
    pid = start(spawn, [PYTHON, "-I", "-c", code], str(held))
    replace(mapped, b"z" * 4096)
    replace(held, b"w")
    assert kinds(scan_pid(pid)) == {(DATA, str(mapped), "replaced"), (FD, str(held), "unlinked")}


def test_literal_deleted_name(work: Path, spawn: list[subprocess.Popen[bytes]]) -> None:
    odd = work / "lib (deleted)"
    gcc(LIB_C % "1", odd, "-shared", "-fPIC")
    code = f"import ctypes,time\nctypes.CDLL({str(odd)!r})\ntime.sleep(60)\n"
    pid = start(spawn, [PYTHON, "-I", "-c", code], str(odd))
    assert scan_pid(pid).processes == []  # the name says "(deleted)", the inode says otherwise
    odd.unlink()
    assert kinds(scan_pid(pid)) == {(CODE, str(odd), "missing")}


def test_newline_and_non_utf8_in_executable_name(work: Path, spawn: list[subprocess.Popen[bytes]]) -> None:
    name = os.fsdecode(b"evil\nname\xff\x1b[31m")
    exe = gcc(SLEEPER_C, work / "plain")
    target = work / name
    shutil.copy2(exe, target)
    pid = start(spawn, [str(target)], "evil\\012name")
    replace(target, exe.read_bytes() + b"\0")
    assert kinds(scan_pid(pid)) == {(EXE, str(target), "replaced")}


def test_chrooted_process_is_judged_by_the_paths_the_kernel_shows_us(
        work: Path, spawn: list[subprocess.Popen[bytes]]) -> None:
    # Libraries mapped before chroot() keep their host paths; files mapped after it show the
    # chroot prefix (paths are relative to the reader's root).  Neither may be misjudged.
    jail = work / "jail"
    (jail / "data").mkdir(parents=True)
    inside = jail / "data" / "table.dat"
    inside.write_bytes(b"x" * 4096)
    code = ("import mmap,os,time\n"
            f"os.chroot({str(jail)!r}); os.chdir('/')\n"
            "f=open('/data/table.dat','rb'); m=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ); f.close()\n"
            "time.sleep(60)\n")
    pid = start(spawn, [PYTHON, "-I", "-c", code], str(inside))
    assert scan_pid(pid).processes == []  # libc & co. are not "missing" inside the jail
    replace(inside, b"y" * 4096)
    assert kinds(scan_pid(pid)) == {(DATA, str(inside), "replaced")}


def test_private_mount_namespace_is_a_host_process(work: Path, spawn: list[subprocess.Popen[bytes]]) -> None:
    exe = gcc(SLEEPER_C, work / "sleeper")
    pid = start(spawn, ["/usr/bin/unshare", "--mount", "--propagation", "private", str(exe)], str(exe))
    replace(exe, exe.read_bytes() + b"\0")
    [p] = scan_pid(pid).processes
    assert p.pid_namespace is None and p.stale[0].kind == EXE


@pytest.mark.real  # root: it makes a cgroup in the host's hierarchies
def test_child_pid_namespace_is_a_container(work: Path, spawn: list[subprocess.Popen[bytes]],
                                            own_cgroup: Callable[[str], list[Path]]) -> None:
    exe = gcc(SLEEPER_C, work / "sleeper")
    start(spawn, ["/usr/bin/unshare", "--pid", "--fork", "--kill-child", str(exe)], "unshare")
    deadline = time.monotonic() + 10
    child = None
    while child is None and time.monotonic() < deadline:
        kids = Path(f"/proc/{spawn[-1].pid}/task/{spawn[-1].pid}/children").read_text().split()
        child = int(kids[0]) if kids else None
        time.sleep(0.02)
    assert child is not None
    # In a cgroup of its own, as a container manager would put it (pytest itself may run in a login
    # session, and a session's processes stay the user's whatever namespace they make).
    for d in own_cgroup(f"rctl-test-{os.getpid()}.ns"):
        (d / "cgroup.procs").write_text(str(child))
    replace(exe, exe.read_bytes() + b"\0")
    [p] = scan_pid(child).processes
    assert p.pid_namespace is not None and p.pid_namespace.startswith("pid:[")
    assert resolve(cgroup_path(p.cgroup), pid_namespace=p.pid_namespace).kind == CONTAINER


@pytest.fixture
def own_cgroup() -> Iterator[Callable[[str], list[Path]]]:
    """Make cgroup ``REL`` (e.g. ``system.slice/x.service``) in each of the host's hierarchies.

    The hierarchies come from mountinfo (tests/support/container.py): cgroup2 alone on a pure v2 host,
    plus the ``name=systemd`` v1 one on a hybrid host. Returns the directories made; at the end, their
    processes go back to the hierarchy's root and the directories this fixture created are removed.
    """
    made: list[tuple[Path, Path]] = []  # (hierarchy, directory this fixture created), deepest last

    def make(rel: str) -> list[Path]:
        dirs = []
        for top in cgroup_roots():
            d = top
            for part in rel.split("/"):
                d = d / part
                if not d.exists():
                    d.mkdir()
                    made.append((top, d))
            dirs.append(d)
        return dirs

    yield make
    for top, d in reversed(made):
        for pid in (d / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                (top / "cgroup.procs").write_text(pid)
        d.rmdir()


@pytest.mark.real  # root: it makes cgroups in the host's hierarchies
def test_real_cgroup_names_the_unit(work: Path, spawn: list[subprocess.Popen[bytes]],
                                    own_cgroup: Callable[[str], list[Path]]) -> None:
    name = f"rctl-test-{os.getpid()}.service"
    exe = gcc(SLEEPER_C, work / "sleeper")
    pid = start(spawn, [str(exe)], str(exe))
    for d in own_cgroup(f"system.slice/{name}"):
        (d / "cgroup.procs").write_text(str(pid))
    replace(exe, exe.read_bytes() + b"\0")
    [p] = scan_pid(pid).processes
    unit = resolve(cgroup_path(p.cgroup))
    assert (unit.kind, unit.name) == (SYSTEM, name)


def test_scan_of_the_whole_host_terminates_and_skips_itself() -> None:
    result = scan(Path("/proc"), EVERYTHING)
    assert result.scanned > 1
    assert os.getpid() not in {p.pid for p in result.processes}
    assert sys.executable  # the scanner ran inside this interpreter


def test_mapping_far_down_a_long_maps_file(work: Path, spawn: list[subprocess.Popen[bytes]]) -> None:
    # /proc seq files hand out about a page per read(): a scanner that takes one short read for
    # the whole file misses everything below the first 4 KiB.
    files = [work / f"f{i:03}.dat" for i in range(150)]
    for f in files:
        f.write_bytes(b"x" * 4096)
    code = ("import mmap,sys,time\n"
            "keep=[]\n"
            f"for p in {[str(f) for f in files]!r}:\n"
            "    f=open(p,'rb'); keep.append(mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ)); f.close()\n"
            "time.sleep(60)\n")
    pid = start(spawn, [PYTHON, "-I", "-c", code], str(files[-1]))
    maps = Path(f"/proc/{pid}/maps").read_bytes()
    # mmap() hands out addresses top down: the first file mapped is listed last.
    assert maps.index(str(files[0]).encode()) > 8192
    replace(files[0], b"y" * 4096)
    assert kinds(scan_pid(pid)) == {(DATA, str(files[0]), "replaced")}
