"""Bulk import: items from files (or any producer of chunks) into an index, one atomic script per chunk,
resumable after a crash.

    python -m index import FILE [FILE ...] --redis-url redis://… --index default --bundle models/default \\
        --modality image [--chunk 10000]

Each FILE is a ``.npy`` array, or a ``.npz`` holding one array named ``features`` or ``codes``: float
feature vectors of the modality, (n, d) with d the bundle's input length, which are encoded with the
bundle's hash function through onnxruntime as the service encodes them; or precomputed packed codes,
uint8 (n, bits / 8) in FAISS bit order. Beside each FILE, ``FILE``'s stem + ``.jsonl`` (or ``--sidecar``
for a single FILE) holds one JSON object per row, in row order: ``{"id": "…", "metadata": {…}}`` (ids
follow the API's rule: 1–256 characters, no whitespace; metadata optional).

The entry point another module calls (issue 18's collection loader) is :func:`import_chunks`::

    import_chunks(store: RedisStore, job: str, chunks: Iterable[Chunk], *, done: set[str] | None = None,
                  total: int | None = None, progress: bool = True) -> ImportSummary

with ``Chunk(key, modality, ids, codes, metadata)``: the chunk's name within the job, one modality, ids,
packed uint8 codes (n, bits / 8) and metadata (each the JSON text of an object), row-aligned. ``store``
is the index's active generation (:func:`open_store`).

What a chunk's write guarantees: on each shard of the index (``index.store``; the shards' parts are
written at once, each on its node's connection, and the chunk is done once every shard marked it), it is
one ``MULTI``/``EXEC`` transaction checked as the upsert script
checks a batch (``index.import_transaction``; the script itself when other writes keep interrupting),
so Redis writes every item of the chunk (items, entries, bucket counts), appends the chunk to the change
feed as one entry, and marks the chunk done in the job's progress hash, all or nothing; the call returns
once Redis has it (with ``appendfsync always``, in the fsync'd AOF). Running workers follow the feed and
apply a chunk as they apply a batch of the API; one that falls behind the trimmed feed reloads from Redis.
During an import the feed keeps about :data:`FEED_ITEMS` items' worth of chunks.

Resuming: ids are the key, so writing a chunk again replaces its items (never duplicates them). A re-run
of the same command skips the chunks its job has marked done: the job is named by the inputs (each
file's path, size and modification time), the chunk size, the modality and the bundle, and a chunk by
its file and number. A chunk cut short by a crash or a Redis outage was not written at all (its write is
atomic) and is written by the re-run. An outage stops the import with a message saying so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import faiss
import msgspec
import numpy as np
import redis
from tqdm import tqdm

from index.bundle import Bundle
from index.centers import CenterIndex
from index.errors import GenerationMovedError, IndexInputError
from index.import_transaction import PreparedChunk, done_chunks, prepare, write_prepared
from index.item_ids import ID_MAX_CHARS, ID_PATTERN
from index.shards import shard_count
from index.store import Group, RedisStore, each, split
from index.stored_values import MODALITIES

DEFAULT_CHUNK = 10_000  # items per script call: large enough that a call's fixed cost (fsync) is small
FEED_ITEMS = 1_000_000  # items of import chunks the change feed keeps (entries = FEED_ITEMS / chunk)
_JOB_HEX = 16  # hex digits of the sha256 naming a job


@dataclass(frozen=True)
class Chunk:
    """A part of an import written atomically: one modality's ids, packed codes and metadata, row-aligned;
    ``key`` names it within its job (a chunk already written under that key is skipped)."""

    key: str
    modality: str
    ids: Sequence[str]
    codes: np.ndarray  # packed uint8 (n, bits / 8)
    metadata: Sequence[bytes]  # each item's metadata: the JSON text of an object, stored as it is


@dataclass(frozen=True)
class ImportSummary:
    job: str
    written_chunks: int
    skipped_chunks: int  # chunks of the job written before (by an earlier run)
    written_items: int


def open_store(client: redis.Redis, index_name: str, bundle: Bundle, shards: int | None = None) -> RedisStore:
    """The index's active generation; a new index gets the bundle's centers (as a service opening it) and
    ``shards`` shards. Each chunk waits for the replicas ``client`` asks for (``index.redis_connection``)."""
    store = RedisStore(client, index_name, bundle.bundle_id, shards=shard_count(client, index_name, shards))
    return store.open_active(bundle.centers, bundle.centers_version)


def _check(chunk: Chunk, code_bytes: int) -> None:
    if chunk.modality not in MODALITIES:
        raise IndexInputError(f"chunk {chunk.key}: unknown modality {chunk.modality!r}")
    n = len(chunk.ids)
    if chunk.codes.dtype != np.uint8 or chunk.codes.shape != (n, code_bytes) or len(chunk.metadata) != n:
        raise IndexInputError(
            f"chunk {chunk.key}: {n} ids need uint8 codes of shape ({n}, {code_bytes}) and {n} metadata, "
            f"got {chunk.codes.dtype} {chunk.codes.shape} and {len(chunk.metadata)}"
        )
    if len(set(chunk.ids)) != n:
        raise IndexInputError(f"chunk {chunk.key}: an id appears twice")


def _ahead(items: Iterable) -> Iterator:
    """``items``, each computed on a worker thread while the caller handles the previous one: reading,
    encoding and packing a chunk overlap with Redis writing the one before."""
    iterator = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix="import-read") as pool:
        pending = pool.submit(next, iterator, None)
        while (item := pending.result()) is not None:
            pending = pool.submit(next, iterator, None)
            yield item


def import_chunks(
    store: RedisStore,
    job: str,
    chunks: Iterable[Chunk],
    *,
    done: set[str] | None = None,
    total: int | None = None,
    progress: bool = True,
) -> ImportSummary:
    """Write each chunk not yet done in ``job`` with one atomic script call that also marks it done.
    ``done``: the job's done chunks when the caller has read them already (to skip producing them);
    ``total``: items to write, for the progress bar. Raises :class:`StoreUnavailableError` when Redis
    fails (the chunks written so far stay written and marked: a re-run resumes). Chunks are produced,
    checked and routed on a worker thread while Redis writes the previous one."""
    done = done_chunks(store, job) if done is None else done
    written = skipped = items = 0
    with tqdm(total=total, unit="item", unit_scale=True, disable=not progress, desc="import") as bar:
        for chunk, prepared in _ahead(_prepared(chunks, done, store)):
            if prepared is None:
                skipped += 1
                continue
            feed_length = max(1, FEED_ITEMS // len(chunk.ids))
            try:
                _write_parts(store, prepared, job, chunk.key, feed_length)
            except GenerationMovedError:  # a re-bucket ended: route with the new centers, write again
                store = store.at(store.active_generation())
                centers = center_index(store)
                for shard, part in prepared:
                    group = dataclasses.replace(part.group, buckets=centers.route(part.group.codes, 1)[:, 0])
                    store.parts[shard].write_chunk(group, job, chunk.key, feed_length)
            written += 1
            items += len(chunk.ids)
            bar.update(len(chunk.ids))
    return ImportSummary(job, written, skipped, items)


def _write_parts(store: RedisStore, parts: list[tuple[int, PreparedChunk]], job: str, key: str, feed: int) -> None:
    """Each shard's part of a chunk, the shards at once (each on its node's connection)."""
    each([lambda s=s, p=p: write_prepared(store.parts[s], p, job, key, feed) for s, p in parts])


def _prepared(
    chunks: Iterable[Chunk], done: set[str], store: RedisStore
) -> Iterator[tuple[Chunk, list[tuple[int, PreparedChunk]] | None]]:
    """Each chunk checked, routed, split by shard and each shard's part prepared for its write (labels
    reserved, commands encoded) in the active generation; None for a chunk done before. Runs on the
    reading thread: its routing searches use
    one OpenMP thread (an OpenMP setting is per thread; a team of threads for a 64-center search only
    contends with Redis and the reader)."""
    faiss.omp_set_num_threads(1)
    centers = center_index(store)
    code_bytes = None
    for chunk in chunks:
        if chunk.key in done:
            yield chunk, None
            continue
        if not len(chunk.ids):
            continue
        code_bytes = code_bytes or chunk.codes.shape[1]
        _check(chunk, code_bytes)
        active = store.active_generation()
        if active is not None and active != store.generation:  # a re-bucket ended: its keys and centers
            store = store.at(active)
            centers = center_index(store)
        buckets = centers.route(chunk.codes, 1)[:, 0]
        group = Group(chunk.modality, chunk.ids, buckets, chunk.codes, chunk.metadata)
        yield chunk, [(shard, prepare(store.parts[shard], part)) for shard, part in split(group, store.shards)]


def center_index(store: RedisStore) -> CenterIndex:
    """The centers of the store's generation, ready to route codes with."""
    stored = store.load_centers()
    if stored is None:
        raise IndexInputError(f"generation {store.generation} of {store.bundle_keys.base} has no centers")
    return CenterIndex(stored[0])


