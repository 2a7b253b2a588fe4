"""Shared fixtures: the real-container machinery lives in tests/support."""

import pytest

from tests.support.fixtures import *  # noqa: F403
from tests.support.fixtures import prepare_roots


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: only the roots the run will use
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start building the test tiers' cached roots while the other tests run."""
    prepare_roots(items)
