"""What every hash function's ONNX graph shares: its opset, its input and output, and the model around it.

Each encoder class exports its own graph (``onnx_graph()``: ``kernel``, ``baselines``, ``deep``). The
numpy-defined ones repeat the trainer's float64 arithmetic operation for operation, so onnxruntime's codes
carry the trainer's signs (parity is tested bit for bit); float64 output keeps tiny values from rounding
to an exact 0, which would change a sign.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from index.bundle.manifest import INPUT_NAME, OUTPUT_NAME

OPSET = 17


def hash_function_model(nodes: list, initializers: dict[str, np.ndarray], input_dim: int, bits: int) -> onnx.ModelProto:
    """A checked ONNX model of a hash function: ``features`` float32 (batch, ``input_dim``) → ``codes``
    float64 (batch, ``bits``), the real code before ``sign``, computed by ``nodes`` over ``initializers``."""
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
