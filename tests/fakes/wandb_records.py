"""Reading a wandb run file (``run-<id>.wandb``, as offline mode writes it) back, for tests.

wandb (0.31) no longer ships a Python reader. The file is a 7-byte header (``:W&B``, a 2-byte
magic, a version byte) followed by LevelDB-log records in 32 KiB blocks (crc32c, little-endian
length, type FULL/FIRST/MIDDLE/LAST), each payload a ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterator

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def payloads(path: Path) -> Iterator[bytes]:
    """The record payloads of a .wandb file, in order (checksums not verified)."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a wandb run file")
    pos, parts = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the block's tail is padding
            pos += left
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        body = data[pos + HEADER: pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        if kind == FULL:
            yield body
        elif kind == FIRST:
            parts = body
        elif kind == MIDDLE:
            parts += body
        elif kind == LAST:
            yield parts + body
            parts = b""


def records(path: Path) -> list[tuple[str, Any]]:
    """(record type, its message) for every record: ``history`` rows come as {key: value}."""
    from wandb.proto import wandb_internal_pb2 as pb

    out: list[tuple[str, Any]] = []
    for raw in payloads(path):
        r = pb.Record()
        r.ParseFromString(raw)
        kind = r.WhichOneof("record_type")
        if kind == "history":
            out.append((kind, {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}))
        elif kind is not None:
            out.append((kind, getattr(r, kind)))
    return out
