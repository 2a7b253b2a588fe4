#!/usr/bin/python3
"""Benchmark ``restartctl scan`` against the /proc floor and its peers.

Sets up N sleeping processes, of which S map a shared library that is then
replaced the way dpkg replaces files, spread over U fake systemd units (cgroup
directories only), and measures in one run with hyperfine:

* ``floor``: reading every ``/proc/*/maps`` with one ``cat``;
* ``restartctl scan`` and ``restartctl scan --json`` (from this checkout);
* ``needrestart -b`` and ``checkrestart`` (Debian 12 packages, extracted into
  ``bench/.cache``, never installed), where they can be made to run.

Plus, per command, peak RSS (``/usr/bin/time -v``) and the processes it spawns
(``strace -ff``).  Run as root with the system Python::

    sudo /usr/bin/python3 bench/scan.py [--procs 1000 --stale 100 --units 50 --runs 10]

Stdlib only.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import errno
import hashlib
import json
import os
import platform
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CACHE = BENCH_DIR / ".cache"
RESULTS = BENCH_DIR / "results"
SYSTEM_PYTHON = "/usr/bin/python3"
UNIT_PREFIX = "rctl-bench-"
UNIT_RE = re.compile(r"\brctl-bench-\d+\.service\b")
NS_ENV = "RCTL_BENCH_IN_NS"
STATE_NAME = "state.json"
LIB_SONAME = "libbench.so.1"
PKG = "rctl-bench-libbench1"
DPKG_ADMIN = Path("/var/lib/dpkg")
SANE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RSS_LIMIT_KB = 50 * 1024
NOT_RUNNABLE = ("Traceback (most recent call last)", "No module named", "Error while finding module")
RATIO_LIMIT = 1.5

NEEDRESTART_PERL_MODULES = {
    "Proc::ProcessTable": "libproc-processtable-perl",
    "Sort::Naturally": "libsort-naturally-perl",
    "Term::ReadKey": "libterm-readkey-perl",
    "Module::Find": "libmodule-find-perl",
    "Locale::TextDomain": "libintl-perl",
}

LIB_C = r"""
int bench_version(void) { return BENCH_VERSION; }
"""

SLEEPER_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#ifdef WITH_LIB
extern int bench_version(void);
#endif
/* Sleep forever.  With -d: fork, print the child's PID, and exit, so that the
   child is adopted by PID 1 (or the nearest subreaper) like a daemon. */
int main(int argc, char **argv) {
#ifdef WITH_LIB
    if (bench_version() < 0) return 1;
#endif
    if (argc > 1 && strcmp(argv[1], "-d") == 0) {
        pid_t pid = fork();
        if (pid < 0) return 1;
        if (pid > 0) {
            printf("%d\n", (int)pid);
            fflush(stdout);
            _exit(0);
        }
        int fd = open("/dev/null", O_RDWR);
        if (fd >= 0) { dup2(fd, 0); dup2(fd, 1); dup2(fd, 2); if (fd > 2) close(fd); }
    }
    for (;;) pause();
}
"""


class Interrupted(BaseException):
    """Raised from a signal handler so that ``finally`` blocks run the teardown."""


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def install_signal_handlers() -> None:
    """Turn SIGINT/SIGTERM/SIGHUP into :class:`Interrupted`."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


def ignore_signals() -> None:
    """Let a teardown finish even if the user presses Ctrl-C again."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def log(msg: str) -> None:
    """Progress line on stderr."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """subprocess.run with text I/O and captured output (argv only, never a shell)."""
    kw.setdefault("capture_output", True)
    return subprocess.run(argv, text=True, check=False, **kw)


# --------------------------------------------------------------------------- cgroups


@dataclass(frozen=True)
class Hierarchy:
    """A cgroup hierarchy that carries systemd's unit paths."""

    label: str  # "name=systemd" (v1) or "cgroup2"
    mount: Path

    def home(self) -> Path:
        """The cgroup this process is in now (children inherit it)."""
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            hid, ctrl, path = line.split(":", 2)
            if (self.label == "cgroup2" and hid == "0") or ctrl == self.label:
                return self.mount / path.lstrip("/")
        return self.mount


def unit_hierarchies() -> list[Hierarchy]:
    """The hierarchies where a process's unit shows: v1 name=systemd and/or cgroup2."""
    found = []
    if (Path("/sys/fs/cgroup/systemd") / "cgroup.procs").exists():
        found.append(Hierarchy("name=systemd", Path("/sys/fs/cgroup/systemd")))
    if (Path("/sys/fs/cgroup/unified") / "cgroup.controllers").exists():
        found.append(Hierarchy("cgroup2", Path("/sys/fs/cgroup/unified")))
    elif (Path("/sys/fs/cgroup") / "cgroup.controllers").exists():
        found.append(Hierarchy("cgroup2", Path("/sys/fs/cgroup")))
    return found


def move_pid(cgroup: Path, pid: int) -> bool:
    """Write one PID into a cgroup's cgroup.procs; False if the process is gone."""
    try:
        with open(cgroup / "cgroup.procs", "w") as f:
            f.write(f"{pid}\n")
        return True
    except ProcessLookupError:
        return False
    except OSError as e:
        if e.errno == errno.ESRCH:
            return False
        raise


# --------------------------------------------------------------------------- the fleet


