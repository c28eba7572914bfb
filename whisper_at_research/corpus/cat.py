"""Read OpenTTD sound containers (``.cat``, e.g. Debian ``openttd-opensfx``'s ``opensfx.cat``).

OpenTTD keeps its base sound set in one file (format as read by OpenTTD's
``src/sound.cpp``): a table of little-endian ``u32 offset, u32 size`` pairs (the
first offset, with bit 31 set in the newer format, is the table's length, so the
count is ``offset / 8``), then per sound at its offset a ``u8`` name length, the
NUL-terminated name and ``size`` bytes of a RIFF/WAVE file. OpenSFX's names are
credits: ``"Title". Original "file.wav" by ... License: ...``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CatEntry", "CatError", "read_cat"]


class CatError(ValueError):
    """The file is not an OpenTTD sound container."""


@dataclass(frozen=True)
class CatEntry:
    index: int
    name: str  # the whole credit line
    data: bytes  # a RIFF/WAVE file

    @property
    def title(self) -> str:
        """The quoted title that starts the name (the name itself if none)."""
        m = re.match(r'\s*"([^"]*)"', self.name)
        return m.group(1) if m else self.name

    @property
    def filename(self) -> str:
        """``NN_<title as lower-case words joined by _>.wav``, stable and regex-friendly."""
        slug = re.sub(r"[^a-z0-9]+", "_", self.title.lower()).strip("_")
        return f"{self.index:02d}_{slug}.wav"


def read_cat(path: str | Path) -> list[CatEntry]:
    """All sounds of an OpenTTD ``.cat`` file; raises CatError on anything else."""
    blob = Path(path).read_bytes()
    if len(blob) < 8:
        raise CatError(f"{path}: too short for an OpenTTD sound container")
    count = (struct.unpack_from("<I", blob, 0)[0] & 0x7FFFFFFF) // 8
    if count == 0 or count * 8 > len(blob):
        raise CatError(f"{path}: bad sound table")
    entries = []
    for index in range(count):
        offset, size = struct.unpack_from("<II", blob, 8 * index)
        offset &= 0x7FFFFFFF
        if offset >= len(blob):
            raise CatError(f"{path}: sound {index} starts past the end")
        length = blob[offset]
        raw_name = blob[offset + 1 : offset + 1 + length]
        start = offset + 1 + length
        data = blob[start : start + size]
        if len(data) != size or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
            raise CatError(f"{path}: sound {index} is not a RIFF/WAVE file")
        name = raw_name.split(b"\0", 1)[0].decode("utf-8", errors="replace")
        entries.append(CatEntry(index, name, data))
    return entries
