"""Real unprivileged processes try to make root's restartctl misbehave, inside a systemd container.

Why real: needrestart's root-code-execution bugs (CVE-2022-30688, CVE-2024-48990/48991/48992) all
came from trusting what a user's process shows: its exe path, its environment, a binary swapped
between two reads.  Here a user "mallory" (created inside the throw-away container, never on the
host) runs:

- binaries and scripts named and placed like interpreters and daemons (python3, perl, node, sshd,
  systemd-logind in /home and /tmp), real interpreters with hostile PYTHONPATH / PERL5LIB / PERL5OPT /
  RUBYLIB / NODE_OPTIONS / LD_PRELOAD / BASH_ENV / PATH and a hostile working directory;
- processes in cgroups forged below her delegated user@UID.service (made with systemd-run --user and
  with plain mkdir): sshd.service, session-1.scope, init.scope, user@0.service, machine-*.scope, and
  names with shell syntax, escapes, non-UTF-8 bytes;
- mappings of files with hostile names (newlines, escapes, non-UTF-8, " (deleted)", ~4 KiB paths,
  symlinks into other users' files), and processes that fork, exec and exit while being scanned.

Every payload is a canary: if anything runs it other than mallory with the magic word (root
running it, or anyone running it without the word), it creates /srv/rctl/canary/CANARY-*.
restartctl runs as root inside the container, as the hooks would run it, under a Python audit hook
that records every process start and every file opened for writing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from restart.units import valid_unit_name
from tests.support.container import Container
from tests.support.debs import compile_c, multiarch

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parent.parent
LIB = f"/usr/lib/{multiarch()}/librctldemo.so.1"
DEMO = ("rctl-libdemo1", "rctl-demod")
USER = "mallory"
HOME = f"/home/{USER}"
CHURNED = f"{HOME}/churned"  # made by the churn process after its first fork
MAGIC = "RCTL-HOSTILE-MAGIC"
CANARY = "/srv/rctl/canary"
LAUNCH = f"{HOME}/bin/launch"
SPAWN_TIMEOUT = 20.0

HOSTILE_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

/* A user's program. It runs (waits forever) only for its owner and only with the magic word;
   anyone else running it - root above all - makes it leave a canary file and exit. */
#define MAGIC "RCTL-HOSTILE-MAGIC"

static void canary(const char *why) {
    char path[256];
    snprintf(path, sizeof path, "/srv/rctl/canary/CANARY-%s-uid%d-pid%d", why, (int)geteuid(), (int)getpid());
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0)
        close(fd);
}

static int unhex(const char *hex, char *out, size_t size) {
    size_t n = 0;
    unsigned v;
    while (hex[0] && hex[1] && n + 1 < size) {
        if (sscanf(hex, "%2x", &v) != 1)
            return -1;
        out[n++] = (char)v;
        hex += 2;
    }
    out[n] = 0;
    return (int)n;
}

static volatile sig_atomic_t churning;
static void on_usr1(int sig) { (void)sig; churning = 1; }
static void on_usr2(int sig) { (void)sig; churning = 0; }

/* SIGUSR1: fork children that exit at once, exec themselves, or orphan a grandchild; SIGUSR2: stop.
   The signals stay blocked but between forks and in sigsuspend(), so none is lost between the flag's
   check and the wait; after its first fork it creates `mark`, so a test knows the race is on. */
static void churn(const char *mark) {
    unsigned i = 0;
    sigset_t block, open_mask;
    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, on_usr2);
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigaddset(&block, SIGUSR2);
    sigprocmask(SIG_BLOCK, &block, &open_mask);
    for (;;) {
        if (!churning) {
            sigsuspend(&open_mask);
            continue;
        }
        pid_t pid = fork();
        if (pid == 0) {
            sigprocmask(SIG_SETMASK, &open_mask, NULL);
            if (i % 3 == 0)
                _exit(0);
            if (i % 3 == 1) {
                execl("/proc/self/exe", "sshd", MAGIC, "exit", (char *)NULL);
                _exit(1);
            }
            if (fork() == 0) {
                usleep(3000);
                _exit(0);
            }
            _exit(0);
        }
        if (pid > 0) {
            waitpid(pid, NULL, 0);
            if (mark) {
                close(open(mark, O_WRONLY | O_CREAT, 0644));
                mark = NULL;
            }
        }
        i++;
        sigprocmask(SIG_SETMASK, &open_mask, NULL);  /* a pending SIGUSR2 arrives here */
        sigprocmask(SIG_BLOCK, &block, NULL);
        usleep(300);
    }
}

int main(int argc, char **argv) {
    char buf[8192];
    int do_churn = 0;
    const char *mark = NULL;
    if (argc < 2 || strcmp(argv[1], MAGIC) != 0 || geteuid() == 0) {
        canary("exec");
        return 0;
    }
    for (int i = 2; i < argc; i++) {
        if (!strncmp(argv[i], "hexlib=", 7) && unhex(argv[i] + 7, buf, sizeof buf) > 0) {
            if (!dlopen(buf, RTLD_NOW)) {
                fprintf(stderr, "dlopen: %s\n", dlerror());
                return 3;
            }
        } else if (!strncmp(argv[i], "hexcomm=", 8) && unhex(argv[i] + 8, buf, sizeof buf) > 0) {
            prctl(PR_SET_NAME, buf, 0, 0, 0);
        } else if (!strcmp(argv[i], "exit")) {
            return 0;
        } else if (!strcmp(argv[i], "churn")) {
            do_churn = 1;
        } else if (!strncmp(argv[i], "mark=", 5)) {
            mark = argv[i] + 5;
        } /* anything else is hostile noise on the command line */
    }
    if (do_churn)
        churn(mark);
    for (;;)
        pause();
}
"""