@dataclass
class Fleet:
    """Everything the bench created, so that teardown removes exactly that."""

    workdir: Path
    lib_pids: list[int] = field(default_factory=list)
    idle_pids: list[int] = field(default_factory=list)
    pidfds: dict[int, int] = field(default_factory=dict)
    children: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    units: dict[str, list[int]] = field(default_factory=dict)
    created_cgroups: list[str] = field(default_factory=list)
    homes: dict[str, str] = field(default_factory=dict)
    mounts: list[str] = field(default_factory=list)
    host_status: str = field(default="", repr=False)

    @property
    def pids(self) -> list[int]:
        """All sleeper PIDs."""
        return self.lib_pids + self.idle_pids

    def save(self) -> None:
        """Record what exists so that ``--cleanup WORKDIR`` can undo it after a SIGKILL."""
        state = {
            "workdir": str(self.workdir),
            "bench_pid": os.getpid(),
            "lib_pids": self.lib_pids,
            "idle_pids": self.idle_pids,
            "units": self.units,
            "created_cgroups": self.created_cgroups,
            "homes": self.homes,
        }
        tmp = self.workdir / (STATE_NAME + ".tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        tmp.rename(self.workdir / STATE_NAME)


# Common runtime libraries of a Debian system (no -dev package needed: linked by file name),
# for --libs: sleepers that map as much as typical daemons do.
SYSTEM_LIBS = ("libz.so.1", "libssl.so.3", "libcrypto.so.3", "libsystemd.so.0", "libglib-2.0.so.0",
               "libstdc++.so.6", "libgcc_s.so.1", "libzstd.so.1", "liblzma.so.5", "libcap.so.2",
               "libselinux.so.1", "libpcre2-8.so.0", "libffi.so.8", "libgmp.so.10", "libexpat.so.1",
               "libuuid.so.1", "libblkid.so.1", "libmount.so.1", "libudev.so.1", "libgcrypt.so.20",
               "libgpg-error.so.0", "liblz4.so.1", "libbz2.so.1.0", "libsqlite3.so.0", "libxml2.so.2",
               "libkmod.so.2", "libacl.so.1", "libattr.so.1", "libcrypt.so.1", "libtinfo.so.6")


def system_libs(count: int) -> list[str]:
    """The first ``count`` of SYSTEM_LIBS that this host has."""
    multiarch = run(["gcc", "-print-multiarch"]).stdout.strip()
    found = [name for name in SYSTEM_LIBS
             if any(Path(d, name).exists() for d in (f"/usr/lib/{multiarch}", f"/lib/{multiarch}", "/usr/lib"))]
    if len(found) < count:
        raise SystemExit(f"bench/scan.py: --libs {count}: only {len(found)} of the listed libraries exist here")
    return found[:count]


def build(workdir: Path, libs: int = 0) -> tuple[Path, Path, Path]:
    """Compile libbench.so.1 (v1 and v2) and the two sleepers; return (lib_exe, idle_exe, v2).

    ``libs``: both sleepers also load that many system libraries, as daemons do.
    """
    src, lib, bin_ = workdir / "src", workdir / "lib", workdir / "bin"
    for d in (src, lib, bin_):
        d.mkdir()
    (src / "libbench.c").write_text(LIB_C)
    (src / "sleeper.c").write_text(SLEEPER_C)
    v2 = src / "libbench.so.1.v2"
    lib_exe, idle_exe = bin_ / "rctl-bench-lib", bin_ / "rctl-bench-idle"
    cc = ["gcc", "-O2", "-Wall"]
    shared = ["-shared", "-fPIC", f"-Wl,-soname,{LIB_SONAME}"]
    extra = ["-Wl,--no-as-needed", *(f"-l:{name}" for name in system_libs(libs)), "-Wl,--as-needed"] if libs else []
    steps = [
        [*cc, *shared, "-DBENCH_VERSION=1", "-o", str(lib / LIB_SONAME), str(src / "libbench.c")],
        [*cc, *shared, "-DBENCH_VERSION=2", "-o", str(v2), str(src / "libbench.c")],
        [
            *cc,
            "-DWITH_LIB",
            "-o",
            str(lib_exe),
            str(src / "sleeper.c"),
            f"-L{lib}",
            f"-l:{LIB_SONAME}",
            f"-Wl,-rpath,{lib}",
            *extra,
        ],
        [*cc, "-o", str(idle_exe), str(src / "sleeper.c"), *extra],
    ]
    for argv in steps:
        r = run(argv)
        if r.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} failed:\n{r.stderr}")
    return lib_exe, idle_exe, v2


