"""Turn queries and items (raw text, raw image bytes, or feature vectors) into packed codes.

Encoding runs the bundle's ONNX graphs (featurizer, then hash function); every input problem raises
:class:`EncodeError`, which the API reports as a 422 naming the problem.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

from index.bundle import Bundle
from index.bundle.featurizers import ImageDecodeError


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

    def features(self, modality: str, vector: list[float] | np.ndarray) -> np.ndarray:
        x = np.asarray(vector, dtype=np.float64)
        expected = self.bundle.input_dim(modality)
        if x.ndim != 1 or x.shape[0] != expected:
            raise EncodeError(f"{modality} features must be a list of {expected} numbers, got {x.shape[0]}")
        with np.errstate(over="ignore"):
            x32 = x.astype(np.float32)  # the hash function's input type; checked after the cast, which
        if not np.isfinite(x32).all():  # turns numbers beyond float32's range into infinity
            raise EncodeError(f"{modality} features contain NaN, infinity or numbers beyond float32's range")
        return x32[None, :]

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
