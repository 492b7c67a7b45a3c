"""A collection of one's own: a JSON-Lines manifest, one row per item (``docs/collections.md``).

Each row is a JSON object: ``image`` (path relative to the manifest's folder), ``text``, optional
``labels`` (list of strings), optional ``short_texts`` (list of strings: the item's title, tags or other
few-word descriptions, on which training also fits the text hash function so that a short query lands
where the item's full text does), optional ``id`` (default: the image path without its suffix),
optional ``metadata`` (an object) and optional ``split`` (``train``, ``query`` or ``database``: a dataset's
own split, which the trainer keeps; the loader loads every row whatever its split). The trainer
(``training.datasets.collection``) and the loader (``service.collection``) both read a collection here,
so this is shared leaf code in ``index``.

A bad row never stops the reading: it is skipped, counted and listed with its reason (bad UTF-8, bad
JSON, not an object, an unknown or mistyped field, empty text, an image path leaving the folder, a
missing image, an image that does not open, a duplicate id). Whether an image decodes is checked
cheaply: Pillow opens it and ``verify()`` reads it through once, checking its structure (for PNG every
chunk's CRC) without decompressing a pixel. A file that passes and still fails to decode (rare: damaged
compressed data under intact checksums) is caught where the pixels are decoded, and reported there.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

MANIFEST_NAME = "manifest.jsonl"  # the manifest a collection folder is read from
ITEM_PREFIXES = {"image": "img:", "text": "txt:"}  # a row's items in an index: img:<id> and txt:<id>
FIELDS = ("id", "image", "text", "labels", "short_texts", "metadata", "split")
SPLITS = ("train", "query", "database")  # values of the optional ``split`` field
_UTF8_BOM = b"\xef\xbb\xbf"


class CollectionError(FileNotFoundError):
    """No manifest where a collection was asked for."""


@dataclass(frozen=True)
class CollectionItem:
    """One good row: its id, image path as written (relative, inside the folder), text, labels, metadata."""

    id: str
    image: str
    text: str
    labels: tuple[str, ...]
    metadata: dict
    line: int
    short_texts: tuple[str, ...] = ()
    split: str | None = None


@dataclass(frozen=True)
class SkippedRow:
    """A row left out, with where it was and why."""

    line: int
    id: str | None
    reason: str


@dataclass
class Collection:
    """The good rows of a manifest (in file order) and the rows skipped."""

    manifest: Path
    items: list[CollectionItem]
    skipped: list[SkippedRow] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        """The folder image paths are relative to."""
        return self.manifest.parent

    def image_file(self, item: CollectionItem) -> Path:
        return self.folder / item.image

    def report(self) -> dict:
        """Counts and every skipped row with its reason, as JSON."""
        return {
            "manifest": str(self.manifest),
            "items": len(self.items),
            "skipped": len(self.skipped),
            "skipped_rows": [{"line": s.line, "id": s.id, "reason": s.reason} for s in self.skipped],
        }


def manifest_path(path: str | Path) -> Path:
    """A manifest file, or the ``manifest.jsonl`` of a folder; CollectionError when there is none."""
    path = Path(path)
    candidate = path / MANIFEST_NAME if path.is_dir() else path
    if not candidate.is_file():
        raise CollectionError(f"no collection manifest at {candidate} (a .jsonl file or a folder with {MANIFEST_NAME})")
    return candidate.resolve()


def is_collection(spec: str | Path) -> bool:
    """Whether ``spec`` names a collection: a ``.jsonl`` path or a folder holding a manifest."""
    path = Path(spec)
    return path.suffix == ".jsonl" or (path / MANIFEST_NAME).is_file()


def inside_path(relative: object) -> PurePosixPath | None:
    """``relative`` as a path that stays inside the folder it is joined to (relative, no ``..``, no NUL),
    else None. Decided on the text alone: the loader's paths and the thumbnails' paths are checked alike."""
    if not isinstance(relative, str) or not relative or "\0" in relative:
        return None
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts or str(path) in ("", "."):
        return None
    return path


def image_problem(path: Path) -> str | None:
    """Why ``path`` is no usable image file (missing, or Pillow cannot open and verify it), else None."""
    if not path.is_file():
        return "image file missing"
    with warnings.catch_warnings():  # a large image warns of a bomb on opening; the hard limit still raises
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            return f"image does not decode: {exc}"
    return None


def _json_problem(exc: json.JSONDecodeError) -> str:
    """The reason for a line that is no JSON, as a sentence: ``json`` words its messages to precede its own
    ": line 1 column 62 (char 61)" ("Unterminated string starting at"), so the trailing "at" is dropped
    before the column is added."""
    message = exc.msg.removesuffix(" at")
    return f"bad JSON: {message[:1].lower()}{message[1:]} at column {exc.colno}"


def _text_field(row: dict, name: str) -> str | None:
    value = row.get(name)
    return value if isinstance(value, str) else None


def _item(row: object, line: int, folder: Path) -> CollectionItem | str:
    """The item of a parsed row, or the reason it is skipped."""
    if not isinstance(row, dict):
        return "row is not a JSON object"
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "row holds an unpaired surrogate escape (such as \\ud800), which is no character"
    unknown = sorted(set(row) - set(FIELDS))
    if unknown:
        return f"unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})"
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        return "empty text" if isinstance(text, str) or text is None else "text must be a string"
    image = inside_path(row.get("image"))
    if image is None:
        return "image must be a path relative to the manifest's folder, without '..'"
    labels = row.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(label, str) and label.strip() for label in labels):
        return "labels must be a list of non-empty strings"
    short_texts = row.get("short_texts", [])
    if not isinstance(short_texts, list) or not all(isinstance(view, str) for view in short_texts):
        return "short_texts must be a list of strings"
    metadata = row.get("metadata", {})
    if not isinstance(metadata, dict):
        return "metadata must be a JSON object"
    split = row.get("split")
    if "split" in row and split not in SPLITS:
        return f"split must be one of: {', '.join(SPLITS)} (got {json.dumps(split, ensure_ascii=False)})"
    item_id = row.get("id", image.with_suffix("").as_posix())
    if not isinstance(item_id, str) or not item_id.strip():
        return "id must be a non-empty string"
    problem = image_problem(folder / image)
    if problem:
        return problem
    views = tuple(dict.fromkeys(view.strip() for view in short_texts if view.strip() and view.strip() != text.strip()))
    labels = tuple(dict.fromkeys(labels))
    return CollectionItem(item_id, image.as_posix(), text.strip(), labels, metadata, line, views, split)


def read_collection(path: str | Path) -> Collection:
    """Read a manifest (or a folder's ``manifest.jsonl``): the good rows in file order, the rest reported."""
    manifest = manifest_path(path)
    items: list[CollectionItem] = []
    skipped: list[SkippedRow] = []
    first_line: dict[str, int] = {}
    for line, raw in enumerate(manifest.read_bytes().removeprefix(_UTF8_BOM).split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            skipped.append(SkippedRow(line, None, f"bad UTF-8: {exc.reason} at byte {exc.start + 1} of the line"))
            continue
        except json.JSONDecodeError as exc:
            skipped.append(SkippedRow(line, None, _json_problem(exc)))
            continue
        named = _text_field(row, "id") if isinstance(row, dict) else None
        item = _item(row, line, manifest.parent)
        if isinstance(item, str):
            skipped.append(SkippedRow(line, named, item))
        elif item.id in first_line:
            skipped.append(SkippedRow(line, item.id, f"duplicate id (first on line {first_line[item.id]})"))
        else:
            first_line[item.id] = line
            items.append(item)
    return Collection(manifest, items, skipped)