# LD_PRELOADed into every hostile process: its constructor sees argv before main().
CANARY_LIB_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

__attribute__((constructor)) static void rctl_canary(int argc, char **argv, char **envp) {
    int magic = 0;
    (void)envp;
    for (int i = 1; i < argc; i++)
        if (argv[i] && !strcmp(argv[i], "RCTL-HOSTILE-MAGIC"))
            magic = 1;
    if (magic && geteuid() != 0)
        return;
    char path[256];
    snprintf(path, sizeof path, "/srv/rctl/canary/CANARY-preload-uid%d-pid%d", (int)geteuid(), (int)getpid());
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0)
        close(fd);
}
"""

PY_CANARY = (f"import os, sys\nif os.geteuid() == 0 or {MAGIC!r} not in sys.argv:\n"
             f"    open(f'{CANARY}/CANARY-python-{{__name__}}-uid{{os.geteuid()}}-pid{{os.getpid()}}', 'w').close()\n")
EVIL_PY = PY_CANARY + "    sys.exit(0)\nimport time\nwhile True:\n    time.sleep(3600)\n"
PERL_CANARY = (f'package {{name}};\nif ($> == 0 || !grep {{ $_ eq "{MAGIC}" }} @ARGV) '
               f'{{ open(my $f, ">", "{CANARY}/CANARY-perl-{{name}}-$>-$$"); }}\n'
               'sub import {}\nsub unimport {}\n1;\n')
RUBY_CANARY = (f'if Process.euid == 0 || !ARGV.include?("{MAGIC}") then '
               f'File.write("{CANARY}/CANARY-ruby-#{{Process.euid}}-#{{$$}}", "") end\n')
NODE_CANARY = (f'if (process.geteuid() === 0 || !process.argv.includes("{MAGIC}")) '
               f'require("fs").writeFileSync(`{CANARY}/CANARY-node-${{process.geteuid()}}-${{process.pid}}`, "");\n')
SH_CANARY = f': > "{CANARY}/CANARY-shenv-$$"\n'
SCRIPT = f"""#!/bin/sh
# A user's script named like an interpreter: blocks forever for its owner with the magic word.
if [ "${{1-}}" != {MAGIC} ] || [ -O /srv/rctl ]; then
    : > "{CANARY}/CANARY-script-$$"; exit 0
fi
exec 3<> {HOME}/run/fifo
read -r _ <&3
"""

HOSTILE_ENV = {
    # The package library last: mapped last, at the lowest address, so early in maps.
    "LD_PRELOAD": f"{HOME}/lib/libcanary.so {LIB}",
    "LD_LIBRARY_PATH": f"{HOME}/lib",
    "PYTHONPATH": f"{HOME}/pylib",
    "PYTHONSTARTUP": f"{HOME}/pylib/startup.py",
    "PYTHONUSERBASE": f"{HOME}/.local",
    "PERL5LIB": f"{HOME}/perllib",
    "PERLLIB": f"{HOME}/perllib",
    "PERL5OPT": "-Mcanary",
    "RUBYLIB": f"{HOME}/rubylib",
    "RUBYOPT": "-rcanary",
    "NODE_OPTIONS": f"--require {HOME}/canary.js",
    "NODE_PATH": f"{HOME}/node_modules",
    "BASH_ENV": f"{HOME}/canary.sh",
    "ENV": f"{HOME}/canary.sh",
    "PATH": f"{HOME}/bin:/tmp:/usr/bin:/bin",
    "PS4": f"$(touch {CANARY}/CANARY-ps4)",
    "RCTL_BAIT": f"$(touch {CANARY}/CANARY-subst); `touch {CANARY}/CANARY-backtick`",
}
# Modules restartctl imports lazily, shadowed with canaries in the hostile PYTHONPATH and cwd.
SHADOWED = ("json", "tomllib", "fnmatch", "shlex", "argparse", "sitecustomize", "usercustomize", "startup")


def _launcher() -> str:
    env = " ".join(_sh_quote(f"{k}={v}") for k, v in HOSTILE_ENV.items())
    return f"""#!/bin/sh
# launch LABEL BASE REL -- PROGRAM ARGS...: join cgroup BASE/REL (REL "-": stay; octal-escaped),
# record our PID, then become PROGRAM in the hostile environment and working directory.
set -eu
label=$1; base=$2; rel=$3; shift 4
if [ "$rel" != - ]; then
    dir="$base/$(printf '%b' "$rel")"
    mkdir -p -- "$dir"
    echo $$ > "$dir/cgroup.procs"
