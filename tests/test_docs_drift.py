"""The claims the man pages and the README make about commands, options and exit codes, checked
against the argument parser and the code (issue 19): they drifted once and must not again.
(test_packaging.py checks that every visible option has a man page item; this file checks the rest.)"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import pytest

from completion import generate
from restart import cli, formats, policy, report
from restart.cli import _parser

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
FLAT = " ".join(README.split())  # sentences that wrap
MAN = (REPO / "man/restartctl.8").read_text(encoding="utf-8")


def plain(roff: str) -> str:
    return re.sub(r"\\f(\[[^]]*\]|\(..|.)", "", roff).replace("\\-", "-").replace("\\&", "").replace('"', "")


def section(page: str, name: str) -> str:
    start = page.index(f".SH {name}")
    end = page.find("\n.SH ", start + 1)
    return page[start:end]


def commands() -> dict[str, argparse.ArgumentParser]:
    return generate.subcommands(_parser())


def test_the_readme_says_which_commands_take_json() -> None:
    m = re.search(r"((?:`\w+`(?:, | and ))+`\w+`) take `--json`", FLAT)
    assert m, "README: the sentence naming the commands that take --json is gone"
    claimed = set(re.findall(r"`(\w+)`", m[1]))
    actual = {name for name, p in commands().items() if any("--json" in a.option_strings for a in p._actions)}
    assert claimed == actual


def test_the_readme_exit_code_table_covers_every_command() -> None:
    table = README[README.index("## Exit codes"):README.index("## The JSON contract")]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    named = {w.split()[0] for row in rows for w in re.findall(r"`([a-z -]+)`", row.split("|")[1])}
    assert named == set(commands())
    assert "130" in table and "3 = UNKNOWN" in table


def test_the_man_page_exit_statuses_are_the_codes_the_code_returns() -> None:
    text = section(MAN, '"EXIT STATUS"')
    tags = [int(m) for m in re.findall(r"^\.TP\n\.B (\d+)$", text, re.MULTILINE)]
    assert tags == sorted(tags), "EXIT STATUS lists the codes in order"
    assert set(tags) == {cli.EXIT_OK, cli.EXIT_STALE, cli.EXIT_ERROR, formats.UNKNOWN, cli.EXIT_INTERRUPTED}
    words = plain(section(MAN, "COMMANDS"))
    expected = ", ".join(f"{code} {name}" for code, name in enumerate(formats.STATUS_NAMES))
    assert f"Exit status {expected}" in " ".join(words.split())
    for name in commands():
        assert re.search(rf"\.BR? \"?{name}\b", text), f"EXIT STATUS never names {name}"


def test_the_root_options_are_hidden_but_documented_and_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    completion = (REPO / "completion/restartctl").read_text(encoding="utf-8")
    roots = plain(MAN[MAN.index('.SS "Alternative roots"'):MAN.index(".SH OUTPUT")])
    readme = re.search(r"root options `([^`]+)`", FLAT)
    assert readme and set(readme[1].split()) == set(cli.ROOT_OPTIONS)
    for name, parser in commands().items():
        shown = parser.format_help()
        for option in cli.ROOT_OPTIONS:
            assert option not in shown, f"restartctl {name} --help shows {option}"
            assert re.search(rf"(?<![\w-]){option}(?![\w-])", completion) is None, f"completion offers {option}"
            assert re.search(rf"^\.BI {option} ", roots, re.MULTILINE), f"restartctl(8) does not describe {option}"
    assert cli.main(["policy", "check", "--etc", "/nonexistent", "--data", str(REPO / "data")]) == 0
    assert "policy OK" in capsys.readouterr().out


def test_help_texts_say_what_the_commands_do() -> None:
    hook = commands()["hook"]
    assert "never prompts" not in (hook.description or "")
    apply_json = next(a for a in commands()["apply"]._actions if "--json" in a.option_strings)
    assert report.APPLY_SCHEMA in (apply_json.help or "") and "restartctl/1 " not in (apply_json.help or "")
    assert "--json" not in {o for a in commands()["check"]._actions for o in a.option_strings}


def test_the_policy_precedence_is_documented_both_ways() -> None:
    """Rules: policy.toml before policy.d; settings: policy.d over policy.toml (restart/policy.py)."""
    assert "policy.d" in (policy.__doc__ or "")
    text = FLAT
    assert "a rule in `policy.toml` beats a drop-in's rule" in text and "a drop-in beats `policy.toml`" in text


def test_fleet_md_is_installed_where_the_man_page_says() -> None:
    assert "/usr/share/doc/restartctl/fleet.md" in plain(MAN)
    assert "docs/fleet.md" in (REPO / "debian/restartctl.docs").read_text()
    assert re.search(r"dh_compress .*-Xfleet\.md", (REPO / "debian/rules").read_text())


def test_a_first_install_says_that_restarts_are_automatic(tmp_path: Path) -> None:
    script = (REPO / "debian/postinst").read_text().replace("#DEBHELPER#", "")
    (tmp_path / "postinst").write_text(script)
    first = subprocess.run(["/bin/sh", str(tmp_path / "postinst"), "configure", ""], capture_output=True,
                           text=True, timeout=30, check=True)
    assert "restarted automatically" in first.stdout and "mode and" in first.stdout
    upgrade = subprocess.run(["/bin/sh", str(tmp_path / "postinst"), "configure", "0.1.0"], capture_output=True,
                             text=True, timeout=30, check=True)
    assert upgrade.stdout == ""


def test_tests_run_sh_waits_for_the_dpkg_lock() -> None:
    script = (REPO / "tests/run.sh").read_text()
    assert "DPkg::Lock::Timeout" in script
    calls = re.findall(r"^\s*[^#\n]*\bapt-get (update|install)\b", script, re.MULTILINE)
    assert not calls, "every apt-get call goes through ${apt_get[@]} (with the lock timeout)"


def test_help_runs(capsys: pytest.CaptureFixture[str]) -> None:
    for name in commands():
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"] if name != "policy" else [name, "check", "--help"])
        assert e.value.code == 0
