"""How an item is encoded in Redis: its stored value and its entry, the one codec every reader and writer of
the store uses (the Lua scripts read the same layout: ``struct.unpack('>I4')`` / ``('>I8', value, 5)``).

- value (``items:`` hash, by id): bucket (u32 BE) · label (u64 BE) · packed code
- entry (``entries:`` hash, by label): the id, a newline, the user metadata (JSON text); ids hold no
  whitespace, so the first newline ends the id
"""

from __future__ import annotations

import struct

import numpy as np

MODALITIES = ("image", "text")  # a modality's side (0, 1) is its position: the scripts and the feed use it
HEADER = struct.Struct(">IQ")  # bucket, label


def header(raw: bytes) -> tuple[int, int] | None:
    """(bucket, label) of a stored value's header, or None for the empty string (no value)."""
    return HEADER.unpack(raw[: HEADER.size]) if raw else None


def record_dtype(width: int) -> np.dtype:
    """A stored value of ``width`` bytes as a numpy record: bucket · label · packed code."""
    return np.dtype([("bucket", ">u4"), ("label", ">u8"), ("code", np.uint8, (width - HEADER.size,))])


def records(buckets: np.ndarray, codes: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Fixed-size records, one row per item: bucket (u32 BE), [label (u64 BE),] code."""
    parts = [np.asarray(buckets, dtype=">u4").reshape(-1, 1).view(np.uint8)]
    if labels is not None:
        parts.append(np.asarray(labels, dtype=">u8").reshape(-1, 1).view(np.uint8))
    parts.append(np.asarray(codes, dtype=np.uint8).reshape(len(parts[0]), -1))
    return np.concatenate(parts, axis=1)


def entry(item: str, metadata: str | bytes) -> bytes:
    """An entry: the id, a newline, the metadata JSON text (the inverse of :func:`split_entry`)."""
    return b"%s\n%s" % (item.encode(), metadata.encode() if isinstance(metadata, str) else metadata)


def split_entry(raw: bytes) -> tuple[str, str]:
    """An entry → (id, metadata JSON text)."""
    item, _, meta = raw.partition(b"\n")
    return item.decode(), meta.decode()
