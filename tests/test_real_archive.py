"""The real-archive tier: real Debian daemons, a real upgrade of real packages, an independent checker.

Why: the rest of the suite proves restartctl on tiny packages built for the purpose; users run it on
real daemons after real security updates. Here a Debian 13 root with daemons from the archive
(openssh-server with an ssh login session, nginx, cron, rsyslog, exim4, redis-server, postgresql, a
Python and a Perl daemon under systemd, packaged as Debian packages their daemons and once more as
scripts no package owns in /usr/local, and a lingering
user's unit) gets the updates pending for it
(SUITE-updates and SUITE-security, fetched once into tests/.cache/updates; when none are pending, a
reinstall of the image's own library packages, so that dpkg still replaces every file), through apt
with restartctl's hook installed from the .deb the suite built.

Then three answers on the same state:
- the ground truth, from a checker written here (no code of restartctl): processes that map, run or
  hold open a file of a changed package that is gone ``(deleted)``, run a script changed after they
  started, or (for the test's own interpreted daemons) imported a module that was replaced since,
  as each daemon recorded at its start;
- ``restartctl plan --json``: it must miss nothing the checker finds, and restart nothing the
  checker does not support;
- ``needrestart -b`` (batch mode), for comparison only.
The three go into tests/.cache/real-archive/last-run.json; ``tests/real_archive_table.py`` turns that
into docs/real-archive.md.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.container import Container, wait_for
from tests.support.debs import build_deb
from tests.support.package import Built
from tests.support.rootfs import CACHE, DOWNLOADS, REAL_ARCHIVE_TIER, updates_for

# A cold first run debootstraps about 300 packages and fetches the updates (several minutes).
pytestmark = [pytest.mark.real, pytest.mark.timeout(2400)]

SUITE = REAL_ARCHIVE_TIER[0]
SERVICES = ("ssh.service", "nginx.service", "cron.service", "rsyslog.service", "exim4.service",
            "redis-server.service")
RESULT = CACHE / "real-archive" / "last-run.json"
RESTARTS = {"restart", "try-restart", "reload-or-restart", "reexec"}

# Interpreted daemons that record, at start, every module file they loaded (path, device, inode):
# the checker's truth for module findings, which no /proc file shows.
PYD = """#!/usr/bin/python3
import json, os, sys, time, socket, ssl, sqlite3, yaml
mods = {}
for m in list(sys.modules.values()):
    f = getattr(m, "__file__", None)
    if f and os.path.isabs(f):
        st = os.stat(f)
        mods[os.path.realpath(f)] = [st.st_dev, st.st_ino]
with open(sys.argv[1] + ".tmp", "w") as out:
    json.dump(mods, out)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    time.sleep(60)
"""
PLD = r"""#!/usr/bin/perl
use strict; use warnings; use POSIX (); use Socket; use JSON::PP; use Digest::SHA; use Cwd 'realpath';
my %mods;
for my $f (values %INC) { my @st = stat($f); $mods{realpath($f)} = [$st[0], $st[1]] if @st; }
open(my $out, '>', "$ARGV[0].tmp") or die; print $out encode_json(\%mods); close($out);
rename("$ARGV[0].tmp", $ARGV[0]) or die;
sleep(60) while 1;
"""
UNIT = "[Service]\nExecStart={}\n"
LOCAL_DAEMONS = ("rctl-local-pyd.service", "rctl-local-pld.service")


@pytest.fixture(scope="module")
def daemon_debs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The Python and the Perl daemon, packaged as Debian packages its daemons (script, unit, Depends)."""
    out = tmp_path_factory.mktemp("rctl-real")
    debs = []
    for name, script, interpreter, depends in (("rctl-real-pyd", PYD, "/usr/bin/python3", "python3, python3-yaml"),
                                               ("rctl-real-pld", PLD, "/usr/bin/perl", "perl")):
        unit = UNIT.format(f"{interpreter} /usr/bin/{name} /run/rctl-real/{name.removeprefix('rctl-real-')}.json")
        debs.append(build_deb(out, name, "1.0", {f"/usr/bin/{name}": script.encode(),
                                                 f"/usr/lib/systemd/system/{name}.service": unit.encode()},
                              depends=depends, arch="all"))
    return debs

