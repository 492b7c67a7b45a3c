"""The model bundle: what a trainer writes is what the service reads, bit for bit, or nothing loads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from index.bundle import FORMAT_VERSION, BundleError, Manifest, load_bundle, read_manifest
from index.codes import to_signs
from service.settings import DEFAULT_BUNDLE
from tests.support.synthetic import as_feature_dataset, make_synthetic_crossmodal
from training.bundle.writer import write_bundle
from training.datasets.base import CrossModalDataset, seeded_split
from training.featurize.pipeline import featurize
from training.registry import TRAINERS

OLD_BUNDLE = DEFAULT_BUNDLE.parent / "bow-v1"  # the bag-of-words default before the pretrained encoders
WORDS = ["red", "car", "tree", "bird", "house", "blue", "green", "sun"]


def _raw_dataset(n: int = 120, seed: int = 0) -> CrossModalDataset:
    """Random pixels and word texts driven by two labels: enough to exercise raw featurizers."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, 2), dtype=np.uint8)
    labels[np.arange(n), rng.integers(0, 2, n)] = 1
    pixels = rng.integers(0, 256, (n, 3, 64, 64), dtype=np.uint8)
    texts = [" ".join(rng.choice(WORDS[4 * int(y[1]) : 4 * int(y[1]) + 4], 3)) for y in labels]
    return CrossModalDataset(
        name="toy-raw",
        images=pixels,
        texts=texts,
        labels=labels,
        label_names=["a", "b"],
        split=seeded_split(n, 20, None, seed),
        image_kind="pixels",
        text_kind="raw",
    )


def _feature_dataset() -> CrossModalDataset:
    return as_feature_dataset(make_synthetic_crossmodal(n=300))


@pytest.fixture(scope="module")
def raw_bundle(tmp_path_factory: pytest.TempPathFactory):
    features = featurize(_raw_dataset())
    hasher = TRAINERS["cca"](features, 8, 0, {})
    path = tmp_path_factory.mktemp("bundles") / "cca"
    write_bundle(path, hasher, features, {"note": "test"})
    return path, hasher, features


def test_bundle_encodes_raw_inputs_exactly_as_the_trainer(raw_bundle) -> None:
    path, hasher, features = raw_bundle
    bundle = load_bundle(path)
    dataset = _raw_dataset()
    query = dataset.split.query
    image_features = bundle.image_features(dataset.images[query])
    text_features = bundle.text_features([dataset.texts[i] for i in query])
    assert np.array_equal(image_features, features.image[query])
    assert np.array_equal(text_features, features.text[query])
    for modality, x in (("image", image_features), ("text", text_features)):
        assert np.array_equal(bundle.signs(modality, x), to_signs(hasher.encoders[modality].real_codes(x)))


def test_manifest_describes_what_serving_needs(raw_bundle) -> None:
    manifest = load_bundle(raw_bundle[0]).manifest
    assert manifest.format_version == 2 and manifest.method == "cca" and manifest.code_bits == 8
    assert manifest.modalities.text.featurizer.kind == "bag-of-words"
    assert manifest.modalities.text.featurizer.vocabulary
    assert manifest.modalities.image.featurizer.onnx == "image_featurizer.onnx"
    assert set(manifest.files) == {"image.onnx", "text.onnx", "image_featurizer.onnx", "centers.npy"}
    assert len(manifest.training.fingerprint) == 64
    assert manifest.semantic_index.source == "fitted on training codes, balanced (at most 1.5x the mean)"
    assert manifest.reranker is not None and manifest.reranker.kind == "asymmetric-code"  # ties by a real score


def test_packed_codes_use_faiss_bit_order(raw_bundle) -> None:
    bundle = load_bundle(raw_bundle[0])
    x = raw_bundle[2].text[:5]
    signs = bundle.signs("text", x)
    packed = bundle.packed_codes("text", x)
    assert packed.shape == (5, 1)
    assert all(((packed[i, 0] >> j) & 1) == (signs[i, j] > 0) for i in range(5) for j in range(8))


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for file in src.iterdir():
        (dst / file.name).write_bytes(file.read_bytes())
    return dst