fi
cd {HOME}/cwd
echo $$ > {HOME}/run/"$label".pid.new
mv -f {HOME}/run/"$label".pid.new {HOME}/run/"$label".pid
exec /usr/bin/env -- {env} "$@"
"""


def _sh_quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def octal(raw: bytes) -> str:
    """A byte string for ``printf '%b'``: anything but [A-Za-z0-9._/-] as \\0NNN."""
    keep = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._/-")
    return "".join(chr(b) if b in keep else f"\\0{b:03o}" for b in raw)


# ---------------------------------------------------------------------------------- the host

class Tools(NamedTuple):
    hostile: Path
    canary_lib: Path


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    """The hostile program and the canary library, compiled once on the host."""
    out = tmp_path_factory.mktemp("rctl-hostile")
    return Tools(compile_c(HOSTILE_C, out / "hostile"),
                 compile_c(CANARY_LIB_C, out / "libcanary.so", shared=True))


class Mallory:
    """The hostile user inside one container, and every process she started (by container PID)."""

    def __init__(self, c: Container, tools: Tools) -> None:
        self.c = c
        self.uid = c.create_user(USER)
        self.gid = self.uid
        self.pids: dict[str, int] = {}
        self.forged: dict[str, bytes] = {}  # label -> the cgroup (below user@UID.service) it was moved to
        self.names: dict[str, bytes] = {}   # label -> the hostile file name it maps
        self.big: set[str] = set()          # labels of processes with large maps (past a page of maps text)
        self.n = 0
        unified = c.exec(["test", "-d", "/sys/fs/cgroup/unified/user.slice"]).returncode == 0
        mount = "/sys/fs/cgroup/unified" if unified else "/sys/fs/cgroup"
        self.cgroup = f"/user.slice/user-{self.uid}.slice/user@{self.uid}.service"
        self.cgroup_dir = mount + self.cgroup
        self.env = {"XDG_RUNTIME_DIR": f"/run/user/{self.uid}"}
        c.check(["install", "-d", "-m", "1777", CANARY])
        files: dict[str, tuple[bytes, int]] = {
            "bin/launch": (_launcher().encode(), 0o755),
            "lib/libcanary.so": (tools.canary_lib.read_bytes(), 0o755),
            "canary.js": (NODE_CANARY.encode(), 0o644),
            "canary.sh": (SH_CANARY.encode(), 0o644),
            "rubylib/canary.rb": (RUBY_CANARY.encode(), 0o644),
            "rubylib/rubygems.rb": (RUBY_CANARY.encode(), 0o644),
            **{f"perllib/{m}.pm": (PERL_CANARY.replace("{name}", m).encode(), 0o644)
               for m in ("canary", "strict", "warnings")},
            **{f"pylib/{m}.py": (PY_CANARY.encode(), 0o644) for m in SHADOWED},
            **{f"cwd/{m}.py": (PY_CANARY.encode(), 0o644) for m in SHADOWED},
            "cwd/restart/__init__.py": (PY_CANARY.encode(), 0o644),
            "cwd/restart/__main__.py": (PY_CANARY.encode(), 0o644),
            "evil.py": (EVIL_PY.encode(), 0o644),
        }
        for name, (data, mode) in files.items():
            self.put(f"{HOME}/{name}", data, mode)
        c.check(["install", "-d", "-o", USER, "-g", USER, f"{HOME}/run"])
        c.check(["runuser", "-u", USER, "--", "mkfifo", f"{HOME}/run/fifo"])
        # Lookalikes: the hostile program (or a shell script) named and placed like interpreters and daemons.
        for path in LOOKALIKES:
            self.put(path, tools.hostile.read_bytes(), 0o755)
        for path in SCRIPTS:
            self.put(path, SCRIPT.encode(), 0o755)
        self.put(f"{HOME}/bin/python3-copy", Path("/usr/bin/python3").resolve().read_bytes(), 0o755)
        self.put(f"{HOME}/bin/swapme", tools.hostile.read_bytes(), 0o755)
        self.put("/tmp/evil.py", EVIL_PY.encode(), 0o644)

    def host(self, path: str) -> Path:
        return self.c.root_path(path)

    def put(self, path: str, data: bytes, mode: int) -> None:
        """A file of mallory's (written from the host side: names may hold any byte)."""
        target = self.host(path)
        made = []
        parent = target.parent
        while not parent.exists():
            made.append(parent)
            parent = parent.parent
        for d in reversed(made):
            d.mkdir()
            os.chown(d, self.uid, self.gid)
        tmp = target.with_name(target.name[:200] + ".new")
        tmp.write_bytes(data)
        os.chmod(tmp, mode)
        os.chown(tmp, self.uid, self.gid)
        os.rename(tmp, target)

    def start(self, label: str, argv: list[str], *, rel: bytes | None = None, unit: str | None = None,
              slice_: str | None = None, scope: bool = False, expect: tuple[bytes, ...] = ()) -> int:
        """Start ``argv`` as mallory in her manager (as ``unit``; then moved to cgroup ``rel`` if given)."""
        self.n += 1
        unit = unit or f"rctl-launch-{self.n}.{'scope' if scope else 'service'}"
        run = ["runuser", "-u", USER, "--", "systemd-run", "--user", "--quiet", f"--unit={unit}"]
        run += [f"--slice={slice_}"] if slice_ else []
        run += ["--scope"] if scope else []
        run += ["--", LAUNCH, label, self.cgroup_dir, "-" if rel is None else octal(rel), "--", *argv]
        if scope:
            self.c.spawn(run, env=self.env)
        else:
            self.c.check(run, env=self.env)
        pid = self.wait(label, (LIB.encode(), *expect))
        self.pids[label] = pid
        if rel is not None:
            self.forged[label] = rel
        return pid

    def start_plain(self, label: str, argv: list[str]) -> int:
        """Start ``argv`` as a unit of hers without the hostile environment (helpers like a copy loop)."""
        unit = f"rctl-plain-{label}.service"
        self.c.check(["runuser", "-u", USER, "--", "systemd-run", "--user", "--quiet", f"--unit={unit}", "--",
                      *argv], env=self.env)
        pid = self.c.main_pid(unit, user=USER)
        self.pids[label] = pid
        return pid

    def wait(self, label: str, expect: tuple[bytes, ...]) -> int:
        pidfile = self.host(f"{HOME}/run/{label}.pid")
        deadline = time.monotonic() + SPAWN_TIMEOUT
        while time.monotonic() < deadline:
            try:
                pid = int(pidfile.read_text())
            except (OSError, ValueError):
                pid = 0
            maps = _maps_of(self.c, pid) if pid else b""
            if maps and all(e in maps for e in expect):
                return pid
            time.sleep(0.02)
        raise AssertionError(f"{label}: never mapped {expect}; canaries: {canaries(self.c)}")

    def kill_all(self) -> None:
        """Stop everything she runs, by PID (inside the container: root's kill)."""
        pids = [str(p) for p in self.pids.values()]
        if pids:
            self.c.exec(["kill", "-KILL", *pids])
        self.pids.clear()


