"""`onnx_fuse_hardswish`: rewrite a HardSwish spelled out in elementwise ops as the one ONNX HardSwish op.

Exporters targeting opsets before 14 (Paddle2ONNX, older torch.onnx) write x·relu6(x + 3)/6 as four ops —
Add(x, 3) → Clip(0, 6) → Mul(x, ·) → Div(·, 6) (or Mul by 1/6) — or as HardSigmoid(x; α = 1/6, β = ½) → Mul(x, ·).
Each is a pass over memory; between int8 layers each is also a float island with its own Q/DQ. HardSwish
(opset 14) computes the same function in one:

    HardSwish(x) = x · max(0, min(1, x/6 + ½)) = x · clip(x + 3, 0, 6) / 6.

The rewrite is exact up to float rounding (the two spellings round x/6 + ½ differently: ≤ 2 ulp). The model is
raised to opset 14 when it is below (checked by ONNX's version converter, which leaves the other ops as they
are); a chain whose intermediates are read elsewhere, or whose constants are not 3, 0, 6 and 6 (or 1/6, ½),
is left alone.
"""

from __future__ import annotations

import time

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .core import PassReport, PassResult, Site, register_pass
from .onnx_graph import GraphIndex, NameAllocator, attributes, eliminate_dead_nodes, graph_counts

HARDSWISH_OPSET = 14


def _scalar(index: GraphIndex, name: str) -> float | None:
    value = index.constant(name) if name else None
    if value is None or value.size != 1:
        return None
    return float(np.asarray(value).reshape(()))


def _near(value: float | None, target: float) -> bool:
    return value is not None and abs(value - target) <= 1e-6 * max(1.0, abs(target))


def _other(node: onnx.NodeProto, tensor: str) -> str | None:
    """The input of a two-input node that is not ``tensor`` (None when both are, or neither)."""
    a, b = node.input[0], node.input[1]
    if a == tensor and b != tensor:
        return b
    if b == tensor and a != tensor:
        return a
    return None


def _clip_bounds(index: GraphIndex, clip: onnx.NodeProto) -> tuple[float | None, float | None]:
    attrs = attributes(clip)
    if "min" in attrs or "max" in attrs:  # opset < 11
        return float(attrs.get("min", -np.inf)), float(attrs.get("max", np.inf))
    lo = _scalar(index, clip.input[1]) if len(clip.input) > 1 and clip.input[1] else -np.inf
    hi = _scalar(index, clip.input[2]) if len(clip.input) > 2 and clip.input[2] else np.inf
    return lo, hi


def _gate(index: GraphIndex, node: onnx.NodeProto) -> tuple[str, list[onnx.NodeProto]] | None:
    """If ``node`` computes relu6(x + 3) or hardsigmoid(x) (α = 1/6, β = ½): (x, its nodes, the last first)."""
    if node.op_type == "HardSigmoid":
        attrs = attributes(node)
        if _near(attrs.get("alpha", 0.2), 1 / 6) and _near(attrs.get("beta", 0.5), 0.5):
            return node.input[0], [node]
        return None
    if node.op_type != "Clip":
        return None
    lo, hi = _clip_bounds(index, node)
    if not (_near(lo, 0.0) and _near(hi, 6.0)):
        return None
    add = index.producer.get(node.input[0])
    if add is None or add.op_type != "Add" or index.single_consumer(add.output[0]) is not node:
        return None
    for x, three in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        if _near(_scalar(index, three), 3.0) and not index.is_constant(x):
            return x, [node, add]
    return None


def _match(index: GraphIndex, mul: onnx.NodeProto) -> tuple[str, str, list[onnx.NodeProto]] | None:
    """A HardSwish ending at ``mul`` (x·gate) or at the Div/Mul by 6 after it: (x, output, nodes to remove)."""
    if mul.op_type != "Mul" or len(mul.input) != 2:
        return None
    for gate_out in mul.input:
        gate_node = index.producer.get(gate_out)
        if gate_node is None or index.single_consumer(gate_out) is not mul:
            continue
        found = _gate(index, gate_node)
        if found is None or _other(mul, gate_out) != found[0]:
            continue
        x, nodes = found
        if gate_node.op_type == "HardSigmoid":
            return x, mul.output[0], [mul, *nodes]
        after = index.single_consumer(mul.output[0])  # x·relu6(x + 3) still needs the / 6
        if after is None or after.input[0] != mul.output[0]:
            return None
        k = _scalar(index, after.input[1])
        if (after.op_type == "Div" and _near(k, 6.0)) or (after.op_type == "Mul" and _near(k, 1 / 6)):
            return x, after.output[0], [after, mul, *nodes]
    return None


def _matches(model: onnx.ModelProto) -> list[tuple[str, str, list[onnx.NodeProto]]]:
    """Every HardSwish chain in ``model``, none sharing a node with another."""
    index = GraphIndex(model.graph)
    matches, taken = [], set()
    for node in model.graph.node:
        found = _match(index, node) if node.op_type == "Mul" else None
        if found is None or any(id(n) in taken for n in found[2]):
            continue
        matches.append(found)
        taken.update(id(n) for n in found[2])
    return matches


