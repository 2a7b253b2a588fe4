"""restart/interpreters.py without containers: option grammars, the dpkg graph, the rules, /proc reading.

Pure functions get tables; the rules get a fixture dpkg database whose ``.list`` mtimes are set
by hand; reading ``/proc`` is tested on real processes of this host (python3, perl, sh, started
here on scripts in a temporary directory, no dpkg involved) and on fake ``/proc`` trees for what
a kernel will not produce on demand.  The container scenarios are in test_interpreters_real.py.
"""

from __future__ import annotations

import ast
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from restart import grammars as G
from restart import interpreters as I
from restart import observation as O
from restart.grammars import Interpreter, Script, script_of
from restart.observation import Observation
from restart.packages import DpkgDatabase, PackageGraph, closure, dependency_graph
from restart.processes import CERTAIN, CODE, DATA, EXE, FD, LIKELY, Evidence, FileKind, StaleFile
from tests.fakeproc import FakeProcess, build

REPO = Path(__file__).resolve().parent.parent
PY = Interpreter("python", "/usr/bin/python3.11", "python3.11-minimal", "3.11")
PERL = Interpreter("perl", "/usr/bin/perl", "perl-base")
SH = Interpreter("shell", "/usr/bin/dash", "dash")
BASH = Interpreter("shell", "/usr/bin/bash", "bash")
JAVA = Interpreter("java", "/usr/lib/jvm/java-17-openjdk-amd64/bin/java", "openjdk-17-jre-headless")


# ---------------------------------------------------------------------------- recognising interpreters

@pytest.mark.parametrize(("exe", "family", "package"), [
    ("/usr/bin/python3.11", "python", "python3.11-minimal"),
    ("/usr/bin/python3.13", "python", "python3.13-minimal"),
    ("/usr/bin/perl", "perl", "perl-base"),
    ("/usr/bin/perl5.36.0", "perl", "perl-base"),
    ("/usr/bin/perl5.36-x86_64-linux-gnu", "perl", "libperl5.36"),
    ("/usr/bin/ruby3.1", "ruby", "ruby3.1"),
    ("/usr/bin/node", "node", "nodejs"),
    ("/usr/bin/nodejs", "node", "nodejs"),
    ("/usr/bin/dash", "shell", "dash"),
    ("/bin/dash", "shell", "dash"),
    ("/usr/bin/bash", "shell", "bash"),
    ("/usr/lib/jvm/java-17-openjdk-amd64/bin/java", "java", "openjdk-17-jre-headless"),
])
def test_interpreter_paths(exe: str, family: str, package: str) -> None:
    found = G.interpreter_of(exe)
    assert found is not None and (found.family, found.package, found.exe) == (family, package, exe)
    assert exe.encode().startswith(G.MAPPED_HINTS)  # the scanner hands such a process to the stage


@pytest.mark.parametrize("mapped", ["/usr/bin/sleep", "/usr/bin/python3", "/bin/sh", "/usr/sbin/sshd",
                                    "/usr/lib/x86_64-linux-gnu/libc.so.6"])
def test_ordinary_programs_are_not_handed_to_the_interpreter_stage(mapped: str) -> None:
    """Why: on a real host most processes live in /usr/bin; reading their exe, cmdline and stat for
    the stage cost ~8 % of a scan of 1,000 processes of which 100 were interpreters."""
    assert not mapped.encode().startswith(G.MAPPED_HINTS)


@pytest.mark.parametrize("exe", [
    None, "", "/usr/bin/python3",  # a symlink: /proc/PID/exe is always resolved
    "/home/u/python3", "/tmp/usr/bin/python3.11", "/usr/local/bin/python3.11", "/usr/bin/python3.11x",
    "/usr/bin/python3.11 (deleted)", "/usr/bin/python3.11\n", "/opt/usr/bin/perl", "/usr/bin/perl5",
    "/usr/bin/perlbug", "/usr/sbin/perl", "/usr/bin/python2.7", "/usr/bin/sh", "/usr/bin/rbash",
    "/usr/lib/jvm/temurin-25-jdk-amd64/bin/java", "/usr/lib/jvm/java-17-openjdk-amd64/bin/javac",
    "/usr/bin/../bin/perl", "//usr/bin/perl", "/usr/bin/python3.11/",
])
def test_not_interpreters(exe: str | None) -> None:
    assert G.interpreter_of(exe) is None


def test_python_version_is_kept() -> None:
    assert G.interpreter_of("/usr/bin/python3.11") == PY


# ---------------------------------------------------------------------------- option grammars

def f(path: str, chdir: str | None = None) -> Script:
    return Script(path=path, chdir=chdir)


@pytest.mark.parametrize(("argv", "expected"), [
    (["/usr/bin/python3", "/usr/bin/fail2ban-server", "-xf", "start"], f("/usr/bin/fail2ban-server")),
    (["python3", "-u", "x.py"], f("x.py")),
    (["python3", "-uE", "-I", "-O", "-OO", "-s", "-S", "-B", "x.py", "-c", "y"], f("x.py")),
    (["python3", "-X", "dev", "-W", "error", "x.py"], f("x.py")),
    (["python3", "-Xdev", "-Wd", "x.py"], f("x.py")),
    (["python3", "-uX", "importtime", "x.py"], f("x.py")),
    (["python3", "-uWignore", "x.py"], f("x.py")),
    (["python3", "--check-hash-based-pycs", "always", "x.py"], f("x.py")),
    (["python3", "--check-hash-based-pycs=never", "x.py"], f("x.py")),
    (["python3", "--", "-weird.py"], f("-weird.py")),
    (["python3", "-m", "http.server", "8000"], Script(module="http.server")),
    (["python3", "-mhttp.server"], Script(module="http.server")),
    (["python3", "-Im", "unattended_upgrades"], Script(module="unattended_upgrades")),
    (["python3", "-m", "../../etc/passwd"], None),
    (["python3", "-m", "a..b"], None),
    (["python3", "-m"], None),
    (["python3", "-c", "import x", "y.py"], None),
    (["python3", "-cimport x"], None),
    (["python3", "-Ec", "pass"], None),
    (["python3"], None),
    (["python3", "-"], None),
    (["python3", "-i"], None),
    (["python3", "-X"], None),
    (["python3", "-J", "x.py"], None),
    (["python3", "--help"], None),
    (["python3", "--version"], None),
    (["python3", "--bogus", "x.py"], None),
    (["python3", ""], None),
])
def test_python_grammar(argv: list[str], expected: Script | None) -> None:
    assert script_of("python", argv) == expected


