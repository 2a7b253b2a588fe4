"""Shared fixtures: the real-container machinery lives in tests/support."""

from tests.support.fixtures import *  # noqa: F403
