"""Insert QuantizeLinear/DequantizeLinear pairs from a ranges mapping (Int8).

Two steps, so that calibration knows what to measure before any range exists:

1. :func:`plan_qdq` walks the graph once and decides, per target, which weighted nodes are quantized
   and which activation tensors get a Q/DQ pair — and, for each, whether it needs its own calibrated
   range or inherits the parameters of another tensor (MaxPool, Flatten, Reshape… must keep their
   input's scale and zero point, or ONNX Runtime cannot drop the Q/DQ around them).
2. :func:`insert_qdq` turns a plan plus ranges into the quantized graph.

Maths. Weights: symmetric int8 per output channel, s_c = max|W_c| / 127, q = clamp(round(W / s_c),
−127, 127) (−128 is never used, so negation is exact and TensorRT's symmetric rule holds).
Activations, per tensor, from a range [lo, hi] that contains 0:
  uint8 (asymmetric): s = (hi − lo) / 255, z = round(−lo / s), q = clamp(round(x / s) + z, 0, 255)
  int8 (symmetric):   s = max(|lo|, |hi|) / 127, z = 0,       q = clamp(round(x / s), −128, 127)
Bias (ONNX Runtime targets): int32 with scale s_x · s_w,c and zero point 0, which is the accumulator's
scale, so ONNX Runtime's QLinearConv/QGemm add it without rescaling.

Placement ("keep int8 flowing where it pays"): the data input and the output of every quantized
Conv/Gemm/MatMul; when the output's only reader is Relu/Clip, the activation's output instead (ONNX
Runtime then removes the Relu/Clip into the Q, and QLinearConv forms); Add (and Add→Relu) when both
inputs are quantized (QLinearAdd); GlobalAveragePool/AveragePool and Concat when their inputs are;
MaxPool, Flatten, Reshape, Transpose, Squeeze, Unsqueeze inherit their input's parameters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .core import PassReport, PassResult, Site
from .onnx_graph import GraphIndex, NameAllocator, attributes, graph_counts

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")  # every op with a weight any target quantizes
ACTIVATION_OPS = ("Relu", "Clip")  # removable into the following Q when its zero point sits at qmin
SAME_SCALE_OPS = ("MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze")
# also inherit their input's parameters, on every output, but only in the elementwise placement: ONNX Runtime
# then drops their Q/DQ and runs them on uint8 (Split: one Q in, each output read as uint8)
MOVE_OPS = ("Resize", "Slice", "Split", "DepthToSpace", "SpaceToDepth")
OWN_RANGE_OPS = ("GlobalAveragePool", "AveragePool", "Concat", "Add")
# placement "elementwise": Add/Mul also with a constant operand (the constant quantized from its own value),
# Mul of two activations (ONNX Runtime: QLinearAdd/QLinearMul), and the outputs of elementwise float ops
# whose input is quantized (Sigmoid → QLinearSigmoid; HardSigmoid, Clip stay float but hand on uint8), so a
# HardSwish or SiLU written as Add/Clip/Mul/Div(→Mul) between integer convs stays integer
ELEMENTWISE_OPS = ("Add", "Mul")
UNARY_OPS = ("Sigmoid", "HardSigmoid", "LeakyRelu", "Clip", "Relu")
PLACEMENTS = ("convs", "elementwise")


@dataclass(frozen=True)
class QuantTarget:
    """How a runtime wants its Q/DQ graph."""

    name: str
    activation_type: int  # TensorProto.UINT8 or TensorProto.INT8
    quantize_bias: bool  # int32 bias via DequantizeLinear (ONNX Runtime) or float bias (TensorRT)
    description: str
    # ops quantized: those the runtime runs as integer kernels (ONNX Runtime CPU has no integer
    # ConvTranspose: a Q/DQ pair there only dequantizes the weights back to float, slower and less exact)
    weighted_ops: tuple[str, ...] = ("Conv", "Gemm", "MatMul")
    # the elementwise placement may quantize a constant operand of Add/Mul from its own value (ONNX Runtime then runs
    # QLinearAdd/QLinearMul); OpenVINO's low-precision transformations crash on an Add of two DequantizeLinear
    # outputs when one is a constant (PaddleOCR's cls head, MatMul → Add(bias): "AddTransformation … index '0' out of
    # range", OpenVINO 2026.4): there the constant stays float and OpenVINO folds it
    quantize_constants: bool = True

    @property
    def unsigned(self) -> bool:
        return self.activation_type == TensorProto.UINT8


TARGETS: dict[str, QuantTarget] = {
    # ONNX Runtime's x86 integer kernels: u8·s8 GEMM is the fast path (VPMADDUBSW/VNNI); s8·s8 is ~17× slower.
    "ort-cpu": QuantTarget("ort-cpu", TensorProto.UINT8, True,
                           "uint8 asymmetric activations, int8 symmetric per-channel weights, int32 bias"),
    # OpenVINO's CPU plugin (its low-precision transformations turn Q/DQ around a Conv/MatMul into an integer
    # kernel). Measured on resnet18 here (2 cores, AMX/VNNI CPU, one interleaved bench of four files): uint8 and
    # int8 activations, int32 and float bias all run at 0.23–0.24× ONNX Runtime fp32's time, and uint8 keeps
    # 3 dB more centred SQNR (27.7 vs 24.6 dB): uint8 asymmetric; the bias stays float (the plugin folds it
    # into the conv; an int32 bias only adds a DequantizeLinear it must fold first).
    "ov-cpu": QuantTarget("ov-cpu", TensorProto.UINT8, False,
                          "uint8 asymmetric activations, int8 symmetric per-channel weights, float bias "
                          "(OpenVINO's CPU plugin)", quantize_constants=False),
    # ONNX Runtime on GPUs takes S8S8 only.
    "ort-cuda": QuantTarget("ort-cuda", TensorProto.INT8, True,
                            "int8 symmetric activations (S8S8), int8 per-channel weights, int32 bias"),
    # TensorRT explicit quantization: symmetric int8, zero point 0, per-channel weights on axis 0, float bias.
    "trt": QuantTarget("trt", TensorProto.INT8, False,
                       "int8 symmetric activations and weights (zero point 0, weights per channel on the output "
                       "axis), float bias", ("Conv", "Gemm", "MatMul", "ConvTranspose")),
}


TENSOR_UNIT = "tensor:"  # a keep-float item naming a tensor: no Q/DQ on it, its int8 producer and readers float


def tensor_unit(name: str) -> str:
    return TENSOR_UNIT + name


class QuantizeError(ValueError):
    """The model cannot be quantized as asked (one-line message)."""


def get_target(name: str) -> QuantTarget:
    try:
        return TARGETS[name]
    except KeyError:
        raise QuantizeError(f"unknown target '{name}'; choose from {', '.join(TARGETS)}") from None


@dataclass
class QdqPlan:
    """What to quantize. ``activations`` maps tensor → tensor whose parameters it uses (itself when it is
    calibrated). ``weighted`` lists node names of quantized Conv/Gemm/MatMul, ``kept`` those left float."""

    target: QuantTarget
    weighted: list[str] = field(default_factory=list)
    activations: dict[str, str] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)  # node name → why it stays float
    constants: dict[str, tuple[float, float]] = field(default_factory=dict)  # quantized constant → its range
    placement: str = "convs"
    # tensor → (quantized tensor, c > 0): the output of a Mul by the positive scalar c is the same integers read
    # with scale c·s (no op at all: the Mul is dropped and its readers dequantize the input's uint8 directly)
    scaled: dict[str, tuple[str, float]] = field(default_factory=dict)

    @property
    def calibrated(self) -> list[str]:
        """Tensors that need a measured range (graph outputs to add for calibration)."""
        return [t for t, source in self.activations.items()
                if t == source and t not in self.constants and t not in self.scaled]


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a stable name (op type + index): plans and reports refer to nodes by name."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def weight_input(index: GraphIndex, node: onnx.NodeProto) -> tuple[np.ndarray, int] | None:
    """(weight, per-channel axis) of a Conv/Gemm/MatMul whose weight is a float constant, else None."""
    if len(node.input) < 2:
        return None
    weight = index.constant(node.input[1])
    if weight is None or weight.dtype not in (np.float32, np.float64, np.float16):
        return None
    if node.op_type == "Conv":
        return weight, 0
    if node.op_type == "ConvTranspose":  # weight (Cin, Cout/group, k…): output channels on axis 1
        return (weight, 1) if attributes(node).get("group", 1) == 1 else None
    if node.op_type == "Gemm":
        attrs = attributes(node)
        if attrs.get("transA", 0) or weight.ndim != 2:
            return None
        return weight, (0 if attrs.get("transB", 0) else 1)  # the output-feature axis
    if weight.ndim != 2:  # MatMul: x @ W, W is (K, N)
        return None
    return weight, 1


def resolve_keep_float(model: onnx.ModelProto, items: Iterable[str]) -> set[str]:
    """``--keep-float`` items → node names and tensor units. An item is a node name, a tensor name (no Q/DQ on
    it: see :func:`plan_qdq`), an op type (``Gemm``), or ``first`` / ``last`` (the first / last quantizable node
    in graph order)."""
    name_nodes(model)
    index = GraphIndex(model.graph)
    weighted = [n for n in model.graph.node if n.op_type in WEIGHTED_OPS and weight_input(index, n) is not None]
    by_name = {n.name: n for n in model.graph.node}
    ops = {n.op_type for n in model.graph.node}
    tensors = {t for n in model.graph.node for t in n.output} | {i.name for i in model.graph.input}
    names: set[str] = set()
    for item in items:
        item = item.strip()
        if not item:
            continue
        if item == "first" and weighted:
            names.add(weighted[0].name)
        elif item == "last" and weighted:
            names.add(weighted[-1].name)
        elif item in by_name or item.startswith(TENSOR_UNIT):
            names.add(item)
        elif item in ops:
            names.update(n.name for n in model.graph.node if n.op_type == item)
        elif item in tensors:
            names.add(tensor_unit(item))
        else:
            some = ", ".join(n.name for n in weighted[:4])
            raise QuantizeError(f"--keep-float '{item}': no node, tensor or op type of that name "
                                f"(give node names like {some}, tensor names, an op type, 'first' or 'last')")
    return names


def plan_qdq(model: onnx.ModelProto, target: str | QuantTarget, keep_float: Iterable[str] = (),
             placement: str = "convs") -> QdqPlan:
    """Decide what gets quantized (see the module docstring for the placement rules).

    ``keep_float`` holds node names and tensor units (``tensor:NAME``): a tensor unit gets no Q/DQ, so the
    quantized layer producing it and those reading it (no integer kernel takes a float input) stay float too."""
    qt = target if isinstance(target, QuantTarget) else get_target(target)
    _require_opset(model, 13)  # per-axis QuantizeLinear/DequantizeLinear
    name_nodes(model)
    keep = {k for k in keep_float if not k.startswith(TENSOR_UNIT)}
    float_tensors = {k[len(TENSOR_UNIT):] for k in keep_float if k.startswith(TENSOR_UNIT)}
    if placement not in PLACEMENTS:
        raise QuantizeError(f"unknown placement '{placement}'; choose from {', '.join(PLACEMENTS)}")
    index = GraphIndex(model.graph)
    plan = QdqPlan(qt, placement=placement)
    quantized = plan.activations  # tensor → parameter source
    elementwise = placement == "elementwise"

    def quantize_constant(tensor: str) -> bool:
        value = index.value(tensor)
        if value is None or value.dtype not in (np.float32, np.float64) or not np.all(np.isfinite(value)):
            return False
        plan.constants[tensor] = (float(min(value.min(), 0.0)), float(max(value.max(), 0.0)))
        quantized[tensor] = tensor
        return True

    def quantize_output(tensor: str, source: str | None = None) -> None:
        if tensor in index.graph_outputs:  # the model's outputs stay float (QGemm/QLinearConv can emit float)
            return
        if tensor in float_tensors or (source or tensor) in float_tensors:
            return
        quantized[tensor] = source or tensor

    def past_activation(tensor: str) -> str:
        """The tensor to quantize for an output: through a sole Relu/Clip reader, whose zero point then sits at qmin."""
        reader = index.single_consumer(tensor)
        if reader is not None and reader.op_type in ACTIVATION_OPS and reader.name not in keep:
            return reader.output[0]
        return tensor

    for node in model.graph.node:
        op = node.op_type
        if op in WEIGHTED_OPS and op not in qt.weighted_ops:
            plan.kept[node.name] = f"{qt.name} has no integer {op} kernel"
            continue
        if op in WEIGHTED_OPS:
            if weight_input(index, node) is None:
                plan.kept[node.name] = "weight is not a float constant"
                continue
            if node.name in keep:
                plan.kept[node.name] = "--keep-float"
                continue
            if {node.input[0], node.output[0], past_activation(node.output[0])} & float_tensors:
                plan.kept[node.name] = "reads or writes a tensor kept in float"
                continue
            plan.weighted.append(node.name)
            data = node.input[0]
            quantized.setdefault(data, data)
            quantize_output(past_activation(node.output[0]))
        elif node.name in keep:
            continue
        elif op in SAME_SCALE_OPS and node.input and node.input[0] in quantized:
            quantize_output(node.output[0], quantized[node.input[0]])
        elif elementwise and op in MOVE_OPS and node.input and node.input[0] in quantized and _moves_values(node):
            for out in node.output:
                quantize_output(out, quantized[node.input[0]])
        elif elementwise and op == "Mul" and len(node.input) == 2 and \
                (found := _positive_scalar_factor(index, node, quantized, plan.constants)) is not None and \
                node.output[0] not in index.graph_outputs and node.output[0] not in float_tensors:
            source, factor = found
            if source in plan.scaled:  # a scale of a scale: both read the first tensor's integers
                source, factor = plan.scaled[source][0], plan.scaled[source][1] * factor
            plan.scaled[node.output[0]] = (source, factor)
            quantized[node.output[0]] = node.output[0]  # its own parameters (c·s, z), computed, not calibrated
        elif elementwise and op in ELEMENTWISE_OPS and len(node.input) == 2 and \
                all(t in quantized or index.is_value(t) for t in node.input) and \
                any(t in quantized and t not in plan.constants for t in node.input):
            if all(t in quantized or (qt.quantize_constants and quantize_constant(t)) for t in node.input):
                quantize_output(past_activation(node.output[0]))
        elif op in OWN_RANGE_OPS and node.input and \
                all(t in quantized for t in node.input if not index.is_constant(t)) and \
                any(t in quantized for t in node.input):  # at least one quantized (float) data input
            if op == "Add" and any(index.is_constant(t) for t in node.input):
                continue  # Add of a constant is a bias: nothing integer to gain
            quantize_output(past_activation(node.output[0]) if op == "Add" else node.output[0])
            if elementwise and op == "Concat" and quantized.get(node.output[0]) == node.output[0]:
                _share_concat_scale(index, node, quantized, plan)
        elif elementwise and op in UNARY_OPS and node.input[0] in quantized and node.output[0] not in quantized:
            quantize_output(node.output[0])
        elif op in ACTIVATION_OPS and node.input[0] in quantized and node.output[0] not in quantized:
            quantize_output(node.output[0])
    if not plan.weighted:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(plan.kept.items())[:3])
        raise QuantizeError("no quantizable op: int8 needs Conv, Gemm or MatMul with constant float weights"
                            + (f" ({reasons})" if reasons else ""))
    return plan


def _share_concat_scale(index: GraphIndex, concat: onnx.NodeProto, quantized: dict[str, str], plan: QdqPlan) -> None:
    """Inputs of a quantized Concat that nothing else reads take the Concat's parameters (its range is their
    union): their producers then write the Concat's integers directly and ONNX Runtime's QLinearConcat only
    copies them, where it would otherwise re-map each through a lookup table. ONNX Runtime's own quantizer
    shares a Concat's scale the same way. An input read elsewhere (a split half a bottleneck also reads) keeps
    its own parameters."""
    inherited = {source for tensor, source in quantized.items() if tensor != source}
    for t in concat.input:
        if quantized.get(t) != t or t in plan.constants or t in plan.scaled or t in inherited or \
                t in index.graph_outputs or index.single_consumer(t) is not concat:
            continue
        quantized[t] = concat.output[0]


def _moves_values(node: onnx.NodeProto) -> bool:
    """Ops that only move values (so the output needs no range of its own); Resize only when it interpolates
    between its inputs (nearest or linear: never outside their range)."""
    if node.op_type != "Resize":
        return True
    return attributes(node).get("mode", b"nearest") in (b"nearest", b"linear", "nearest", "linear")


def _positive_scalar_factor(index: GraphIndex, node: onnx.NodeProto, quantized: Mapping[str, str],
                            constants: Mapping) -> tuple[str, float] | None:
    """(x, c) when ``node`` is Mul(x, c) with x a quantized activation and c a positive finite scalar constant."""
    for x, c in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
        value = index.value(c)
        if x in quantized and x not in constants and value is not None and value.size == 1 and \
                value.dtype in (np.float32, np.float64):
            factor = float(np.asarray(value).reshape(()))
            if math.isfinite(factor) and factor > 0:
                return x, factor
    return None


@dataclass(frozen=True)
class ActivationParams:
    scale: float
    zero_point: int


def activation_params(lo: float, hi: float, target: QuantTarget) -> ActivationParams:
    """Scale and zero point for a range [lo, hi] (widened to contain 0, as both formulas need)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if target.unsigned:
        scale = (hi - lo) / 255.0
        if scale <= 0 or not np.isfinite(scale):
            return ActivationParams(1.0, 0)
        return ActivationParams(scale, int(np.clip(round(-lo / scale), 0, 255)))
    amax = max(-lo, hi)
    if amax <= 0 or not np.isfinite(amax):
        return ActivationParams(1.0, 0)
    return ActivationParams(amax / 127.0, 0)