def test_a_modified_file_refuses_to_load(raw_bundle, tmp_path: Path) -> None:
    bundle = _copy(raw_bundle[0], tmp_path / "tampered")
    data = bytearray((bundle / "text.onnx").read_bytes())
    data[-1] ^= 0xFF
    (bundle / "text.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"sha256 of text\.onnx does not match"):
        load_bundle(bundle)


def test_an_onnx_input_shape_that_disagrees_with_the_manifest_refuses_to_load(raw_bundle, tmp_path: Path) -> None:
    bundle = _copy(raw_bundle[0], tmp_path / "wrong-shape")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["modalities"]["text"]["input"]["dim"] += 1
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"text\.onnx takes"):
        load_bundle(bundle)


def test_missing_or_foreign_bundles_are_clear_errors(raw_bundle, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"manifest\.json is missing"):
        load_bundle(tmp_path)
    bundle = _copy(raw_bundle[0], tmp_path / "future")
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps(manifest | {"format_version": 99}))
    with pytest.raises(BundleError, match="format 99"):
        load_bundle(bundle)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (bundle / "image.onnx").unlink()
    with pytest.raises(BundleError, match=r"'image\.onnx' listed in the manifest is missing"):
        load_bundle(bundle)


def test_feature_only_bundles_say_they_cannot_take_raw_inputs(tmp_path: Path) -> None:
    features = featurize(_feature_dataset())
    write_bundle(tmp_path / "b", TRAINERS["lsh"](features, 16, 0, {}), features, {})
    bundle = load_bundle(tmp_path / "b")
    with pytest.raises(ValueError, match="cannot take raw text"):
        bundle.text_features(["a red car"])
    with pytest.raises(ValueError, match="cannot take raw images"):
        bundle.image_features(np.zeros((1, 3, 64, 64), np.uint8))
    with pytest.raises(ValueError, match=r"must have shape \(n, 40\)"):
        bundle.real_codes("image", np.zeros((1, 39)))
    with pytest.raises(ValueError, match="NaN or inf"):
        bundle.real_codes("image", np.full((1, 40), np.nan))


def test_a_learned_head_and_its_centers_travel_with_the_bundle(tmp_path: Path) -> None:
    features = featurize(_feature_dataset())
    hasher = TRAINERS["lsh"](features, 16, 0, {})
    hasher.head_bits, hasher.centers = 8, to_signs(np.random.default_rng(0).normal(size=(4, 8)))
    write_bundle(tmp_path / "b", hasher, features, {})
    bundle = load_bundle(tmp_path / "b")
    assert np.array_equal(bundle.centers, hasher.centers) and bundle.head_bits == 8
    assert bundle.manifest.semantic_index.model_dump() == {
        "head_bits": 8, "centers": "centers.npy", "k": 4, "source": "lsh head code"
    }  # fmt: skip


def test_methods_without_a_head_get_centers_fitted_on_their_training_codes(raw_bundle) -> None:
    path, _, features = raw_bundle
    bundle = load_bundle(path)
    assert bundle.head_bits == 8 and len(bundle.centers) == min(64, 2 * len(features.split.train))
    assert set(np.unique(bundle.centers)) <= {-1, 1}


def test_a_written_manifest_is_the_current_format_with_plain_fields(raw_bundle) -> None:
    raw = json.loads((raw_bundle[0] / "manifest.json").read_text())
    assert raw["format_version"] == FORMAT_VERSION == 2
    assert raw["semantic_index"]["head_bits"] == 8  # a number, where format 1 wrote the range [0, 8]
    assert Manifest.model_validate_json((raw_bundle[0] / "manifest.json").read_text()) == read_manifest(raw_bundle[0])


def test_a_format_1_manifest_reads_as_the_same_manifest_in_the_current_format(raw_bundle, tmp_path: Path) -> None:
    current = read_manifest(raw_bundle[0])
    bundle = _copy(raw_bundle[0], tmp_path / "v1")
    raw = json.loads((bundle / "manifest.json").read_text())
    raw["format_version"] = 1
    raw["semantic_index"]["head_bits"] = [0, raw["semantic_index"]["head_bits"]]
    (bundle / "manifest.json").write_text(json.dumps(raw))
    assert read_manifest(bundle) == current
    assert load_bundle(bundle).head_bits == 8
    raw["semantic_index"]["head_bits"] = 8  # a format-1 manifest holds the range, not the number
    (bundle / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"malformed: missing or wrong field 'semantic_index\.head_bits'"):
        load_bundle(bundle)


