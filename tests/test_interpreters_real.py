"""Interpreted daemons after real dpkg upgrades, inside a systemd container: restart/interpreters.py.

Real packages built here (tests/support/debs.build_deb), each in versions 1.0 and 2.0:

- ``rctl-pyd`` (A): ``/usr/bin/rctl-pyd``, a ``#!/usr/bin/python3`` daemon (a service) that imports
  ``rctl_mod`` from ``rctl-pymod`` (B, pure Python) and ``rctl_native`` from ``rctl-pynative`` (E,
  which loads its own shared library with ctypes, as cffi/ctypes packages do);
- ``rctl-pyother``: a Python daemon that depends on none of them (the unrelated process);
- ``rctl-pld`` (C): ``#!/usr/bin/perl -w``, ``use RctlMod`` from ``rctl-plmod`` (D,
  ``/usr/share/perl5``), with POD after ``__END__`` (so perl keeps the script open, as Perl
  daemons with embedded documentation do);
- ``rctl-shd``: a ``#!/bin/sh`` loop (dash reads scripts as it goes and keeps them open);
- ``rctl-jsd``: ``#!/usr/bin/node``, requiring ``rctl-jsmod`` (``/usr/share/nodejs``) by its path;
- ``rctl-rbd``: ``#!/usr/bin/ruby``, requiring ``rctl_rbmod`` from ``rctl-rbmod`` (``vendor_ruby``);
- ``rctl-jd``: ``java -jar /usr/share/java/rctl-jd.jar``, whose manifest puts ``rctl-lib.jar`` (from
  ``rctl-jlib``) on its class path; the JVM keeps both jars open.

They are upgraded one package at a time; after each step the module's entry point runs inside
the container, as root, the way the tool runs (``/usr/bin/python3`` with ``PYTHONPATH`` = the
checkout), and its findings are recorded.  Hostile processes of user ``nobody`` run alongside:
copies of the Python binary named ``python3`` in ``/home`` and ``/tmp``, an unowned interpreter
path in ``/usr/bin``, a script path with shell syntax, and real interpreters with a planted
``PYTHONPATH``/``PERL5LIB``/``PERL5OPT``.  Every planted payload leaves a canary file if root ever
runs it.  Most tests call the stage directly; the last one goes through ``restartctl plan``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from restart.interpreters import TOLERANCE
from tests.support.container import Container, wait_for
from tests.support.debs import build_deb, compile_c, compile_jar

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parent.parent
DIST = "/usr/lib/python3/dist-packages"
MOD = f"{DIST}/rctl_mod/__init__.py"
NATIVE_SO = f"{DIST}/rctl_native/librctlnative.so"
PLMOD = "/usr/share/perl5/RctlMod.pm"
JSMOD = "/usr/share/nodejs/rctl-jsmod/index.js"
RBMOD = "/usr/lib/ruby/vendor_ruby/rctl_rbmod.rb"
JLIB, JD = "/usr/share/java/rctl-lib.jar", "/usr/share/java/rctl-jd.jar"
# The host's Python (python3.X) and Java runtime package (openjdk-N-jre-headless): each release has its own.
PYTHON = os.path.realpath("/usr/bin/python3")


def java_runtime_package() -> str:
    """The package that ships the host's java (the containers overlay the host's /)."""
    java = os.path.realpath("/usr/bin/java")
    out = subprocess.run(["/usr/bin/dpkg-query", "-S", java], capture_output=True, text=True, timeout=60,
                         check=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}).stdout
    return out.split(":", 1)[0].strip()

CANARY = "/srv/rctl/canary"
EVIL = "/srv/rctl/evil"
HOSTILE_SCRIPT = "/tmp/$(touch /srv/rctl/canary/CANARY-shell)"
SERVICES = ("rctl-pyd", "rctl-pyother", "rctl-pld", "rctl-shd", "rctl-jsd", "rctl-rbd", "rctl-jd")
STEPS = ("rctl-pymod", "rctl-pynative", "rctl-plmod", "rctl-pyd", "rctl-pld", "rctl-shd", "rctl-jsmod", "rctl-jsd",
         "rctl-rbmod", "rctl-rbd", "rctl-jlib", "rctl-jd")
SETPRIV = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]

PYD = '''#!/usr/bin/python3
"""rctl-pyd {v}: a Python daemon of the restartctl tests."""
import signal
import sys

import rctl_mod
import rctl_native

if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as f:
        f.write(rctl_mod.VERSION + " " + rctl_native.version() + "\\n")
while True:
    signal.pause()
'''
PYOTHER = '''#!/usr/bin/python3
"""rctl-pyother {v}: a Python daemon that uses none of the test modules."""
import signal
import sys

if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as f:
        f.write("ready\\n")
while True:
    signal.pause()
'''
NATIVE_PY = '''"""rctl_native {v}: a module that loads its own shared library."""
import ctypes
import os

_lib = ctypes.CDLL(os.path.join(os.path.dirname(__file__), "librctlnative.so"))
_lib.rctl_native_version.restype = ctypes.c_char_p


def version():
    return _lib.rctl_native_version().decode()
'''
NATIVE_C = 'const char *rctl_native_version(void) { return "%s"; }\n'
PLD = '''#!/usr/bin/perl -w
# rctl-pld {v}: a Perl daemon of the restartctl tests.
use strict;
use RctlMod;
if (@ARGV) {{ open(my $f, '>', $ARGV[0]) or die; print $f RctlMod::version(), "\\n"; close($f); }}
sleep 3600 while 1;
__END__

=head1 NAME

rctl-pld - a Perl daemon of the restartctl tests ({v})

=cut
'''
PLMOD_PM = 'package RctlMod;\nuse strict;\nsub version {{ return "{v}"; }}\n1;\n'
SHD = '#!/bin/sh\n# rctl-shd {v}\n[ $# -gt 0 ] && echo ready > "$1"\nwhile :; do sleep 3600; done\n'
JSD = """#!/usr/bin/node
// rctl-jsd {v}: a Node daemon of the restartctl tests.
const mod = require("/usr/share/nodejs/rctl-jsmod");
if (process.argv.length > 2) require("fs").writeFileSync(process.argv[2], mod.version() + "\\n");
setInterval(() => {{}}, 1 << 30);
"""
JSMOD_JS = 'module.exports = {{ version: () => "{v}" }};\n'
RBD = """#!/usr/bin/ruby
# rctl-rbd {v}: a Ruby daemon of the restartctl tests.
require "rctl_rbmod"
File.write(ARGV[0], RctlRbMod.version + "\\n") unless ARGV.empty?
sleep
"""
RBMOD_RB = 'module RctlRbMod\n  def self.version\n    "{v}"\n  end\nend\n'
JLIB_JAVA = 'public class RctlLib {{ public static String version() {{ return "{v}"; }} }}\n'
JD_JAVA = """import java.nio.file.Files;
import java.nio.file.Path;

