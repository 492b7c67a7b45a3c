"""Load a bundle, refusing anything tampered with or inconsistent, and encode queries with it."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from pydantic import ValidationError

from index.bundle.featurizers import BagOfWords, ImageFeaturizer, load_pixels
from index.bundle.float32 import Float32Hash, float32_graph
from index.bundle.manifest import (
    FORMAT_VERSION,
    INPUT_NAME,
    MANIFEST,
    MODALITIES,
    READABLE_VERSIONS,
    BagOfWordsSpec,
    EfficientNetLite0Spec,
    ImageDescriptorSpec,
    Manifest,
    ManifestV1,
    MiniLMSpec,
)
from index.bundle.pretrained import ImageEncoder, TextEncoder, image_pixels
from index.code_space import CodeSpace
from index.codes import pack_signs, to_signs

_ERRORS_SHOWN = 10  # validation problems a BundleError names (a long vocabulary can have thousands)
REBUILD_HINT = (
    "the pretrained featurizer files are built at set-up, not committed: run deploy/bootstrap.sh "
    "(or `python -m training featurizers BUNDLE`) to build them into the bundle"
)


class BundleError(ValueError):
    """A bundle cannot be loaded: missing, tampered with, or inconsistent with its manifest."""


def _session(model: bytes, name: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for invalid models
        raise BundleError(f"{name} is not a valid ONNX model: {exc}") from exc


def _static_dim(arg: ort.NodeArg) -> list[int | str | None]:
    return list(arg.shape)


class _SparseProduct:
    """A hash function whose input first meets an integer float32 matrix (the kernel graph's bag-of-words
    path: ``MatMul(features, anchors)``), with that product computed over the input's non-zero columns only.

    Integers are exact in float32 up to 2^24, so for an integer input small enough that no product or
    partial sum exceeds that, every summation order gives the MatMul's result bit for bit; the rest of
    the graph runs in onnxruntime as exported. A text query has a handful of words out of ~900, so this
    skips reading the whole matrix (5 MB at 1,500 anchors), most of onnxruntime's time per query.
    """

    def __init__(self, matrix: np.ndarray, product: str, rest: ort.InferenceSession) -> None:
        self.matrix = matrix
        self.product = product
        self.rest = rest
        self.max_input = 2.0**24 / max(float(np.abs(matrix).sum(0).max()), 1.0)

    @classmethod
    def split(cls, model: bytes, name: str, threads: int) -> _SparseProduct | None:
        """The graph cut at its input's integer matrix product; None when it has no such product."""
        proto = onnx.load_from_string(model)
        graph = proto.graph
        weights = {w.name: w for w in graph.initializer if w.data_type == onnx.TensorProto.FLOAT}
        for node in graph.node:
            if node.op_type != "MatMul" or node.input[0] != INPUT_NAME or node.input[1] not in weights:
                continue
            weight = weights[node.input[1]]
            matrix = numpy_helper.to_array(weight)
            shared = sum(weight.name in n.input for n in graph.node) > 1
            if matrix.ndim != 2 or shared or not np.array_equal(matrix, np.round(matrix)):
                continue
            graph.node.remove(node)
            graph.initializer.remove(weight)
            shape = ["batch", matrix.shape[1]]
            graph.input.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, shape))
            return cls(matrix, node.output[0], _session(proto.SerializeToString(), name, threads))
        return None

    def real_codes(self, x: np.ndarray) -> np.ndarray | None:
        """Real codes of ``x`` (n, d), finite float32; None unless its non-zero values are integers small
        enough for an exact product (then the whole graph must run)."""
        columns = x.any(axis=0).nonzero()[0]
        values = x[:, columns]
        if not (abs(values).max(initial=0) <= self.max_input and (values.round() == values).all()):
            return None
        return self.rest.run(None, {INPUT_NAME: x, self.product: values @ self.matrix[columns]})[0]


