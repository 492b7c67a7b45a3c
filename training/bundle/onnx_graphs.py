"""ONNX graphs of the numpy-defined hash functions (kernel-linear and linear), computed in float64.

Input ``features`` (N, d) float32 → output ``codes`` (N, bits) float64, the real code before ``sign``.
The graph repeats the trainer's float64 arithmetic operation for operation, so onnxruntime's codes
carry the trainer's signs (parity is tested bit for bit); float64 output keeps tiny values from
rounding to an exact 0, which would change a sign.
"""

from __future__ import annotations

from functools import singledispatch

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from index.bundle.manifest import INPUT_NAME, OUTPUT_NAME
from training.methods.baselines import LinearHashFunction
from training.methods.kernel import KernelHashFunction

OPSET = 17


def _model(nodes: list, initializers: dict[str, np.ndarray], input_dim: int, bits: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "hash_function",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", input_dim])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.DOUBLE, ["batch", bits])],
        [numpy_helper.from_array(np.asarray(v), name=k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@singledispatch
def hash_function_graph(encoder: object) -> onnx.ModelProto:
    """The ONNX model of a trained encoder; trainers of new encoder kinds register theirs."""
    raise TypeError(f"no ONNX export for encoder type {type(encoder).__name__}")


@hash_function_graph.register
def _kernel(encoder: KernelHashFunction) -> onnx.ModelProto:
    # exp(−max(‖x‖² − 2 x·Aᵀ + ‖a‖², 0) / 2σ²) P + b, the order of RBFKernelMap.transform.
    anchors = encoder.kernel.anchors
    # Anchors are training rows, which come from float32 features: stored as float32 (half the bytes)
    # and cast back in the graph, exactly. Anything not float32-exact stays float64.
    compact = anchors.T.astype(np.float32)
    anchors_t = compact if np.array_equal(compact.astype(np.float64), anchors.T) else anchors.T.copy()
    # Bag-of-words anchors are small integers: for integer queries (our featurizer's counts) x·Aᵀ is an
    # integer below 2^24, exact in a float32 product, which reads half the bytes of a float64 one. The
    # query's matrix product is memory-bound, so this halves a text query's encoding time.
    integral = anchors_t.dtype == np.float32 and np.array_equal(anchors, np.round(anchors))
    integral = integral and float(np.abs(anchors).sum(1).max()) * 64 < 2**24
    product = (
        [helper.make_node("MatMul", [INPUT_NAME, "anchors_stored"], ["xa32"]),
         helper.make_node("Cast", ["xa32"], ["xa"], to=TensorProto.DOUBLE)]
        if integral
        else [helper.make_node("Cast", ["anchors_stored"], ["anchors_t"], to=TensorProto.DOUBLE),
              helper.make_node("MatMul", ["x", "anchors_t"], ["xa"])]
    )  # fmt: skip
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["x"], to=TensorProto.DOUBLE),
        helper.make_node("Mul", ["x", "x"], ["x2"]),
        helper.make_node("ReduceSum", ["x2", "axis1"], ["x_sq"], keepdims=1),
        *product,
        helper.make_node("Mul", ["xa", "two"], ["xa2"]),
        helper.make_node("Sub", ["x_sq", "xa2"], ["partial"]),
        helper.make_node("Add", ["partial", "anchor_sq"], ["d2_raw"]),
        helper.make_node("Max", ["d2_raw", "zero"], ["d2"]),
        helper.make_node("Div", ["d2", "minus_two_sigma_sq"], ["scaled"]),
        helper.make_node("Exp", ["scaled"], ["phi"]),
        helper.make_node("MatMul", ["phi", "projection"], ["projected"]),
        helper.make_node("Add", ["projected", "bias"], [OUTPUT_NAME]),
    ]
    initializers = {
        "axis1": np.array([1], dtype=np.int64),
        "anchors_stored": anchors_t,
        "two": np.array(2.0),
        "anchor_sq": (anchors * anchors).sum(1),
        "zero": np.array(0.0),
        "minus_two_sigma_sq": np.array(-2.0 * encoder.kernel.sigma**2),
        "projection": encoder.projection.astype(np.float64),
        "bias": encoder.bias.astype(np.float64),
    }
    return _model(nodes, initializers, encoder.input_dim, encoder.bits)


@hash_function_graph.register
def _linear(encoder: LinearHashFunction) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["x"], to=TensorProto.DOUBLE),
        helper.make_node("Sub", ["x", "mean"], ["centred"]),
        helper.make_node("MatMul", ["centred", "projection"], [OUTPUT_NAME]),
    ]
    initializers = {
        "mean": encoder.mean.astype(np.float64),
        "projection": encoder.projection.astype(np.float64),
    }
    return _model(nodes, initializers, encoder.input_dim, encoder.bits)
