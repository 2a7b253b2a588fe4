"""Shared fixtures: the real-container machinery lives in tests/support."""

import gc
from collections.abc import Iterator

import pytest

from tests.support.fixtures import *  # noqa: F403
from tests.support.fixtures import prepare_roots


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: only the roots the run will use
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start building the test tiers' cached roots while the other tests run."""
    prepare_roots(items)


@pytest.fixture(autouse=True)
def unfrozen_collector() -> Iterator[None]:
    """A run imports its modules under ``restart.Importing``, which ends with ``gc.freeze``: a test that
    runs it in-process must not leave the worker so (``gc.get_referrers`` no longer sees frozen objects,
    and hypothesis's ``register_random`` then warns in a later test of the same worker)."""
    yield
    gc.unfreeze()
