"""Batch ingestion: validate and featurize each item on its own, then store the good ones at once.

An item that fails validation or encoding is rejected with its reason and never reaches the index;
the accepted items are written in one atomic index batch (all acknowledged together, or none).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError

from index.engine import MODALITIES, Item
from service import thumbnails
from service.encoder import EncodeError, Encoder
from service.runtime import Model, Runtime
from service.schemas import BatchResponse, ItemIn, ItemResult


@dataclass(frozen=True)
class Prepared:
    id: str
    modality: str
    features: np.ndarray  # (d,) float32
    metadata: dict


def _features(encoder: Encoder, item: ItemIn) -> np.ndarray:
    given = [name for name in ("text", "image_base64", "features") if getattr(item, name) is not None]
    if len(given) != 1:
        raise EncodeError("give exactly one of 'text', 'image_base64' or 'features'")
    if item.features is not None:
        return encoder.features(item.modality, item.features)[0]
    if item.text is not None:
        if item.modality != "text":
            raise EncodeError("'text' is the input of a text item")
        return encoder.text_features(item.text, require_known_words=False)[0]
    if item.modality != "image":
        raise EncodeError("'image_base64' is the input of an image item")
    return encoder.image_features(encoder.decode_base64(item.image_base64))[0]


def _validation_message(exc: ValidationError) -> str:
    """Pydantic's errors, one line per field and message: 384 bad list entries read as one line with a
    count and the first position, not as 384 lines."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for error in exc.errors():
        where = ".".join(map(str, error["loc"])) or "item"
        field = ".".join(str(part) for part in error["loc"] if not isinstance(part, int)) or "item"
        grouped.setdefault((field, error["msg"]), []).append(where)
    return "; ".join(
        f"{places[0]}: {message}"
        if len(places) == 1
        else f"{field}: {message} ({len(places)} entries, first {places[0]})"
        for (field, message), places in grouped.items()
    )


def store(runtime: Runtime, model: Model, items: list[Prepared]) -> None:
    """Encode prepared items with ``model`` and write them in one atomic batch to its index."""
    batch = []
    for modality in MODALITIES:
        group = [p for p in items if p.modality == modality]
        if group:
            codes = model.encoder.packed(modality, np.stack([p.features for p in group]))
            batch += [Item(p.id, modality, code, p.metadata) for p, code in zip(group, codes, strict=True)]
    model.index.add(batch)
    for modality in MODALITIES:
        runtime.metrics.ingested.labels(modality).inc(sum(p.modality == modality for p in items))


def ingest_batch(runtime: Runtime, raw_items: list[dict]) -> BatchResponse:
    """Validate and featurize each item on its own, reject ids stored under the other modality, and store
    the rest together, all with the model pinned for this request."""
    model = runtime.model
    results: list[ItemResult | None] = []
    accepted: dict[str, tuple[int, Prepared]] = {}
    for position, raw in enumerate(raw_items):
        item_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
        try:
            item = ItemIn.model_validate(raw)
            if item.id in accepted:
                raise EncodeError("the same id appears earlier in this batch")
            prepared = Prepared(item.id, item.modality, _features(model.encoder, item), item.metadata)
        except ValidationError as exc:
            results.append(ItemResult(id=item_id, status="rejected", error=_validation_message(exc)))
            continue
        except EncodeError as exc:
            results.append(ItemResult(id=item_id, status="rejected", error=str(exc)))
            continue
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
    store(runtime, model, [prepared for _, prepared in accepted.values()])
    images = {i: raw_items[at].get("image_base64") for i, (at, p) in accepted.items() if p.modality == "image"}
    thumbnails.keep(runtime, images)  # after the items: a thumbnail never shows for an item not stored
    final = [r or ItemResult(id=raw_items[i]["id"], status="stored") for i, r in enumerate(results)]
    return BatchResponse(stored=len(accepted), rejected=len(final) - len(accepted), results=final)
