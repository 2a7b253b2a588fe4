"""Text that reaches a terminal or a log: anything a process chose (its name, its paths, its
cgroup) may carry escape sequences, so it is escaped here, once, for every stage that prints."""

from __future__ import annotations

import io
import sys


def clean(text: str) -> str:
    """Undecodable bytes become ``\\xNN`` (they were kept as surrogates on the way in).  ASCII text
    (CPython knows it without a look) has none: the JSON of a scan cleans 2,600 paths and names."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def printable(text: str) -> str:
    """Safe for a terminal: control, format and separator characters are escaped."""
    text = clean(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def quoted(text: str) -> str:
    """A name someone else chose, printable and in double quotes: it cannot pass for restartctl's own words."""
    return '"' + printable(text).replace('"', '\\"') + '"'


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def tolerant_streams() -> None:
    """Terminal text never fails on the locale's encoding (an ISO-8859-1 apt terminal, a ``→`` in a
    user's cgroup name): what the encoding cannot hold is written backslash-escaped."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