LOOKALIKES = [f"{HOME}/bin/python3", f"{HOME}/usr/bin/python3.11", "/tmp/perl", "/tmp/sshd", f"{HOME}/sbin/sshd",
              f"{HOME}/.local/bin/node", f"{HOME}/bin/ruby", f"{HOME}/usr/lib/jvm/bin/java", f"{HOME}/bin/systemd",
              "/tmp/systemd-logind", f"{HOME}/bin/churn"]
SCRIPTS = ["/tmp/python", f"{HOME}/bin/perl5.36"]
NOISE = [f"$(touch {CANARY}/CANARY-cmdline)", "; reboot", "`id`", "/usr/sbin/sshd -D", "--user"]

# Forged cgroups below user@UID.service (made with mkdir), and the unit restartctl must report for each.
FORGED: dict[bytes, tuple[str, str | None]] = {
    # In her manager's own cgroup, but not the manager (not started by PID 1): hers, named after her
    # user@UID.service (as "(sd-pam)" is), never acted on.
    b"init.scope": ("user", "user@{uid}.service"),
    b"app.slice/init.scope": ("user", "init.scope"),
    b"system.slice/sshd.service": ("user", "sshd.service"),
    b"user.slice/user-0.slice/session-1.scope": ("user", "session-1.scope"),
    b"init.scope/dbus.service": ("user", "init.scope"),
    b"app.slice/user@0.service": ("user", "user@0.service"),
    b"machine.slice/machine-prod.scope": ("user", "machine-prod.scope"),
    b"machine.slice/systemd-nspawn@prod.service/payload": ("user", "systemd-nspawn@prod.service"),
    b"extra.slice": ("user", None),
    b"app.slice/$(reboot).service": ("user", "$(reboot).service"),
    b"app.slice/;reboot;.service": ("user", ";reboot;.service"),
    b"app.slice/a b.service": ("user", "a b.service"),
    b"app.slice/x\x1b]0;pwned\x07\x1b[2J.service": ("user", "x\x1b]0;pwned\x07\x1b[2J.service"),
    b"app.slice/\xff\xfe.service": ("user", "\\xff\\xfe.service"),
    b"app.slice/\xe2\x80\xaegnp.service": ("user", "\u202egnp.service"),
    b"app.slice/--help.service": ("user", "--help.service"),
    b"app.slice/-M.service": ("user", "-M.service"),
    b"app.slice/x.service/y.service": ("user", "x.service"),
    b"app.slice/" + b"l" * 240 + b".service": ("user", "l" * 240 + ".service"),
}
# Transient units made through her real user manager: (unit, slice, scope) -> reported name.
TRANSIENT: list[tuple[str, str | None, bool]] = [
    ("sshd.service", None, False), ("user@0.service", None, False), ("ssh.service", "system.slice", False),
    ("systemd-nspawn@prod.service", "machine.slice", False), ("rctl-demod.service", None, False),
    ("session-1.scope", "user-0.slice", True), ("machine-web.scope", "machine.slice", True),
]

# Files with hostile names that a process of hers maps (copies of the demo library).
NAMES: list[bytes] = [
    b"with space/lib x.so", b"new\nline.so", b"ctrl\x01\x07\x1b[2J\x1b]0;pwned\x07.so", b"\xff\xfe\x80.so",
    b"twice.so (deleted) (deleted)", b"$(touch x).so", b"`id`;reboot.so", b"\xe2\x80\xaegnp.so", b"-rf.so",
    b"/".join([b"p" * 200] * 18) + b"/deep.so",  # a path of ~3.7 KiB, near PATH_MAX with the prefix
    b"victim.so",  # becomes a symlink into alice's home
]
LITERAL_DELETED = b"lit.so (deleted)"  # really named so, never replaced: must NOT be reported
HOSTILE_COMM = b"x\x1b]0;pwn\x07"  # a process name with a terminal escape (set with prctl)
NAMES_DIR = f"{HOME}/names"


class HostileHost(NamedTuple):
    c: Container
    mallory: Mallory
    daemon: int  # root's rctl-demod.service