@pytest.mark.parametrize(("argv", "expected"), [
    (["/usr/bin/perl", "-T", "/usr/sbin/spamd", "-d"], f("/usr/sbin/spamd")),
    (["/usr/bin/perl", "-wT", "/usr/sbin/munin-node"], f("/usr/sbin/munin-node")),
    (["/usr/bin/perl", "-w -T", "/usr/sbin/munin-node"], f("/usr/sbin/munin-node")),  # one #! argument
    (["perl", "-I", "/opt/lib", "x.pl"], f("x.pl")),
    (["perl", "-I/opt/lib", "-Mstrict", "-MData::Dumper=Dumper", "x.pl"], f("x.pl")),
    (["perl", "-mPOSIX", "-l", "-0777", "-0x1F", "-l015", "x.pl"], f("x.pl")),
    (["perl", "-CSDA", "-i.bak", "-Fx", "-x", "x.pl"], f("x.pl")),
    (["perl", "-d:NYTProf", "x.pl"], f("x.pl")),
    (["perl", "--", "-x.pl"], f("-x.pl")),
    (["perl", "-S", "script-in-path"], None),  # found through PATH: the environment
    (["perl", "-S", "/usr/bin/x"], f("/usr/bin/x")),
    (["perl", "-e", "print 1", "x.pl"], None),
    (["perl", "-we", "1"], None),
    (["perl", "-E", "say 1"], None),
    (["perl", "-ne", "print"], None),
    (["perl", "-"], None),
    (["perl"], None),
    (["perl", "-I"], None),
    (["perl", "-q", "x.pl"], None),
    (["perl", "--help"], None),
])
def test_perl_grammar(argv: list[str], expected: Script | None) -> None:
    assert script_of("perl", argv) == expected


@pytest.mark.parametrize(("argv", "expected"), [
    (["ruby", "x.rb"], f("x.rb")),
    (["ruby", "-w", "-I", "lib", "-r", "json", "x.rb"], f("x.rb")),
    (["ruby", "-Ilib", "-rjson", "-W2", "-W:no-deprecated", "x.rb"], f("x.rb")),
    (["ruby", "-C", "/srv/app", "main.rb"], f("main.rb", "/srv/app")),
    (["ruby", "-C/srv", "-C", "app", "/abs.rb"], f("/abs.rb", "/srv/app")),
    (["ruby", "--enable", "frozen-string-literal", "--disable=gems", "x.rb"], f("x.rb")),
    (["ruby", "--encoding", "UTF-8", "--verbose", "x.rb"], f("x.rb")),
    (["ruby", "-Ku", "-T1", "-0777", "x.rb"], f("x.rb")),
    (["ruby", "-e", "puts 1", "x.rb"], None),
    (["ruby", "-ne", "print"], None),
    (["ruby", "-S", "rake"], None),
    (["ruby", "-"], None),
    (["ruby", "-Z", "x.rb"], None),
])
def test_ruby_grammar(argv: list[str], expected: Script | None) -> None:
    assert script_of("ruby", argv) == expected


@pytest.mark.parametrize(("argv", "expected"), [
    (["node", "/usr/share/app/server.js"], f("/usr/share/app/server.js")),
    (["node", "--inspect", "--inspect-brk=9229", "s.js"], f("s.js")),
    (["node", "--require", "dotenv/config", "-r", "x", "s.js"], f("s.js")),
    (["node", "--require=x", "--max-old-space-size=512", "--title", "t", "s.js"], f("s.js")),
    (["node", "--max-old-space-size", "512", "s.js"], f("s.js")),
    (["node", "--enable-source-maps", "--", "s.js"], f("s.js")),
    (["node", "-C", "development", "s.js"], f("s.js")),
    (["node", "-e", "1", "s.js"], None),
    (["node", "--eval=1"], None),
    (["node", "-p", "1"], None),
    (["node", "-pe", "1"], None),
    (["node", "--print", "1"], None),
    (["node"], None),
    (["node", "-"], None),
])
def test_node_grammar(argv: list[str], expected: Script | None) -> None:
    assert script_of("node", argv) == expected


@pytest.mark.parametrize(("shell", "argv", "expected"), [
    ("dash", ["/bin/sh", "/usr/sbin/daemon-wrapper", "start"], f("/usr/sbin/daemon-wrapper")),
    ("dash", ["sh", "-e", "x.sh"], f("x.sh")),
    ("dash", ["sh", "-ex", "-o", "noglob", "+u", "x.sh"], f("x.sh")),
    ("bash", ["bash", "-eo", "pipefail", "x.sh"], f("x.sh")),
    ("bash", ["bash", "-O", "extglob", "x.sh"], f("x.sh")),
    ("bash", ["bash", "--norc", "--noprofile", "--rcfile", "/etc/rc", "x.sh"], f("x.sh")),
    ("dash", ["sh", "-", "x.sh"], f("x.sh")),
    ("dash", ["sh", "--", "x.sh"], f("x.sh")),
    ("dash", ["sh", "-c", "echo hi", "x.sh"], None),
    ("dash", ["sh", "-ec", "echo hi"], None),
    ("dash", ["sh", "-s", "arg"], None),
    ("bash", ["-bash"], None),  # a login shell
    ("bash", ["bash", "-i"], None),
    ("bash", ["bash", "-l"], None),
    ("dash", ["sh", "-Q", "x.sh"], None),
])
def test_shell_grammar(shell: str, argv: list[str], expected: Script | None) -> None:
    assert script_of(shell, argv) == expected
    interpreter = BASH if shell == "bash" else SH
    assert script_of(interpreter, argv) == expected


@pytest.mark.parametrize(("argv", "expected"), [
    (["java", "-Xmx1g", "-jar", "/usr/share/jenkins/jenkins.war", "--httpPort=8080"],
     f("/usr/share/jenkins/jenkins.war")),
    (["java", "-cp", "/usr/share/java/x.jar", "-Dx=y", "org.Main"], None),
    (["java", "--module-path", "m", "-m", "mod/org.Main"], None),
    (["java", "@/tmp/args"], None),
    (["java", "Hello.java"], f("Hello.java")),
    (["java", "-jar"], None),
])
def test_java_grammar(argv: list[str], expected: Script | None) -> None:
    assert script_of(JAVA, argv) == expected


def test_unknown_family_has_no_script() -> None:
    assert script_of("tclsh", ["tclsh", "x.tcl"]) is None


