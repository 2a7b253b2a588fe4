"""Stages 1-3 composed: what changed, which processes still use it, what manages them.

The one place that reads the host to produce findings; ``cli`` and ``hook`` both
call :func:`find` and only differ in what they do with the result.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from restart import (
    TYPE_CHECKING,
    NamedTuple,
    fsutil,
    grammars,
    interpreters,
    observation,
    packages,
    processes,
    procfs,
    transaction,
)
from restart.roots import Roots

if TYPE_CHECKING:  # imported by find once the processes are scanned (the forked scanner does not need it)
    from restart import units


class Findings(NamedTuple):
    scan: processes.ScanResult
    affected: list[units.Affected]
    groups: list[units.UnitGroup]


def never_packaged(data: Path, etc: Path | None = None) -> tuple[str, ...]:
    """Path prefixes that are never package files: the vendor's list, then the administrator's
    ``/etc/restartctl/never-packaged`` when there is one (same format; it must be root's alone,
    since what it names is never looked at)."""
    prefixes = _prefixes(data / "never-packaged", (data / "never-packaged").read_bytes())
    admin = etc / "restartctl" / "never-packaged" if etc is not None else None
    if admin is None or not os.path.lexists(admin):
        return prefixes
    return prefixes + _prefixes(admin, fsutil.read_trusted(admin, 1 << 20))


def _prefixes(path: Path, data: bytes) -> tuple[str, ...]:
    lines = data.decode("utf-8").splitlines()
    prefixes = tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))
    if not all(p.startswith("/") for p in prefixes):
        raise ValueError(f"{path}: every prefix must be an absolute path")
    return prefixes


def _with_interpreted(scanned: processes.ScanResult, ctx: interpreters.Context,
                      selection: processes.Selection) -> processes.ScanResult:
    """Fold the scripts and modules of interpreted programs (stage 2b) into the scan's findings."""
    observed = [o for _, o in scanned.observed if isinstance(o, observation.Observation)]
    if not observed:
        return scanned
    extra = interpreters.judge(observed, ctx, {info.pid: info.stale for info, _ in scanned.observed})
    merged = {p.pid: p for p in scanned.processes}
    for info, _ in scanned.observed:
        wanted = [f for f in extra.get(info.pid, ()) if selection.wants(f.path)]
        if wanted:
            merged[info.pid] = info._replace(stale=interpreters.merge(info.stale, wanted))
    return scanned._replace(processes=sorted(merged.values(), key=lambda p: p.pid))


def find(roots: Roots, *, only_packages: Iterable[str] | None, everything: bool = False,
         old_files: Mapping[str, str] | None = None, check_fds: bool = True,
         interpreted: bool = True, deadline: float | None = None, pids: Iterable[int] | None = None,
         users: bool = True, db: packages.DpkgDatabase | None = None,
         meanwhile: Callable[[], object] | None = None) -> Findings:
    """Find stale processes, restricted to ``only_packages`` when given.

    ``old_files`` (canonical path -> package) adds files the packages had before
    this transaction (removed packages, files a new version dropped), which the
    dpkg database no longer lists.  ``deadline`` (``time.monotonic``) bounds the
    process scan, system processes first (see :func:`processes.scan`); ``pids``
    limits it to those processes (a restarted unit's); ``users=False`` leaves out users'
    processes (a check after restarting a guessed unit, which only system daemons lead to).
    Replaced files whose content did not change (:func:`transaction.unchanged`) are set
    apart, never acted on.  ``db``: the dpkg database as an earlier find of this run read it
    (a check after a restart: half its time was reading the database again).  ``meanwhile``: the
    caller's work that needs no finding, done while a scan on two cores waits for its forked child
    (see :func:`processes.scan`); stages 2b and 3 are done while that child exits.
    """
    db = db or packages.DpkgDatabase(roots.admindir, roots.root, cache=roots.run / "restartctl")
    in_scope = None
    if only_packages is not None:
        names = sorted({n for found in db.resolve_names(only_packages).values() for n in found})
        in_scope = {**(old_files or {}), **db.files_of(names)}
    selection = processes.Selection(
        aliases=db.aliases, only=frozenset(in_scope) if in_scope is not None else None,
        skip_prefixes=never_packaged(roots.data, roots.etc), everything=everything)
    rundir = roots.run / "restartctl"
    same = transaction.unchanged(rundir, db, only_packages)
    ctx = interpreters.Context(db, in_scope=in_scope, unowned=interpreters.RESERVED + selection.skip_prefixes,
                               unchanged=same, history=rundir)
    observe = ((lambda dfd, pid, exe: observation.observe(dfd, pid, exe, ctx.host, wants=ctx.wants_imports))
               if interpreted else None)
    found: list[Findings] = []

    def then(scan: processes.ScanResult) -> None:
        """Stages 2b and 3 on the scan's result (while a forked scanner exits: processes.scan's ``then``)."""
        if interpreted:
            scan = _with_interpreted(scan, ctx, selection)
        from restart import units

        try:
            init_d = set(os.listdir(roots.etc / "init.d"))
        except OSError:
            init_d = set()
        def started(pid: int) -> float | None:
            ticks = procfs.stat_field(roots.proc, pid, procfs.STARTTIME)
            return None if ticks is None else ctx.host.wall(ticks)

        affected = units.attribute(scan, db, in_scope=in_scope, systemd=roots.systemd_booted(), init_d=init_d,
                                   unchanged=same, started=started)
        found.append(Findings(scan, affected, units.group(affected)))

    processes.scan(roots.proc, selection, check_fds=check_fds, observe=observe, observe_hints=grammars.MAPPED_HINTS,
                   deadline=deadline, pids=pids, users=users, facts=observation.facts, meanwhile=meanwhile, then=then)
    return found[0]
