"""The model in service (``GET /v1/models``: its bundle's manifest) and hot swap to another bundle of
the models directory without a restart (``POST /v1/models:swap``).

The new bundle is loaded, verified (sha256 of every file, ONNX shapes) and its index opened while the
current model keeps serving; then one reference switches (``Runtime.swap``). Requests in flight
finish on the model they started with. Items are namespaced by bundle id: a bundle never served
before starts with an empty index; swapping back to a previous bundle finds its items again.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from index.bundle import BundleError, Manifest
from index.bundle.manifest import MODALITIES
from index.errors import IndexInputError
from service.routes.deps import require_writer, runtime
from service.runtime import Runtime

router = APIRouter(tags=["system"])


class InputInfo(BaseModel):
    feature_dim: int = Field(description="length of a feature vector query of this modality")
    featurizer: str = Field(description="kind of the bundle's featurizer for raw inputs")
    raw_input: bool = Field(description="whether raw text or images are accepted, not only feature vectors")


class ModelInfo(Manifest):
    """The manifest of the bundle in service, and what serving adds: the inputs it takes, its index's
    statistics and the worker process that answered (each worker holds the index in memory)."""

    inputs: dict[str, InputInfo]
    index: dict[str, Any] = Field(description="the index's code length, buckets, generation and items")
    worker: int = Field(description="process id of the worker that answered")


@router.get("/v1/models", response_model=ModelInfo)
def model_info(rt: Annotated[Runtime, Depends(runtime)]) -> ModelInfo:
    """The bundle in service (method, code length, inputs, training metrics), the index's buckets, and
    the worker process that answered."""
    manifest = rt.bundle.manifest
    inputs = {}
    for modality in MODALITIES:
        spec = manifest.modalities.of(modality)
        kind = spec.featurizer.kind
        inputs[modality] = InputInfo(feature_dim=spec.input.dim, featurizer=kind, raw_input=kind != "precomputed")
    return ModelInfo(**dict(manifest), inputs=inputs, index=rt.index.stats(), worker=os.getpid())


class SwapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"bundle": "default"}]})
    bundle: str = Field(
        min_length=1,
        max_length=128,
        # a directory name: letters, digits, '_', '-' and single dots, never '..'
        pattern=r"^[A-Za-z0-9_](\.?[A-Za-z0-9_-])*\.?$",
        description="name of a bundle directory inside the service's models directory (no path)",
    )


class SwapResponse(BaseModel):
    bundle_id: str = Field(description="the bundle now serving")
    previous_bundle_id: str
    method: str
    code_bits: int
    items: dict[str, int] = Field(description="items in the new bundle's index, per modality")
    load_ms: float = Field(description="time to load, verify and open the new bundle's index")


@router.post(
    "/v1/models:swap",
    response_model=SwapResponse,
    responses={
        403: {"description": "missing or wrong X-API-Key"},
        404: {"description": "no bundle directory of this name in the models directory"},
        422: {"description": "bad name, or the bundle refused to load: the old model serves"},
        503: {"description": "Redis unavailable: the old model serves"},
    },
    dependencies=[Depends(require_writer)],
)
def swap(request: SwapRequest, rt: Annotated[Runtime, Depends(runtime)]) -> SwapResponse:
    """Load the bundle ``models_dir/<bundle>`` and serve it. On any failure the model in service is
    untouched and keeps answering."""
    started = time.perf_counter()
    if not (rt.settings.models_dir / request.bundle).is_dir():
        raise HTTPException(404, f"no bundle {request.bundle!r} in the models directory")
    try:
        previous, model = rt.swap(request.bundle)
    except (BundleError, IndexInputError, ValueError) as exc:  # BundleError is a ValueError
        raise HTTPException(422, f"bundle {request.bundle!r} not loaded: {exc}") from exc
    stats = model.index.stats()
    return SwapResponse(
        bundle_id=model.bundle.bundle_id,
        previous_bundle_id=previous.bundle.bundle_id,
        method=model.bundle.method,
        code_bits=model.bundle.bits,
        items=stats["items"],
        load_ms=(time.perf_counter() - started) * 1e3,
    )
