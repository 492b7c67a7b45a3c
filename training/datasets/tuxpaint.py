"""Tux Paint's stamps (Debian's ``tuxpaint-stamps-default``) as collection rows: a second real image–text
collection for instance-level retrieval, small and with a hand-written sentence per image
(``docs/collections_tuxpaint.md``).

The stamps lie under ``<root>/<category>/<subcategory…>/<name>.png``, most with ``<name>.txt`` beside them:
its first line is the English description, the following lines ``<lang>.utf8=<translation>``.

- **Item**: one PNG whose description file has an English first line. A PNG without one is skipped and
  counted. ``<name>_mirror.png`` / ``<name>_flip.png`` are the same stamp drawn for Tux Paint's mirror and
  flip tools (they share ``<name>.txt``), so they are counted as variants, not items; SVG-only stamps are
  counted and left out (the image pipeline reads raster images).
- **Text**: the English first line. **Translations** (German, French, simplified Chinese) go into
  ``metadata`` as ``text_de``, ``text_fr``, ``text_zh`` when present, for a multilingual check.
- **Labels**: the top-level folder and the first two folder levels (``animals``, ``animals/birds``), kept
  when at least ``MIN_LABEL_MEMBERS`` items carry them: a smaller category gives its queries too few
  relevant items to measure precision on. An item left with no label is kept (instance retrieval needs
  none).
- **Short text**: the file name as words (:func:`name_words`).
- **Id**: ``tuxpaint/<path under the root without suffix>``.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from training.datasets.base import DatasetNotFoundError
from training.datasets.export import link_images, write_manifest

ROOT_VARIABLE = "TUXPAINT_STAMPS"
INSTALLED_ROOT = Path("/usr/share/tuxpaint/stamps")
DEBIAN_PACKAGE = "tuxpaint-stamps-default"
IMAGE_LINK = "stamps"  # the collection folder's symlink to the root
MIN_LABEL_MEMBERS = 5
VARIANT_SUFFIXES = ("_mirror", "_flip")
# metadata key → the description file's language tags, the first present taken
TRANSLATIONS = {"text_de": ("de_DE", "de"), "text_fr": ("fr",), "text_zh": ("zh_CN",)}

_TRANSLATION_LINE = re.compile(r"^([A-Za-z_@]+)\.utf8=(.*)$")
_WORD_BREAK = re.compile(r"(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])|(?<=[a-z])(?=[A-Z])")


def default_root() -> Path:
    """``$TUXPAINT_STAMPS``, else where Debian installs the stamps (read at call time, so tests can set it)."""
    return Path(os.environ.get(ROOT_VARIABLE, INSTALLED_ROOT))


@dataclass(frozen=True)
class Stamp:
    """One item: its id, image path under the root, English text, candidate labels, short text, translations."""

    id: str
    image: str
    text: str
    categories: tuple[str, ...]
    short_text: str
    translations: dict[str, str]


@dataclass
class StampScan:
    """The stamps found, and what was left out: ids of PNGs without a description, variant and SVG-only counts."""

    stamps: list[Stamp] = field(default_factory=list)
    without_description: list[str] = field(default_factory=list)
    variants: int = 0
    svg_only: int = 0


def read_description(path: Path) -> tuple[str, dict[str, str]]:
    """(English first line, {metadata key: translation}) of a description file; the English text is empty
    when the file is missing, blank, or starts with a translation line (no English description)."""
    if not path.is_file():
        return "", {}
    lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    english = lines[0].strip() if lines else ""
    if _TRANSLATION_LINE.match(english):
        english = ""
    tagged = {m.group(1): m.group(2).strip() for m in map(_TRANSLATION_LINE.match, lines[1:]) if m}
    translations = {}
    for key, tags in TRANSLATIONS.items():
        text = next((tagged[tag] for tag in tags if tagged.get(tag)), "")
        if text:
            translations[key] = text
    return english, translations


def name_words(stem: str) -> str:
    """A file name as the words a short query would use: ``_`` and ``-`` become spaces, and words are cut
    where letters meet digits and at a lower-to-upper-case step (``025quarter`` → ``025 quarter``,
    ``cementMixer`` → ``cement Mixer``); digits and case are kept as written."""
    return " ".join(_WORD_BREAK.sub(" ", stem.replace("_", " ").replace("-", " ")).split())


def folder_labels(folder: str) -> tuple[str, ...]:
    """The top-level folder and the first two levels of a stamp's folder (``animals``, ``animals/birds``)."""
    parts = [part for part in folder.split("/") if part and part != "."]
    return tuple("/".join(parts[:depth]) for depth in (1, 2) if len(parts) >= depth)


def _is_variant(png: Path) -> bool:
    return any(png.stem.endswith(suffix) for suffix in VARIANT_SUFFIXES)


def scan_stamps(root: Path) -> StampScan:
    """Every stamp under ``root``, in path order; DatasetNotFoundError when ``root`` is no folder."""
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"Tux Paint stamps not found under {root}: install the Debian package {DEBIAN_PACKAGE} "
            f"(`apt-get install {DEBIAN_PACKAGE}`), or set {ROOT_VARIABLE} to the folder holding the stamps"
        )
    scan = StampScan()
    for png in sorted(root.rglob("*.png")):
        if _is_variant(png):
            scan.variants += 1
            continue
        relative = png.relative_to(root)
        item_id = f"tuxpaint/{relative.with_suffix('').as_posix()}"
        text, translations = read_description(png.with_suffix(".txt"))
        if not text:
            scan.without_description.append(item_id)
            continue
        labels = folder_labels(relative.parent.as_posix())
        scan.stamps.append(Stamp(item_id, relative.as_posix(), text, labels, name_words(png.stem), translations))
    scan.svg_only = sum(1 for svg in root.rglob("*.svg") if not svg.with_suffix(".png").is_file())
    return scan


def collection_rows(stamps: list[Stamp], min_label_members: int = MIN_LABEL_MEMBERS) -> list[dict]:
    """Manifest rows of the stamps, with the labels that at least ``min_label_members`` stamps carry."""
    counts = Counter(label for stamp in stamps for label in stamp.categories)
    rows = []
    for stamp in stamps:
        row = {
            "id": stamp.id,
            "image": f"{IMAGE_LINK}/{stamp.image}",
            "text": stamp.text,
            "labels": [label for label in stamp.categories if counts[label] >= min_label_members],
            "short_texts": [stamp.short_text],
        }
        rows.append(row | ({"metadata": stamp.translations} if stamp.translations else {}))
    return rows


def export_collection(out: Path, root: Path | None = None, seed: int = 0) -> tuple[Path, dict[str, int]]:
    """Write the stamps as a collection into ``out``: ``manifest.jsonl`` and a ``stamps`` symlink to the root
    (nothing copied). Returns the manifest and its counts: items, PNGs skipped without a description,
    mirror/flip variants and SVG-only stamps left out, labels kept, distinct texts."""
    root = root or default_root()
    scan = scan_stamps(root)
    rows = collection_rows(scan.stamps)
    link_images(out, IMAGE_LINK, root)
    manifest = write_manifest(out, rows, seed)
    return manifest, {
        "items": len(rows),
        "skipped without a description": len(scan.without_description),
        "mirror/flip variants": scan.variants,
        "SVG-only stamps": scan.svg_only,
        "labels": len({label for row in rows for label in row["labels"]}),
        "distinct texts": len({row["text"] for row in rows}),
    }