public class RctlD {{  // rctl-jd {v}: a Java daemon of the restartctl tests
    public static void main(String[] args) throws Exception {{
        String v = RctlLib.version();
        if (args.length > 0) Files.writeString(Path.of(args[0]), v + "\\n");
        Thread.sleep(Long.MAX_VALUE);
    }}
}}
"""
UNIT = "[Unit]\nDescription={name}\n\n[Service]\nExecStart=/usr/bin/{name} /run/{name}.ready\n"

# Payloads a hostile user plants: harmless when she runs them, a canary when root does.
PY_CANARY = ("import os\nif os.geteuid() == 0:\n"
             f"    open('{CANARY}/CANARY-python-' + __name__, 'w').close()\n")
PL_CANARY = (f'package RctlEvil;\nif ($> == 0) {{ open(my $f, ">", "{CANARY}/CANARY-perl"); }}\n'
             'sub version { return "planted"; }\n1;\n')
RB_CANARY = f'File.write("{CANARY}/CANARY-ruby-" + __FILE__.tr("/", "_"), "") if Process.euid == 0\n'
SLEEPER_PY = "import signal\nwhile True:\n    signal.pause()\n"

# Run inside the container, as root: the scanner (for its mapping/fd findings) and the module.
SNIPPET = """
import json, os, sys
from pathlib import Path
from restart import interpreters, observation, packages, processes, procfs, scan
from restart.roots import Roots
db = packages.DpkgDatabase(Path("/var/lib/dpkg"))
names = json.loads(sys.argv[1])
in_scope = db.files_of(names) if names is not None else None
selection = processes.Selection(aliases=db.aliases, only=frozenset(in_scope) if in_scope is not None else None,
                                skip_prefixes=scan.never_packaged(Roots().data))
