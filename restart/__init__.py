"""restartctl: find and restart what a package upgrade left running on old code."""

__version__ = "0.1.0"
