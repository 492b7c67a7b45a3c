"""A GIST-style image descriptor over raw pixels, run through its ONNX graph (``image_graph.py``).

Descriptor of a (3, S, S) pixel block (values 0–255, background white):
- Gabor energy: the "ink" image (1 − gray) filtered by a quadrature Gabor bank (scales × orientations),
  energy ``sqrt(even² + odd²)`` averaged on a grid × grid layout, the block L2-normalised;
- colour: a joint RGB histogram (``bins``³), L1-normalised then square-rooted (Hellinger), so the
  white background does not drown the colours;
- layout: per grid cell, mean RGB and the fraction of non-background pixels.

Training and serving run the *same* ONNX graph with onnxruntime, so image features (and hence codes)
are bit-identical between the trainer and the service; the graph is also what a bundle ships.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort

from training.featurize.pixels import IMAGE_SIZE

_BATCH = 256


@dataclass(frozen=True)
class ImageDescriptorParams:
    size: int = IMAGE_SIZE
    grid: int = 4
    wavelengths: tuple[float, ...] = (3.0, 6.0, 12.0)
    orientations: int = 6
    color_bins: int = 4
    background_threshold: float = 0.95  # gray level above which a pixel counts as background

    @property
    def dim(self) -> int:
        cells = self.grid * self.grid
        return len(self.wavelengths) * self.orientations * cells + self.color_bins**3 + 4 * cells

    def to_json(self) -> dict:
        return {**asdict(self), "wavelengths": list(self.wavelengths)}

    @classmethod
    def from_json(cls, data: dict) -> ImageDescriptorParams:
        return cls(**{**data, "wavelengths": tuple(data["wavelengths"])})


class ImageFeaturizer:
    """Runs the descriptor's ONNX graph; the same bytes go into the model bundle."""

    def __init__(self, params: ImageDescriptorParams | None = None, onnx_bytes: bytes | None = None) -> None:
        self.params = params or ImageDescriptorParams()
        if onnx_bytes is None:  # torch is needed only to build the graph, never to run it
            from training.featurize.image_graph import export_descriptor_onnx

            onnx_bytes = export_descriptor_onnx(self.params)
        self.onnx_bytes = onnx_bytes
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self._session = ort.InferenceSession(self.onnx_bytes, options, providers=["CPUExecutionProvider"])

    @property
    def dim(self) -> int:
        return self.params.dim

    def transform(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) uint8 or float pixels → (N, dim) float32 features."""
        pixels = np.asarray(pixels)
        expected = (3, self.params.size, self.params.size)
        if pixels.ndim != 4 or pixels.shape[1:] != expected:
            raise ValueError(
                f"expected pixels of shape (n, {expected[0]}, {expected[1]}, {expected[2]}), got {pixels.shape}"
            )
        out = np.empty((len(pixels), self.dim), dtype=np.float32)
        for start in range(0, len(pixels), _BATCH):
            batch = pixels[start : start + _BATCH].astype(np.float32)
            out[start : start + _BATCH] = self._session.run(None, {"pixels": batch})[0]
        return out
