"""Turn queries and items (raw text, raw image bytes, or feature vectors) into packed codes.

Encoding runs the bundle's ONNX graphs (featurizer, then hash function); every input problem raises
:class:`EncodeError`, which the API reports as a 422 naming the problem. Raw texts and images for a
pretrained featurizer are featurized by a :class:`~service.micro_batch.MicroBatcher` per modality: inputs
checked here, in the caller's thread, then queued, so concurrent queries and a batch's raw items share
encoder calls; the caller gets a future of its own feature vector. Queries' feature vectors, raw or
given, are hashed together too: those of one turn of the event loop in one run
(:class:`~service.tick_batch.TickBatcher`), since one row of a hash function streams all its weights (4 MB
for the default bundle's text function, 13 MB for its image one) and costs about as much as 16 rows
(docs/batching.md); a row's values do not depend on its batch (tested bit for bit).
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from index.bundle import Bundle
from index.bundle.featurizers import ImageDecodeError
from index.bundle.pretrained import ImageEncoder, TextEncoder
from index.codes import pack_signs, to_signs
from service.micro_batch import MicroBatcher, Observer
from service.tick_batch import TickBatcher

FLOAT32_BYTES = 4  # a binary feature vector's bytes per number


@dataclass(frozen=True)
class CodedQuery:
    """A query as the index takes it: its packed code, its real code for a re-ranker (None without one),
    and what it came from (``raw`` input or ``features``, as the metrics label it)."""

    code: np.ndarray
    real: np.ndarray | None
    kind: str


class EncodeError(ValueError):
    """The input cannot be encoded by this bundle (bad, empty, too large, or an unsupported kind)."""


@dataclass(frozen=True)
class Batching:
    """How raw inputs share encoder calls: ``window`` seconds, at most ``max_size`` a call (queries' hash
    function runs: the same size, one turn of the event loop); ``observe(stage, modality)`` gives the
    metrics' observer of one stage's (``featurize``, ``hash``) batches of one modality."""

    window: float
    max_size: int
    observe: Callable[[str, str], Observer] | None = None


def _done(result: np.ndarray) -> Future[np.ndarray]:
    future: Future[np.ndarray] = Future()
    future.set_result(result)
    return future


class Encoder:
    def __init__(
        self,
        bundle: Bundle,
        max_text_chars: int,
        max_image_bytes: int,
        max_image_pixels: int,
        batching: Batching | None = None,
    ) -> None:
        self.bundle = bundle
        self.max_text_chars = max_text_chars
        self.max_image_bytes = max_image_bytes
        self.max_image_pixels = max_image_pixels
        self._batchers: dict[str, MicroBatcher] = {}
        self._hashers: dict[str, TickBatcher] = {}
        if batching is None:
            return
        runs = {
            "text": (TextEncoder, bundle.text_featurizer, bundle.text_features),
            "image": (ImageEncoder, bundle.image_featurizer, lambda pixels: bundle.image_features(np.stack(pixels))),
        }

        def observer(stage: str, modality: str) -> Observer | None:
            return batching.observe(stage, modality) if batching.observe else None

        for modality, (pretrained, featurizer, run) in runs.items():
            if isinstance(featurizer, pretrained):  # a graph run's fixed cost is worth sharing
                self._batchers[modality] = MicroBatcher(
                    run, batching.window, batching.max_size, modality, observer("featurize", modality)
                )
            self._hashers[modality] = TickBatcher(
                functools.partial(self.code_rows, modality), batching.max_size, observer("hash", modality)
            )

    def close(self) -> None:
        """Stop the micro-batchers' threads (a request still holding this encoder encodes on its own)."""
        for batcher in self._batchers.values():
            batcher.close()

    @property
    def accepts_raw_text(self) -> bool:
        return self.bundle.text_featurizer is not None

    @property
    def accepts_raw_images(self) -> bool:
        return self.bundle.image_featurizer is not None

    def features(self, modality: str, vector: Sequence[float] | bytes) -> np.ndarray:
        """One feature vector (numbers, or float32 bytes) → (1, d) float32; EncodeError naming the problem."""
        x, errors = self.feature_rows(modality, [vector])
        if errors:
            raise EncodeError(errors[0])
        return x

    def feature_rows(self, modality: str, rows: Sequence[Sequence[float] | bytes]) -> tuple[np.ndarray, dict[int, str]]:
        """Feature vectors of one modality, each a list of numbers or float32 little-endian bytes, as one
        float32 array (n, d), converted and checked for the whole lot at once (a batch's thousand vectors
        cost one numpy conversion, not a thousand). A row that is no usable vector is zero in the array,
        and its problem is in the errors, by row."""
        expected = self.bundle.input_dim(modality)
        errors: dict[int, str] = {}
        for row, vector in enumerate(rows):
            if isinstance(vector, bytes) and len(vector) != FLOAT32_BYTES * expected:
                errors[row] = (
                    f"{modality} features must be {FLOAT32_BYTES * expected} bytes ({expected} float32, "
                    f"little-endian), got {len(vector)}"
                )
            elif not isinstance(vector, bytes) and len(vector) != expected:
                errors[row] = f"{modality} features must be a list of {expected} numbers, got {len(vector)}"
        x = np.zeros((len(rows), expected), dtype=np.float32)
        binary = [row for row, vector in enumerate(rows) if row not in errors and isinstance(vector, bytes)]
        numbers = [row for row, vector in enumerate(rows) if row not in errors and not isinstance(vector, bytes)]
        if binary:
            x[binary] = np.frombuffer(b"".join(rows[row] for row in binary), dtype="<f4").reshape(len(binary), -1)
        if numbers:
            # float32 is the hash function's input type; checked after the cast, which turns numbers
            # beyond float32's range into infinity
            with np.errstate(over="ignore"):
                x[numbers] = np.array([rows[row] for row in numbers], dtype=np.float64)
        finite = np.isfinite(x).all(axis=1)
        for row in np.flatnonzero(~finite).tolist():
            errors[row] = f"{modality} features contain NaN, infinity or numbers beyond float32's range"
            x[row] = 0
        return x, errors

    def text_features(self, text: str, require_known_words: bool) -> Future[np.ndarray]:
        """The (d,) features of a raw text: checked now, featurized with its micro-batch (at once for a
        bag of words, which has no graph run to share)."""
        if not self.accepts_raw_text:
            raise EncodeError("this model takes text only as feature vectors (its bundle has no text featurizer)")
        if not text.strip():
            raise EncodeError("text is empty")
        if len(text) > self.max_text_chars:
            raise EncodeError(f"text is longer than {self.max_text_chars} characters")
        if "text" in self._batchers:
            return self._batchers["text"].submit(text)
        x = self.bundle.text_features([text])[0]
        if require_known_words and not x.any():
            raise EncodeError("no word of the text is in the model's vocabulary")
        return _done(x)

    def image_features(self, data: bytes) -> Future[np.ndarray]:
        """The (d,) features of an encoded image: decoded now, in the caller's thread (tens of ms), then
        featurized with its micro-batch."""
        if not self.accepts_raw_images:
            raise EncodeError("this model takes images only as feature vectors (its bundle has no image featurizer)")
        if not data:
            raise EncodeError("image is empty")
        if len(data) > self.max_image_bytes:
            raise EncodeError(f"image is larger than {self.max_image_bytes} bytes")
        try:
            pixels = self.bundle.decode_image(data, max_pixels=self.max_image_pixels)
        except ImageDecodeError as exc:
            raise EncodeError(f"not a usable image: {exc}") from exc
        if "image" in self._batchers:
            return self._batchers["image"].submit(pixels)
        return _done(self.bundle.image_features(pixels[None])[0])

    @staticmethod
    def decode_base64(data: str) -> bytes:
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise EncodeError(f"image_base64 is not valid base64: {exc}") from exc

    def packed(self, modality: str, features: np.ndarray) -> np.ndarray:
        return self.bundle.packed_codes(modality, features)

    def query_features(
        self,
        source: str,
        *,
        features: Sequence[float] | None = None,
        text: str | None = None,
        image: bytes | None = None,
    ) -> tuple[Future[np.ndarray], str]:
        """One query's (d,) features, given as ``features``, raw ``text`` or ``image`` bytes (a future: raw
        inputs wait for their micro-batch), and what it came from (``raw`` or ``features``)."""
        if features is not None:
            return _done(self.features(source, features)[0]), "features"
        if text is not None:
            return self.text_features(text, require_known_words=True), "raw"
        return self.image_features(image or b""), "raw"

    async def code(self, source: str, x: np.ndarray, kind: str) -> CodedQuery:
        """A query's code from its (d,) features: hashed with the other queries of this turn of the event
        loop (at once without batching)."""
        if source in self._hashers:
            return await self._hashers[source].submit((x, kind))
        return self.code_rows(source, [(x, kind)])[0]

    def code_rows(self, source: str, queries: Sequence[tuple[np.ndarray, str]]) -> list[CodedQuery]:
        """Queries' (features, kind) to their packed codes and, when the bundle declares a re-ranker (which
        scores candidates with it), their real codes; one graph run."""
        x = np.stack([features.reshape(-1) for features, _ in queries])
        if self.bundle.manifest.reranker is None:
            codes, real = self.packed(source, x), None
        else:
            real = self.bundle.real_codes(source, x)
            codes = pack_signs(to_signs(real))
        return [
            CodedQuery(codes[i : i + 1], None if real is None else real[i : i + 1], kind)
            for i, (_, kind) in enumerate(queries)
        ]
