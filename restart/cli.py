"""The command line: wires the stages together; no logic of its own beyond that."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from restart import __version__, plan, policy, report, transaction
from restart.roots import Roots
from restart.scan import find

EXIT_OK, EXIT_STALE, EXIT_ERROR = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    common_roots = argparse.ArgumentParser(add_help=False)
    roots = common_roots.add_argument_group("alternative roots (for tests and chroots)")
    roots.add_argument("--proc", type=Path, default=Path("/proc"), help="procfs (default /proc)")
    roots.add_argument("--root", type=Path, default=Path("/"), help="host root (default /)")
    roots.add_argument("--admindir", type=Path, default=Path("/var/lib/dpkg"),
                       help="dpkg database (default /var/lib/dpkg)")
    roots.add_argument("--run", type=Path, default=Path("/run"), help="runtime directory (default /run)")
    roots.add_argument("--etc", type=Path, default=Path("/etc"), help="configuration directory (default /etc)")
    roots.add_argument("--state", type=Path, default=Path("/var/lib/restartctl"),
                       help="state directory (default /var/lib/restartctl)")
    roots.add_argument("--data", type=Path, default=None,
                       help="vendor data directory (default /usr/share/restartctl)")

    common = argparse.ArgumentParser(add_help=False, parents=[common_roots])
    common.add_argument("--json", action="store_true", help="print the restartctl/1 JSON document")
    common.add_argument("--all", action="store_true",
                        help="also list replaced files no package (in scope) owns; never acted on")
    common.add_argument("--packages", nargs="+", metavar="PKG",
                        help="only files of these packages (name or name:arch)")

    parser = argparse.ArgumentParser(
        prog="restartctl",
        description="Find processes that still use files replaced by a package upgrade, "
                    "and what to restart to fix them.")
    parser.add_argument("--version", action="version", version=f"restartctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("scan", parents=[common], help="list processes using replaced files, by unit",
                   description="List processes that use replaced package files, grouped by unit.")
    sub.add_parser("plan", parents=[common], help="show what would be restarted (dry run)",
                   description="Show, per unit, the command that would fix it (dry run).")
    hook_parser = sub.add_parser(
        "hook", parents=[common_roots], help="run after a package transaction (called by the apt/dpkg hooks)",
        description="Report what the package transactions recorded since the last run left stale. "
                    "Always exits 0; never prompts; bounded in time.")
    hook_parser.add_argument("--trigger", choices=transaction.TRIGGERS, default="manual",
                             help="who runs it: apt, dpkg, unattended-upgrades or manual (default)")
    hook_parser.add_argument("--after", type=_after, metavar="PID:START",
                             help="first wait (bounded) until this process has exited")
    hook_parser.add_argument("--budget", type=float, default=transaction.HOOK_BUDGET, metavar="SECONDS",
                             help=f"give up after this long (default {transaction.HOOK_BUDGET:.0f})")
    return parser


def _after(text: str) -> tuple[int, int]:
    pid, _, start = text.partition(":")
    if not (pid.isdigit() and start.isdigit()):
        raise argparse.ArgumentTypeError("expected PID:START (start time in clock ticks)")
    return int(pid), int(start)


def _roots(args: argparse.Namespace) -> Roots:
    extra = {"data": args.data} if args.data is not None else {}
    return Roots(proc=args.proc, root=args.root, admindir=args.admindir, run=args.run, etc=args.etc,
                 state=args.state, **extra)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "hook":
        from restart import hook  # the scan commands need none of its imports
        after = hook.Process(*args.after) if args.after else None
        return hook.run(_roots(args), args.trigger, after=after, budget=args.budget)
    try:
        roots = _roots(args)
        findings = find(roots, only_packages=args.packages, everything=args.all)
        actions = (plan.make_plan(findings.groups, policy.vendor(roots.data))
                   if args.command == "plan" else None)
    except (OSError, ValueError, policy.PolicyError) as e:
        print(f"restartctl: {report.printable(str(e))}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        out = report.to_json(findings.affected, findings.groups, findings.scan, actions=actions,
                             show_unowned=args.all, packages=args.packages)
    elif actions is not None:
        out = report.plan_text(findings.affected, actions, findings.scan, show_unowned=args.all)
    else:
        out = report.scan_text(findings.affected, findings.groups, findings.scan, show_unowned=args.all)
    sys.stdout.write(out)
    if actions is not None:
        return EXIT_STALE if any(a.action != "ignore" for a in actions) else EXIT_OK
    return EXIT_STALE if findings.groups else EXIT_OK
