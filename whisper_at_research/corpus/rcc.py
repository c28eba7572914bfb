"""Read Qt binary resource files (``.rcc``, as written by ``rcc -binary``).

GCompris ships its sounds inside such files. The format (Qt ``rcc.cpp`` /
``qresource.cpp``) is, all integers big-endian:

- header: ``b"qres"``, ``u32 version`` (1, 2 or 3), ``u32 tree_offset``,
  ``u32 data_offset``, ``u32 names_offset``, and from version 3 ``u32 flags``;
- the tree: fixed-size nodes (14 bytes, 22 from version 2 which adds a ``u64``
  modification time), node 0 is the root directory.  A node is ``u32 name_offset``,
  ``u16 flags``, then for a directory ``u32 child_count, u32 first_child`` and for a
  file ``u16 country, u16 language, u32 data_offset``; children are consecutive;
- names: ``u16 length, u32 hash, length x UTF-16BE code units``;
- data: ``u32 size`` then the bytes. Flag 1 marks zlib data, which starts with its
  own ``u32`` uncompressed size (``qCompress``); flag 4 marks zstd data; flag 2 a
  directory.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RccError", "RccEntry", "RccFile"]

MAGIC = b"qres"
FLAG_COMPRESSED = 0x01
FLAG_DIRECTORY = 0x02
FLAG_COMPRESSED_ZSTD = 0x04


class RccError(ValueError):
    """The bytes are not a valid Qt resource file (or use an unsupported feature)."""


@dataclass(frozen=True)
class RccEntry:
    """One file in the resource tree; ``path`` has no leading ``/`` (``:/a/b`` -> ``a/b``)."""

    path: str
    flags: int
    country: int
    language: int
    data_offset: int  # absolute offset in the file of the u32 size that precedes the bytes

    @property
    def compression(self) -> str | None:
        if self.flags & FLAG_COMPRESSED:
            return "zlib"
        if self.flags & FLAG_COMPRESSED_ZSTD:
            return "zstd"
        return None


class RccFile:
    """A parsed ``.rcc``: ``entries`` lists every file; ``read(path)`` returns its bytes."""

    def __init__(self, source: str | Path | bytes) -> None:
        self.name = "<bytes>" if isinstance(source, bytes) else str(source)
        self._data = source if isinstance(source, bytes) else Path(source).read_bytes()
        data = self._data
        if len(data) < 20 or data[:4] != MAGIC:
            raise RccError(f"{self.name}: not a Qt resource file (no 'qres' header)")
        self.version, self._tree, self._payload, self._names = struct.unpack_from(">4I", data, 4)
        if self.version not in (1, 2, 3):
            raise RccError(f"{self.name}: unsupported rcc format version {self.version}")
        self.flags = struct.unpack_from(">I", data, 20)[0] if self.version >= 3 else 0
        self._node_size = 14 if self.version == 1 else 22
        for what, offset in (("tree", self._tree), ("data", self._payload), ("names", self._names)):
            if offset >= len(data):
                raise RccError(f"{self.name}: {what} offset {offset} is past the end")
        self.entries: list[RccEntry] = list(self._walk(0, "", depth=0))
        self._by_path = {entry.path: entry for entry in self.entries}

    def __iter__(self) -> Iterator[RccEntry]:
        return iter(self.entries)

    def __contains__(self, path: str) -> bool:
        return path.lstrip("/").removeprefix(":/") in self._by_path

    def read(self, entry: RccEntry | str) -> bytes:
        """The uncompressed bytes of a file, given as an entry or a path (``a/b.ogg``)."""
        if isinstance(entry, str):
            key = entry.lstrip(":").lstrip("/")
            if key not in self._by_path:
                raise KeyError(f"{self.name}: no resource {entry!r}")
            entry = self._by_path[key]
        size = self._u32(entry.data_offset)
        start = entry.data_offset + 4
        blob = self._data[start : start + size]
        if len(blob) != size:
            raise RccError(f"{self.name}: {entry.path}: data runs past the end of the file")
        if entry.flags & FLAG_COMPRESSED:
            if size < 4:
                raise RccError(f"{self.name}: {entry.path}: truncated zlib block")
            expected = struct.unpack_from(">I", blob)[0]
            try:
                out = zlib.decompress(blob[4:])
            except zlib.error as error:
                raise RccError(f"{self.name}: {entry.path}: bad zlib data ({error})") from None
            if len(out) != expected:
                raise RccError(
                    f"{self.name}: {entry.path}: zlib gave {len(out)} bytes, expected {expected}"
                )
            return out
        if entry.flags & FLAG_COMPRESSED_ZSTD:
            return _zstd_decompress(blob, f"{self.name}: {entry.path}")
        return blob

    def extract(self, out_dir: str | Path, suffixes: tuple[str, ...] | None = None) -> list[Path]:
        """Write every file (or those whose name ends with one of ``suffixes``) under out_dir."""
        written = []
        root = Path(out_dir)
        for entry in self.entries:
            if suffixes and not entry.path.lower().endswith(suffixes):
                continue
            target = root / entry.path
            if ".." in Path(entry.path).parts:
                raise RccError(f"{self.name}: unsafe resource path {entry.path!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.read(entry))
            written.append(target)
        return written

    # -- internals -------------------------------------------------------------------------
    def _u32(self, offset: int) -> int:
        if offset + 4 > len(self._data):
            raise RccError(f"{self.name}: offset {offset} is past the end of the file")
        return struct.unpack_from(">I", self._data, offset)[0]

    def _name(self, offset: int) -> str:
        at = self._names + offset
        if at + 6 > len(self._data):
            raise RccError(f"{self.name}: name offset {offset} is past the end")
        (length,) = struct.unpack_from(">H", self._data, at)
        raw = self._data[at + 6 : at + 6 + 2 * length]
        return raw.decode("utf-16-be")

    def _node(self, index: int) -> tuple[int, int, bytes]:
        at = self._tree + index * self._node_size
        if at + 14 > len(self._data):
            raise RccError(f"{self.name}: tree node {index} is past the end")
        name_offset, flags = struct.unpack_from(">IH", self._data, at)
        return name_offset, flags, self._data[at + 6 : at + 14]

    def _walk(self, index: int, prefix: str, depth: int) -> Iterator[RccEntry]:
        if depth > 64:
            raise RccError(f"{self.name}: resource tree too deep (a cycle?)")
        _, flags, rest = self._node(index)
        if not flags & FLAG_DIRECTORY:
            raise RccError(f"{self.name}: node {index} should be a directory")
        count, first = struct.unpack(">II", rest)
        for child in range(first, first + count):
            name_offset, child_flags, child_rest = self._node(child)
            path = f"{prefix}{self._name(name_offset)}"
            if child_flags & FLAG_DIRECTORY:
                yield from self._walk(child, path + "/", depth + 1)
            else:
                country, language, offset = struct.unpack(">HHI", child_rest)
                yield RccEntry(path, child_flags, country, language, self._payload + offset)


def _zstd_decompress(blob: bytes, what: str) -> bytes:
    try:
        from compression import zstd  # Python >= 3.14

        return zstd.decompress(blob)
    except ImportError:
        pass
    try:
        import zstandard
    except ImportError:
        raise RccError(
            f"{what}: zstd-compressed resource; install the `zstandard` package to read it"
        ) from None
    return zstandard.ZstdDecompressor().decompressobj().decompress(blob)


def write_rcc(files: dict[str, bytes], *, version: int = 2, compress: bool = True) -> bytes:
    """A minimal ``rcc -binary`` writer (used by tests to check the reader on edge cases).

    ``files`` maps ``dir/sub/name`` paths to bytes; directories are created implicitly.
    """
    tree: dict = {}
    for path, payload in files.items():
        node = tree
        *dirs, leaf = path.strip("/").split("/")
        for part in dirs:
            node = node.setdefault(part, {})
        node[leaf] = payload

    names = bytearray()
    name_at: dict[str, int] = {}

    def name_offset(name: str) -> int:
        if name not in name_at:
            name_at[name] = len(names)
            encoded = name.encode("utf-16-be")
            names.extend(struct.pack(">HI", len(name), _qt_hash(name)) + encoded)
        return name_at[name]

    data = bytearray()
    # Breadth-first numbering, as rcc does: children of one directory are consecutive.
    nodes: list[tuple[str, object]] = [("", tree)]
    first_child: dict[int, int] = {}
    i = 0
    while i < len(nodes):
        _, content = nodes[i]
        if isinstance(content, dict):
            first_child[i] = len(nodes)
            nodes.extend(sorted(content.items(), key=lambda item: _qt_hash(item[0])))
        i += 1
    records = bytearray()
    for index, (name, content) in enumerate(nodes):
        offset = name_offset(name) if index else 0
        if isinstance(content, dict):
            records += struct.pack(
                ">IHII", offset, FLAG_DIRECTORY, len(content), first_child[index]
            )
        else:
            payload, flags = bytes(content), 0
            if compress:
                payload, flags = struct.pack(">I", len(payload)) + zlib.compress(payload), 1
            records += struct.pack(">IHHHI", offset, flags, 0, 1, len(data))
            data += struct.pack(">I", len(payload)) + payload
        if version >= 2:
            records += struct.pack(">Q", 0)
    header_size = 24 if version >= 3 else 20
    tree_at = header_size
    data_at = tree_at + len(records)
    names_at = data_at + len(data)
    header = MAGIC + struct.pack(">4I", version, tree_at, data_at, names_at)
    if version >= 3:
        header += struct.pack(">I", 0)
    return header + bytes(records) + bytes(data) + bytes(names)


def _qt_hash(name: str) -> int:
    """qt_hash of rcc: the ELF-style hash over UTF-16 code units."""
    h = 0
    for unit in struct.unpack(f">{len(name.encode('utf-16-be')) // 2}H", name.encode("utf-16-be")):
        h = ((h << 4) + unit) & 0xFFFFFFFF
        h ^= (h & 0xF0000000) >> 23
        h &= 0x0FFFFFFF
    return h