# The checker: runs inside the container with the container's own python3, imports nothing of restartctl.
CHECKER = r"""
import json, os, re, sys
changed = json.load(open(sys.argv[1]))            # package names the upgrade changed
ARCHES = ("amd64", "arm64", "i386", "armhf", "ppc64el", "s390x", "riscv64")
records = json.load(open(sys.argv[2]))            # pid -> module record file of the test's daemons
files = set()
for name in changed:
    for lst in [f"/var/lib/dpkg/info/{name}.list"] + [f"/var/lib/dpkg/info/{name}:{a}.list" for a in ARCHES]:
        if os.path.exists(lst):
            for line in open(lst, encoding="utf-8", errors="surrogateescape"):
                p = line.rstrip("\n")
                files.add(p)
                if p.startswith("/usr/"):       # merged /usr: /lib is /usr/lib
                    files.add(p[4:])

def gone(text):
    return text.endswith(" (deleted)") and text[:-10] in files

def unit_of(path):
    parts = [p for p in path.split("/") if p]
    if parts == ["init.scope"]:
        return "init.scope"
    if parts[:1] == ["rctl-harness"] or not parts:
        return None
    if len(parts) >= 3 and parts[0] == "user.slice" and parts[2].startswith(("session-", "user@")):
        if parts[2].startswith("session-") or len(parts) < 4 or parts[3] == "init.scope":
            return parts[2]
        below = [p for p in parts[3:] if not p.endswith(".slice")]
        return below[0] if below else None
    units = [p for p in parts if not p.endswith(".slice")]
    return units[0] if units else None

hz = os.sysconf("SC_CLK_TCK")
import time
# Boot's wall-clock time to the tick (/proc/stat's btime is rounded to whole seconds, which made a
# script written in the second before its daemon started look changed after).
btime = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
found = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) == os.getpid():
        continue
    try:
        cg = next((l[3:].strip() for l in open(f"/proc/{pid}/cgroup") if l.startswith("0::")), "")
        stat = open(f"/proc/{pid}/stat").read()
        exe = os.readlink(f"/proc/{pid}/exe")
        maps = open(f"/proc/{pid}/maps").read().splitlines()
        fds = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                fds.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except (OSError, StopIteration):
        continue
    unit = unit_of(cg)
    if unit is None:
        continue
    why = set()
    if gone(exe):
        why.add("exe " + exe[:-10])
    for line in maps:
        fields = line.split(None, 5)
        if len(fields) == 6 and gone(fields[5]):
            why.add("map " + fields[5][:-10])
    for target in fds:
        if gone(target):
            why.add("fd " + target[:-10])
    started = btime + int(stat.rpartition(")")[2].split()[19]) / hz
    base = os.path.basename(exe.removesuffix(" (deleted)"))
    if re.fullmatch(r"(python3(\.\d+)?|perl(5[\d.]*)?)", base):
        script = next((a.decode() for a in argv[1:] if a and not a.startswith(b"-")), "")
        if script.startswith("/") and os.path.exists(script) and os.stat(script).st_ctime > started + 0.25:
            why.add("script " + script)
    if pid in records and os.path.exists(records[pid]):
        for path, (dev, ino) in json.load(open(records[pid])).items():
            try:
                st = os.stat(path)
                same = (st.st_dev, st.st_ino) == (dev, ino)
            except OSError:
                same = False
            if not same:
                why.add("module " + path)
    if why:
        found.setdefault(unit, {"pids": [], "why": set()})
        found[unit]["pids"].append(int(pid))
        found[unit]["why"] |= why
print(json.dumps({u: {"pids": sorted(v["pids"]), "why": sorted(v["why"])} for u, v in found.items()}))
"""