def spawn(fleet: Fleet, exe: Path, parent: str) -> int:
    """Start one sleeper in a new session; return its PID (a pidfd or Popen keeps it safe to kill)."""
    if parent == "bench":
        p = subprocess.Popen(
            [str(exe)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd="/",
        )
        fleet.children[p.pid] = p
        return p.pid
    p = subprocess.Popen(
        [str(exe), "-d"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd="/",
    )
    assert p.stdout is not None
    line = p.stdout.readline()
    p.stdout.close()
    p.wait()
    pid = int(line)
    # The daemonised child pauses forever, so this PID cannot have been reused yet.
    fleet.pidfds[pid] = os.pidfd_open(pid)
    return pid


def bind(fleet: Fleet, src: Path, dst: Path) -> None:
    """Bind-mount SRC over DST in this private mount namespace; remember it for teardown."""
    run(["mount", "--bind", str(src), str(dst)]).check_returncode()
    fleet.mounts.append(str(dst))


def package_files(fleet: Fleet) -> list[Path]:
    """What the fake package owns: the sleepers and the library, with their directories."""
    w = fleet.workdir
    files = [w / "bin/rctl-bench-lib", w / "bin/rctl-bench-idle", w / "lib" / LIB_SONAME]
    dirs = {d for f in files for d in f.parents if d != Path("/")}
    return sorted(dirs) + files


def write_package(fleet: Fleet, version: str) -> None:
    """Record PKG VERSION in the private dpkg database, as dpkg does after unpacking it."""
    db = fleet.workdir / "dpkg"
    arch = run(["dpkg", "--print-architecture"]).stdout.strip() or "amd64"
    stanza = (
        f"Package: {PKG}\nStatus: install ok installed\nPriority: optional\nSection: libs\n"
        f"Installed-Size: 32\nMaintainer: restartctl bench <root@localhost>\n"
        f"Architecture: {arch}\nVersion: {version}\n"
        f"Description: restartctl bench library and sleepers\n"
        f" Exists only in the mount namespace of one bench/scan.py run.\n"
    )
    # In place: db/status is bind-mounted by inode, a rename would detach it.
    with open(db / "status", "w", errors="surrogateescape") as f:
        f.write(fleet.host_status.rstrip("\n") + "\n\n" + stanza)
    listing = "/.\n" + "".join(f"{p}\n" for p in package_files(fleet))
    (db / "info" / f"{PKG}.list.new").write_text(listing)
    (db / "info" / f"{PKG}.list.new").replace(db / "info" / f"{PKG}.list")


def private_dpkg_db(fleet: Fleet) -> None:
    """Make PKG installed, for this mount namespace only.

    The host's ``info/`` is hard-linked (copied if on another filesystem) into the
    work dir, PKG's ``.list`` and status stanza are added, and both are bind-mounted
    over ``/var/lib/dpkg`` here: dpkg-query and restartctl see PKG, the host never does.
    """
    db = fleet.workdir / "dpkg"
    info = db / "info"
    info.mkdir(parents=True)
    with os.scandir(DPKG_ADMIN / "info") as entries:
        for e in entries:
            try:
                os.link(e.path, info / e.name, follow_symlinks=False)
            except OSError as err:
                if err.errno != errno.EXDEV:
                    raise
                shutil.copy2(e.path, info / e.name, follow_symlinks=False)
    fleet.host_status = (DPKG_ADMIN / "status").read_text(errors="surrogateescape")
    write_package(fleet, "1")
    bind(fleet, info, DPKG_ADMIN / "info")
    bind(fleet, db / "status", DPKG_ADMIN / "status")


def setup(args: argparse.Namespace) -> Fleet:
    """Build, start the sleepers, put them into fake units, then replace the library."""
    parent_dir = Path(args.workdir_parent)
    workdir = Path(tempfile.mkdtemp(prefix="rctl-bench-", dir=parent_dir))
    fleet = Fleet(workdir=workdir)
    fleet.save()
    try:
        _setup(fleet, args)
    except BaseException:
        teardown(fleet)
        raise
    return fleet


def _setup(fleet: Fleet, args: argparse.Namespace) -> None:
    t0 = time.monotonic()
    lib_exe, idle_exe, v2 = build(fleet.workdir, args.libs)
    private_dpkg_db(fleet)
    fleet.save()
    log(f"built sleepers in {fleet.workdir}, owned by {PKG} 1 in a private dpkg database")
    for i in range(args.procs):
        if i < args.stale:
            fleet.lib_pids.append(spawn(fleet, lib_exe, args.parent))
        else:
            fleet.idle_pids.append(spawn(fleet, idle_exe, args.parent))
    fleet.save()
    log(f"started {args.procs} sleepers ({args.stale} mapping {LIB_SONAME}) " f"in {time.monotonic() - t0:.1f} s")

    width = max(2, len(str(args.units - 1)))
    names = [f"{UNIT_PREFIX}{n:0{width}d}.service" for n in range(args.units)]
    for i, pid in enumerate(fleet.lib_pids):
        fleet.units.setdefault(names[i % args.units], []).append(pid)
    for i, pid in enumerate(fleet.idle_pids):
        fleet.units.setdefault(names[i % args.units], []).append(pid)
    hierarchies = unit_hierarchies()
    if not hierarchies:
        raise RuntimeError("no name=systemd or cgroup2 hierarchy under /sys/fs/cgroup")
    for h in hierarchies:
        fleet.homes[str(h.mount)] = str(h.home())
        slice_dir = h.mount / "system.slice"
        if not slice_dir.exists():
            slice_dir.mkdir()
            fleet.created_cgroups.append(str(slice_dir))
            log(f"created {slice_dir} (removed again at teardown)")
        else:
            log(f"{slice_dir} already exists: not ours, left alone")
        for name in names:
            d = slice_dir / name
            if d.exists():
                raise RuntimeError(f"{d} already exists: a crashed run? see --cleanup")
            d.mkdir()
            fleet.created_cgroups.append(str(d))
        fleet.save()
        for name, pids in fleet.units.items():
            for pid in pids:
                move_pid(slice_dir / name, pid)
    fleet.save()
    log(f"moved them into {args.units} fake units ({', '.join(h.label for h in hierarchies)})")

    # Replace the library the way dpkg does: write NAME.dpkg-new, fsync, rename over NAME.
    target = fleet.workdir / "lib" / LIB_SONAME
    new = target.with_name(LIB_SONAME + ".dpkg-new")
    with open(new, "wb") as f:
        f.write(v2.read_bytes())
        f.flush()
        os.fsync(f.fileno())
    os.chmod(new, 0o644)
    os.rename(new, target)
    write_package(fleet, "2")
    verify(fleet)
    log(f"upgraded {PKG} to 2 ({target} replaced); {len(fleet.lib_pids)} processes now map a deleted inode")


def verify(fleet: Fleet) -> None:
    """Check that exactly the lib sleepers map the deleted library and sit in their units."""
    needle = f"/{LIB_SONAME} (deleted)"
    stale = {pid for pid in fleet.pids if needle in Path(f"/proc/{pid}/maps").read_text()}
    if stale != set(fleet.lib_pids):
        raise RuntimeError(f"expected {len(fleet.lib_pids)} stale processes, found {len(stale)}")
    for name, pids in fleet.units.items():
        cg = Path(f"/proc/{pids[0]}/cgroup").read_text()
        if f"/system.slice/{name}\n" not in cg:
            raise RuntimeError(f"PID {pids[0]} is not in {name}:\n{cg}")


def teardown(fleet: Fleet) -> None:
    """Kill exactly our PIDs, remove exactly our cgroups and the work dir; report problems."""
    ignore_signals()
    problems: list[str] = []
    alive = [pid for pid in fleet.pids if Path(f"/proc/{pid}").exists()]
    for home in fleet.homes.values():
        for pid in alive:
            try:
                move_pid(Path(home), pid)
            except OSError as e:
                problems.append(f"move {pid} back to {home}: {e}")
                break
    for fd in fleet.pidfds.values():
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    for p in fleet.children.values():
        p.kill()
    for p in fleet.children.values():
        p.wait()
    deadline = time.monotonic() + 10
    pending = dict(fleet.pidfds)
    while pending and time.monotonic() < deadline:
        poller = select.poll()
        for fd in pending.values():
            poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(200):
            pending = {p: f for p, f in pending.items() if f != fd}
    if pending:
        problems.append(f"{len(pending)} sleepers did not exit within 10 s: {sorted(pending)[:10]}")
    for fd in fleet.pidfds.values():
        os.close(fd)
    # Daemonised sleepers stay zombies until PID 1 reaps them (within seconds here).
    zombies = set(fleet.pidfds)
    while zombies and time.monotonic() < deadline:
        zombies = {p for p in zombies if is_our_zombie(p)}
        if zombies:
            time.sleep(0.1)
    if zombies:
        log(f"note: {len(zombies)} killed sleepers not reaped by their parent yet")
    fleet.pidfds.clear()
    for d in reversed(fleet.created_cgroups):
        for attempt in range(50):
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY or attempt == 49:
                    problems.append(f"rmdir {d}: {e}")
                    break
                time.sleep(0.1)
    for m in reversed(fleet.mounts):
        r = run(["umount", m])
        if r.returncode != 0:
            problems.append(f"umount {m}: {r.stderr.strip()}")
    fleet.mounts.clear()
    shutil.rmtree(fleet.workdir, ignore_errors=True)
    if fleet.workdir.exists():
        problems.append(f"could not remove {fleet.workdir}")
    for problem in problems:
        log(f"TEARDOWN PROBLEM: {problem}")
    log("teardown done" + (" (with problems)" if problems else ": host left as found"))


def is_our_zombie(pid: int) -> bool:
    """True while PID is a zombie named like our sleepers (not a new process that reused it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    comm, _, rest = stat.partition(" (")[2].rpartition(") ")
    return rest.startswith("Z") and comm.startswith("rctl-bench-")


def cleanup_after_crash(workdir: Path) -> int:
    """Undo a run that was SIGKILLed, from its state file: only processes whose exe is in WORKDIR."""
    state = json.loads((workdir / STATE_NAME).read_text())
    fleet = Fleet(workdir=workdir, units=state["units"], created_cgroups=state["created_cgroups"], homes=state["homes"])
    for pid in state["lib_pids"] + state["idle_pids"]:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            exe = ""
        if exe.startswith(str(workdir) + "/"):
            fleet.lib_pids.append(pid)
            fleet.pidfds[pid] = fd
        else:
            os.close(fd)
    log(f"cleaning up {len(fleet.pids)} leftover sleepers and {len(fleet.created_cgroups)} cgroups")
    teardown(fleet)
    return 0


# --------------------------------------------------------------------------- commands


@dataclass
class Command:
    """One measured command."""

    name: str
    role: str  # floor | subject | peer | reference
    argv: list[str]
    available: bool = True
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    sanity: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    max_rss_kb: int | None = None
    spawned: dict[str, int] | None = None


def bench_env() -> dict[str, str]:
    """The environment every measured command gets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PERL5", "LD_"))}
    env.update(PATH=SANE_PATH, PYTHONPATH=str(REPO), LC_ALL="C.UTF-8", LANG="C.UTF-8")
    env.pop(NS_ENV, None)
    env.pop("NEEDRESTART_MODE", None)
    env.pop("NEEDRESTART_SUSPEND", None)
    return env


def apt_extract(package: str) -> Path:
    """``apt-get download`` PACKAGE into bench/.cache/debs and ``dpkg-deb -x`` it; return the tree."""
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        r = run(["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", package], cwd=debs)
        found = sorted(debs.glob(f"{package}_*.deb"))
        if r.returncode != 0 or not found:
            raise RuntimeError(f"apt-get download {package} failed: {r.stderr.strip()[-300:]}")
    deb = found[-1]
    version = deb.name.split("_")[1]
    tree = CACHE / f"{package}-{version}"
    if not (tree / ".extracted").exists():
        shutil.rmtree(tree, ignore_errors=True)
        r = run(["dpkg-deb", "-x", str(deb), str(tree)])
        if r.returncode != 0:
            raise RuntimeError(f"dpkg-deb -x {deb.name} failed: {r.stderr.strip()}")
        (tree / ".extracted").write_text(deb.name + "\n")
    return tree


def apt_install(packages: list[str]) -> None:
    """Install library packages a peer needs (only with --install-peer-deps)."""
    log(f"apt-get install {' '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], env=env)
    if r.returncode != 0:
        raise RuntimeError(f"apt-get install failed: {r.stderr.strip()[-300:]}")


def prepare_needrestart(install_deps: bool) -> Command:
    """needrestart 3.6 from its .deb, run in place with a config that points into the tree."""
    cmd = Command("needrestart -b", "peer", [])
    try:
        tree = apt_extract("needrestart")
    except RuntimeError as e:
        cmd.available, cmd.reason = False, str(e)
        return cmd
    missing = [m for m in NEEDRESTART_PERL_MODULES if run(["perl", f"-M{m}", "-e", "1"]).returncode != 0]
    if missing and install_deps:
        apt_install([NEEDRESTART_PERL_MODULES[m] for m in missing])
        missing = [m for m in missing if run(["perl", f"-M{m}", "-e", "1"]).returncode != 0]
    if missing:
        pkgs = " ".join(NEEDRESTART_PERL_MODULES[m] for m in missing)
        cmd.available = False
        cmd.reason = (
            f"missing Perl modules {', '.join(missing)} " f"(apt-get install {pkgs}, or rerun with --install-peer-deps)"
        )
        return cmd
    # The helpers' paths are compiled in: point them into the tree (idempotent).
    helpers = str(tree / "usr/lib/needrestart") + "/"
    for rel in ("usr/share/perl5/NeedRestart/Kernel/Linux.pm", "usr/share/perl5/NeedRestart/uCode/Intel.pm"):
        p = tree / rel
        p.write_text(p.read_text().replace("q(/usr/lib/needrestart/", "q(" + helpers))
    p = tree / "usr/lib/needrestart/iucode-scan-versions"
    p.write_text(p.read_text().replace("/etc/needrestart/", str(tree / "etc/needrestart") + "/"))
    etc = tree / "etc/needrestart"
    conf = (etc / "needrestart.conf").read_text().replace("/etc/needrestart/", str(etc) + "/")
    conf += "".join(
        f"$nrconf{{{k}}} = q({etc / d});\n"
        for k, d in (("hook_d", "hook.d"), ("notify_d", "notify.d"), ("restart_d", "restart.d"))
    )
    (tree / "bench.conf").write_text(conf)
    cmd.argv = [
        "perl",
        f"-I{tree}/usr/share/perl5",
        f"{tree}/usr/sbin/needrestart",
        "-b",
        "-c",
        str(tree / "bench.conf"),
    ]
    cmd.notes.append(f"{tree.name}, run in place from bench/.cache")
    return cmd


def prepare_checkrestart(install_deps: bool) -> Command:
    """checkrestart from debian-goodies' .deb, run in place by the system Python."""
    cmd = Command("checkrestart", "peer", [])
    try:
        tree = apt_extract("debian-goodies")
    except RuntimeError as e:
        cmd.available, cmd.reason = False, str(e)
        return cmd
    if not shutil.which("lsof", path=SANE_PATH):
        if install_deps:
            apt_install(["lsof"])
        else:
            cmd.notes.append("lsof missing: checkrestart falls back to one pmap per process")
    cmd.argv = [SYSTEM_PYTHON, f"{tree}/usr/sbin/checkrestart"]
    cmd.notes.append(f"{tree.name}, run in place from bench/.cache")
    return cmd


def maps_floor_py() -> str:
    """A Python one-liner that reads every /proc/*/maps (for reference only)."""
    return (
        "import os\n"
        "for p in os.listdir('/proc'):\n"
        " if p.isdigit():\n"
        "  try:\n"
        "   with open('/proc/'+p+'/maps','rb') as f: f.read()\n"
        "  except OSError: pass\n"
    )


def maps_and_fds_floor_py() -> str:
    """The least a CPython scan must read: every maps file, and every fd link (for reference only)."""
    return (
        "import os\n"
        "for p in os.listdir(b'/proc'):\n"
        " if p.isdigit():\n"
        "  d=b'/proc/'+p+b'/'\n"
        "  try:\n"
        "   fd=os.open(d+b'maps',os.O_RDONLY)\n"
        "   try:\n"
        "    while os.read(fd,65536): pass\n"
        "   finally: os.close(fd)\n"
        "   for n in os.listdir(d+b'fd'): os.readlink(d+b'fd/'+n)\n"
        "  except OSError: pass\n"
    )


def commands(args: argparse.Namespace) -> list[Command]:
    """The command table: floor, the subject, the peers, and two Python references."""
    rctl = [SYSTEM_PYTHON, "-m", "restart", "scan"]
    cmds = [
        Command("floor (cat maps)", "floor", ["sh", "-c", "cat /proc/[0-9]*/maps >/dev/null 2>&1"]),
        Command("restartctl scan", "subject", rctl),
        Command("restartctl scan --json", "subject", [*rctl, "--json"]),
        # What the package installs as /usr/sbin/restartctl (a console script: no runpy, as -m has).
        Command("restartctl scan (installed entry point)", "subject",
                [SYSTEM_PYTHON, "-c", "import sys; from restart.cli import run; sys.exit(run())", "scan"]),
    ]
    if args.skip_peers:
        return cmds
    cmds += [prepare_needrestart(args.install_peer_deps), prepare_checkrestart(args.install_peer_deps)]
    cmds += [
        Command("python3 startup", "reference", [SYSTEM_PYTHON, "-c", "pass"]),
        Command("python3 read maps", "reference", [SYSTEM_PYTHON, "-c", maps_floor_py()]),
        Command("python3 read maps + fd links", "reference", [SYSTEM_PYTHON, "-c", maps_and_fds_floor_py()]),
    ]
    return cmds


# --------------------------------------------------------------------------- sanity runs


def pids_in_json(obj: Any, found: set[int]) -> None:
    """Collect every int found under a key containing 'pid'."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if "pid" in str(k).lower():
                if isinstance(v, int) and not isinstance(v, bool):
                    found.add(v)
                elif isinstance(v, list):
                    found.update(x for x in v if isinstance(x, int) and not isinstance(x, bool))
            pids_in_json(v, found)
    elif isinstance(obj, list):
        for v in obj:
            pids_in_json(v, found)


def sanity(cmd: Command, fleet: Fleet) -> None:
    """Run the command once: does it run, and what does it find among our processes?"""
    t0 = time.monotonic()
    try:
        r = run(cmd.argv, cwd=REPO, env=bench_env(), timeout=600)
    except subprocess.TimeoutExpired:
        cmd.available, cmd.reason = False, "did not finish within 600 s"
        return
    s: dict[str, Any] = {"exit_code": r.returncode, "seconds": round(time.monotonic() - t0, 3)}
    err = r.stderr.strip()
    if (
        r.returncode < 0
        or r.returncode in (126, 127)
        or any(m in err for m in NOT_RUNNABLE)
        or (r.returncode == 2 and "usage:" in err)
    ):
        cmd.available = False
        cmd.reason = f"exit {r.returncode}: {(err.splitlines() or ['?'])[-1][:300]}"
        return
    if err:
        s["stderr_tail"] = err.splitlines()[-3:]
    units = set(UNIT_RE.findall(r.stdout))
    if cmd.role in ("subject", "peer"):
        s["bench_units_reported"] = len(units)
    if cmd.name == "restartctl scan --json":
        try:
            found: set[int] = set()
            pids_in_json(json.loads(r.stdout), found)
            s["stale_pids_reported"] = len(found & set(fleet.lib_pids))
            s["idle_pids_reported"] = len(found & set(fleet.idle_pids))
        except ValueError as e:
            s["json_error"] = str(e)
    elif cmd.name == "needrestart -b":
        s["svc_lines"] = sum(1 for line in r.stdout.splitlines() if line.startswith("NEEDRESTART-SVC:"))
    elif cmd.name == "checkrestart":
        m = re.search(r"Found (\d+) processes using old versions", r.stdout)
        s["processes_reported"] = int(m.group(1)) if m else None
    cmd.sanity = s


# --------------------------------------------------------------------------- measurements


def hyperfine(cmds: list[Command], args: argparse.Namespace, out: Path) -> None:
    """One hyperfine run over all available commands; fill in their timings."""
    argv = [
        "hyperfine",
        "-N",
        "-i",
        "--style",
        "basic",
        "--warmup",
        str(args.warmup),
        "--runs",
        str(args.runs),
        "--export-json",
        str(out),
    ]
    for c in cmds:
        argv += ["-n", c.name, shlex.join(c.argv)]
    log(f"hyperfine: {len(cmds)} commands x ({args.warmup} warmup + {args.runs} runs)")
    r = subprocess.run(argv, cwd=REPO, env=bench_env(), check=False, stdout=sys.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"hyperfine exited {r.returncode}")
    data = json.loads(out.read_text())
    for c, res in zip(cmds, data["results"], strict=True):
        c.timing = {k: res[k] for k in ("mean", "stddev", "median", "min", "max", "user", "system")}
        c.timing["runs"] = len(res["times"])
        c.timing["exit_codes"] = sorted(set(res.get("exit_codes", [])))


def max_rss(cmd: Command, tmp: Path) -> None:
    """Peak RSS of one run under GNU time (largest of the command and its children)."""
    out = tmp / "time.txt"
    run(["/usr/bin/time", "-v", "-o", str(out), *cmd.argv], cwd=REPO, env=bench_env(), timeout=600)
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.read_text())
    cmd.max_rss_kb = int(m.group(1)) if m else None


def spawned(cmd: Command, tmp: Path) -> None:
    """Count execve()s, forks and threads of one run under ``strace -ff``."""
    d = tmp / ("strace-" + re.sub(r"\W+", "-", cmd.name))
    d.mkdir()
    run(
        ["strace", "-ff", "-qq", "-o", str(d / "t"), "-e", "trace=execve,execveat,clone,clone3,fork,vfork", *cmd.argv],
        cwd=REPO,
        env=bench_env(),
        timeout=600,
    )
    execs = forks = threads = 0
    call = re.compile(r"^(execve|execveat|clone|clone3|fork|vfork)\(")
    for f in d.iterdir():
        for line in f.read_text(errors="replace").splitlines():
            m = call.match(line)
            if not m:
                continue
            res = line.rsplit("=", 1)[-1].split()[0] if "=" in line else ""
            if m.group(1).startswith("exec"):
                execs += res == "0"
            elif res.isdigit() and int(res) > 0:
                if "CLONE_THREAD" in line:
                    threads += 1
                else:
                    forks += 1
    # The first execve is strace starting the command itself.
    cmd.spawned = {"execve": max(0, execs - 1), "processes": forks, "threads": threads}


def proc_count() -> int:
    """Processes on the host right now."""
    return sum(1 for p in os.listdir("/proc") if p.isdigit())


# --------------------------------------------------------------------------- report


def fmt_ms(sec: float | None) -> str:
    """Seconds as milliseconds for the table."""
    return "-" if sec is None else f"{sec * 1000:.1f}"


def verdict(target: dict[str, Any]) -> str:
    """PASS or FAIL."""
    return "PASS" if target["pass"] else "FAIL"


def build_report(cmds: list[Command], meta: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Results as JSON-able data and as a Markdown summary."""
    floor = next((c for c in cmds if c.role == "floor" and c.timing), None)
    rows = []
    for c in cmds:
        for key, stat in (("ratio_to_floor", "mean"), ("ratio_to_floor_min", "min")):
            mine, base = c.timing.get(stat), floor.timing.get(stat) if floor else None
            c.timing[key] = round(mine / base, 2) if (mine is not None and base) else None
        rows.append(c)
    noisy = [c.name for c in cmds if c.timing.get("mean") and c.timing["stddev"] > 0.1 * c.timing["mean"]]
    targets: dict[str, Any] = {}
    for c in cmds:
        if c.role != "subject":
            continue
        t: dict[str, Any] = {"available": c.available}
        if c.available:
            ratio = c.timing.get("ratio_to_floor")
            ratio_min = c.timing.get("ratio_to_floor_min")
            # Both must hold: a noisy floor can make the mean ratio look better than it is.
            ok = ratio is not None and ratio_min is not None and max(ratio, ratio_min) <= RATIO_LIMIT
            t["time_ratio"] = {"limit": RATIO_LIMIT, "value": ratio, "value_min": ratio_min, "pass": ok}
            t["max_rss_kb"] = {
                "limit": RSS_LIMIT_KB,
                "value": c.max_rss_kb,
                "pass": c.max_rss_kb is not None and c.max_rss_kb <= RSS_LIMIT_KB,
            }
            sp = c.spawned
            t["no_subprocess"] = {"value": sp, "pass": sp is not None and sp["execve"] == 0 and sp["processes"] == 0}
        else:
            t["reason"] = c.reason
        targets[c.name] = t
    data = {
        "schema": "restartctl-bench-scan/1",
        **meta,
        "commands": [
            {
                "name": c.name,
                "role": c.role,
                "argv": c.argv,
                "available": c.available,
                "reason": c.reason or None,
                "notes": c.notes,
                "sanity": c.sanity,
                "time": c.timing,
                "max_rss_kb": c.max_rss_kb,
                "spawned": c.spawned,
            }
            for c in cmds
        ],
        "targets": targets,
        "noisy": noisy,
    }
    lines = [
        f"# restartctl scan bench, {meta['date']}",
        "",
        f"{meta['params']['procs']} sleepers ({meta['params']['stale']} mapping a replaced library) in "
        f"{meta['params']['units']} fake units; {meta['processes_on_host']} processes on the host; "
        f"view: {meta['params']['view']}; parent: {meta['params']['parent']}; "
        f"system libraries per sleeper: {meta['params'].get('libs', 0)}; "
        f"hyperfine {meta['params']['warmup']} warmup + {meta['params']['runs']} runs; "
        f"kernel {meta['host']['kernel']}; restartctl at commit {meta['restartctl_source']['commit']}, "
        f"restart/*.py sha256 {meta['restartctl_source']['restart_py_sha256']}.",
        "",
        "| command | mean ms | ± ms | min ms | x floor | x floor (min) | max RSS MB | execve | forks | found |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for c in rows:
        if not c.available:
            lines.append(f"| {c.name} | not runnable: {c.reason} | | | | | | | | |")
            continue
        tm = c.timing
        rss = f"{c.max_rss_kb / 1024:.1f}" if c.max_rss_kb else "-"
        sp = c.spawned or {}
        found = ", ".join(f"{k}={v}" for k, v in c.sanity.items() if k not in ("seconds", "stderr_tail"))
        ratio, ratio_min = tm.get("ratio_to_floor"), tm.get("ratio_to_floor_min")
        lines.append(
            f"| {c.name} | {fmt_ms(tm.get('mean'))} | {fmt_ms(tm.get('stddev'))} | "
            f"{fmt_ms(tm.get('min'))} | {'-' if ratio is None else f'{ratio:.2f}'} | "
            f"{'-' if ratio_min is None else f'{ratio_min:.2f}'} | {rss} | "
            f"{sp.get('execve', '-')} | {sp.get('processes', '-')} | {found} |"
        )
    lines += [
        "",
        "Targets (restartctl scan): time <= 1.5 x floor (by mean and by min), max RSS <= 50 MiB, no subprocess.",
        "",
    ]
    for name, t in targets.items():
        if not t["available"]:
            lines.append(f"- {name}: not runnable: {t['reason']}")
            continue
        peak = t["max_rss_kb"]["value"]
        sp = t["no_subprocess"]["value"] or {}
        lines.append(
            f"- {name}: time {t['time_ratio']['value']} x floor (min: {t['time_ratio']['value_min']}) "
            f"{verdict(t['time_ratio'])}; "
            f"max RSS {'-' if peak is None else f'{peak / 1024:.1f} MiB'} {verdict(t['max_rss_kb'])}; "
            f"execve {sp.get('execve', '-')}, forks {sp.get('processes', '-')} {verdict(t['no_subprocess'])}"
        )
    if noisy:
        lines += ["", f"Noisy (stddev > 10 % of mean), rerun on a quiet machine: {', '.join(noisy)}."]
    notes = [f"- {c.name}: {n}" for c in cmds for n in c.notes]
    if notes:
        lines += ["", "Notes:", "", *notes]
    return data, "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def enter_namespace(argv: list[str], view: str) -> None:
    """Re-exec in a private mount namespace (the fake dpkg database and /run/systemd live there).

    With ``view == "systemd"`` a tmpfs with an empty ``system/`` goes over /run/systemd,
    so that tools see a booted systemd (sd_booted()); the host never sees either.
    """
    if os.environ.get(NS_ENV) != "1":
        os.environ[NS_ENV] = "1"
        unshare = ["unshare", "--mount", "--propagation", "private", "--"]
        os.execv("/usr/bin/unshare", [*unshare, SYSTEM_PYTHON, str(Path(__file__).resolve()), *argv])  # noqa: S606
    if view != "systemd" or Path("/run/systemd/system").is_dir():
        return
    if not Path("/run/systemd").is_dir():
        raise SystemExit("--view systemd needs an existing /run/systemd to mount over; use --view host")
    tmpfs = ["mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "rctl-bench", "/run/systemd"]
    run(tmpfs, capture_output=False).check_returncode()
    Path("/run/systemd/system").mkdir()


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command line."""
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--procs", type=int, default=1000, help="sleepers to start (default 1000)")
    ap.add_argument("--stale", type=int, default=100, help="of which map the replaced library (100)")
    ap.add_argument("--units", type=int, default=50, help="fake units to spread them over (50)")
    ap.add_argument("--libs", type=int, default=0,
                    help="sleepers also load this many system libraries, to map as much as daemons do (0)")
    ap.add_argument("--runs", type=int, default=10, help="hyperfine runs per command (10)")
    ap.add_argument("--warmup", type=int, default=2, help="hyperfine warmup runs (2)")
    ap.add_argument(
        "--view",
        choices=("systemd", "host"),
        default="systemd",
        help="systemd: /run/systemd/system exists, as on a systemd host (default); host: it does not, as "
        "on this PID 1; either way everything runs in a private mount namespace that holds the fake package",
    )
    ap.add_argument(
        "--parent",
        choices=("init", "bench"),
        default="init",
        help="init: sleepers daemonise and are adopted by PID 1, like services "
        "(default); bench: they stay children of this script",
    )
    ap.add_argument("--skip-peers", action="store_true", help="measure only the floor and restartctl")
    ap.add_argument(
        "--install-peer-deps",
        action="store_true",
        help="apt-get install the Perl libraries needrestart needs (never needrestart)",
    )
    ap.add_argument(
        "--keep", action="store_true", help="set up, print the PIDs, wait for Ctrl-C/SIGTERM, tear down (no measuring)"
    )
    ap.add_argument("--cleanup", metavar="WORKDIR", help="undo a run that was SIGKILLed")
    ap.add_argument(
        "--workdir-parent",
        default="/opt",
        help="where the temporary tree goes (default /opt; not /tmp or /var/tmp, "
        "which needrestart and checkrestart ignore)",
    )
    ap.add_argument("--out", default=str(RESULTS), help="results directory (default bench/results)")
    args = ap.parse_args(argv)
    if not 0 < args.units <= args.procs or not 0 <= args.stale <= args.procs:
        ap.error("need 0 < units <= procs and 0 <= stale <= procs")
    return args


def main(argv: list[str]) -> int:
    """Entry point."""
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/scan.py must run as root", file=sys.stderr)
        return 2
    if args.cleanup:
        return cleanup_after_crash(Path(args.cleanup).resolve())
    needed = ["gcc", "unshare", "mount"] + ([] if args.keep else ["hyperfine"])
    missing = [tool for tool in needed if not shutil.which(tool, path=SANE_PATH)]
    if missing:
        print(
            f"bench/scan.py needs {', '.join(missing)} (apt-get install gcc hyperfine util-linux mount)",
            file=sys.stderr,
        )
        return 2
    if Path("/proc/1/comm").read_text().strip() == "systemd" and os.environ.get(NS_ENV) != "1":
        print(
            "PID 1 is systemd: the fake units would sit in systemd's own tree; "
            "run this bench on a host without systemd (or in the nspawn harness)",
            file=sys.stderr,
        )
        return 2
    enter_namespace(argv, args.view)
    install_signal_handlers()
    fleet: Fleet | None = None
    try:
        fleet = setup(args)
        if args.keep:
            return keep(fleet, args)
        return measure(fleet, args)
    except Interrupted as e:
        log(f"interrupted by {e}")
        return 130
    except RuntimeError as e:
        log(f"error: {e}")
        return 1
    finally:
        if fleet is not None:
            teardown(fleet)


def keep(fleet: Fleet, args: argparse.Namespace) -> int:
    """Hold the setup for profiling until a signal arrives."""
    print(f"work dir: {fleet.workdir} (all PIDs and units in {fleet.workdir / STATE_NAME})")
    print(f"stale PIDs ({len(fleet.lib_pids)}): {' '.join(map(str, fleet.lib_pids))}")
    print(
        f"other PIDs: {len(fleet.idle_pids)}, {fleet.idle_pids[0]}..{fleet.idle_pids[-1]}"
        if fleet.idle_pids
        else "other PIDs: none"
    )
    print(f"processes on host: {proc_count()}")
    view = f" and /run/systemd/system ({args.view} view)" if args.view == "systemd" else ""
    print(f"{PKG} and its replaced library exist only in this mount namespace{view}; run tools in it with:")
    print(f"  cd {REPO} && sudo nsenter -t {os.getpid()} -m -- {SYSTEM_PYTHON} -m restart scan")
    print(f"stop with Ctrl-C or: kill -TERM {os.getpid()}")
    print(
        f"if this process gets SIGKILLed: sudo {SYSTEM_PYTHON} {Path(__file__).resolve()} "
        f"--cleanup {fleet.workdir}",
        flush=True,
    )
    while True:
        signal.pause()


def measure(fleet: Fleet, args: argparse.Namespace) -> int:
    """Sanity-run, time, and profile every command; print and write the report."""
    cmds = commands(args)
    for c in cmds:
        if c.available:
            log(f"sanity run: {c.name}")
            sanity(c, fleet)
        if not c.available:
            log(f"{c.name}: not runnable: {c.reason}")
    ok = [c for c in cmds if c.available]
    started = dt.datetime.now(dt.UTC)
    nprocs = proc_count()
    log(f"processes on host at measurement time: {nprocs}")
    with tempfile.TemporaryDirectory(prefix="rctl-bench-out-") as tmp_s:
        tmp = Path(tmp_s)
        hyperfine(ok, args, tmp / "hyperfine.json")
        hf_raw = json.loads((tmp / "hyperfine.json").read_text())
        have_time, have_strace = Path("/usr/bin/time").exists(), bool(shutil.which("strace", path=SANE_PATH))
        for c in ok:
            log(f"max RSS and spawned processes: {c.name}")
            if have_time:
                max_rss(c, tmp)
            if have_strace:
                spawned(c, tmp)
        if not have_time:
            log("no /usr/bin/time (apt-get install time): peak RSS not measured")
        if not have_strace:
            log("no strace (apt-get install strace): spawned processes not counted")
    meta = {
        "date": started.astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "processes_on_host": nprocs,
        "params": {k: getattr(args, k) for k in ("procs", "stale", "units", "libs", "runs", "warmup", "view",
                                                 "parent")},
        "host": {
            "kernel": platform.release(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "hyperfine": run(["hyperfine", "--version"]).stdout.strip(),
            "pid1": Path("/proc/1/comm").read_text().strip(),
            "sleeper_ppid": sleeper_ppid(fleet),
        },
        "restartctl_source": source_id(),
        "hyperfine": hf_raw,
    }
    data, summary = build_report(cmds, meta)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = started.astimezone().strftime("%Y-%m-%d") + "-scan"
    if args.view != "systemd":
        stem += f"-view-{args.view}"
    if args.parent != "init":
        stem += f"-parent-{args.parent}"
    if args.libs:
        stem += f"-libs-{args.libs}"
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / f"{stem}.md").write_text(summary)
    print(summary)
    log(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.md'}")
    return 0


def source_id() -> dict[str, str | None]:
    """Which restartctl was measured: the commit, and a hash of restart/*.py as they were."""
    head = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    digest = hashlib.sha256()
    for f in sorted((REPO / "restart").glob("*.py")):
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    commit = head.stdout.strip() if head.returncode == 0 else ""
    return {"commit": commit or None, "restart_py_sha256": digest.hexdigest()[:16]}


def sleeper_ppid(fleet: Fleet) -> int | None:
    """Parent PID of one sleeper (1 when daemonised, unless a subreaper adopted it)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        stat = Path(f"/proc/{fleet.pids[0]}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
