"""Every filesystem root the pipeline reads, in one injectable place.

Tests build hostile fixture trees and point these at them; production uses the
defaults.  Nothing else in the package hard-codes ``/proc``, ``/var/lib/dpkg``,
``/run`` or ``/etc``.
"""

from __future__ import annotations

from pathlib import Path

from restart import NamedTuple

_CHECKOUT_DATA = Path(__file__).resolve().parent.parent / "data"
_INSTALLED_DATA = Path("/usr/share/restartctl")


def default_data_dir() -> Path:
    """The vendor data: the checkout's ``data/`` when run from one, else the installed copy."""
    if (_CHECKOUT_DATA / "policy.toml").is_file() and (_CHECKOUT_DATA.parent / "setup.cfg").is_file():
        return _CHECKOUT_DATA
    return _INSTALLED_DATA


class Roots(NamedTuple):
    """Where to find the host's facts.  ``root`` is the host's ``/`` (merged-/usr, init.d)."""

    proc: Path = Path("/proc")
    root: Path = Path("/")
    admindir: Path = Path("/var/lib/dpkg")
    run: Path = Path("/run")
    etc: Path = Path("/etc")
    state: Path = Path("/var/lib/restartctl")
    data: Path = default_data_dir()

    def systemd_booted(self) -> bool:
        """sd_booted(): systemd is PID 1 exactly when it has created /run/systemd/system."""
        return (self.run / "systemd" / "system").is_dir()
