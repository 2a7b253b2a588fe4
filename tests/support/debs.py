"""Build tiny, real Debian packages at test time with gcc and ``dpkg-deb``.

Why: restartctl must be tested against genuine dpkg upgrades (new inodes renamed over files that
running processes still map) without depending on, or touching, real archive packages. Every demo
package name starts with ``rctl-`` so nothing can collide with a real package.
"""

from __future__ import annotations

import functools
import os
import re
import struct
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import PrerequisiteError, require_program

GCC = "/usr/bin/gcc"
JAVAC = "/usr/bin/javac"
JAR = "/usr/bin/jar"
DPKG = "/usr/bin/dpkg"
DPKG_DEB = "/usr/bin/dpkg-deb"
DPKG_QUERY = "/usr/bin/dpkg-query"
DPKG_ARCHITECTURE = "/usr/bin/dpkg-architecture"

# Fixed mtime for every packaged file: unchanged files (unit files, init scripts) look identical
# across demo versions, so systemd does not report NeedDaemonReload after an upgrade.
FIXED_MTIME = 1_700_000_000

_DIR_MODE = 0o755  # every directory in a package, as Debian policy wants
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_VERSION_RE = re.compile(r"^[0-9][A-Za-z0-9.+~-]*$")  # no epoch: it would end up in file names
_CONTROL_SCRIPTS = frozenset({"preinst", "postinst", "prerm", "postrm", "config"})
_CONTROL_DATA = frozenset({"triggers", "shlibs", "conffiles", "templates"})
_CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def _run(argv: Sequence[str], *, cwd: Path | None = None) -> str:
    """Run a build tool; raise with its stderr on failure (why: build errors must be readable)."""
    require_program(argv[0])
    proc = subprocess.run(list(argv), cwd=cwd, env=_CLEAN_ENV, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed with {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


@functools.cache
def host_arch() -> str:
    """The dpkg architecture of the host (``amd64``); the containers share it."""
    return _run([DPKG, "--print-architecture"]).strip()


@functools.cache
def multiarch() -> str:
    """The multiarch triplet (``x86_64-linux-gnu``) used in library paths."""
    try:
        return _run([DPKG_ARCHITECTURE, "-qDEB_HOST_MULTIARCH"]).strip()
    except PrerequisiteError:
        return _run([GCC, "-print-multiarch"]).strip()


def compile_c(
    source: str,
    out: Path,
    *,
    shared: bool = False,
    soname: str | None = None,
    libs: Sequence[Path] = (),
    rpath: str | None = None,
    cflags: Sequence[str] = (),
) -> Path:
    """Compile C ``source`` to ``out`` (an executable, or a shared library if ``shared``).

    ``libs`` are paths of shared libraries to link against (their SONAME becomes DT_NEEDED).
    Why a helper: every demo binary needs the same strict flags, and failures must show gcc's output.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_name(out.name + ".c")
    src.write_text(source, encoding="utf-8")
    argv = [GCC, "-O2", "-Wall", "-Werror", "-pipe", "-o", str(out), str(src)]
    if shared:
        argv[1:1] = ["-shared", "-fPIC"]
        if soname:
            argv.append(f"-Wl,-soname,{soname}")
    elif soname:
        raise ValueError("soname is only meaningful for shared libraries")
    argv.extend(cflags)
    argv.extend(str(lib) for lib in libs)
    if rpath:
        argv.append(f"-Wl,-rpath,{rpath}")
    _run(argv)
    return out


CACHE = Path(__file__).resolve().parent.parent / ".cache" / "debs"


def cached_debs(*names: str) -> list[Path]:
    """Debian's own packages that tests/run.sh downloaded for installing inside containers only."""
    import pytest

    found = [sorted(CACHE.glob(f"{name}_*.deb")) for name in names]
    missing = [n for n, f in zip(names, found, strict=True) if not f]
    if missing:
        pytest.fail(f"{missing} not downloaded to {CACHE}: run tests/run.sh (it fetches them)", pytrace=False)
    return _with_cached_dependencies([f[-1] for f in found])


def _with_cached_dependencies(debs: list[Path]) -> list[Path]:
    """``debs`` plus the cached .debs of their dependencies that this host does not have installed.

    Why: the container overlays the host, whose release decides what is missing (Debian 13's
    unattended-upgrades needs lsb-release, its libnotify4 libgdk-pixbuf-2.0-0); tests/run.sh
    downloads exactly those, and dpkg -i needs them in the same run.
    """
    chosen = {_run([DPKG_DEB, "-f", str(d), "Package"]).strip(): d for d in debs}
    todo = list(debs)
    while todo:
        depends = _run([DPKG_DEB, "-f", str(todo.pop()), "Pre-Depends", "Depends"])
        for name in re.findall(r"(?:^|[,|:]\s*)([a-z0-9][a-z0-9+.-]+)", depends, re.MULTILINE):
            cached = sorted(CACHE.glob(f"{name}_*.deb"))
            if name in chosen or not cached or name in _installed():
                continue
            chosen[name] = cached[-1]
            todo.append(cached[-1])
    return list(chosen.values())


@functools.cache
def _installed() -> frozenset[str]:
    """The packages installed on this host (their names, without architecture)."""
    out = _run([DPKG_QUERY, "-W", "-f=${Package} ${db:Status-Abbrev}\n"])
    return frozenset(line.split()[0] for line in out.splitlines() if line.split()[1:2] == ["ii"])


def compile_jar(sources: Mapping[str, str], out: Path, *, class_path: Sequence[Path] = (),
                main: str | None = None, manifest_class_path: str | None = None) -> Path:
    """Compile Java ``sources`` (class name -> source) into the jar ``out``.

    ``class_path`` are jars compiled against; ``main`` and ``manifest_class_path`` go into the
    manifest, so that ``java -jar out`` runs and finds its libraries next to it, as Debian's do.
    """
    build = out.with_name(out.name + ".build")
    (build / "classes").mkdir(parents=True, exist_ok=True)
    for name, text in sources.items():
        (build / f"{name}.java").write_text(text, encoding="utf-8")
    cp = ["-cp", ":".join(str(j) for j in class_path)] if class_path else []
    _run([JAVAC, "-Werror", "--release", "17", *cp, "-d", str(build / "classes"),
          *(str(build / f"{n}.java") for n in sources)])
    manifest = build / "manifest.txt"
    manifest.write_text("".join(f"{k}: {v}\n" for k, v in (("Main-Class", main), ("Class-Path", manifest_class_path))
                                if v), encoding="utf-8")
    _run([JAR, "--create", "--file", str(out), "--manifest", str(manifest), "-C", str(build / "classes"), "."])
    return out


def _elf_is_program(data: bytes) -> bool:
    """True for an ELF executable (ET_EXEC, or ET_DYN with PT_INTERP), False for a shared library.

    Why: Debian installs programs 0755 but shared libraries 0644 (Policy 10.2).
    """
    if len(data) < 64 or data[4] not in (1, 2) or data[5] not in (1, 2):
        return False
    is64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    (e_type,) = struct.unpack_from(end + "H", data, 16)
    if e_type == 2:  # ET_EXEC
        return True
    if e_type != 3:  # not ET_DYN: object files, core files
        return False
    if is64:
        (phoff,) = struct.unpack_from(end + "Q", data, 32)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 54)
    else:
        (phoff,) = struct.unpack_from(end + "I", data, 28)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 42)
    for i in range(phnum):
        off = phoff + i * phentsize
        if off + 4 > len(data):
            break
        (p_type,) = struct.unpack_from(end + "I", data, off)
        if p_type == 3:  # PT_INTERP
            return True
    return False


