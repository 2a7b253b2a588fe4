"""pytest fixtures for the real (container) tests; import with ``from tests.support.fixtures import *``.

Why fixtures: containers and demo .debs cost a few hundred milliseconds each, so they are shared per
module (containers) or per session (.debs); tests that need pristine state use ``container_factory``.
Missing prerequisites make the requesting test FAIL with the reason, never skip.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from . import PrerequisiteError
from .container import Bind, Container
from .debs import demo_packages
from .package import BuildError, Built, build_package
from .rootfs import REAL_ARCHIVE_TIER, TRIXIE_TIER, debootstrap_root, updates_for

DEMO_VERSIONS = ("1.0", "2.0")

# Measured durations (seconds) of the support machinery, for reports and benchmarks.
TIMINGS: dict[str, float] = {}


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "the real tests need root (they build containers and install .debs inside them)",
            pytrace=False,
        )


def _start(container: Container) -> Container:
    """Start it; a missing prerequisite fails the test with its message (never a skip)."""
    _require_root()
    try:
        return container.start()
    except PrerequisiteError as e:
        missing = str(e)
    pytest.fail(missing, pytrace=False)


def run_demod_then_upgrade(c: Container, demo_debs: dict[str, dict[str, Path]]) -> None:
    """rctl-demod.service running on v1, then v1 -> v2 by dpkg: the service maps a deleted library."""
    names = ("rctl-libdemo1", "rctl-demod")
    c.install_debs([demo_debs["1.0"][n] for n in names])
    c.systemctl("daemon-reload")
    c.systemctl("start", "rctl-demod.service")
    c.wait_active("rctl-demod.service")
    c.install_debs([demo_debs["2.0"][n] for n in names])


@pytest.fixture(scope="session")
def demo_debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """version ("1.0", "2.0") -> package name -> .deb path; see debs.demo_packages."""
    outdir = tmp_path_factory.mktemp("rctl-debs")
    t0 = time.monotonic()
    try:
        result = {v: demo_packages(outdir, v) for v in DEMO_VERSIONS}
    except PrerequisiteError as e:
        missing = str(e)
    else:
        TIMINGS["demo_debs_build"] = time.monotonic() - t0
        return result
    pytest.fail(missing, pytrace=False)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """restartctl's own .deb, built once per session from a copy of the checkout (support/package.py)."""
    try:
        return build_package(tmp_path_factory.mktemp("rctl-pkg"))
    except BuildError as e:
        message = str(e)
    pytest.fail(message, pytrace=False)


def _root(suite: str, packages: Sequence[str]) -> Path:
    """The cached root of a tier (built now if no run built it before; see prepare_roots)."""
    _require_root()
    try:
        return debootstrap_root(suite, packages)
    except PrerequisiteError as e:
        missing = str(e)
    pytest.fail(missing, pytrace=False)


@pytest.fixture(scope="session")
def trixie_root() -> Path:
    """The Debian 13 tier's root (tests/test_trixie.py): read-only, an overlay's lower layer."""
    return _root(*TRIXIE_TIER)


@pytest.fixture(scope="session")
def real_archive_root() -> Path:
    """The real-archive tier's root (tests/test_real_archive.py): read-only, an overlay's lower layer."""
    return _root(*REAL_ARCHIVE_TIER)


_ROOT_FIXTURES = {"real_archive_root": REAL_ARCHIVE_TIER, "trixie_root": TRIXIE_TIER}  # in the order tests run


def prepare_roots(items: Sequence[pytest.Item]) -> threading.Thread | None:
    """Build the roots (and fetch the updates) the selected tests will need, in a background thread.

    Why: a cold cache (a fresh clone in CI) costs minutes of debootstrap, mostly downloads and dpkg
    waiting on the disk; built while the other tests run, the tiers find them ready (their fixtures
    wait on the same lock). A failure here is not reported: the fixture builds again and fails
    with the reason.
    """
    used = {name for i in items for name in getattr(i, "fixturenames", ())}
    wanted = [tier for name, tier in _ROOT_FIXTURES.items() if name in used]
    if not wanted or os.geteuid() != 0:
        return None

    def build() -> None:
        for suite, packages in wanted:
            try:
                root = debootstrap_root(suite, packages)
                if (suite, packages) == REAL_ARCHIVE_TIER:
                    updates_for(root, suite)
            except Exception:
                return

    thread = threading.Thread(target=build, name="rctl-prepare-roots", daemon=True)
    thread.start()
    return thread


def _module_container(name: str, *, boot: bool, timed_as: str) -> Iterator[Container]:
    """A container for the tests of one module, its start and stop times kept under ``timed_as``."""
    c = _start(Container(name, boot=boot))
    TIMINGS[f"{timed_as}_start"] = c.timings["start"]
    try:
        yield c
    finally:
        c.stop()
        TIMINGS[f"{timed_as}_stop"] = c.timings["stop"]


@pytest.fixture(scope="module")
def systemd_container() -> Iterator[Container]:
    """A container with systemd 252 as PID 1 (basic.target), shared by the tests of one module."""
    yield from _module_container("rctl-sd", boot=True, timed_as="systemd_container")


@pytest.fixture(scope="module")
def plain_container() -> Iterator[Container]:
    """A container whose PID 1 is not systemd (no /run/systemd/system), shared per module."""
    yield from _module_container("rctl-plain", boot=False, timed_as="plain_container")


@pytest.fixture
def container_factory() -> Iterator[Callable[..., Container]]:
    """Start fresh containers for one test: ``container_factory("name", boot=True, binds=...)``.

    Further keywords go to :class:`Container` (``repo``, ``unified``, ``hide``, ...).

    Every container it started is stopped when the test ends, even on failure.
    """
    started: list[Container] = []

    def make(name: str, *, boot: bool, binds: Sequence[Bind] = (), lower: Path = Path("/"),
             **options: Any) -> Container:
        c = Container(name, boot=boot, binds=binds, lower=lower, **options)
        started.append(c)
        return _start(c)

    try:
        yield make
    finally:
        errors: list[str] = []
        for c in reversed(started):
            try:
                c.stop()
            except RuntimeError as e:
                errors.append(str(e))
        if errors:
            raise RuntimeError("; ".join(errors))


__all__ = ["TIMINGS", "built", "container_factory", "demo_debs", "plain_container", "real_archive_root",
           "systemd_container", "trixie_root"]
