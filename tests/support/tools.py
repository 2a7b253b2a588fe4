"""Tools the checks need that Debian ships but the test host does not install: used from the
cache ``tests/run.sh`` fills, and a test FAILS (never skips) when one is missing, saying how to get it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
PROMTOOL = REPO / "tests" / ".cache" / "promtool" / "usr" / "bin" / "promtool"
PROMTOOL_HINT = """promtool is missing: run tests/run.sh, which downloads Debian's promtool .deb (Debian 13;
prometheus on Debian 12) and unpacks it, never installs it:
  (cd tests/.cache/debs && apt-get download -q promtool)   # or: apt-get download -q prometheus
  dpkg-deb -x tests/.cache/debs/promtool_*.deb tests/.cache/promtool"""


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real promtool from the downloaded .deb; missing, the test FAILS with how to get it."""
    if not os.access(PROMTOOL, os.X_OK):
        pytest.fail(PROMTOOL_HINT, pytrace=False)
    return subprocess.run([str(PROMTOOL), *args], input=stdin, capture_output=True, text=True, timeout=60,
                          check=False)
