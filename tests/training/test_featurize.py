"""Featurizers: deterministic fixed-size image descriptors for any PNG mode, a saved text vocabulary, and
the items' short text views featurized like their texts."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.feature_extraction.text import CountVectorizer

from index.bundle.featurizers import (
    IMAGE_SIZE,
    TOKEN_PATTERN,
    BagOfWords,
    BagOfWordsParams,
    ImageDecodeError,
    ImageFeaturizer,
    load_pixels,
)
from index.bundle.manifest import BagOfWordsSpec, ImageDescriptorParams
from training.datasets.base import Split
from training.featurize.image_graph import ImageDescriptor, build_image_featurizer
from training.featurize.pipeline import FeatureSet
from training.featurize.text import fit_bag_of_words


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (40, 80), 30),
        Image.new("LA", (80, 40), (30, 255)),
        Image.new("RGB", (10, 10), (200, 10, 10)),
        Image.new("RGBA", (300, 120), (0, 0, 255, 255)),
        Image.new("P", (64, 64), 3),
        Image.new("I;16", (50, 50), 4000),
    ],
    ids=lambda im: im.mode,
)
def test_every_png_mode_decodes_to_a_fixed_rgb_block(image: Image.Image) -> None:
    pixels = load_pixels(_png_bytes(image))
    assert pixels.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and pixels.dtype == np.uint8


def test_transparency_becomes_white_and_aspect_is_kept() -> None:
    image = Image.new("RGBA", (64, 32), (255, 0, 0, 255))
    pixels = load_pixels(_png_bytes(image))
    assert pixels[:, 0, 0].tolist() == [255, 255, 255]  # padding above the wide image
    assert pixels[:, 32, 32].tolist() == [255, 0, 0]
    clear = load_pixels(_png_bytes(Image.new("RGBA", (8, 8), (0, 0, 0, 0))))
    assert (clear == 255).all()


def test_undecodable_bytes_raise_a_decode_error() -> None:
    with pytest.raises(ImageDecodeError):
        load_pixels(b"\x89PNG\r\n\x1a\n garbage")


@pytest.fixture(scope="module")
def featurizer() -> ImageFeaturizer:
    return build_image_featurizer()


def test_image_descriptor_is_deterministic_with_its_declared_dimension(featurizer: ImageFeaturizer) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (5, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    first, second = featurizer.transform(pixels), build_image_featurizer(featurizer.params).transform(pixels)
    assert first.shape == (5, featurizer.params.dim) and np.isfinite(first).all()
    assert np.array_equal(first, second)


def test_onnx_descriptor_matches_the_torch_definition(featurizer: ImageFeaturizer) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (3, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    reference = ImageDescriptor(featurizer.params)(torch.from_numpy(pixels)).detach().numpy()
    assert np.allclose(featurizer.transform(pixels), reference, atol=1e-5)


def test_descriptor_separates_different_drawings(featurizer: ImageFeaturizer) -> None:
    blank = np.full((1, 3, IMAGE_SIZE, IMAGE_SIZE), 255, dtype=np.uint8)
    stripes = blank.copy()
    stripes[:, :, :, ::4] = 0
    a, b = featurizer.transform(np.concatenate([blank, stripes]))
    assert np.linalg.norm(a - b) > 0.5


def test_descriptor_rejects_pixels_of_the_wrong_size(featurizer: ImageFeaturizer) -> None:
    with pytest.raises(ValueError, match="expected pixels of shape"):
        featurizer.transform(np.zeros((1, 3, 32, 32), dtype=np.uint8))


def test_params_survive_json() -> None:
    params = ImageDescriptorParams(grid=2)
    assert ImageDescriptorParams.model_validate_json(params.model_dump_json()) == params


TEXTS = ["A red car on the road", "red apple and green apple", "car", "Signs_and_symbols red car", "the blue"]


def test_vocabulary_is_fitted_with_stop_words_and_min_count() -> None:
    bow = fit_bag_of_words(TEXTS, BagOfWordsParams(min_count=2))
    assert bow.vocabulary == ["car", "red"]  # "the"/"and" are stop words; other words occur once


def test_bag_of_words_is_binary_or_counts() -> None:
    binary = fit_bag_of_words(TEXTS, BagOfWordsParams(min_count=1))
    counts = fit_bag_of_words(TEXTS, BagOfWordsParams(min_count=1, binary=False))
    apple = binary.vocabulary.index("apple")
    assert binary.transform(["apple apple"])[0, apple] == 1.0
    assert counts.transform(["apple apple"])[0, apple] == 2.0


def test_underscored_tags_split_into_words() -> None:
    bow = fit_bag_of_words(TEXTS, BagOfWordsParams(min_count=1))
    assert {"signs", "symbols"} <= set(bow.vocabulary)


def test_saved_vocabulary_reproduces_the_features() -> None:
    bow = fit_bag_of_words(TEXTS, BagOfWordsParams(min_count=1))
    restored = BagOfWords.from_spec(BagOfWordsSpec.model_validate_json(bow.spec().model_dump_json()))
    assert np.array_equal(restored.transform(TEXTS), bow.transform(TEXTS))
    assert restored.transform(["zzz unknown"]).sum() == 0


@pytest.mark.parametrize("binary", [True, False])
def test_serving_bag_of_words_gives_scikit_learns_features_for_a_fitted_vocabulary(binary: bool) -> None:
    """The service counts words without scikit-learn; on a fitted vocabulary it must equal CountVectorizer
    (lower-casing, the token pattern, underscores as spaces) exactly, so served codes equal trained ones."""
    corpus = [*TEXTS, "RED cars, red CAR!", "Ünïcode façade café 42 x y apple's", "red_car-car\tapple\nsigns"]
    bow = fit_bag_of_words(corpus, BagOfWordsParams(min_count=1, binary=binary))
    reference = CountVectorizer(
        token_pattern=TOKEN_PATTERN, stop_words="english", vocabulary=bow.vocabulary, binary=binary, dtype=np.float32
    ).transform([t.replace("_", " ") for t in corpus])
    assert np.array_equal(bow.transform(corpus), reference.toarray())


def test_text_views_are_featurized_like_the_texts_and_numbered_within_their_part() -> None:
    texts = ["red car", "green apple", "blue sky", "old house"]
    views = [["red", "car"], [], ["sky"], ["old house", "house"]]
    split = Split(query=np.array([1, 2]), database=np.array([0, 3]), train=np.array([0, 3]))
    bow = fit_bag_of_words(texts, BagOfWordsParams(min_count=1))
    labels = np.eye(4, dtype=np.uint8)
    features = FeatureSet("toy", np.zeros((4, 2)), bow.transform(texts), labels, split, None, bow, views)
    train = features.views("train")
    assert train.item.tolist() == [0, 0, 1, 1]  # rows of the training part: items 0 and 3
    assert np.array_equal(train.features, bow.transform(["red", "car", "old house", "house"]))
    assert np.array_equal(train.features[2], features.text[3])  # a view equal to a text gets its features
    query = features.views("query")
    assert query.item.tolist() == [1]  # item 1 has no views; item 2 is the query part's second row
    assert FeatureSet("toy", np.zeros((4, 2)), features.text, labels, split, None, bow).views("train") is None
