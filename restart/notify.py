"""Telling users what only they can restart: a notice on each terminal and desktop of theirs.

Part of stage 6 (the executor hands over the units it does not restart: users' programs, and
users' processes found inside system services).  Who sits where comes from logind's session
records and utmp, read bounded, never from a process's environment (where neither names an ssh
login's terminal, as on Debian 13, the kernel's record of the stale program's controlling terminal
does); a terminal is written only if it is a character device of that user; a desktop notice goes
through notify-send run as that user on the bus derived from the UID.  Program names are escaped
for the terminal and for the markup a notification server reads.
"""

from __future__ import annotations

import html
import os
import re
import stat
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

from restart import NamedTuple
from restart.procfs import CLEAN_ENV, TTY_NR, stat_field
from restart.runner import run
from restart.text import printable
from restart.units import SESSION, UnitGroup, cgroup_path, resolve

RUNUSER = "/usr/sbin/runuser"
NOTIFY_SEND = "/usr/bin/notify-send"


class Session(NamedTuple):
    uid: int
    user: str
    tty: str        # e.g. "pts/3" or "tty1", "" if none
    graphical: bool
    id: str = ""          # logind's session id ("3", "c1")
    klass: str = "user"   # logind's CLASS: user | greeter | lock-screen | background | manager ...


# glibc's struct utmp on Linux (64-bit and x32 alike): type, pid, line, id, user, host, exit, session,
# tv (two int32), addr_v6, reserved: 384 bytes.
UTMP_RECORD = struct.Struct("<hxxi32s4s32s256shhiii16s20s")
UTMP_USER_PROCESS = 7
UTMP_MAX = 1 << 20  # bytes read of utmp: thousands of logins
_TTY_RE = re.compile(r"pts/\d{1,7}|tty[A-Za-z0-9]{1,12}")


def utmp_terminals(run_dir: Path, proc: Path) -> dict[str, str]:
    """Session id -> terminal, found as logind does for sessions that did not say theirs (ssh):
    each login record in utmp names a terminal and a process; that process's cgroup names its
    session.  Read from the struct records of ``/run/utmp``, bounded; nothing is run."""
    try:
        fd = os.open(run_dir / "utmp", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        data = os.read(fd, UTMP_MAX)
    except OSError:
        return {}
    finally:
        os.close(fd)
    found: dict[str, str] = {}
    for offset in range(0, len(data) - UTMP_RECORD.size + 1, UTMP_RECORD.size):
        kind, pid, line = UTMP_RECORD.unpack_from(data, offset)[:3]
        tty = line.partition(b"\0")[0].decode("ascii", "replace")
        if kind != UTMP_USER_PROCESS or pid <= 0 or not _TTY_RE.fullmatch(tty):
            continue
        try:
            cgroup = (proc / str(pid) / "cgroup").read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            continue  # the login is over (a stale record)
        unit = resolve(cgroup_path(cgroup))
        if unit.kind == SESSION and unit.name:
            found.setdefault(unit.name.removeprefix("session-").removesuffix(".scope"), tty)
    return found


# Linux's device numbers of terminals: the pseudo-terminal slaves (/dev/pts/N) and the virtual consoles.
PTS_MAJORS = range(136, 144)
VT_MAJOR, VT_MINORS = 4, range(1, 64)
TERMINAL_PROBES = 64  # stale programs of one session asked for their terminal: each costs one small read


def controlling_terminal(proc: Path, pid: int) -> str:
    """The terminal a process runs on ("pts/3", "tty2"; "" if none), from ``tty_nr`` in its stat:
    a kernel fact, where logind names no terminal and there is no utmp (Debian 13's ssh logins)."""
    dev = stat_field(proc, pid, TTY_NR)
    if not dev or not 0 < dev < 1 << 32:
        return ""
    major, minor = (dev >> 8) & 0xFFF, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)  # the kernel's 32-bit encoding
    if major in PTS_MAJORS:
        return f"pts/{(major - PTS_MAJORS.start) * 256 + minor}"
    return f"tty{minor}" if major == VT_MAJOR and minor in VT_MINORS else ""


def sessions(run_dir: Path, proc: Path = Path("/proc")) -> list[Session]:
    """Logged-in sessions from logind's records in /run/systemd/sessions (plain KEY=VALUE files),
    with the terminal from utmp where logind's record names none (an ssh login)."""
    out = []
    try:
        entries = sorted(os.scandir(run_dir / "systemd" / "sessions"), key=lambda e: e.name)
    except OSError:
        return []
    terminals: dict[str, str] | None = None
    for entry in entries:
        if not entry.is_file(follow_symlinks=False) or entry.name.endswith(".ref"):
            continue
        try:
            with open(entry.path, encoding="utf-8", errors="replace") as f:
                fields = dict(line.rstrip("\n").partition("=")[::2] for line in f if "=" in line)
        except OSError:
            continue
        if not fields.get("UID", "").isdigit():
            continue
        tty = fields.get("TTY", "")
        if not _TTY_RE.fullmatch(tty):
            if terminals is None:
                terminals = utmp_terminals(run_dir, proc)
            tty = terminals.get(entry.name, "")
        out.append(Session(int(fields["UID"]), fields.get("USER", ""), tty,
                           fields.get("TYPE") in ("x11", "wayland") or bool(fields.get("DISPLAY")),
                           entry.name, fields.get("CLASS", "user")))
    return out


