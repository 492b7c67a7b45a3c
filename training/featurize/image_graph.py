"""The GIST-style image descriptor defined in torch and exported once to ONNX (what a bundle ships).

Descriptor of a (3, S, S) pixel block (values 0–255, background white):
- Gabor energy: the "ink" image (1 − gray) filtered by a quadrature Gabor bank (scales × orientations),
  energy ``sqrt(even² + odd²)`` averaged on a grid × grid layout, the block L2-normalised;
- colour: a joint RGB histogram (``bins``³), L1-normalised then square-rooted (Hellinger), so the
  white background does not drown the colours;
- layout: per grid cell, mean RGB and the fraction of non-background pixels.

Training and serving run the *same* ONNX graph with onnxruntime (``index.bundle.featurizers``), so
image features (and hence codes) are bit-identical between the trainer and the service; torch is
needed only to build the graph, never to run it.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from index.bundle.featurizers import ImageDescriptorParams, ImageFeaturizer

_EPS = 1e-6


def _gabor_pair(wavelength: float, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Zero-mean even and odd Gabor kernels with σ = wavelength / 2 (one octave bandwidth)."""
    sigma = wavelength / 2
    half = math.ceil(2 * sigma)
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    rotated = x * math.cos(theta) + y * math.sin(theta)
    envelope = np.exp(-(x**2 + y**2) / (2 * sigma**2))
    even = envelope * np.cos(2 * math.pi * rotated / wavelength)
    even -= envelope * even.sum() / envelope.sum()
    odd = envelope * np.sin(2 * math.pi * rotated / wavelength)
    norm = np.sqrt((even**2).sum() + (odd**2).sum())
    return even / norm, odd / norm


class ImageDescriptor(nn.Module):
    """Pixels (N, 3, S, S) float in [0, 255] → descriptor (N, params.dim)."""

    def __init__(self, params: ImageDescriptorParams) -> None:
        super().__init__()
        self.params = params
        for s, wavelength in enumerate(params.wavelengths):
            pairs = [_gabor_pair(wavelength, math.pi * o / params.orientations) for o in range(params.orientations)]
            bank = np.stack([k for pair in pairs for k in pair])[:, None]  # (2·orientations, 1, k, k)
            self.register_buffer(f"bank{s}", torch.tensor(bank, dtype=torch.float32))
        self.register_buffer("bin_ids", torch.arange(params.color_bins**3, dtype=torch.float32))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        p = self.params
        rgb = pixels / 255.0
        gray = 0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]
        ink = 1.0 - gray
        energies = []
        for s in range(len(p.wavelengths)):
            bank = getattr(self, f"bank{s}")
            response = functional.conv2d(ink, bank, padding=bank.shape[-1] // 2)
            even, odd = response[:, 0::2], response[:, 1::2]
            energies.append(torch.sqrt(even * even + odd * odd + _EPS))
        gabor = functional.adaptive_avg_pool2d(torch.cat(energies, 1), p.grid).flatten(1)
        gabor = gabor / (gabor.norm(dim=1, keepdim=True) + _EPS)

        quantised = torch.clamp(torch.floor(rgb * p.color_bins), 0, p.color_bins - 1)
        bin_index = (quantised[:, 0] * p.color_bins + quantised[:, 1]) * p.color_bins + quantised[:, 2]
        onehot = (bin_index.flatten(1).unsqueeze(-1) == self.bin_ids).to(rgb.dtype)
        histogram = torch.sqrt(onehot.mean(1))

        foreground = (gray < p.background_threshold).to(rgb.dtype)
        layout = functional.adaptive_avg_pool2d(torch.cat([rgb, foreground], 1), p.grid).flatten(1)
        return torch.cat([gabor, histogram, layout], 1)


def export_descriptor_onnx(params: ImageDescriptorParams) -> bytes:
    """The descriptor as an ONNX model: input ``pixels`` (N, 3, S, S) float32, output ``features``."""
    module = ImageDescriptor(params).eval()
    example = torch.full((2, 3, params.size, params.size), 255.0)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript exporter: deprecated, not gone
        torch.onnx.export(
            module,
            (example,),
            buffer,
            input_names=["pixels"],
            output_names=["features"],
            dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return buffer.getvalue()


def build_image_featurizer(params: ImageDescriptorParams | None = None) -> ImageFeaturizer:
    """A featurizer running the freshly exported descriptor graph (default parameters unless given)."""
    params = params or ImageDescriptorParams()
    return ImageFeaturizer(params, export_descriptor_onnx(params))