class Bundle:
    """A verified bundle: its manifest, ONNX sessions per modality, featurizers and head centers."""

    def __init__(self, path: Path, manifest: Manifest, files: dict[str, bytes], threads: int = 0) -> None:
        self.path = path
        self.manifest = manifest
        self.bits: int = manifest.code_bits
        self.sessions = {}
        self._sparse: dict[str, _SparseProduct | None] = {}
        self._float32: dict[str, Float32Hash | None] = {}  # signs of a dense float64 graph, run in float32
        for modality in MODALITIES:
            spec = manifest.modalities.of(modality)
            session = _session(files[spec.onnx], spec.onnx, threads)
            inputs, outputs = session.get_inputs(), session.get_outputs()
            expected_in, expected_out = ["batch", spec.input.dim], ["batch", self.bits]
            if len(inputs) != 1 or _static_dim(inputs[0]) != expected_in:
                raise BundleError(f"{spec.onnx} takes {_static_dim(inputs[0])}, manifest says {expected_in}")
            if len(outputs) != 1 or _static_dim(outputs[0]) != expected_out:
                raise BundleError(f"{spec.onnx} gives {_static_dim(outputs[0])}, manifest says {expected_out}")
            self.sessions[modality] = session
            self._sparse[modality] = _SparseProduct.split(files[spec.onnx], spec.onnx, threads)
            narrowed = float32_graph(files[spec.onnx]) if self._sparse[modality] is None else None
            self._float32[modality] = None if narrowed is None else Float32Hash(_session(narrowed, spec.onnx, threads))
        text = manifest.modalities.text.featurizer
        self.text_featurizer: BagOfWords | TextEncoder | None = None
        if isinstance(text, BagOfWordsSpec):
            self.text_featurizer = BagOfWords.from_spec(text)
        elif isinstance(text, MiniLMSpec):
            self.text_featurizer = TextEncoder(files[text.onnx], files[text.tokenizer], threads, text.max_tokens)
        image = manifest.modalities.image.featurizer
        self.image_featurizer: ImageFeaturizer | ImageEncoder | None = None
        if isinstance(image, ImageDescriptorSpec):
            self.image_featurizer = ImageFeaturizer(image.params, files[image.onnx])
        elif isinstance(image, EfficientNetLite0Spec):
            self.image_featurizer = ImageEncoder(files[image.onnx], threads)
            if self.image_featurizer.size != image.input_size:
                raise BundleError(
                    f"{image.onnx} takes {self.image_featurizer.size} pixels, manifest says {image.input_size}"
                )
        index = manifest.semantic_index
        self.centers: np.ndarray = np.load(io.BytesIO(files[index.centers]), allow_pickle=False)
        self.head_bits: int = index.head_bits
        if self.centers.shape != (index.k, self.head_bits):
            raise BundleError(f"centers of shape {self.centers.shape} do not fit a {self.head_bits}-bit head")
        self._feature_spaces = {modality: self._feature_space(modality) for modality in MODALITIES}
        reranker = manifest.reranker
        try:
            self.code_space = CodeSpace(self.bundle_id, self.bits, self.centers, self.centers_version,
                                        None if reranker is None else reranker.candidates)  # fmt: skip
        except ValueError as exc:
            raise BundleError(f"the manifest's code space: {exc}") from exc

    @property
    def centers_version(self) -> str:
        """Identifies the centers shipped in the bundle (the index stores it beside its own)."""
        return f"{self.bundle_id}:{self.manifest.semantic_index.source}"

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    @property
    def method(self) -> str:
        return self.manifest.method

    def input_dim(self, modality: str) -> int:
        return self.manifest.modalities.of(modality).input.dim

    def feature_space(self, modality: str) -> str:
        """Names the space of a modality's feature vectors: its featurizer's spec, the sha256 of the files it
        runs and the dimension. Two bundles with the same name take each other's features (a stored feature
        vector can be hashed again by a new bundle only then). Computed once: ingestion asks per item."""
        return self._feature_spaces[modality]

    def _feature_space(self, modality: str) -> str:
        spec = self.manifest.modalities.of(modality)
        featurizer = spec.featurizer
        files = [self.manifest.files.get(getattr(featurizer, name, None) or "", "") for name in ("onnx", "tokenizer")]
        described = f"{featurizer.model_dump_json()}|{'|'.join(files)}|{spec.input.dim}"
        return f"{featurizer.kind}:{hashlib.sha256(described.encode()).hexdigest()[:16]}"

    def _checked(self, modality: str, features: np.ndarray) -> np.ndarray:
        """Feature vectors as the hash function takes them: (N, d) finite float32; ValueError otherwise."""
        if modality not in self.sessions:
            raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.input_dim(modality):
            raise ValueError(f"{modality} features must have shape (n, {self.input_dim(modality)}), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{modality} features contain NaN or inf")
        return x

    def real_codes(self, modality: str, features: np.ndarray) -> np.ndarray:
        """Run a modality's hash function on feature vectors (N, d) → real codes (N, bits)."""
        x = self._checked(modality, features)
        sparse, narrowed = self._sparse[modality], self._float32[modality]
        real = sparse.real_codes(x) if sparse is not None else None
        if real is not None:
            return real
        if narrowed is not None:  # the float32 twin, with the float64 graph's signs
            return narrowed.real_codes(x, lambda rows: self.sessions[modality].run(None, {INPUT_NAME: rows})[0])
        return self.sessions[modality].run(None, {INPUT_NAME: x})[0]

    def signs(self, modality: str, features: np.ndarray) -> np.ndarray:
        return to_signs(self.real_codes(modality, features))

    def packed_codes(self, modality: str, features: np.ndarray) -> np.ndarray:
        return pack_signs(self.signs(modality, features))

    def text_features(self, texts: Sequence[str]) -> np.ndarray:
        if self.text_featurizer is None:
            raise ValueError("this bundle was trained on precomputed text features: it cannot take raw text")
        if isinstance(self.text_featurizer, TextEncoder):
            return self.text_featurizer.embed_texts(texts)
        return self.text_featurizer.transform(texts)

    def decode_image(self, source: str | Path | bytes, max_pixels: int | None = None) -> np.ndarray:
        """An encoded image → the pixel block this bundle's image featurizer takes; ``ImageDecodeError``
        on anything undecodable or over ``max_pixels``."""
        if isinstance(self.image_featurizer, ImageEncoder):
            return image_pixels(source, self.image_featurizer.size, max_pixels)
        if self.image_featurizer is None:
            raise ValueError("this bundle was trained on precomputed image features: it cannot take raw images")
        return load_pixels(source, self.image_featurizer.params.size, max_pixels)

    def image_features(self, pixels: np.ndarray) -> np.ndarray:
        """Pixel blocks from :meth:`decode_image` (n, 3, S, S) uint8 → features."""
        if self.image_featurizer is None:
            raise ValueError("this bundle was trained on precomputed image features: it cannot take raw images")
        if isinstance(self.image_featurizer, ImageEncoder):
            return self.image_featurizer.embed_pixels(pixels)
        return self.image_featurizer.transform(pixels)


