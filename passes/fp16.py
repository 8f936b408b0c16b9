"""`fp16`: weights and compute in float16, written into the graph.

TensorRT 11 has no FP16 builder flag: a strongly typed network runs each op in the type the ONNX file
gives it, so the file must carry the float16 ops and the Casts. This pass

1. plans every node: float16, kept float32 (its op type is on the block list — where float16 overflows or
   loses: reductions, Softmax, normalisation statistics, Exp/Log/Pow… — it is named in ``block_nodes``,
   or it cannot be retyped), or as is (no float32 in or out: shape and integer ops);
2. reads from the op's schema, not from a table per op, which inputs follow the compute type: a type
   parameter (``T``) bound to float32 that also types an output switches with the node (Conv's weight
   and bias, Clip's min/max); one that types inputs only (Resize's roi) or a fixed type (Resize's
   scales, Reshape's shape) keeps what it has;
3. puts one Cast on each edge where the precision changes and nowhere else, so two neighbours on the same
   side never see a fp16→fp32→fp16 pair, and a consumer set sharing a tensor shares its Cast;
4. converts float32 initializers and Constant nodes that only float16 slots read (clamped to ±65504,
   counted; a tensor read on both sides keeps its float32 copy and gains a float16 one), keeps graph
   inputs and outputs float32 (``keep_io_types``), and rewrites value_info to the new types so that
   ``onnx.checker`` and shape inference agree.

An unblocked node whose every float input comes from a float32 node and whose every float output goes to
float32 slots stays float32 too: float16 there would cost a Cast pair and precision for nothing (an
``Add(var, eps)`` between ReduceMean and Sqrt in a decomposed LayerNorm).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from .core import PassReport, PassResult, Site, register_pass
from .onnx_graph import NameAllocator, graph_counts

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = 65504.0  # largest finite float16

DEFAULT_BLOCK_OPS: frozenset[str] = frozenset({
    # reductions: a float16 accumulator overflows past 65504 and drops small addends
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    "ReduceProd", "CumSum",
    # exponentials and normalisers of them
    "Softmax", "LogSoftmax", "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Softplus",
    # normalisation statistics (mean and variance of an activation)
    "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
    "LpNormalization", "MeanVarianceNormalization", "RMSNormalization",
    # index arithmetic that happens to be float: 0.1-steps lose their last elements in float16
    "Range",
    # quantization scales: small ones lose their digits or flush to zero in float16
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
})
_STANDARD_DOMAINS = ("", "ai.onnx")
_RETYPED = ("Cast", "ConstantOfShape")  # output type set by an attribute that this pass may rewrite


@dataclass
class Fp16Report(PassReport):
    """A PassReport with the numbers of a precision change (to_dict adds them under "fp16")."""

    nodes_fp16: int = 0
    nodes_fp32: dict[str, int] = field(default_factory=dict)  # kept in float32, by op type
    casts_inserted: int = 0
    initializers_fp16: int = 0  # converted in place, or float16 copies of tensors float32 nodes also read
    constants_fp16: int = 0  # Constant nodes, likewise
    weights_clamped: int = 0  # |w| > 65504 → ±65504
    weights_flushed: int = 0  # non-zero w that float16 rounds to 0 (|w| ≤ 2^-25)
    params_bytes_before: int = 0
    params_bytes_after: int = 0

    def to_dict(self) -> dict:
        numbers = {"nodes_fp16": self.nodes_fp16, "nodes_fp32": dict(sorted(self.nodes_fp32.items())),
                   "casts_inserted": self.casts_inserted, "initializers_fp16": self.initializers_fp16,
                   "constants_fp16": self.constants_fp16, "weights_clamped": self.weights_clamped,
                   "weights_flushed": self.weights_flushed, "params_bytes_before": self.params_bytes_before,
                   "params_bytes_after": self.params_bytes_after}
        return {**super().to_dict(), "fp16": numbers}


@dataclass
class _Plan:
    """What one node becomes. Slots are input indices; only slots whose tensor is float32 appear."""

    precision: str = "asis"  # "fp16" computes in float16, "fp32" is kept, "asis" has no float32 compute
    f32_in: set[int] = field(default_factory=set)  # every float32 input slot
    fp16_in: set[int] = field(default_factory=set)  # slots typed by a switched parameter
    fp32_in: set[int] = field(default_factory=set)  # slots that must stay float32
    free: list[list[int]] = field(default_factory=list)  # slots of an input-only parameter: one type, either
    fp16_out: set[int] = field(default_factory=set)
    outer: set[str] = field(default_factory=set)  # float32 outer-scope names its subgraphs read
    retype: bool = False  # a Cast/ConstantOfShape to float32 that may produce float16 instead
    reason: str = ""


# ---------------------------------------------------------------------------------------------------------------
# Types and subgraphs


def _constant_type(node: onnx.NodeProto) -> int:
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t.data_type
        if attr.name in ("value_float", "value_floats"):
            return FLOAT
        if attr.name in ("value_int", "value_ints"):
            return TensorProto.INT64
    return TensorProto.UNDEFINED


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor the graph names, as shape inference sees it (declared ones if it fails)."""
    try:
        graph = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # > 2 GB, or an op inference does not know: fall back to what the file declares
        graph = model.graph
    types: dict[str, int] = {}
    for vi in (*graph.input, *graph.output, *graph.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    types.update({t.name: t.data_type for t in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant" and _constant_type(node):
            types[node.output[0]] = _constant_type(node)
    return types


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    graphs: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            graphs.append(attr.g)
        elif attr.type == AttributeProto.GRAPHS:
            graphs.extend(attr.graphs)
    return graphs


def _outer_refs(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from enclosing scopes."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {out for node in graph.node for out in node.output}
    refs = {o.name for o in graph.output} - defined
    for node in graph.node:
        refs |= {name for name in node.input if name and name not in defined}
        for sub in _subgraphs(node):
            refs |= _outer_refs(sub) - defined
    return refs


def _rename_reads(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Point every read of ``old`` in ``graph`` and its subgraphs at ``new`` (inner shadowing is not handled)."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for sub in _subgraphs(node):
            _rename_reads(sub, old, new)
    for out in graph.output:
        if out.name == old:
            out.name = new


def _schema(node: onnx.NodeProto, opset: int) -> onnx.defs.OpSchema | None:
    try:
        return onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return None


def _formal_type(formals: Sequence[onnx.defs.OpSchema.FormalParameter], index: int) -> str | None:
    """The type string (a parameter like ``T`` or a fixed ``tensor(float)``) of argument ``index``."""
    if index < len(formals):
        return formals[index].type_str
    if formals and formals[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return formals[-1].type_str
    return None


# ---------------------------------------------------------------------------------------------------------------
# Planning


def _why_fp32(node: onnx.NodeProto, types: dict[str, int], block_ops: frozenset[str],
              block_nodes: frozenset[str]) -> str | None:
    if node.name and node.name in block_nodes:
        return "named in block_nodes"
    if node.op_type in block_ops:
        return f"{node.op_type} is on the block list"
    if node.domain not in _STANDARD_DOMAINS:
        return f"custom domain '{node.domain}'"
    if _subgraphs(node):
        return "has subgraphs (If/Loop/Scan)"
    if any(name and name not in types for name in (*node.input, *node.output)):
        return "element types unknown to shape inference"
    return None


def _plan_from_schema(node: onnx.NodeProto, schema: onnx.defs.OpSchema, f32_in: list[int],
                      f32_out: list[int], opset: int) -> _Plan:
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    p_in = {i: _formal_type(schema.inputs, i) for i, name in enumerate(node.input) if name}
    p_out = {i: _formal_type(schema.outputs, i) for i, name in enumerate(node.output) if name}
    bound = {p_in[i] for i in f32_in} | {p_out[i] for i in f32_out}
    switch = {p for p in bound if p in allowed and p in p_out.values()}
    keep = _Plan("fp32", set(f32_in), fp32_in=set(f32_in))
    if any(p not in p_in.values() for p in switch):
        keep.reason = "its output type is set by an attribute"
        return keep
    if any("tensor(float16)" not in allowed[p] for p in switch):
        keep.reason = f"{node.op_type}-{opset} has no float16 form"
        return keep
    fp16_in = {i for i, p in p_in.items() if p in switch}
    free = [[i for i in f32_in if p_in[i] == p] for p in sorted(bound - switch, key=str) if p in allowed]
    free = [group for group in free if group]
    fixed = set(f32_in) - fp16_in - {i for group in free for i in group}
    fp16_out = {i for i, p in p_out.items() if p in switch}
    return _Plan("fp16" if switch else "asis", set(f32_in), fp16_in, fixed, free, fp16_out)


def _plan_node(node: onnx.NodeProto, types: dict[str, int], opset: int, block_ops: frozenset[str],
               block_nodes: frozenset[str]) -> _Plan:
    f32_in = [i for i, name in enumerate(node.input) if name and types.get(name) == FLOAT]
    f32_out = [i for i, name in enumerate(node.output) if name and types.get(name) == FLOAT]
    outer = {name for sub in _subgraphs(node) for name in _outer_refs(sub) if types.get(name) == FLOAT}
    if node.op_type == "Constant" or not (f32_in or f32_out or outer):
        return _Plan()  # Constant outputs are decided with the initializers
    why = _why_fp32(node, types, block_ops, block_nodes)
    if why is None and node.op_type in _RETYPED and node.domain in _STANDARD_DOMAINS:
        return _Plan("asis", set(f32_in), free=[[i] for i in f32_in], retype=bool(f32_out))
    schema = None if why else _schema(node, opset)
    if why is None and schema is None:
        why = f"no schema for {node.op_type} in opset {opset}"
    if why:
        return _Plan("fp32", set(f32_in), fp32_in=set(f32_in), outer=outer, reason=why)
    return _plan_from_schema(node, schema, f32_in, f32_out, opset)


def _uses(graph: onnx.GraphProto, plans: list[_Plan]) -> dict[str, list[tuple[int, int]]]:
    """(node index, input slot) of every read; slot -1 is a read from inside the node's subgraphs."""
    uses: dict[str, list[tuple[int, int]]] = {}
    for k, node in enumerate(graph.node):
        for slot, name in enumerate(node.input):
            if name:
                uses.setdefault(name, []).append((k, slot))
        for name in plans[k].outer:
            uses.setdefault(name, []).append((k, -1))
    return uses


def _demote_sandwiched(graph: onnx.GraphProto, plans: list[_Plan], consts: set[str],
                       uses: dict[str, list[tuple[int, int]]]) -> None:
    """Keep float32 a float16 node fed only by float32 nodes and read only by float32 slots (to a fixed point)."""
    producer = {out: k for k, node in enumerate(graph.node) for out in node.output}
    outputs = {o.name for o in graph.output}

    def fp32_home(name: str) -> bool:
        k = producer.get(name)
        return k is not None and plans[k].precision != "fp16"  # kept, or no float16 compute

    def fp32_read(k: int, slot: int) -> bool:
        return slot < 0 or plans[k].precision == "fp32" or slot in plans[k].fp32_in

    changed = True
    while changed:
        changed = False
        for k, node in enumerate(graph.node):
            plan = plans[k]
            if plan.precision != "fp16":
                continue
            acts = [node.input[s] for s in plan.fp16_in if node.input[s] not in consts]
            outs = [node.output[s] for s in plan.fp16_out]
            if not acts or not all(fp32_home(a) for a in acts):
                continue
            if any(o in outputs or not uses.get(o) or not all(fp32_read(*u) for u in uses[o]) for o in outs):
                continue
            plans[k] = _Plan("fp32", plan.f32_in, fp32_in=set(plan.f32_in),
                             reason="between float32 nodes: float16 would cost a Cast pair for nothing")
            changed = True


def _homes(graph: onnx.GraphProto, plans: list[_Plan], types: dict[str, int], uses: dict[str, list[tuple[int, int]]],
           keep_io_types: bool) -> tuple[dict[str, int], set[int]]:
    """The precision each float32 activation is produced in, and the retyped Cast/ConstantOfShape nodes."""
    initializers = {t.name for t in graph.initializer}
    home = {i.name: FLOAT if keep_io_types else FLOAT16 for i in graph.input
            if i.name not in initializers and types.get(i.name) == FLOAT}
    outputs = {o.name for o in graph.output}
    retyped: set[int] = set()
    for k, node in enumerate(graph.node):
        plan = plans[k]
        if node.op_type == "Constant":
            continue
        for slot, out in enumerate(node.output):
            if out and types.get(out) == FLOAT:
                home[out] = FLOAT16 if slot in plan.fp16_out else FLOAT
        out = node.output[0] if node.output else ""
        readers = uses.get(out, [])
        if plan.retype and out not in outputs and readers and \
                all(s >= 0 and plans[j].precision == "fp16" and s in plans[j].fp16_in for j, s in readers):
            home[out] = FLOAT16
            retyped.add(k)
    return home, retyped


def _want(plan: _Plan, slot: int, node: onnx.NodeProto, home: dict[str, int], consts: set[str]) -> int | None:
    """The precision input ``slot`` must be read in; None for a slot this pass leaves alone."""
    if slot in plan.fp16_in:
        return FLOAT16
    if slot in plan.fp32_in:
        return FLOAT
    for group in plan.free:
        if slot in group:
            names = [node.input[s] for s in group]
            ok = all(n not in consts and home.get(n) == FLOAT16 for n in names)
            return FLOAT16 if ok else FLOAT
    return None


# ---------------------------------------------------------------------------------------------------------------
# Rewriting


@dataclass
class _Counts:
    clamped: int = 0
    flushed: int = 0
    warnings: list[str] = field(default_factory=list)


def _to_float16(values: np.ndarray, name: str, counts: _Counts) -> np.ndarray:
    """float32 → float16, clamping |w| > 65504 to ±65504 (inf included; NaN stays) and counting the clamps and
    the non-zero weights float16 rounds to zero."""
    values = np.asarray(values, dtype=np.float32)
    over = int(np.count_nonzero(np.abs(values) > FP16_MAX))
    half = np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16)
    flushed = int(np.count_nonzero((values != 0) & (half == 0) & ~np.isnan(values)))
    if over:
        counts.warnings.append(f"{name}: {over} weight(s) beyond ±65504 clamped to ±65504")
    counts.clamped += over
    counts.flushed += flushed
    return half


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in ("value_float", "value_floats"):
            return np.asarray(helper.get_attribute_value(attr), dtype=np.float32)
    raise ValueError(f"Constant {node.name}: no float value")


def _fp16_constant_node(node: onnx.NodeProto, output: str, counts: _Counts) -> onnx.NodeProto:
    value = _to_float16(_constant_value(node), node.name or node.output[0], counts)
    return helper.make_node("Constant", [], [output], name=output if output != node.output[0] else node.name,
                            value=numpy_helper.from_array(value, output))


def _retype(node: onnx.NodeProto, counts: _Counts) -> None:
    """Cast(to=float) → Cast(to=float16); ConstantOfShape's float32 fill value → float16."""
    if node.op_type == "Cast":
        for attr in node.attribute:
            if attr.name == "to":
                attr.i = FLOAT16
        return
    value = np.zeros(1, np.float32)  # ConstantOfShape's default fill
    for attr in list(node.attribute):
        if attr.name == "value":
            value = numpy_helper.to_array(attr.t)
            node.attribute.remove(attr)
    node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(
        _to_float16(value, node.name or node.output[0], counts), "value")))


def _cast(source: str, output: str, to: int) -> onnx.NodeProto:
    return helper.make_node("Cast", [source], [output], name=output, to=to)


def params_bytes(model: onnx.ModelProto) -> int:
    """Bytes of initializers and Constant-node tensors (element count × item size: no serialising)."""
    tensors = list(model.graph.initializer)
    tensors += [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    total = 0
    for t in tensors:
        if t.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
            continue
        size = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        total += int(np.prod(t.dims, dtype=np.int64)) * size
    return total


def _rename_graph_outputs(graph: onnx.GraphProto, plans: list[_Plan], home: dict[str, int], want: int,
                          consts: set[str], names: NameAllocator) -> dict[str, str]:
    """A graph output produced in the wrong precision is renamed inside (``y`` → ``y_fp16``) so that a Cast can
    write ``y``; returns {output: internal name}."""
    renamed: dict[str, str] = {}
    inputs = {i.name for i in graph.input}
    for out in graph.output:
        name = out.name
        if name in consts or name in inputs or home.get(name, want) == want:
            continue
        inner = names.fresh(f"{name}_{'fp16' if home[name] == FLOAT16 else 'fp32'}")
        for node in graph.node:
            for i, o in enumerate(node.output):
                if o == name:
                    node.output[i] = inner
        for node in graph.node:
            for i, x in enumerate(node.input):
                if x == name:
                    node.input[i] = inner
            for sub in _subgraphs(node):
                _rename_reads(sub, name, inner)
        for plan in plans:
            if name in plan.outer:
                plan.outer = (plan.outer - {name}) | {inner}
        home[inner] = home[name]
        renamed[name] = inner
    return renamed


@dataclass
class _Rewrite:
    """The state one conversion threads through its steps."""

    graph: onnx.GraphProto
    plans: list[_Plan]
    home: dict[str, int]
    consts: set[str]
    names: NameAllocator
    counts: _Counts = field(default_factory=_Counts)
    casts: dict[tuple[str, int], str] = field(default_factory=dict)  # (tensor, to) → Cast output
    fp16_copy: dict[str, str] = field(default_factory=dict)  # constant read on both sides → its float16 copy
    now_fp16: set[str] = field(default_factory=set)  # names whose tensor became float16
    initializers: int = 0
    constants: int = 0

    def cast_of(self, name: str, to: int, emit: list[onnx.NodeProto]) -> str:
        key = (name, to)
        if key not in self.casts:
            self.casts[key] = self.names.fresh(f"{name}_to_{'fp16' if to == FLOAT16 else 'fp32'}")
            emit.append(_cast(name, self.casts[key], to))
        return self.casts[key]


def _constant_wants(rw: _Rewrite) -> dict[str, set[int]]:
    wants: dict[str, set[int]] = {}
    for k, node in enumerate(rw.graph.node):
        for slot, name in enumerate(node.input):
            if name in rw.consts:
                w = _want(rw.plans[k], slot, node, rw.home, rw.consts)
                if w is not None:
                    wants.setdefault(name, set()).add(w)
        for name in rw.plans[k].outer & rw.consts:
            wants.setdefault(name, set()).add(FLOAT)
    return wants


def _convert_initializers(rw: _Rewrite, wants: dict[str, set[int]]) -> None:
    """Read only in float16 → converted in place; read in both → a float16 copy next to the float32 one."""
    graph_inputs = {i.name: i for i in rw.graph.input}
    for index, tensor in enumerate(list(rw.graph.initializer)):
        want = wants.get(tensor.name, set())
        if FLOAT16 not in want or tensor.data_type != FLOAT:
            continue
        half = numpy_helper.from_array(_to_float16(numpy_helper.to_array(tensor), tensor.name, rw.counts))
        rw.initializers += 1
        if want == {FLOAT16}:
            half.name = tensor.name
            rw.graph.initializer[index].CopyFrom(half)
            rw.now_fp16.add(tensor.name)
            if tensor.name in graph_inputs:  # an overridable initializer (IR < 4 style) is declared as an input
                graph_inputs[tensor.name].type.tensor_type.elem_type = FLOAT16
        else:
            half.name = rw.fp16_copy[tensor.name] = rw.names.fresh(f"{tensor.name}_fp16")
            rw.graph.initializer.append(half)


def _emit_nodes(rw: _Rewrite, wants: dict[str, set[int]], retyped: set[int]) -> list[onnx.NodeProto]:
    """The new node list, in graph order, each Cast right before its first reader."""
    emit: list[onnx.NodeProto] = []
    for k, node in enumerate(rw.graph.node):
        plan = rw.plans[k]
        for slot, name in enumerate(node.input):
            want = _want(plan, slot, node, rw.home, rw.consts)
            if want is None:
                continue
            if name in rw.consts:
                if want == FLOAT16 and name in rw.fp16_copy:
                    node.input[slot] = rw.fp16_copy[name]
            elif rw.home.get(name) not in (None, want):
                node.input[slot] = rw.cast_of(name, want, emit)
        for name in sorted(plan.outer):
            if name not in rw.consts and rw.home.get(name) == FLOAT16:
                cast = rw.cast_of(name, FLOAT, emit)
                for sub in _subgraphs(node):
                    _rename_reads(sub, name, cast)
        if k in retyped:
            _retype(node, rw.counts)
        if node.op_type == "Constant" and FLOAT16 in wants.get(node.output[0], set()):
            rw.constants += 1
            if wants[node.output[0]] == {FLOAT16}:
                emit.append(_fp16_constant_node(node, node.output[0], rw.counts))
                rw.now_fp16.add(node.output[0])
                continue
            copy = rw.fp16_copy[node.output[0]] = rw.names.fresh(f"{node.output[0]}_fp16")
            emit.extend([node, _fp16_constant_node(node, copy, rw.counts)])
            continue
        emit.append(node)
    return emit


def _retype_value_info(graph: onnx.GraphProto, now_fp16: set[str], renamed: dict[str, str],
                       output_type: int) -> None:
    for vi in graph.value_info:
        if vi.name in renamed:
            vi.type.tensor_type.elem_type = output_type
        elif vi.name in now_fp16 and vi.type.HasField("tensor_type"):
            vi.type.tensor_type.elem_type = FLOAT16


def _fill_report(report: Fp16Report, rw: _Rewrite, nodes: list[tuple[str, str]], retyped: set[int],
                 keep_io_types: bool) -> None:
    """Sites and counts per original node; ``nodes`` holds (name, op type) in the original order."""
    for k, ((where, op), plan) in enumerate(zip(nodes, rw.plans)):
        if plan.precision == "fp16":
            report.sites.append(Site(where, f"{op} in float16"))
        elif plan.precision == "fp32":
            report.skipped.append(Site(where, f"kept float32: {plan.reason}"))
        elif k in retyped:
            report.sites.append(Site(where, f"{op} now produces float16"))
    report.nodes_fp16 = sum(p.precision == "fp16" for p in rw.plans)
    report.nodes_fp32 = dict(Counter(op for (_, op), p in zip(nodes, rw.plans) if p.precision == "fp32"))
    if not keep_io_types:
        report.sites.extend(Site(i.name, "graph input float16") for i in rw.graph.input if i.name in rw.now_fp16)


@register_pass("fp16", stage="onnx")
def convert_fp16(model: onnx.ModelProto, *, block_ops: Iterable[str] = DEFAULT_BLOCK_OPS,
                 block_nodes: Iterable[str] = (), keep_io_types: bool = True) -> PassResult:
    """Weights and compute in float16 with Casts in the graph; block-listed ops, graph I/O in float32 (ONNX stage)."""
    start = time.perf_counter()
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    report = Fp16Report("fp16", before=graph_counts(model), params_bytes_before=params_bytes(model))
    opset = next((o.version for o in model.opset_import if o.domain in _STANDARD_DOMAINS), 1)
    types = _elem_types(model)
    consts = {t.name for t in graph.initializer if t.data_type == FLOAT}
    consts |= {n.output[0] for n in graph.node if n.op_type == "Constant" and types.get(n.output[0]) == FLOAT}
    plans = [_plan_node(n, types, opset, frozenset(block_ops), frozenset(block_nodes)) for n in graph.node]
    uses = _uses(graph, plans)
    _demote_sandwiched(graph, plans, consts, uses)
    home, retyped = _homes(graph, plans, types, uses, keep_io_types)
    names = NameAllocator(graph)
    originals = [(n.name or n.output[0], n.op_type) for n in graph.node]
    output_type = FLOAT if keep_io_types else FLOAT16
    float_outputs = [o for o in graph.output if types.get(o.name) == FLOAT and o.name not in consts]
    renamed = _rename_graph_outputs(graph, plans, home, output_type, consts, names)

    rw = _Rewrite(graph, plans, home, consts, names)
    rw.now_fp16 = {name for name, h in home.items() if h == FLOAT16}
    wants = _constant_wants(rw)
    _convert_initializers(rw, wants)
    emit = _emit_nodes(rw, wants, retyped)
    emit.extend(_cast(inner, name, output_type) for name, inner in renamed.items())
    rw.now_fp16 -= set(renamed)
    del graph.node[:]
    graph.node.extend(emit)
    for inp in graph.input:
        if inp.name in home:
            inp.type.tensor_type.elem_type = home[inp.name]
    inputs = {i.name for i in graph.input}
    for out in float_outputs:  # an output that is a graph input keeps the input's type
        out.type.tensor_type.elem_type = home[out.name] if out.name in inputs else output_type
    _retype_value_info(graph, rw.now_fp16, renamed, output_type)

    _fill_report(report, rw, originals, retyped, keep_io_types)
    report.casts_inserted = len(rw.casts) + len(renamed)
    report.initializers_fp16, report.constants_fp16 = rw.initializers, rw.constants
    report.weights_clamped, report.weights_flushed = rw.counts.clamped, rw.counts.flushed
    if rw.counts.clamped:
        report.warnings.append(f"{rw.counts.clamped} weight(s) beyond ±65504 clamped to ±65504")
        report.warnings.extend(rw.counts.warnings)
    report.params_bytes_after = params_bytes(model)
    report.before["params_bytes"] = report.params_bytes_before
    report.after = {**graph_counts(model), "params_bytes": report.params_bytes_after}
    report.seconds = time.perf_counter() - start
    return PassResult(model, report)