def quantize_weight(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8: (q int8, scales float32) with s_c = max|W_c| / 127."""
    w = weight.astype(np.float64)
    reduce_axes = tuple(a for a in range(w.ndim) if a != axis)
    amax = np.abs(w).max(axis=reduce_axes) if reduce_axes else np.abs(w)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


class _Builder:
    """Accumulates new initializers and Q/DQ nodes with collision-free names."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.names = NameAllocator(graph)
        self.front: list[onnx.NodeProto] = []  # weight DQs and graph-input Q/DQs: before every node
        self.after: dict[str, list[onnx.NodeProto]] = {}  # producer output → Q/DQ nodes placed after it

    def name(self, base: str) -> str:
        return self.names.fresh(base)

    def constant(self, base: str, value: np.ndarray) -> str:
        name = self.name(base)
        self.graph.initializer.append(numpy_helper.from_array(np.array(value, order="C"), name))  # keeps 0-d scalars
        return name


def _zero_point_array(target: QuantTarget, value: int) -> np.ndarray:
    return np.array(value, dtype=np.uint8 if target.unsigned else np.int8)


def insert_qdq(model: onnx.ModelProto, plan: QdqPlan, ranges: Mapping[str, tuple[float, float]],
               weights: dict | None = None) -> PassResult:
    """Rewrite ``model`` in place with Q/DQ pairs per ``plan``; ``ranges`` holds every ``plan.calibrated`` tensor.

    ``weights``: a dict shared between calls on copies of one model, so that candidates scored one after
    another (a tournament, a sensitivity search) quantize each weight once."""
    start = time.perf_counter()
    _require_opset(model, 13)  # per-axis QuantizeLinear/DequantizeLinear
    qt = plan.target
    report = PassReport("qdq", before=graph_counts(model))
    ranges = {**plan.constants, **ranges}
    missing = [t for t in plan.calibrated if t not in ranges]
    if missing:
        raise QuantizeError(f"the ranges table lacks {len(missing)} tensors the plan needs, e.g. {missing[0]} "
                            f"(was it calibrated on another model?)")
    graph = model.graph
    index = GraphIndex(graph)
    build = _Builder(graph)
    params = {t: activation_params(*ranges[t], qt) for t in (*plan.calibrated, *plan.constants)}
    for t, src in plan.activations.items():  # graph order: a source's parameters are known before its readers'
        if t in plan.scaled:
            source, factor = plan.scaled[t]
            params[t] = ActivationParams(params[source].scale * factor, params[source].zero_point)
        elif t != src:
            params[t] = params[src]

    # uint8 with zero point 0: Q already clamps at 0, so a Relu (or Clip(0, m) with m ≥ the range) before
    # it is redundant; dropping it lets ONNX Runtime see Conv→Q / Add→Q and form QLinearConv / QLinearAdd.
    folded = _foldable_activations(index, params, ranges, qt)
    # activations: T → Q → DQ → every reader of T (the producer keeps writing T; graph outputs keep T)
    dq_of: dict[str, str] = {}
    q_of: dict[str, tuple[str, str]] = {}  # tensor → (its QuantizeLinear's output, the tensor it quantizes)
    for tensor, p in params.items():
        if tensor in plan.scaled:
            continue
        scale = build.constant(f"{tensor}_scale", np.array(p.scale, dtype=np.float32))
        zero = build.constant(f"{tensor}_zero_point", _zero_point_array(qt, p.zero_point))
        q_out, dq_out = build.name(f"{tensor}_quantized"), build.name(f"{tensor}_dequantized")
        q_in = folded[tensor].input[0] if tensor in folded else tensor
        nodes = [helper.make_node("QuantizeLinear", [q_in, scale, zero], [q_out], name=build.name(f"{tensor}_Q")),
                 helper.make_node("DequantizeLinear", [q_out, scale, zero], [dq_out],
                                  name=build.name(f"{tensor}_DQ"))]
        if q_in in index.producer:
            build.after.setdefault(q_in, []).extend(nodes)
        else:
            build.front.extend(nodes)
        dq_of[tensor] = dq_out
        q_of[tensor] = (q_out, q_in)
    for tensor, (source, _) in plan.scaled.items():  # y = c·x: x's integers, dequantized with scale c·s_x
        p = params[tensor]
        scale = build.constant(f"{tensor}_scale", np.array(p.scale, dtype=np.float32))
        zero = build.constant(f"{tensor}_zero_point", _zero_point_array(qt, p.zero_point))
        dq_out = build.name(f"{tensor}_dequantized")
        q_out, q_in = q_of[source]
        node = helper.make_node("DequantizeLinear", [q_out, scale, zero], [dq_out], name=build.name(f"{tensor}_DQ"))
        if q_in in index.producer:
            build.after.setdefault(q_in, []).append(node)
        else:
            build.front.append(node)
        dq_of[tensor] = dq_out
        report.sites.append(Site(index.producer[tensor].name, f"Mul by {p.scale / params[source].scale:.6g} "
                                                              f"absorbed into the scale of {tensor}"))
    tensor_of_dq = {dq: t for t, dq in dq_of.items()}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in dq_of:
                node.input[i] = dq_of[name]

    # weights (and biases): int8 initializers behind DequantizeLinear
    weighted = set(plan.weighted)
    weight_cache: dict[tuple[str, int], tuple[str, np.ndarray]] = {}
    for node in graph.node:
        if node.name not in weighted:
            continue
        weight, axis = weight_input(index, node)
        key = (node.input[1], axis)
        if key not in weight_cache:
            if weights is not None and key not in weights:
                weights[key] = quantize_weight(weight, axis)
            q, scales = weights[key] if weights is not None else quantize_weight(weight, axis)
            q_name = build.constant(f"{node.input[1]}_quantized", q)
            s_name = build.constant(f"{node.input[1]}_scale", scales)
            z_name = build.constant(f"{node.input[1]}_zero_point", np.zeros(scales.shape, np.int8))
            dq_out = build.name(f"{node.input[1]}_dequantized")
            build.front.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq_out],
                                                name=build.name(f"{node.input[1]}_DQ"), axis=axis))
            weight_cache[key] = (dq_out, scales)
        dq_weight, w_scales = weight_cache[key]
        x_tensor = tensor_of_dq.get(node.input[0], node.input[0])
        node.input[1] = dq_weight
        bias_note = ""
        if qt.quantize_bias and len(node.input) > 2 and node.input[2] and x_tensor in params:
            bias = index.constant(node.input[2])
            if bias is not None and bias.ndim == 1 and bias.shape[0] == w_scales.shape[0]:
                node.input[2], bias_note = _quantize_bias(build, node.input[2], bias, params[x_tensor].scale, w_scales)
        report.sites.append(Site(node.name, f"{node.op_type}: int8 weights per channel (axis {axis}){bias_note}"))

    for name, why in plan.kept.items():
        report.skipped.append(Site(name, why))
    for tensor, node in folded.items():
        report.sites.append(Site(node.name, f"{node.op_type} folded into the uint8 QuantizeLinear of {tensor}"))
    dropped = {id(node) for node in folded.values()} | {id(index.producer[t]) for t in plan.scaled}
    ordered = list(build.front)
    for node in graph.node:
        if id(node) in dropped:
            continue
        ordered.append(node)
        for out in node.output:
            ordered.extend(build.after.get(out, []))
    # a DequantizeLinear nobody reads (its tensor's only reader was a Mul absorbed into a scale) is dropped:
    # ONNX Runtime would keep it, and run it
    read = {name for node in ordered for name in node.input} | {o.name for o in graph.output} | subgraph_reads(graph)
    ordered = [n for n in ordered if not (n.op_type == "DequantizeLinear" and n.output[0] not in read)]
    del graph.node[:]
    graph.node.extend(ordered)
    _drop_unused_initializers(graph)
    report.after = graph_counts(model)
    report.seconds = time.perf_counter() - start
    return PassResult(model, report)


