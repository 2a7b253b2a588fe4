"""The command line: wires the stages together; no logic of its own beyond that."""

from __future__ import annotations

from restart import Importing

with Importing():
    import os
    import sys
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from restart import TYPE_CHECKING, __version__, transaction
    from restart.roots import Roots
    from restart.scan import find
    from restart.text import printable, tolerant_streams

if TYPE_CHECKING:  # argparse is imported when a command line is parsed: never by the apt hook's (see main)
    import argparse
    from typing import Any, NoReturn

    from restart import plan
# plan, policy and report (with units) are imported where a command needs them: a scan's while its forked
# child scans (_scan_or_plan's meanwhile), not before the fork as the child does not need them.

EXIT_OK, EXIT_STALE, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_TEXTFILE = Path("(default)")
APPLY_BUDGET = 600.0  # apply's --budget by default


def _parser_class() -> Any:
    """The parser's class (argparse's, with the two changes below), made when a command line is parsed."""
    import argparse

    class Help(argparse.HelpFormatter):
        """argparse's help at the terminal's width, found without ``shutil``: argparse makes a formatter
        for every option it is given and imported shutil (and its compression modules) for the width,
        3 ms of every run, the apt hook's included."""

        def __init__(self, prog: str) -> None:
            try:
                width = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size(sys.stdout.fileno()).columns
            except (ValueError, OSError, AttributeError):
                width = 80
            super().__init__(prog, width=width - 2)

    class Parser(argparse.ArgumentParser):
        """Usage errors in one line (exit 2); for ``check``, a Nagios UNKNOWN line (exit 3)."""

        command = ""  # the top-level parser also reports a command's unknown options

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(formatter_class=Help, **kwargs)

        def error(self, message: str) -> NoReturn:
            command = self.prog.removeprefix("restartctl").strip() or self.command
            if command == "check":
                from restart import formats

                code, out = formats.nagios_unknown(f"usage: {message}")
                self.exit(code, out)
            self.exit(EXIT_ERROR,
                      f"restartctl: {message} (see 'restartctl {command + ' ' if command else ''}--help')\n")

    return Parser


def _at_least_zero(kind: type[int] | type[float]) -> Callable[[str], Any]:
    def convert(text: str) -> int | float:
        import argparse

        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {'whole ' if kind is int else ''}number: {text!r}") from None
        if value < 0 or value != value:  # NaN is not a number of anything
            raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
        return value
    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


# Alternative roots, for tests and chroots: option -> default.  Hidden from --help and completion.
ROOT_OPTIONS: dict[str, Path | None] = {
    "--proc": Path("/proc"), "--root": Path("/"), "--admindir": Path("/var/lib/dpkg"), "--run": Path("/run"),
    "--etc": Path("/etc"), "--state": Path("/var/lib/restartctl"), "--data": None,  # None: roots' own default
}
ROOT_DEFAULTS = {option.lstrip("-"): default for option, default in ROOT_OPTIONS.items()}  # by argparse's names


def _roots_options(p: argparse.ArgumentParser) -> None:
    """Accepted by every command, documented in restartctl(8), never offered by --help or completion."""
    import argparse  # (imported already: p is a parser)

    for option, default in ROOT_OPTIONS.items():
        p.add_argument(option, type=Path, default=default, help=argparse.SUPPRESS)


def _common_options(p: argparse.ArgumentParser, *,
                    json_help: str | None = "print the restartctl/1 JSON document") -> None:
    _roots_options(p)
    if json_help is not None:
        p.add_argument("--json", action="store_true", help=json_help)
    p.add_argument("--packages", nargs="+", metavar="PKG", help="only files of these packages (name or name:arch)")


def _listing_options(p: argparse.ArgumentParser) -> None:
    _common_options(p)
    p.add_argument("--all", action="store_true",
                   help="also list replaced files no package (in scope) owns; never acted on")
    p.add_argument("--format", choices=("text", "json", "nagios", "openmetrics"), default=None,
                   help="output format (default text; --json is --format json)")
    p.add_argument("--textfile", type=Path, metavar="PATH", nargs="?", const=DEFAULT_TEXTFILE,
                   help="with --format openmetrics, also write it atomically to PATH (default: "
                        "node-exporter's textfile directory, when it exists)")
    p.add_argument("--refresh", action="store_true",
                   help="with --textfile: when the file says nothing is pending and neither the dpkg database "
                        "nor restartctl's state changed since, only renew its report time, without a scan "
                        "(the report timer)")