def upgrade_set(root: Path) -> tuple[str, list[Path]]:
    """The real updates pending for the image or, when there are none, its own library packages again."""
    pending = updates_for(root, SUITE)
    if pending:
        return "pending updates from the archive", pending
    names = ("libssl3t64", "libc6", "libpcre2-8-0", "libzstd1", "libsystemd0", "zlib1g", "libyaml-0-2")
    again = [sorted(DOWNLOADS.glob(f"{n}_*.deb"))[-1] for n in names if sorted(DOWNLOADS.glob(f"{n}_*.deb"))]
    return "a reinstall of the image's own library packages (nothing pending)", again


def start_everything(c: Container, daemon_debs: list[Path]) -> dict[str, str]:
    """Every daemon up; returns pid (inside) -> the module record file of the test's interpreted daemons."""
    # basic.target: nothing of multi-user.target runs, so start what users and daemons need (without
    # systemd-user-sessions, /run/nologin keeps every user but root out).
    c.systemctl("start", "dbus.service", "systemd-logind.service", "systemd-user-sessions.service")
    # The cluster the package made: postgresql@VERSION-main (the release decides the version).
    [cluster] = c.check(["ls", "/etc/postgresql"]).split()
    services = (*SERVICES, f"postgresql@{cluster}-main.service")
    c.systemctl("start", *services)
    c.check(["install", "-d", "-m", "0755", "/run/rctl-real"])
    c.install_debs(daemon_debs)
    c.systemctl("daemon-reload")
    # The same daemons as scripts no package owns (/usr/local): their module findings come from the
    # static import reader, and a changed module package they do not import must not name them.
    for name, script, interpreter in (("pyd", PYD, "/usr/bin/python3"), ("pld", PLD, "/usr/bin/perl")):
        c.write_file(f"/usr/local/bin/rctl-local-{name}", script, mode=0o755)
        c.write_file(f"/etc/systemd/system/rctl-local-{name}.service",
                     UNIT.format(f"{interpreter} /usr/local/bin/rctl-local-{name} /run/rctl-real/local-{name}.json"))
    c.systemctl("daemon-reload")
    c.systemctl("start", *LOCAL_DAEMONS, "rctl-real-pyd.service", "rctl-real-pld.service")
    # A lingering user's own unit (a Python daemon too) and an ssh login session of another user.
    uid = c.create_user("ursula")
    c.check(["install", "-d", "-o", "ursula", "-m", "0755", "/run/rctl-real/ursula"])
    c.run_user_unit("ursula", ["/usr/bin/python3", "/usr/bin/rctl-real-pyd", "/run/rctl-real/ursula/pyd.json"],
                    unit="rctl-real-userd.service")
    c.check(["useradd", "--create-home", "--shell", "/bin/sh", "sam"])
    key = "/home/sam/.ssh/id_ed25519"
    c.check(["runuser", "-u", "sam", "--", "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key])
    c.check(["runuser", "-u", "sam", "--", "cp", f"{key}.pub", "/home/sam/.ssh/authorized_keys"])
    c.spawn(["runuser", "-u", "sam", "--", "ssh", "-tt", "-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes",
             "sam@127.0.0.1", "exec sleep 3600"])
    wait_for(lambda: "sam" in c.exec(["loginctl", "list-sessions", "--no-legend"]).stdout, "sam's ssh session", 30)
    records = {"/run/rctl-real/pyd.json": c.main_pid("rctl-real-pyd.service"),
               "/run/rctl-real/pld.json": c.main_pid("rctl-real-pld.service"),
               "/run/rctl-real/ursula/pyd.json": c.main_pid("rctl-real-userd.service", user="ursula"),
               **{f"/run/rctl-real/{u.removeprefix('rctl-').removesuffix('.service')}.json": c.main_pid(u)
                  for u in LOCAL_DAEMONS}}
    for path in records:
        wait_for(lambda path=path: c.exec(["test", "-s", path]).returncode == 0, path, 30)
    for unit in (*services, *LOCAL_DAEMONS, "rctl-real-pyd.service", "rctl-real-pld.service"):
        c.wait_active(unit)
    assert uid > 0
    return {str(pid): path for path, pid in records.items()}


def needrestart(c: Container) -> dict[str, list[str]]:
    """needrestart's batch answer on the same state: services, sessions, containers it names."""
    r = c.exec(["needrestart", "-b", "-r", "l"], timeout=300, env={"NEEDRESTART_SUSPEND": ""})
    named: dict[str, list[str]] = {}
    for line in r.stdout.splitlines():
        key, _, value = line.partition(": ")
        if key in ("NEEDRESTART-SVC", "NEEDRESTART-SESS", "NEEDRESTART-CONT", "NEEDRESTART-UCSTA"):
            named.setdefault(key.removeprefix("NEEDRESTART-").lower(), []).append(value.strip())
    return named


def test_real_upgrade_against_ground_truth(container_factory: Callable[..., Container], real_archive_root: Path,
                                           built: Built, daemon_debs: list[Path]) -> None:
    how, debs = upgrade_set(real_archive_root)
    assert debs, "nothing to upgrade and no cached library packages to reinstall"
    c = container_factory("rctl-real", boot=True, lower=real_archive_root, repo=None, unified=True)
    c.install_debs([built.deb])
    c.write_file("/etc/restartctl/policy.toml", '[settings]\nmode = "list"\nunattended_mode = "list"\n')
    records = start_everything(c, daemon_debs)
    time.sleep(0.5)  # the upgrade comes clearly after every start

    cfg = c.local_repo(debs, subdir="updates")
    env = {"APT_CONFIG": cfg, "DEBIAN_FRONTEND": "noninteractive"}
    c.check(["apt-get", "-q", "update"], env=env)
    verb = ["dist-upgrade"] if how.startswith("pending") else ["install", "--reinstall"]
    names = sorted({p.name.split("_")[0] for p in debs})
    t0 = time.monotonic()
    r = c.exec(["apt-get", "-q", "-y", "-o", "Dpkg::Use-Pty=0", *verb, *([] if verb == ["dist-upgrade"] else names)],
               env=env, timeout=900)
    upgrade_seconds = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("restartctl: ") >= 1 and "Traceback" not in r.stdout + r.stderr, r.stdout

    c.write_file("/srv/rctl/changed.json", json.dumps(names))
    c.write_file("/srv/rctl/records.json", json.dumps(records))
    c.write_file("/srv/rctl/checker.py", CHECKER)
    truth: dict[str, dict[str, Any]] = json.loads(
        c.check(["/usr/bin/python3", "-I", "/srv/rctl/checker.py", "/srv/rctl/changed.json", "/srv/rctl/records.json"]))
    p = c.exec(["restartctl", "plan", "--json"], timeout=300)
    assert p.returncode in (0, 1) and not p.stderr, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    actions = {a["unit"]: a for a in doc["actions"] if a.get("unit")}
    theirs = needrestart(c)
    running = c.check(["systemctl", "list-units", "--type=service", "--state=running", "--no-legend", "--plain"])

    misses = sorted(set(truth) - set(actions))
    unsupported = sorted(u for u, a in actions.items() if a["action"] in RESTARTS and u not in truth)
    unfounded = sorted(set(actions) - set(truth))  # named at all (listed, deferred, notified) without truth
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps({
        "suite": SUITE, "upgrade": how, "packages": names, "upgrade_seconds": round(upgrade_seconds, 1),
        "systemd": c.check(["dpkg-query", "-W", "-f=${Version}", "systemd"]),
        "truth": truth, "restartctl": {u: {"action": a["action"], "kind": a["kind"]} for u, a in actions.items()},
        "needrestart": theirs, "misses": misses, "unsupported": unsupported, "unfounded": unfounded,
        "running": sorted(line.split()[0] for line in running.splitlines() if line.strip()),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.chmod(RESULT, 0o644)
    assert truth, f"the upgrade ({how}: {names}) left no process on replaced files: nothing was tested"
    assert not misses, f"restartctl missed {misses}; truth {truth}; plan {actions}"
    why = {u: [f for p in doc["processes"] if p["pid"] in actions[u]["pids"] for f in p["stale"]] for u in unsupported}
    assert not unsupported, f"restartctl would restart {unsupported}, which the checker does not support: {why}"
    assert not unfounded, f"restartctl names {unfounded}, which run no replaced code by the checker: {actions}"