def test_the_committed_bag_of_words_bundle_is_format_1_and_loads_as_the_current_model() -> None:
    raw = json.loads((OLD_BUNDLE / "manifest.json").read_text())
    assert raw["format_version"] == 1 and raw["semantic_index"]["head_bits"] == [0, 64]
    bundle = load_bundle(OLD_BUNDLE)
    manifest = bundle.manifest
    assert manifest.format_version == 2 and manifest.semantic_index.head_bits == bundle.head_bits == 64
    assert (manifest.bundle_id, manifest.method, manifest.code_bits) == (raw["bundle_id"], "dsfh", 64)
    assert manifest.modalities.text.featurizer.vocabulary == raw["modalities"]["text"]["featurizer"]["vocabulary"]
    assert manifest.files == raw["files"] and manifest.training.history == raw["training"]["history"]


def test_the_committed_default_bundle_is_format_2_with_the_pretrained_featurizers_checked_by_sha256() -> None:
    bundle = load_bundle(DEFAULT_BUNDLE)
    image, text = bundle.manifest.modalities.image.featurizer, bundle.manifest.modalities.text.featurizer
    assert json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())["format_version"] == 2
    assert (image.kind, image.input_size, text.kind) == ("efficientnet-lite0", 224, "minilm-l6-v2")
    assert (bundle.input_dim("image"), bundle.input_dim("text")) == (1280, 384)
    for name in (image.onnx, text.onnx, text.tokenizer):
        assert name in bundle.manifest.files
    features = bundle.text_features(["zebra", "birthday cake"])
    assert features.shape == (2, 384) and np.allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)


def test_a_missing_or_different_featurizer_graph_is_an_error_saying_how_to_rebuild(tmp_path: Path) -> None:
    bundle = _copy(DEFAULT_BUNDLE, tmp_path / "pretrained")
    graph = bundle.joinpath(load_bundle(DEFAULT_BUNDLE).manifest.modalities.text.featurizer.onnx)
    graph.write_bytes(graph.read_bytes()[:-1] + b"x")
    with pytest.raises(BundleError, match=r"does not match the manifest.*deploy/bootstrap\.sh"):
        load_bundle(bundle)
    graph.unlink()
    with pytest.raises(BundleError, match=r"is missing; the pretrained featurizer files are built at set-up"):
        load_bundle(bundle)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: {"format_version": m["format_version"]}, "missing or wrong field 'modalities'"),
        (lambda m: m | {"code_bits": "64"}, "missing or wrong field 'code_bits'"),
        (lambda m: m | {"surprise": 1}, "missing or wrong field 'surprise'"),
        (lambda m: m | {"semantic_index": m["semantic_index"] | {"head_bits": [0, 8]}}, "'semantic_index.head_bits'"),
        (
            lambda m: m | {"modalities": m["modalities"] | {"text": m["modalities"]["text"] | {"featurizer": {}}}},
            "'modalities.text.featurizer'",
        ),
        (
            lambda m: m | {"modalities": m["modalities"] | {"image": m["modalities"]["text"]}},
            "'modalities.image.featurizer'",  # a bag of words cannot featurize images
        ),
        (lambda m: m | {"files": {"image.onnx": "not a sha256"}}, "'files.image.onnx'"),
    ],
    ids=["empty", "type", "unknown-field", "range-head", "no-featurizer-kind", "wrong-modality-kind", "sha256"],
)
def test_a_malformed_manifest_is_a_bundle_error_naming_the_field(raw_bundle, tmp_path: Path, change, message) -> None:
    bundle = _copy(raw_bundle[0], tmp_path / "malformed")
    raw = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps(change(raw)))
    with pytest.raises(BundleError, match="manifest.json is malformed: .*" + re.escape(message)):
        load_bundle(bundle)