def _foldable_activations(index: GraphIndex, params: dict[str, ActivationParams],
                          ranges: Mapping[str, tuple[float, float]], qt: QuantTarget) -> dict[str, onnx.NodeProto]:
    """Quantized tensor → the Relu/Clip producing it, where the uint8 Q makes that activation a no-op."""
    if not qt.unsigned:
        return {}
    folded = {}
    inner = subgraph_reads(index.graph)  # names read inside If/Loop/Scan bodies: readers GraphIndex cannot see
    for tensor, p in params.items():
        node = index.producer.get(tensor)
        if node is None or node.op_type not in ACTIVATION_OPS or p.zero_point != 0 or tensor in index.graph_outputs:
            continue
        source = node.input[0]
        if index.single_consumer(source) is not node or source in params or {source, tensor} & inner:
            continue
        if node.op_type == "Clip":
            present = [len(node.input) > i and bool(node.input[i]) for i in (1, 2)]
            low = _scalar(index.constant(node.input[1])) if present[0] else None
            high = _scalar(index.constant(node.input[2])) if present[1] else math.inf
            q_high = 255 * p.scale  # the largest value the Q can represent
            # fold only when both bounds are known constants: min exactly 0, max at or above the Q's range
            if low is None or low != 0.0 or high is None or high < q_high * (1 - 1e-6):
                continue
        folded[tensor] = node
    return folded


