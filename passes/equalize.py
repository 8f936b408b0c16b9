"""Cross-layer equalization of an fp32 ONNX graph (Nagel et al. 2019, "Data-Free Quantization", §4.1).

For two layers A → f → B, where f is positively homogeneous channel by channel (f(s·x) = s·f(x) for s > 0:
ReLU, LeakyReLU, PReLU, max and average pooling, no op at all), channel i of A's output can be divided by
s_i > 0 and B's weights reading that channel multiplied by s_i without changing B's output:

    B(W_B · diag(s)) ∘ f ∘ (diag(s)⁻¹ · A)  =  B ∘ f ∘ A.

With r_A,i = max |W_A[i, …]| (A's output channel i) and r_B,i = max |W_B[:, i, …]| (B's weights on input
channel i), the choice s_i = √(r_A,i / r_B,i) makes both ranges √(r_A,i · r_B,i): channels whose weights a
single scale would crush are lifted at the other layer's expense. A's bias channel divides by s_i too. Chains
of three or more layers are equalized pair by pair, in sweeps, until no scale moves by more than 0.1 %.

Activations that are not positively homogeneous break the identity and end a chain (they are reported):
Clip/ReLU6 clips at a fixed bound (ReLU6(x/s) ≠ ReLU6(x)/s), HardSwish/HardSigmoid/Sigmoid/Tanh/SiLU are
curved, and an Add or Concat shares the channel with another path that is not scaled.

The graph computes the same function afterwards up to float rounding; the tensors between A and B change
scale per channel, so their quantization ranges must be measured again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from .onnx_graph import GraphIndex, attributes

# f(s·x) = s·f(x) per channel for s > 0 (PReLU's slope and LeakyReLU's alpha are untouched by the scale)
HOMOGENEOUS = frozenset({"Relu", "LeakyRelu", "PRelu", "MaxPool", "AveragePool", "Identity", "Dropout"})
BREAKS = {
    "Clip": "clips at a fixed bound (ReLU6(x/s) ≠ ReLU6(x)/s)",
    "HardSwish": "curved (not positively homogeneous)",
    "HardSigmoid": "curved (not positively homogeneous)",
    "Sigmoid": "curved (not positively homogeneous)",
    "Tanh": "curved (not positively homogeneous)",
    "Mul": "a product (SiLU/Swish or a gate): scales do not pass through",
    "Add": "a sum with another path that is not scaled",
    "Concat": "joins another path that is not scaled",
}
SWEEPS = 20
DEAD = 1e-8  # a channel whose weight range is below this share of its layer's largest is dead, left alone
TOLERANCE = 1e-3  # stop when no scale moves by more than 0.1 %


@dataclass
class Equalization:
    """What equalization changed: per pair (A, B) the scales applied, and the chains it skipped and why."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    scales: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # product over the sweeps
    changed_tensors: list[str] = field(default_factory=list)  # tensors between A and B: ranges to measure again
    skipped: dict[str, int] = field(default_factory=dict)  # reason → layers whose output chain it ended
    sweeps: int = 0
    range_ratio_before: float = 0.0  # mean over pairs and channels of max/min channel range, A's output side
    range_ratio_after: float = 0.0

    def summary(self) -> str:
        if not self.pairs:
            why = "; ".join(f"{op}: {n}" for op, n in sorted(self.skipped.items()))
            return f"cross-layer equalization: no equalizable layer pair{f' (chains ended by {why})' if why else ''}"
        skipped = ""
        if self.skipped:
            skipped = "; chains ended by " + ", ".join(f"{op} ×{n}" for op, n in sorted(self.skipped.items()))
        return (f"cross-layer equalization: {len(self.pairs)} layer pair(s) in {self.sweeps} sweep(s), weight "
                f"range spread (max/min channel) {self.range_ratio_before:.3g} → {self.range_ratio_after:.3g}"
                f"{skipped}")


@dataclass
class _Layer:
    node: onnx.NodeProto
    weight: str  # initializer name
    bias: str | None  # initializer name


