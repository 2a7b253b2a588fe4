"""Self-tests of the test-support harness: real gcc/dpkg-deb builds, real containers, real systemd.

Why: every scenario test of restartctl trusts this harness; if a container silently lacked systemd,
or an upgrade did not really replace inodes, those tests would pass for the wrong reason.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.container import HARNESS_CGROUP, HOST_LEAKS, Container, cgroup_roots
from tests.support.debs import host_arch, multiarch

pytestmark = pytest.mark.real

DEMOD = "rctl-demod.service"
LIBDEMO = "librctldemo.so.1"

# Runs inside a container: the first mapping of a file whose path contains argv[2] in process argv[1],
# with (dev, ino) from the maps line, from stat(path) and from stat(/proc/PID/map_files/RANGE).
_MAPS_PROBE = r"""
import json, os, sys
pid, needle = int(sys.argv[1]), sys.argv[2]
with open(f"/proc/{pid}/maps") as f:
    for line in f:
        rng, _perms, _off, dev, ino, *rest = line.rstrip("\n").split(None, 5)
        if rest and needle in rest[0]:
            major, minor = (int(x, 16) for x in dev.split(":"))
            st = os.stat(rest[0].removesuffix(" (deleted)"))
            mf = os.stat(f"/proc/{pid}/map_files/{rng}")
            print(json.dumps({
                "maps_path": rest[0], "maps_dev": os.makedev(major, minor), "maps_ino": int(ino),
                "path_dev": st.st_dev, "path_ino": st.st_ino,
                "mapfile_dev": mf.st_dev, "mapfile_ino": mf.st_ino,
                "root_dev": os.stat("/").st_dev,
            }))
            break
"""


def maps_probe(c: Container, pid: int, needle: str) -> dict[str, int | str]:
    """The (dev, ino) facts of one mapping, read inside the container (see _MAPS_PROBE)."""
    out = c.check(["/usr/bin/python3", "-c", _MAPS_PROBE, str(pid), needle]).strip()
    assert out, f"PID {pid} maps no file matching {needle!r}:\n{c.exec(['cat', f'/proc/{pid}/maps']).stdout}"
    result: dict[str, int | str] = json.loads(out)
    return result


def proc_cgroups(c: Container, pid: int) -> dict[str, str]:
    """hierarchy ("0" for cgroup2, "name=systemd") -> path, from /proc/PID/cgroup inside; the
    name=systemd one only where the container's systemd runs hybrid (Debian 12 on a hybrid host),
    not on a pure v2 one (Debian 13), whatever the kernel still lists."""
    out: dict[str, str] = {}
    for line in c.check(["cat", f"/proc/{pid}/cgroup"]).splitlines():
        num, controllers, path = line.split(":", 2)
        if num == "0" or (c.hybrid and controllers == "name=systemd"):
            out["0" if num == "0" else controllers] = path
    return out


def host_rctl_packages() -> list[str]:
    """rctl-* packages in the HOST's dpkg database (must stay empty)."""
    text = Path("/var/lib/dpkg/status").read_text(encoding="utf-8", errors="replace")
    return [line.split()[1] for line in text.splitlines() if line.startswith("Package: rctl-")]


