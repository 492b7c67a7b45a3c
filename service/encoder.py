"""Turn queries and items (raw text, raw image bytes, or feature vectors) into packed codes.

Encoding runs the bundle's ONNX graphs (featurizer, then hash function); every input problem raises
:class:`EncodeError`, which the API reports as a 422 naming the problem.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from index.bundle import Bundle
from index.bundle.featurizers import ImageDecodeError
from index.codes import pack_signs, to_signs

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


class Encoder:
    def __init__(self, bundle: Bundle, max_text_chars: int, max_image_bytes: int, max_image_pixels: int) -> None:
        self.bundle = bundle
        self.max_text_chars = max_text_chars
        self.max_image_bytes = max_image_bytes
        self.max_image_pixels = max_image_pixels

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

    def text_features(self, text: str, require_known_words: bool) -> np.ndarray:
        if not self.accepts_raw_text:
            raise EncodeError("this model takes text only as feature vectors (its bundle has no text featurizer)")
        if not text.strip():
            raise EncodeError("text is empty")
        if len(text) > self.max_text_chars:
            raise EncodeError(f"text is longer than {self.max_text_chars} characters")
        x = self.bundle.text_features([text])
        if require_known_words and not x.any():
            raise EncodeError("no word of the text is in the model's vocabulary")
        return x

    def image_features(self, data: bytes) -> np.ndarray:
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
        return self.bundle.image_features(pixels[None])

    @staticmethod
    def decode_base64(data: str) -> bytes:
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise EncodeError(f"image_base64 is not valid base64: {exc}") from exc

    def packed(self, modality: str, features: np.ndarray) -> np.ndarray:
        return self.bundle.packed_codes(modality, features)

    def code_query(
        self,
        source: str,
        *,
        features: Sequence[float] | None = None,
        text: str | None = None,
        image: bytes | None = None,
    ) -> CodedQuery:
        """One query, given as ``features``, raw ``text`` or ``image`` bytes, to its packed code and, when the
        bundle declares a re-ranker (which scores candidates with it), its real code; one graph run each."""
        if features is not None:
            x, kind = self.features(source, features), "features"
        elif text is not None:
            x, kind = self.text_features(text, require_known_words=True), "raw"
        else:
            x, kind = self.image_features(image or b""), "raw"
        if self.bundle.manifest.reranker is None:
            return CodedQuery(self.packed(source, x), None, kind)
        real = self.bundle.real_codes(source, x)
        return CodedQuery(pack_signs(to_signs(real)), real, kind)
