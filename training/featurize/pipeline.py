"""Dataset → feature matrices, with featurizers fitted on the training split only.

Raw sides are featurized with one of two featurizer sets: ``pretrained`` (EfficientNet-Lite0 and MiniLM
through the serving runtime, :mod:`training.featurize.pretrained`; OpenClipart's default) or ``classic``
(text: bag-of-words fitted on training texts; image: the descriptor graph); feature-matrix sides pass through.
Classic image descriptors of a pixel corpus are cached on disk, keyed by the descriptor graph and the pixel
bytes, since computing them takes about a minute on two cores.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from index.bundle.featurizers import BagOfWords, BagOfWordsParams, ImageDescriptorParams, ImageFeaturizer
from index.bundle.manifest import EfficientNetLite0Spec, Manifest, MiniLMSpec
from training.datasets.base import CrossModalDataset, Split, save_npy_atomically
from training.datasets.openclipart import CACHE_DIR
from training.featurize.pretrained import PretrainedImage, PretrainedText, pretrained_features, text_features
from training.featurize.text import fit_bag_of_words
from training.methods.base import TextViews

FEATURE_KINDS = ("classic", "pretrained")


@dataclass
class FeatureSet:
    """Features of every item of a dataset (rows aligned with its labels and split)."""

    dataset: str
    image: np.ndarray
    text: np.ndarray
    labels: np.ndarray
    split: Split
    image_featurizer: ImageFeaturizer | PretrainedImage | None
    text_featurizer: BagOfWords | PretrainedText | None
    text_views: list[list[str]] = field(default_factory=list)  # the dataset's, per item (raw datasets)

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image, text, labels) of the ``query``, ``database`` or ``train`` part."""
        rows = getattr(self.split, name)
        return self.image[rows], self.text[rows], self.labels[rows]

    def views(self, name: str) -> TextViews | None:
        """The text views of the ``query``, ``database`` or ``train`` part's items, featurized as their texts
        are (through the serving runtime for the pretrained featurizers), ``item`` counting rows of that
        part; None without views."""
        if not self.text_views or self.text_featurizer is None:
            return None
        strings, items = [], []
        for row, item in enumerate(getattr(self.split, name)):
            strings += self.text_views[item]
            items += [row] * len(self.text_views[item])
        if not strings:
            return None
        if isinstance(self.text_featurizer, PretrainedText):
            distinct = sorted(set(strings))  # many tags recur: each distinct string is encoded once
            at = {text: i for i, text in enumerate(distinct)}
            x = text_features(self.text_featurizer, distinct)[[at[text] for text in strings]]
        else:
            x = self.text_featurizer.transform(strings)
        return TextViews(x, np.asarray(items, dtype=np.int64))

    def describe(self) -> dict:
        return {
            "image_dim": self.image.shape[1],
            "text_dim": self.text.shape[1],
            "image_featurizer": _kind(self.image_featurizer, "efficientnet-lite0", "gist-gabor-color"),
            "text_featurizer": _kind(self.text_featurizer, "minilm-l6-v2", "bag-of-words"),
        }


def bundle_features_kind(manifest: Manifest) -> str:
    """The featurizer set a bundle was trained with, so that evaluating it featurizes the same way."""
    featurizers = (manifest.modalities.image.featurizer, manifest.modalities.text.featurizer)
    return "pretrained" if any(isinstance(f, EfficientNetLite0Spec | MiniLMSpec) for f in featurizers) else "classic"


def _kind(featurizer: object, pretrained: str, classic: str) -> str:
    if featurizer is None:
        return "precomputed"
    return pretrained if isinstance(featurizer, PretrainedImage | PretrainedText) else classic


def _image_features(featurizer: ImageFeaturizer, pixels: np.ndarray) -> np.ndarray:
    digest = hashlib.sha256(featurizer.onnx_bytes)
    digest.update(np.ascontiguousarray(pixels).data)
    path = CACHE_DIR / "image-features" / f"{digest.hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    features = featurizer.transform(pixels)
    save_npy_atomically(path, features)
    return features


def featurize(
    dataset: CrossModalDataset,
    text_params: BagOfWordsParams | None = None,
    image_params: ImageDescriptorParams | None = None,
    kind: str | None = None,
) -> FeatureSet:
    """Features of every item; ``kind`` (``classic`` or ``pretrained``) defaults to the dataset's own."""
    kind = kind or dataset.default_features
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown features {kind!r}; expected one of {FEATURE_KINDS}")
    if kind not in dataset.features_available:
        raise ValueError(f"{dataset.name} is featurized with {' or '.join(dataset.features_available)} features only")
    if kind == "pretrained" and dataset.image_kind == "pixels" and dataset.text_kind == "raw":
        image, text, pretrained_image, pretrained_text = pretrained_features(dataset)
        featurizers = (pretrained_image, pretrained_text)
        return FeatureSet(dataset.name, image, text, dataset.labels, dataset.split, *featurizers, dataset.text_views)
    image_featurizer = text_featurizer = None
    if dataset.image_kind == "pixels":
        from training.featurize.image_graph import build_image_featurizer  # torch, only for pixel corpora

        image_featurizer = build_image_featurizer(image_params)
        image = _image_features(image_featurizer, dataset.images)
    else:
        image = np.asarray(dataset.images, dtype=np.float32)
    if dataset.text_kind == "raw":
        train_texts = [dataset.texts[i] for i in dataset.split.train]
        text_featurizer = fit_bag_of_words(train_texts, text_params)
        text = text_featurizer.transform(dataset.texts)
    else:
        text = np.asarray(dataset.texts, dtype=np.float32)
    return FeatureSet(
        dataset=dataset.name,
        image=image,
        text=text,
        labels=dataset.labels,
        split=dataset.split,
        image_featurizer=image_featurizer,
        text_featurizer=text_featurizer,
        text_views=dataset.text_views if dataset.text_kind == "raw" else [],
    )
