"""Serving-side runtime of the pretrained featurizers: onnxruntime + ``tokenizers``, no torch.

Image: any decodable image → :func:`image_pixels` (transparency on white, aspect kept, fitted to
``IMAGE_SIZE``; the one preprocessing used by training and serving alike) → the EfficientNet-Lite0 graph,
which normalises the uint8 pixels itself → 1280-d features. Text: the all-MiniLM-L6-v2 tokenizer
(lower-cased WordPiece, ``[CLS] … [SEP]``), padded to the longest text of the batch and truncated at
``MAX_TOKENS``, → the MiniLM graph, which mean-pools the tokens under the attention mask and
L2-normalises → 384-d. Texts of one token count run together through the graph's batch-invariant
rewrite (``batch_invariant``), which gives each the features of its run alone, bit for bit; a text
with no other of its length runs alone through the graph as shipped. The graphs are built by
``training.featurize.pretrained_export``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from index.bundle.batch_invariant import batch_invariant
from index.bundle.featurizers import load_pixels

IMAGE_SIZE = 224
IMAGE_DIM = 1280
TEXT_DIM = 384
IMAGE_INPUT = "pixels"
TEXT_INPUTS = ("input_ids", "attention_mask")
# Most texts of one token count per graph run. The shipped int8 graph quantises each run's activations
# with one dynamic scale, so a text batched with others got other features than alone (604 of 1,000 query
# codes differed); the batch-invariant rewrite quantises per text, so a batch now changes no bit (tested).
TEXT_BATCH = 32
# sentence-transformers' max_seq_length for this model; the saved tokenizer.json's 128 is only its padding.
MAX_TOKENS = 256
Progress = Callable[[int], object]  # told the rows each graph run did (a progress bar's update)


def image_pixels(source: str | Path | bytes, size: int = IMAGE_SIZE, max_pixels: int | None = None) -> np.ndarray:
    """A file path or encoded bytes → the (3, size, size) uint8 block the image graph takes.

    Small images are enlarged to fill the square (half of OpenClipart is under 224 pixels a side, and
    a CNN sees a thumbnail in a white field as a different picture). Raises ``ImageDecodeError``.
    """
    return load_pixels(source, size, max_pixels, upscale=True)


def _session(graph: str | Path | bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = graph if isinstance(graph, bytes) else str(graph)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class ImageEncoder:
    """EfficientNet-Lite0 through onnxruntime; ``size`` is read from the graph's input."""

    def __init__(self, graph: str | Path | bytes, threads: int = 1, max_pixels: int | None = None) -> None:
        self.session = _session(graph, threads)
        self.size = int(self.session.get_inputs()[0].shape[2])
        self.max_pixels = max_pixels

    def pixels(self, sources: Sequence[np.ndarray | bytes | str | Path]) -> np.ndarray:
        """Decode what needs decoding; a ready block must already be (3, size, size) uint8."""
        blocks = []
        for source in sources:
            block = source if isinstance(source, np.ndarray) else image_pixels(source, self.size, self.max_pixels)
            if block.shape != (3, self.size, self.size) or block.dtype != np.uint8:
                raise ValueError(f"pixels must be uint8 (3, {self.size}, {self.size}), got {block.dtype} {block.shape}")
            blocks.append(block)
        return np.stack(blocks) if blocks else np.zeros((0, 3, self.size, self.size), np.uint8)

    def embed_pixels(self, pixels: np.ndarray, batch: int = 32, progress: Progress | None = None) -> np.ndarray:
        """(n, 3, size, size) uint8 → (n, 1280) float32, ``batch`` images per graph run; ``progress(rows)``
        after each run (training's bulk featurizing takes minutes and shows a bar)."""
        if len(pixels) == 0:
            return np.zeros((0, IMAGE_DIM), np.float32)
        parts = []
        for start in range(0, len(pixels), batch):
            parts.append(self.session.run(None, {IMAGE_INPUT: pixels[start : start + batch]})[0])
            if progress is not None:
                progress(len(parts[-1]))
        return np.concatenate(parts).astype(np.float32, copy=False)

    def embed_images(self, sources: Sequence[np.ndarray | bytes | str | Path], batch: int = 32) -> np.ndarray:
        """Pixel blocks, encoded images or paths → (n, 1280) float32."""
        return self.embed_pixels(self.pixels(sources), batch)


class TextEncoder:
    """all-MiniLM-L6-v2 through onnxruntime; unit-length 384-d sentence embeddings."""

    def __init__(
        self, graph: str | Path | bytes, tokenizer_json: str | bytes, threads: int = 1, max_tokens: int = MAX_TOKENS
    ) -> None:
        model = graph if isinstance(graph, bytes) else Path(graph).read_bytes()
        self.session = _session(model, threads)  # one text a run: the fused graph is faster alone
        self.batch_session = _session(batch_invariant(model), threads)  # several texts of one length
        text = tokenizer_json.decode() if isinstance(tokenizer_json, bytes) else tokenizer_json
        self.tokenizer = Tokenizer.from_str(text)
        # The saved config pads every text to 128 tokens; padding is done here instead, per batch to its
        # own longest text (the attention mask makes both give the same embedding; this only saves work).
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_tokens)

    def tokens(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The graph's inputs for ``texts``: token ids and attention mask, (n, longest) int64, zero-padded."""
        return _padded([e.ids for e in self.tokenizer.encode_batch(list(texts))])

    def embed_texts(
        self, texts: Sequence[str], batch: int = TEXT_BATCH, progress: Progress | None = None
    ) -> np.ndarray:
        """Texts → (n, 384) float32 of L2 norm 1; ``progress(rows)`` after each graph run.

        Texts run in groups of one token count, at most ``batch`` a run, so no text is padded (a 3-word
        query never pays for a 200-token one); rows come back in the order given. Each text gets the
        features of its own run alone whatever its group, as it must for training, ingestion and queries
        to give one text the same code.
        """
        ids = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        by_length: dict[int, list[int]] = {}
        for row, tokens in enumerate(ids):
            by_length.setdefault(len(tokens), []).append(row)
        features = np.zeros((len(ids), TEXT_DIM), np.float32)
        for rows in by_length.values():
            for start in range(0, len(rows), batch):
                run = rows[start : start + batch]
                session = self.session if len(run) == 1 else self.batch_session
                features[run] = session.run(None, _padded([ids[r] for r in run]))[0]
                if progress is not None:
                    progress(len(run))
        return features


def _padded(ids: list[list[int]]) -> dict[str, np.ndarray]:
    longest = max((len(i) for i in ids), default=0)
    input_ids = np.zeros((len(ids), longest), np.int64)
    mask = np.zeros((len(ids), longest), np.int64)
    for row, tokens in enumerate(ids):
        input_ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}
