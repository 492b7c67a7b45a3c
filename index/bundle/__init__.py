"""The versioned model bundle, the contract between trainers and serving: written by ``training.bundle``,
read by the index and the service. It lives in ``index`` so that serving never imports training code.

A bundle is a directory::

    manifest.json            the typed :class:`Manifest` (``manifest.py``): format version, method, code
                             length, modalities and their inputs, featurizers (parameters, vocabulary),
                             training fingerprint, metrics at export, semantic-index head, sha256 of
                             every other file
    image.onnx, text.onnx    hash function of each modality: ``features`` (N, d) → ``codes`` (N, bits),
                             the real code before sign
    image_featurizer.onnx    pixels (N, 3, S, S) float 0–255 → image features (raw-image datasets only)
    centers.npy              binary semantic-index centers (k, head bits) in {−1, +1}: the method's
                             learned head (UDDH), else centers fitted on the training codes

Arrays are ``.npy`` read with ``allow_pickle=False``; nothing in a bundle is pickled. Codes follow
``index.codes``: bit = 1 iff the real code is > 0, packed least-significant bit first (FAISS).
The reader and the featurizers it runs need numpy, onnx, onnxruntime and Pillow only (no torch).
"""

from index.bundle.manifest import FORMAT_VERSION, INPUT_NAME, MANIFEST, OUTPUT_NAME, Manifest
from index.bundle.reader import Bundle, BundleError, load_bundle, read_manifest

__all__ = [
    "FORMAT_VERSION",
    "INPUT_NAME",
    "MANIFEST",
    "OUTPUT_NAME",
    "Bundle",
    "BundleError",
    "Manifest",
    "load_bundle",
    "read_manifest",
]
