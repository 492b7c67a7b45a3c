"""The serving side of the bundle's featurizers: raw text, image bytes and pixels → feature vectors.

Only what a bundle needs to turn raw inputs into the features its hash functions take lives here
(numpy, Pillow and onnxruntime); the fitting side (the vocabulary, the descriptor's torch definition
and its export) is ``training.featurize``, which imports these classes so both sides run one code.

- Pixels: any image (file or bytes) is decoded into the fixed-size RGB block the descriptor expects.
  Clip art is mostly drawn on a transparent canvas, so transparency is composited onto white; the image
  is scaled to fit ``IMAGE_SIZE`` keeping its aspect ratio and centred on a white square. Grayscale,
  palette, LA/RGBA and 16-bit inputs all go through Pillow's ``convert("RGBA")``.
- Image descriptor: a GIST-style descriptor (Gabor energy, a colour histogram, a coarse layout), run
  as the ONNX graph the bundle ships, so trainer and service compute bit-identical features.
- Bag of words: the saved vocabulary's word counts (or presence) of a text's tokens.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, UnidentifiedImageError

from index.bundle.manifest import IMAGE_SIZE, BagOfWordsParams, BagOfWordsSpec, ImageDescriptorParams

TOKEN_PATTERN = r"(?u)\b[^\W\d_]{2,}\b"  # alphabetic tokens of ≥ 2 letters
_TOKEN = re.compile(TOKEN_PATTERN)
_IMAGE_BATCH = 256  # pixel blocks per descriptor run: bounds the graph's intermediate buffers
PILLOW_MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS  # Pillow refuses to open a larger image, whatever its caller allows


class ImageDecodeError(ValueError):
    """The input is not a decodable image (corrupt, truncated, not an image, or a decompression bomb)."""


def to_pixels(image: Image.Image, size: int = IMAGE_SIZE, upscale: bool = False) -> np.ndarray:
    """A decoded Pillow image → (3, size, size) uint8, transparency on white, aspect kept.

    ``upscale`` also enlarges an image smaller than the square until it fills it (what a pretrained
    CNN needs); without it a small image sits at its own size in the middle of the white square.
    """
    rgba = image.convert("RGBA")
    if upscale and max(rgba.size) < size:
        scale = size / max(rgba.size)
        target = (max(1, round(rgba.width * scale)), max(1, round(rgba.height * scale)))
        rgba = rgba.resize(target, Image.Resampling.LANCZOS)
    rgba.thumbnail((size, size), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    canvas.alpha_composite(rgba, ((size - rgba.width) // 2, (size - rgba.height) // 2))
    return np.asarray(canvas.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1).copy()


def load_pixels(
    source: str | Path | bytes, size: int = IMAGE_SIZE, max_pixels: int | None = None, upscale: bool = False
) -> np.ndarray:
    """Decode a file path or raw bytes; raises :class:`ImageDecodeError` on anything undecodable.

    ``max_pixels`` rejects an image from its header, before decoding a byte of pixel data (the
    decompression-bomb guard for untrusted uploads), and is the limit its error names, also for an image
    beyond Pillow's own hard limit (:data:`PILLOW_MAX_PIXELS`, which Pillow checks first, on opening).
    Pillow's bomb *warning* is silenced here, once for every caller: an upload is bounded by
    ``max_pixels``, and without it the source is a trusted file (a corpus or a collection its owner
    loads), a few of which are huge; the hard limit still raises.
    """
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
        with handle, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # set before open, which warns
            with Image.open(handle) as image:
                if max_pixels is not None and image.width * image.height > max_pixels:
                    shape = f"{image.width}×{image.height}"
                    raise ImageDecodeError(f"image of {shape} pixels exceeds the limit of {max_pixels} pixels")
                image.load()
                return to_pixels(image, size, upscale)
    except UnidentifiedImageError as exc:  # its message names the in-memory buffer object, not the input
        raise ImageDecodeError("not an image format Pillow reads (PNG, JPEG, GIF, WebP, BMP, TIFF, …)") from exc
    except Image.DecompressionBombError as exc:
        if max_pixels is not None:  # beyond Pillow's limit, so beyond the caller's, which may be no higher
            raise ImageDecodeError(f"image exceeds the limit of {max_pixels} pixels") from exc
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageDecodeError):
            raise
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc


class ImageFeaturizer:
    """Runs the descriptor's ONNX graph (``onnx_bytes``, the file a bundle ships) on pixel blocks."""

    def __init__(self, params: ImageDescriptorParams, onnx_bytes: bytes) -> None:
        self.params = params
        self.onnx_bytes = onnx_bytes
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self._session = ort.InferenceSession(self.onnx_bytes, options, providers=["CPUExecutionProvider"])

    @property
    def dim(self) -> int:
        return self.params.dim

    def transform(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) uint8 or float pixels → (N, dim) float32 features."""
        pixels = np.asarray(pixels)
        expected = (3, self.params.size, self.params.size)
        if pixels.ndim != 4 or pixels.shape[1:] != expected:
            raise ValueError(
                f"expected pixels of shape (n, {expected[0]}, {expected[1]}, {expected[2]}), got {pixels.shape}"
            )
        out = np.empty((len(pixels), self.dim), dtype=np.float32)
        for start in range(0, len(pixels), _IMAGE_BATCH):
            batch = pixels[start : start + _IMAGE_BATCH].astype(np.float32)
            out[start : start + _IMAGE_BATCH] = self._session.run(None, {"pixels": batch})[0]
        return out


def tokens(text: str) -> list[str]:
    """Lower-case alphabetic tokens of ≥ 2 letters; underscores split words, so compound tags such as
    ``signs_and_symbols`` give ``signs``, ``and``, ``symbols``. Fitting and serving both tokenize here."""
    return _TOKEN.findall(text.replace("_", " ").lower())


class BagOfWords:
    """Texts → (n, vocabulary size) float32: per word of the vocabulary, its count in the text (or 1 if
    present, with ``params.binary``). ``training.featurize.text`` fits the vocabulary."""

    def __init__(self, params: BagOfWordsParams, vocabulary: Sequence[str]) -> None:
        if not vocabulary:
            raise ValueError("a bag of words needs a non-empty vocabulary")
        self.params = params
        self.vocabulary: list[str] = list(vocabulary)
        self._column = {word: j for j, word in enumerate(self.vocabulary)}

    @property
    def dim(self) -> int:
        return len(self.vocabulary)

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            columns = [j for j in map(self._column.get, tokens(text)) if j is not None]
            np.add.at(out[row], columns, 1.0)
        if self.params.binary:
            np.minimum(out, 1.0, out=out)
        return out

    def spec(self) -> BagOfWordsSpec:
        """What the manifest records to rebuild this featurizer."""
        return BagOfWordsSpec(params=self.params, vocabulary=self.vocabulary)

    @classmethod
    def from_spec(cls, spec: BagOfWordsSpec) -> BagOfWords:
        return cls(spec.params, spec.vocabulary)
