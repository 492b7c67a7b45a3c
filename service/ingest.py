"""Batch ingestion: validate every item, encode the good ones per modality at once, store them together.

An item that fails validation or encoding is rejected with its reason and never reaches the index;
the accepted items are written in one atomic index batch (all acknowledged together, or none), after
their sources (``index.item_sources``: what re-encodes them under a new bundle) are kept.

The work runs over the whole batch wherever it can, which is what makes a batch of 1,000 feature items
cost a few tens of milliseconds (docs/ingestion.md): one pydantic call validates every item (each item
is validated again on its own only when some failed, for its message), the feature vectors of a
modality are converted and checked as one array, one ONNX call per modality encodes them, and one
script call stores the batch. Raw texts and images are checked (images decoded) one by one, then all
queued at once on the encoder's micro-batchers, which featurize them in shared encoder calls (with the
queries of the moment), texts grouped by token count.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
from pydantic import TypeAdapter, ValidationError

from index.engine import MODALITIES, Item
from index.errors import PartialWriteError
from index.item_sources import Source, TextSource, features_source
from service import thumbnails
from service.encoder import EncodeError, Encoder
from service.problems import summary
from service.runtime import Model, Runtime
from service.schemas import BatchResponse, BinaryItemIn, ItemIn, ItemResult

_NOT_STORED = "not stored: the shard of the index holding it is unavailable; send it again (ids are keys)"
_BATCHES = {model: TypeAdapter(list[model]) for model in (ItemIn, BinaryItemIn)}  # one validation per batch


@dataclass(frozen=True)
class Prepared:
    id: str
    modality: str
    features: np.ndarray  # (d,) float32
    metadata: dict
    source: Source  # what re-encodes it under another bundle (index.item_sources)


def _source(model: Model, item: ItemIn, features: np.ndarray) -> Source:
    """A raw text is kept as it is; an image (raw or as features) as its features in float16."""
    if item.text is not None:
        return TextSource(item.text)
    return features_source(model.bundle.feature_space(item.modality), features)


def _validated(raw_items: list[dict], model: type[ItemIn]) -> list[ItemIn | str]:
    """Each item validated, or its problem: the whole batch in one call; when some item fails, each item
    on its own, so that every bad one gets its own message and the others still go through."""
    try:
        return _BATCHES[model].validate_python(raw_items)
    except ValidationError:
        pass
    validated: list[ItemIn | str] = []
    for raw in raw_items:
        try:
            validated.append(model.model_validate(raw))
        except ValidationError as exc:
            validated.append(summary(exc.errors()))
    return validated


def _raw_features(encoder: Encoder, item: ItemIn) -> Future[np.ndarray]:
    """The features of an item given as raw text or a raw image, once its micro-batch ran."""
    if item.text is not None:
        if item.modality != "text":
            raise EncodeError("'text' is the input of a text item")
        return encoder.text_features(item.text, require_known_words=False)
    if item.modality != "image":
        raise EncodeError("'image_base64' is the input of an image item")
    return encoder.image_features(encoder.decode_base64(item.image_base64))


def _features(encoder: Encoder, items: list[ItemIn | str]) -> list[np.ndarray | str]:
    """Each validated item's feature vector, or its problem (an item that failed validation keeps its
    message). Vectors given as ``features`` are converted and checked per modality in one array."""
    out: list[np.ndarray | str] = [item if isinstance(item, str) else "" for item in items]
    given: dict[str, list[int]] = {modality: [] for modality in MODALITIES}
    pending: dict[int, Future[np.ndarray]] = {}  # all queued before any is awaited: they share encoder calls
    for position, item in enumerate(items):
        if isinstance(item, str):
            continue
        inputs = [name for name in ("text", "image_base64", "features") if getattr(item, name) is not None]
        if len(inputs) != 1:
            out[position] = "give exactly one of 'text', 'image_base64' or 'features'"
        elif item.features is not None:
            given[item.modality].append(position)
        else:
            try:
                pending[position] = _raw_features(encoder, item)
            except EncodeError as exc:
                out[position] = str(exc)
    for position, future in pending.items():
        out[position] = future.result()
    for modality, positions in given.items():
        if positions:
            x, errors = encoder.feature_rows(modality, [items[p].features for p in positions])
            for row, position in enumerate(positions):
                out[position] = errors.get(row, x[row])
    return out


def store(runtime: Runtime, model: Model, items: list[Prepared]) -> set[str]:
    """Keep the items' sources, encode them with ``model`` (one call per modality) and write them in one
    atomic batch (per shard of the index: when only some shards take theirs, the ids of the others are
    returned, not stored); then to the index a rollout keeps beside the live one, if any
    (``service.other_index``)."""
    groups = {modality: [p for p in items if p.modality == modality] for modality in MODALITIES}
    for modality, group in groups.items():
        runtime.sources.put(modality, {p.id: p.source for p in group})  # before the item: it never lacks one
    batch, features = [], {}
    for modality, group in groups.items():
        if group:
            features[modality] = np.stack([p.features for p in group])
            codes = model.encoder.packed(modality, features[modality])
            batch += [Item(p.id, modality, code, p.metadata) for p, code in zip(group, codes, strict=True)]
    try:
        model.index.add(batch)
        missing: set[str] = set()
    except PartialWriteError as exc:
        missing = {item.id for item in batch} - set(exc.stored)
        groups = {modality: [p for p in group if p.id not in missing] for modality, group in groups.items()}
        features = {m: np.stack([p.features for p in g]) for m, g in groups.items() if g}
    other = runtime.other
    if other is not None and other.bundle_id != model.bundle.bundle_id:  # a swap meanwhile made it the live one
        for modality, x in features.items():
            group = groups[modality]
            space = model.bundle.feature_space(modality)
            ids, sources, metadata = [p.id for p in group], [p.source for p in group], [p.metadata for p in group]
            other.write(modality, ids, (space, x), sources, metadata)
    for modality in MODALITIES:
        runtime.metrics.ingested.labels(modality).inc(len(groups[modality]))
    return missing


def ingest_batch(runtime: Runtime, raw_items: list[dict], binary: bool = False) -> BatchResponse:
    """Validate and featurize the items, reject ids stored under the other modality, and store the rest
    together, all with the model pinned for this request. ``binary``: the items came in a msgpack body,
    whose feature vectors may be float32 bytes (``BinaryItemIn``)."""
    model = runtime.model
    items = _validated(raw_items, BinaryItemIn if binary else ItemIn)
    features = _features(model.encoder, items)
    results: list[ItemResult | None] = []
    accepted: dict[str, tuple[int, Prepared]] = {}
    for position, (raw, item, vector) in enumerate(zip(raw_items, items, features, strict=True)):
        if isinstance(item, str):
            item_id = raw.get("id") if isinstance(raw.get("id"), str) else None
            results.append(ItemResult(id=item_id, status="rejected", error=item))
        elif item.id in accepted:
            results.append(ItemResult(id=item.id, status="rejected", error="the same id appears earlier in this batch"))
        elif isinstance(vector, str):
            results.append(ItemResult(id=item.id, status="rejected", error=vector))
        else:
            prepared = Prepared(item.id, item.modality, vector, item.metadata, _source(model, item, vector))
            accepted[item.id] = (position, prepared)
            results.append(None)
    stored_modalities = model.index.stored_modalities(list(accepted))
    for item_id, current in stored_modalities.items():
        position, prepared = accepted[item_id]
        if current is not None and current != prepared.modality:
            results[position] = ItemResult(
                id=item_id, status="rejected", error=f"id is already stored as a {current} item"
            )
            del accepted[item_id]
    missing = store(runtime, model, [prepared for _, prepared in accepted.values()])
    for item_id in missing:  # a shard of the index failed: not stored, sending it again is safe
        position, _ = accepted.pop(item_id)
        results[position] = ItemResult(id=item_id, status="rejected", error=_NOT_STORED)
    images = {i: raw_items[at].get("image_base64") for i, (at, p) in accepted.items() if p.modality == "image"}
    thumbnails.keep(runtime, images)  # after the items: a thumbnail never shows for an item not stored
    final = [r or {"id": raw_items[i]["id"], "status": "stored"} for i, r in enumerate(results)]
    # one validation of the whole answer (pydantic-core, in Rust), not one model per item
    return BatchResponse.model_validate(
        {"stored": len(accepted), "rejected": len(final) - len(accepted), "results": final}
    )