def _check_options(p: argparse.ArgumentParser) -> None:
    _common_options(p, json_help=None)
    for what, warn in (("services", 1), ("sessions", 0)):
        p.add_argument(f"--{what}-warning", type=_at_least_zero(int), default=warn, metavar="N",
                       help=f"WARNING from N pending {what} (default {warn or 'off'})")
        p.add_argument(f"--{what}-critical", type=_at_least_zero(int), default=0, metavar="N",
                       help=f"CRITICAL from N pending {what} (default off)")
    p.add_argument("--reboot-critical", action="store_true", help="a needed reboot is CRITICAL (default WARNING)")


def _apply_options(p: argparse.ArgumentParser) -> None:
    from restart import policy, report

    _common_options(p, json_help=f"after the run, print the {report.APPLY_SCHEMA} JSON document (what became of each "
                                 "unit, what is still pending) instead of text")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--yes", action="store_true", help="restart without asking (mode auto)")
    how.add_argument("--dry-run", action="store_true", help="only show what would be done (mode list)")
    how.add_argument("--mode", choices=policy.MODES, help="override the policy's mode")
    p.add_argument("--budget", type=_at_least_zero(float), default=APPLY_BUDGET, metavar="SECONDS",
                   help=f"stop starting restarts after this long (default {APPLY_BUDGET:g})")


def _status_options(p: argparse.ArgumentParser) -> None:
    _roots_options(p)
    p.add_argument("--json", action="store_true", help="print the state record as JSON")


def _policy_options(p: argparse.ArgumentParser) -> None:
    _roots_options(p)
    actions = p.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    _roots_options(actions.add_parser("check", help="load every policy file and report errors (exit 2) or OK"))
    _roots_options(actions.add_parser("show", help="effective settings and rules, with the file each came from"))
    explain = actions.add_parser("explain", help="which rule decides for a unit, and why")
    _roots_options(explain)
    explain.add_argument("unit", help="unit name, e.g. nginx.service")
    explain.add_argument("--user", action="store_true", help="a user unit (scope user) rather than a system one")
    explain.add_argument("--package", action="append", default=[], metavar="PKG",
                         help="the package that left it stale (repeatable)")


def _hook_options(p: argparse.ArgumentParser) -> None:
    from restart import policy

    _roots_options(p)
    p.add_argument("--trigger", choices=transaction.TRIGGERS, default="manual",
                   help="who runs it: apt, dpkg, unattended-upgrades or manual (default)")
    p.add_argument("--after", type=_after, metavar="PID:START",
                   help="first wait (bounded) until this process has exited")
    p.add_argument("--budget", type=_at_least_zero(float), default=None, metavar="SECONDS",
                   help="give up after this long (default: the policy's hook_budget, "
                        f"{policy.Settings().hook_budget:.0f} unless set)")


# command -> (one-line help, description, its options)
COMMANDS: dict[str, tuple[str, str, Callable[[argparse.ArgumentParser], None]]] = {
    "scan": ("list processes using replaced files, by unit",
             "List processes that use replaced package files, grouped by unit.", _listing_options),
    "plan": ("show what would be restarted (dry run)",
             "Show, per unit, the command that would fix it (dry run).", _listing_options),
    "check": ("Nagios/Icinga plugin: OK, WARNING, CRITICAL or UNKNOWN (exit 0-3)",
              "One status line with performance data, for Nagios and Icinga. Thresholds are counts "
              "that raise the state (warn at >= N); 0 disables one.", _check_options),
    "apply": ("restart what the policy allows, verified",
              "Restart, one unit at a time and verified, what uses replaced files, as the policy "
              "says; tell logged-in users about what only they can restart.", _apply_options),
    "status": ("what the last run found and what is still pending (no scan)",
               "Show the last run's findings and what is still pending, from the state directory; "
               "instant, no scan.", _status_options),
    "policy": ("check, show or explain the policy", "Check, show or explain the restart policy.", _policy_options),
    "hook": ("run after a package transaction (called by the apt/dpkg hooks)",
             "Report what the package transactions recorded since the last run left stale, and act "
             "as the policy's mode says. Always exits 0; asks only in mode ask on a terminal (and not "
             "under apt -y); bounded in time.", _hook_options),
}