def _layer(index: GraphIndex, node: onnx.NodeProto) -> _Layer | None:
    """A Conv (weights (O, I/g, …)) or a Gemm with transB=1 (weights (N, K)) with constant weights and bias,
    both initializers read by this node alone."""
    if node.op_type == "Conv":
        pass
    elif node.op_type == "Gemm":
        a = attributes(node)
        if a.get("transA", 0) or not a.get("transB", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            return None
    else:
        return None
    weight = node.input[1] if len(node.input) > 1 else ""
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    for name in (weight, bias):
        if name is not None and (name not in index.initializers or len(index.consumers.get(name, [])) != 1):
            return None
    if bias is not None and numpy_helper.to_array(index.initializers[bias]).ndim != 1:
        return None
    return _Layer(node, weight, bias)


def _chain(index: GraphIndex, layer: _Layer, skipped: dict[str, int]) -> tuple[_Layer, list[str]] | None:
    """The layer B that reads A's output through homogeneous ops only, and the tensors between them."""
    tensor, between = layer.node.output[0], [layer.node.output[0]]
    while True:
        node = index.single_consumer(tensor)
        if node is None:
            readers = sorted({n.op_type for n in index.consumers.get(tensor, [])})
            if len(index.consumers.get(tensor, [])) > 1:  # a branch: x·HardSigmoid(x), a residual, …
                why = "+".join(readers)
                skipped[why] = skipped.get(why, 0) + 1
            return None
        if node.op_type in HOMOGENEOUS and node.input[0] == tensor:
            if node.op_type == "PRelu":
                slope = index.constant(node.input[1])
                if slope is None:
                    return None
            tensor = node.output[0]
            between.append(tensor)
            continue
        nxt = _layer(index, node)
        if nxt is None or node.input[0] != tensor:
            if node.op_type in BREAKS:
                skipped[node.op_type] = skipped.get(node.op_type, 0) + 1
            return None
        return nxt, between


def _out_ranges(w: np.ndarray) -> np.ndarray:
    """max |W| per output channel (axis 0 for Conv and for Gemm with transB=1)."""
    return np.abs(w.reshape(w.shape[0], -1)).max(axis=1)


def _in_ranges(w: np.ndarray, node: onnx.NodeProto, channels: int) -> np.ndarray | None:
    """max |W| over the weights that read each input channel, or None when the shapes do not line up."""
    if node.op_type == "Gemm":
        return np.abs(w).max(axis=0) if w.shape[1] == channels else None
    group = int(attributes(node).get("group", 1))
    per_group = w.shape[1]
    if per_group * group != channels or w.shape[0] % group:
        return None
    rows = w.shape[0] // group
    # input channel i sits in group i // per_group, at column i % per_group of that group's output rows
    grouped = np.abs(w).reshape(group, rows, per_group, -1).max(axis=(1, 3))  # (group, per_group)
    return grouped.reshape(-1)


def _scale_in(w: np.ndarray, node: onnx.NodeProto, s: np.ndarray) -> np.ndarray:
    """B's weights with the weights reading input channel i multiplied by s_i."""
    if node.op_type == "Gemm":
        return w * s[None, :]
    group = int(attributes(node).get("group", 1))
    per_group = w.shape[1]
    rows = w.shape[0] // group
    view = w.reshape(group, rows, per_group, *w.shape[2:])
    factor = s.reshape(group, 1, per_group, *([1] * (w.ndim - 2)))
    return (view * factor).reshape(w.shape)


def equalize(model: onnx.ModelProto, exclude: set[str] | frozenset[str] = frozenset()) -> Equalization:
    """Equalize every Conv/Gemm pair joined by homogeneous ops, in place. ``exclude``: layer names left alone
    (e.g. layers kept in float, whose ranges do not matter)."""
    index = GraphIndex(model.graph)
    result = Equalization()
    pairs: list[tuple[_Layer, _Layer, list[str]]] = []
    for node in model.graph.node:
        a = _layer(index, node)
        if a is None or node.name in exclude:
            continue
        found = _chain(index, a, result.skipped)
        if found is None or found[0].node.name in exclude:
            continue
        b, between = found
        w_a = numpy_helper.to_array(index.initializers[a.weight])
        w_b = numpy_helper.to_array(index.initializers[b.weight])
        if _in_ranges(w_b, b.node, w_a.shape[0]) is None:
            continue
        pairs.append((a, b, between))
    if not pairs:
        return result

    weights = {name: numpy_helper.to_array(index.initializers[name]).astype(np.float64)
               for a, b, _ in pairs for name in (a.weight, b.weight, a.bias, b.bias) if name is not None}

    def spread() -> float:
        ratios = []
        for a, _, _ in pairs:
            r = _out_ranges(weights[a.weight])
            live = r[r > DEAD * r.max()]
            if len(live):
                ratios.append(float(live.max() / live.min()))
        return float(np.mean(ratios)) if ratios else 1.0

    result.range_ratio_before = spread()
    for a, b, between in pairs:
        result.pairs.append((a.node.name, b.node.name))
        result.scales[(a.node.name, b.node.name)] = np.ones(weights[a.weight].shape[0])
        result.changed_tensors.extend(between)
    for sweep in range(1, SWEEPS + 1):
        moved = 0.0
        for a, b, _ in pairs:
            r_a = _out_ranges(weights[a.weight])
            r_b = _in_ranges(weights[b.weight], b.node, len(r_a))
            s = np.ones_like(r_a)
            # a dead channel on either side (weights ~0: nothing to balance) keeps its scale
            live = (r_a > DEAD * r_a.max()) & (r_b > DEAD * r_b.max())
            s[live] = np.sqrt(r_a[live] / r_b[live])
            shape = (-1,) + (1,) * (weights[a.weight].ndim - 1)
            weights[a.weight] = weights[a.weight] / s.reshape(shape)
            if a.bias is not None:
                weights[a.bias] = weights[a.bias] / s
            weights[b.weight] = _scale_in(weights[b.weight], b.node, s)
            result.scales[(a.node.name, b.node.name)] *= s
            moved = max(moved, float(np.abs(np.log(s)).max()))
        result.sweeps = sweep
        if moved < TOLERANCE:
            break
    result.range_ratio_after = spread()
    for name, value in weights.items():
        original = index.initializers[name]
        original.CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(original).dtype), name))
    return result