@pytest.fixture(scope="module")
def hostile(systemd_container: Container, demo_debs: dict[str, dict[str, Path]], tools: Tools) -> Iterator[HostileHost]:
    """Demo v1 installed; root's rctl-demod.service and all of mallory's processes started; then v2 installed."""
    c = systemd_container
    c.install_debs([demo_debs["1.0"][n] for n in DEMO])
    c.systemctl("start", "rctl-demod.service")
    c.wait_active("rctl-demod.service")
    m = Mallory(c, tools)
    c.check(["useradd", "--create-home", "--user-group", "--", "alice"])
    c.check(["runuser", "-u", "alice", "--", "mkfifo", "-m", "600", "/home/alice/fifo"])
    try:
        for i, path in enumerate(LOOKALIKES[:-1]):
            m.start(f"look-{i}", [path, MAGIC, *NOISE])
        for i, path in enumerate(SCRIPTS):
            m.start(f"script-{i}", ["/bin/sh", path, MAGIC])
        m.start("real-python", ["/usr/bin/python3", "/tmp/evil.py", MAGIC])
        m.start("copied-python", [f"{HOME}/bin/python3-copy", "/tmp/evil.py", MAGIC])
        m.start("real-perl", ["/usr/bin/perl", "-e", "sleep 1000000", MAGIC])
        m.start("real-node", ["/usr/bin/node", "-e", "setInterval(() => {}, 1 << 30)", MAGIC])
        m.big |= {"real-python", "copied-python", "real-perl", "real-node"}
        # Many libraries loaded after the package library: its mappings come after the first page of maps.
        many = []
        for i in range(40):
            m.put(f"{HOME}/many/lib{i}.so", tools.canary_lib.read_bytes(), 0o644)
            many.append(f"hexlib={f'{HOME}/many/lib{i}.so'.encode().hex()}")
        m.start("many-maps", [f"{HOME}/bin/python3", MAGIC, *many], expect=(f"{HOME}/many/lib39.so".encode(),))
        m.big.add("many-maps")
        for i, rel in enumerate(FORGED):
            m.start(f"forged-{i}", [f"{HOME}/bin/python3", MAGIC], rel=rel)
        for unit, slice_, scope in TRANSIENT:
            m.start(f"unit-{unit}", [f"{HOME}/bin/python3", MAGIC], unit=unit, slice_=slice_, scope=scope)
        m.start("churn", [f"{HOME}/bin/churn", MAGIC, "churn", f"mark={CHURNED}"])
        m.start("swapme", [f"{HOME}/bin/swapme", MAGIC])
        lib = m.host(LIB).read_bytes()
        for i, name in enumerate([*NAMES, LITERAL_DELETED]):  # one process per name: small maps
            raw = NAMES_DIR.encode() + b"/" + name
            m.put(os.fsdecode(raw), lib, 0o644)
            argv = [f"{HOME}/bin/python3", MAGIC, f"hexlib={raw.hex()}", f"hexcomm={HOSTILE_COMM.hex()}"]
            m.start(f"name-{i}", argv, expect=(raw.replace(b"\n", b"\\012"),))
            m.names[f"name-{i}"] = name
            if len(raw) > 1000:
                m.big.add(f"name-{i}")
        daemon = c.main_pid("rctl-demod.service")
        c.install_debs([demo_debs["2.0"][n] for n in DEMO])
        # Her hostile names become stale too: replaced (new inode) or deleted; victim.so a symlink to alice's FIFO.
        for i, name in enumerate(NAMES[:-1]):
            path = f"{NAMES_DIR}/" + os.fsdecode(name)
            if i % 2:
                m.host(path).unlink()
            else:
                m.put(path, lib + b"\0", 0o644)
        victim = m.host(f"{NAMES_DIR}/victim.so")
        victim.unlink()
        victim.symlink_to("/home/alice/fifo")
        yield HostileHost(c, m, daemon)
    finally:
        m.kill_all()


# ---------------------------------------------------------------------------------- running restartctl

AUDIT_PY = r'''
"""Run restartctl under a Python audit hook; record process starts, writes, and imported files."""
import json, os, site, sys, sysconfig
repo, log, *args = sys.argv[1:]
sys.dont_write_bytecode = True
sys.path.insert(0, repo)
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
RUNS = ("os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.fork", "os.forkpty", "subprocess.",
        "pty.spawn", "ctypes.dlopen", "os.startfile")
CHANGES = ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.chmod", "os.chown",
           "os.truncate", "os.utime", "shutil.", "os.chdir", "os.setxattr", "os.removexattr", "os.chroot")
events = []
forks = []
done = False

def hook(event, a):
    if done:
        return
    if event == "os.fork" and (sys._getframe(1).f_globals["__name__"], sys._getframe(1).f_code.co_name) == (
            "restart.processes", "_on_two_cores"):  # (sys._getframe is audited too: asked only here)
        forks.append(os.getpid())  # the scan on two cores (security.md P9): its own fork, which execs nothing
    elif event == "open":
        path, mode, flags = a
        if (isinstance(flags, int) and flags & WRITE) or (isinstance(mode, str) and any(c in mode for c in "wax+")):
            events.append(["write", repr(path)])
    elif event.startswith(RUNS) or event.startswith(CHANGES):
        events.append([event, repr(a)[:300]])

def report():
    global done
    done = True
    modules = {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items())}
    # The interpreter's own, root-owned directories (Debian's site-packages has setuptools' .pth hook).
    allowed = sorted({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")} | set(site.getsitepackages()))
    with open(log, "w") as f:
        json.dump({"events": events, "forks": forks, "modules": modules, "stdlib": allowed}, f)

sys.addaudithook(hook)
from restart import cli, processes  # main(), not run(): run() leaves by os._exit, past any report
processes.PARALLEL_MIN = 2  # every scan here on two cores: hostile names and all through the child's answer
try:
    code = cli.main(args)
finally:
    report()
sys.exit(code)
'''


class Run(NamedTuple):
    code: int
    out: str
    err: str
    audit: dict[str, Any]


_runs = iter(range(1, 1 << 30))


def restartctl(c: Container, *args: str) -> Run:
    """``restartctl ARGS`` as root inside the container, audited; exit 0/1 and an empty stderr required."""
    n = next(_runs)
    c.write_file("/srv/rctl/audit_run.py", AUDIT_PY)
    r = c.exec(["/usr/bin/python3", "-I", "/srv/rctl/audit_run.py", str(REPO), f"/srv/rctl/audit-{n}.json", *args])
    assert r.returncode in (0, 1), f"restartctl {args} exited {r.returncode}:\n{r.stderr}"
    assert r.stderr == "", r.stderr  # no traceback, no warning
    audit: dict[str, Any] = json.loads((c.scratch / f"audit-{n}.json").read_text())
    return Run(r.returncode, r.stdout, r.stderr, audit)


# What a scan may write (security.md E7): its own caches of what dpkg and the kernel say, in its run directory,
# by fsutil's writer (a temporary file made, its mode set, renamed into place), and that directory.
CACHES = ("kernel-state.json", "dpkg-lists.json")
_CACHE_TMP = re.compile(r"'\.(" + "|".join(map(re.escape, CACHES)) + r")\.\d+\.[0-9a-f]{8}\.tmp'")


