"""Stage 6's questions about units, asked before and after a restart and never acted on.

What systemd says about a unit (``systemctl show``'s properties, ``systemctl status`` for a failure
report), what Debian's policy layer and an init script say (``policy-rc.d``, LSB status), which
processes a unit's cgroup holds, and which units this very run lives in.  Every program runs
through :func:`restart.runner.run` (or a runner a test injects); a unit name read from a record is
validated here, the others come from the plan, which acts only on valid names.
"""

from __future__ import annotations

import _socket  # not socket: its enums cost 2.5 ms of every run before the first restart
import os
import stat
import struct
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from restart import TYPE_CHECKING, NamedTuple
from restart import runner as _runner
from restart.plan import Status
from restart.procfs import ProcessGone, lineage, read_proc
from restart.runner import Meanwhile, Runner, run
from restart.units import (
    SYSTEM,
    USER,
    USER_MANAGER,
    UnitGroup,
    cgroup_path,
    resolve,
    valid_unit_name,
)

if TYPE_CHECKING:
    from typing import Any

PROGRAMS = {"systemctl": "/usr/bin/systemctl", "invoke-rc.d": "/usr/sbin/invoke-rc.d"}
POLICY_RC_D = "/usr/sbin/policy-rc.d"
_UNIT, _SERVICE = "org.freedesktop.systemd1.Unit", "org.freedesktop.systemd1.Service"
# What is asked of a unit (and on PID 1's bus, of which interface): systemctl show -p and the bus ask the same.
# Only what the checks before and after a restart read: each is a Get PID 1 answers for every unit of a
# wave, once all its jobs have ended (Type and Result, asked but never read, were a quarter of them).
BUS_PROPS = {"ActiveState": _UNIT, "SubState": _UNIT, "MainPID": _SERVICE, "RefuseManualStop": _UNIT,
             "ControlGroup": _SERVICE, "NRestarts": _SERVICE}
SHOW_PROPS = ",".join(BUS_PROPS)


def parse_show(text: str, names: list[str]) -> dict[str, dict[str, str]]:
    """``systemctl show -p ... -- A B`` prints one block per unit, in order, separated by a blank line."""
    blocks = text.strip("\n").split("\n\n") if text.strip() else []
    out = {}
    for name, block in zip(names, blocks, strict=False):
        out[name] = dict(line.partition("=")[::2] for line in block.splitlines() if "=" in line)
    return out


def _manager(group: UnitGroup) -> list[str]:
    return ["--user", "-M", f"{group.uid}@"] if group.kind == USER else []


SHOW_CHUNK = 32  # units per ``systemctl show``: a wave's larger list is asked in parallel parts


def unit_states(groups: list[UnitGroup], timeout: float, runner: Runner = run) -> dict[str, dict[str, str]]:
    """systemd's properties of units of one manager (the system's, or one user's).

    System services are asked on PID 1's own bus socket (:func:`bus_states`) when programs are
    really run (a test's runner stands in for systemd); on any trouble there but no answer in time
    (subprocess.TimeoutExpired, as from systemctl), and for the rest,
    one ``systemctl show`` per ``SHOW_CHUNK`` units, those run together: systemctl fetches every
    property of every unit and parses them itself (0.16 s for 100 units on two cores, 0.12 s in two
    parts at once); raises what the runner raises."""
    names = [g.name or "" for g in groups]
    if runner is run and all(g.kind == SYSTEM and n.endswith(".service") for g, n in zip(groups, names, strict=True)):
        try:
            return bus_states(names, timeout)
        except TimeoutError:  # PID 1 did not answer in time: systemctl would wait as long again
            raise _runner.TimeoutExpired(["systemd's bus", "Get", *names], timeout) from None
        except (OSError, ValueError, IndexError, struct.error):
            pass  # systemctl says what went wrong, if anything
    parts = [names[i:i + SHOW_CHUNK] for i in range(0, len(names), SHOW_CHUNK)]

    def show(part: list[str]) -> dict[str, dict[str, str]]:
        argv = [PROGRAMS["systemctl"], *_manager(groups[0]), "show", "-p", SHOW_PROPS, "--", *part]
        return parse_show(runner(argv, timeout).stdout, part)
    others = [Meanwhile(partial(show, part)) for part in parts[1:]]
    states = show(parts[0])
    for other in others:
        states.update(other.result())
    return states


SYSTEMD_BUS = "/run/systemd/private"  # PID 1's own D-Bus socket, root's only (what systemctl itself uses)
BUS_REPLY_MAX = 1 << 16  # bytes of one reply: a property of a unit is a few dozen


def _pad(buf: bytearray, n: int) -> None:
    buf += bytes(-len(buf) % n)