def default_mode(data: bytes) -> int:
    """0755 for scripts (``#!``) and ELF programs, 0644 for everything else, libraries included."""
    if data.startswith(b"#!"):
        return 0o755
    if data.startswith(b"\x7fELF"):
        return 0o755 if _elf_is_program(data) else 0o644
    return 0o644


def _check_field(key: str, value: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", key) or "\n" in value or not value.strip():
        raise ValueError(f"bad control field {key!r}: {value!r}")


def build_deb(
    outdir: Path,
    name: str,
    version: str,
    files: Mapping[str, bytes | Path],
    *,
    depends: str = "",
    arch: str | None = None,
    maintscripts: Mapping[str, str] = {},  # read-only default, never mutated
    extra_control: Mapping[str, str] = {},
    modes: Mapping[str, int] = {},
) -> Path:
    """Build ``outdir/NAME_VERSION_ARCH.deb`` holding ``files`` (absolute install path -> content).

    Content is bytes or a Path to copy. Modes follow :func:`default_mode` unless ``modes`` overrides a
    path. Files under ``/etc`` become conffiles (as debhelper does). ``maintscripts`` maps
    preinst/postinst/prerm/postrm/config (mode 0755) or triggers/shlibs/templates (0644) to their text.
    Owner root:root (``--root-owner-group``), mtimes fixed, so builds are reproducible.
    """
    if not _NAME_RE.match(name):
        raise ValueError(f"bad package name {name!r}")
    if not _VERSION_RE.match(version):
        raise ValueError(f"bad version {version!r} (no epochs, no spaces)")
    arch = arch or host_arch()
    fields: dict[str, str] = {
        "Package": name,
        "Version": version,
        "Architecture": arch,
        "Maintainer": "restartctl test suite <root@localhost>",
        "Section": "misc",
        "Priority": "optional",
    }
    if depends:
        fields["Depends"] = depends
    for key, value in extra_control.items():
        _check_field(key, value)
        fields[key] = value
    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / f"{name}_{version}_{arch}.deb"
    with tempfile.TemporaryDirectory(prefix=f".build-{name}-", dir=outdir) as tmp:
        root = Path(tmp) / "root"
        control_dir = root / "DEBIAN"
        control_dir.mkdir(parents=True)
        conffiles: list[str] = []
        size = 0
        for path, content in files.items():
            rel = path.lstrip("/")
            if not path.startswith("/") or not rel or ".." in rel.split("/"):
                raise ValueError(f"install path must be absolute and normal: {path!r}")
            data = content.read_bytes() if isinstance(content, Path) else content
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            os.chmod(dest, modes.get(path, default_mode(data)))
            size += len(data)
            if path.startswith("/etc/"):
                conffiles.append(path)
        fields["Installed-Size"] = str(max(1, (size + 1023) // 1024))
        control = "".join(f"{k}: {v}\n" for k, v in fields.items())
        control += f"Description: restartctl test package {name}\n"
        control += " Built at test time by tests/support/debs.py; install only in a container.\n"
        (control_dir / "control").write_text(control, encoding="utf-8")
        if conffiles and "conffiles" not in maintscripts:
            (control_dir / "conffiles").write_text("".join(f"{c}\n" for c in conffiles))
        for script, text in maintscripts.items():
            if script not in _CONTROL_SCRIPTS | _CONTROL_DATA:
                raise ValueError(f"unknown control member {script!r}")
            member = control_dir / script
            member.write_text(text, encoding="utf-8")
            os.chmod(member, 0o755 if script in _CONTROL_SCRIPTS else 0o644)
        for dirpath, dirnames, filenames in os.walk(root):
            os.chmod(dirpath, _DIR_MODE)
            for entry in dirnames + filenames:
                os.utime(os.path.join(dirpath, entry), (FIXED_MTIME, FIXED_MTIME))
        os.utime(root, (FIXED_MTIME, FIXED_MTIME))
        _run([DPKG_DEB, "--root-owner-group", "-Zgzip", "-z1", "--build", str(root), str(out)])
    return out


# ---------------------------------------------------------------------------------------------
# The demo package set used by scenario tests.

_LOOP_C = r"""
#include <signal.h>
#include <stdio.h>
#include <string.h>

%(decl)s

static volatile sig_atomic_t stop_requested;

static void on_term(int sig) { (void)sig; stop_requested = 1; }

/* Never exits on its own; SIGTERM/SIGINT make it exit 0. sigsuspend() avoids the lost-wakeup race. */
int main(void) {
    struct sigaction sa;
    sigset_t block, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, &old);
    printf("%%s %%s%(fmt)s\n", "%(prog)s", "%(version)s"%(args)s);
    fflush(stdout);
    while (!stop_requested)
        sigsuspend(&old);
    return 0;
}
"""

_LIB_C = r"""
const char *%(func)s(void) { return "%(version)s"; }
"""

# No start limit: tests restart it many times within systemd's ten seconds (faster machines, more often),
# and the limit is not what any of them tests.
DEMOD_UNIT = """\
[Unit]
Description=restartctl test daemon (rctl-demod)
StartLimitIntervalSec=0

[Service]
Type=simple
ExecStart=/usr/sbin/rctl-demod

[Install]
WantedBy=multi-user.target
"""

DEMOD_INIT = """\
#!/bin/sh
### BEGIN INIT INFO
# Provides:          rctl-demod
# Required-Start:    $remote_fs
# Required-Stop:     $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: restartctl test daemon
### END INIT INFO
# Matches by pidfile + process name, never by --exec: after an upgrade /proc/PID/exe is "(deleted)".
PATH=/usr/sbin:/usr/bin:/sbin:/bin
DAEMON=/usr/sbin/rctl-demod
PIDFILE=/run/rctl-demod.pid
case "$1" in
start)
    start-stop-daemon --start --quiet --oknodo --background --make-pidfile \\
        --pidfile "$PIDFILE" --name rctl-demod --startas "$DAEMON"
    ;;
stop)
    start-stop-daemon --stop --quiet --oknodo --retry TERM/10/KILL/5 --remove-pidfile \\
        --pidfile "$PIDFILE" --name rctl-demod
    ;;
restart|force-reload)
    "$0" stop && "$0" start
    ;;
status)
    start-stop-daemon --status --pidfile "$PIDFILE" --name rctl-demod
    exit $?
    ;;
*)
    echo "Usage: $0 {start|stop|restart|force-reload|status}" >&2
    exit 3
    ;;
esac
"""

LDCONFIG_TRIGGER = "activate-noawait ldconfig\n"

DEMO_NAMES = (
    "rctl-libdemo1",
    "rctl-demod",
    "rctl-sleeper",
    "rctl-oldlib1",
    "rctl-olduser",
    "rctl-failpost",
)

_demo_cache: dict[tuple[str, Path], dict[str, Path]] = {}


def _loop_source(prog: str, version: str, lib_func: str | None) -> str:
    if lib_func:
        decl, fmt, args = f"const char *{lib_func}(void);", " library %s", f", {lib_func}()"
    else:
        decl, fmt, args = "", "", ""
    return _LOOP_C % {"decl": decl, "fmt": fmt, "args": args, "prog": prog, "version": version}


def demo_packages(outdir: Path, version: str) -> dict[str, Path]:
    """Build the demo set for ``version`` into ``outdir``; return package name -> .deb path.

    Packages (each version's files differ, so an upgrade replaces every inode):

    - ``rctl-libdemo1`` (Multi-Arch: same): ``/usr/lib/<multiarch>/librctldemo.so.1`` exporting
      ``const char *rctl_demo_version(void)``.
    - ``rctl-demod``: ``/usr/sbin/rctl-demod`` (linked to librctldemo.so.1, runs until SIGTERM),
      ``/lib/systemd/system/rctl-demod.service`` and ``/etc/init.d/rctl-demod``; no maintainer
      scripts, so nothing starts it. Depends on rctl-libdemo1 (= version).
    - ``rctl-sleeper``: standalone ``/usr/bin/rctl-sleeper``, runs until SIGTERM.
    - ``rctl-oldlib1``: ``librctlold.so.1`` recorded as ``/lib/<multiarch>/...`` in its .list
      (merged-/usr alias; maps show ``/usr/lib/...``). Exports ``rctl_old_version()``.
    - ``rctl-olduser``: ``/usr/bin/rctl-olduser`` linked to librctlold.so.1, runs until SIGTERM.
      A separate package so a test can upgrade the library alone.
    - ``rctl-failpost`` (Architecture: all): its postinst exits 1 in version 2.0 only.

    Cached per (version, outdir) for the life of the process (one pytest session).
    """
    outdir = outdir.resolve()
    key = (version, outdir)
    cached = _demo_cache.get(key)
    if cached and all(p.is_file() for p in cached.values()):
        return dict(cached)
    if not _VERSION_RE.match(version):
        raise ValueError(f"bad version {version!r}")
    triplet = multiarch()
    libdir = f"/usr/lib/{triplet}"
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".compile-{version}-", dir=outdir) as tmp:
        build = Path(tmp)
        with ThreadPoolExecutor(max_workers=4) as pool:
            f_libdemo = pool.submit(
                compile_c,
                _LIB_C % {"func": "rctl_demo_version", "version": version},
                build / "librctldemo.so.1",
                shared=True,
                soname="librctldemo.so.1",
            )
            f_oldlib = pool.submit(
                compile_c,
                _LIB_C % {"func": "rctl_old_version", "version": version},
                build / "librctlold.so.1",
                shared=True,
                soname="librctlold.so.1",
            )
            f_sleeper = pool.submit(compile_c, _loop_source("rctl-sleeper", version, None), build / "rctl-sleeper")
            libdemo = f_libdemo.result()
            oldlib = f_oldlib.result()
            f_demod = pool.submit(
                compile_c,
                _loop_source("rctl-demod", version, "rctl_demo_version"),
                build / "rctl-demod",
                libs=[libdemo],
            )
            f_olduser = pool.submit(
                compile_c,
                _loop_source("rctl-olduser", version, "rctl_old_version"),
                build / "rctl-olduser",
                libs=[oldlib],
            )
            demod, sleeper, olduser = f_demod.result(), f_sleeper.result(), f_olduser.result()
            failpost_script = (
                "#!/bin/sh\necho 'rctl-failpost: postinst fails on purpose' >&2\nexit 1\n"
                if version == "2.0"
                else "#!/bin/sh\nexit 0\n"
            )
            jobs = {
                "rctl-libdemo1": pool.submit(
                    build_deb,
                    outdir,
                    "rctl-libdemo1",
                    version,
                    {f"{libdir}/librctldemo.so.1": libdemo},
                    extra_control={"Multi-Arch": "same"},
                    maintscripts={"triggers": LDCONFIG_TRIGGER},
                ),
                "rctl-demod": pool.submit(
                    build_deb,
                    outdir,
                    "rctl-demod",
                    version,
                    {
                        "/usr/sbin/rctl-demod": demod,
                        "/lib/systemd/system/rctl-demod.service": DEMOD_UNIT.encode(),
                        "/etc/init.d/rctl-demod": DEMOD_INIT.encode(),
                    },
                    depends=f"rctl-libdemo1 (= {version})",
                ),
                "rctl-sleeper": pool.submit(
                    build_deb, outdir, "rctl-sleeper", version, {"/usr/bin/rctl-sleeper": sleeper}
                ),
                "rctl-oldlib1": pool.submit(
                    build_deb,
                    outdir,
                    "rctl-oldlib1",
                    version,
                    {f"/lib/{triplet}/librctlold.so.1": oldlib},
                    maintscripts={"triggers": LDCONFIG_TRIGGER},
                ),
                "rctl-olduser": pool.submit(
                    build_deb,
                    outdir,
                    "rctl-olduser",
                    version,
                    {"/usr/bin/rctl-olduser": olduser},
                    depends="rctl-oldlib1",
                ),
                "rctl-failpost": pool.submit(
                    build_deb,
                    outdir,
                    "rctl-failpost",
                    version,
                    {"/usr/share/rctl-failpost/version": f"{version}\n".encode()},
                    arch="all",
                    maintscripts={"postinst": failpost_script},
                ),
            }
            result = {name: fut.result() for name, fut in jobs.items()}
    _demo_cache[key] = result
    return dict(result)


def clear_cache() -> None:
    """Forget cached demo builds (why: a test that deletes outdir must not get stale paths)."""
    _demo_cache.clear()


__all__ = [
    "DEMO_NAMES",
    "FIXED_MTIME",
    "build_deb",
    "clear_cache",
    "compile_c",
    "default_mode",
    "demo_packages",
    "host_arch",
    "multiarch",
]
