"""An admin at a keyboard, for real tests: a command run on a new pseudo-terminal inside a container
(python's pty module there), with what to wait for and what to type."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tests.support.container import Container

# Runs inside the container: starts argv on a new pseudo-terminal, then for each step waits for a
# text ("expect") or types ("send"); prints the transcript and the exit status as JSON.
DRIVER = r"""
import json, os, pty, select, sys, time
argv, steps = json.loads(sys.argv[1]), json.loads(sys.argv[2])
pid, fd = pty.fork()
if pid == 0:
    os.execve(argv[0], argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "TERM": "dumb",
                              **json.loads(sys.argv[3])})
out, missing = b"", None

def more(timeout):
    global out
    if not select.select([fd], [], [], timeout)[0]:
        return False
    try:
        data = os.read(fd, 4096)
    except OSError:
        return False
    out += data
    return bool(data)

for kind, arg in steps:
    if kind == "send":
        os.write(fd, arg.encode())
        continue
    end = time.monotonic() + 90
    while arg.encode() not in out:
        if time.monotonic() > end or not more(end - time.monotonic()):
            missing = arg
            break
    if missing is not None:
        break
while more(90):
    pass
_, status = os.waitpid(pid, 0)
print(json.dumps({"missing": missing, "out": out.decode("utf-8", "replace"),
                  "code": os.waitstatus_to_exitcode(status)}))
"""


def at_terminal(c: Container, argv: Sequence[str], steps: list[tuple[str, str]],
                env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``argv`` on a pseudo-terminal in the container; every expected text must appear."""
    c.write_file("/srv/rctl/pty-driver.py", DRIVER)
    r = c.exec(["/usr/bin/python3", "/srv/rctl/pty-driver.py", json.dumps(list(argv)), json.dumps(steps),
                json.dumps(env or {})], timeout=300)
    assert r.returncode == 0, r.stderr
    result: dict[str, Any] = json.loads(r.stdout)
    out = result["out"].replace("\r\n", "\n")
    assert result["missing"] is None, f"never saw {result['missing']!r} in:\n{out}"
    assert "Traceback" not in out, out
    return result["code"], out