def _parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; given ``argv`` that names a command, only that command.

    Each command's parser, and each option, costs time at every start (all of them: about
    6 ms of the apt hook's run), so a run builds only its own; the list of every command
    is needed only when none is named (an error, or the top-level ``--help``).
    """
    named = argv[0] if argv else None
    parser = _parser_class()(
        prog="restartctl",
        description="Find processes that still use files replaced by a package upgrade, "
                    "and what to restart to fix them.")
    parser.command = named if named in COMMANDS else ""
    parser.add_argument("--version", action="version", version=f"restartctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (summary, description, add_options) in COMMANDS.items():
        if argv is not None and named in COMMANDS and name != named:
            continue
        command = sub.add_parser(name, help=summary, description=description)
        if argv is None or name == named:
            add_options(command)
    made: argparse.ArgumentParser = parser
    return made


def _after(text: str) -> tuple[int, int]:
    pid, _, start = text.partition(":")
    if not (pid.isdigit() and start.isdigit()):
        import argparse

        raise argparse.ArgumentTypeError("expected PID:START (start time in clock ticks)")
    return int(pid), int(start)


def _roots(args: argparse.Namespace) -> Roots:
    extra = {"data": args.data} if args.data is not None else {}
    return Roots(proc=args.proc, root=args.root, admindir=args.admindir, run=args.run, etc=args.etc,
                 state=args.state, **extra)


def run() -> None:
    """The console entry point: :func:`main`, then leave at once.

    Tearing the interpreter down frees every object one by one, about 5 ms, a sixth of
    a small scan's own work.  Every file restartctl writes is closed where it is written,
    so only the standard streams are left to flush, here.
    """
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # restartctl scan | head
        code = EXIT_ERROR
    except OSError as e:  # the output could not be written (a full disk)
        print(f"restartctl: cannot write the output: {printable(str(e))}", file=sys.stderr)
        code = EXIT_ERROR
    sys.stderr.flush()
    os._exit(code)


def _package_managers_hook(argv: Sequence[str]) -> str | None:
    """The trigger of exactly what apt's and dpkg's hooks run (``hook --trigger apt``, ``hook --trigger
    dpkg``), parsed without argparse: importing it and building the parser were ~5 ms of every apt run.
    None for any other command line (argparse parses it, with its checks and messages)."""
    if len(argv) == 3 and argv[0] == "hook" and argv[1] == "--trigger" and argv[2] in ("apt", "dpkg"):
        return argv[2]
    return None


_LISTING = {"packages": None, "all": False, "format": None, "textfile": None, "refresh": False}
# The exact command lines read without argparse (see _plain), with what argparse makes of each besides
# the root options: ``apply --yes`` (the command scripts and the restart benchmark run; argparse was ~4 ms
# before the first restart) and ``scan``/``plan`` [``--json``] (what monitoring and the scan benchmark
# run; ~3 ms of each).
_PLAIN: dict[tuple[str, ...], dict[str, Any]] = {
    ("apply", "--yes"): {"command": "apply", "json": False, "packages": None, "yes": True, "dry_run": False,
                         "mode": None, "budget": APPLY_BUDGET},
    **{(command, *flag): {"command": command, "json": bool(flag), **_LISTING}
       for command in ("scan", "plan") for flag in ((), ("--json",))},
}


def _plain(argv: Sequence[str]) -> Any:
    """What argparse makes of one of the few exact command lines of ``_PLAIN``, read without it (its
    import and the command's parser cost milliseconds of runs that are timed).  None for any other
    command line (argparse's, with its checks and messages)."""
    fields = _PLAIN.get(tuple(argv))
    if fields is None:
        return None
    from types import SimpleNamespace

    return SimpleNamespace(**ROOT_DEFAULTS, **fields)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    tolerant_streams()
    trigger = _package_managers_hook(argv)
    if trigger is not None:
        with Importing():
            from restart import hook

        return hook.run(Roots(**{name: default for name, default in ROOT_DEFAULTS.items() if default is not None}),
                        trigger, after=None, budget=None)
    args = _plain(argv) or _parser(argv).parse_args(argv)
    roots = _roots(args)
    if args.command == "hook":
        from restart import hook  # only this command needs it
        from restart.runs import Process
        after = Process(*args.after) if args.after else None
        return hook.run(roots, args.trigger, after=after, budget=args.budget)
    try:
        if args.command in ("scan", "plan", "check", "apply"):
            _usable(roots, args)
        if args.command == "apply":
            return _apply(roots, args)
        if args.command == "status":
            return _status(roots, args)
        if args.command == "policy":
            return _policy(roots, args)
        if args.command == "check":
            return _check(roots, args)
        return _scan_or_plan(roots, args)
    except BrokenPipeError:
        raise  # the reader went away (| head): not an error to report, see run()
    except KeyboardInterrupt:
        print("\nrestartctl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        from restart.policy import PolicyError

        if not isinstance(e, OSError | ValueError | PolicyError):
            raise
        if args.command == "check" or getattr(args, "format", None) == "nagios":
            from restart import formats
            code, out = formats.nagios_unknown(str(e))
            sys.stdout.write(out)
            return code
        print(f"restartctl: {printable(str(e))}", file=sys.stderr)
        return EXIT_ERROR


def _usable(roots: Roots, args: argparse.Namespace) -> None:
    """Refuse, in one line, what would otherwise end in a silent all-clear or a traceback."""
    if args.command == "apply" and os.geteuid() != 0:
        raise ValueError("apply must run as root (it restarts services and records what is pending); "
                         "'restartctl plan' shows what it would do")
    if not (roots.admindir / "info").is_dir():
        raise ValueError(f"{roots.admindir}: not a dpkg database (no info directory)")
    if getattr(args, "textfile", None) is not None:
        if args.format != "openmetrics":
            raise ValueError("--textfile writes the OpenMetrics text: it needs --format openmetrics")
        if args.textfile == DEFAULT_TEXTFILE:
            from restart import formats

            if formats.default_textfile() is None:
                raise ValueError(f"node-exporter's textfile directory {formats.TEXTFILE_DIR} does not exist: "
                                 "name the file (--textfile PATH)")
    if args.packages:
        from restart.packages import DpkgDatabase

        found = DpkgDatabase(roots.admindir, roots.root).resolve_names(args.packages)
        unknown = [printable(name) for name, installed in found.items() if not installed]
        if unknown:
            raise ValueError(f"not an installed package: {', '.join(unknown)}")


def _reboot_reasons(roots: Roots, actions: list[plan.Action], known: Any = None) -> tuple[list[Any], Any]:
    """``known``: :func:`_machine`'s answer, read earlier in this run."""
    from restart import reboot

    reasons, kernel = reboot.for_host(actions, proc=roots.proc, root=roots.root, admindir=roots.admindir,
                                      known=known, run=roots.run)
    return reasons + reboot.flagged(roots.run, known=reasons), kernel


def _machine(roots: Roots) -> Any:
    from restart import reboot

    return reboot.machine(proc=roots.proc, root=roots.root, admindir=roots.admindir, run=roots.run)


def _nagios(roots: Roots, packages: list[str] | None, **thresholds: Any) -> int:
    """Nagios plugin: one line and perfdata; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.

    ``thresholds`` are ``formats.nagios``'s; the ones not given keep its defaults."""
    from restart import formats, plan, policy, state, unitstate

    findings = find(roots, only_packages=packages)
    actions = plan.make_plan(findings.groups, policy.for_host(roots.etc, roots.data))
    reasons, _ = _reboot_reasons(roots, actions)
    record, current = state.last_run(roots.state, roots.proc)
    down = unitstate.left_down(record if current else None) if roots.systemd_booted() else []
    code, out = formats.nagios(actions, reasons, is_root=os.geteuid() == 0, scan=findings.scan, down=down,
                               **thresholds)
    sys.stdout.write(out)
    return code


def _check(roots: Roots, args: argparse.Namespace) -> int:
    """``restartctl check``: the thresholds from the command line (0 disables one)."""
    from restart import formats

    return _nagios(roots, args.packages,
                   services_warning=args.services_warning or None,
                   services_critical=args.services_critical or None,
                   sessions_warning=args.sessions_warning or None,
                   sessions_critical=args.sessions_critical or None,
                   reboot_status=formats.CRITICAL if args.reboot_critical else formats.WARNING)


def _scan_or_plan(roots: Roots, args: argparse.Namespace) -> int:
    if args.format == "nagios":
        return _nagios(roots, args.packages)
    fmt = args.format or ("json" if args.json else "text")
    if fmt == "openmetrics" and args.refresh and args.textfile is not None and _renew_textfile(roots, args.textfile):
        return EXIT_OK
    ahead: dict[str, Any] = {}

    def meanwhile() -> None:
        """What the output needs that no finding changes, read (and its modules imported) while the forked
        scanner still scans."""
        with Importing():  # imported now, not after the scan
            from restart import policy, report  # noqa: F401
            if fmt in ("json", "openmetrics"):
                from restart import formats  # noqa: F401
        if args.command == "plan":
            ahead["policy"] = policy.for_host(roots.etc, roots.data)
        if fmt in ("json", "openmetrics") or args.command == "plan":
            ahead["machine"] = _machine(roots)

    findings = find(roots, only_packages=args.packages, everything=args.all, meanwhile=meanwhile)
    from restart import plan, policy, report

    actions = plan.make_plan(findings.groups, ahead["policy"]) if args.command == "plan" else None
    if "machine" in ahead:
        reasons, kernel = _reboot_reasons(roots, actions or [], ahead["machine"])
    failed = _failed(roots) if actions is not None and fmt in ("json", "text") else []
    if fmt == "openmetrics":
        from restart import formats, state

        record, current = state.last_run(roots.state, roots.proc)
        out = formats.host_metrics(actions, findings.groups, findings.scan, reasons, admindir=roots.admindir,
                                   last_run=record, current_boot=current)
        if args.textfile is not None:
            formats.write_textfile(out, None if args.textfile == DEFAULT_TEXTFILE else args.textfile)
    elif fmt == "json":
        from restart import formats

        out = report.to_json(findings.affected, findings.groups, findings.scan, actions=actions,
                             show_unowned=args.all, packages=args.packages,
                             reboot=formats.reboot_json(reasons, kernel),
                             failed=failed if actions is not None else None, indent=_json_indent())
    elif actions is not None:
        out = report.plan_text(findings.affected, actions, findings.scan, show_unowned=args.all, reboot=reasons)
        out += "".join(f"{line}\n" for line in report.failed_lines(failed))
    else:
        out = report.scan_text(findings.affected, findings.groups, findings.scan, show_unowned=args.all)
    sys.stdout.write(out)
    if actions is not None:
        return EXIT_STALE if failed or any(a.action != policy.Act.IGNORE for a in actions) else EXIT_OK
    return EXIT_STALE if findings.groups else EXIT_OK


def _failed(roots: Roots) -> list[dict[str, Any]]:
    """Units whose restart failed in the last run of this boot and that are not healthy since."""
    from restart import state, unitstate

    record, current = state.last_run(roots.state, roots.proc)
    return unitstate.last_failures(record) if current and roots.systemd_booted() else []


def _renew_textfile(roots: Roots, textfile: Path) -> bool:
    """``--refresh``: renew the textfile's report time instead of a scan, when nothing can have changed."""
    from restart import formats, state

    text = formats.renew_textfile(formats.default_textfile() if textfile == DEFAULT_TEXTFILE else textfile,
                                  since=[roots.admindir / "status", roots.state / state.PENDING,
                                         roots.run / "reboot-required"])
    if text is not None:
        sys.stdout.write(text)
    return text is not None


def _apply(roots: Roots, args: argparse.Namespace) -> int:
    """Exit 0 when every restart it tried succeeded (or there was nothing to do), 1 when one failed."""
    import time

    with Importing():
        from restart import apply, policy, report, runs

    mode = "auto" if args.yes else "list" if args.dry_run else args.mode
    log = apply.Log(sys.stdout, sys.stderr, quiet=args.json)
    wait = min(args.budget, policy.Settings().hook_budget + 10)  # longer than a hook run takes by default

    def waiting(holder: str) -> None:
        print(f"restartctl: waiting (at most {wait:g} s) for the run that holds the lock: {holder}",
              file=sys.stderr, flush=True)

    with runs.run_lock(roots, wait, who="apply", waiting=waiting) as lock:
        if not lock.held:
            print(f"restartctl: another run still holds the lock ({lock.holder}); nothing done", file=sys.stderr)
            return EXIT_ERROR
        code = apply.act(roots, "manual", log, scope=args.packages, old_files=None, failed=[], mode=mode,
                        deadline=time.monotonic() + args.budget, preview=args.dry_run)
    if args.json:
        from restart import state

        sys.stdout.write(report.applied_json(state.read_json(roots.state, state.PENDING) or {}, indent=_json_indent()))
    return code


def _json_indent() -> int | None:
    """JSON is indented for a person at a terminal, one line for a program (as fast to write as to read)."""
    return 2 if sys.stdout.isatty() else None


def _status(roots: Roots, args: argparse.Namespace) -> int:
    """Exit 0 when nothing is pending and no reboot is needed, 1 when something is (or a run waits for
    unattended-upgrades), 2 for an unusable record."""
    from restart import plan, runs, state, unitstate

    said: list[str] = []  # why read_json found the record unusable (and set it aside)
    trouble = state.problem(roots.state, state.PENDING)
    record, current = state.last_run(roots.state, roots.proc, log=said.append) if trouble is None else (None, False)
    trouble = trouble or (said[0] if said else None)
    reasons, kernel = _reboot_reasons(roots, [])
    down = unitstate.left_down(record if current else None) if roots.systemd_booted() else []
    waiting = runs.waiting_for(roots)
    if args.json:
        import json

        from restart import formats

        sys.stdout.write(json.dumps({"schema": state.STATE_SCHEMA, "current_boot": current, "last_run": record,
                                     "problem": trouble, "down": down,
                                     "reboot": formats.reboot_json(reasons, kernel),
                                     "waiting_for_unattended_upgrades":
                                     None if waiting is None else {"pid": waiting[0].pid, "since": waiting[1]}},
                                    indent=_json_indent()) + "\n")
    else:
        from restart import admintext

        sys.stdout.write(admintext.status_text(record, current_boot=current, reboot=reasons, down=down,
                                               unusable=trouble is not None))
        if waiting is not None:
            sys.stdout.write(f"A run waits for unattended-upgrades (pid {waiting[0].pid}) to finish; "
                             "its restarts and report follow then.\n")
    if trouble is not None:
        print(f"restartctl: {printable(trouble)}", file=sys.stderr)
        return EXIT_ERROR
    units = record.get("units", []) if record is not None and current else []
    pending = any(isinstance(u, dict) and u.get("status") != plan.Status.DONE for u in units)
    return EXIT_STALE if pending or reasons or waiting is not None else EXIT_OK


def _policy(roots: Roots, args: argparse.Namespace) -> int:
    from restart import admintext, policy

    paths = policy.files(roots.etc, roots.data)
    loaded = policy.load(paths)
    if args.policy_command == "check":
        present = [str(p) for p in paths if p.exists()]
        print(f"policy OK: {len(loaded.rules)} rules from {', '.join(present)}")
    elif args.policy_command == "show":
        sys.stdout.write(admintext.policy_text(loaded))
    else:
        scope = "user" if args.user else "system"
        sys.stdout.write(admintext.explain_text(loaded, args.unit, scope, args.package))
    return EXIT_OK
