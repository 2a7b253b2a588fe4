"""Running a program: by absolute path, with a clean environment and no stdin, bounded in time and in
what is kept of its output.

The one place restartctl runs a program (the hook's detached re-run of itself aside, which execs
with the same ``CLEAN_ENV``): the executor's restarts, the questions to systemd and init scripts,
the notices to users and the hook's questions all come here, so rules C1 (nothing of the caller's
environment or terminal reaches a child) and C11 (output read with a bound) of docs/security.md
hold in one function.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from restart import TYPE_CHECKING, Generic, TypeVar
from restart.procfs import CLEAN_ENV

if TYPE_CHECKING:
    import subprocess
    from subprocess import TimeoutExpired as TimeoutExpired  # (named here: see __getattr__)
    from typing import Any

OUTPUT_LIMIT = 1 << 20  # bytes kept of a program's stdout, and of its stderr


# How the executor runs a program: argv and timeout in, what it did out; raises OSError when it cannot
# be run and subprocess.TimeoutExpired when it did not end in time (tests pass their own).
Runner = Callable[[list[str], float], "subprocess.CompletedProcess[str]"]
FAILURES: tuple[type[BaseException], ...]  # what a Runner raises, (OSError, TimeoutExpired): each becomes an outcome


def __getattr__(name: str) -> Any:
    """``TimeoutExpired`` and ``FAILURES``, with :mod:`subprocess` imported only once one is looked up (by
    an ``except`` clause, as an exception is matched against it) or a program is run: with ``locale`` and
    ``selectors`` it was 1.5 ms of every apply before its first restart, which PID 1's socket asks for
    without a program.  The executor's modules name them as this module's attributes, never import them."""
    if name not in ("TimeoutExpired", "FAILURES"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import subprocess

    globals().update(TimeoutExpired=subprocess.TimeoutExpired, FAILURES=(OSError, subprocess.TimeoutExpired))
    return globals()[name]


def run(argv: list[str], timeout: float, *, env: dict[str, str] | None = None,
        quiet: bool = False) -> subprocess.CompletedProcess[str]:
    """One program, by absolute path, clean environment, no stdin, bounded in time and in what is kept
    of its output (``OUTPUT_LIMIT`` per stream).  ``quiet``: its output goes to /dev/null (a program
    run as a user, whose pipes that user could take over and fill)."""
    import subprocess

    timeout = max(timeout, 0.1)
    deadline = time.monotonic() + timeout
    sink = subprocess.DEVNULL if quiet else subprocess.PIPE
    with subprocess.Popen(argv, env=env or CLEAN_ENV, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink) as p:
        try:
            out, err = _bounded_output(p, deadline) if not quiet else (b"", b"")
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            raise subprocess.TimeoutExpired(argv, timeout) from None
    return subprocess.CompletedProcess(argv, p.returncode, out.decode("utf-8", "replace"),
                                       err.decode("utf-8", "replace"))


def _bounded_output(p: subprocess.Popen[bytes], deadline: float) -> tuple[bytes, bytes]:
    """Both pipes read to their end by ``deadline``; past ``OUTPUT_LIMIT`` a stream is read and dropped."""
    import selectors
    import subprocess

    assert p.stdout is not None and p.stderr is not None  # noqa: S101 - run() made both pipes
    kept: dict[int, bytearray] = {p.stdout.fileno(): bytearray(), p.stderr.fileno(): bytearray()}
    with selectors.DefaultSelector() as sel:
        for fd in kept:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(p.args, 0)
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fd)
                elif len(kept[key.fd]) < OUTPUT_LIMIT:
                    kept[key.fd] += chunk[:OUTPUT_LIMIT - len(kept[key.fd])]
    return bytes(kept[p.stdout.fileno()]), bytes(kept[p.stderr.fileno()])


T = TypeVar("T")


class Meanwhile(Generic[T]):
    """A call run in a thread of its own while the caller goes on; :meth:`result` waits for it and
    returns what it returned or raises what it raised.  (Not concurrent.futures: it imports logging,
    10 ms more for every hook run.)"""

    def __init__(self, call: Callable[[], T]) -> None:
        self._call = call
        self._result: list[T] = []
        self._error: BaseException | None = None
        # A daemon: a call nobody waits for any more (the breaker, Ctrl-C) ends by its own timeout.
        self._thread = threading.Thread(target=self._run, name="restartctl-meanwhile", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result.append(self._call())
        except BaseException as e:  # handed to the caller as it is, in result()
            self._error = e

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result[0]