def _scalar(value: np.ndarray | None) -> float | None:
    """A one-element constant as a float (Clip bounds come as 0-d or shape-(1,) tensors), else None."""
    if value is None or np.size(value) != 1:
        return None
    return float(np.asarray(value).reshape(-1)[0])


def subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name read by a node inside a subgraph (If/Loop/Scan bodies), at any depth."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for body in bodies:
                names.update(n for inner in body.node for n in inner.input if n)
                names.update(subgraph_reads(body))
    return names


def _quantize_bias(build: _Builder, name: str, bias: np.ndarray, x_scale: float,
                   w_scales: np.ndarray) -> tuple[str, str]:
    # b_q = round(b / (s_x · s_w,c)), int32, zero point 0: the scale of the int32 accumulator
    scale = (np.float64(x_scale) * w_scales.astype(np.float64))
    q = np.rint(bias.astype(np.float64) / scale)
    clipped = int(np.sum(np.abs(q) > 2**31 - 1))
    q = np.clip(q, -(2**31 - 1), 2**31 - 1).astype(np.int32)
    q_name = build.constant(f"{name}_quantized", q)
    s_name = build.constant(f"{name}_scale", scale.astype(np.float32))
    z_name = build.constant(f"{name}_zero_point", np.zeros(scale.shape, np.int32))
    out = build.name(f"{name}_dequantized")
    build.front.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [out],
                                        name=build.name(f"{name}_DQ"), axis=0))
    return out, (f", int32 bias ({clipped} clipped)" if clipped else ", int32 bias")


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output} | \
        subgraph_reads(graph)
    keep = [t for t in graph.initializer if t.name in used]
    if len(keep) != len(graph.initializer):
        dropped = {t.name for t in graph.initializer} - {t.name for t in keep}
        del graph.initializer[:]
        graph.initializer.extend(keep)
        # IR < 4 files also list initializers as graph inputs: a dropped weight must not become a required input
        stale = [i for i in graph.input if i.name in dropped]
        for i in stale:
            graph.input.remove(i)