def read_manifest(path: str | Path) -> Manifest:
    """The validated manifest of the bundle at ``path`` (a format-1 one upgraded); BundleError if it is
    missing, not JSON, of an unknown format or malformed. The files it lists are not checked here."""
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"no bundle at {path}: {MANIFEST} is missing")
    try:
        text = manifest_path.read_text(encoding="utf-8")
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from exc
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version not in READABLE_VERSIONS:
        raise BundleError(f"bundle format {version!r} is not {FORMAT_VERSION} (or an older one this reader upgrades)")
    try:  # strict: a number written as a string, or any other coercion, is a malformed manifest
        if version == 1:
            return ManifestV1.model_validate_json(text, strict=True).upgrade()
        return Manifest.model_validate_json(text, strict=True)
    except ValidationError as exc:
        problems = [f"missing or wrong field {'.'.join(map(str, e['loc']))!r} ({e['msg']})" for e in exc.errors()]
        more = f"; and {len(problems) - _ERRORS_SHOWN} more" if len(problems) > _ERRORS_SHOWN else ""
        raise BundleError(f"{manifest_path} is malformed: {'; '.join(problems[:_ERRORS_SHOWN])}{more}") from exc


def pretrained_files(manifest: Manifest) -> list[str]:
    """The bundle files of its pretrained featurizers (built at set-up rather than committed)."""
    image, text = manifest.modalities.image.featurizer, manifest.modalities.text.featurizer
    names = [image.onnx] if isinstance(image, EfficientNetLite0Spec) else []
    return names + ([text.onnx, text.tokenizer] if isinstance(text, MiniLMSpec) else [])


def load_bundle(path: str | Path, threads: int = 0) -> Bundle:
    """Read and verify a bundle: format version, sha256 of every file, ONNX shapes vs the manifest.

    ``threads`` caps onnxruntime's intra-op threads (0: one per core). A server answering one query
    per request thread wants 1, so requests do not contend for cores inside one matrix product.
    """
    path = Path(path)
    manifest = read_manifest(path)
    image = manifest.modalities.image.featurizer
    built = pretrained_files(manifest)
    files: dict[str, bytes] = {}
    for name, expected in manifest.files.items():
        file = path / name
        hint = f"; {REBUILD_HINT}" if name in built else ""
        if Path(name).name != name or not file.is_file():
            raise BundleError(f"bundle file {name!r} listed in the manifest is missing{hint}")
        data = file.read_bytes()
        if hashlib.sha256(data).hexdigest() != expected:
            raise BundleError(f"sha256 of {name} does not match the manifest: the bundle was modified{hint}")
        files[name] = data
    referenced = [manifest.modalities.of(m).onnx for m in MODALITIES] + [manifest.semantic_index.centers]
    referenced += [image.onnx] if isinstance(image, ImageDescriptorSpec) else []
    referenced += built
    unlisted = [name for name in referenced if name not in files]
    if unlisted:
        raise BundleError(f"bundle files {unlisted} are not covered by the manifest's sha256 list")
    return Bundle(path, manifest, files, threads)
