"""CPU microcode: the revision running against the one installed in ``/lib/firmware``.

Parses ``/proc/cpuinfo`` and the Intel and AMD microcode containers as data (no ``iucode-tool``,
no subprocess); :func:`restart.reboot.microcode_status` makes a reboot reason of a newer one.
Never inside a virtual machine: there the hypervisor's revision is shown.
"""

from __future__ import annotations

import struct
from pathlib import Path

from restart import NamedTuple

MICROCODE_PACKAGES = {"GenuineIntel": "intel-microcode", "AuthenticAMD": "amd64-microcode"}


class Cpu(NamedTuple):
    vendor: str
    family: int
    model: int
    stepping: int
    revision: int      # the microcode revision running now
    virtual: bool      # a guest: the revision is the hypervisor's business


def parse_cpuinfo(text: str) -> Cpu | None:
    """The first processor of ``/proc/cpuinfo`` (a microcode update goes to every core at once)."""
    fields: dict[str, str] = {}
    for line in text.split("\n"):
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    try:
        return Cpu(fields["vendor_id"], int(fields["cpu family"]), int(fields["model"]), int(fields["stepping"]),
                   int(fields["microcode"], 16), "hypervisor" in fields.get("flags", "").split())
    except (KeyError, ValueError):
        return None


def cpuid_signature(cpu: Cpu) -> int:
    """CPUID leaf 1 EAX, as microcode files name the processors they are for."""
    base_family, extended_family = (0xF, cpu.family - 0xF) if cpu.family >= 0xF else (cpu.family, 0)
    return (cpu.stepping | (cpu.model & 0xF) << 4 | base_family << 8 | (cpu.model >> 4) << 16
            | extended_family << 20)


def intel_revision(data: bytes, signature: int, platform: int | None = None) -> int | None:
    """The newest revision for ``signature`` in an ``intel-ucode/FF-MM-SS`` file (concatenated
    updates, each a 48-byte header: version 1, revision, date, signature, checksum, loader,
    platform flags, sizes); ``platform``: the CPU's flags bit, when the kernel tells it."""
    best, offset = None, 0
    while offset + 48 <= len(data):
        version, revision, _, sig, _, _, flags, data_size, total_size = struct.unpack_from("<9I", data, offset)
        total = total_size or 2048  # 0 means the original fixed layout: 2000 bytes of data, 2048 in all
        if version != 1 or total < 48 or (data_size and data_size + 48 > total):
            return best  # not an update: stop rather than guess at what follows
        if sig == signature and (platform is None or flags & platform):
            best = max(best or 0, revision)
        offset += total
    return best


def amd_revision(data: bytes, signature: int) -> int | None:
    """The newest patch for ``signature`` in an ``amd-ucode`` container: magic "DMA\\0", an
    equivalence table (CPUID -> equivalence id), then patches naming the id they are for."""
    if len(data) < 12 or data[:4] != b"DMA\0":
        return None
    kind, size = struct.unpack_from("<II", data, 4)
    if kind != 0:
        return None
    equivalent = None
    for entry in range(12, min(12 + size, len(data)) - 15, 16):
        cpuid, _, _, equiv_id = struct.unpack_from("<IIIH", data, entry)
        if cpuid == signature:
            equivalent = equiv_id
    if equivalent is None:
        return None
    best, offset = None, 12 + size
    while offset + 8 <= len(data):
        kind, size = struct.unpack_from("<II", data, offset)
        body = offset + 8
        if kind != 1 or size < 26 or body + size > len(data):
            break
        patch_id, = struct.unpack_from("<I", data, body + 4)
        processor_rev_id, = struct.unpack_from("<H", data, body + 24)
        if processor_rev_id == equivalent:
            best = max(best or 0, patch_id)
        offset = body + size
    return best


def platform_flags(sysfs: Path) -> int | None:
    """An Intel CPU's platform bit, as the kernel's microcode driver read it from the CPU."""
    try:
        return int((sysfs / "devices/system/cpu/cpu0/microcode/processor_flags").read_text(), 16)
    except (OSError, ValueError):
        return None
