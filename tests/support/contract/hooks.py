"""schemathesis hooks of the contract run (tests/service/test_contract.py): values for the formats the service's
OpenAPI document declares for what JSON Schema cannot state (service/contract.py)."""

from __future__ import annotations

import base64
import io

import msgpack
import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image

from index.bundle import read_manifest
from service.contract import IMAGE_BASE64_FORMAT, IMAGE_FILE_FORMAT, VOCABULARY_TEXT_FORMAT
from service.routes.fast_json import MSGPACK
from service.settings import DEFAULT_BUNDLE


def _png(seed: int, side: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


images = st.builds(_png, st.integers(0, 2**32 - 1), st.integers(1, 48))
schemathesis.openapi.format(IMAGE_FILE_FORMAT, images)
schemathesis.openapi.format(IMAGE_BASE64_FORMAT, images.map(lambda png: base64.b64encode(png).decode()))
# Only a bag-of-words bundle declares this format; the pretrained text featurizer understands any text.
vocabulary = getattr(read_manifest(DEFAULT_BUNDLE).modalities.text.featurizer, "vocabulary", None)
if vocabulary:
    schemathesis.openapi.format(VOCABULARY_TEXT_FORMAT, st.lists(st.sampled_from(vocabulary), min_size=1).map(" ".join))

MSGPACK_INTS = (-(2**63), 2**64 - 1)  # the integers msgpack can hold


def _msgpack_value(value):
    """A generated JSON value as msgpack can carry it: integers beyond 64 bits as floats, lone surrogates
    (valid in JSON text, not in UTF-8) replaced; the body stays what the schema generated it as."""
    if isinstance(value, dict):
        return {_msgpack_value(k): _msgpack_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_msgpack_value(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode()
    if isinstance(value, int) and not isinstance(value, bool) and not MSGPACK_INTS[0] <= value <= MSGPACK_INTS[1]:
        return float(value)
    return value


@schemathesis.serializer(MSGPACK)
def _msgpack(ctx, value):
    """The batch endpoint's msgpack body, which takes what its JSON body takes (service/routes/items.py)."""
    return None if value is None else msgpack.packb(_msgpack_value(value))
