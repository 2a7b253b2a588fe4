"""The demo packages' host as the apply tests (and the admin's-view tests) set it up: v1 of the demo
library and daemons running, v2 installed under them, restartctl's hooks in place; and ``apply``."""

from __future__ import annotations

from pathlib import Path

from tests.support.checkout import install_hooks
from tests.support.container import Container

NAMES = ("rctl-libdemo1", "rctl-demod", "rctl-sleeper")
RCTL = ["/usr/sbin/restartctl"]


def unit_file(exec_start: str, extra: str = "") -> str:
    return f"[Service]\nExecStart={exec_start}\n{extra}\n"


def setup(c: Container, debs: dict[str, dict[str, Path]], *, units: dict[str, str] | None = None,
          forbid_starts: bool = False) -> None:
    """v1 installed and running (rctl-demod.service plus ``units``), then v2 installed under them."""
    install_hooks(c)
    c.write_file("/etc/restartctl/policy.toml", '[settings]\nunattended_mode = "list"\n')  # no surprises
    if forbid_starts:
        c.forbid_service_starts()  # a Docker-style policy-rc.d, as container images ship
    c.install_debs([debs["1.0"][n] for n in NAMES])
    for name, text in (units or {}).items():
        c.write_file(f"/etc/systemd/system/{name}", text)
    c.systemctl("daemon-reload")
    for name in ("rctl-demod.service", *(units or {})):
        c.systemctl("start", name)
        c.wait_active(name)
    c.install_debs([debs["2.0"][n] for n in NAMES])


def apply(c: Container, *args: str, policy: str | None = None, input: str | None = None,
          ) -> tuple[int, str]:
    if policy is not None:
        c.write_file("/etc/restartctl/policy.toml", policy)
    r = c.exec([*RCTL, "apply", *args], input=input, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, r.stdout + r.stderr