def _string(buf: bytearray, text: str, signature: bool = False) -> None:
    data = text.encode()
    if signature:
        buf += bytes([len(data)]) + data + b"\0"
    else:
        _pad(buf, 4)
        buf += struct.pack("<I", len(data)) + data + b"\0"


def bus_path(name: str) -> str:
    """A unit's D-Bus object path: every byte but a letter (or a digit after the first) as ``_xx``."""
    raw = name.encode()
    return "/org/freedesktop/systemd1/unit/" + "".join(
        chr(b) if chr(b).isascii() and (chr(b).isalpha() or (i and chr(b).isdigit())) else f"_{b:02x}"
        for i, b in enumerate(raw))


def _call(serial: int, path: str, interface: str, member: str, signature: str, args: tuple[str, ...]) -> bytes:
    """A D-Bus method call (little-endian, version 1) with string arguments (``signature``: as many ``s``)."""
    body = bytearray()
    for arg in args:
        _string(body, arg)
    fields = bytearray()
    for code, sig, value in ((1, "o", path), (2, "s", interface), (3, "s", member),
                             *([(8, "g", signature)] if signature else [])):
        _pad(fields, 8)
        fields += bytes([code, 1]) + sig.encode() + b"\0"
        _string(fields, value, signature=sig == "g")
    message = bytearray(b"l\x01\x00\x01" + struct.pack("<III", len(body), serial, len(fields)) + fields)
    _pad(message, 8)
    return bytes(message + body)


def _get(serial: int, path: str, interface: str, prop: str) -> bytes:
    """``org.freedesktop.DBus.Properties.Get(interface, prop)`` of the object at ``path``."""
    return _call(serial, path, "org.freedesktop.DBus.Properties", "Get", "ss", (interface, prop))


def _header(message: bytes) -> tuple[dict[int, object], int]:
    """A message's header fields (code -> value) and where its body begins; ValueError for a field of a
    type PID 1 never sends in a header (IndexError or struct.error for a short message)."""
    fields_end = 16 + struct.unpack_from("<I", message, 12)[0]
    at, fields = 16, {}
    while at < fields_end:
        at += -at % 8
        code, size = message[at], message[at + 1]
        sig = message[at + 2:at + 2 + size].decode()
        at += 3 + size
        if sig in ("s", "o"):
            at += -at % 4
            length = struct.unpack_from("<I", message, at)[0]
            value: object = message[at + 4:at + 4 + length].decode()
            at += 5 + length
        elif sig == "g":
            value = message[at + 1:at + 1 + message[at]].decode()
            at += 2 + message[at]
        elif sig == "u":
            at += -at % 4
            value = struct.unpack_from("<I", message, at)[0]
            at += 4
        else:
            raise ValueError(f"header field of type {sig!r}")
        fields[code] = value
    return fields, fields_end + -fields_end % 8


def _values(message: bytes, at: int, signature: str) -> list[object]:
    """A body of strings, object paths and numbers (``signature``: of ``s``, ``o``, ``u``) from ``at``."""
    values: list[object] = []
    for kind in signature:
        at += -at % 4
        number = struct.unpack_from("<I", message, at)[0]
        at += 4
        if kind == "u":
            values.append(number)
        elif kind in ("s", "o") and at + number < len(message) and message[at + number] == 0:
            values.append(message[at:at + number].decode())
            at += number + 1
        else:
            raise ValueError(f"a value of type {kind!r} not as it should be")
    return values


def _reply(message: bytes) -> tuple[int, object]:
    """(the serial it answers, the property's value as ``systemctl show`` prints it), ``(0, None)`` for
    a message that answers nothing; ValueError for an error reply or a value but a string, number or
    boolean."""
    fields, body = _header(message)
    serial = fields.get(5, 0)
    signature = fields.get(8, "")
    serial = serial if isinstance(serial, int) else 0
    if message[1] in (1, 4):  # a call or a signal (UnitNew as a unit is loaded to be asked about): no answer
        return 0, None
    if message[1] != 2 or signature != "v":  # not a method return: an error (no such property)
        raise ValueError(f"systemd answered call {serial} with an error")
    size = message[body]
    kind, at = message[body + 1:body + 1 + size].decode(), body + 2 + size
    at += -(at - body) % 4
    if kind in ("s", "o"):
        length = struct.unpack_from("<I", message, at)[0]
        return serial, message[at + 4:at + 4 + length].decode()
    if kind == "u":
        return serial, str(struct.unpack_from("<I", message, at)[0])
    if kind == "b":
        return serial, "yes" if struct.unpack_from("<I", message, at)[0] else "no"
    raise ValueError(f"a value of type {kind!r}")