def write_to_tty(dev: Path, uid: int, message: str) -> bool:
    """Write to a terminal only if it is a character device that belongs to that user."""
    try:
        fd = os.open(dev, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISCHR(st.st_mode) or st.st_uid != uid:
            return False
        os.write(fd, message.replace("\n", "\r\n").encode("utf-8", "replace"))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def desktop_argv(uid: int, user: str, title: str, body: str) -> tuple[list[str], dict[str, str]]:
    """notify-send as that user, on the bus derived from the UID (never from a process's environment)."""
    env = {**CLEAN_ENV, "DBUS_SESSION_BUS_ADDRESS": f"unix:path=/run/user/{uid}/bus"}
    # Notification servers read the body as markup: a program named "<a href=...>" stays text.
    return [RUNUSER, "-u", user, "--", NOTIFY_SEND, "--app-name=restartctl", "--", title,
            html.escape(body, quote=False)], env


def app_names(exes: set[str], applications: Path = Path("/usr/share/applications")) -> dict[str, str]:
    """Executable basename -> desktop application name, from the system's desktop entries (pyxdg)."""
    try:
        from xdg.DesktopEntry import DesktopEntry  # python3-xdg; only needed to name applications
    except ImportError:
        return {}
    wanted = {os.path.basename(e) for e in exes}
    names: dict[str, str] = {}
    for path in sorted(applications.glob("*.desktop")):
        try:
            entry = DesktopEntry(str(path))
            program = os.path.basename(entry.getExec().split()[0].strip("\"'")) if entry.getExec() else ""
        except Exception:  # noqa: S112 - a broken desktop file must not stop the run
            continue
        if program in wanted and program not in names:
            names[program] = entry.getName()
    return names


# Sessions a person sits at; logind's other classes (a lingering user's manager, background jobs,
# greeters, lock screens) have nobody to read a notice.
PERSON_CLASSES = ("user",)


def notify(groups: list[UnitGroup], run_dir: Path, log: Callable[[str], None],
           applications: Path = Path("/usr/share/applications"), proc: Path = Path("/proc")) -> int:
    """Tell each affected logged-in user what to restart; returns how many messages went out.

    The log says "told" only for a notice really written to a terminal or accepted by the
    desktop, and why for every session of an affected user that got none.
    """
    by_uid: dict[int, list[UnitGroup]] = {}
    for g in groups:
        uids = {g.uid} if g.uid is not None else {m.process.uid for m in g.members}
        for uid in uids - {0}:
            by_uid.setdefault(uid, []).append(g)
    if not by_uid:
        return 0
    exes = {m.process.exe or "" for gs in by_uid.values() for g in gs for m in g.members}
    names = app_names(exes, applications)
    sent = 0
    on_desktop: set[int] = set()  # one notice per user's bus, however many graphical sessions share it
    present: set[int] = set()     # users with a session a person sits at
    for s in sessions(run_dir, proc):
        if s.uid not in by_uid or s.klass not in PERSON_CLASSES:
            continue
        present.add(s.uid)
        what = sorted({printable(names.get(os.path.basename(m.process.exe or ""), m.process.comm))
                       for g in by_uid[s.uid] for m in g.members})
        text = (f"restartctl: a software update replaced files that these programs still use: "
                f"{', '.join(what)}. Restart them (or log out and in again) to finish the update.")
        told, why = [], []
        ttys = [s.tty] if s.tty else _terminals_of(by_uid[s.uid], s, proc)
        for tty in ttys:
            if write_to_tty(Path("/dev") / tty, s.uid, f"\n{text}\n"):
                told.append(tty)
                sent += 1
            else:
                why.append(f"could not write to /dev/{tty}")
        if s.graphical and s.uid in on_desktop:
            told.append("desktop (one notice per user)")
        elif s.graphical:
            result = _notify_desktop(s, text)
            if result is None:
                on_desktop.add(s.uid)
                told.append("desktop")
                sent += 1
            else:
                why.append(result)
        if not ttys and not s.graphical:
            why.append("no terminal and no desktop")
        who = f"user {s.user or s.uid} (session {s.id})"
        if told:
            log(f"told {who} on {', '.join(told)} to restart: {', '.join(what)}")
        else:
            log(f"could not tell {who} to restart {', '.join(what)}: {'; '.join(why)}")
    for uid in sorted(set(by_uid) - present):
        log(f"could not tell user {uid}: no login session a person sits at (a lingering manager or "
            "background sessions only); it stays pending")
    return sent


def _terminals_of(groups: list[UnitGroup], s: Session, proc: Path) -> list[str]:
    """The terminals the session's stale programs run on, for a session whose record names none:
    each one is still written only if it is a terminal of that user."""
    scope = f"session-{s.id}.scope"
    pids = sorted({m.process.pid for g in groups if g.kind == SESSION and g.name == scope for m in g.members})
    return sorted({tty for pid in pids[:TERMINAL_PROBES] if (tty := controlling_terminal(proc, pid))})


def _notify_desktop(s: Session, text: str) -> str | None:
    """One desktop notice through notify-send as that user; None when it was accepted, else why not."""
    if not s.user:
        return "no user name for the desktop notice"
    if not os.access(NOTIFY_SEND, os.X_OK):
        return f"{NOTIFY_SEND} is not installed"
    argv, env = desktop_argv(s.uid, s.user, "Restart needed after an update", text)
    try:
        result = run(argv, 5, env=env, quiet=True)
    except subprocess.TimeoutExpired:
        return "notify-send did not answer in time"
    except OSError as e:
        return f"could not run notify-send: {e}"
    return None if result.returncode == 0 else f"notify-send failed (exit status {result.returncode})"