# --- Files: python -m index import ---------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One input file and its sidecar; ``rows`` its number of items."""

    array: Path
    sidecar: Path
    rows: int


def sources(files: Sequence[Path], sidecar: Path | None = None) -> list[Source]:
    """The inputs with their sidecars (``--sidecar`` for a single file, else each file's ``.jsonl``)."""
    if sidecar is not None and len(files) != 1:
        raise IndexInputError("--sidecar names the sidecar of a single FILE; give one FILE, or none")
    found = []
    for path in files:
        side = sidecar or path.with_suffix(".jsonl")
        if not side.is_file():
            raise IndexInputError(f"no sidecar {side} for {path} (one JSON object per row: id and metadata)")
        found.append(Source(path, side, len(_array(path))))
    return found


def _array(path: Path) -> np.ndarray:
    """A file's array: a ``.npy`` (memory-mapped) or the ``features``/``codes`` array of a ``.npz``."""
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r", allow_pickle=False)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            names = [name for name in ("features", "codes") if name in archive.files]
            if len(names) != 1:
                raise IndexInputError(f"{path} must hold one array named 'features' or 'codes', has {archive.files}")
            return archive[names[0]]
    raise IndexInputError(f"{path}: a .npy or .npz file is expected")


def job_name(bundle: Bundle, modality: str, chunk: int, inputs: Sequence[Source]) -> str:
    """Names an import by what it writes: bundle, modality, chunk size and each input's path, size and
    modification time (a changed file is a new job, whose chunks are all written again)."""
    parts: list = [bundle.bundle_id, modality, chunk]
    for source in inputs:
        for path in (source.array, source.sidecar):
            stat = path.stat()
            parts += [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:_JOB_HEX]