def not_caches(events: list[list[str]]) -> list[list[str]]:
    """``events`` without the writes of a scan's caches (the mode set right after a cache's temporary
    file is made is its own)."""
    left: list[list[str]] = []
    cache_tmp = None
    for event, arg in events:
        tmp = _CACHE_TMP.fullmatch(arg) if event == "write" else None
        if tmp is not None:
            cache_tmp = tmp.group(1)
            continue
        if event == "os.chmod" and cache_tmp is not None and re.fullmatch(r"\(\d+, 420, -1\)", arg):
            continue
        if event == "os.rename" and cache_tmp is not None and re.fullmatch(
                rf"\('\.{re.escape(cache_tmp)}\.\d+\.[0-9a-f]{{8}}\.tmp', '{re.escape(cache_tmp)}', \d+, \d+\)", arg):
            cache_tmp = None
            continue
        if (event, arg) == ("os.mkdir", "('/run/restartctl', 493, -1)"):
            continue
        cache_tmp = None
        left.append([event, arg])
    return left


def assert_quiet(run: Run) -> None:
    """restartctl started no process (but the scan's own fork: security.md P9), wrote no file but its caches
    (E7), changed no other file system state, imported only ours."""
    assert not_caches(run.audit["events"]) == []
    roots = tuple(r.rstrip("/") + "/" for r in (*run.audit["stdlib"], str(REPO / "restart")))
    foreign = {n: f for n, f in run.audit["modules"].items() if f and n != "__main__" and not f.startswith(roots)}
    assert foreign == {}


def canaries(c: Container) -> list[str]:
    d = c.scratch / "canary"
    return sorted(os.listdir(d)) if d.is_dir() else ["<canary directory missing>"]


def snapshot(c: Container) -> list[str]:
    """What exists in /etc, /var/lib and /run (type, size, mtime, path), minus the harness's own churn and a
    scan's caches (E7: the run directory and the caches in it)."""
    out = c.check(["find", "/etc", "/var/lib", "/run", "-xdev", "-printf", "%y %s %T@ %p\\0"])
    mine = ("/run/restartctl", *(f"/run/restartctl/{name}" for name in CACHES))
    return sorted(e for e in out.split("\0") if e and not e.endswith(" /run/systemd/inaccessible")
                  and e.split(" ", 3)[-1] not in mine)


def assert_terminal_safe(text: str) -> None:
    bad = {c for c in text if c not in "\n " and unicodedata.category(c)[0] in "CZ"}
    assert not bad, sorted(map(ascii, bad))


def her_pids(doc: dict[str, Any], uid: int) -> set[int]:
    return {p["pid"] for p in doc["processes"] + doc.get("unowned", []) if p["uid"] == uid}


def assert_hers_stay_hers(doc: dict[str, Any], uid: int) -> None:
    """Each of her processes is hers; no system command names a unit that holds one of them."""
    mine = her_pids(doc, uid)
    for p in doc["processes"] + doc.get("unowned", []):
        if p["pid"] in mine:
            assert (p["unit"]["kind"], p["unit"]["uid"]) in (("user", uid), ("user-manager", uid)), p
    for a in doc["actions"]:
        for argv in (a["argv"], a["suggested"]):
            if argv is not None:
                assert argv[0] == "systemctl", a
                if "--" in argv:
                    assert all(valid_unit_name(n) for n in argv[argv.index("--") + 1:]), a
        if mine & set(a["pids"]):
            assert (a["kind"], a["uid"]) in (("user", uid), ("user-manager", uid)), a
            for argv in (a["argv"], a["suggested"]):
                assert argv is None or argv[1:4] == ["--user", "-M", f"{uid}@"], a


# ---------------------------------------------------------------------------------- the tests

def test_hostile_processes_are_never_run_trusted_or_acted_on_as_root(hostile: HostileHost) -> None:
    """Why: the core promise: nothing a user's process shows is executed, imported or acted on as root."""
    c, m = hostile.c, hostile.mallory
    before = snapshot(c)
    run = restartctl(c, "plan", "--json")
    text = restartctl(c, "plan")
    after = snapshot(c)
    doc = json.loads(run.out)
    assert run.code == 1
    assert_quiet(run)
    assert_quiet(text)
    assert len(run.audit["forks"]) == 1  # scanned on two cores (PARALLEL_MIN = 2 in AUDIT_PY), no other start
    assert canaries(c) == []
    assert before == after
    assert_terminal_safe(text.out)
    # Every one of her processes was seen (stale: it maps the replaced library), and stays hers.
    seen = her_pids(doc, m.uid)
    assert {k: v for k, v in m.pids.items() if v not in seen} == {}
    assert_hers_stay_hers(doc, m.uid)
    # The only system-level command is the one for root's own service.
    system = [a for a in doc["actions"] if a["argv"] is not None and "--user" not in a["argv"]]
    assert [(a["argv"], a["pids"]) for a in system] == [
        (["systemctl", "restart", "--", "rctl-demod.service"], [hostile.daemon])]


