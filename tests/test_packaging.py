"""The Debian package (debian/): it builds, passes lintian, installs, runs, purges; docs follow the CLI.

Why: restartctl is only ever used as the installed package, run as root from apt's hooks, so the
package itself (paths, conffiles, dependencies, maintainer scripts, the autopkgtest) is tested like
the code.  The package is built once per session (tests/support/package.py, fixture ``built``) from a
copy of the checkout, so nothing of the build lands in the checkout; it is installed only inside
throw-away containers.

The documentation tests need no root: every option of ``restart.cli._parser()`` must be documented in
man/restartctl.8, and completion/restartctl must be what completion/generate.py makes of the parser.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import NamedTuple

import pytest

from completion import generate
from restart import __version__, policy
from restart.cli import _parser
from tests.support.checkout import recorded
from tests.support.container import Container
from tests.support.package import BUILD_ENV, DEBPATH, Built
from tests.support.package import run as _run

REPO = Path(__file__).resolve().parent.parent

CONFFILES = {
    "/etc/apt/apt.conf.d/20restartctl",
    "/etc/dpkg/dpkg.cfg.d/restartctl",
    "/etc/restartctl/policy.toml",
}
# Installed path -> file of the checkout it comes from (data/* is added by package_files()).
INSTALLED_FROM = {
    "/usr/sbin/restartctl": "bin/restartctl",  # its own entry script (python3 -IS), not pybuild's console script
    "/usr/lib/restartctl/dpkg-hook": "hook/dpkg-hook",
    "/etc/apt/apt.conf.d/20restartctl": "hook/apt.conf.d/20restartctl",
    "/etc/dpkg/dpkg.cfg.d/restartctl": "hook/dpkg.cfg.d/restartctl",
    "/etc/restartctl/policy.toml": "debian/etc/restartctl/policy.toml",
    "/usr/share/bash-completion/completions/restartctl": "completion/restartctl",
    "/usr/share/doc/restartctl/fleet.md": "docs/fleet.md",  # restartctl(8) names it: not compressed
}
EXECUTABLES = {"/usr/sbin/restartctl", "/usr/lib/restartctl/dpkg-hook"}
UNITS = {"/usr/lib/systemd/system/restartctl-report.service", "/usr/lib/systemd/system/restartctl-report.timer"}
# The only top-level directories a file of the package may be under: /usr (merged-/usr: /bin, /sbin,
# /lib* are links into it), and /etc and /var for conffiles and state.
OWN_TOPS = ("usr", "etc", "var")
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"


# ---------------------------------------------------------------------------------------- helpers
def _deb_field(deb: Path, field: str) -> str:
    return _run(["dpkg-deb", "-f", str(deb), field]).stdout.strip()


def _deb_contents(deb: Path) -> dict[str, str]:
    """Installed path -> mode string (``-rwxr-xr-x``) of every file and directory in the .deb."""
    out = _run(["dpkg-deb", "-c", str(deb)])
    assert out.returncode == 0, out.stderr
    contents = {}
    for line in out.stdout.splitlines():
        fields = line.split(None, 5)
        path = fields[5].split(" -> ")[0].removeprefix(".").rstrip("/") or "/"
        contents[path] = fields[0]
    return contents


def package_files() -> dict[str, str]:
    """Installed path -> checkout file, for the files installed verbatim."""
    files = dict(INSTALLED_FROM)
    for f in sorted((REPO / "data").iterdir()):
        if f.is_file():
            files[f"/usr/share/restartctl/{f.name}"] = f"data/{f.name}"
    return files


# ------------------------------------------------------------------------ build, lintian, contents
@pytest.mark.real
def test_build_leaves_no_trace(built: Built) -> None:
    assert built.deb.is_file() and built.changes.is_file()
    # debian/rules clean (make deb runs it: --post-clean) removes everything the build made ...
    leftovers = sorted(built.after_clean - built.before)
    assert not leftovers, f"debian/rules clean leaves build products behind: {leftovers}"
    assert built.after_clean == built.before, sorted(built.before - built.after_clean)
    # ... and what it makes meanwhile is git-ignored (an interrupted build must not show up in git status).
    made = sorted(built.new_files)
    assert any(f.startswith("debian/restartctl/") for f in made), made
    ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "--no-index", "--stdin", "-z"],
                             input="\0".join(made).encode(), capture_output=True, timeout=60, check=False)
    not_ignored = set(made) - {p.decode() for p in ignored.stdout.split(b"\0") if p}
    tops = sorted({"/".join(p.split("/")[:2 if p.startswith("debian/") else 1]) for p in not_ignored})
    assert not tops, f"build products not covered by .gitignore (root) or debian/.gitignore: {tops}"


@pytest.mark.real
def test_lintian_pedantic_has_no_errors_or_warnings(built: Built) -> None:
    changes = built.changes.read_text(encoding="utf-8")
    assert ".dsc" in changes and "_all.deb" in changes, "lintian must see the source and the binary package"
    r = _run(["lintian", "--pedantic", "--fail-on", "error,warning", str(built.changes)], timeout=300)
    bad = [line for line in r.stdout.splitlines() if line.startswith(("E:", "W:"))]
    assert not bad and r.returncode == 0, f"lintian --pedantic (exit {r.returncode}):\n{r.stdout}{r.stderr}"


@pytest.mark.real
def test_control_fields(built: Built) -> None:
    assert _deb_field(built.deb, "Package") == "restartctl"
    assert _deb_field(built.deb, "Version") == __version__
    assert _deb_field(built.deb, "Architecture") == "all"
    depends = {d.strip() for d in _deb_field(built.deb, "Depends").split(",")}
    assert {"python3 (>= 3.11)", "python3-apt"} <= depends and not any("xdg" in d for d in depends), depends
    # python3-xdg only names desktop applications in notices (test_works_without_python3_xdg).
    assert {d.strip() for d in _deb_field(built.deb, "Recommends").split(",")} == {"python3-xdg", "systemd"}
    info = _run(["dpkg-deb", "-I", str(built.deb), "conffiles"])
    assert set(info.stdout.split()) == CONFFILES, info.stdout


@pytest.mark.real
def test_files_are_where_debian_wants_them(built: Built) -> None:
    contents = _deb_contents(built.deb)
    expected = {
        "/usr/sbin/restartctl",
        "/usr/share/man/man8/restartctl.8.gz",
        "/usr/share/man/man5/restartctl-policy.5.gz",
        "/usr/share/doc/restartctl/copyright",
        *package_files(),
        *(f"/usr/lib/python3/dist-packages/restart/{p.name}" for p in (REPO / "restart").glob("*.py")),
    }
    missing = sorted(expected - set(contents))
    assert not missing, f"not in the .deb: {missing}"
    assert "/usr/bin/restartctl" not in contents
    assert not [p for p in contents if "/tests" in p or p.endswith(".pyc")]
    for path in EXECUTABLES:
        assert contents[path] == "-rwxr-xr-x", (path, contents[path])
    for path in set(package_files()) - EXECUTABLES:
        assert contents[path] == "-rw-r--r--", (path, contents[path])


def outside_usr(contents: dict[str, str]) -> list[str]:
    """The paths of a .deb under none of ``OWN_TOPS``: /lib/systemd/system/x.service, /bin/x, ..."""
    return sorted(p for p in contents if p != "/" and p.split("/")[1] not in OWN_TOPS)


@pytest.mark.real
def test_nothing_is_installed_in_an_aliased_location(built: Built) -> None:
    """Why (DEP17; Debian 13's lintian: aliased-location errors): on a merged-/usr system /lib, /bin
    and /sbin are links into /usr, and dpkg, which does not know that, can lose a file that moves
    between the two names of one directory in an upgrade.  Debian 12's debhelper put the report
    timer's units under /lib/systemd/system; debian/rules moves them, and the maintainer scripts
    still enable and start the timer."""
    contents = _deb_contents(built.deb)
    assert not outside_usr(contents), f"files outside /usr, /etc, /var: {outside_usr(contents)}"
    assert set(contents) >= UNITS, sorted(p for p in contents if "systemd" in p)
    with TemporaryDirectory() as control:
        assert _run(["dpkg-deb", "-e", str(built.deb), control]).returncode == 0
        postinst = Path(control, "postinst").read_text(encoding="utf-8")
    assert "deb-systemd-helper" in postinst and "restartctl-report.timer" in postinst, postinst


# ------------------------------------------------------------------------------ in a container
@pytest.fixture(scope="module")
def installed(systemd_container: Container, built: Built) -> Container:
    """The systemd container of this module with the built package installed (dpkg -i)."""
    systemd_container.install_debs([built.deb])
    return systemd_container


@pytest.mark.real
def test_installed_command_runs(installed: Container) -> None:
    c = installed
    assert c.check(["sh", "-c", "command -v restartctl"]).strip() == "/usr/sbin/restartctl"
    assert c.exec(["test", "-e", "/usr/bin/restartctl"]).returncode == 1
    assert c.check(["restartctl", "--version"]).strip() == f"restartctl {__version__}"
    where = c.check(["python3", "-I", "-c",
                     "import restart, restart.roots; print(restart.__file__, restart.roots.default_data_dir())"])
    assert where.split() == ["/usr/lib/python3/dist-packages/restart/__init__.py", "/usr/share/restartctl"]
    for command in (["restartctl", "plan"], ["restartctl", "scan", "--json"], ["restartctl", "status"]):
        r = c.exec(command, timeout=60)
        assert r.returncode in (0, 1), (command, r.returncode, r.stdout, r.stderr)
        assert not r.stderr, r.stderr
    # The shipped template and vendor file load (valid, and root-owned as the policy loader demands).
    checked = c.check(["restartctl", "policy", "check"])
    assert "/etc/restartctl/policy.toml" in checked and "/usr/share/restartctl/policy.toml" in checked, checked
    conffiles = c.check(["dpkg-query", "-W", "-f", "${Conffiles}\n", "restartctl"])
    assert {line.split()[0] for line in conffiles.splitlines() if line.strip()} == CONFFILES
    # The report timer's units, from /usr/lib/systemd/system (test_nothing_is_installed_in_an_aliased_location):
    # loaded by systemd (Debian 12's finds them through /lib, the same directory) and the timer enabled
    # and started by the package.
    for unit in sorted(UNITS):
        fragment = c.show(unit.rsplit("/", 1)[1], "FragmentPath")
        assert fragment and c.check(["realpath", "-e", "--", fragment]).strip() == unit, (unit, fragment)
    assert c.check(["systemctl", "is-enabled", "restartctl-report.timer"]).strip() == "enabled"
    assert c.show("restartctl-report.timer", "ActiveState") == "active"


@pytest.mark.real
def test_installed_files_match_the_checkout(installed: Container) -> None:
    for inside, source in package_files().items():
        assert installed.read_file(inside) == (REPO / source).read_bytes(), inside


@pytest.mark.real
def test_man_pages_are_found(installed: Container) -> None:
    if installed.exec(["test", "-x", "/usr/bin/man"]).returncode != 0:
        pytest.fail("man-db is missing: tests/run.sh installs it", pytrace=False)
    assert installed.check(["man", "-w", "restartctl"]).strip() == "/usr/share/man/man8/restartctl.8.gz"
    assert installed.check(["man", "-w", "5", "restartctl-policy"]).strip() == \
        "/usr/share/man/man5/restartctl-policy.5.gz"
    page = installed.check(["man", "-P", "cat", "restartctl"], env={"MANWIDTH": "80"})
    assert "restartctl plan" in page


@pytest.mark.real
def test_installed_bash_completion(installed: Container) -> None:
    script = (
        ". /usr/share/bash-completion/bash_completion\n"
        "complete -r restartctl 2>/dev/null; __load_completion restartctl || exit 3\n"
        't() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}\n'
        '      COMPREPLY=(); _restartctl; echo "${COMPREPLY[*]}"; }\n'
        't restartctl ""; t restartctl plan --js; t restartctl scan --packages dpk\n'
    )
    lines = installed.check(["bash", "-c", script]).splitlines()
    commands = set(generate.subcommands(_parser()))
    assert set(lines[0].split()) == commands
    assert lines[1] == "--json"
    assert "dpkg" in lines[2].split()


@pytest.mark.real
def test_autopkgtest(installed: Container) -> None:
    """debian/tests/upgrade-detected, as autopkgtest runs it (any output on stderr fails it)."""
    control = (REPO / "debian/tests/control").read_text(encoding="utf-8")
    assert "Tests: upgrade-detected" in control and "allow-stderr" not in control
    script = installed.copy_in(REPO / "debian/tests/upgrade-detected")
    r = installed.exec(["sh", script], timeout=120)
    assert r.returncode == 0 and not r.stderr, f"rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "ok: rctl-autopkgtest-lib named" in r.stdout
    assert "ok: the hook restarted rctl-autopkgtest-demo.service" in r.stdout
    installed.forbid_service_starts()  # as in a container image (autopkgtest's lxc/docker backends)
    try:
        r = installed.exec(["sh", script], timeout=120)
    finally:
        installed.check(["rm", "-f", "/usr/sbin/policy-rc.d"])
    assert r.returncode == 0 and not r.stderr, f"rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "ok: policy-rc.d forbids restarts here, and the hook respected it" in r.stdout


@pytest.mark.real
def test_installed_hook_restarts_after_apt_upgrade(container_factory: Callable[..., Container], built: Built,
                                                   demo_debs: dict[str, dict[str, Path]]) -> None:
    """End to end: the built package's own hooks, a real apt upgrade, a real restart."""
    c = container_factory("rctl-pkg-e2e", boot=True)
    c.install_debs([built.deb])
    names = ("rctl-libdemo1", "rctl-demod")
    cfg = c.local_repo([demo_debs[v][n] for v in ("1.0", "2.0") for n in names])
    env = {"APT_CONFIG": cfg, "DEBIAN_FRONTEND": "noninteractive"}
    c.check(["apt-get", "-q", "update"], env=env)
    c.check(["apt-get", "-q", "install", "-y", "rctl-demod=1.0", "rctl-libdemo1=1.0"], env=env)
    c.systemctl("start", "rctl-demod.service")
    c.wait_active("rctl-demod.service")
    old = c.main_pid("rctl-demod.service")
    r = c.exec(["apt-get", "-q", "-o", "Dpkg::Use-Pty=0", "install", "-y", "rctl-demod=2.0", "rctl-libdemo1=2.0"],
               env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rctl-demod.service" in r.stdout and recorded(c)["rctl-demod.service"] == ("restart", "done"), r.stdout
    assert r.stdout.count("restartctl: 1 unit, 2 packages (") == 1, r.stdout
    assert c.main_pid("rctl-demod.service") not in (0, old)
    assert c.exec(["restartctl", "status"]).returncode == 0


@pytest.mark.real
def test_autopkgtest_without_systemd(plain_container: Container, built: Built) -> None:
    """The same autopkgtest where PID 1 is not systemd: the service is a plain background process."""
    plain_container.install_debs([built.deb])
    script = plain_container.copy_in(REPO / "debian/tests/upgrade-detected")
    r = plain_container.exec(["sh", script], timeout=120)
    assert r.returncode == 0 and not r.stderr, f"rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "ok: rctl-autopkgtest-lib named" in r.stdout


@pytest.mark.real
def test_remove_keeps_dpkg_working_and_purge_cleans_up(
        container_factory: Callable[..., Container], built: Built) -> None:
    c = container_factory("rctl-purge", boot=True)
    c.install_debs([built.deb])
    c.check(["sh", "-c", "mkdir -p /var/lib/restartctl /run/restartctl/lists && "
                         "echo '{}' > /var/lib/restartctl/pending.json && touch /run/restartctl/journal"])
    # node-exporter's textfile directory with restartctl's metrics and another exporter's file.
    c.check(["mkdir", "-p", "-m", "0755", TEXTFILE_DIR])
    r = c.exec(["restartctl", "plan", "--format", "openmetrics", "--textfile"], timeout=120)  # as the report timer
    assert r.returncode in (0, 1) and c.exec(["test", "-s", f"{TEXTFILE_DIR}/restartctl.prom"]).returncode == 0, r
    c.write_file(f"{TEXTFILE_DIR}/other.prom", "other_metric 1\n")
    r = c.exec(["dpkg", "--remove", "restartctl"], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    # The hooks' conffiles stay until purge; dpkg must keep working with them.
    assert c.exec(["test", "-f", "/etc/dpkg/dpkg.cfg.d/restartctl"]).returncode == 0
    assert c.exec(["test", "-e", "/usr/sbin/restartctl"]).returncode == 1
    r = c.exec(["dpkg", "--purge", "restartctl"], timeout=120)
    assert r.returncode == 0 and "error" not in r.stderr.lower(), r.stdout + r.stderr
    for path in ("/var/lib/restartctl", "/run/restartctl", "/etc/restartctl", f"{TEXTFILE_DIR}/restartctl.prom",
                 *CONFFILES):
        assert c.exec(["test", "-e", path]).returncode == 1, f"{path} survived the purge"
    assert c.read_file(f"{TEXTFILE_DIR}/other.prom") == b"other_metric 1\n"  # not ours: kept
    assert c.exec(["test", "-d", "/var/lib/dpkg"]).returncode == 0


@pytest.mark.real
def test_works_without_python3_xdg(container_factory: Callable[..., Container], built: Built) -> None:
    """python3-xdg is a Recommends: purged, restartctl still finds, restarts and tells users (it names a
    desktop program by its process name instead of its application name)."""
    c = container_factory("rctl-noxdg", boot=True)
    c.install_debs([built.deb])
    r = c.exec(["dpkg", "--purge", "python3-xdg"], timeout=120)  # a Depends would refuse this
    assert r.returncode == 0, r.stdout + r.stderr
    assert c.exec(["python3", "-c", "import xdg"]).returncode != 0
    c.write_file("/usr/share/applications/rctl-term.desktop",
                 "[Desktop Entry]\nType=Application\nName=Terminal\nExec=/usr/bin/xterm\n")
    names = c.check(["python3", "-I", "-c",
                     "from restart import notify; print(notify.app_names({'/usr/bin/xterm'}))"])
    assert names.strip() == "{}"
    script = c.copy_in(REPO / "debian/tests/upgrade-detected")
    r = c.exec(["sh", script], timeout=120)
    assert r.returncode == 0 and not r.stderr, f"rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "ok: the hook restarted rctl-autopkgtest-demo.service" in r.stdout


# ---------------------------------------------------------------- documentation follows the CLI
def _walk(parser: argparse.ArgumentParser) -> Iterator[tuple[str | None, argparse.ArgumentParser]]:
    """(None, top-level parser), then ("scan", parser), ("policy", ...), ("policy explain", ...)."""
    yield None, parser
    yield from generate.commands(parser)


def _plain(roff: str) -> str:
    """Roff source as text, enough to find option names: escapes and font changes removed."""
    text = re.sub(r"\\f(\[[^]]*\]|\(..|.)", "", roff)
    text = text.replace("\\-", "-").replace("\\&", "").replace("\\|", "").replace("\\~", " ")
    return text.replace('"', "")


def _mentions(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


class ManPage(NamedTuple):
    synopsis: list[str]  # each .SY ... .YS block, as plain text
    shared: str          # the rest of SYNOPSIS (where root-options are spelt out)
    tags: list[str]      # the tag line of every .TP item
    text: str            # the whole page


def _man_page(page: str) -> ManPage:
    lines = page.splitlines()
    synopsis: list[str] = []
    shared: list[str] = []
    tags: list[str] = []
    section = ""
    block: list[str] | None = None
    for i, line in enumerate(lines):
        if line.startswith(".SH"):
            section = _plain(line[3:]).strip()
        elif line.startswith(".SY"):
            block = [line]
        elif line.startswith(".YS") and block is not None:
            synopsis.append(_plain(" ".join(block)))
            block = None
        elif block is not None:
            block.append(line)
        elif section == "SYNOPSIS":
            shared.append(line)
        if line.strip() == ".TP" and i + 1 < len(lines):
            tags.append(_plain(lines[i + 1]))
    return ManPage(synopsis, _plain(" ".join(shared)), tags, _plain(page))


def test_man_page_documents_every_command_and_option() -> None:
    man = _man_page((REPO / "man/restartctl.8").read_text(encoding="utf-8"))
    problems = []
    for command, parser in _walk(_parser()):
        name = command or "restartctl"
        blocks: list[str] = []
        if command is not None:
            blocks = [b for b in man.synopsis if re.match(rf"\.SY restartctl \.B {re.escape(command)}\b", b)]
            if not blocks:
                problems.append(f"no SYNOPSIS line (.SY restartctl / .B {command}) for command {command!r}")
            has_subcommands = bool(generate.subcommands(parser))
            if not has_subcommands and not any(re.fullmatch(rf"\.B {re.escape(command)}\s*", t) for t in man.tags):
                problems.append(f"command {command!r} has no .TP item under COMMANDS")
        for action in generate.positionals(parser):
            label = action.metavar if isinstance(action.metavar, str) else action.dest
            if not any(_mentions(b, label) for b in blocks):
                problems.append(f"{name} {label}: argument missing from its SYNOPSIS line")
            if not any(_mentions(t, label) for t in man.tags):
                problems.append(f"{name} {label}: no .TP item describes the argument")
        for action in generate.options(parser):
            for option in action.option_strings:
                if not any(_mentions(t, option) for t in man.tags):
                    problems.append(f"{name} {option}: no .TP item describes it")
                # Top-level and help options may be in any synopsis line; the others in the command's
                # own, or in the spelt-out root-options when its line says [root-options].
                if command is None or option in ("-h", "--help"):
                    found = any(_mentions(b, option) for b in man.synopsis) or _mentions(man.shared, option)
                else:
                    found = any(_mentions(b, option) or ("root-options" in b and _mentions(man.shared, option))
                                for b in blocks)
                if not found:
                    problems.append(f"{name} {option}: missing from its SYNOPSIS line")
            for choice in action.choices or ():
                if action.option_strings and not _mentions(man.text, str(choice)):
                    problems.append(f"{name} {action.option_strings[0]}: value {choice!r} undocumented")
    assert not problems, "man/restartctl.8 is out of date:\n" + "\n".join(problems)


def test_policy_man_page_documents_every_key_action_and_setting() -> None:
    tags = _man_page((REPO / "man/restartctl-policy.5").read_text(encoding="utf-8")).tags
    documented = {t.strip().removeprefix(".B ").strip() for t in tags if t.startswith(".B ")}
    missing = sorted((policy.RULE_KEYS | set(policy.ACTIONS) | set(policy.Settings._fields)) - documented)
    assert not missing, f"man/restartctl-policy.5 has no .TP item for: {missing}"


def test_man_pages_are_clean_roff() -> None:
    """What lintian's groff-message check runs; warnings there are lintian warnings."""
    if shutil.which("man", path=DEBPATH) is None:
        pytest.fail("man-db is missing: tests/run.sh installs it", pytrace=False)
    for page in ("man/restartctl.8", "man/restartctl-policy.5"):
        r = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(REPO / page)],
                           env={**BUILD_ENV, "MANROFFSEQ": "", "MANWIDTH": "80"}, capture_output=True,
                           text=True, timeout=60, check=False)
        assert r.returncode == 0 and not r.stderr.strip(), f"{page}:\n{r.stderr}"


def test_bash_completion_is_generated_from_the_parser() -> None:
    committed = (REPO / "completion/restartctl").read_text(encoding="utf-8")
    assert committed == generate.render(_parser()), \
        "completion/restartctl is out of date with restart/cli.py: run 'make completion'"


def test_versions_agree() -> None:
    first = (REPO / "debian/changelog").read_text(encoding="utf-8").splitlines()[0]
    match = re.match(r"restartctl \(([^)]+)\) ", first)
    assert match and match.group(1) == __version__, (first, __version__)
    for page in ("man/restartctl.8", "man/restartctl-policy.5"):
        th = next(line for line in (REPO / page).read_text(encoding="utf-8").splitlines() if line.startswith(".TH"))
        assert f'"restartctl {__version__}"' in th, (page, th)


def test_policy_template_is_all_comments_and_its_examples_are_valid() -> None:
    text = (REPO / "debian/etc/restartctl/policy.toml").read_text(encoding="utf-8")
    assert tomllib.loads(text) == {}, "every setting of /etc/restartctl/policy.toml must be commented out"
    # Example lines are "#" followed directly by TOML; prose is "# ...".
    uncommented = "\n".join(line[1:] if re.match(r"#[^\s#]", line) else line for line in text.splitlines())
    doc = tomllib.loads(uncommented)
    rules = policy.parse_rules(uncommented, "template")
    assert len(rules) == len(doc["rule"]) >= 3
    assert {r.action for r in rules} <= set(policy.ACTIONS)
    assert set(doc) == {"settings", "rule"}
    assert set(doc["settings"]) == set(policy.Settings._fields), "the template must show every setting"
    policy.parse(uncommented, "template")  # the settings' example values are valid too
