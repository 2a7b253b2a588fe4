"""A stand-in for PID 1's own D-Bus socket (``/run/systemd/private``), for tests without systemd.

It speaks as much of the protocol as restartctl does there: the ``AUTH EXTERNAL`` handshake, then
little-endian messages.  ``Properties.Get`` is answered from :attr:`FakePid1.units`; a restart job
(``RestartUnit``, ``TryRestartUnit``, ``ReloadOrRestartUnit``) as :attr:`FakePid1.jobs` says for
its unit: the job's result (``JobRemoved``), an error reply (``refuse:MESSAGE``), no end at all
(``hang``), or the connection closed after the job was enqueued (``close``).  Every unit's job is
wrapped in ``noise`` signals that say nothing of it, as PID 1 sends them.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from pathlib import Path

from restart import unitstate


def _pad(buf: bytearray, n: int) -> None:
    buf += bytes(-len(buf) % n)


def message(kind: int, fields: list[tuple[int, str, object]], signature: str = "", args: tuple[object, ...] = (),
            serial: int = 1, raw: bytes = b"") -> bytes:
    """A little-endian D-Bus message: header fields (code, type, value) and a body of s/o/u values
    (or ``raw``, as it is)."""
    body = bytearray(raw)
    for sig, value in zip("" if raw else signature, args, strict=True):
        _pad(body, 4)
        if sig == "u":
            body += struct.pack("<I", value)
        else:
            data = str(value).encode()
            body += struct.pack("<I", len(data)) + data + b"\0"
    head = bytearray()
    for code, sig, value in [*fields, *([(8, "g", signature)] if signature else [])]:
        _pad(head, 8)
        head += bytes([code, 1]) + sig.encode() + b"\0"
        if sig == "u":
            head += struct.pack("<I", value)
        elif sig == "g":
            head += bytes([len(str(value))]) + str(value).encode() + b"\0"
        else:
            _pad(head, 4)
            data = str(value).encode()
            head += struct.pack("<I", len(data)) + data + b"\0"
    out = bytearray(b"l" + bytes([kind, 1, 1]) + struct.pack("<III", len(body), serial, len(head)) + head)
    _pad(out, 8)
    return bytes(out + body)


def signal(member: str, signature: str = "", args: tuple[object, ...] = ()) -> bytes:
    return message(4, [(1, "o", "/org/freedesktop/systemd1"), (2, "s", "org.freedesktop.systemd1.Manager"),
                       (3, "s", member)], signature, args)


NOISE = message(4, [(1, "o", "/org/freedesktop/systemd1/unit/x"), (2, "s", "org.freedesktop.DBus.Properties"),
                    (3, "s", "PropertiesChanged")], "s", ("org.freedesktop.systemd1.Unit" + " " * 900,))


class FakePid1:
    """Serves one connection at a time on ``path`` in a thread, until :meth:`close`."""

    def __init__(self, path: Path, *, jobs: dict[str, str] | None = None,
                 units: dict[str, dict[str, str]] | None = None, noise: int = 3, early: bool = False,
                 states: tuple[str, ...] = ()) -> None:
        self.path, self.jobs, self.noise, self.early = path, jobs or {}, noise, early
        self.states = states  # the ActiveStates each unit's PropertiesChanged carry once its job is enqueued
        self.units = {unitstate.bus_path(name): props for name, props in (units or {}).items()}
        self.calls: list[tuple[str, tuple[object, ...]]] = []  # (member, arguments) as asked
        self.connections = 0  # accepted so far
        self.after_get: dict[int, list[bytes]] = {}  # sent after the Nth answer to Get (signals meanwhile)
        self.sent = threading.Event()  # set once what after_get holds was sent
        self.before_answer: list[bytes] = []  # sent before each answer to Get (a unit loaded, collected)
        self.errors: set[str] = set()  # properties whose Get is answered with an error
        self.auth_delay = 0.0  # seconds before a connection's handshake is answered (a busy PID 1)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        unitstate.release()  # (a connection restartctl kept for its next question holds the one thread)
        self.stop.set()
        with contextlib.suppress(OSError):  # wakes an accept() already waiting (closing alone does not)
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.thread.join(5)

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            with conn, contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client that went away
                self._talk(conn)

    def _talk(self, conn: socket.socket) -> None:
        conn.recv(256)  # \0AUTH EXTERNAL ...
        time.sleep(self.auth_delay)
        conn.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n")
        buf = bytearray()
        job = 0
        while True:
            chunk = conn.recv(1 << 16)
            if not chunk:
                return
            buf += chunk
            if buf.startswith(b"BEGIN\r\n"):
                del buf[:7]
            while len(buf) >= 16:
                size = 16 + struct.unpack_from("<I", buf, 12)[0]
                size += -size % 8 + struct.unpack_from("<I", buf, 4)[0]
                if len(buf) < size:
                    break
                msg = bytes(buf[:size])
                del buf[:size]
                fields, body = unitstate._header(msg)
                member, serial = str(fields[3]), struct.unpack_from("<I", msg, 8)[0]
                args = tuple(unitstate._values(msg, body, str(fields.get(8, ""))))
                self.calls.append((member, args))
                reply_to = [(5, "u", serial)]
                if member == "Get":
                    data = self.units.get(str(fields[1]), {}).get(str(args[1]), "").encode()
                    value = b"\x01s\x00\x00" + struct.pack("<I", len(data)) + data + b"\0"
                    answer = message(2, reply_to, "v", raw=value) if str(args[1]) not in self.errors else \
                        message(3, [*reply_to, (4, "s", "org.freedesktop.DBus.Error.UnknownProperty")], "s", ("no",))
                    conn.sendall(b"".join(self.before_answer) + answer)
                    later = self.after_get.pop(sum(call[0] == "Get" for call in self.calls), [])
                    if later:
                        conn.sendall(b"".join(later))
                        self.sent.set()
                    continue
                if member == "Subscribe":
                    conn.sendall(message(2, reply_to))
                    continue
                unit, how = str(args[0]), self.jobs.get(str(args[0]), "done")
                if how.startswith("refuse:"):
                    conn.sendall(message(3, [*reply_to, (4, "s", "org.freedesktop.systemd1.UnitMasked")], "s",
                                         (how.removeprefix("refuse:"),)))
                    continue
                job += 1
                path = f"/org/freedesktop/systemd1/job/{job}"
                ended = signal("JobRemoved", "uoss", (job, path, unit, how))
                other = signal("JobRemoved", "uoss", (job + 1000, path + "0", unit, "canceled"))  # a job it replaced
                reply = message(2, reply_to, "o", (path,))
                changed = [message(4, [(1, "o", unitstate.bus_path(unit)), (2, "s", "org.freedesktop.DBus.Properties"),
                                       (3, "s", "PropertiesChanged")], "s", (state,)) for state in self.states]
                reply += b"".join(changed)
                out = [other, *([NOISE] * self.noise)]
                out += [ended, reply] if self.early else [reply, *([NOISE] * self.noise), ended]
                conn.sendall(b"".join(out if how not in ("hang", "close") else [reply]))
                if how == "close":
                    return

