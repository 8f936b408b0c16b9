"""What ONNX Runtime really runs: its optimized graph, its op counts, and the float islands left in it.

A Q/DQ file is a promise, not a plan: ONNX Runtime's graph optimizer turns DequantizeLinear → op →
QuantizeLinear into an integer kernel (QLinearConv, QLinearMul, QLinearSigmoid, …) only where it has one and
the Q/DQ parameters fit its rules. What it cannot fuse stays a *round trip*: a DequantizeLinear into float,
one or more float ops, a QuantizeLinear back into int8, each a full pass over the tensor. Those are where an
int8 file loses the speed its integer convs win, so we count them on the graph the runtime wrote, not on ours.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import onnx

from ..ort import optimized_graph

__all__ = ["optimized_graph", "op_counts", "is_integer_kernel", "RoundTrips", "round_trips", "round_trips_text",
           "why_float"]

INTEGER_PREFIXES = ("QLinear", "QGemm", "MatMulInteger", "ConvInteger", "NhwcMaxPool", "QAttention",
                    "DynamicQuantize")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# ops ONNX Runtime CPU runs on 8-bit data when Q/DQ surround them as its optimizer wants (fused into a QLinear
# kernel, or run on uint8 with the Q/DQ dropped); anything else between int8 ops is a round trip whatever we do
RUNS_IN_INT8 = frozenset({"Conv", "Gemm", "MatMul", "Add", "Mul", "Sigmoid", "LeakyRelu", "Softmax", "Concat",
                          "AveragePool", "GlobalAveragePool", "MaxPool", "Resize", "Slice", "Split", "Reshape",
                          "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Gather", "DepthToSpace", "SpaceToDepth",
                          "Relu", "Clip", "Where", "ArgMax", "Pad"})


def op_counts(graph: onnx.ModelProto | onnx.GraphProto) -> dict[str, int]:
    graph = graph.graph if isinstance(graph, onnx.ModelProto) else graph
    return dict(Counter(node.op_type for node in graph.node))


def is_integer_kernel(op_type: str) -> bool:
    return op_type.startswith(INTEGER_PREFIXES)


@dataclass
class RoundTrips:
    """Float islands entered from int8 (a DequantizeLinear of an activation) and left back into int8 (a
    QuantizeLinear): ``count`` islands, ``ops`` the float ops inside them by type, ``dequantize`` the
    DequantizeLinear nodes of activations left in the graph (each a pass over a tensor)."""

    count: int = 0
    ops: dict[str, int] = field(default_factory=dict)
    dequantize: int = 0

    def to_dict(self) -> dict:
        return {"count": self.count, "ops": dict(self.ops), "dequantize": self.dequantize}

    def text(self) -> str:
        return round_trips_text(self.to_dict())


def round_trips_text(trips: dict) -> str:
    """'2 round trip(s) DequantizeLinear → float → QuantizeLinear, through …' (or 'no round trip …'), from
    :meth:`RoundTrips.to_dict`: the one wording of the runs-as line, quantize's notes and the pipeline."""
    if not trips.get("count"):
        return "no round trip DequantizeLinear → float → QuantizeLinear"
    return (f"{trips['count']} round trip(s) DequantizeLinear → float → QuantizeLinear, through "
            f"{why_float(trips['ops'])}")


def why_float(ops: dict[str, int]) -> str:
    """'30 HardSigmoid (no integer kernel), 2 Mul (kept in float)': each float op type of the round trips, and why:
    ONNX Runtime CPU has no 8-bit kernel for it, or the placement or mixed precision kept it in float."""
    parts = [f"{v} {k} ({'kept in float' if k in RUNS_IN_INT8 else 'no integer kernel'})"
             for k, v in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))]
    return ", ".join(parts)


def round_trips(model: onnx.ModelProto) -> RoundTrips:
    """The round trips of an optimized graph (see the module docstring). Islands are connected groups of
    float nodes (anything but Q/DQ and integer kernels), joined through the tensors they pass each other.
    One counts when it reads a DequantizeLinear of a non-constant tensor and feeds a QuantizeLinear; float
    work before the first Q or after the last DQ (the graph's own float input and output) is not a trip."""
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def is_float(node: onnx.NodeProto) -> bool:
        return node.op_type not in QDQ_OPS and not is_integer_kernel(node.op_type)

    activation_dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in constants
                     and not _constant_chain(n.input[0], producer, constants)]
    seen: set[int] = set()
    trips = RoundTrips(dequantize=len(activation_dq))
    ops: Counter = Counter()
    for dq in activation_dq:
        for start in readers.get(dq.output[0], []):
            if id(start) in seen or not is_float(start):
                continue
            island, stack, quantized = [], [start], False
            seen.add(id(start))
            while stack:  # flood through float nodes, forwards and backwards along tensors
                node = stack.pop()
                island.append(node)
                neighbours = [r for out in node.output for r in readers.get(out, [])]
                neighbours += [producer[i] for i in node.input if i in producer]
                for other in neighbours:
                    if other.op_type == "QuantizeLinear" and other.input[0] in node.output:
                        quantized = True
                    if is_float(other) and id(other) not in seen:
                        seen.add(id(other))
                        stack.append(other)
            if quantized:
                trips.count += 1
                ops.update(n.op_type for n in island)
    trips.ops = dict(ops)
    return trips


def _constant_chain(name: str, producer: dict, constants: set[str]) -> bool:
    """True when ``name`` is computed from constants only (a weight's Q → DQ folded to a chain of constants)."""
    node = producer.get(name)
    if node is None:
        return name in constants
    return node.op_type == "QuantizeLinear" and node.input[0] in constants
