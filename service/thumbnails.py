"""Small thumbnails of image items, for the search page.

Where a thumbnail comes from, in order:

1. an image ingested as raw bytes: a thumbnail made at ingestion and kept in Redis (``keep``), at most
   ``SIZE``×``SIZE`` pixels as WebP, so a page of results never ships the full uploads;
2. an item whose metadata names a file of the installed corpus (``path``, as the demo corpus stores
   it): that file, resolved strictly inside the corpus's ``png`` folder, so neither ``..``, an absolute
   path nor a symlink pointing outside can reach any other file;
3. an item ingested as a feature vector only: a placeholder drawing (SVG).

A few corpus files are too large to decode on request (10 of the demo corpus exceed the pixel limit, up
to 1.7·10⁸ pixels); the demo ingestion keeps their thumbnails, made from the pixels it already decoded.

Every decode goes through the image loader the encoder uses (``load_pixels``: pixel-count guard against
decompression bombs, corrupt files refused), onto the same white square canvas.
"""

from __future__ import annotations

import base64
import io
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import redis
from PIL import Image

from index.bundle.featurizers import ImageDecodeError, load_pixels
from index.errors import StoreUnavailableError
from service.runtime import Runtime

SIZE = 160  # px: a grid cell is ~150 CSS px, so sharp at 1x and still a few KB per item in Redis
QUALITY = 80  # WebP quality: clip art on white stays clean, and a thumbnail stays a few KB
MEDIA_TYPE = "image/webp"
CORPUS_CACHE_ITEMS = 2048  # corpus thumbnails kept in memory per worker (~4 KB each)

PLACEHOLDER = b"""<svg xmlns="http://www.w3.org/2000/svg" width="160" height="160" viewBox="0 0 160 160">
<rect width="160" height="160" fill="#eef1f5"/>
<rect x="40" y="48" width="80" height="64" rx="6" fill="none" stroke="#9aa5b1" stroke-width="4"/>
<circle cx="62" cy="70" r="7" fill="#9aa5b1"/>
<path d="M44 108l26-26 16 16 12-12 18 22z" fill="#9aa5b1"/>
<text x="80" y="140" font-family="sans-serif" font-size="12" text-anchor="middle" fill="#52606d">features only</text>
</svg>"""


class NoThumbnail(LookupError):
    """The item names an image file that is not inside the corpus (or does not exist)."""


def make(source: bytes | Path, max_pixels: int) -> bytes:
    """A WebP thumbnail of an image file (bytes or a path); ImageDecodeError when it does not decode."""
    return encode(load_pixels(source, size=SIZE, max_pixels=max_pixels))


def encode(pixels: np.ndarray) -> bytes:
    """(3, S, S) uint8 pixels as WebP."""
    out = io.BytesIO()
    Image.fromarray(pixels.transpose(1, 2, 0)).save(out, format="WEBP", quality=QUALITY, method=6)
    return out.getvalue()


def exceeds(path: Path, max_pixels: int) -> bool:
    """Whether an image file is too large to decode on request (its header says; nothing is decoded)."""
    with warnings.catch_warnings():  # Pillow warns of a bomb on opening; this only reads the size
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                return image.width * image.height > max_pixels
        except Image.DecompressionBombError:  # beyond Pillow's own hard limit
            return True


def _key(runtime: Runtime, item_id: str) -> str:
    """Per index name, not per bundle: a thumbnail shows the image, whatever model hashes it."""
    return f"xmh:{runtime.settings.index_name}:thumb:{item_id}"


def _redis(call, *args):
    try:
        return call(*args)
    except redis.RedisError as exc:
        raise StoreUnavailableError(f"Redis is unreachable: {exc}") from exc


def keep(runtime: Runtime, images: dict[str, str | None]) -> None:
    """After image items were stored: keep a thumbnail of each one given as base64 bytes, and drop the
    old thumbnail of each one given as features only (``None``), so a replaced item never shows its
    previous picture."""
    max_pixels = runtime.settings.max_image_pixels
    # base64 already validated: each item was encoded from it
    _put(runtime, {i: None if b64 is None else make(base64.b64decode(b64), max_pixels) for i, b64 in images.items()})


def _put(runtime: Runtime, kept: dict[str, bytes | None]) -> None:
    """Keep each thumbnail given; drop the kept thumbnail of each id given None."""
    if not kept:
        return
    pipe = runtime.client.pipeline(transaction=False)
    for item_id, body in kept.items():
        if body is None:
            pipe.delete(_key(runtime, item_id))
        else:
            pipe.set(_key(runtime, item_id), body)
    _redis(pipe.execute)


def keep_corpus_pixels(runtime: Runtime, pixels: dict[str, np.ndarray]) -> None:
    """Keep thumbnails made from already decoded pixels: for corpus files too large to decode on request."""
    _put(runtime, {item_id: encode(p) for item_id, p in pixels.items()})


def forget(runtime: Runtime, item_id: str) -> None:
    """Drop a deleted item's thumbnail."""
    _redis(runtime.client.delete, _key(runtime, item_id))


def corpus_file(root: Path, relative: object) -> Path:
    """The corpus PNG ``<root>/png/<relative>.png``, only if it resolves (symlinks followed) inside
    ``<root>/png``; NoThumbnail otherwise."""
    base = (root / "png").resolve()
    if not isinstance(relative, str) or not relative or "\0" in relative:
        raise NoThumbnail("the item's metadata names no corpus file")
    candidate = (base / f"{relative}.png").resolve()  # an absolute `relative` replaces base: refused below
    if not candidate.is_relative_to(base) or not candidate.is_file():
        raise NoThumbnail(f"no corpus image {relative!r}")
    return candidate


@lru_cache(maxsize=CORPUS_CACHE_ITEMS)
def _corpus_thumbnail(path: Path, max_pixels: int) -> bytes:
    return make(path, max_pixels)


def thumbnail(runtime: Runtime, item_id: str, metadata: dict, corpus_root: Path) -> tuple[bytes, str]:
    """(body, media type) of an image item's thumbnail; NoThumbnail when its corpus file is unreachable."""
    kept = _redis(runtime.client.get, _key(runtime, item_id))
    if kept is not None:
        return kept, MEDIA_TYPE
    if "path" not in metadata:
        return PLACEHOLDER, "image/svg+xml"
    path = corpus_file(corpus_root, metadata["path"])
    try:
        return _corpus_thumbnail(path, runtime.settings.max_image_pixels), MEDIA_TYPE
    except ImageDecodeError as exc:
        raise NoThumbnail(f"corpus image {metadata['path']!r} does not decode: {exc}") from exc