def test_forged_cgroups_are_classified_as_the_users(hostile: HostileHost) -> None:
    """Why: below user@UID.service any name is the user's choice: sshd.service there is not root's sshd."""
    c, m = hostile.c, hostile.mallory
    run = restartctl(c, "plan", "--json")
    assert_quiet(run)
    doc = json.loads(run.out)
    units = {p["pid"]: p["unit"] for p in doc["processes"]}
    for label, pid in m.pids.items():
        assert units[pid]["uid"] == m.uid, (label, units[pid])
    assert len(m.forged) == len(FORGED)
    for label, rel in m.forged.items():
        kind, name = FORGED[rel]
        unit = units[m.pids[label]]
        assert (unit["kind"], unit["name"]) == (kind, None if name is None else name.format(uid=m.uid)), rel
    for unit_name, _, _ in TRANSIENT:
        unit = units[m.pids[f"unit-{unit_name}"]]
        assert (unit["kind"], unit["name"]) == ("user", unit_name)
    # Her "rctl-demod.service" never merges with root's.
    [root_action] = [a for a in doc["actions"] if a["unit"] == "rctl-demod.service" and a["kind"] == "system"]
    assert root_action["pids"] == [hostile.daemon]
    assert canaries(c) == []


def test_hostile_file_names_are_listed_escaped_and_never_followed(hostile: HostileHost) -> None:
    """Why: names with newlines, escapes, non-UTF-8 bytes or ' (deleted)' must be reported exactly and
    safely; a symlink into another user's files (a FIFO) is only stat'ed, never opened (that would hang)."""
    c, m = hostile.c, hostile.mallory
    run = restartctl(c, "plan", "--json", "--all")
    text = restartctl(c, "plan", "--all")
    assert_quiet(run)
    assert_terminal_safe(text.out)
    assert "\x1b" not in text.out and "\\x1b" in text.out
    doc = json.loads(run.out)
    reported = {p["pid"]: {s["path"] for s in p["stale"]} for p in doc["unowned"]}
    for label, name in m.names.items():
        path = (NAMES_DIR.encode() + b"/" + name).decode("utf-8", "backslashreplace")
        paths = reported.get(m.pids[label], set())
        if name == LITERAL_DELETED:
            assert path not in paths  # really named "... (deleted)" and still in place: not stale
        else:
            assert path in paths, (label, name, paths)
    assert any("pwn" in p["comm"] for p in doc["unowned"])
    assert_hers_stay_hers(doc, m.uid)
    assert canaries(c) == []


def test_processes_that_fork_exec_and_exit_while_scanned(hostile: HostileHost) -> None:
    """Why: a scan races with processes that exit, exec themselves or fork, and with an executable swapped
    under a running process; none of it may crash the scan or move a process to someone else's unit."""
    c, m = hostile.c, hostile.mallory
    hp = c.host_pid(m.pids["churn"])
    assert hp is not None
    status = Path(f"/proc/{hp}/status").read_text()
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    assert caught & (1 << (signal.SIGUSR1 - 1)), "the churn process would not start churning"
    loop = (f"while :; do cp {HOME}/bin/python3 {HOME}/bin/swapme.new; "
            f"mv -f {HOME}/bin/swapme.new {HOME}/bin/swapme; done")
    swapper = m.start_plain("swapper", ["/bin/sh", "-c", loop])
    c.check(["kill", "-USR1", str(m.pids["churn"])])
    try:
        deadline = time.monotonic() + SPAWN_TIMEOUT
        while c.exec(["test", "-e", CHURNED]).returncode != 0:  # it has forked: the race is on
            assert time.monotonic() < deadline, "the churn process never forked"
            time.sleep(0.05)
        for _ in range(4):
            run = restartctl(c, "plan", "--json", "--all")
            assert_quiet(run)
            assert_hers_stay_hers(json.loads(run.out), m.uid)
    finally:
        c.check(["kill", "-USR2", str(m.pids["churn"])])
        c.check(["kill", "-KILL", str(swapper)])
        del m.pids["swapper"]
    assert canaries(c) == []


class Restale:
    """Demo v1 back for one test: what the test starts now is stale once :meth:`upgrade` brings v2 back."""

    def __init__(self, c: Container, debs: dict[str, dict[str, Path]]) -> None:
        self.c, self.debs = c, debs
        self.pids: list[int] = []
        self.upgraded = False
        c.install_debs([debs["1.0"][n] for n in DEMO])

    def upgrade(self) -> None:
        self.c.install_debs([self.debs["2.0"][n] for n in DEMO])
        self.upgraded = True


@pytest.fixture
def restale(hostile: HostileHost, demo_debs: dict[str, dict[str, Path]]) -> Iterator[Restale]:
    """A :class:`Restale`; afterwards its processes are killed (by PID) and v2 is installed again."""
    r = Restale(hostile.c, demo_debs)
    try:
        yield r
    finally:
        if r.pids:
            hostile.c.exec(["kill", "-KILL", *map(str, r.pids)])
        for label in [k for k, v in hostile.mallory.pids.items() if v in r.pids]:
            del hostile.mallory.pids[label]
            hostile.mallory.forged.pop(label, None)
        if not r.upgraded:
            r.upgrade()


def test_every_stale_process_is_seen(hostile: HostileHost) -> None:
    """Why: a stale process that is not reported is a security update that never takes effect (this suite's
    'many-maps' process caught processes._read() stopping after one short read(): seq_file hands out about
    a page per read, so mappings past the first ~4 KiB of maps went unseen; fixed in b127f26)."""
    c, m = hostile.c, hostile.mallory
    maps = _maps_of(c, m.pids["many-maps"])
    assert maps.index(LIB.encode()) > 4096  # not vacuous: the replaced library is past the first page
    doc = json.loads(restartctl(c, "plan", "--json", "--all").out)
    seen = her_pids(doc, m.uid)
    assert m.big and {k: v for k, v in m.pids.items() if v not in seen} == {}


