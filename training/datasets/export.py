"""Writing a corpus installed on this machine as a collection (``docs/collections.md``): ``manifest.jsonl``
and a symlink to the corpus's image folder, nothing copied. The OpenClipart and Tux Paint exports share it,
so both write their folders alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def link_images(out: Path, name: str, target: Path) -> None:
    """``out/name`` as a symlink to ``target``, re-pointed when it links elsewhere (another corpus root)."""
    out.mkdir(parents=True, exist_ok=True)
    link, target = out / name, target.resolve()
    if link.is_symlink() and link.resolve() != target:
        link.unlink()
    if not link.is_symlink():
        link.symlink_to(target, target_is_directory=True)


def write_manifest(out: Path, rows: list[dict], seed: int) -> Path:
    """``out/manifest.jsonl`` holding ``rows`` in a seeded random order, so that a collection loaded part way
    already covers every category; written to a temporary file first, so a reader never sees half of it."""
    out.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(rows))
    manifest, tmp = out / "manifest.jsonl", out / "manifest.jsonl.tmp"
    tmp.write_text("".join(json.dumps(rows[i], ensure_ascii=False) + "\n" for i in order), encoding="utf-8")
    tmp.replace(manifest)
    return manifest
