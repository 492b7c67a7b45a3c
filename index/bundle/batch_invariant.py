"""The int8 MiniLM graph rewritten so that a batch of texts gives each text the features it gets alone.

The shipped graph quantises each matrix product's input dynamically (``DynamicQuantizeLinear``): one
scale and zero point for the whole tensor, so a text run beside others is quantised by the others'
range too, and its features change (604 of 1,000 query codes differed; ``pretrained.TEXT_BATCH``). Here
every ``DynamicQuantizeLinear`` becomes the same arithmetic per batch row (onnxruntime's own: range
widened to include 0, scale = range / 255, zero point and values rounded half to even and clamped), and
its ``MatMulInteger`` takes the row's zero point as an integer correction (``zp · Σ_k w[k, n]``, exact in
int32). And the mean pooling's sum over the tokens, which onnxruntime adds in another order for a batch
than for one row (measured: the only other node whose rows changed with the batch), becomes the last of
the running sums (``CumSum``): one token after the other, the order of one row's run. The file on disk
is unchanged (its sha256 is the manifest's); the rewrite is made at load time, and its parity with
one-text runs of the shipped graph, bit for bit, is a test (``tests/index/test_batch_invariant.py``).
The rewritten graph is slower for one text (the fused quantised products are lost), so a lone text
still runs through the shipped one.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_ROW_AXES = [1, 2]  # (batch, tokens, width): everything of one row but the batch


def _node(nodes: list, op: str, inputs: list[str], name: str, **attributes) -> str:
    nodes.append(helper.make_node(op, inputs, [name], **attributes))
    return name


def batch_invariant(model: bytes) -> bytes:
    """``model`` with per-row dynamic quantisation and token sums; the graph unchanged where it has neither."""
    proto = onnx.load_from_string(model)
    graph = proto.graph
    weights = {w.name: w for w in graph.initializer}
    constant_nodes = [n for n in graph.node if n.op_type == "Constant" and n.attribute[0].name == "value"]
    weights |= {n.output[0]: n.attribute[0].t for n in constant_nodes}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {
        "rq_zero": np.array(0.0, np.float32),
        "rq_levels": np.array(255.0, np.float32),
        "rq_one": np.array(1.0, np.float32),
        "rq_axis1": np.array(1, np.int64),
        "rq_last": np.array(-1, np.int64),
        "rq_rows": np.array([-1], np.int64),
    }
    corrections: dict[int, str] = {}  # id of a MatMulInteger → its row zero point (int32)
    rewritten: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "MatMulInteger" and id(node) in corrections:
            weight = numpy_helper.to_array(weights[node.input[1]]).astype(np.int64)
            weight_zero = numpy_helper.to_array(weights[node.input[3]]).astype(np.int64)
            final, sums = node.output[0], f"{node.output[0]}_rq_colsum"
            constants[sums] = (weight - weight_zero).sum(axis=0).astype(np.int32)
            node.input[2], node.output[0] = "", f"{final}_rq_raw"
            rewritten.append(node)
            correction = _node(rewritten, "Mul", [corrections[id(node)], sums], f"{final}_rq_corr")
            rewritten.append(helper.make_node("Sub", [node.output[0], correction], [final]))
            continue
        if node.op_type == "ReduceSum" and _is_token_axis(node, weights):
            _token_sum(rewritten, node)
            continue
        if node.op_type != "DynamicQuantizeLinear":
            rewritten.append(node)
            continue
        x, (quantized, scale_out, zero_out) = node.input[0], node.output
        p = f"{quantized}_rq"
        low = _node(rewritten, "Min", [_node(rewritten, "ReduceMin", [x], f"{p}_min", axes=_ROW_AXES), "rq_zero"],
                    f"{p}_low")  # fmt: skip
        high = _node(rewritten, "Max", [_node(rewritten, "ReduceMax", [x], f"{p}_max", axes=_ROW_AXES), "rq_zero"],
                     f"{p}_high")  # fmt: skip
        spread = _node(rewritten, "Div", [_node(rewritten, "Sub", [high, low], f"{p}_range"), "rq_levels"], f"{p}_s")
        flat = _node(rewritten, "Equal", [high, low], f"{p}_flat")
        scale = _node(rewritten, "Where", [flat, "rq_one", spread], scale_out)
        initial = _node(rewritten, "Neg", [_node(rewritten, "Div", [low, scale], f"{p}_lowq")], f"{p}_izp")
        zero = _node(rewritten, "Round", [_node(rewritten, "Clip", [initial, "rq_zero", "rq_levels"], f"{p}_czp")],
                     f"{p}_zp")  # fmt: skip
        row_scale = _node(rewritten, "Reshape", [scale, "rq_rows"], f"{p}_rs")
        row_zero = _node(rewritten, "Reshape", [_node(rewritten, "Cast", [zero], f"{p}_zpu", to=TensorProto.UINT8),
                                                "rq_rows"], f"{p}_rz")  # fmt: skip
        _node(rewritten, "QuantizeLinear", [x, row_scale, row_zero], quantized, axis=0)
        zero_int = _node(rewritten, "Cast", [zero], f"{p}_zpi", to=TensorProto.INT32)
        for product in consumers.get(zero_out, []):
            if product.op_type != "MatMulInteger" or product.input[2] != zero_out:
                raise ValueError(f"{zero_out} feeds a {product.op_type}, not a MatMulInteger's zero point")
            corrections[id(product)] = zero_int
    del graph.node[:]
    graph.node.extend(rewritten)
    graph.initializer.extend(numpy_helper.from_array(v, name=k) for k, v in constants.items())
    return proto.SerializeToString()


def _is_token_axis(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> bool:
    """A ReduceSum of the hidden states over their tokens: axis 1 alone, dropped (``keepdims=0``). The other
    sum over axis 1, the attention mask's token count (kept dims), adds 0s and 1s: exact in any order."""
    axes = weights.get(node.input[1]) if len(node.input) > 1 else None
    keep = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
    return axes is not None and not keep and numpy_helper.to_array(axes).tolist() == [1]


def _token_sum(nodes: list, node: onnx.NodeProto) -> None:
    """``node``'s sum over the tokens as the last of their running sums: added one token after the other,
    row by row (a transpose would be undone by onnxruntime's transpose optimiser)."""
    running = _node(nodes, "CumSum", [node.input[0], "rq_axis1"], f"{node.output[0]}_rq_running")
    _node(nodes, "Gather", [running, "rq_last"], node.output[0], axis=1)
