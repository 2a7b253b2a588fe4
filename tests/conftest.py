"""Shared fixtures: the real-container machinery lives in tests/support."""

pytest_plugins = ["tests.support.fixtures"]
