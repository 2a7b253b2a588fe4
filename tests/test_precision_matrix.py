"""The precision matrix (issue 12): interpreted daemons and real apt transactions, and which of
them the vendor policy would restart after each, against which ones really run old code.

Python, Perl, Ruby and Node daemons (systemd services) with a packaged script and unowned ones
(``/usr/local``, ``python3 -c``, ``python3 -m``), and one idle daemon per language that imports
none of the test modules.  Each step is one apt transaction (the project's hooks record it);
then ``restartctl plan --json --packages <the step's packages>`` (the hook's scope) says which
services the vendor policy would restart.  ``run_matrix`` also serves to measure another
checkout on the same steps.  Measured (2026-12-03): before issue 12 (5e44ed7) the vendor policy
planned 34 restarts over these ten steps where 11 were needed (23 needless, none missed); now
it plans exactly the 11.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.support.checkout import install_hooks
from tests.support.container import Container, wait_for
from tests.support.debs import build_deb, compile_c

pytestmark = pytest.mark.real

DIST = "/usr/lib/python3/dist-packages"
LIST_ONLY = '[settings]\nmode = "list"\nunattended_mode = "list"\n'
CEXT_PY = '''"""rctl_cext {v}: a module that maps its own shared library (as a C extension does)."""
import ctypes
import os

_lib = ctypes.CDLL(os.path.join(os.path.dirname(__file__), "librctlcext.so"))
'''
PY_LOOP = "import time\nwhile True:\n    time.sleep(3600)\n"
# service -> (ExecStart, the module packages it really uses)
SERVICES: dict[str, tuple[str, frozenset[str]]] = {
    "py-owned": ("/usr/bin/rctl-pyapp", frozenset({"rctl-pyimp", "rctl-pycext"})),
    "py-unowned": ("/usr/bin/python3 /usr/local/bin/pyd.py", frozenset({"rctl-pyimp", "rctl-pycext"})),
    "py-c": ("/usr/bin/python3 -c 'import rctl_imp, rctl_cext, time; time.sleep(1e9)'",
             frozenset({"rctl-pyimp", "rctl-pycext"})),
    "py-m": ("/usr/bin/python3 -m rctl_localm", frozenset({"rctl-pyimp", "rctl-pycext"})),
    "py-idle": ("/usr/bin/python3 /usr/local/bin/idle.py", frozenset()),
    "pl": ("/usr/bin/perl /usr/local/bin/pld.pl", frozenset({"rctl-plimp"})),
    "pl-idle": ("/usr/bin/perl /usr/local/bin/idle.pl", frozenset()),
    "rb": ("/usr/bin/ruby /usr/local/bin/rbd.rb", frozenset({"rctl-rbimp"})),
    "js": ("/usr/bin/node /usr/local/bin/jsd.js", frozenset({"rctl-jsimp"})),
}
LOCAL_FILES = {
    "/usr/local/bin/pyd.py": "import rctl_imp\nimport rctl_cext\n" + PY_LOOP,
    "/usr/local/lib/python{version}/dist-packages/rctl_localm.py": "import rctl_imp\nfrom rctl_cext import _lib\n"
                                                                  + PY_LOOP,
    "/usr/local/bin/idle.py": PY_LOOP,
    "/usr/local/bin/pld.pl": "use strict;\nuse RctlImp;\nsleep 3600 while 1;\n",
    "/usr/local/bin/idle.pl": "use strict;\nsleep 3600 while 1;\n",
    "/usr/local/bin/rbd.rb": "require 'rctl_rbimp'\nsleep\n",
    "/usr/local/bin/jsd.js": 'const m = require("/usr/share/nodejs/rctl-jsimp");\nsetInterval(() => {}, 1 << 30);\n',
}
# (what the step does, apt arguments, packages in the hook's scope)
STEPS: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("reinstall", ("install", "--reinstall", "rctl-pyimp=1.0"), ("rctl-pyimp",)),
    ("unused module upgraded", ("install", "rctl-pyunused=2.0"), ("rctl-pyunused",)),
    ("new module installed", ("install", "rctl-pynew=1.0"), ("rctl-pynew",)),
    ("identical-content upgrade", ("install", "rctl-pyimp=1.1"), ("rctl-pyimp",)),
    ("imported module upgraded", ("install", "rctl-pyimp=2.0"), ("rctl-pyimp",)),
    ("C extension upgraded", ("install", "rctl-pycext=2.0"), ("rctl-pycext",)),
    ("unused Perl module upgraded", ("install", "rctl-plunused=2.0"), ("rctl-plunused",)),
    ("imported Perl module upgraded", ("install", "rctl-plimp=2.0"), ("rctl-plimp",)),
    ("imported Ruby module upgraded", ("install", "rctl-rbimp=2.0"), ("rctl-rbimp",)),
    ("imported Node module upgraded", ("install", "rctl-jsimp=2.0"), ("rctl-jsimp",)),
]
INITIAL = ("rctl-pyimp=1.0", "rctl-pyunused=1.0", "rctl-pycext=1.0", "rctl-pyapp=1.0", "rctl-plimp=1.0",
           "rctl-plunused=1.0", "rctl-rbimp=1.0", "rctl-jsimp=1.0")


def build(outdir: Path) -> list[Path]:
    """Every version of the matrix's packages (1.1 of rctl-pyimp has 1.0's very content)."""
    debs = []
    for v in ("1.0", "2.0"):
        so = compile_c(f'const char *rctl_cext_version(void) {{ return "{v}"; }}\n',
                       outdir / f"build-{v}" / "librctlcext.so", shared=True, soname="librctlcext.so")
        specs: dict[str, tuple[dict[str, bytes | Path], str]] = {
            "rctl-pyunused": ({f"{DIST}/rctl_unused/__init__.py": f'VERSION = "{v}"\n'.encode()}, "python3"),
            "rctl-pycext": ({f"{DIST}/rctl_cext/__init__.py": CEXT_PY.format(v=v).encode(),
                             f"{DIST}/rctl_cext/librctlcext.so": so}, "python3"),
            "rctl-pyapp": ({"/usr/bin/rctl-pyapp": f"#!/usr/bin/python3\n# {v}\nimport rctl_imp\nimport rctl_cext\n"
                            .encode() + PY_LOOP.encode()}, "python3, rctl-pyimp, rctl-pycext"),
            "rctl-plimp": ({"/usr/share/perl5/RctlImp.pm": f'package RctlImp;\nour $V = "{v}";\n1;\n'.encode()},
                           "perl"),
            "rctl-plunused": ({"/usr/share/perl5/RctlUnused.pm": f'package RctlUnused;\nour $V = "{v}";\n1;\n'
                               .encode()}, "perl"),
            "rctl-rbimp": ({"/usr/lib/ruby/vendor_ruby/rctl_rbimp.rb": f'RCTL_RBIMP = "{v}"\n'.encode()}, "ruby"),
            "rctl-jsimp": ({"/usr/share/nodejs/rctl-jsimp/index.js": f'module.exports = "{v}";\n'.encode()},
                           "nodejs"),
        }
        if v == "1.0":
            specs["rctl-pynew"] = ({f"{DIST}/rctl_new/__init__.py": b'VERSION = "1.0"\n'}, "python3")
        for name, (files, depends) in specs.items():
            debs.append(build_deb(outdir, name, v, files, depends=depends,
                                  arch=None if name == "rctl-pycext" else "all"))
    for v in ("1.0", "1.1", "2.0"):
        imp = f'VERSION = "{"2.0" if v == "2.0" else "1.0"}"\n'.encode()
        debs.append(build_deb(outdir, "rctl-pyimp", v, {f"{DIST}/rctl_imp/__init__.py": imp}, depends="python3",
                              arch="all"))
    return debs


def apt(c: Container, cfg: str, *args: str) -> str:
    r = c.exec(["apt-get", "-q", "-o", "Dpkg::Use-Pty=0", *args], timeout=180,
               env={"APT_CONFIG": cfg, "DEBIAN_FRONTEND": "noninteractive"})
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def run_matrix(c: Container, cfg: str, rctl: Sequence[str]) -> list[tuple[str, set[str], set[str], set[str]]]:
    """Per step: the services the vendor policy would restart, those it names at all (restart, list,
    notify), and those that really run old code."""
    apt(c, cfg, "install", *INITIAL)
    version = c.check(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).strip()
    for path, text in LOCAL_FILES.items():
        c.write_file(path.format(version=version), text, mode=0o755)
    for name, (exec_start, _) in SERVICES.items():
        c.write_file(f"/etc/systemd/system/{name}.service", f"[Service]\nExecStart={exec_start}\n")
    c.systemctl("daemon-reload")
    for name in SERVICES:
        c.systemctl("start", f"{name}.service")
    for name in SERVICES:
        c.wait_active(f"{name}.service")
    time.sleep(2)  # every module imported and every change later than every start (the journal has seconds)
    results = []
    for what, args, scope in STEPS:
        apt(c, cfg, *args)
        r = c.exec([*rctl, "plan", "--json", "--packages", *scope])
        assert r.returncode in (0, 1), r.stdout + r.stderr
        doc = json.loads(r.stdout)
        named = {a["unit"].removesuffix(".service"): a["action"] for a in doc["actions"]
                 if a["unit"] and a["unit"].removesuffix(".service") in SERVICES}
        planned = {n for n, action in named.items() if action == "restart"}
        needed = {n for n, (_, uses) in SERVICES.items() if uses & set(scope) and "install" not in what
                  and what not in ("reinstall", "identical-content upgrade")}
        results.append((what, planned, set(named), needed))
    return results


@pytest.fixture
def matrix_host(container_factory: Callable[..., Container], tmp_path: Path) -> tuple[Container, str]:
    c = container_factory("rctl-matrix", boot=True)
    install_hooks(c)
    c.write_file("/etc/restartctl/policy.toml", LIST_ONLY)
    c.check(["rm", "-f", "/usr/sbin/policy-rc.d"])
    cfg = c.local_repo(build(tmp_path / "debs"))
    apt(c, cfg, "update")
    return c, cfg


def test_the_vendor_policy_restarts_exactly_what_runs_old_code(matrix_host: tuple[Container, str]) -> None:
    c, cfg = matrix_host
    results = run_matrix(c, cfg, ["/usr/sbin/restartctl"])
    assert [(w, p, a) for w, p, a, _ in results] == [(w, n, n) for w, _, _, n in results], results
    for name in SERVICES:  # nothing was restarted: the same processes ran through every step
        wait_for(lambda name=name: c.show(f"{name}.service", "ActiveState") == "active", f"{name} active", 5)


# Unowned Python daemons whose script becomes hostile after they started (the process keeps running
# what it read): what the static import reader meets on a real host.  Each is replaced in place;
# "exec" really imports the upgraded module, through code built at run time.
HOSTILE_SCRIPT = "import time\nif False:\n    import os\n    os.system('touch /run/rctl-canary')\n" + PY_LOOP
HOSTILE: dict[str, tuple[str, ...]] = {   # service -> shell commands run on its script (as {s}) after start
    "h-fifo": ("rm {s}", "mkfifo {s}"),
    "h-device": ("rm {s}", "mknod {s} c 1 3"),
    "h-sparse": ("truncate -s 1G {s}",),
    # h-symlink and h-private run as rctlh: root must never read for her what she cannot read (had it
    # read root's /root/secret.py, it would see "import rctl_imp" and restart; h-private's own script,
    # imports nothing of ours: it would not be named at all)
    "h-symlink": ("rm {s}", "ln -s /root/secret.py {s}"),
    "h-private": ("chmod 0600 {s}",),
    "h-nonutf8": ("printf 'import rctl_imp\\n\\377\\376 = 1\\n' > {s}",),
    "h-deep": ("/usr/bin/python3 -c \"print('x = ' + '(' * 100000 + ')' * 100000)\" > {s}",),
    "h-exec": (),
    "h-plain": (),
}


def test_hostile_scripts_of_running_daemons_are_listed_never_read_unsafely(
        matrix_host: tuple[Container, str]) -> None:
    """No hang, no crash, no leak, nothing executed; what cannot be read is listed, never restarted."""
    c, cfg = matrix_host
    apt(c, cfg, "install", "rctl-pyimp=1.0")
    c.check(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "rctlh"])
    c.check(["install", "-d", "-m", "0755", "/srv/hostile"])
    c.write_file("/root/secret.py", "import rctl_imp\nSECRET = 'rctl-private-marker'\n")
    c.check(["chmod", "0700", "/root"])
    c.check(["chmod", "0600", "/root/secret.py"])
    for name in HOSTILE:
        body = "exec('import ' + 'rctl_imp')\n" if name == "h-exec" else "SECRET = 'rctl-private-marker'\n"
        c.write_file(f"/srv/hostile/{name}.py", body + HOSTILE_SCRIPT)
        user = "User=rctlh\n" if name in ("h-private", "h-symlink") else ""
        c.write_file(f"/etc/systemd/system/{name}.service",
                     f"[Service]\n{user}ExecStart=/usr/bin/python3 /srv/hostile/{name}.py\n")
    c.systemctl("daemon-reload")
    c.systemctl("start", *(f"{n}.service" for n in HOSTILE))
    pids = {}
    for name in HOSTILE:
        c.wait_active(f"{name}.service")
        pids[name] = c.main_pid(f"{name}.service")
    time.sleep(2)  # imports done; the upgrade comes clearly later
    for name, commands in HOSTILE.items():
        for command in commands:
            c.check(["/bin/sh", "-c", command.format(s=f"/srv/hostile/{name}.py")])
    apt(c, cfg, "install", "rctl-pyimp=2.0")

    scan = c.exec(["/usr/sbin/restartctl", "scan", "--all", "--json"], timeout=120)
    plan = c.exec(["/usr/sbin/restartctl", "plan", "--json", "--packages", "rctl-pyimp"], timeout=120)
    assert scan.returncode in (0, 1) and plan.returncode in (0, 1), scan.stderr + plan.stderr
    assert "Traceback" not in scan.stderr + plan.stderr
    assert "rctl-private-marker" not in scan.stdout + plan.stdout + scan.stderr + plan.stderr
    actions = {a["unit"].removesuffix(".service"): a for a in json.loads(plan.stdout)["actions"]
               if a["unit"] and a["unit"].removesuffix(".service") in HOSTILE}
    unreadable = set(HOSTILE) - {"h-plain"}
    assert set(actions) == unreadable, actions          # the readable one that imports nothing: not named
    for name, a in actions.items():
        assert a["action"] == "notify" and "search path" in a["reason"], (name, a)  # listed, never restarted
    evidence = {p["unit"]["name"].removesuffix(".service"): {f["evidence"] for f in p["stale"]}
                for p in json.loads(scan.stdout)["processes"]
                if p["unit"] and p["unit"]["name"].removesuffix(".service") in HOSTILE}
    assert all(evidence[n] == {"search-path"} for n in unreadable), evidence
    assert c.exec(["test", "-e", "/run/rctl-canary"]).returncode == 1  # nothing of any script was run
    assert {n: c.main_pid(f"{n}.service") for n in HOSTILE} == pids  # nothing restarted, nothing killed
