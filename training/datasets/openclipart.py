"""OpenClipart 0.18 from Debian's ``openclipart-png`` + ``openclipart-svg``: real images, real text.

An *item* is one real PNG file. Debian ships some images in several category folders as symlinks to
one file; we resolve them, so an item's categories are all folders that reach it. Labels are the
top-level and second-level category paths (``animals``, ``animals/birds``) with at least
``MIN_LABEL_MEMBERS`` items, multi-hot; items left with no label are dropped (they are relevant to
nothing). Text is the SVG's Dublin Core metadata of the work: title, description and keywords; when
an image has no SVG or no title, its file name stands in for the title.

Parsing 6,900 SVGs and decoding the PNGs takes minutes, so the parsed index and the pixels are cached
under ``var/cache/`` keyed by the corpus root and the parsing version.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from index.bundle.featurizers import IMAGE_SIZE, ImageDecodeError, load_pixels
from training.datasets.base import CrossModalDataset, DatasetNotFoundError, seeded_split
from training.datasets.export import link_images, write_manifest

DEFAULT_ROOT = Path(os.environ.get("OPENCLIPART_ROOT", "/usr/share/openclipart"))
CACHE_DIR = Path(os.environ.get("XMHASH_CACHE", Path(__file__).resolve().parents[2] / "var" / "cache"))
DEBIAN_PACKAGES = ("openclipart-png", "openclipart-svg")
MIN_LABEL_MEMBERS = 20
PARSER_VERSION = 1

_METADATA = re.compile(r"<metadata\b.*?</metadata>", re.S | re.I)
_AGENT = re.compile(r"<(?:\w+:)?Agent\b.*?</(?:\w+:)?Agent>", re.S)
_TAG = re.compile(r"<[^>]+>")


def _element(name: str) -> re.Pattern[str]:
    return re.compile(rf"<(?:\w+:)?{name}\b[^>]*>(.*?)</(?:\w+:)?{name}>", re.S)


_TITLE, _DESCRIPTION, _SUBJECT, _LI = (_element(n) for n in ("title", "description", "subject", "li"))


def _clean(fragment: str) -> str:
    return " ".join(html.unescape(_TAG.sub(" ", fragment)).split())


def parse_svg_metadata(svg_text: str) -> dict[str, object]:
    """Title, description and keywords of the work described in an SVG's RDF metadata.

    Agent blocks (publisher, creator, rights) also carry ``dc:title``; they are removed first so the
    title found is the work's own.
    """
    block = _METADATA.search(svg_text)
    meta = _AGENT.sub(" ", block.group(0) if block else "")
    title = _TITLE.search(meta)
    description = _DESCRIPTION.search(meta)
    subject = _SUBJECT.search(meta)
    keywords: list[str] = []
    if subject:
        items = _LI.findall(subject.group(1)) or [subject.group(1)]
        keywords = [k for k in (_clean(i) for i in items) if k]
    return {
        "title": _clean(title.group(1)) if title else "",
        "description": _clean(description.group(1)) if description else "",
        "keywords": keywords,
    }


def item_text(meta: dict[str, object]) -> str:
    """The raw text side of an item: title, description, keywords."""
    parts = [str(meta["title"]), str(meta["description"]), " ".join(meta["keywords"])]  # type: ignore[arg-type]
    return " ".join(p for p in parts if p)


def item_views(meta: dict[str, object]) -> list[str]:
    """Short texts that describe an item on their own, as a one- or two-word query would: the title alone
    and each keyword alone (distinct, and none equal to the full text)."""
    full = item_text(meta)
    views: list[str] = []
    for view in [str(meta["title"]), *meta["keywords"]]:  # type: ignore[misc]
        if view and view != full and view not in views:
            views.append(view)
    return views


def _title_from_filename(stem: str) -> str:
    return " ".join(re.sub(r"[_\-]+", " ", re.sub(r"_?\d+$", "", stem)).split())


def _category_labels(category: str) -> set[str]:
    parts = category.split("/")
    return {"/".join(parts[:depth]) for depth in (1, 2) if len(parts) >= depth}


def _scan(root: Path) -> list[dict]:
    """One record per real PNG: id, categories reaching it, and its SVG metadata."""
    png_root, svg_root = root / "png", root / "svg"
    if not png_root.is_dir():
        raise DatasetNotFoundError(
            f"OpenClipart not found under {root}: install the Debian packages "
            f"{' and '.join(DEBIAN_PACKAGES)} (`make bootstrap` does, or `apt-get install "
            f"{' '.join(DEBIAN_PACKAGES)}`), or set OPENCLIPART_ROOT to the folder holding png/ and svg/"
        )
    categories: dict[str, set[str]] = {}
    for path in sorted(png_root.rglob("*.png")):
        real = path.resolve()
        if not real.is_file() or not real.is_relative_to(png_root.resolve()):
            continue
        item_id = real.relative_to(png_root.resolve()).with_suffix("").as_posix()
        categories.setdefault(item_id, set()).update(_category_labels(path.relative_to(png_root).parent.as_posix()))
    records = []
    for item_id in sorted(categories):
        svg = svg_root / f"{item_id}.svg"
        meta = {"title": "", "description": "", "keywords": []}
        if svg.is_file():
            meta = parse_svg_metadata(svg.read_text(encoding="utf-8", errors="replace"))
        if not meta["title"]:
            meta["title"] = _title_from_filename(Path(item_id).name)
        records.append({"id": item_id, "categories": sorted(categories[item_id]), **meta})
    return records


def _decode(path: str) -> np.ndarray | None:
    """Pixels of one corpus image, or None when it cannot be decoded (counted, never fatal).

    A few Debian images are huge (up to 1.7e8 pixels); the corpus is trusted, so no pixel bound applies
    beyond Pillow's own (``load_pixels`` silences its warning).
    """
    try:
        return load_pixels(path)
    except ImageDecodeError:
        return None


def _cache_key(root: Path) -> str:
    tag = f"{root.resolve()}|v{PARSER_VERSION}|{IMAGE_SIZE}"
    return hashlib.sha256(tag.encode()).hexdigest()[:12]


def _build_cache(root: Path, cache: Path, workers: int) -> None:
    records = _scan(root)
    paths = [str(root / "png" / f"{r['id']}.png") for r in records]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        decoded = list(tqdm(pool.map(_decode, paths, chunksize=16), total=len(paths), desc="decoding OpenClipart PNGs"))
    kept = [i for i, px in enumerate(decoded) if px is not None]
    pixels = np.stack([decoded[i] for i in kept]) if kept else np.zeros((0, 3, IMAGE_SIZE, IMAGE_SIZE))
    cache.mkdir(parents=True, exist_ok=True)
    np.save(cache / "pixels.npy", pixels.astype(np.uint8), allow_pickle=False)
    index = {
        "records": [records[i] for i in kept],
        "corrupt_skipped": [records[i]["id"] for i in range(len(records)) if decoded[i] is None],
    }
    tmp = cache / "index.json.tmp"
    tmp.write_text(json.dumps(index))
    tmp.replace(cache / "index.json")  # written last: its presence marks a complete cache


def load_openclipart(
    root: Path = DEFAULT_ROOT,
    n_query: int = 1000,
    n_train: int | None = None,
    seed: int = 0,
    min_label_members: int = MIN_LABEL_MEMBERS,
    workers: int | None = None,
) -> CrossModalDataset:
    """The OpenClipart corpus with raw pixels and raw text, labels and a seeded split."""
    cache = CACHE_DIR / f"openclipart-{_cache_key(root)}"
    if not (cache / "index.json").is_file():
        _build_cache(root, cache, workers or os.cpu_count() or 1)
    index = json.loads((cache / "index.json").read_text())
    records = index["records"]
    pixels = np.load(cache / "pixels.npy", allow_pickle=False)

    counts = Counter(label for r in records for label in r["categories"])
    label_names = sorted(label for label, c in counts.items() if c >= min_label_members)
    column = {label: j for j, label in enumerate(label_names)}
    labels = np.zeros((len(records), len(label_names)), dtype=np.uint8)
    for i, r in enumerate(records):
        for label in r["categories"]:
            if label in column:
                labels[i, column[label]] = 1
    keep = np.flatnonzero(labels.sum(1) > 0)
    records = [records[i] for i in keep]
    return CrossModalDataset(
        name="openclipart",
        images=pixels[keep],
        texts=[item_text(r) for r in records],
        labels=labels[keep],
        label_names=label_names,
        split=seeded_split(len(keep), n_query, n_train, seed),
        image_kind="pixels",
        text_kind="raw",
        ids=[r["id"] for r in records],
        image_root=root,
        default_features="pretrained",
        text_views=[item_views(r) for r in records],
        stats={
            "real_png_files": len(index["records"]) + len(index["corrupt_skipped"]),
            "corrupt_skipped": len(index["corrupt_skipped"]),
            "dropped_without_label": len(index["records"]) - len(keep),
        },
    )


def export_collection(
    out: Path, root: Path = DEFAULT_ROOT, only: set[str] | None = None, seed: int = 0
) -> tuple[Path, dict[str, int]]:
    """Write OpenClipart as a collection (``index.collection``'s manifest) into ``out``: ``manifest.jsonl``
    and a ``png`` symlink to the installed corpus's images (nothing copied). Rows are the loader's items
    (``only``: those ids) with their texts, short texts (title, tags), label names and the loader's split
    (``query`` rows are held out of training: the service's quality gate evaluates on them), in a seeded
    random order (``training.datasets.export``). Returns the manifest and its counts ({"items": rows})."""
    dataset = load_openclipart(root=root, seed=seed)
    link_images(out, "png", root / "png")
    split = np.full(len(dataset.ids), "database", dtype=object)
    split[dataset.split.train], split[dataset.split.query] = "train", "query"
    rows = []
    for i, item in enumerate(dataset.ids):
        if only is None or item in only:
            labels = [dataset.label_names[j] for j in dataset.labels[i].nonzero()[0]]
            row = {
                "id": item,
                "image": f"png/{item}.png",
                "text": dataset.texts[i],
                "labels": labels,
                "split": split[i],
            }
            rows.append(row | ({"short_texts": dataset.text_views[i]} if dataset.text_views[i] else {}))
    return write_manifest(out, rows, seed), {"items": len(rows)}