stale = {p.pid: p.stale for p in processes.scan(Path("/proc"), selection).processes}
ctx = interpreters.Context(db, in_scope=in_scope)
observed = []  # every interpreter process, unfiltered by the selection (a script in /tmp too)
for name in os.listdir("/proc"):
    if not name.isdigit() or int(name) == os.getpid():
        continue
    try:
        dfd = os.open(f"/proc/{name}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        continue
    try:
        seen = observation.observe(dfd, int(name), procfs.exe_of(dfd), ctx.host)
    except (procfs.ProcessGone, OSError):
        seen = None
    finally:
        os.close(dfd)
    if seen is not None:
        observed.append(seen)
found = interpreters.judge(observed, ctx, stale)
print(json.dumps({"found": {pid: [list(f) for f in fs] for pid, fs in found.items()},
                  "stale": {pid: [list(f) for f in fs] for pid, fs in stale.items()}}))
"""

Finding = tuple[str, str, str, str]  # kind, path, confidence, evidence


def build(outdir: Path, v: str) -> dict[str, Path]:
    """The test packages of version ``v``: name -> .deb."""
    native = compile_c(NATIVE_C % v, outdir / f"build-{v}" / "librctlnative.so", shared=True,
                       soname="librctlnative.so")
    jre = java_runtime_package()

    def unit(name: str, exec_start: str | None = None) -> dict[str, bytes]:
        text = UNIT.format(name=name)
        if exec_start is not None:
            text = text.replace(f"ExecStart=/usr/bin/{name}", f"ExecStart={exec_start}")
        return {f"/lib/systemd/system/{name}.service": text.encode()}

    jlib = compile_jar({"RctlLib": JLIB_JAVA.format(v=v)}, outdir / f"build-{v}" / "rctl-lib.jar")
    jd = compile_jar({"RctlD": JD_JAVA.format(v=v)}, outdir / f"build-{v}" / "rctl-jd.jar", class_path=[jlib],
                     main="RctlD", manifest_class_path="rctl-lib.jar")

    specs: dict[str, tuple[dict[str, bytes | Path], str]] = {
        "rctl-pymod": ({MOD: f'"""rctl_mod {v}"""\nVERSION = "{v}"\n'.encode()}, "python3"),
        "rctl-pynative": ({f"{DIST}/rctl_native/__init__.py": NATIVE_PY.format(v=v).encode(), NATIVE_SO: native},
                          "python3"),
        "rctl-pyd": ({"/usr/bin/rctl-pyd": PYD.format(v=v).encode(), **unit("rctl-pyd")},
                     "python3, rctl-pymod, rctl-pynative"),
        "rctl-pyother": ({"/usr/bin/rctl-pyother": PYOTHER.format(v=v).encode(), **unit("rctl-pyother")}, "python3"),
        "rctl-plmod": ({PLMOD: PLMOD_PM.format(v=v).encode()}, "perl"),
        "rctl-pld": ({"/usr/bin/rctl-pld": PLD.format(v=v).encode(), **unit("rctl-pld")}, "perl, rctl-plmod"),
        "rctl-shd": ({"/usr/bin/rctl-shd": SHD.format(v=v).encode(), **unit("rctl-shd")}, "dash"),
        "rctl-jsmod": ({JSMOD: JSMOD_JS.format(v=v).encode()}, "nodejs"),
        "rctl-jsd": ({"/usr/bin/rctl-jsd": JSD.format(v=v).encode(), **unit("rctl-jsd")}, "nodejs, rctl-jsmod"),
        "rctl-rbmod": ({RBMOD: RBMOD_RB.format(v=v).encode()}, "ruby"),
        "rctl-rbd": ({"/usr/bin/rctl-rbd": RBD.format(v=v).encode(), **unit("rctl-rbd")}, "ruby, rctl-rbmod"),
        "rctl-jlib": ({JLIB: jlib}, jre),
        "rctl-jd": ({JD: jd, **unit("rctl-jd", f"/usr/bin/java -Xmx32m -jar {JD}")}, f"{jre}, rctl-jlib"),
    }
    return {name: build_deb(outdir, name, v, files, depends=depends, arch="all" if name != "rctl-pynative" else None)
            for name, (files, depends) in specs.items()}


def run_module(c: Container, scope: list[str] | None = None) -> dict[str, Any]:
    r = c.exec(["/usr/bin/python3", "-c", SNIPPET, json.dumps(scope)], env={"PYTHONPATH": str(REPO)})
    assert r.returncode == 0 and r.stderr == "", f"exit {r.returncode}:\n{r.stdout}\n{r.stderr}"
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def findings(doc: dict[str, Any], pid: int) -> set[Finding]:
    return {(f[0], f[1], f[2], f[3]) for f in doc["found"].get(str(pid), [])}


def spawn_ready(c: Container, argv: list[str], ready: str, env: dict[str, str] | None = None) -> int:
    pid = c.spawn(argv, env=env)
    wait_for(lambda: c.exec(["test", "-e", ready]).returncode == 0, f"{argv} to be ready", 20)
    return pid


@pytest.fixture(scope="module")
def story(systemd_container: Container, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Install 1.0, start everything, then upgrade one package at a time, recording the findings."""
    c = systemd_container
    out = tmp_path_factory.mktemp("rctl-interp-debs")
    v1, v2 = build(out, "1.0"), build(out, "2.0")
    c.install_debs(list(v1.values()))
    c.systemctl("daemon-reload")
    pids: dict[str, int] = {}
    for name in SERVICES:
        c.systemctl("start", f"{name}.service")
        c.wait_active(f"{name}.service")
        wait_for(lambda name=name: c.exec(["test", "-s", f"/run/{name}.ready"]).returncode == 0, f"{name} ready", 20)
        pids[name] = c.main_pid(f"{name}.service")

    # The hostile user's side (nobody; /tmp is the container's own tmpfs).
    c.check(["install", "-d", "-m", "0755", CANARY, f"{EVIL}/py", f"{EVIL}/pl", f"{EVIL}/rb", "/home/mallory",
             "/tmp/usr/bin", "/tmp/ready"])
    c.check(["chmod", "1777", "/tmp/ready"])
    for path in ("/home/mallory/python3", f"/tmp{PYTHON}", "/usr/bin/python3.99"):
        c.check(["cp", PYTHON, path])  # a real, working Python under a bait name
    for name in ("sitecustomize.py", "usercustomize.py"):
        c.write_file(f"{EVIL}/py/{name}", PY_CANARY)
    c.write_file(f"{EVIL}/py/rctl_mod/__init__.py", PY_CANARY + 'VERSION = "planted"\n')
    c.write_file(f"{EVIL}/pl/RctlMod.pm", PL_CANARY.replace("RctlEvil", "RctlMod"))
    c.write_file(f"{EVIL}/pl/RctlEvil.pm", PL_CANARY)
    c.write_file(f"{EVIL}/rb/rctl_rbmod.rb", RB_CANARY + RBMOD_RB.format(v="planted"))
    c.write_file(f"{EVIL}/rb/rctl_evil.rb", RB_CANARY)
    c.write_file(HOSTILE_SCRIPT, SLEEPER_PY + "\n", mode=0o755)
    pids["bait-home"] = spawn_ready(c, [*SETPRIV, "/home/mallory/python3", "/usr/bin/rctl-pyd", "/tmp/ready/home"],
                                    "/tmp/ready/home")
    pids["bait-tmp"] = spawn_ready(c, [*SETPRIV, f"/tmp{PYTHON}", "/usr/bin/rctl-pyd", "/tmp/ready/tmp"],
                                   "/tmp/ready/tmp")
    pids["unowned-exe"] = spawn_ready(c, [*SETPRIV, "/usr/bin/python3.99", "/usr/bin/rctl-pyd",
                                          "/tmp/ready/unowned"], "/tmp/ready/unowned")
    pids["shell-syntax"] = c.spawn([*SETPRIV, "/usr/bin/python3", HOSTILE_SCRIPT])
    pids["pythonpath"] = spawn_ready(
        c, [*SETPRIV, "/usr/bin/python3", "/usr/bin/rctl-pyd", "/tmp/ready/pythonpath"], "/tmp/ready/pythonpath",
        env={"PYTHONPATH": f"{EVIL}/py", "PYTHONSTARTUP": f"{EVIL}/py/sitecustomize.py"})
    pids["perl5lib"] = spawn_ready(
        c, [*SETPRIV, "/usr/bin/perl", "/usr/bin/rctl-pld", "/tmp/ready/perl"], "/tmp/ready/perl",
        env={"PERL5LIB": f"{EVIL}/pl", "PERL5OPT": "-MRctlEvil"})
    pids["rubylib"] = spawn_ready(
        c, [*SETPRIV, "/usr/bin/ruby", "/usr/bin/rctl-rbd", "/tmp/ready/ruby"], "/tmp/ready/ruby",
        env={"RUBYLIB": f"{EVIL}/rb", "RUBYOPT": "-rrctl_evil"})
    # A change to the hostile script after its process started: a ctime the rules see.
    wait_for(lambda: c.exec(["test", "-d", f"/proc/{pids['shell-syntax']}"]).returncode == 0,
             "the shell-syntax one", 20)
    # Changes within TOLERANCE of a start never count; the upgrades below must come later.
    time.sleep(TOLERANCE + 0.25)
    c.check(["chmod", "0775", HOSTILE_SCRIPT])

    docs = {"before": run_module(c)}
    for step in STEPS:
        c.install_debs([v2[step]])
        docs[step] = run_module(c)
        if step == "rctl-pymod":
            docs["rctl-pymod scoped"] = run_module(c, ["rctl-pymod"])
            docs["rctl-pyother scoped"] = run_module(c, ["rctl-pyother"])
    canaries = c.check(["ls", "-A", CANARY])
    for name, pid in pids.items():
        assert c.exec(["test", "-d", f"/proc/{pid}"]).returncode == 0, f"{name} (pid {pid}) died"
    planted = c.check(["cat", "/tmp/ready/ruby"]).strip()  # what the RUBYLIB process really loaded
    return {"pids": pids, "docs": docs, "canaries": canaries, "ruby_loaded": planted}


def ours(story: dict[str, Any], step: str, name: str) -> set[Finding]:
    return findings(story["docs"][step], story["pids"][name])


def test_nothing_before_any_upgrade(story: dict[str, Any]) -> None:
    quiet = [name for name in story["pids"] if name != "shell-syntax"]
    assert {name: ours(story, "before", name) for name in quiet if ours(story, "before", name)} == {}


def test_python_module_upgrade_is_likely(story: dict[str, Any]) -> None:
    """B upgraded: the daemon whose package depends on it imports its old copy (no file proves it)."""
    assert ours(story, "rctl-pymod", "rctl-pyd") == {("module", MOD, "likely", "depends")}


def test_unrelated_python_process_is_not_flagged(story: dict[str, Any]) -> None:
    for step in STEPS:
        assert ours(story, step, "rctl-pyother") == set(), step


def test_scope_restricts_modules_to_the_transaction(story: dict[str, Any]) -> None:
    assert ours(story, "rctl-pymod scoped", "rctl-pyd") == {("module", MOD, "likely", "depends")}
    assert ours(story, "rctl-pyother scoped", "rctl-pyd") == set()


def test_mapped_native_module_is_certain(story: dict[str, Any]) -> None:
    """E upgraded: its library, mapped by the daemon, proves use; no likely duplicate for E."""
    found = ours(story, "rctl-pynative", "rctl-pyd")
    assert ("module", NATIVE_SO, "certain", "replaced") in found
    assert found == {("module", MOD, "likely", "depends"), ("module", NATIVE_SO, "certain", "replaced")}


def test_python_script_upgrade_is_likely_never_certain(story: dict[str, Any]) -> None:
    """A upgraded: python closed its script after compiling it, so only the ctime speaks."""
    found = ours(story, "rctl-pyd", "rctl-pyd")
    assert ("script", "/usr/bin/rctl-pyd", "likely", "newer") in found
    assert not any(f[0] == "script" and f[2] == "certain" for f in found)


def test_perl_module_upgrade_is_likely(story: dict[str, Any]) -> None:
    assert ours(story, "rctl-plmod", "rctl-pld") == {("module", PLMOD, "likely", "depends")}
    assert ours(story, "rctl-pymod", "rctl-pld") == set()


def test_perl_script_held_open_is_certain(story: dict[str, Any]) -> None:
    """C upgraded: perl keeps a script with __END__ open; the inode it holds is gone."""
    found = ours(story, "rctl-pld", "rctl-pld")
    assert ("script", "/usr/bin/rctl-pld", "certain", "unlinked") in found
    assert ("module", PLMOD, "likely", "depends") in found


def test_shell_script_held_open_is_certain(story: dict[str, Any]) -> None:
    assert ours(story, "rctl-pld", "rctl-shd") == set()
    assert ours(story, "rctl-shd", "rctl-shd") == {("script", "/usr/bin/rctl-shd", "certain", "unlinked")}


@pytest.mark.parametrize(("daemon", "module_package", "module", "unrelated_steps"), [
    ("rctl-jsd", "rctl-jsmod", JSMOD, ("before", "rctl-pymod", "rctl-plmod", "rctl-shd")),
    ("rctl-rbd", "rctl-rbmod", RBMOD, ("before", "rctl-pymod", "rctl-jsmod")),
])
def test_node_and_ruby_module_and_script_upgrades_are_likely(story: dict[str, Any], daemon: str, module_package: str,
                                                             module: str, unrelated_steps: tuple[str, ...]) -> None:
    """Node and Ruby read their script and modules and close them: the Depends closure and ctimes speak."""
    for step in unrelated_steps:
        assert ours(story, step, daemon) == set(), step
    assert ours(story, module_package, daemon) == {("module", module, "likely", "depends")}
    found = ours(story, daemon, daemon)
    assert ("script", f"/usr/bin/{daemon}", "likely", "newer") in found
    assert ("module", module, "likely", "depends") in found


def test_planted_rubylib_changes_nothing(story: dict[str, Any]) -> None:
    """The process loads the planted rctl_rbmod (and RUBYOPT's library); the closure decides."""
    assert story["ruby_loaded"] == "planted"
    assert ours(story, "rctl-pymod", "rubylib") == set()
    assert ours(story, "rctl-rbmod", "rubylib") == {("module", RBMOD, "likely", "depends")}


def test_java_jars_held_open_are_certain(story: dict[str, Any]) -> None:
    """The JVM keeps its jars open: the replaced library jar and main jar are proven by inode."""
    for step in ("before", "rctl-pymod", "rctl-jsd"):
        assert ours(story, step, "rctl-jd") == set(), step
    assert ours(story, "rctl-jlib", "rctl-jd") == {("module", JLIB, "certain", "unlinked")}
    assert ours(story, "rctl-jd", "rctl-jd") == {("script", JD, "certain", "unlinked"),
                                                 ("module", JLIB, "certain", "unlinked")}


def test_lookalike_interpreters_are_not_interpreters(story: dict[str, Any]) -> None:
    """Copies of python named python3 in /home and /tmp, and a /usr/bin/python3.99 no package owns."""
    for step in story["docs"]:
        for name in ("bait-home", "bait-tmp", "unowned-exe"):
            assert ours(story, step, name) == set(), (step, name)


def test_hostile_processes_run_nothing_and_get_no_false_certainty(story: dict[str, Any]) -> None:
    assert story["canaries"] == ""
    for step, doc in story["docs"].items():
        for name in ("shell-syntax", "pythonpath", "perl5lib", "rubylib"):
            pid = story["pids"][name]
            proven = {s[1] for s in doc["stale"].get(str(pid), [])}
            for kind, path, confidence, _ in findings(doc, pid):
                assert confidence == "likely" or path in proven, (step, name, kind, path)


def test_hostile_script_path_is_looked_at_never_run(story: dict[str, Any]) -> None:
    """The shell-syntax script changed after its start: reported (unowned, likely), nothing ran."""
    assert ("script", HOSTILE_SCRIPT, "likely", "newer") in ours(story, "before", "shell-syntax")


def test_planted_pythonpath_changes_nothing(story: dict[str, Any]) -> None:
    """The process imports the planted rctl_mod, but the closure of its script's package decides."""
    assert ours(story, "rctl-pymod", "pythonpath") == {("module", MOD, "likely", "depends")}


def test_the_cli_reports_and_plans_interpreted_daemons(story: dict[str, Any], systemd_container: Container) -> None:
    """End to end through `restartctl plan --json`: the interpreted daemons whose script or modules
    were upgraded get their unit restarted; the unrelated and the hostile ones get nothing."""
    r = systemd_container.exec(["/usr/bin/python3", "-m", "restart", "plan", "--json"], env={"PYTHONPATH": str(REPO)})
    assert r.returncode == 1 and r.stderr == "", r.stderr
    doc = json.loads(r.stdout)
    actions = {a["unit"]: a for a in doc["actions"]}
    for name in ("rctl-pyd", "rctl-pld", "rctl-shd", "rctl-jsd", "rctl-rbd", "rctl-jd"):
        assert actions[f"{name}.service"]["argv"] == ["systemctl", "restart", "--", f"{name}.service"], actions
    kinds = {s["kind"] for p in doc["processes"] if p["pid"] == story["pids"]["rctl-pyd"] for s in p["stale"]}
    assert {"script", "module"} <= kinds, kinds
    assert "rctl-pyother.service" not in actions
    hostile = {story["pids"][n] for n in ("bait-home", "bait-tmp", "unowned-exe", "shell-syntax")}
    assert not [a for a in doc["actions"] if set(a["pids"]) & hostile and a["argv"] is not None]
