"""Decode any image (file or bytes) into the fixed-size RGB pixel block the image descriptor expects.

Clip art is mostly drawn on a transparent canvas, so transparency is composited onto white; the image
is scaled to fit ``IMAGE_SIZE`` keeping its aspect ratio and centred on a white square. Grayscale,
palette, LA/RGBA and 16-bit inputs all go through Pillow's ``convert("RGBA")``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = 64


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
    decompression-bomb guard for untrusted uploads; Pillow's own global limit still applies).
    """
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
        with handle, Image.open(handle) as image:
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise ImageDecodeError(f"image of {image.width}×{image.height} exceeds {max_pixels} pixels")
            image.load()
            return to_pixels(image, size, upscale)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, ImageDecodeError):
            raise
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc
