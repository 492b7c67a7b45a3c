"""The model in service (``GET /v1/models``: its bundle's manifest) and changing it without a restart or
losing the corpus (``service.model_rollout``): ``POST /v1/models:prepare`` builds another bundle's index
beside the live one, ``:swap`` serves it once complete and no worse on the held-out set, ``:rollback``
goes back, ``:drop`` deletes the index kept beside the live one; ``GET /v1/models:rollout`` shows it.

A bundle is loaded, verified (sha256 of every file, ONNX shapes) and its index opened while the current
model keeps serving; then one reference switches (``Runtime.serve``). Requests in flight finish on the
model they started with. Items are namespaced by bundle id.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from index.bundle import BundleError, Manifest
from index.bundle.manifest import MODALITIES
from index.errors import IndexInputError
from service import model_rollout, problems
from service.model_rollout import RolloutRefused
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


class BundleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"bundle": "default"}]})
    bundle: str = Field(
        min_length=1,
        max_length=128,
        # a directory name: letters, digits, '_', '-' and single dots, never '..'
        pattern=r"^[A-Za-z0-9_](\.?[A-Za-z0-9_-])*\.?$",
        description="name of a bundle directory inside the service's models directory (no path)",
    )


class SwapRequest(BundleRequest):
    force: StrictBool = Field(
        default=False,
        description="swap without a prepared index (the new bundle starts with what its index holds) and "
        "without the quality gate",
    )


class SwapResponse(BaseModel):
    bundle_id: str = Field(description="the bundle now serving")
    previous_bundle_id: str = Field(description="kept beside it for rollback (POST /v1/models:rollback)")
    method: str
    code_bits: int
    items: dict[str, int] = Field(description="items in the new bundle's index, per modality")
    load_ms: float = Field(description="time to check, load, verify and open the new bundle's index")
    gate: dict | None = Field(description="the quality gate's table (live vs new, held-out metrics), if it ran")
    gate_note: str = Field(description="passed, forced, rollback, or why no gate ran")


class RolloutOut(BaseModel):
    live: str = Field(description="bundle id in service")
    live_path: str
    other: str = Field(description="bundle id of the index kept beside it")
    other_path: str
    purpose: str = Field(description="prepare (a new bundle), rollback (the previous one), upgrade (a new default)")
    state: str = Field(description="preparing, ready or failed")
    report: dict = Field(description="the re-encoding pass: total, done, written, present, not_reencodable")
    error: str


ROLLOUT_ERRORS = {
    403: {"description": "missing or wrong X-API-Key"},
    404: {"description": "no bundle directory of this name in the models directory"},
    409: {"description": "the rollout's state does not allow it (problem details say why, with the gate's table)"},
    422: {"description": "bad name, or the bundle refused to load: the old model serves"},
    503: {"description": "Redis unavailable: the old model serves"},
}


def _refused(exc: RolloutRefused) -> Response:
    return problems.problem(exc.status, exc.detail, **exc.extra)


def _bundle_failed(name: str, exc: Exception) -> HTTPException:
    return HTTPException(422, f"bundle {name!r} not loaded: {exc}")


@router.get("/v1/models:rollout", response_model=RolloutOut, responses={404: {"description": "no rollout"}})
def rollout_state(rt: Annotated[Runtime, Depends(runtime)]) -> RolloutOut:
    """The rollout in progress, or the bundle kept for rollback, with the re-encoding pass's progress."""
    rollout = rt.rollouts.read()
    if rollout is None:
        raise HTTPException(404, "no rollout: only the bundle in service has an index")
    return RolloutOut(**rollout.as_json())


@router.post(
    "/v1/models:prepare",
    status_code=202,
    response_model=RolloutOut,
    responses=ROLLOUT_ERRORS,
    dependencies=[Depends(require_writer)],
)
def prepare(request: BundleRequest, rt: Annotated[Runtime, Depends(runtime)]) -> RolloutOut | Response:
    """Build bundle ``models_dir/<bundle>``'s index beside the live one, in the background: every item
    re-encoded from what was kept of it, and every write from now on to both. Progress in
    ``GET /v1/models:rollout``, ``/readyz`` and ``/metrics``. Sent again, it resumes an interrupted pass."""
    try:
        return RolloutOut(**model_rollout.prepare(rt, request.bundle).as_json())
    except RolloutRefused as exc:
        return _refused(exc)
    except (BundleError, IndexInputError, ValueError) as exc:
        raise _bundle_failed(request.bundle, exc) from exc


def _swapped(outcome: model_rollout.Swapped, started: float) -> SwapResponse:
    model = outcome.model
    return SwapResponse(
        bundle_id=model.bundle.bundle_id,
        previous_bundle_id=outcome.previous.bundle.bundle_id,
        method=model.bundle.method,
        code_bits=model.bundle.bits,
        items=model.index.stats()["items"],
        load_ms=(time.perf_counter() - started) * 1e3,
        gate=None if outcome.gate is None else outcome.gate.as_json(),
        gate_note=outcome.gate_note,
    )


@router.post(
    "/v1/models:swap", response_model=SwapResponse, responses=ROLLOUT_ERRORS, dependencies=[Depends(require_writer)]
)
def swap(request: SwapRequest, rt: Annotated[Runtime, Depends(runtime)]) -> SwapResponse | Response:
    """Serve bundle ``models_dir/<bundle>``, once its prepared index is complete and the quality gate finds
    it no worse than the live bundle on the held-out set (else a 409 with the table; ``force`` skips both).
    The previous bundle's index is kept, and written to, for rollback. On any failure the model in
    service is untouched and keeps answering."""
    started = time.perf_counter()
    try:
        return _swapped(model_rollout.swap(rt, request.bundle, request.force), started)
    except RolloutRefused as exc:
        return _refused(exc)
    except (BundleError, IndexInputError, ValueError) as exc:  # BundleError is a ValueError
        raise _bundle_failed(request.bundle, exc) from exc


@router.post(
    "/v1/models:rollback", response_model=SwapResponse, responses=ROLLOUT_ERRORS, dependencies=[Depends(require_writer)]
)
def rollback(rt: Annotated[Runtime, Depends(runtime)]) -> SwapResponse | Response:
    """Serve the bundle the last swap replaced again (its index was kept and written to), without the gate."""
    started = time.perf_counter()
    try:
        return _swapped(model_rollout.rollback(rt), started)
    except RolloutRefused as exc:
        return _refused(exc)
    except (BundleError, IndexInputError, ValueError) as exc:
        raise _bundle_failed("previous", exc) from exc


@router.post(
    "/v1/models:drop", response_model=RolloutOut, responses=ROLLOUT_ERRORS, dependencies=[Depends(require_writer)]
)
def drop(rt: Annotated[Runtime, Depends(runtime)]) -> RolloutOut | Response:
    """Delete the index kept beside the live one (a prepared bundle, or the previous one) and end the rollout."""
    try:
        return RolloutOut(**model_rollout.drop(rt).as_json())
    except RolloutRefused as exc:
        return _refused(exc)
