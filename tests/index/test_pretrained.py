"""The pretrained featurizers: deterministic ONNX export, parity with torch, masking, preprocessing, semantics."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from index.bundle.pretrained import IMAGE_DIM, IMAGE_SIZE, TEXT_DIM, ImageEncoder, TextEncoder, image_pixels
from training.featurize.pretrained_export import (
    LiteImageEncoder,
    export_image,
    export_text,
    load_minilm,
    minilm_tokenizer_json,
    quantize,
    sha256,
)

SENTENCES = ["a red apple", "fruit", "a car engine", "a black cat sleeping on a sofa in the afternoon sun"]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("graphs")
    export_image(folder / "image.onnx")
    export_text(folder / "text.onnx")
    (folder / "tokenizer.json").write_bytes(minilm_tokenizer_json())
    return folder


@pytest.fixture(scope="module")
def text_encoder(graphs: Path) -> TextEncoder:
    return TextEncoder(graphs / "text.onnx", (graphs / "tokenizer.json").read_bytes())


@pytest.fixture(scope="module")
def image_encoder(graphs: Path) -> ImageEncoder:
    return ImageEncoder(graphs / "image.onnx")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_export_is_byte_identical_from_run_to_run_and_warns_nothing(graphs: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_image(tmp_path / "image.onnx")
        export_text(tmp_path / "text.onnx")
    # What a user would see (Python hides DeprecationWarnings raised outside __main__): nothing, the
    # exporter's constant-folding notice being silenced.
    assert [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)] == []
    for name in ("image.onnx", "text.onnx"):
        assert sha256(tmp_path / name) == sha256(graphs / name), name


def test_quantising_logs_no_pre_processing_advice(graphs: Path, tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO):
        quantize(graphs / "text.onnx", tmp_path / "text.int8.onnx")
    # the quantizer logs through the root logger; other loggers' records are other threads' (in a whole
    # run, an earlier test's index follower may warn that its stopped Redis is gone)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "root"]
    assert (tmp_path / "text.int8.onnx").stat().st_size < (graphs / "text.onnx").stat().st_size / 3


def test_bulk_featurizing_reports_the_rows_of_each_graph_run(
    text_encoder: TextEncoder, image_encoder: ImageEncoder
) -> None:
    runs: dict[str, list[int]] = {"image": [], "text": []}
    pixels = np.zeros((5, 3, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    image_encoder.embed_pixels(pixels, batch=2, progress=runs["image"].append)
    text_encoder.embed_texts(SENTENCES, batch=3, progress=runs["text"].append)
    # texts run in groups of one token count: "a red apple" and "a car engine" (5 tokens), then the others
    assert runs == {"image": [2, 2, 1], "text": [2, 1, 1]}


def test_padding_does_not_change_a_sentence_embedding(text_encoder: TextEncoder) -> None:
    alone = text_encoder.embed_texts(["a red apple"])[0]
    # Padded to the longest sentence of the batch, and padded to the saved config's fixed 128 tokens.
    in_batch = text_encoder.embed_texts(SENTENCES)[0]
    tokens = text_encoder.tokens(["a red apple"])
    fixed = {k: np.pad(v, ((0, 0), (0, 128 - v.shape[1]))) for k, v in tokens.items()}
    padded_128 = text_encoder.session.run(None, fixed)[0][0]
    assert tokens["attention_mask"].shape[1] < len(text_encoder.tokens(SENTENCES)["attention_mask"][0])
    np.testing.assert_allclose(in_batch, alone, atol=1e-5)
    np.testing.assert_allclose(padded_128, alone, atol=1e-5)


def test_the_mask_matters_padding_tokens_would_change_the_embedding(text_encoder: TextEncoder) -> None:
    tokens = text_encoder.tokens(["a red apple"])
    unmasked = {
        k: np.pad(v, ((0, 0), (0, 64)), constant_values=1 if k == "attention_mask" else 0) for k, v in tokens.items()
    }
    assert (
        np.abs(text_encoder.session.run(None, unmasked)[0][0] - text_encoder.embed_texts(["a red apple"])[0]).max()
        > 0.05
    )


def test_texts_come_back_in_order_as_unit_vectors(text_encoder: TextEncoder) -> None:
    batch = text_encoder.embed_texts(SENTENCES, batch=2)
    assert batch.shape == (len(SENTENCES), TEXT_DIM) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    for sentence, row in zip(SENTENCES, batch, strict=True):
        np.testing.assert_allclose(row, text_encoder.embed_texts([sentence])[0], atol=1e-5)
    assert text_encoder.embed_texts([]).shape == (0, TEXT_DIM)


def test_text_onnx_matches_torch(text_encoder: TextEncoder) -> None:
    tokens = text_encoder.tokens(SENTENCES)
    with torch.no_grad():
        expected = load_minilm()(*(torch.from_numpy(tokens[k]) for k in ("input_ids", "attention_mask"))).numpy()
    assert np.abs(text_encoder.session.run(None, tokens)[0] - expected).max() < 1e-5


def test_sentence_similarity_follows_meaning(text_encoder: TextEncoder) -> None:
    apple, fruit, engine = text_encoder.embed_texts(["a red apple", "fruit", "a car engine"])
    assert apple @ fruit > apple @ engine + 0.1


def test_image_onnx_matches_torch(image_encoder: ImageEncoder) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    with torch.no_grad():
        expected = LiteImageEncoder()(torch.from_numpy(pixels)).numpy()
    features = image_encoder.embed_pixels(pixels, batch=2)
    assert features.shape == (3, IMAGE_DIM) and features.dtype == np.float32
    assert np.abs(features - expected).max() < 1e-4


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA", "I;16"])
def test_every_png_mode_becomes_an_rgb_block_on_white(mode: str) -> None:
    image = Image.new("RGBA", (40, 20), (255, 255, 255, 0))  # transparent canvas…
    image.paste((200, 30, 30, 255), (10, 5, 30, 15))  # …with an opaque red rectangle in the middle
    converted = image if mode == "RGBA" else image.convert(mode)
    pixels = image_pixels(_png(converted))
    assert pixels.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and pixels.dtype == np.uint8
    assert (pixels[:, 2, 2] == 255).all(), "transparent or white corner must be white"
    centre = pixels[:, IMAGE_SIZE // 2, IMAGE_SIZE // 2].astype(int)
    assert centre.max() - centre.min() == 0 if mode in {"L", "LA", "I;16"} else centre[0] > centre[1] + 100


def test_a_small_image_is_enlarged_to_fill_the_square() -> None:
    pixels = image_pixels(_png(Image.new("RGB", (60, 30), (0, 0, 255))))
    blue = (pixels[2] > 200) & (pixels[0] < 50)
    rows, cols = np.flatnonzero(blue.any(1)), np.flatnonzero(blue.any(0))
    assert cols.min() == 0 and cols.max() == IMAGE_SIZE - 1, "the long side spans the whole square"
    assert abs(len(rows) - IMAGE_SIZE // 2) <= 1, "aspect kept"


def test_images_from_bytes_equal_images_from_pixels(image_encoder: ImageEncoder) -> None:
    encoded = _png(Image.new("RGBA", (300, 200), (10, 200, 40, 255)))
    from_bytes = image_encoder.embed_images([encoded, encoded])
    np.testing.assert_array_equal(from_bytes, image_encoder.embed_images([image_pixels(encoded)] * 2))
    with pytest.raises(ValueError, match="uint8"):
        image_encoder.embed_images([np.zeros((3, 64, 64), np.uint8)])