@register_pass("onnx_fuse_hardswish", stage="onnx")
def onnx_fuse_hardswish(model: onnx.ModelProto) -> PassResult:
    """Each HardSwish written as Add/Clip/Mul/Div (or HardSigmoid/Mul) becomes one HardSwish node (opset ≥ 14)."""
    start = time.perf_counter()
    report = PassReport("onnx_fuse_hardswish", before=graph_counts(model))
    matches = _matches(model)
    if matches:
        domain = next((o for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if domain is not None and domain.version < HARDSWISH_OPSET:
            try:
                raised = onnx.version_converter.convert_version(model, HARDSWISH_OPSET)
            except Exception as err:  # the converter has no adapter for some op: leave the model as it is
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                report.skipped.append(Site("model", f"opset {domain.version} → {HARDSWISH_OPSET} failed: {first}"))
                report.after = graph_counts(model)
                report.seconds = time.perf_counter() - start
                return PassResult(model, report)
            model.CopyFrom(raised)
            matches = _matches(model)  # the converter rebuilt the nodes
        position = {id(n): i for i, n in enumerate(model.graph.node)}
        removed = {id(n) for _, _, nodes in matches for n in nodes}
        fused = {}
        for x, out, nodes in matches:
            last = max(nodes, key=lambda n: position[id(n)])
            fused[id(last)] = helper.make_node("HardSwish", [x], [out], name=f"{last.name or out}_hardswish")
            chain = " → ".join(n.op_type for n in reversed(nodes))
            report.sites.append(Site(last.name or out, f"{chain} → HardSwish"))
        kept = []
        for node in model.graph.node:
            if id(node) in fused:
                kept.append(fused[id(node)])
            elif id(node) not in removed:
                kept.append(node)
        del model.graph.node[:]
        model.graph.node.extend(kept)
        eliminate_dead_nodes(model.graph)
    report.after = graph_counts(model)
    report.seconds = time.perf_counter() - start
    return PassResult(model, report)


def expand_hard_activations(model: onnx.ModelProto) -> PassResult:
    """HardSwish and HardSigmoid written out as Add → Clip → Mul, in place: the form an integer runtime runs.

    ONNX Runtime CPU has no integer HardSigmoid or HardSwish kernel: between int8 layers either is a float
    island (DequantizeLinear → op → QuantizeLinear). Written out, it is made of ops with integer kernels:

        HardSigmoid(x; α, β) = clip(α·x + β, 0, 1) = α · clip(x + β/α, 0, 1/α)         (α > 0)
        HardSwish(x)         = x · HardSigmoid(x; 1/6, ½) = x · (1/6) · clip(x + 3, 0, 6)

    Add(x, β/α) runs as QLinearAdd, the Clip folds into its uint8 QuantizeLinear (range [0, 1/α]), the Mul
    by α is only a change of scale (the Q/DQ placement absorbs it, see ``plan_qdq``), and x·(·) is QLinearMul.
    The inverse of :func:`onnx_fuse_hardswish`; exact up to float rounding (a few ulp). Below opset 11 (Clip's
    bounds as attributes) the model is left as it is, and the report says so."""
    start = time.perf_counter()
    report = PassReport("expand_hard_activations", before=graph_counts(model))
    if any(o.domain in ("", "ai.onnx") and o.version < 11 for o in model.opset_import):
        report.skipped.append(Site("model", "opset < 11: Clip takes its bounds as attributes there; left as it is"))
        report.after = graph_counts(model)
        return PassResult(model, report)
    names = NameAllocator(model.graph)
    constants: dict[float, str] = {}

    def constant(value: float) -> str:
        if value not in constants:
            constants[value] = names.fresh(f"hard_activation_{value:g}")
            model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), constants[value]))
        return constants[value]

    def gate(x: str, alpha: float, beta: float, base: str, out: str) -> list[onnx.NodeProto]:
        shifted, clipped = names.fresh(f"{base}_shifted"), names.fresh(f"{base}_clipped")
        return [helper.make_node("Add", [x, constant(beta / alpha)], [shifted], name=names.fresh(f"{base}_add")),
                helper.make_node("Clip", [shifted, constant(0.0), constant(1.0 / alpha)], [clipped],
                                 name=names.fresh(f"{base}_clip")),
                helper.make_node("Mul", [clipped, constant(alpha)], [out], name=names.fresh(f"{base}_scale"))]

    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        base = node.name or node.output[0]
        if node.op_type == "HardSwish":
            g = names.fresh(f"{base}_gate")
            nodes += gate(node.input[0], 1 / 6, 0.5, base, g)
            nodes.append(helper.make_node("Mul", [node.input[0], g], [node.output[0]], name=names.fresh(f"{base}_mul")))
            report.sites.append(Site(base, "HardSwish → Add → Clip → Mul → Mul"))
            continue
        if node.op_type == "HardSigmoid":
            attrs = attributes(node)
            alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
            if alpha > 0:
                nodes += gate(node.input[0], alpha, beta, base, node.output[0])
                report.sites.append(Site(base, "HardSigmoid → Add → Clip → Mul"))
                continue
            report.skipped.append(Site(base, f"alpha {alpha:g} ≤ 0"))
        nodes.append(node)
    if report.sites:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    report.after = graph_counts(model)
    report.seconds = time.perf_counter() - start
    return PassResult(model, report)