def test_module_files_follow_debians_path_and_refuse_odd_names() -> None:
    assert G.module_files("3.11", "a.b") == (
        "/usr/lib/python3.11/a/b/__main__.py", "/usr/lib/python3.11/a/b.py",
        "/usr/local/lib/python3.11/dist-packages/a/b/__main__.py", "/usr/local/lib/python3.11/dist-packages/a/b.py",
        "/usr/lib/python3/dist-packages/a/b/__main__.py", "/usr/lib/python3/dist-packages/a/b.py")
    assert G.module_files("3.11", "../x") == ()
    assert G.module_files("../3", "x") == ()


def test_argv_and_start_time_parsing() -> None:
    assert O.argv_of(b"/usr/bin/python3\0/usr/bin/x\0") == ["/usr/bin/python3", "/usr/bin/x"]
    assert O.argv_of(b"a\0\0b\0") == ["a", "", "b"]
    assert O.argv_of(b"setproctitle without NULs") == ["setproctitle without NULs"]
    assert O.argv_of(b"caf\xe9\0") == ["caf\udce9"]
    stat_line = b"42 (a) b (c) 2 3) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 123456 1000 10 0\n"
    assert O.start_ticks(stat_line) == 123456
    host = O.Host(boot=1000.0, hz=100)
    assert host.wall(250) == 1002.5


def test_search_paths() -> None:
    py = G.search_path(PY)
    assert py is not None and py.match("/usr/lib/python3/dist-packages/yaml/__init__.py")
    assert py.match("/usr/lib/python3.11/email/parser.py")
    assert not py.match("/usr/lib/python3.12/email/parser.py") and not py.match("/usr/share/doc/python3/x")
    perl = G.search_path(PERL)
    assert perl is not None
    assert all(perl.match(p) for p in ("/usr/share/perl5/Foo.pm", "/usr/share/perl/5.36/strict.pm",
                                       "/usr/lib/x86_64-linux-gnu/perl5/5.36/XS.pm",
                                       "/usr/lib/x86_64-linux-gnu/perl-base/POSIX.pm"))
    assert not perl.match("/usr/bin/perl") and not perl.match("/usr/share/perl-doc/x")
    assert G.search_path(SH) is None


# ---------------------------------------------------------------------------- the dependency graph

STATUS = b"""Package: app
Status: install ok installed
Depends: libapp-mod (>= 1.0), python3:any, virtual-x | missing-pkg, perl:any (>= 5.30) [amd64]
Description: an app
 Depends: fake-in-description
 .
 more text

Package: libapp-mod
Status: install ok installed
Pre-Depends: libc6 (>= 2.36)
Depends: libdeep

Package: libdeep
Status: install ok unpacked

Package: provider
Status: install ok installed
Provides: virtual-x (= 1), other-virtual

Package: python3
Status: install ok installed

Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same

Package: libc6
Status: install ok installed
Architecture: i386
Multi-Arch: same
Depends: libgcc-s1

Package: removed
Status: deinstall ok config-files
Depends: libapp-mod

Package: unrelated
Status: install ok installed
Depends: libc6
"""


def graph_of(tmp_path: Path, text: bytes) -> PackageGraph:
    (tmp_path / "status").write_bytes(text)
    return dependency_graph(tmp_path)


def test_status_parsing(tmp_path: Path) -> None:
    g = graph_of(tmp_path, STATUS)
    assert set(g.depends) == {"app", "libapp-mod", "libdeep", "provider", "python3", "libc6", "unrelated"}
    assert g.depends["app"] == {"libapp-mod", "python3", "virtual-x", "missing-pkg", "perl"}
    assert g.depends["libc6"] == {"libgcc-s1"}  # both architectures' stanzas
    assert g.provides == {"virtual-x": {"provider"}, "other-virtual": {"provider"}}


def test_closure_follows_depends_predepends_provides_and_alternatives(tmp_path: Path) -> None:
    g = graph_of(tmp_path, STATUS)
    assert closure(g, "app") == {"app", "libapp-mod", "libdeep", "libc6", "python3", "provider"}
    assert closure(g, "app:amd64") == closure(g, "app")
    assert closure(g, "unrelated") == {"unrelated", "libc6"}
    assert closure(g, "not-installed") == {"not-installed"}


def test_status_parsing_agrees_with_apt_pkg_on_this_host() -> None:
    """The relation names against python-apt's own relation parser, on the real /var/lib/dpkg/status."""
    import apt_pkg

    mine = dependency_graph(Path("/var/lib/dpkg"))
    apt_pkg.init_config()
    depends: dict[str, set[str]] = {}
    provides: dict[str, set[str]] = {}
    for section in apt_pkg.TagFile("/var/lib/dpkg/status"):
        state = section.get("Status", "").split()
        if len(state) != 3 or state[2] in ("not-installed", "config-files"):
            continue
        names = depends.setdefault(section["Package"], set())
        for field in ("Depends", "Pre-Depends"):
            for group in apt_pkg.parse_depends(section.get(field, ""), False):
                names.update(n.partition(":")[0] for n, _, _ in group)
        for group in apt_pkg.parse_depends(section.get("Provides", ""), False):
            for n, _, _ in group:
                provides.setdefault(n.partition(":")[0], set()).add(section["Package"])
    assert len(depends) > 50
    assert {k: set(v) for k, v in mine.depends.items()} == depends
    assert {k: set(v) for k, v in mine.provides.items()} == provides


# ---------------------------------------------------------------------------- the rules, on a fixture database

START = 1_800_000_000.0
BEFORE, AFTER = START - 100, START + 100
MODFILE = "/usr/lib/python3/dist-packages/app_mod/__init__.py"
SOFILE = "/usr/lib/python3/dist-packages/app_mod/_speed.cpython-311-x86_64-linux-gnu.so"
PMFILE = "/usr/share/perl5/App/Mod.pm"

FIXTURE_STATUS = b"""Package: python3.11-minimal
Status: install ok installed

Package: perl-base
Status: install ok installed

Package: dash
Status: install ok installed

Package: app
Status: install ok installed
Depends: python3-app-mod, libapp-mod-perl

Package: other
Status: install ok installed
Depends: python3.11-minimal

Package: python3-app-mod
Status: install ok installed
Depends: python3.11-minimal

Package: python3-unused
Status: install ok installed

Package: libapp-mod-perl
Status: install ok installed
Architecture: amd64
Multi-Arch: same

Package: libfoo1
Status: install ok installed
"""