def start_time(host_pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: tells a PID from a later reuse of the same number."""
    try:
        return Path(f"/proc/{host_pid}/stat").read_text().rpartition(")")[2].split()[19]
    except OSError:
        return None


# ---------------------------------------------------------------------------------------- packages
def test_demo_debs(demo_debs: dict[str, dict[str, Path]]) -> None:
    """Both versions build; file modes, control fields and merged-/usr paths are as documented."""
    v1, v2 = demo_debs["1.0"], demo_debs["2.0"]
    assert set(v1) == set(v2) >= {"rctl-libdemo1", "rctl-demod", "rctl-sleeper", "rctl-oldlib1", "rctl-failpost"}

    def contents(deb: Path) -> str:
        return subprocess.run(
            ["/usr/bin/dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True
        ).stdout

    def field(deb: Path, name: str) -> str:
        return subprocess.run(
            ["/usr/bin/dpkg-deb", "--field", str(deb), name], capture_output=True, text=True, check=True
        ).stdout.strip()

    lib = contents(v1["rctl-libdemo1"])
    assert "-rw-r--r-- root/root" in lib and f"./usr/lib/{multiarch()}/{LIBDEMO}" in lib
    assert field(v1["rctl-libdemo1"], "Multi-Arch") == "same"
    demod = contents(v1["rctl-demod"])
    assert "-rwxr-xr-x root/root" in demod.split("./usr/sbin/rctl-demod")[0].splitlines()[-1]
    assert "./lib/systemd/system/rctl-demod.service" in demod and "./etc/init.d/rctl-demod" in demod
    assert field(v1["rctl-demod"], "Depends") == "rctl-libdemo1 (= 1.0)"
    assert f"./lib/{multiarch()}/librctlold.so.1" in contents(v1["rctl-oldlib1"])
    assert field(v2["rctl-failpost"], "Architecture") == "all"
    for version, debs in demo_debs.items():
        for name, deb in debs.items():
            assert deb.name.startswith(f"{name}_{version}_"), deb
    assert v1["rctl-libdemo1"].read_bytes() != v2["rctl-libdemo1"].read_bytes()


# ---------------------------------------------------------------------------------------- systemd
def test_systemd_container_boots(systemd_container: Container) -> None:
    c = systemd_container
    state = c.exec(["systemctl", "is-system-running"]).stdout.strip()
    assert state in ("running", "degraded"), c.console_log()
    assert c.check(["cat", "/proc/1/comm"]).strip() == "systemd"
    assert c.exec(["test", "-d", "/run/systemd/system"]).returncode == 0
    assert c.exec(["systemctl", "show", "-P", "Id", "default.target"]).returncode == 0
    # Our cgroup holds nspawn's payload (the container) and supervisor.
    top = c.cgroup_dirs[0]
    assert (top / "payload" / "init.scope").is_dir() and (top / "supervisor").is_dir()
    # Commands run in a cgroup of their own that cannot be mistaken for a unit.
    assert proc_cgroups(c, 1)["0"] == "/init.scope"
    own = c.check(["cat", "/proc/self/cgroup"])
    assert f"0::/{HARNESS_CGROUP}/exec-" in own, own


def test_upgrade_leaves_running_daemon_on_deleted_library(
    systemd_container: Container, demo_debs: dict[str, dict[str, Path]]
) -> None:
    """v1 daemon maps librctldemo.so.1; after dpkg -i of v2 the same process maps it "(deleted)"."""
    c = systemd_container
    v1, v2 = demo_debs["1.0"], demo_debs["2.0"]
    c.install_debs([v1["rctl-libdemo1"], v1["rctl-demod"]])
    assert c.exec(["test", "-f", f"/var/lib/dpkg/info/rctl-libdemo1:{host_arch()}.list"]).returncode == 0
    c.systemctl("start", DEMOD)
    c.wait_active(DEMOD)
    pid = c.main_pid(DEMOD)
    assert pid > 1
    cgroups = proc_cgroups(c, pid)
    assert cgroups["0"] == cgroups.get("name=systemd", cgroups["0"]) == f"/system.slice/{DEMOD}", cgroups
    before = maps_probe(c, pid, LIBDEMO)
    assert before["maps_path"] == f"/usr/lib/{multiarch()}/{LIBDEMO}"
    assert before["maps_ino"] == before["path_ino"] == before["mapfile_ino"]
    assert (before["path_dev"], before["path_ino"]) == (before["mapfile_dev"], before["mapfile_ino"])
    assert "rctl-demod 1.0 library 1.0" in c.journal(DEMOD)

    c.install_debs([v2["rctl-libdemo1"], v2["rctl-demod"]])
    assert c.main_pid(DEMOD) == pid
    after = maps_probe(c, pid, LIBDEMO)
    assert after["maps_path"] == f"/usr/lib/{multiarch()}/{LIBDEMO} (deleted)"
    assert after["maps_ino"] == after["mapfile_ino"] == before["maps_ino"]
    assert (after["path_dev"], after["path_ino"]) != (after["mapfile_dev"], after["mapfile_ino"])

    c.systemctl("restart", DEMOD)
    c.wait_active(DEMOD)
    new_pid = c.main_pid(DEMOD)
    assert new_pid not in (0, pid)
    assert maps_probe(c, new_pid, LIBDEMO)["maps_path"] == f"/usr/lib/{multiarch()}/{LIBDEMO}"


def test_overlay_maps_device_is_not_stat_device(systemd_container: Container) -> None:
    """Documents a fact restartctl's inode check must respect inside overlay-rooted containers.

    /proc/PID/maps reports the OVERLAY's device (that of stat("/")), while stat() of the same file
    (and of /proc/PID/map_files/RANGE) reports the layer's device; inode numbers agree. So compare
    stat(map_files) with stat(path), never the maps device with stat(path).st_dev.
    """
    c = systemd_container
    facts = maps_probe(c, 1, "libc.so.6")  # systemd maps libc from the lower (host) layer
    assert facts["maps_ino"] == facts["path_ino"] == facts["mapfile_ino"]
    assert facts["maps_dev"] == facts["root_dev"]
    assert facts["maps_dev"] != facts["path_dev"]
    assert facts["mapfile_dev"] == facts["path_dev"]


def test_user_unit_runs_in_user_manager(systemd_container: Container) -> None:
    c = systemd_container
    uid = c.create_user("rctluser")
    assert uid >= 1000
    unit = c.run_user_unit("rctluser", ["/usr/bin/sleep", "1000"])
    pid = c.main_pid(unit, user="rctluser")
    assert pid > 1
    prefix = f"/user.slice/user-{uid}.slice/user@{uid}.service/"
    cgroups = proc_cgroups(c, pid)
    assert cgroups["0"].startswith(prefix) and cgroups["0"].endswith(f"/{unit}"), cgroups
    assert cgroups.get("name=systemd", cgroups["0"]) == cgroups["0"]
    assert f"Uid:\t{uid}\t" in c.check(["cat", f"/proc/{pid}/status"])


# ---------------------------------------------------------------------------------------- no systemd
def test_plain_container_has_no_systemd(plain_container: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    c = plain_container
    assert c.exec(["test", "-e", "/run/systemd/system"]).returncode == 1
    assert c.check(["cat", "/proc/1/comm"]).strip() != "systemd"
    v1 = demo_debs["1.0"]
    c.install_debs([v1["rctl-libdemo1"], v1["rctl-demod"]])
    pid = c.spawn(["/usr/sbin/rctl-demod"])
    # Until it has printed its line and sleeps in sigsuspend(), adopted by PID 1 (its setsid parent
    # exits): polled, bounded, instead of a fixed sleep that a loaded machine outruns.
    deadline = time.monotonic() + 20
    status = c.check(["cat", f"/proc/{pid}/status"])
    while not ("State:\tS" in status and "PPid:\t1\n" in status) and time.monotonic() < deadline:
        time.sleep(0.05)
        status = c.check(["cat", f"/proc/{pid}/status"])
    assert "State:\tS" in status and "PPid:\t1\n" in status, status
    assert f"/{LIBDEMO}" in c.check(["cat", f"/proc/{pid}/maps"])
    assert proc_cgroups(c, pid)["0"].startswith(f"/{HARNESS_CGROUP}/spawn-")


def test_plain_container_init_script(plain_container: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    c = plain_container
    c.install_debs([demo_debs["1.0"]["rctl-libdemo1"], demo_debs["1.0"]["rctl-demod"]])
    c.check(["/etc/init.d/rctl-demod", "start"])
    pid = int(c.read_file("/run/rctl-demod.pid"))
    assert c.exec(["/etc/init.d/rctl-demod", "status"]).returncode == 0
    c.check(["/etc/init.d/rctl-demod", "stop"])
    assert c.exec(["/etc/init.d/rctl-demod", "status"]).returncode == 3
    assert c.exec(["test", "-e", f"/proc/{pid}"]).returncode == 1


def test_exec_timeout_kills_the_command_tree(plain_container: Container) -> None:
    c = plain_container
    with pytest.raises(subprocess.TimeoutExpired):
        c.exec(["/bin/sh", "-c", "/usr/bin/sleep 977 & /usr/bin/sleep 978"], timeout=0.5)
    ps = c.check(["ps", "-eo", "args"])
    assert "sleep 977" not in ps and "sleep 978" not in ps, ps


def test_apt_local_repository(plain_container: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    c = plain_container
    cfg = c.local_repo([*demo_debs["1.0"].values(), *demo_debs["2.0"].values()])
    env = {"APT_CONFIG": cfg, "DEBIAN_FRONTEND": "noninteractive"}
    c.check(["apt-get", "update"], env=env)
    c.check(["apt-get", "install", "rctl-sleeper=1.0"], env=env)
    c.check(["apt-get", "install", "rctl-sleeper"], env=env)
    assert c.check(["dpkg-query", "-W", "-f", "${Version}", "rctl-sleeper"]) == "2.0"
    # The private state did not leak into the container's real apt lists.
    assert "rctl" not in c.check(["ls", "/var/lib/apt/lists"])


def test_files_in_and_out(plain_container: Container) -> None:
    c = plain_container
    c.write_file("/srv/rctl-t/dir/file", b"\x00data\n", mode=0o600)
    assert c.read_file("/srv/rctl-t/dir/file") == b"\x00data\n"
    assert c.root_path("/srv/rctl-t/dir/file").stat().st_mode & 0o777 == 0o600
    with pytest.raises(OSError):
        c.read_file("/nonexistent")


def test_container_factory_and_binds(container_factory: Callable[..., Container], tmp_path: Path) -> None:
    """Extra bind mounts: read-only ones cannot be written from inside."""
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "f").write_text("host\n")
    c = container_factory("rctl-binds", boot=False, binds=[(tmp_path / "ro", "/mnt/ro", True)])
    assert c.read_file("/mnt/ro/f") == b"host\n"
    assert c.exec(["touch", "/mnt/ro/g"]).returncode != 0
    assert c.check(["cat", "/proc/self/mountinfo"]).count(" /mnt/ro ") == 1


def test_host_configuration_never_leaks_in(container_factory: Callable[..., Container]) -> None:
    """The host's policy-rc.d and needrestart hooks are hidden by default; ``hide`` says what is hidden."""
    c = container_factory("rctl-hidden", boot=False)
    assert [p for p in HOST_LEAKS if c.exec(["test", "-e", p]).returncode == 0] == []
    # The mechanism, on a file every Debian host has: hidden inside, untouched on the host.
    c = container_factory("rctl-shown", boot=False, hide=("/etc/debian_version",))
    assert c.exec(["test", "-e", "/etc/debian_version"]).returncode == 1
    assert Path("/etc/debian_version").is_file()
    assert [p for p in HOST_LEAKS if c.exec(["test", "-e", p]).returncode == 0] == \
        [p for p in HOST_LEAKS if Path(p).exists()]


def test_forbid_service_starts(plain_container: Container) -> None:
    c = plain_container
    assert c.exec(["test", "-e", "/usr/sbin/policy-rc.d"]).returncode == 1
    c.forbid_service_starts()
    assert c.exec(["/usr/sbin/policy-rc.d", "x", "start"]).returncode == 101
    c.check(["rm", "/usr/sbin/policy-rc.d"])


# ---------------------------------------------------------------------------------------- cleanup
@pytest.mark.parametrize("boot", [True, False], ids=["boot", "plain"])
def test_host_untouched_after_stop(boot: bool, demo_debs: dict[str, dict[str, Path]]) -> None:
    """After stop(): no rctl- package on the host, no cgroup dirs, no process we started."""
    assert host_rctl_packages() == []
    v1 = demo_debs["1.0"]
    with Container("rctl-clean", boot=boot) as c:
        c.install_debs([v1["rctl-libdemo1"], v1["rctl-demod"], v1["rctl-sleeper"]])
        inside = [c.spawn(["/usr/bin/rctl-sleeper"])]
        if boot:
            c.systemctl("start", DEMOD)
            c.wait_active(DEMOD)
            inside.append(c.main_pid(DEMOD))
        host_pids = [c.host_pid(p) for p in inside]
        assert None not in host_pids
        started = {hp: start_time(hp) for hp in host_pids if hp is not None}
        started[c.leader] = start_time(c.leader)
        started[c.nspawn_pid] = start_time(c.nspawn_pid)
        cgroups, scratch = c.cgroup_dirs, c.scratch
        assert all(d.is_dir() for d in cgroups) and scratch.is_dir()
        assert not Path("/usr/sbin/rctl-demod").exists(), "the container wrote through to the host"
    c.stop()  # idempotent
    for hp, t in started.items():
        assert start_time(hp) != t, f"host PID {hp} is still running"
    assert not any(d.exists() for d in cgroups), cgroups
    assert not scratch.exists()
    assert host_rctl_packages() == []
    assert not Path("/usr/sbin/rctl-demod").exists()
    assert not Path(f"/usr/lib/{multiarch()}/{LIBDEMO}").exists()


def test_failed_start_cleans_up() -> None:
    """A start that fails (here: no such overlay lower dir) raises and leaves nothing behind."""
    c = Container("rctl-broken", boot=False, lower=Path("/nonexistent-lower"), start_timeout=10)
    with pytest.raises(RuntimeError, match="exited"):
        c.start()
    assert c.cgroup_dirs == []
    for root in cgroup_roots():
        assert not (root / c.cgroup_name).exists()
    c.stop()
