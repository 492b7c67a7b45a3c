"""Re-encoding an index under another bundle: from the sources it keeps, resumable, never reviving a deleted
item nor overwriting a newer one, and saying which items it cannot re-encode and why."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index import collection_registry
from index.bulk_import import open_store
from index.bundle import load_bundle
from index.code_space import CodeSpace
from index.codes import pack_signs, to_signs
from index.engine import HashIndex, Item
from index.item_sources import FeatureSource, SourceStore, TextSource, features_source
from index.reencode import Reencoder
from index.store import Group
from service.settings import DEFAULT_BUNDLE

OLD_BITS = 16
TEXTS = ["a red apple", "a yellow lemon", "an acoustic guitar", "a black cat", "a sailing boat", "a steam train"]


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(DEFAULT_BUNDLE, threads=1)


def _old_index(server, name: str) -> HashIndex:
    """An index under another (made-up) bundle, as the one in service before a rollout."""
    centers = np.where(np.random.default_rng(0).random((4, OLD_BITS)) < 0.5, -1, 1).astype(np.int8)
    return HashIndex.open(server.client(), name, CodeSpace("oldbundle", OLD_BITS, centers, "v1"))


def _old_code(seed: int) -> np.ndarray:
    return pack_signs(to_signs(np.random.default_rng(seed).normal(size=(1, OLD_BITS))))[0]


def _fill_old(server, bundle, name: str) -> dict[str, object]:
    """Texts and image features kept as sources, one feature item of another space, one item with no source."""
    old, kept = _old_index(server, name), SourceStore(server.client(), name)
    images = np.random.default_rng(1).random((4, bundle.input_dim("image"))).astype(np.float32)
    sources: dict[str, object] = {f"txt:{i}": TextSource(text) for i, text in enumerate(TEXTS)}
    space = bundle.feature_space("image")
    sources |= {f"img:{i}": features_source(space, row) for i, row in enumerate(images)}
    sources["img:elsewhere"] = features_source("other-featurizer:0123", images[0])
    for modality, prefix in (("text", "txt:"), ("image", "img:")):
        kept.put(modality, {item: s for item, s in sources.items() if item.startswith(prefix)})
    ids = [*sources, "txt:no-source"]
    old.add(
        [
            Item(item, "text" if item.startswith("txt:") else "image", _old_code(n), {"n": n})
            for n, item in enumerate(ids)
        ]
    )
    return sources


def test_every_item_with_a_source_is_hashed_by_the_new_bundle_and_the_others_are_reported(any_redis, bundle) -> None:
    name = uuid.uuid4().hex
    sources = _fill_old(any_redis, bundle, name)
    source = _old_index(any_redis, name).store
    target = open_store(any_redis.client(), name, bundle)
    report = Reencoder(source, target, bundle).run()
    assert report.written == {"image": 4, "text": len(TEXTS)} and report.total == len(sources) + 1
    assert sorted(report.not_reencodable.values()) == [1, 1] and report.done == report.total
    assert any("another feature space" in reason for reason in report.not_reencodable)
    new = HashIndex.open(any_redis.client(), name, bundle.code_space)
    expected_text = bundle.packed_codes("text", bundle.text_features(TEXTS))
    for i in range(len(TEXTS)):
        stored = new.get(f"txt:{i}")
        assert stored.code == expected_text[i].tobytes() and stored.metadata == {"n": i}
    image = sources["img:2"]
    assert isinstance(image, FeatureSource)
    assert new.get("img:2").code == bundle.packed_codes("image", image.features[None].astype(np.float32))[0].tobytes()
    assert new.stored_modalities(["img:elsewhere", "txt:no-source"]) == {"img:elsewhere": None, "txt:no-source": None}


def test_a_stopped_pass_resumes_where_it_stopped(any_redis, bundle) -> None:
    name = uuid.uuid4().hex
    _fill_old(any_redis, bundle, name)
    source = _old_index(any_redis, name).store
    target = open_store(any_redis.client(), name, bundle)
    stop = threading.Event()
    first = Reencoder(source, target, bundle, chunk=2).run(on_chunk=lambda report: stop.set(), stop=stop)
    assert sum(first.written.values()) == 2 and first.done < first.total
    second = Reencoder(source, target, bundle, chunk=2).run()
    assert sum(second.present.values()) == 2
    assert sum(second.written.values()) == 4 + len(TEXTS) - 2 and second.done == second.total


def test_fill_neither_revives_a_deleted_item_nor_overwrites_a_newer_one(any_redis, bundle) -> None:
    name = uuid.uuid4().hex
    _fill_old(any_redis, bundle, name)
    old = _old_index(any_redis, name)
    source = old.store
    target = open_store(any_redis.client(), name, bundle)
    codes = bundle.packed_codes("text", bundle.text_features(["newer", "stale", "deleted"]))
    target.write([Group("text", ["txt:0"], np.zeros(1, np.int64), codes[:1], ['{"n": "newer"}'])])
    old.remove("txt:2")  # the service deleted it after the pass read it
    ids = ["txt:0", "txt:1", "txt:2"]
    written = target.fill([Group("text", ids, np.zeros(3, np.int64), codes, ['{"n": "stale"}'] * 3)], source)
    assert written == 1  # txt:1 only
    new = HashIndex.open(any_redis.client(), name, bundle.code_space)
    assert new.get("txt:0").metadata == {"n": "newer"} and new.get("txt:1").metadata == {"n": "stale"}
    assert new.stored_modalities(["txt:2"]) == {"txt:2": None}


def test_collection_items_are_re_encoded_from_their_files_and_manifest(any_redis, bundle, tmp_path: Path) -> None:
    name = uuid.uuid4().hex
    folder = tmp_path / "mine"
    (folder / "pics").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 20, 20)).save(folder / "pics" / "red.png")
    row = {"id": "r1", "image": "pics/red.png", "text": "a red square", "labels": ["shape"]}
    (folder / "manifest.jsonl").write_text(json.dumps(row) + "\n")
    collection_registry.register(any_redis.client(), name, "mine", folder / "manifest.jsonl")
    old = _old_index(any_redis, name)
    meta = {"collection": "mine", "image": "pics/red.png"}
    old.add([Item("img:r1", "image", _old_code(1), meta), Item("txt:r1", "text", _old_code(2), meta)])
    target = open_store(any_redis.client(), name, bundle)
    report = Reencoder(old.store, target, bundle).run()
    assert report.written == {"image": 1, "text": 1} and not report.not_reencodable
    new = HashIndex.open(any_redis.client(), name, bundle.code_space)
    pixels = bundle.decode_image(folder / "pics" / "red.png")
    assert new.get("img:r1").code == bundle.packed_codes("image", bundle.image_features(pixels[None]))[0].tobytes()
    text_code = bundle.packed_codes("text", bundle.text_features(["a red square"]))[0]
    assert new.get("txt:r1").code == text_code.tobytes()