FIXTURE_LISTS = {
    "python3.11-minimal": ["/.", "/usr", "/usr/bin", "/usr/bin/python3.11"],
    "perl-base": ["/.", "/usr", "/usr/bin", "/usr/bin/perl"],
    "dash": ["/.", "/bin", "/bin/dash"],
    "app": ["/.", "/usr", "/usr/bin", "/usr/bin/app", "/usr/share/app/helper.py"],
    "other": ["/.", "/usr", "/usr/bin", "/usr/bin/other"],
    "python3-app-mod": ["/.", "/usr", "/usr/lib", "/usr/lib/python3", "/usr/lib/python3/dist-packages",
                        "/usr/lib/python3/dist-packages/app_mod", MODFILE, SOFILE,
                        "/usr/share/doc/python3-app-mod/copyright"],
    "python3-unused": ["/.", "/usr/lib/python3/dist-packages/unused.py"],
    "libapp-mod-perl:amd64": ["/.", "/usr/share/perl5", "/usr/share/perl5/App", PMFILE],
    "libfoo1": ["/.", "/usr/lib/x86_64-linux-gnu/libfoo.so.1"],
}


@pytest.fixture
def admin(tmp_path: Path) -> Path:
    """A dpkg admin directory: every package unpacked long before START, on a merged-/usr root."""
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    for name in ("bin", "lib", "sbin"):
        (root / name).symlink_to(f"usr/{name}")
    admindir = tmp_path / "admin"
    (admindir / "info").mkdir(parents=True)
    (admindir / "status").write_bytes(FIXTURE_STATUS)
    for name, files in FIXTURE_LISTS.items():
        path = admindir / "info" / f"{name}.list"
        path.write_text("".join(f"{p}\n" for p in files))
        os.utime(path, (BEFORE - 1000, BEFORE - 1000))
    os.utime(admindir / "status", (BEFORE - 1000, BEFORE - 1000))
    return admindir


def unpack(admindir: Path, package: str, when: float) -> None:
    """What dpkg leaves behind: the package's list rewritten, then the status file."""
    os.utime(admindir / "info" / f"{package}.list", (when, when))
    status = admindir / "status"
    last = max(when, status.stat().st_mtime)
    os.utime(status, (last, last))


def context(admindir: Path, *, in_scope: dict[str, str] | None = None) -> I.Context:
    db = DpkgDatabase(admindir, admindir.parent / "root")
    return I.Context(db, in_scope=in_scope, host=O.Host(0.0, 100))


def obs(interpreter: Interpreter = PY, path: str | None = "/usr/bin/app", *, ctime: float | None = BEFORE,
        held: str | None = None, start: float = START, pid: int = 10) -> Observation:
    script = Script(path=path) if path else None
    return Observation(pid, interpreter, start, script, path, ctime if path else None, held)


def judge(admindir: Path, o: Observation, stale: tuple[StaleFile, ...] = (),
          **kw: dict[str, str]) -> set[tuple[str, ...]]:
    found = I.judge([o], context(admindir, **kw), {o.pid: stale})
    return {tuple(s) for s in found.get(o.pid, ())}


def test_nothing_changed_nothing_found(admin: Path) -> None:
    assert judge(admin, obs()) == set()


def test_script_newer_than_the_process_is_likely(admin: Path) -> None:
    assert judge(admin, obs(ctime=AFTER)) == {("script", "/usr/bin/app", LIKELY, "newer")}


def test_changes_within_the_tolerance_of_the_start_do_not_count(admin: Path) -> None:
    assert judge(admin, obs(ctime=START + I.TOLERANCE / 2)) == set()
    unpack(admin, "python3-app-mod", START + I.TOLERANCE / 2)
    assert judge(admin, obs()) == set()


def test_a_script_held_open_decides(admin: Path) -> None:
    assert judge(admin, obs(ctime=BEFORE, held=O.REPLACED)) == {("script", "/usr/bin/app", CERTAIN, "replaced")}
    assert judge(admin, obs(ctime=AFTER, held=O.UNLINKED)) == {("script", "/usr/bin/app", CERTAIN, "unlinked")}
    # The process holds the very file at the path: a new ctime (chmod) proves nothing.
    assert judge(admin, obs(ctime=AFTER, held=O.FRESH)) == set()


def test_the_scans_open_file_on_the_script_becomes_a_script_finding(admin: Path) -> None:
    stale = (StaleFile(FD, "/usr/bin/app", CERTAIN, Evidence.UNLINKED),)
    assert judge(admin, obs(), stale) == {("script", "/usr/bin/app", CERTAIN, "unlinked")}


def test_module_package_in_the_closure_changed(admin: Path) -> None:
    unpack(admin, "python3-app-mod", AFTER)
    # One finding per package, on one of its module files (never a directory, never its docs).
    assert judge(admin, obs()) == {("module", MODFILE, LIKELY, "depends")}


def test_module_package_changed_before_the_start_does_not_count(admin: Path) -> None:
    unpack(admin, "python3-app-mod", START - 1)
    assert judge(admin, obs()) == set()


def test_unrelated_process_is_not_flagged(admin: Path) -> None:
    unpack(admin, "python3-app-mod", AFTER)
    unpack(admin, "python3-unused", AFTER)
    assert judge(admin, obs(path="/usr/bin/other")) == set()


def test_files_of_the_script_package_reach_the_closure(admin: Path) -> None:
    """A script that is a private module of its package (/usr/share/app/helper.py): same closure."""
    unpack(admin, "python3-app-mod", AFTER)
    assert judge(admin, obs(path="/usr/share/app/helper.py")) == {("module", MODFILE, LIKELY, "depends")}


def test_other_interpreters_modules_are_not_ours(admin: Path) -> None:
    unpack(admin, "libapp-mod-perl:amd64", AFTER)
    assert judge(admin, obs(PY)) == set()
    assert judge(admin, obs(PERL)) == {("module", PMFILE, LIKELY, "depends")}
    unpack(admin, "libfoo1", AFTER)  # not on any search path: the scan's maps cover libraries
    assert judge(admin, obs(PERL)) == {("module", PMFILE, LIKELY, "depends")}


def test_unowned_or_no_script_takes_the_whole_search_path(admin: Path) -> None:
    unpack(admin, "python3-app-mod", AFTER)
    unpack(admin, "python3-unused", AFTER)
    expected = {("module", MODFILE, LIKELY, "search-path"),
                ("module", "/usr/lib/python3/dist-packages/unused.py", LIKELY, "search-path")}
    assert judge(admin, obs(path="/usr/local/bin/mine.py")) == expected
    assert judge(admin, obs(path=None)) == expected  # python3 -c, a REPL, a rewritten command line


