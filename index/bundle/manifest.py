"""The bundle manifest as one typed model: what the writer writes, the reader verifies and the service reports.

Format 2 (this one) has plain fields where format 1 had encodings: ``semantic_index.head_bits`` is the
number of head bits (format 1: the bit range ``[0, bits]``). Format 1 manifests are still read:
:class:`ManifestV1` validates them as written and :meth:`ManifestV1.upgrade` turns them into a
:class:`Manifest`, so no code past the reader sees the old shape.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PositiveInt,
    StringConstraints,
)

from index.codes import check_code_bits

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, FORMAT_VERSION)
MANIFEST = "manifest.json"
MODALITIES = ("image", "text")
IMAGE_SIZE = 64  # side of the square pixel block the image descriptor takes
# Names of the hash functions' graph input and output: the trainers' exporters write them, the reader feeds them.
INPUT_NAME = "features"
OUTPUT_NAME = "codes"

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
JsonObject = dict[str, JsonValue]
CodeBits = Annotated[int, AfterValidator(check_code_bits)]  # whole bytes: refused where a bundle is written


class _Strict(BaseModel):
    """Unknown fields are refused: a manifest that says more than this format knows is not this format."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageDescriptorParams(_Strict):
    """Parameters of the GIST-style image descriptor (``training/featurize/image_graph.py`` defines it)."""

    size: PositiveInt = IMAGE_SIZE
    grid: PositiveInt = 4
    wavelengths: tuple[float, ...] = (3.0, 6.0, 12.0)
    orientations: PositiveInt = 6
    color_bins: PositiveInt = 4
    background_threshold: float = 0.95  # gray level above which a pixel counts as background

    @property
    def dim(self) -> int:
        cells = self.grid * self.grid
        return len(self.wavelengths) * self.orientations * cells + self.color_bins**3 + 4 * cells


class BagOfWordsParams(_Strict):
    min_count: PositiveInt = 3  # a word must occur in at least this many training documents
    max_features: PositiveInt | None = 2000  # most frequent words kept
    binary: bool = True  # 1 if a word occurs (the literature's MIRFlickr tags are binary); else counts


class Precomputed(_Strict):
    """The modality takes feature vectors only: the bundle cannot featurize raw inputs."""

    kind: Literal["precomputed"] = "precomputed"


class ImageDescriptorSpec(_Strict):
    kind: Literal["gist-gabor-color"] = "gist-gabor-color"
    onnx: str = Field(description="bundle file of the descriptor graph: pixels (N, 3, S, S) → features")
    params: ImageDescriptorParams
    preprocess: str = "alpha composited on white, aspect-preserving fit into size×size, centred"


class BagOfWordsSpec(_Strict):
    kind: Literal["bag-of-words"] = "bag-of-words"
    params: BagOfWordsParams
    vocabulary: list[str] = Field(min_length=1, description="feature j counts the word vocabulary[j]")


class EfficientNetLite0Spec(_Strict):
    """Pretrained EfficientNet-Lite0 (ImageNet): pixels (N, 3, S, S) uint8 → 1280-d pooled features."""

    kind: Literal["efficientnet-lite0"] = "efficientnet-lite0"
    onnx: str = Field(description="bundle file of the graph; built at set-up, not committed (deploy/bootstrap.sh)")
    input_size: PositiveInt = 224
    normalisation: str = "(x - 127.5) / 128, inside the graph"
    preprocess: str = "alpha composited on white, small images enlarged, aspect-preserving fit into size×size, centred"


class MiniLMSpec(_Strict):
    """Pretrained all-MiniLM-L6-v2: text → 384-d attention-masked mean of the tokens, L2-normalised."""

    kind: Literal["minilm-l6-v2"] = "minilm-l6-v2"
    onnx: str = Field(description="bundle file of the graph: input_ids, attention_mask → features")
    tokenizer: str = Field(description="bundle file of the tokenizers-library tokenizer.json")
    max_tokens: PositiveInt = 256


ImageFeaturizerSpec = Annotated[Precomputed | ImageDescriptorSpec | EfficientNetLite0Spec, Field(discriminator="kind")]
TextFeaturizerSpec = Annotated[Precomputed | BagOfWordsSpec | MiniLMSpec, Field(discriminator="kind")]


class FeaturesInput(_Strict):
    kind: Literal["features"] = "features"
    dim: PositiveInt


class _Modality(_Strict):
    onnx: str = Field(description="bundle file of the hash function: features (N, dim) → real codes (N, bits)")
    input: FeaturesInput


class ImageModality(_Modality):
    featurizer: ImageFeaturizerSpec


class TextModality(_Modality):
    featurizer: TextFeaturizerSpec


class Modalities(_Strict):
    image: ImageModality
    text: TextModality

    def of(self, modality: str) -> ImageModality | TextModality:
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        return getattr(self, modality)


class SemanticIndex(_Strict):
    """The index's first level: ``k`` binary centers over the first ``head_bits`` bits of every code."""

    head_bits: PositiveInt
    centers: str = Field(description="bundle file of the centers, (k, head_bits) int8 in {−1, +1}")
    k: PositiveInt
    source: str = Field(description="the method's learned head, or centers fitted on the training codes")


class Reranker(_Strict):
    """The index's third step (``index/rerank.py``): the Hamming scan's top ``candidates`` (and the rest of
    their last tie group) re-ordered by the query's real code against each candidate's ±1 code."""

    kind: Literal["asymmetric-code"] = "asymmetric-code"
    candidates: PositiveInt = 100


class TrainingInfo(_Strict):
    dataset: str
    fingerprint: Sha256 = Field(description="sha256 over the training part's features and labels")
    items: int = Field(ge=0)
    config: JsonObject
    history: list[JsonObject]


class Manifest(_Strict):
    """Fields in the order a reader needs them: what each modality takes and the code space first (a
    manifest missing everything is reported by its ``modalities``), then identity and provenance."""

    format_version: Literal[2] = FORMAT_VERSION
    modalities: Modalities
    code_bits: CodeBits
    semantic_index: SemanticIndex
    reranker: Reranker | None = Field(default=None, description="absent: results in Hamming order")
    files: dict[str, Sha256] = Field(description="sha256 of every other file of the bundle")
    bundle_id: str
    method: str
    sign_rule: Literal["bit = 1 iff code > 0"] = "bit = 1 iff code > 0"
    bit_order: Literal["bit j in byte j // 8 at position j % 8 (FAISS binary layout)"] = (
        "bit j in byte j // 8 at position j % 8 (FAISS binary layout)"
    )
    created_at: AwareDatetime
    training: TrainingInfo
    metrics: JsonObject


class SemanticIndexV1(SemanticIndex):
    head_bits: tuple[Literal[0], PositiveInt]  # type: ignore[assignment]  # the bit range [0, bits)


class ManifestV1(Manifest):
    """A format-1 manifest as written; :meth:`upgrade` gives the current model."""

    format_version: Literal[1]  # type: ignore[assignment]
    semantic_index: SemanticIndexV1  # type: ignore[assignment]

    def upgrade(self) -> Manifest:
        head = self.semantic_index
        fields = dict(self) | {
            "format_version": FORMAT_VERSION,
            "semantic_index": SemanticIndex(**dict(head) | {"head_bits": head.head_bits[1]}),
        }
        return Manifest(**fields)
