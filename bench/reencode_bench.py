"""What changing the model costs: re-encoding the demo corpus under a new bundle, and what keeping the
sources of API items costs in Redis.

    python -m bench.reencode_bench [--rows N]

1. The OpenClipart collection (all its rows, or the first ``--rows`` of its export) is loaded into a
   fresh redis-server with the default bundle by the service's own loader: the baseline, items/s.
2. The same items are re-encoded under another bundle by the rollout's pass (``index.reencode``): every
   image decoded from its file and featurized again, every text from the manifest: items/s and the
   ratio to the load.
3. As many API items, a text and an image each row: their sources (raw text; the image's EfficientNet
   features as float16) kept by ``index.item_sources`` and re-encoded from them (no featurizing of the
   images): items/s, and the Redis memory the sources take per item (``MEMORY USAGE`` of the hashes).

``--float16 N`` measures instead what keeping image features as float16 changes: the default bundle's
codes of N corpus images from their float32 features and from the float16 ones kept, bits that differ.

The new bundle is the default one with its code bits in another order (``permuted_bundle``): another
bundle id and other codes, the same networks, so the cost is the same as for any bundle on these
featurizers.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from index.bulk_import import open_store
from index.bundle import load_bundle
from index.collection import read_collection
from index.engine import HashIndex
from index.item_sources import SourceStore, TextSource, features_source
from index.redis_server import RedisServer
from index.reencode import Reencoder
from index.store import Group
from service.collection import Loader
from service.settings import DEFAULT_BUNDLE
from tests.support.faults_bundles import permuted_bundle
from training.datasets import openclipart

INDEX = "bench"


def _collection(folder: Path, rows: int | None) -> Path:
    manifest, _ = openclipart.export_collection(folder / "openclipart")
    if rows is not None:
        lines = manifest.read_text().splitlines()[:rows]
        manifest.write_text("".join(line + "\n" for line in lines))
    return manifest


def _api_items(client, old, rows: int, bundle) -> int:
    """``rows`` text and ``rows`` image items with kept sources (texts of the corpus, random features)."""
    texts = [row.text for row in read_collection(old["manifest"]).items][:rows]
    kept = SourceStore(client, INDEX)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(rows, bundle.input_dim("image"))).astype(np.float32)
    space = bundle.feature_space("image")
    ids_t, ids_i = [f"api/t{i}" for i in range(rows)], [f"api/i{i}" for i in range(rows)]
    kept.put("text", {i: TextSource(t) for i, t in zip(ids_t, texts, strict=True)})
    kept.put("image", {i: features_source(space, f) for i, f in zip(ids_i, features, strict=True)})
    store = old["index"].store
    for modality, ids in (("text", ids_t), ("image", ids_i)):
        x = bundle.text_features(texts) if modality == "text" else features
        codes = bundle.packed_codes(modality, x)
        buckets = old["index"].route(codes, 1)[:, 0]
        for start in range(0, rows, 1000):
            part = slice(start, start + 1000)
            store.write([Group(modality, ids[part], buckets[part], codes[part], ["{}"] * len(ids[part]))])
    return kept.stored_bytes("text") + kept.stored_bytes("image")


def float16_flips(rows: int) -> dict:
    """Bits of the default bundle's image codes that float16 features change, over ``rows`` corpus images."""
    bundle = load_bundle(DEFAULT_BUNDLE, threads=1)
    dataset = openclipart.load_openclipart()
    pixels = np.stack([bundle.decode_image(openclipart.DEFAULT_ROOT / "png" / f"{item}.png")
                       for item in dataset.ids[:rows]])  # fmt: skip
    x = bundle.image_features(pixels)
    exact = bundle.packed_codes("image", x)
    kept = bundle.packed_codes("image", x.astype(np.float16).astype(np.float32))
    flipped = np.unpackbits(exact ^ kept, axis=1)
    return {"images": rows, "bits": bundle.bits, "bits_flipped_fraction": float(flipped.mean()),
            "codes_changed_fraction": float(flipped.any(axis=1).mean()),
            "max_bits_flipped": int(flipped.sum(axis=1).max())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help="rows of the corpus (default: all)")
    parser.add_argument("--float16", type=int, default=None, help="measure float16's bit flips on N images instead")
    args = parser.parse_args()
    if args.float16:
        print(json.dumps(float16_flips(args.float16), indent=2))
        return
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = _collection(folder, args.rows)
        collection = read_collection(manifest)
        server = RedisServer(folder / "redis").start()
        try:
            client = server.client()
            bundle = load_bundle(DEFAULT_BUNDLE, threads=1)
            new = load_bundle(permuted_bundle(folder / "permuted"), threads=1)
            index = HashIndex.open(client, INDEX, bundle.code_space)
            started = time.perf_counter()
            report = Loader(bundle, index, client, INDEX, 50_000_000).load(collection, "demo")
            load_s = time.perf_counter() - started
            loaded = sum(report.written.values())
            results["load"] = {"items": loaded, "seconds": round(load_s, 1), "items_per_s": round(loaded / load_s, 1)}

            target = open_store(client, INDEX, new)
            started = time.perf_counter()
            done = Reencoder(index.store, target, new).run()
            seconds = time.perf_counter() - started
            written = sum(done.written.values())
            results["reencode_collection"] = {
                "items": written, "seconds": round(seconds, 1), "items_per_s": round(written / seconds, 1),
                "ratio_to_load": round((written / seconds) / (loaded / load_s), 2),
                "not_reencodable": done.not_reencodable,
            }  # fmt: skip

            rows = len(collection.items)
            source_bytes = _api_items(client, {"manifest": manifest, "index": index}, rows, bundle)
            started = time.perf_counter()
            done = Reencoder(index.store, target, new).run()
            seconds = time.perf_counter() - started
            written = sum(done.written.values())
            results["reencode_api_sources"] = {
                "items": written, "seconds": round(seconds, 1), "items_per_s": round(written / seconds, 1),
                "present": done.present,
            }  # fmt: skip
            results["source_bytes_per_api_item"] = round(source_bytes / (2 * rows), 1)
            results["text_source_bytes"] = round(SourceStore(client, INDEX).stored_bytes("text") / rows, 1)
            results["image_source_bytes"] = round(SourceStore(client, INDEX).stored_bytes("image") / rows, 1)
        finally:
            server.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
