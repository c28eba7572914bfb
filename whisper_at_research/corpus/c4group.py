"""Read OpenClonk group files (``.ocg``/``.ocd``/``.ocf``, e.g. Debian ``openclonk-data``'s
``Sound.ocg``).

Format as written by OpenClonk's ``src/c4group/C4Group.cpp``: the file is gzip with its
magic bytes changed to ``1E 8C``; inside, a 204-byte header (``"RedWolf Design
GrpFolder"``, versions, entry count), scrambled by swapping bytes ``i`` and ``i + 2`` of
every three and XOR-ing each with ``0xED``, then one 316-byte core per entry (name,
``packed``, ``child group``, size, offset, ...; only the header is scrambled), then the
entries' data, offsets counted from the end of the cores. A child group is stored as an
uncompressed group (its own scrambled header) inside its parent.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["C4GroupError", "C4Member", "read_c4group"]

MAGIC = b"\x1e\x8c"
SIGNATURE = b"RedWolf Design GrpFolder"
HEADER_SIZE = 204
ENTRY_SIZE = 316


class C4GroupError(ValueError):
    """The file is not an OpenClonk group."""


@dataclass(frozen=True)
class C4Member:
    path: str  # "Animals.ocg/Bat.ocg/Chirp.wav": child groups joined by "/"
    data: bytes


def read_c4group(path: str | Path) -> list[C4Member]:
    """Every file of the group and its child groups, in stored order; raises C4GroupError."""
    raw = Path(path).read_bytes()
    if raw[:2] != MAGIC:
        raise C4GroupError(f"{path}: not an OpenClonk group (magic {raw[:2].hex()})")
    try:
        blob = gzip.decompress(b"\x1f\x8b" + raw[2:])
    except (OSError, EOFError, zlib.error) as error:
        raise C4GroupError(f"{path}: damaged OpenClonk group ({error})") from error
    return list(_members(blob, "", str(path)))


def _unscramble(header: bytes) -> bytes:
    swapped = bytearray(header)
    for i in range(0, len(swapped) - 2, 3):
        swapped[i], swapped[i + 2] = swapped[i + 2], swapped[i]
    return bytes(b ^ 0xED for b in swapped)


def _members(blob: bytes, prefix: str, where: str):
    header = _unscramble(blob[:HEADER_SIZE])
    if not header.startswith(SIGNATURE):
        raise C4GroupError(f"{where}: group {prefix or '/'} has no OpenClonk header")
    (count,) = struct.unpack_from("<i", header, 36)
    data_start = HEADER_SIZE + count * ENTRY_SIZE
    if count < 0 or data_start > len(blob):
        raise C4GroupError(f"{where}: group {prefix or '/'} lists {count} entries")
    for index in range(count):
        core = blob[HEADER_SIZE + index * ENTRY_SIZE : HEADER_SIZE + (index + 1) * ENTRY_SIZE]
        name = core[:257].split(b"\0", 1)[0].decode("latin-1")
        _packed, child, size, _reserved, offset = struct.unpack_from("<5i", core, 260)
        data = blob[data_start + offset : data_start + offset + size]
        if len(data) != size or offset < 0:
            raise C4GroupError(f"{where}: {prefix}{name} runs past the end of its group")
        if child:
            yield from _members(data, f"{prefix}{name}/", where)
        else:
            yield C4Member(f"{prefix}{name}", data)