def test_shells_and_java_get_no_inferred_modules(admin: Path) -> None:
    unpack(admin, "python3-app-mod", AFTER)
    unpack(admin, "libapp-mod-perl:amd64", AFTER)
    sh = Observation(10, SH, START, Script(path="/usr/bin/app"), "/usr/bin/app", BEFORE, None)
    assert judge(admin, sh) == set()


def test_a_mapped_module_proves_use(admin: Path) -> None:
    """The scan's code finding on the package's C extension becomes module/certain; no likely twin."""
    unpack(admin, "python3-app-mod", AFTER)
    stale = (StaleFile(CODE, SOFILE, CERTAIN, Evidence.REPLACED),
             StaleFile(CODE, "/usr/lib/libx.so.1", CERTAIN, Evidence.REPLACED))
    assert judge(admin, obs(), stale) == {("module", SOFILE, CERTAIN, "replaced")}


def test_a_mapped_module_counts_even_outside_the_closure(admin: Path) -> None:
    stale = (StaleFile(DATA, "/usr/lib/python3/dist-packages/unused.py", LIKELY, Evidence.DELETED_HINT),)
    assert judge(admin, obs(path="/usr/bin/other"), stale) == {
        ("module", "/usr/lib/python3/dist-packages/unused.py", LIKELY, "deleted-hint")}


def test_scope_limits_changed_packages_to_the_transaction(admin: Path) -> None:
    unpack(admin, "python3-app-mod", AFTER)
    unpack(admin, "python3-unused", AFTER)
    db = DpkgDatabase(admin, admin.parent / "root")
    assert judge(admin, obs(), in_scope=db.files_of(["python3-unused"])) == set()
    assert judge(admin, obs(), in_scope=db.files_of(["python3-app-mod"])) == {("module", MODFILE, LIKELY, "depends")}
    # The script's owner comes from the scope when it is in it (no search of the lists).
    in_scope = db.files_of(["python3-app-mod", "app"])
    assert judge(admin, obs(), in_scope=in_scope) == {("module", MODFILE, LIKELY, "depends")}


def test_exe_not_owned_by_the_expected_package_is_dropped(admin: Path) -> None:
    unpack(admin, "python3-app-mod", AFTER)
    fake = Interpreter("python", "/usr/bin/python3.12", "python3.12-minimal", "3.12")
    assert judge(admin, obs(fake, ctime=AFTER)) == set()
    stolen = Interpreter("python", "/usr/bin/perl", "python3.11-minimal", "3.11")  # someone else's file
    assert judge(admin, obs(stolen, ctime=AFTER)) == set()


def test_a_diverted_interpreter_is_not_the_packages(admin: Path) -> None:
    (admin / "diversions").write_text("/usr/bin/python3.11\n/usr/bin/python3.11.real\n:\n")
    assert judge(admin, obs(ctime=AFTER)) == set()


def test_shell_on_an_unmerged_spelling(admin: Path) -> None:
    sh = Observation(10, G.interpreter_of("/bin/dash") or SH, START, Script(path="/usr/bin/app"), "/usr/bin/app",
                     AFTER, None)
    assert judge(admin, sh) == {("script", "/usr/bin/app", LIKELY, "newer")}


