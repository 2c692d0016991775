"""The one reader of an ONNX file's `fc2conv.*` metadata, for every backend: the entries are read from the file itself,
not from what a backend makes of them, and bounded before anything is decoded.

Why not the backends' own maps: `metadata_props` is a repeated field, so a file can hold a key twice, and
onnxruntime's `custom_metadata_map` keeps one of the two values while OpenVINO's `rt_info` keeps the other (seen: one
file gave a stride of [8, 8] to one and [4, 4] to the other). Read here, a file whose `fc2conv.*` keys repeat is
refused, and both backends see the same values.

How: an ONNX file is a protobuf `ModelProto`; its top-level fields are walked on the wire, the graph (field 7, the
weights: most of the file) is skipped by its length without being read, and each `metadata_props` entry (field 14, a
`StringStringEntryProto` of key 1 and value 2) is read only after its declared length has been checked against
`MAX_ENTRY`, the file's size and `MAX_TOTAL`. The JSON values are then checked by `fc2conv.metadata.decode`,
which bounds their nesting before parsing. No torch, no onnx.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from ..errors import InputError

__all__ = ["MAX_ENTRIES", "MAX_ENTRY", "MAX_TOTAL", "read_entries"]

MAX_ENTRY = 4 * 2**20   # bytes of one metadata entry: 21,843 ImageNet-21k labels take about 0.4 MiB
MAX_TOTAL = 16 * 2**20  # bytes of all of them
MAX_ENTRIES = 4096
_METADATA_PROPS = 14    # ModelProto.metadata_props
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def read_entries(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Every (key, value) of the ONNX file's `metadata_props`, in file order, repeated keys included.
    `InputError` naming the file when it is not a protobuf message, or its metadata is too large to trust."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            return _entries(f, size, str(path))
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror or e})") from None


def _entries(f: BinaryIO, size: int, source: str) -> list[tuple[str, str]]:
    entries, total = [], 0
    while f.tell() < size:
        tag = _varint(f, size, source)
        field, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            _varint(f, size, source)
        elif wire in (_FIXED64, _FIXED32):
            _skip(f, 8 if wire == _FIXED64 else 4, size, source)
        elif wire == _LENGTH:
            length = _varint(f, size, source)
            if field != _METADATA_PROPS:
                _skip(f, length, size, source)
                continue
            total += length
            if length > MAX_ENTRY or total > MAX_TOTAL or len(entries) >= MAX_ENTRIES:
                raise InputError(
                    f"{source}: its metadata is too large to trust (an entry of {length:,} bytes, {total:,} bytes "
                    f"in {len(entries) + 1} entries; at most {MAX_ENTRY:,} per entry, {MAX_TOTAL:,} in all)")
            if f.tell() + length > size:
                raise InputError(f"{source}: a metadata entry runs past the end of the file; not an ONNX model")
            entries.append(_entry(f.read(length), source))
        else:
            raise InputError(f"{source}: not an ONNX model (protobuf wire type {wire} at byte {f.tell()})")
    return entries


def _entry(data: bytes, source: str) -> tuple[str, str]:
    """(key, value) of one StringStringEntryProto."""
    found = {1: b"", 2: b""}
    position = 0
    while position < len(data):
        tag, position = _varint_at(data, position, source)
        length, position = _varint_at(data, position, source) if tag & 7 == _LENGTH else (-1, position)
        if length < 0 or position + length > len(data):
            raise InputError(f"{source}: a metadata entry is malformed; not an ONNX model")
        if tag >> 3 in found:
            found[tag >> 3] = data[position:position + length]
        position += length
    try:
        return found[1].decode(), found[2].decode()
    except UnicodeDecodeError:
        raise InputError(f"{source}: a metadata entry ({found[1][:60]!r}) is not UTF-8 text") from None


def _varint(f: BinaryIO, size: int, source: str) -> int:
    start = f.tell()
    value, used = _varint_at(f.read(min(10, size - start)), 0, source)
    f.seek(start + used)
    return value


def _varint_at(data: bytes, position: int, source: str) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if position >= len(data):
            raise InputError(f"{source}: not an ONNX model (a protobuf field is cut short)")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
    raise InputError(f"{source}: not an ONNX model (a protobuf number longer than 10 bytes)")


def _skip(f: BinaryIO, length: int, size: int, source: str) -> None:
    if f.tell() + length > size:
        raise InputError(f"{source}: a protobuf field runs past the end of the file; not an ONNX model")
    f.seek(length, os.SEEK_CUR)