def _require_opset(model: onnx.ModelProto, version: int) -> None:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < version:
            raise QuantizeError(f"the model is opset {opset.version}; per-channel Q/DQ needs opset ≥ {version} "
                                f"(re-export with --opset 17)")


def divisions_to_products(model: onnx.ModelProto) -> int:
    """Div by a nonzero float constant → Mul by its reciprocal, in place (ONNX Runtime has QLinearMul, no
    integer Div). Not bit-exact: 1/c is rounded once (≤ 1 ulp relative). Returns how many were rewritten."""
    index = GraphIndex(model.graph)
    names = NameAllocator(model.graph)
    count, reciprocals = 0, {}
    for node in model.graph.node:
        if node.op_type != "Div" or len(node.input) != 2:
            continue
        value = index.constant(node.input[1])
        if value is None or value.dtype not in (np.float32, np.float64) or np.any(value == 0) or \
                index.is_constant(node.input[0]):
            continue
        if node.input[1] not in reciprocals:  # one reciprocal per divisor, however many divide by it
            name = names.fresh(f"{node.input[1]}_reciprocal")
            model.graph.initializer.append(numpy_helper.from_array(
                (1.0 / value.astype(np.float64)).astype(value.dtype), name))
            reciprocals[node.input[1]] = name
        node.op_type, node.input[1] = "Mul", reciprocals[node.input[1]]
        count += 1
    return count


def with_outputs(model: onnx.ModelProto, tensors: Iterable[str],
                 types: Mapping[str, int] | None = None) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs ``tensors``: typed as ``types`` says (element types, e.g. from
    shape inference), else float32 (calibration runs)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    for name in tensors:
        if name not in present:
            elem = (types or {}).get(name, TensorProto.FLOAT)
            out.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    return out
