"""The versioned model bundle: written by every trainer, read by the index and the service.

A bundle is a directory::

    manifest.json            format version, method, code length, modalities and their inputs,
                             featurizers (parameters, vocabulary), training fingerprint, metrics at
                             export, semantic-index head, sha256 of every other file
    image.onnx, text.onnx    hash function of each modality: ``features`` (N, d) → ``codes`` (N, bits),
                             the real code before sign
    image_featurizer.onnx    pixels (N, 3, S, S) float 0–255 → image features (raw-image datasets only)
    centers.npy              binary semantic-index centers (k, head bits) in {−1, +1}: the method's
                             learned head (UDDH), else centers fitted on the training codes

Arrays are ``.npy`` read with ``allow_pickle=False``; nothing in a bundle is pickled. Codes follow
``training.codes``: bit = 1 iff the real code is > 0, packed least-significant bit first (FAISS).

The reader is importable without torch (the service uses it); the writer is ``training.bundle.writer``.
"""

from training.bundle.format import FORMAT_VERSION
from training.bundle.reader import Bundle, BundleError, load_bundle

__all__ = ["FORMAT_VERSION", "Bundle", "BundleError", "load_bundle"]