def test_owner_search_reads_only_the_lists_that_can_matter(admin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The script's owner is looked for among the packages that depend on a changed module package."""
    unpack(admin, "python3-app-mod", AFTER)
    ctx = context(admin)
    read: list[str] = []
    real_list = ctx.db.package_list

    def spy(package: str) -> bytes:
        read.append(package)
        return real_list(package)

    def no_global_search(paths: object) -> dict[str, str]:
        raise AssertionError("db.owners() reads every list")

    monkeypatch.setattr(ctx.db, "package_list", spy)
    monkeypatch.setattr(ctx.db, "owners", no_global_search)
    found = I.judge([obs(pid=1), obs(path="/usr/bin/other", pid=2), obs(path="/usr/local/x", pid=3)], ctx)
    assert set(found) == {1, 3}
    assert set(read) <= {"python3.11-minimal", "python3-app-mod", "app"}


def test_unowned_script_in_a_package_directory_counts_as_anothers(admin: Path) -> None:
    """A hand-made /usr/bin script cannot be told from an unrelated package's without reading every list."""
    unpack(admin, "python3-app-mod", AFTER)
    assert judge(admin, obs(path="/usr/bin/handmade")) == set()
    assert judge(admin, obs(path="/opt/handmade")) == {("module", MODFILE, LIKELY, "search-path")}


def test_reserved_prefixes_come_from_the_caller(admin: Path) -> None:
    unpack(admin, "python3-app-mod", AFTER)
    ctx = I.Context(DpkgDatabase(admin, admin.parent / "root"), host=O.Host(0.0, 100), unowned=("/usr/bin/hand",))
    assert {tuple(f) for f in I.judge([obs(path="/usr/bin/handmade")], ctx)[10]} == {
        ("module", MODFILE, LIKELY, "search-path")}


def test_a_diverted_script_is_looked_up_exactly(admin: Path) -> None:
    unpack(admin, "python3-app-mod", AFTER)
    (admin / "diversions").write_text("/usr/bin/app\n/usr/bin/app.distrib\nother\n")
    assert judge(admin, obs()) == set()  # the file at /usr/bin/app is other's, which needs no app_mod


def test_nothing_is_read_when_dpkg_has_not_run_since_the_start(admin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = context(admin)
    monkeypatch.setattr(ctx.db, "unpack_times", lambda *_: pytest.fail("the lists were listed"))
    assert ctx.changed_after(START) == []
    assert I.findings(obs(ctime=AFTER), ctx) == (StaleFile(FileKind.SCRIPT, "/usr/bin/app", LIKELY, Evidence.NEWER),)


def test_merge_keeps_the_most_specific_finding_per_path() -> None:
    code = StaleFile(CODE, SOFILE, CERTAIN, Evidence.REPLACED)
    module = StaleFile(FileKind.MODULE, SOFILE, CERTAIN, Evidence.REPLACED)
    fd = StaleFile(FD, "/usr/bin/app", CERTAIN, Evidence.UNLINKED)
    script = StaleFile(FileKind.SCRIPT, "/usr/bin/app", CERTAIN, Evidence.UNLINKED)
    exe = StaleFile(EXE, "/usr/bin/python3.11", CERTAIN, Evidence.REPLACED)
    assert I.merge((exe, code, fd), (module, script)) == (exe, script, module)
    likely = StaleFile(FileKind.MODULE, MODFILE, LIKELY, Evidence.DEPENDS)
    newer = StaleFile(FileKind.MODULE, MODFILE, CERTAIN, Evidence.REPLACED)
    assert I.merge((likely,), (newer,))[0].confidence == CERTAIN


# ---------------------------------------------------------------------------- resolving inside a root

@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    for d in ("usr/bin", "usr/share/app", "etc", "tmp", "dev", "proc/self"):
        (r / d).mkdir(parents=True)
    (r / "bin").symlink_to("usr/bin")
    (r / "usr/share/app/main.py").write_text("x")
    (r / "usr/bin/app").symlink_to("../share/app/main.py")
    (r / "usr/bin/abs").symlink_to("/usr/share/app/main.py")
    (r / "usr/bin/escape").symlink_to("../../../../../../etc/passwd")
    (r / "usr/bin/absescape").symlink_to("/etc/passwd")
    (r / "usr/bin/loop").symlink_to("loop")
    (r / "usr/bin/dir").symlink_to("/usr/share/app")
    (r / "etc/passwd").write_text("in the root")
    os.mkfifo(r / "tmp/fifo")
    (r / "dev/fd").symlink_to("/proc/self/fd")
    (r / "proc/self/script").write_text("x")
    return r


@pytest.fixture
def rootfd(root: Path) -> Iterator[int]:
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    yield fd
    os.close(fd)


@pytest.mark.parametrize(("path", "expected"), [
    ("/usr/share/app/main.py", "/usr/share/app/main.py"),
    ("/usr/bin/app", "/usr/share/app/main.py"),
    ("/bin/app", "/usr/share/app/main.py"),
    ("/usr/bin/abs", "/usr/share/app/main.py"),
    ("/usr/bin/dir/main.py", "/usr/share/app/main.py"),
    ("/usr/bin/../share/./app//main.py", "/usr/share/app/main.py"),
    ("/../../../usr/share/app/main.py", "/usr/share/app/main.py"),  # .. stops at the root
    ("/usr/bin/escape", "/etc/passwd"),      # the root's own /etc/passwd, never the host's
    ("/usr/bin/absescape", "/etc/passwd"),
    ("/usr/bin/loop", None),
    ("/tmp/fifo", None),                     # not a regular file: looked at, never opened
    ("/usr/share/app", None),
    ("/usr/share/app/main.py/x", None),
    ("/missing", None),
    ("/dev/fd/3", None),                     # procfs links name the reader's files
    ("/proc/self/script", None),
    ("/", None),
])
def test_resolve_in_root(root: Path, rootfd: int, path: str, expected: str | None) -> None:
    found = O.resolve_in_root(rootfd, path)
    assert (found[0] if found else None) == expected
    if found:
        assert found[1].st_ino == os.stat(root / expected.lstrip("/")).st_ino  # type: ignore[union-attr]


_OPENS: list[tuple[str, int]] = []
_AUDITING = False


def _audit(event: str, args: tuple[object, ...]) -> None:
    if _AUDITING and event == "open":
        _OPENS.append((str(args[0]), int(args[2]) if isinstance(args[2], int) else -1))


sys.addaudithook(_audit)


def test_resolving_opens_only_directories_and_only_as_paths(root: Path, rootfd: int) -> None:
    global _AUDITING
    _OPENS.clear()
    _AUDITING = True
    try:
        for path in ("/usr/bin/app", "/usr/bin/absescape", "/tmp/fifo", "/usr/bin/dir/main.py"):
            O.resolve_in_root(rootfd, path)
    finally:
        _AUDITING = False
    assert _OPENS, "the audit hook saw nothing: the check would pass vacuously"
    assert all(flags & os.O_PATH and flags & os.O_DIRECTORY for _, flags in _OPENS), _OPENS
    # ("app" is both a symlink and a directory: only the directory is opened)
    assert not {name for name, _ in _OPENS} & {"main.py", "passwd", "fifo", "abs", "absescape"}


# ---------------------------------------------------------------------------- reading real processes

@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts, each the leader of a process group of its own: the group is killed,
    so what a script forks (its ``sleep``) goes with it instead of living on under PID 1."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)


def start(procs: list[subprocess.Popen[bytes]], argv: list[str], cwd: Path, ready: Path) -> int:
    p = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"}, process_group=0)
    procs.append(p)
    deadline = time.monotonic() + 10
    while not ready.exists():
        assert p.poll() is None and time.monotonic() < deadline, f"{argv} did not get ready"
        time.sleep(0.02)
    return p.pid


def observe(pid: int) -> Observation:
    fd = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY)
    try:
        found = O.observe(fd, pid, os.readlink(f"/proc/{pid}/exe"), O.Host.of())
    finally:
        os.close(fd)
    assert found is not None
    return found


def replace(path: Path, data: str) -> None:
    """What dpkg does: a new file beside the old one, renamed over it."""
    new = path.with_name(path.name + ".dpkg-new")
    new.write_text(data)
    os.chmod(new, 0o755)
    os.rename(new, path)


def test_real_python_process(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    script = tmp_path / "daemon.py"
    script.write_text(f"open({str(tmp_path / 'ready')!r}, 'w').close()\nimport time\ntime.sleep(600)\n")
    pid = start(procs, ["/usr/bin/python3", "-u", "daemon.py"], tmp_path, tmp_path / "ready")  # relative to cwd
    o = observe(pid)
    assert (o.interpreter.family, o.script, o.path, o.held) == ("python", Script(path="daemon.py"), str(script), None)
    assert abs(o.start - time.time()) < 60 and o.ctime is not None and o.ctime <= o.start + I.TOLERANCE
    time.sleep(I.TOLERANCE + 0.05)
    replace(script, "# 2.0\n")
    o = observe(pid)
    assert o.ctime is not None and o.ctime > o.start + I.TOLERANCE and o.held is None


@pytest.mark.parametrize(("argv", "keeps_open"), [
    (["/bin/sh"], True),
    (["/usr/bin/bash"], True),
    (["/usr/bin/perl", "-w"], False),
])
def test_real_held_scripts(tmp_path: Path, procs: list[subprocess.Popen[bytes]], argv: list[str],
                           keeps_open: bool) -> None:
    ready = tmp_path / "ready"
    script = tmp_path / "daemon"
    if argv[0].endswith("perl"):
        script.write_text(f"open(my $f, '>', '{ready}'); close($f); sleep 600;\n")
    else:
        script.write_text(f": > '{ready}'\nsleep 600\nexit 0\n")
    pid = start(procs, [*argv, str(script)], tmp_path, ready)
    assert observe(pid).held == (O.FRESH if keeps_open else None)
    replace(script, "# 2.0\n")
    assert observe(pid).held == (O.UNLINKED if keeps_open else None)


def test_perl_keeps_a_script_with_an_end_section_open(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    ready, script = tmp_path / "ready", tmp_path / "daemon"
    script.write_text(f"open(my $f, '>', '{ready}'); close($f); sleep 600;\n__END__\n\n=head1 NAME\n\n=cut\n")
    pid = start(procs, ["/usr/bin/perl", str(script)], tmp_path, ready)
    assert observe(pid).held == O.FRESH
    os.link(script, tmp_path / "keep")  # replaced while another name keeps the old inode alive
    replace(script, "# 2.0\n")
    assert observe(pid).held == O.REPLACED


def test_real_python_minus_m(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    """python3 -m: the module's file on Debian's path (here a standard library module)."""
    ready = tmp_path / "ready"
    code = f"import http.server, sys, time; open({str(ready)!r}, 'w').close(); time.sleep(600)"
    pid = start(procs, ["/usr/bin/python3", "-c", code], tmp_path, ready)
    assert observe(pid).script is None and observe(pid).path is None
    # -m json.tool reads stdin and waits: a long-running -m process of the standard library.
    p = subprocess.Popen(["/usr/bin/python3", "-m", "json.tool"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         process_group=0)
    procs.append(p)
    deadline = time.monotonic() + 10
    while b"json.tool" not in Path(f"/proc/{p.pid}/cmdline").read_bytes():  # until it has exec'd
        assert time.monotonic() < deadline
        time.sleep(0.01)
    o = observe(p.pid)
    # /usr/bin/python3 -> python3.X: the standard library of the host's Python, whatever its version.
    stdlib = f"/usr/lib/{os.path.basename(os.path.realpath('/usr/bin/python3'))}"
    assert o.script == Script(module="json.tool") and o.path == f"{stdlib}/json/tool.py"


# ---------------------------------------------------------------------------- hostile /proc fixtures

def fake(tmp_path: Path, cmdline: bytes, *, exe: str = "/usr/bin/python3.11", root: Path | None = None,
         cwd: str = "/", stat_text: bytes = b"7 (x) S 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 500 0 0\n") -> Path:
    proc = build(tmp_path / "proc", [FakeProcess(7, exe=exe, root=root)])
    (proc / "7" / "cmdline").write_bytes(cmdline)
    (proc / "7" / "stat").write_bytes(stat_text)
    (proc / "7" / "cwd").symlink_to(cwd)
    return proc


def observe_fake(proc: Path) -> Observation | None:
    fd = os.open(proc / "7", os.O_RDONLY | os.O_DIRECTORY)
    try:
        return O.observe(fd, 7, os.readlink(proc / "7" / "exe"), O.Host(1000.0, 100))
    finally:
        os.close(fd)


def test_fake_process_in_a_chroot_resolves_inside_it(tmp_path: Path, root: Path) -> None:
    proc = fake(tmp_path, b"/usr/bin/python3\0/usr/bin/absescape\0", root=root)
    o = observe_fake(proc)
    assert o is not None and o.path == "/etc/passwd" and o.start == 1005.0
    assert o.ctime == os.stat(root / "etc/passwd").st_ctime_ns / 1e9


def test_fake_process_in_another_root_is_not_ours_to_judge(tmp_path: Path, root: Path) -> None:
    """A container's or chroot's interpreters belong to its own package database."""
    proc = fake(tmp_path, b"/usr/bin/python3\0/usr/bin/app\0", root=root)
    st = os.stat("/")
    fd = os.open(proc / "7", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert O.observe(fd, 7, "/usr/bin/python3.11", O.Host(1000.0, 100, (st.st_dev, st.st_ino))) is None
        here = os.stat(root)
        assert O.observe(fd, 7, "/usr/bin/python3.11", O.Host(1000.0, 100, (here.st_dev, here.st_ino))) is not None
    finally:
        os.close(fd)


def test_fake_relative_script_inside_a_chroot(tmp_path: Path, root: Path) -> None:
    proc = fake(tmp_path, b"python3\0app/main.py\0", root=root, cwd=str(root / "usr/share"))
    o = observe_fake(proc)
    assert o is not None and o.path == "/usr/share/app/main.py"
    proc2 = fake(tmp_path / "2", b"python3\0app/main.py\0", root=root, cwd="/elsewhere")  # cwd outside the root
    o2 = observe_fake(proc2)
    assert o2 is not None and o2.script == Script(path="app/main.py") and o2.path is None


@pytest.mark.parametrize("cmdline", [
    b"/usr/bin/python3\0/tmp/$(touch /tmp/CANARY)\0",
    b"/usr/bin/python3\0;reboot\0",
    b"/usr/bin/python3\0" + b"/a" * 3000 + b"\0",
    b"/usr/bin/python3\0\xff\xfe\0",
    b"",
    b"\0\0\0",
    b"/usr/bin/python3\0/tmp/fifo\0",
])
def test_fake_hostile_command_lines_are_only_looked_at(tmp_path: Path, root: Path, cmdline: bytes) -> None:
    proc = fake(tmp_path, cmdline, root=root)
    o = observe_fake(proc)
    assert o is not None and o.path is None and o.held is None


def test_fake_non_interpreter_reads_nothing(tmp_path: Path) -> None:
    proc = fake(tmp_path, b"python3\0x.py\0", exe="/home/u/python3")
    for name in ("cmdline", "stat"):
        (proc / "7" / name).unlink()  # reading them would fail
    assert observe_fake(proc) is None


@pytest.mark.parametrize("stat_text", [b"7 (x) S\n", b"garbage", b"7 (x) S 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 x\n"])
def test_fake_broken_stat_is_no_guess(tmp_path: Path, stat_text: bytes) -> None:
    assert observe_fake(fake(tmp_path, b"python3\0x.py\0", stat_text=stat_text)) is None


# ---------------------------------------------------------------------------- static rules

def test_module_never_reads_the_environment_or_runs_anything() -> None:
    """Why: CVE-2024-48990 came from copying PYTHONPATH out of /proc/PID/environ into an interpreter."""
    source = (REPO / "restart" / "interpreters.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    imported = {a.name.partition(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.partition(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"subprocess", "ctypes", "importlib", "runpy", "pty", "multiprocessing", "shutil"}
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert "environ" not in strings and not any(s.endswith("/environ") for s in strings)
    calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert not calls & {"system", "popen", "execv", "execve", "execvp", "spawnv", "fork", "getenv", "putenv"}


# ---- module findings only for code the process can have loaded (fixtures of test_interpreters)

def _with_history(admin: Path, journal: str, lists: dict[str, str]) -> Path:
    run = admin.parent / "run-restartctl"
    (run / "lists").mkdir(parents=True)
    for d in (run, run / "lists"):
        os.chmod(d, 0o755)
    (run / "journal").write_text(journal)
    for name, text in lists.items():
        (run / "lists" / f"{name}.list").write_text(text)
    return run


def _judge(admin: Path, history: Path | None, path: str | None = "/usr/local/bin/mine.py") -> set[tuple[str, ...]]:
    ctx = I.Context(DpkgDatabase(admin, admin.parent / "root"), host=O.Host(0.0, 100), history=history)
    o = Observation(10, PY, START, Script(path=path) if path else None, path, BEFORE if path else None, None)
    return {tuple(s) for s in I.judge([o], ctx, {}).get(10, ())}


def test_a_package_installed_after_the_process_started_contributes_nothing(admin: Path) -> None:
    unpack(admin, "python3-unused", AFTER)
    unpack(admin, "python3-app-mod", AFTER)
    assert _judge(admin, None) == {("module", MODFILE, LIKELY, "search-path"),
                                   ("module", "/usr/lib/python3/dist-packages/unused.py", LIKELY, "search-path")}
    # The journal's first event for python3-unused is its installation, after the start.
    run = _with_history(admin, f"{int(START) - 50} apt upgrade python3-app-mod:all\n"
                               f"{int(AFTER)} apt install python3-unused:all\n"
                               f"{int(AFTER) + 1} dpkg upgrade python3-unused\n", {})
    assert _judge(admin, run) == {("module", MODFILE, LIKELY, "search-path")}


def test_of_an_upgraded_package_only_its_old_files_count(admin: Path) -> None:
    """The new version added a module the process cannot have loaded; the old one only had
    metadata besides: nothing (the one shown is never metadata or a directory)."""
    unpack(admin, "python3-app-mod", AFTER)
    old = "/.\n/usr/lib/python3/dist-packages/app_mod\n/usr/share/doc/python3-app-mod/copyright\n"
    run = _with_history(admin, f"{int(AFTER)} apt upgrade python3-app-mod:all\n", {"python3-app-mod": old})
    assert _judge(admin, run) == set()
    (run / "lists" / "python3-app-mod.list").write_text(old + f"{SOFILE}\n")
    assert _judge(admin, run) == {("module", SOFILE, LIKELY, "search-path")}


def test_a_module_finding_names_a_module_file(admin: Path) -> None:
    info = admin / "info" / "python3-unused.list"
    info.write_text("/.\n/usr/lib/python3/dist-packages/unused-1.0.egg-info\n"
                    "/usr/lib/python3/dist-packages/unused-1.0.egg-info/PKG-INFO\n"
                    "/usr/lib/python3/dist-packages/EXTERNALLY-MANAGED\n/usr/lib/python3.11/lib-dynload\n")
    unpack(admin, "python3-unused", AFTER)
    assert _judge(admin, None) == set()  # metadata only: nothing a process loads
    info.write_text(info.read_text() + "/usr/lib/python3.11/lib-dynload/_x.cpython-311-x86_64-linux-gnu.so\n")
    unpack(admin, "python3-unused", AFTER)
    assert _judge(admin, None) == {
        ("module", "/usr/lib/python3.11/lib-dynload/_x.cpython-311-x86_64-linux-gnu.so", LIKELY, "search-path")}


def test_a_module_listed_under_an_unmerged_spelling_is_still_a_module(admin: Path) -> None:
    """Why: a package's list is searched for the interpreter's directories before it is parsed (most
    changed packages are libraries: parsing their lists was a tenth of a scan); a list written before
    merged-/usr names ``/lib/python3/...``, which the search must not miss."""
    (admin / "info" / "python3-oldspell.list").write_text("/.\n/lib/python3/dist-packages/oldspell.py\n")
    (admin / "info" / "libbar1.list").write_text("/.\n/lib/x86_64-linux-gnu/libbar.so.1\n")
    ctx = context(admin)
    assert ctx.modules(PY, "python3-oldspell") == ("/usr/lib/python3/dist-packages/oldspell.py",)
    assert ctx.modules(PY, "libbar1") == ()


def test_processes_judged_together_get_what_each_gets_alone(admin: Path) -> None:
    """One context judges every process of a scan and works out once what is the same for many (what the
    same stale files prove, whether an interpreter is genuine): never one process's answer for another's,
    whatever differs (the interpreter, its search path, the script, the stale files)."""
    unpack(admin, "python3-app-mod", AFTER)
    unpack(admin, "libapp-mod-perl:amd64", AFTER)
    shared = (StaleFile(FD, "/usr/bin/app", CERTAIN, Evidence.UNLINKED),
              StaleFile(CODE, SOFILE, CERTAIN, Evidence.REPLACED),
              StaleFile(DATA, "/usr/lib/python3/dist-packages/unused.py", LIKELY, Evidence.DELETED_HINT))
    fake = Interpreter("python", "/usr/bin/python3.12", "python3.12-minimal", "3.12")
    cases = [(obs(pid=1), shared), (obs(PERL, pid=2), shared), (obs(path="/usr/bin/other", pid=3), shared),
             (obs(pid=4), shared[1:]), (obs(fake, ctime=AFTER, pid=5), shared), (obs(pid=6), shared),
             (obs(PERL, pid=7), ())]
    together = I.judge([o for o, _ in cases], context(admin), {o.pid: stale for o, stale in cases})
    alone = {o.pid: I.judge([o], context(admin), {o.pid: stale}).get(o.pid) for o, stale in cases}
    assert {pid: together.get(pid) for pid in alone} == alone
    assert alone[5] is None and len({found for found in alone.values() if found}) == 4  # 1 as 6, 3 as 4