def chunk_keys(inputs: Sequence[Source], chunk: int) -> dict[str, int]:
    """Every chunk's key (``<file>:<chunk>``) and number of items."""
    return {
        f"{f}:{number}": min(chunk, source.rows - start)
        for f, source in enumerate(inputs)
        for number, start in enumerate(range(0, source.rows, chunk))
    }


def _codes(bundle: Bundle, modality: str, rows: np.ndarray, where: str) -> np.ndarray:
    """Packed codes of an array's rows: precomputed codes as they are, feature vectors encoded."""
    code_bytes = bundle.bits // 8
    if rows.dtype == np.uint8 and rows.ndim == 2 and rows.shape[1] == code_bytes:
        return np.ascontiguousarray(rows)
    if rows.dtype.kind != "f" or rows.ndim != 2 or rows.shape[1] != bundle.input_dim(modality):
        raise IndexInputError(
            f"{where}: expected packed codes, uint8 (n, {code_bytes}), or {modality} features, floats "
            f"(n, {bundle.input_dim(modality)}); got {rows.dtype} {rows.shape}"
        )
    try:
        return bundle.packed_codes(modality, rows)
    except ValueError as exc:  # NaN or infinity among the features
        raise IndexInputError(f"{where}: {exc}") from exc


class _SidecarRow(msgspec.Struct, forbid_unknown_fields=True):
    """One sidecar line. Its metadata stays the JSON text it is written as: it is stored as text, so it is
    neither parsed into Python objects nor written out again (only checked to be an object)."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX_CHARS)]
    metadata: msgspec.Raw = msgspec.Raw(b"{}")


_SIDECAR = msgspec.json.Decoder(list[_SidecarRow])
_SIDECAR_LINE = msgspec.json.Decoder(_SidecarRow)
_ID = re.compile(ID_PATTERN)  # the API's rule for an id: no whitespace


def _follow_the_rule(ids: list[str], metadata: list[bytes]) -> bool:
    """What the decoder does not check: no id holds whitespace (one match over them all), every
    metadata is an object."""
    return _ID.fullmatch("".join(ids)) is not None and all(meta.startswith(b"{") for meta in metadata)


def _rows(lines: list[bytes], where: str, first_line: int) -> tuple[list[str], list[bytes]]:
    """Ids and metadata (JSON text of an object) of sidecar lines, decoded and checked over the whole
    chunk at once; only when that finds something wrong is each line checked on its own, so that a bad
    line stops the import, named."""
    try:
        rows = _SIDECAR.decode(b"[" + b",".join(lines) + b"]")
    except msgspec.DecodeError:  # also a ValidationError: some row breaks the rule
        return _rows_one_by_one(lines, where, first_line)
    ids, metadata = [row.id for row in rows], [bytes(row.metadata) for row in rows]
    if not _follow_the_rule(ids, metadata):
        return _rows_one_by_one(lines, where, first_line)
    return ids, metadata


def _rows_one_by_one(lines: list[bytes], where: str, first_line: int) -> tuple[list[str], list[bytes]]:
    """:func:`_rows` line by line: the first bad line raises :class:`IndexInputError` naming it."""
    ids, metadata = [], []
    for number, line in enumerate(lines, first_line):
        try:
            row = _SIDECAR_LINE.decode(line)
        except msgspec.ValidationError:
            row = None
        except msgspec.DecodeError as exc:
            raise IndexInputError(f"{where} line {number}: not JSON: {exc}") from exc
        if row is None or not _follow_the_rule([row.id], [bytes(row.metadata)]):
            raise IndexInputError(
                f'{where} line {number}: expected {{"id": 1–{ID_MAX_CHARS} characters without whitespace, '
                f'"metadata": an object}}, got {bytes(line)[:200]!r}'
            )
        ids.append(row.id)
        metadata.append(bytes(row.metadata))
    return ids, metadata


def file_chunks(bundle: Bundle, modality: str, inputs: Sequence[Source], chunk: int, done: set[str]) -> Iterator[Chunk]:
    """The chunks of the inputs not in ``done``, read, parsed and encoded one at a time."""
    for f, source in enumerate(inputs):
        array = _array(source.array)
        with source.sidecar.open("rb") as sidecar:
            for number, start in enumerate(range(0, source.rows, chunk)):
                stop = min(start + chunk, source.rows)
                lines = [sidecar.readline() for _ in range(stop - start)]
                if not lines[-1].strip():
                    raise IndexInputError(f"{source.sidecar} has fewer lines than {source.array} has rows")
                key = f"{f}:{number}"
                if key in done:
                    continue
                where = f"{source.array} rows {start}–{stop - 1}"
                ids, metadata = _rows(lines, str(source.sidecar), start + 1)
                yield Chunk(key, modality, ids, _codes(bundle, modality, array[start:stop], where), metadata)
            if sidecar.read(1).strip():
                raise IndexInputError(f"{source.sidecar} has more lines than {source.array} has rows")


def import_files(
    store: RedisStore,
    bundle: Bundle,
    modality: str,
    files: Sequence[Path],
    *,
    sidecar: Path | None = None,
    chunk: int = DEFAULT_CHUNK,
    progress: bool = True,
) -> ImportSummary:
    """``python -m index import``: the files' chunks not yet written by this job, written."""
    if modality not in MODALITIES:
        raise IndexInputError(f"unknown modality {modality!r}; expected one of {list(MODALITIES)}")
    inputs = sources(files, sidecar)
    job = job_name(bundle, modality, chunk, inputs)
    done = done_chunks(store, job)
    keys = chunk_keys(inputs, chunk)
    total = sum(n for key, n in keys.items() if key not in done)
    summary = import_chunks(
        store, job, file_chunks(bundle, modality, inputs, chunk, done), done=done, total=total, progress=progress
    )
    return dataclasses.replace(summary, skipped_chunks=len(done & keys.keys()))