def test_her_own_pid_namespace_is_still_hers(hostile: HostileHost, restale: Restale) -> None:
    """Why: an unprivileged user may create namespaces; that must not let her pass as a machine of the host
    (found by this suite: a child PID namespace won over the cgroup: kind 'container', uid None, 'prod')."""
    c, m = hostile.c, hostile.mallory
    # -U without -r: inside, she is nobody (never uid 0, which would fire the canaries).
    outer = m.start("pidns", ["/usr/bin/unshare", "-Upf", "--kill-child", f"{HOME}/bin/python3", MAGIC],
                    rel=b"machine.slice/machine-prod.scope")
    restale.pids.append(outer)
    inner = 0
    deadline = time.monotonic() + SPAWN_TIMEOUT
    while not inner and time.monotonic() < deadline:
        kids = c.exec(["pgrep", "-P", str(outer)]).stdout.split()
        inner = int(kids[0]) if kids and LIB.encode() in _maps_of(c, int(kids[0])) else 0
        time.sleep(0.02)
    assert inner, "the process in her PID namespace never started"
    restale.pids.append(inner)
    restale.upgrade()
    doc = json.loads(restartctl(c, "plan", "--json").out)
    [proc] = [p for p in doc["processes"] if p["pid"] == inner]
    assert proc["unit"]["uid"] == m.uid and proc["unit"]["name"] != "prod", proc["unit"]


def test_without_systemd_her_processes_never_restart_a_system_service(
        container_factory: Callable[..., Container], demo_debs: dict[str, dict[str, Path]], tools: Tools) -> None:
    """Why: the needrestart failure 'an ssh client mapped to ssh.service started a disabled sshd'.  Found by
    this suite: her run of /usr/sbin/rctl-demod, or her binary named 'rctl-demod', yielded
    'invoke-rc.d rctl-demod restart' (run in auto mode, which starts the service if it was stopped)."""
    c: Container = container_factory("rctl-sec-plain", boot=False)
    c.install_debs([demo_debs["1.0"][n] for n in DEMO])
    c.check(["useradd", "--create-home", "--user-group", "--", USER])
    c.check(["install", "-d", "-m", "1777", CANARY])
    own = c.root_path(f"{HOME}/rctl-demod")
    shutil.copyfile(tools.hostile, own)
    os.chmod(own, 0o755)
    pids = [c.spawn(["runuser", "-u", USER, "--", "/usr/sbin/rctl-demod"]),
            c.spawn(["runuser", "-u", USER, "--", "/usr/bin/env", f"LD_PRELOAD={LIB}", f"{HOME}/rctl-demod", MAGIC])]
    deadline = time.monotonic() + SPAWN_TIMEOUT
    while not all(b"librctldemo" in _maps(c, p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    c.install_debs([demo_debs["2.0"][n] for n in DEMO])
    run = restartctl(c, "plan", "--json")
    assert_quiet(run)
    assert canaries(c) == []
    acted = [a for a in json.loads(run.out)["actions"] if a["argv"] is not None]
    assert acted == []


def _maps(c: Container, pid: int) -> bytes:
    """The maps of the children of a process inside (runuser forks the program it runs)."""
    return b"".join(_maps_of(c, int(child)) for child in c.exec(["pgrep", "-P", str(pid)]).stdout.split())


def _maps_of(c: Container, pid: int) -> bytes:
    """The maps of a process inside, through the container's own /proc (PIDs as the container sees them)."""
    try:
        return c.root_path(f"/proc/{pid}/maps").read_bytes()
    except OSError:
        return b""


def test_line_breaks_in_her_cgroup_names_cannot_reach_a_system_unit(hostile: HostileHost, restale: Restale) -> None:
    """Why: the 2026 Debian forged-session lesson, with the kernel's own line syntax as the weapon.  Found by
    this suite: cgroup_path() used str.splitlines(), so her cgroup 'a<CR>0::rctl-victim.service' added a
    forged last '0::' line and 'restartctl apply' restarted an unrelated, active system service as root.

    Runs 'apply --yes' for real, so it comes last in this module (it restarts root's stale rctl-demod)."""
    c, m = hostile.c, hostile.mallory
    c.check(["systemd-run", "--quiet", "--unit=rctl-victim.service", "--", "/usr/bin/sleep", "infinity"])
    c.wait_active("rctl-victim.service")
    victim = c.main_pid("rctl-victim.service")
    for sep in (b"\r", b"\x0b", b"\x0c", b"\x1c", b"\xc2\x85", b"\xe2\x80\xa8"):  # "\n": see below
        for target in (b"rctl-victim.service", b"init.scope"):
            restale.pids.append(m.start(f"sep-{sep.hex()}-{target[:4].decode()}", [f"{HOME}/bin/python3", MAGIC],
                                        rel=b"app.slice/a" + sep + b"0::" + target))
    restale.upgrade()
    doc = json.loads(restartctl(c, "plan", "--json").out)
    assert set(restale.pids) <= her_pids(doc, m.uid)
    assert_hers_stay_hers(doc, m.uid)
    assert not [a for a in doc["actions"] if a["unit"] == "rctl-victim.service" or a["kind"] == "init"]
    r = c.exec(["/usr/bin/python3", "-m", "restart", "apply", "--yes"], env={"PYTHONPATH": str(REPO)})
    assert r.returncode in (0, 1), r.stderr
    assert "Traceback" not in r.stderr
    assert c.main_pid("rctl-victim.service") == victim
    assert canaries(c) == []


def test_the_kernel_refuses_a_newline_in_a_cgroup_name(hostile: HostileHost) -> None:
    """Why: cgroup_path() may trust "\\n" as the only line end because the kernel refuses it in names
    (EINVAL, for root too); were that ever to change, this test says so."""
    c, m = hostile.c, hostile.mallory
    script = 'n=$(printf "a\\n0::init.scope"); mkdir -- "$1/app.slice/$n" 2>/dev/null || printf %s refused'
    assert c.check(["runuser", "-u", USER, "--", "sh", "-c", script, "sh", m.cgroup_dir]) == "refused"
