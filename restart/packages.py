"""Stage 1, what changed: the dpkg database, read directly and only as far as needed.

A scan must not pay for a full path->package index (131k lines, 0.2 s): it asks
only for the owners of the few stale paths, searching the ``.list`` files newest
first, or for the files of the few packages a transaction changed.

Paths are compared in their canonical merged-/usr form: the database may say
``/lib/x86_64-linux-gnu/libc.so.6`` where ``/proc/PID/maps`` says
``/usr/lib/x86_64-linux-gnu/libc.so.6``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import suppress
from functools import cached_property
from pathlib import Path

from restart import NamedTuple, fsutil

# Top-level directories that a merged-/usr system turns into symlinks into /usr.
_USR_ALIAS_CANDIDATES = ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "libo32")
LOCAL_DIVERSION = ":"
BY_NAME = 32  # packages looked up by name (a stat each) before the listing of dpkg's info directory is read
CANONICAL_KEPT = 1 << 16  # canonical spellings a database remembers (paths are any process's choice)
LISTING = "dpkg-lists.json"  # in the run directory: info's .list files and their mtimes (see DpkgDatabase._kept)
LISTING_MAX = 8 << 20  # bytes of it read at most (~40 bytes a package)
LISTING_QUIET = 2.0  # seconds info must have been unchanged for its listing to be kept


def fs_decode(raw: bytes) -> str:
    """Decode a path the way the rest of the program keeps paths: odd bytes survive."""
    return raw.decode("utf-8", "surrogateescape")


def fs_encode(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def usr_aliases(root: Path) -> frozenset[str]:
    """Which of /bin, /lib, ... are symlinks to their /usr twin on this root."""
    aliases = set()
    for name in _USR_ALIAS_CANDIDATES:
        try:
            target = os.readlink(root / name)
        except OSError:
            continue
        if target.rstrip("/") in (f"usr/{name}", f"/usr/{name}"):
            aliases.add(name)
    return frozenset(aliases)


def canonical(path: str, aliases: frozenset[str]) -> str:
    """The /usr spelling of ``path`` when its top directory is a merged-/usr alias."""
    if path.startswith("/usr/"):
        return path
    top, sep, _ = path[1:].partition("/")
    if top in aliases:
        return "/usr" + path if sep else "/usr/" + top
    return path


def spellings(path: str, aliases: frozenset[str]) -> tuple[str, ...]:
    """Every spelling of a canonical path that a ``.list`` file may record."""
    for name in aliases:
        prefix = f"/usr/{name}/"
        if path.startswith(prefix):
            return (path, path[4:])
    return (path,)


def package_matches(installed: str, wanted: str) -> bool:
    """``libc6`` names ``libc6:amd64`` and ``libc6:i386``; ``libc6:amd64`` names only itself."""
    return installed == wanted or (":" not in wanted and installed.partition(":")[0] == wanted)


def parse_md5sums(data: bytes, aliases: frozenset[str]) -> dict[str, str]:
    """``info/PKG.md5sums``: canonical path -> checksum, from lines ``<md5>  <path without its leading />``."""
    sums = {}
    for line in data.split(b"\n"):
        digest, sep, rel = line.partition(b"  ")
        if sep and len(digest) == 32 and rel and not rel.startswith(b"/"):
            sums[canonical("/" + fs_decode(rel), aliases)] = digest.decode("ascii", "replace").lower()
    return sums


def list_paths(data: bytes, aliases: frozenset[str]) -> Iterator[str]:
    """The canonical paths of a ``.list`` text (dpkg's own, or a copy the hooks kept); ``/.`` skipped."""
    for raw in data.split(b"\n"):
        if raw.startswith(b"/") and raw != b"/.":
            yield canonical(fs_decode(raw), aliases)


def unpack_time(admindir: Path, package: str) -> float | None:
    """When dpkg last unpacked ``package`` (``name`` or ``name:arch``): the mtime of its file list,
    which dpkg rewrites at every unpack; for a bare name of a ``Multi-Arch: same`` package, the latest
    of its architectures'."""
    info = admindir / "info"
    name, _, arch = package.partition(":")
    for entry in ([f"{name}:{arch}.list", f"{name}.list"] if arch else [f"{name}.list"]):
        try:
            return os.stat(info / entry).st_mtime
        except (OSError, ValueError):  # ValueError: a NUL, which no package name holds
            continue
    if arch:
        return None
    import glob  # only here (0.3 ms of every run's imports, its patterns compiled)

    times = []
    try:
        for found in info.glob(f"{glob.escape(name)}:*.list"):
            with suppress(OSError):
                times.append(found.stat().st_mtime)
    except OSError:
        return None
    return max(times, default=None)


class Diversion(NamedTuple):
    path: str       # what packages ship
    moved_to: str   # where the diverted package's copy really lives
    by: str         # the diverting package, or ":" for a local diversion


def parse_diversions(text: bytes, aliases: frozenset[str]) -> list[Diversion]:
    """``/var/lib/dpkg/diversions``: records of three lines (from, to, package)."""
    lines = text.split(b"\n")
    out = []
    for i in range(0, len(lines) - 2, 3):
        src, dst, by = (fs_decode(x) for x in lines[i:i + 3])
        if src.startswith("/") and dst.startswith("/") and by:
            out.append(Diversion(canonical(src, aliases), canonical(dst, aliases), by))
    return out


def _keep_listing(cache: Path, doc: dict[str, object]) -> None:
    """Keep the listing and its times in the run directory ``cache`` (made if need be: root's own;
    nothing if it cannot be)."""
    with suppress(OSError):
        if not os.path.lexists(cache) and os.geteuid() == 0:
            os.mkdir(cache, 0o755)
    fsutil.keep(cache / LISTING, doc, limit=LISTING_MAX)


def _mtime(name: str, directory: int) -> float | None:
    """The mtime of ``name`` in the open ``directory``; None when it cannot be read."""
    try:
        return os.stat(name, dir_fd=directory).st_mtime
    except OSError:
        return None


def _plain_name(name: str) -> bool:
    """Whether ``name`` can be a ``.list`` file's name in ``info`` without its suffix (a kept listing's)."""
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name


class DpkgDatabase:
    """Read-only view of one dpkg admin directory (``/var/lib/dpkg``) for one root."""

    def __init__(self, admindir: Path, root: Path = Path("/"), cache: Path | None = None) -> None:
        self.admindir = admindir
        self.root = root
        self.cache = cache  # the run directory, where the listing of info is kept (see _kept)
        self._list_cache: dict[str, bytes] = {}
        self._package_lists: dict[str, bytes] = {}
        self._canonical: dict[str, str] = {}  # the stages ask for the same stale paths' again and again

    @cached_property
    def aliases(self) -> frozenset[str]:
        return usr_aliases(self.root)

    def canonical(self, path: str) -> str:
        found = self._canonical.get(path)
        if found is None:
            found = canonical(path, self.aliases)
            if len(self._canonical) < CANONICAL_KEPT:
                self._canonical[path] = found
        return found

    @cached_property
    def diversions(self) -> list[Diversion]:
        try:
            text = (self.admindir / "diversions").read_bytes()
        except OSError:
            return []
        return parse_diversions(text, self.aliases)

    @cached_property
    def _diverted_from(self) -> dict[str, Diversion]:
        return {d.path: d for d in self.diversions}

    @cached_property
    def _diverted_to(self) -> dict[str, Diversion]:
        return {d.moved_to: d for d in self.diversions}

    @cached_property
    def _info(self) -> tuple[list[int], bool] | None:
        """``info``'s device, inode and mtime (dpkg replaces a ``.list`` by a rename, which changes the
        directory's mtime), and whether it had been unchanged for ``LISTING_QUIET`` seconds, when first
        looked at: before its listing is read (see :attr:`_lists`).  None when it cannot be looked at."""
        try:
            st = os.stat(self.admindir / "info")
        except OSError:
            return None
        return [st.st_dev, st.st_ino, st.st_mtime_ns], time.time() - st.st_mtime >= LISTING_QUIET

    @cached_property
    def _kept(self) -> tuple[list[str], list[float | None]] | None:
        """The ``.list`` files' package names and their mtimes, in one order, as the run directory keeps
        them for ``info`` as it is now (:attr:`_info`); None when none is kept for it, or it is not to be
        trusted (a name twice included)."""
        if self._info is None or self.cache is None:
            return None
        kept = fsutil.read_kept(self.cache / LISTING, LISTING_MAX)
        try:
            names, times = kept["lists"]
            if not (kept["info"] == self._info[0] and isinstance(names, list) and isinstance(times, list)
                    and len(names) == len(times) and all(type(n) is str and _plain_name(n) for n in names)
                    and len(set(names)) == len(names) and all(t is None or type(t) is float for t in times)):
                return None
        except (ValueError, TypeError, KeyError):
            return None
        return names, times

    @cached_property
    def _info_dir(self) -> str:
        return str(self.admindir / "info")

    def _path(self, name: str) -> str:
        """The ``.list`` file of the installed package ``name`` (``pkg`` or ``pkg:arch``)."""
        return f"{self._info_dir}/{name}.list"

    @cached_property
    def _listed(self) -> list[str]:
        """The ``.list`` files' names in ``info``, by ``os.listdir`` (names only, no ``DirEntry`` per file:
        2.4 ms against 3.3 ms for a database of 3,200 files in the hook's bench)."""
        try:
            names = os.listdir(self._info_dir)
        except OSError:
            return []
        return [name for name in names if name.endswith(".list")]

    @cached_property
    def _lists(self) -> list[str]:
        """Every installed package's name (its ``.list`` file's, without the suffix): as the run directory
        keeps them (see :attr:`_kept`), or as ``info`` lists them.  Names only: a path is made for the few
        lists read (the 891 pairs of name and path were 0.2 ms of every scan after an upgrade)."""
        kept = self._kept
        if kept is not None:
            return kept[0]
        return [file[:-5] for file in self._listed]

    @cached_property
    def _list_times(self) -> list[float | None]:
        """Each ``.list``'s mtime, in the order of :attr:`_lists` (None when it cannot be read), for the owner
        search and the unpack times both: as the run directory keeps them, or stat()ed (relative to ``info``,
        0.7-0.9 ms instead of 0.9-2.5 ms by full path for 889 lists; in one comprehension, 0.2-0.3 ms less
        than a loop after an upgrade) and kept there for the next run, once ``info`` has not changed for
        ``LISTING_QUIET`` seconds (a change within the same tick of the file system's clock would leave its
        mtime as it was)."""
        kept = self._kept
        if kept is not None:
            return kept[1]
        files = self._listed
        try:
            info = os.open(self._info_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return [None] * len(files)
        try:
            stat = os.stat
            try:
                times: list[float | None] = [stat(file, dir_fd=info).st_mtime for file in files]
            except OSError:  # one removed meanwhile, or unreadable: each on its own
                times = [_mtime(file, info) for file in files]
        finally:
            os.close(info)
        if self.cache is not None and self._info is not None and self._info[1]:
            _keep_listing(self.cache, {"info": self._info[0], "lists": [self._lists, times]})
        return times

    def _newest_first(self) -> list[str]:
        """The installed packages' names, their lists' newest first (the listing's order among equal
        times; a list whose time cannot be read last, as the oldest)."""
        names, times = self._lists, self._list_times
        return [names[i] for i in sorted(range(len(names)), key=lambda i: times[i] or 0.0, reverse=True)]

    def installed_packages(self) -> list[str]:
        return sorted(self._lists)

    def _read_list(self, name: str) -> bytes:
        if name not in self._list_cache:
            try:
                with open(self._path(name), "rb") as f:
                    self._list_cache[name] = b"\n" + f.read()
            except OSError:
                self._list_cache[name] = b"\n"
        return self._list_cache[name]

    def _instances(self, wanted: str) -> list[str]:
        """The installed names of ``wanted``'s package (``name`` or ``name:arch``), looked up by name while
        the database's listing is not read (a hook run's few names: the listing of ``info``'s 3,200 files and
        its index were 2.5 ms of every hook run).

        dpkg names a package's files ``name:arch.list`` exactly when that instance is ``Multi-Arch:
        same``, and only such instances can be installed side by side: so ``name.list`` is the only
        instance of its package, and ``name:arch.list`` is there or that instance is not installed.
        A bare name without its ``name.list`` (a ``Multi-Arch: same`` package's instances, or none)
        is looked up in the listing.  A name that is no file name is looked up there too."""
        base = wanted.partition(":")[0]
        if "_lists" not in self.__dict__ and base[:1] not in ("", ".") and "/" not in wanted:
            if os.path.lexists(self._path(wanted)):
                return [wanted]
            if base != wanted:
                return []
        return self._by_base.get(base, [])

    def _matching(self, wanted: Iterable[str]) -> list[str]:
        """The installed names that :func:`package_matches` one of ``wanted``, by name (more than BY_NAME
        names: the listing, once, is cheaper than a look each)."""
        names = self._looked_up(wanted)
        return sorted({name for w in names for name in self._instances(w) if package_matches(name, w)})

    def _looked_up(self, wanted: Iterable[str]) -> list[str]:
        """``wanted``, as a list; with more than BY_NAME names, the listing read first."""
        names = list(wanted)
        if len(names) > BY_NAME:
            self._lists  # noqa: B018 - read now: _instances looks in it
        return names

    def resolve_names(self, wanted: Iterable[str]) -> dict[str, list[str]]:
        """Map each requested name to the installed ``pkg[:arch]`` names it designates (sorted)."""
        # package_matches, by lookup: a journal may name thousands of packages, the system as many;
        # only the few names of one base are sorted (not the whole database's, on every hook run).
        return {w: sorted(p for p in self._instances(w) if package_matches(p, w)) for w in self._looked_up(wanted)}

    def files_of(self, packages: Iterable[str]) -> dict[str, str]:
        """Canonical path -> package for the named installed packages, diversions applied."""
        result: dict[str, str] = {}
        for name in self._matching(packages):
            for file in list_paths(self._read_list(name), self.aliases):
                diversion = self._diverted_from.get(file)
                if diversion and diversion.by != name.partition(":")[0]:
                    file = diversion.moved_to
                result.setdefault(file, name)
        return result

    def md5sums(self, packages: Iterable[str]) -> dict[str, str]:
        """Canonical path -> checksum of the named installed packages' files, as dpkg recorded them."""
        sums: dict[str, str] = {}
        for name in self._matching(packages):
            try:
                with open(self.admindir / "info" / f"{name}.md5sums", "rb") as f:
                    sums.update(parse_md5sums(f.read(), self.aliases))
            except OSError:
                continue
        return sums

    def owners(self, paths: Iterable[str]) -> dict[str, str]:
        """Canonical path -> owning package for those paths that a package owns.

        Searches the ``.list`` files newest first (dpkg rewrites a package's list when it
        unpacks it, so the files an upgrade just replaced are found in the first few lists)
        and stops as soon as every path is accounted for.  Each list line is one dictionary
        lookup, however many paths are asked for (a user can map thousands of files of her
        own), so the work stays linear; no index of the whole database is ever built (on a
        real upgrade that index cost 0.2 s, the search 10 ms; see bench/README.md).
        """
        found: dict[str, str] = {}
        # Spelling in the lists -> the queried paths it answers, each with the package to skip.
        wanted: dict[bytes, list[tuple[str, str | None]]] = {}
        queried: set[str] = set()
        for path in set(paths):
            if "\n" in path:
                continue  # dpkg never records such a name; it could match two list lines
            diverted = self._diverted_from.get(path)
            if diverted is not None:
                # The file at a diverted path is the diverter's own (or the admin's).
                if diverted.by != LOCAL_DIVERSION:
                    found[path] = diverted.by
                continue
            moved = self._diverted_to.get(path)
            target, skip = (moved.path, moved.by) if moved else (path, None)
            queried.add(path)
            for spelling in spellings(target, self.aliases):
                wanted.setdefault(fs_encode(spelling), []).append((path, skip))
        left = len(queried)
        for name in self._newest_first() if left else ():
            base = name.partition(":")[0]
            for line in self._read_list(name).split(b"\n"):
                for path, skip in wanted.get(line, ()):
                    if base != skip and path not in found:
                        found[path] = name
                        left -= 1
            if not left:
                break
        return found

    @cached_property
    def _by_base(self) -> dict[str, list[str]]:
        """Package without architecture -> its installed names."""
        names: dict[str, list[str]] = {}
        for name in self._lists:
            names.setdefault(name.partition(":")[0], []).append(name)
        return names

    def package_list(self, package: str) -> bytes:
        """A package's file lists, every architecture, each line between newlines.

        Most packages have one list named without architecture: that one is opened directly,
        and only a ``Multi-Arch: same`` package costs a listing of the database directory.
        """
        base = package.partition(":")[0]
        if base not in self._package_lists:
            plain = self._path(base)
            try:
                if base in self._list_cache:  # read already, by the owner search
                    parts = [self._list_cache[base][1:]]
                else:
                    with open(plain, "rb") as f:
                        parts = [f.read()]
                    self._list_cache[base] = b"\n" + parts[0]
            except OSError:
                parts = [self._read_list(name)[1:] for name in self._by_base.get(base, ())]
            self._package_lists[base] = b"\n" + b"\n".join(parts) + b"\n"
        return self._package_lists[base]

    def unpack_times(self, packages: Iterable[str] | None = None) -> dict[str, float]:
        """Package (without architecture) -> when dpkg last unpacked it (see :func:`unpack_time`),
        for ``packages`` or, when None, every installed package."""
        times: dict[str, float] = {}
        if packages is not None:
            for name in set(packages):
                t = unpack_time(self.admindir, name)
                base = name.partition(":")[0]
                if t is not None:
                    times[base] = max(t, times.get(base, t))
            return times
        for name, t in zip(self._lists, self._list_times, strict=True):
            if t is not None:
                base = name.partition(":")[0]
                times[base] = max(t, times.get(base, t))
        return times

    @cached_property
    def graph(self) -> PackageGraph:
        return dependency_graph(self.admindir)

    def init_scripts(self, package: str) -> list[str]:
        """Names of the SysV init scripts a package ships (for the no-systemd fallback)."""
        names = []
        for path in self.files_of([package]):
            directory, _, name = path.rpartition("/")
            if directory == "/etc/init.d" and name and not name.startswith("."):
                names.append(name)
        return sorted(names)



# dpkg states of a package whose unpack or configure dpkg did not finish: its maintainer
# scripts (which may migrate configuration) have not all run, so its programs are not to
# be restarted yet.  ``triggers-pending`` is configured (only its own triggers wait).
UNFINISHED = frozenset({"half-installed", "unpacked", "half-configured", "triggers-awaited"})


def _settled(data: bytes) -> bool:
    """Whether every record of dpkg's file says on its ``Status:`` line, as dpkg writes it, that dpkg finished
    with it (flag ``ok``, a state not in UNFINISHED): every such line found in one pass, where a search per
    word took five (the status file of the bench's 891 packages: 1.6-1.9 against 2.3-2.5 ms, read included,
    before every first restart).  A record without that line (a field spelled otherwise, a line first in the
    file) leaves fewer lines than records, counted by the blank lines that end them: then no, and the words
    decide."""
    values = set()
    lines = 0
    at = data.find(b"\nStatus: ")
    while at >= 0:
        end = data.find(b"\n", at + 9)
        values.add(data[at + 9:end if end >= 0 else len(data)])
        lines += 1
        at = data.find(b"\nStatus: ", end) if end >= 0 else -1
    if lines != data.count(b"\n\n") + (not data.endswith(b"\n\n") and bool(data.strip())):
        return False
    for value in values:
        words = value.split()
        if len(words) != 3 or words[1] != b"ok" or words[2].decode("ascii", "replace") in UNFINISHED:
            return False
    return True


def _maybe_unfinished(path: str) -> bool:
    """Whether dpkg's file at ``path`` (its status file, an update record) may hold a record it left
    unfinished: a state of UNFINISHED that ends a line, or the ``reinstreq`` flag, after a blank.
    Anywhere else (a description) it is no state; a yes only costs the full parse."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    if _settled(data):
        return False
    for word in (*sorted(UNFINISHED), "reinstreq"):
        w = word.encode()
        at = data.find(w)
        while at >= 0:  # each find starts past the one before
            end = at + len(w)
            line_end = data.find(b"\n", end)
            rest = data[end:] if line_end < 0 else data[end:line_end]
            if data[at - 1:at] in (b" ", b"\t") and (word == "reinstreq" or not rest.strip()):
                return True
            at = data.find(w, end)
    return False


def unconfigured(admindir: Path, wanted: Iterable[str]) -> dict[str, str]:
    """Each of ``wanted`` (``name`` or ``name:arch``) that dpkg left unfinished -> its state.

    Read as dpkg itself reads its database: the ``status`` file, then the records in
    ``updates/`` that a dpkg run which was killed had not folded into it yet, in order.
    ``reinstreq`` (dpkg's "reinstallation required" flag) counts as unfinished too.
    """
    names = set(wanted)
    if not names:
        return {}
    try:
        updates = sorted(e.path for e in os.scandir(admindir / "updates") if e.name.isdigit())
    except OSError:
        updates = []
    if not any(_maybe_unfinished(path) for path in [str(admindir / "status"), *updates]):
        return {}  # the usual case, before a restart: no python-apt to load, no status file to parse (5 ms)
    import apt_pkg

    states: dict[tuple[str, str], str] = {}  # (name, arch) -> state; a later record replaces an earlier one
    bases = {n.partition(":")[0] for n in names}
    for path in [str(admindir / "status"), *updates]:
        try:
            with apt_pkg.TagFile(path) as tags:
                for section in tags:
                    name = section.get("Package") or ""
                    status = (section.get("Status") or "").split()
                    if name in bases and len(status) == 3:
                        states[name, section.get("Architecture") or ""] = (
                            "reinstreq" if status[1] == "reinstreq" else status[2])
        except (OSError, SystemError):  # apt_pkg reports an unreadable file as SystemError
            continue
    found: dict[str, str] = {}
    for (name, arch), state in sorted(states.items()):
        if state in UNFINISHED or state == "reinstreq":
            for key in {name, f"{name}:{arch}"} & names:
                found.setdefault(key, state)
    return found


def changed_since(admindir: Path, since: float) -> frozenset[str]:
    """Installed packages dpkg unpacked since ``since`` (epoch): it rewrites a package's file list then.

    What a run falls back to when the journal lost events.  A package removed meanwhile
    has no list any more; its files are gone, and the file lists apt's hook kept say the rest.
    """
    changed = set()
    try:
        with os.scandir(admindir / "info") as entries:
            for e in entries:
                try:
                    if e.name.endswith(".list") and e.stat(follow_symlinks=False).st_mtime >= since - 1:
                        changed.add(e.name[:-5])
                except OSError:
                    continue  # removed meanwhile
    except OSError:
        pass
    return frozenset(changed)


# ---- the dependency graph ------------------------------------------------------------------

class PackageGraph(NamedTuple):
    """Installed packages (names without architecture) and what they depend on."""

    depends: dict[str, frozenset[str]]   # package -> every name in its Depends and Pre-Depends
    provides: dict[str, frozenset[str]]  # virtual name -> installed packages that provide it


_NOT_INSTALLED = ("not-installed", "config-files")
_NAME = r"(?:^|[,|])\s*([a-z0-9][a-z0-9+.-]*)"  # each alternative's name (compiled by re on first use)


def dependency_graph(admindir: Path) -> PackageGraph:
    """The dependency graph of the installed packages, from dpkg's ``status`` file (python-apt's
    parser, the one every other reader of the status file here uses)."""
    import apt_pkg

    depends: dict[str, set[str]] = {}
    provides: dict[str, set[str]] = {}
    try:
        with apt_pkg.TagFile(str(admindir / "status")) as tags:
            for section in tags:
                state = (section.get("Status") or "").split()
                package = section.get("Package") or ""
                if not package or len(state) != 3 or state[2] in _NOT_INSTALLED:
                    continue
                deps = depends.setdefault(package, set())  # Multi-Arch: same: a stanza per architecture
                for field in ("Depends", "Pre-Depends"):
                    deps.update(_names(section.get(field) or ""))
                for virtual in _names(section.get("Provides") or ""):
                    provides.setdefault(virtual, set()).add(package)
    except (OSError, SystemError):  # apt_pkg reports an unreadable file as SystemError
        pass
    return PackageGraph({k: frozenset(v) for k, v in depends.items()},
                        {k: frozenset(v) for k, v in provides.items()})


def _names(field: str) -> list[str]:
    """Package names of a relation field, every alternative (versions and ``:arch`` dropped)."""
    return re.findall(_NAME, field)


def closure(graph: PackageGraph, package: str) -> frozenset[str]:
    """``package`` and every installed package it depends on, directly or not (all alternatives)."""
    start = package.partition(":")[0]
    seen = {start}
    todo = [start]
    while todo:
        for name in graph.depends.get(todo.pop(), ()):
            targets = graph.provides.get(name, frozenset())
            if name in graph.depends:
                targets = targets | {name}
            for t in targets - seen:
                seen.add(t)
                todo.append(t)
    return frozenset(seen)