def _connect(timeout: float, *, wait: bool = True) -> _socket.socket:
    """A connection to PID 1's own socket, authenticated as this process's user; only PID 1 (uid 0 at
    the other end) is believed.  Raises OSError (or struct.error) when it cannot be made.  ``wait``
    False: nothing is waited for (a connection PID 1 cannot take at once is an error), and PID 1's
    answer to the handshake is left for :func:`_accepted` to read."""
    bus = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        bus.settimeout(max(timeout, 0.1) if wait else 0.0)
        bus.connect(SYSTEMD_BUS)
        _pid, uid, _gid = struct.unpack("3i", bus.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12))
        if uid != 0:
            raise OSError(f"{SYSTEMD_BUS} is not root's")
        bus.sendall(b"\0AUTH EXTERNAL " + str(os.geteuid()).encode().hex().encode() + b"\r\n")
        if wait:
            _accepted(bus)
    except BaseException:
        bus.close()
        raise
    return bus


def _accepted(bus: _socket.socket) -> None:
    """PID 1's answer to the handshake :func:`_connect` sent on ``bus``, read; OSError unless it is OK."""
    if not bus.recv(256).startswith(b"OK "):
        raise OSError(f"{SYSTEMD_BUS} refused the connection")


class _Bus:
    """A connection to PID 1's socket: what was read past the last whole message, the serial of the
    last call sent (a call on a connection used before takes the next ones), and when it was put back."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock, self.buf, self.serial, self.kept = sock, bytearray(), 0, 0.0
        self.path = SYSTEMD_BUS  # where it was made (a kept one is used only for the same socket)
        self.begin = b"BEGIN\r\n"  # ends the handshake: sent before the first call only

    def calls(self) -> bytearray:
        """What the next calls are sent after (``BEGIN`` the first time)."""
        out, self.begin = bytearray(self.begin), b""
        return out

    def close(self) -> None:
        self.sock.close()


# One connection to PID 1's socket is kept for a moment after a clean exchange (every answer read),
# for the next question (a connection is about 2 ms of PID 1's time: the canary's check, then its
# restart, then the wave's restart).  PID 1 sends its signals to every connection on this socket, so
# a connection is kept only briefly, and what it holds when it is taken again is read and dropped
# (no answer to this process's calls can be among it: every one was read before it was kept).
KEEP_SECONDS = 0.25
KEEP_DRAIN_MAX = 1 << 22  # bytes of signals read off a kept connection before it is given up instead
_kept: list[_Bus] = []
_ahead: list[_Bus] = []  # a connection made ahead (prepare), PID 1's answer to its handshake not read yet


def _take(timeout: float) -> _Bus:
    """The connection kept a moment ago (what it received meanwhile dropped), else a new one.  One made
    ahead (:func:`prepare`) is taken first, once PID 1 has answered its handshake: it began earlier, and
    a second one only queued behind it at PID 1 (in a traced run where the canary's check came 4 ms after
    it, both were ready at the same moment: PID 1's time for a connection, and this process's, spent
    twice).  PID 1 sends nothing else on a connection before its ``BEGIN``; one made longer than
    ``KEEP_SECONDS`` ago is still not used (as a kept one), nor one that PID 1 refused or closed."""
    while _ahead:
        try:
            bus = _ahead.pop()
        except IndexError:  # taken meanwhile by another thread
            break
        try:
            if bus.path == SYSTEMD_BUS and time.monotonic() - bus.kept <= KEEP_SECONDS:
                bus.sock.settimeout(max(timeout, 0.1))
                _accepted(bus.sock)
                return bus
        except OSError:
            pass
        bus.close()
    while True:
        try:
            bus = _kept.pop()
        except IndexError:
            return _Bus(_connect(timeout))
        if bus.path == SYSTEMD_BUS and time.monotonic() - bus.kept <= KEEP_SECONDS and _drained(bus):
            bus.sock.settimeout(max(timeout, 0.1))
            return bus
        bus.close()


def _drained(bus: _Bus) -> bool:
    """Drop the whole messages waiting on ``bus``, without waiting; False when it cannot be used again
    (PID 1 closed it, sent more than ``KEEP_DRAIN_MAX`` bytes meanwhile, or what no question may read)."""
    read = 0
    try:
        bus.sock.setblocking(False)
        while True:
            chunk = bus.sock.recv(1 << 16)
            if not chunk:
                return False
            bus.buf += chunk
            read += len(chunk)
            if read > KEEP_DRAIN_MAX:
                return False
    except BlockingIOError:
        pass
    except OSError:
        return False
    try:
        while len(bus.buf) >= 16:
            size = _message_size(bus.buf)
            if bus.buf[:1] != b"l" or size > BUS_MESSAGE_MAX:
                return False  # not a message the next question could read past: a new connection instead
            if len(bus.buf) < size:
                return True
            del bus.buf[:size]
    except struct.error:
        return False
    return True


def _keep(bus: _Bus) -> None:
    """Keep ``bus`` for the next question (closing the one kept before)."""
    bus.kept = time.monotonic()
    _kept.append(bus)
    while len(_kept) > 1:
        try:
            _kept.pop(0).close()
        except IndexError:  # taken meanwhile by another thread
            break


def prepare(timeout: float) -> None:
    """Connect to PID 1's socket and send the handshake, without waiting, for the first question to find
    ready (:func:`_take` reads PID 1's answer): PID 1 takes the connection (about 2 ms of its time) while
    this process works on (restarts are due: the plan's last steps, the record of intent).  Nothing is
    asked on it; on any trouble nothing is kept, and the first question connects itself, as without it.
    (Made in a thread, starting it and getting the interpreter back cost the run 0.3-2.1 ms.)"""
    try:
        bus = _Bus(_connect(timeout, wait=False))
    except (OSError, struct.error):
        return
    bus.kept = time.monotonic()
    earlier, _ahead[:] = list(_ahead), [bus]
    for unused in earlier:
        unused.close()


def release() -> None:
    """Close the connections kept for a next question (there is none: the restarts are over)."""
    for kept in (_kept, _ahead):
        while kept:
            try:
                kept.pop().close()
            except IndexError:
                break


def _message_size(buf: bytearray) -> int:
    """The whole size of the D-Bus message ``buf`` starts with (its first 16 bytes are there): the fixed
    header, the header fields (padded to 8) and the body."""
    size: int = 16 + struct.unpack_from("<I", buf, 12)[0]
    body: int = struct.unpack_from("<I", buf, 4)[0]
    return size + -size % 8 + body


def _next(bus: _socket.socket, buf: bytearray, deadline: float, limit: int) -> bytes:
    """The next whole message on ``bus`` (``buf``: what was read past the one before), by ``deadline``
    (TimeoutError); ValueError for what is not a little-endian message of at most ``limit`` bytes,
    OSError when PID 1 closed the connection."""
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("systemd did not answer in time")
        size = _message_size(buf) if len(buf) >= 16 else 16
        if buf[:1] not in (b"", b"l") or size > limit:
            raise ValueError("not a little-endian D-Bus message of a sane size")
        if len(buf) >= size:
            message = bytes(buf[:size])
            del buf[:size]
            return message
        bus.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = bus.recv(1 << 16)
        if not chunk:
            raise OSError("systemd closed the connection")
        buf += chunk


def bus_states(names: list[str], timeout: float) -> dict[str, dict[str, str]]:
    """What ``systemctl show -p SHOW_PROPS`` says of system services, asked of PID 1 directly.

    systemctl fetches all of a unit's 300 properties and parses them (about 2 ms of CPU per unit,
    half of it PID 1's); here one connection carries a ``Get`` per property, sent together.  Only
    PID 1 (uid 0 at the other end) is believed; raises OSError, ValueError, IndexError or struct.error
    on any trouble, for the caller to ask systemctl instead."""
    deadline = time.monotonic() + timeout
    wanted: dict[int, tuple[str, str]] = {}
    bus = _take(timeout)
    calls = bus.calls()
    for name in names:
        path = bus_path(name)
        for prop, interface in BUS_PROPS.items():
            bus.serial += 1
            wanted[bus.serial] = (name, prop)
            calls += _get(bus.serial, path, interface, prop)
    states: dict[str, dict[str, str]] = {name: {} for name in names}
    try:
        bus.sock.sendall(calls)
        # Messages that answer nothing asked: signals, about eight before each answer about a unit that
        # is loaded only to be asked about and collected again (UnitNew, UnitRemoved, PropertiesChanged).
        others = 16 * len(wanted)
        while wanted and others >= 0:
            serial, value = _reply(_next(bus.sock, bus.buf, deadline, BUS_REPLY_MAX))
            if serial in wanted:
                name, prop = wanted.pop(serial)
                states[name][prop] = str(value)
            else:
                others -= 1
    except BaseException:
        bus.close()
        raise
    if wanted:
        bus.close()
        raise ValueError("systemd sent what was not asked for")
    _keep(bus)
    return states


_MANAGER, MANAGER_PATH = "org.freedesktop.systemd1.Manager", "/org/freedesktop/systemd1"
# systemctl's verbs for a system service's restart -> the method of PID 1's that enqueues its job
JOB_METHODS = {"restart": "RestartUnit", "try-restart": "TryRestartUnit", "reload-or-restart": "ReloadOrRestartUnit"}
JOB_OK = ("done", "skipped")  # a job's results systemctl exits 0 for
BUS_MESSAGE_MAX = 1 << 20  # bytes of one message while jobs run (every unit's changes are signalled)


class BusUnavailable(OSError):
    """PID 1's socket could not be used, and nothing was asked of it: systemctl may be run instead."""


class Jobs(NamedTuple):
    """How restart jobs asked of PID 1 ended: per unit, the result of its job (``JobRemoved``: done,
    failed, timeout, canceled, dependency, skipped, ...) or systemd's refusal to enqueue one; a unit
    with neither is still waiting, for the reason ``waiting`` says ("" when the time ran out).
    ``states``: what :func:`bus_states` would say of each unit whose job ended well, asked as it ended."""

    results: dict[str, str]
    refused: dict[str, str]
    waiting: str = ""
    states: dict[str, dict[str, str]] | None = None


# Told, while other jobs of the same call still run, of units whose jobs ended well: unit -> its properties.
Ended = Callable[[dict[str, dict[str, str]]], None]
# How the executor asks for restart jobs: (verb, units, timeout, told once under way, told of units as
# their jobs end, or None) -> how they ended (tests pass their own).
JobStarter = Callable[[str, list[str], float, Callable[[], None], Ended | None], Jobs]


def bus_restart(verb: str, names: list[str], timeout: float, under_way: Callable[[], None] = lambda: None,
                ended: Ended | None = None) -> Jobs:
    """``systemctl VERB -- NAMES`` of system services, asked of PID 1 on its own socket: one job per
    unit (mode ``replace``, as systemctl's), all asked at once, then each job's end (its
    ``JobRemoved`` signal, which PID 1 sends on its own socket to every connection) awaited by
    ``timeout``.  systemctl starts, connects and asks about each unit before its job, one unit
    after another: 4 ms more for one unit, 22 ms for 29.  As a job ends well, the unit's properties
    (``BUS_PROPS``) are asked on the same connection, while the other jobs run.

    ``under_way`` is told once PID 1 has begun to start one of them (a unit ``activating``: its start
    forked), or at the latest when the wait ends: what it starts (the next wave's survey asks PID 1
    about every unit of it) then asks PID 1 while it waits for the units to come up, not while it
    stops and forks them (a survey of 29 units then made the canary's restart 3-10 ms longer).
    ``ended`` is told, whenever nothing else is there to read, of the units whose job has ended well
    and whose properties are all read since it was last told (each unit once; they are also in the
    result's ``states``): a wave's units that start quickly are verified while a slower one still
    starts.  Raises BusUnavailable when nothing could be asked (the caller runs systemctl instead).
    Once the calls are sent, nothing is ever asked again: any trouble after that ends the wait
    (``waiting`` says what), and the caller's verification decides what became of the units."""
    deadline = time.monotonic() + timeout
    method = JOB_METHODS[verb]
    try:
        bus = _take(timeout)
    except (OSError, struct.error) as e:
        raise BusUnavailable(f"{SYSTEMD_BUS}: {e}") from None
    watch = _JobWatch(names, bus.serial + 1)
    calls = bus.calls() + _call(bus.serial + 1, MANAGER_PATH, _MANAGER, "Subscribe", "", ())
    for serial, name in watch.asked.items():
        calls += _call(serial, MANAGER_PATH, _MANAGER, method, "ss", (name, "replace"))
    others = 1000 + 100 * len(names)  # messages that are none of these (every unit's changes, other jobs)
    clean = False
    starting: Callable[[], None] | None = under_way  # until told
    lost = ""  # what ended the wait early
    paths = {bus_path(name) for name in names}
    try:
        try:
            bus.sock.sendall(calls)
        except (OSError, ValueError, IndexError, struct.error) as e:
            return watch.jobs(f"lost from view: {e}")
        while watch.open():
            try:
                message = _next(bus.sock, bus.buf, deadline, BUS_MESSAGE_MAX)
                if starting is not None and _activating(message, paths):
                    tell: Callable[[], None] = starting
                    starting = None
                    tell()
                if message[1] == 4 and b"JobRemoved" not in message[16:16 + struct.unpack_from("<I", message, 12)[0]]:
                    others -= 1  # most of them: a unit's properties changed
                elif not watch.news(message):
                    others -= 1
                if others < 0:
                    raise ValueError("systemd sent too much else meanwhile")
                if watch.ask:
                    bus.sock.sendall(watch.ask)
                    watch.ask.clear()
                told = ended is not None and bool(watch.ready) and watch.open() and not _waiting(bus)
            except TimeoutError:
                break
            except (OSError, ValueError, IndexError, struct.error) as e:
                lost = f"lost from view: {e}"
                break
            if told and ended is not None:  # (outside the above: what the caller raises is its own)
                ended(watch.hand_over())
        clean = not (lost or watch.open())
        if starting is not None:
            starting()
    finally:
        bus.serial = watch.serial
        if clean:
            _keep(bus)
        else:
            bus.close()
    return watch.jobs(lost)


ACTIVATING = b"\x0a\x00\x00\x00activating\x00"  # the string "activating" as a D-Bus value (not "deactivating")


def _activating(message: bytes, paths: set[str]) -> bool:
    """Whether ``message`` is PID 1's signal that one of the units at ``paths`` is now ``activating``
    (a ``PropertiesChanged`` of it that carries that state; read only as far as needed to say so)."""
    if message[1] != 4 or ACTIVATING not in message:
        return False
    fields, _ = _header(message)
    return fields.get(3) == "PropertiesChanged" and fields.get(1) in paths


def _waiting(bus: _Bus) -> bool:
    """Whether more of PID 1's messages are here already (a whole one read, or bytes on the socket),
    found without waiting; what is read is kept for :func:`_next`, which also says what went wrong."""
    if len(bus.buf) >= 16 and len(bus.buf) >= _message_size(bus.buf):
        return True
    timeout = bus.sock.gettimeout()
    try:
        bus.sock.setblocking(False)
        bus.buf += bus.sock.recv(1 << 16)  # nothing (the connection closed): _next finds it so again
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        bus.sock.settimeout(timeout)
    return True


class _JobWatch:
    """What is known of the restart jobs of ``names`` on one connection (:func:`bus_restart`)."""

    def __init__(self, names: list[str], first: int = 1) -> None:
        self.names = set(names)
        # serial -> unit (``first``: Subscribe, for a systemd that needs it; a connection used before
        # goes on from its last serial)
        self.asked = dict(enumerate(names, first + 1))
        self.results: dict[str, str] = {}
        self.refused: dict[str, str] = {}
        self.job_of: dict[str, str] = {}   # a job's object path -> its unit, from the answer to its call
        self.ended: dict[str, str] = {}    # a job's path -> its result, ended before its answer was read
        self.props: dict[int, tuple[str, str]] = {}  # serial of a Get -> (unit, property), unanswered
        self.states: dict[str, dict[str, str]] = {}
        self.ready: list[str] = []  # units whose job ended well and whose properties are all read, not yet told
        self.ask = bytearray()  # calls to send
        self.serial = first + len(names)  # the last serial used

    def open(self) -> bool:
        return len(self.results) + len(self.refused) < len(self.names) or bool(self.props)

    def hand_over(self) -> dict[str, dict[str, str]]:
        """The units ready since the last time (each unit's properties as read)."""
        ready, self.ready = self.ready, []
        return {name: self.states[name] for name in ready}

    def jobs(self, waiting: str) -> Jobs:
        # (an error answer leaves "?" instead of the property: never complete, whatever the count)
        complete = {n: s for n, s in self.states.items() if len(s) == len(BUS_PROPS) and "?" not in s}
        return Jobs(self.results, self.refused, waiting, complete)

    def _ended(self, name: str, result: str) -> None:
        self.results[name] = result
        if result in JOB_OK:
            path = bus_path(name)
            self.states[name] = {}
            for prop, interface in BUS_PROPS.items():
                self.serial += 1
                self.props[self.serial] = (name, prop)
                self.ask += _get(self.serial, path, interface, prop)

    def news(self, message: bytes) -> bool:
        """What ``message`` says of the jobs or the properties asked for; False when it says nothing of them."""
        fields, body = _header(message)
        kind, answered = message[1], fields.get(5)
        if kind in (2, 3) and isinstance(answered, int) and answered in self.props:
            name, prop = self.props.pop(answered)
            try:
                self.states[name][prop] = str(_reply(message)[1])
            except ValueError:
                self.states[name]["?"] = ""  # an error: not complete, asked again by the caller
            if len(self.states[name]) == len(BUS_PROPS) and "?" not in self.states[name]:
                self.ready.append(name)
            return True
        if kind == 2 and isinstance(answered, int) and answered in self.asked and fields.get(8) == "o":
            path = str(_values(message, body, "o")[0])
            self.job_of[path] = self.asked[answered]
            if path in self.ended:
                self._ended(self.asked[answered], self.ended.pop(path))
            return True
        if kind == 3 and isinstance(answered, int) and answered in self.asked:
            said = _values(message, body, "s")[0] if str(fields.get(8, "")).startswith("s") else fields.get(4)
            self.refused[self.asked[answered]] = str(said)
            return True
        if kind == 4 and fields.get(3) == "JobRemoved" and fields.get(2) == _MANAGER and fields.get(8) == "uoss":
            _id, path, unit, result = (str(v) for v in _values(message, body, "uoss"))
            if path in self.job_of:
                self._ended(self.job_of[path], result)
                return True
            if unit in self.names:  # its answer may still be on the way (or a job of it that was replaced)
                self.ended[path] = result
        return False


def unit_state(group: UnitGroup, timeout: float, runner: Runner = run) -> dict[str, str]:
    return unit_states([group], timeout, runner).get(group.name or "", {})


def recorded_group(kind: object, name: object, uid: object) -> UnitGroup | None:
    """The unit a record names, if it is one systemctl may be asked about: a system unit, or a user
    unit with its user's id, under a name systemd's grammar accepts (a record is data, not trusted)."""
    if not isinstance(name, str) or not valid_unit_name(name):
        return None
    if kind == SYSTEM:
        return UnitGroup(kind=SYSTEM, name=name, uid=None)
    if kind == USER and isinstance(uid, int) and not isinstance(uid, bool):
        return UnitGroup(kind=USER, name=name, uid=uid)
    return None


def active_state(kind: str, name: str, uid: int | None, timeout: float = 5) -> str:
    """systemd's ``ActiveState`` of a system or user unit named in a record; "unknown" when it cannot say."""
    group = recorded_group(kind, name, uid)
    if group is None:
        return "unknown"
    try:
        state = unit_state(group, timeout)
    except (OSError, _runner.TimeoutExpired):
        return "unknown"
    return state.get("ActiveState") or "unknown"


def status_excerpt(group: UnitGroup, timeout: float = 5, runner: Runner = run) -> str:
    """``systemctl status``-level detail for a failure report."""
    try:
        result = runner([PROGRAMS["systemctl"], *_manager(group), "status", "--no-pager", "--lines=8", "--",
                         group.name or ""], timeout)
    except _runner.TimeoutExpired:
        return "(systemctl status did not answer)"
    except OSError as e:
        return f"(could not run systemctl status: {e})"
    return (result.stdout or result.stderr).strip()


def last_failures(record: dict[str, Any] | None, timeout: float = 5) -> list[dict[str, Any]]:
    """Units whose restart failed in the last run (``record``: the state file, of this boot) and that
    have not been healthy since: not active now, or restarted by systemd after a failure.

    A failed restart leaves the unit without processes, so no scan finds it stale any more; the
    host must still say it, or the next report calls a broken host clean.
    """
    out = []
    for u in (record or {}).get("units", [])[:1000]:
        if not isinstance(u, dict) or u.get("status") != Status.FAILED:
            continue
        group = recorded_group(u.get("kind"), u.get("unit"), u.get("uid"))
        if group is None:
            continue
        try:
            now = unit_state(group, timeout)
        except (OSError, _runner.TimeoutExpired):
            now = {}
        if now.get("ActiveState") == "active" and now.get("NRestarts", "0") == "0":
            continue  # someone fixed it since
        detail = u.get("detail")
        out.append({"unit": group.name, "kind": u["kind"], "uid": group.uid,
                    "detail": detail.splitlines()[0] if isinstance(detail, str) and detail else "",
                    "active_state": now.get("ActiveState", "unknown"), "sub_state": now.get("SubState", "unknown"),
                    "restarts": int(now["NRestarts"]) if now.get("NRestarts", "").isdigit() else None})
    return out


def left_down(record: dict[str, Any] | None) -> list[str]:
    """System units whose restart failed in the run of ``record`` (this boot's last) and that are not
    running now (:func:`active_state` validates the names: "unknown" counts as running)."""
    units = record.get("units") if record is not None else None
    names = [u["unit"] for u in units if isinstance(u, dict) and u.get("status") == Status.FAILED
             and u.get("kind") == SYSTEM and isinstance(u.get("unit"), str)] if isinstance(units, list) else []
    return [n for n in names if active_state(SYSTEM, n, None) not in ("active", "reloading", "activating", "unknown")]


def ancestor_units(proc: Path, pid: int) -> set[str]:
    """Units of this process and all its ancestors: restarting one would kill this very run."""
    units = set()
    for current in lineage(proc, pid):
        try:
            cgroup = (proc / str(current) / "cgroup").read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            break
        unit = resolve(cgroup_path(cgroup))
        if unit.kind in (SYSTEM, USER_MANAGER) and unit.name:
            units.add(unit.name)
    return units


def policy_rc_d_forbids(name: str, timeout: float, runner: Runner = run) -> bool:
    """Debian's policy layer (``policy-rc.d``): exit 101 means "action forbidden"."""
    if not os.access(POLICY_RC_D, os.X_OK):
        return False
    script = name.removesuffix(".service")
    try:
        return runner([POLICY_RC_D, script, "restart"], timeout).returncode == 101
    except _runner.FAILURES:
        return True  # it could not say yes: do nothing rather than something forbidden


class Survey(NamedTuple):
    """What is asked about a wave's units before their restart: systemd's properties of each, and
    the units ``policy-rc.d`` forbids."""

    states: dict[str, dict[str, str]]
    forbidden: frozenset[str]


def survey(groups: list[UnitGroup], timeout: float, runner: Runner = run) -> Survey:
    """One ``systemctl show`` for all of them, then policy-rc.d for each (raises what the runner raises)."""
    states = unit_states(groups, timeout, runner)
    return Survey(states, frozenset(g.name or "" for g in groups if policy_rc_d_forbids(g.name or "", timeout, runner)))


def daemon_not_running(script: str, timeout: float, run_dir: Path, runner: Runner = run) -> str | None:
    """Why a guessed unit's daemon counts as not running (None when it runs): a restart of
    a stopped init-script service would start it.

    Its init script's LSB status (``invoke-rc.d NAME status``: 0 running, 1-3 not running);
    a script that cannot say (4, a usage error, policy-rc.d's 101) is judged by its pidfile
    ``/run/NAME.pid``, which must name a live process.
    """
    try:
        code = runner([PROGRAMS["invoke-rc.d"], script, "status"], timeout).returncode
    except _runner.TimeoutExpired:
        return "its init script did not say in time whether it runs"
    except OSError as e:
        return f"could not ask its init script whether it runs: {e}"
    if code == 0:
        return None
    if code in (1, 2, 3):
        return f"not running (init script status {code}); never started by restartctl"
    try:
        fd = os.open(run_dir / f"{script}.pid", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            pid = int(os.read(fd, 64).split()[0]) if stat.S_ISREG(os.fstat(fd).st_mode) else 0
        finally:
            os.close(fd)
        if pid > 1:
            os.kill(pid, 0)
            return None
    except (OSError, ValueError, IndexError):
        pass
    return f"not running (no live process in {run_dir / script}.pid); never started by restartctl"


def _no_cgroups_below(top: int) -> bool:
    """Whether cgroup v2's ``cgroup.stat`` of the cgroup open at ``top`` says it has no cgroups below it
    (False when it cannot say: cgroup v1, or the cgroup is gone)."""
    try:
        return b"nr_descendants 0" in read_proc(top, "cgroup.stat").splitlines()
    except (OSError, ProcessGone):
        return False


def _cgroup_dir(top: str) -> int | None:
    """The directory ``top`` opened, when it is a cgroup's (it has a ``cgroup.procs`` file); else None."""
    try:
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.stat("cgroup.procs", dir_fd=fd).st_mode):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def unit_pids(cgroupfs: Path, control_group: str) -> list[int] | None:
    """The processes in a unit's cgroup and every cgroup below it (a delegated subtree).

    ``control_group`` is systemd's own ``ControlGroup`` property.  The first layout that
    has it wins: cgroup v2, the unified half of a hybrid setup, then v1's name=systemd.
    None when none has it (no systemd, or the unit is gone): the caller looks everywhere.
    A leaf's files are read relative to its directory, opened once, to their end (``cgroup.procs`` is a
    seq_file, as /proc's are): through a path for each (pathlib's), the check of a wave's 29 units spent
    1.0-1.4 ms here instead of 0.6 ms.  Its directory in each layout is a string (three pathlib joins for
    each unit were 0.3 ms more for a wave's 29).
    """
    parts = control_group.strip("/").split("/")
    if not control_group.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return None
    unit = "/".join(parts)
    for top in (f"{cgroupfs}/{unit}", f"{cgroupfs}/unified/{unit}", f"{cgroupfs}/systemd/{unit}"):
        fd = _cgroup_dir(top)
        if fd is None:
            continue
        try:
            if _no_cgroups_below(fd):  # cgroup v2 says so: no walk of the 30 files of a leaf
                return [int(n) for n in read_proc(fd, "cgroup.procs").split()]
        except (OSError, ProcessGone, ValueError):
            pass  # removed meanwhile: the walk says what is left
        finally:
            os.close(fd)
        pids: list[int] = []
        for directory, _, files in os.walk(top):
            if "cgroup.procs" in files:
                try:
                    pids += [int(n) for n in Path(directory, "cgroup.procs").read_text().split()]
                except (OSError, ValueError):
                    continue  # removed meanwhile
        return pids
    return None
