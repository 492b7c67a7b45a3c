"""A float64 hash function run in float32, each row whose code has a value near 0 run again in float64.

The numpy-defined hash functions are exported in float64 so that their signs are the trainer's
(``training.methods.onnx_model``), and that arithmetic was most of a feature batch's ingestion time
(68.7 ms of a 1,000-item batch's 113.8 ms, docs/ingestion.md). The same graph in float32 (made here at
load time; the bundle's file and id are unchanged) does the products at twice the width, but a sign can
move where a real value is within float32's error of 0: on the default bundle's 6,873 OpenClipart items
the largest error was 1.8e-4 (the RBF head's distance), and 8 of 1.76 M bits flipped, none of the
held-out split's (docs/batching.md). So a row with any value within :data:`MARGIN` of 0 (about 1 row in
10 there) is computed again by the float64 graph, and every bit is the float64 graph's: tested on all
6,873 items (``tests/index/test_float32.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

from index.bundle.manifest import INPUT_NAME

MARGIN = 1e-3  # 5x the largest float32 error measured on the default bundle's items (1.8e-4)


def float32_graph(model: bytes) -> bytes | None:
    """``model`` with every float64 weight, constant, cast and output in float32; None if its output is
    not float64 (nothing to narrow)."""
    proto = onnx.load_from_string(model)
    graph = proto.graph
    if any(value.type.tensor_type.elem_type != TensorProto.DOUBLE for value in graph.output):
        return None
    for weight in graph.initializer:
        if weight.data_type == TensorProto.DOUBLE:
            weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight).astype(np.float32), weight.name))
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.name == "to" and attribute.i == TensorProto.DOUBLE:
                attribute.i = TensorProto.FLOAT
            if attribute.name == "value" and attribute.t.data_type == TensorProto.DOUBLE:
                attribute.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attribute.t).astype(np.float32)))
    for value in graph.output:
        value.type.tensor_type.elem_type = TensorProto.FLOAT
    return proto.SerializeToString()


class Float32Hash:
    """The float32 session of a float64 hash function, giving real codes with the float64 graph's signs."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.rows_rechecked = 0  # rows run again in float64 (the tests and bench.hash_precision read it)

    def real_codes(self, x: np.ndarray, float64: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Real codes (n, bits) of finite float32 ``x`` (n, d) from the float32 graph, as float64; a row with
        a value within MARGIN of 0 is ``float64(rows)``'s, the float64 graph's own. So every sign is the
        float64 graph's, and every other value within float32's error of it (the re-ranker, which scores
        in float32, reads them)."""
        real = self.session.run(None, {INPUT_NAME: x})[0].astype(np.float64)
        doubtful = np.flatnonzero((np.abs(real) < MARGIN).any(axis=1))
        if doubtful.size:
            real[doubtful] = float64(x[doubtful])
            self.rows_rechecked += doubtful.size
        return real
