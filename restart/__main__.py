"""Allow ``python3 -m restart``."""

from restart.cli import run

run()
