"""`onnx_reparam`: the generic branch merge — any Add/Sum whose inputs are affine in one
tensor X becomes one Conv, however the exporter spelled the branches.

1. Region. From an Add/Sum, walk back through ops that are affine in their data input (Conv, BN, Pad
   and Slice/Concat with constants, Mul/Add/Sub/Div by constants, AveragePool, Identity …); shape-only
   subgraphs (Shape → ConstantOfShape → …) count as constants. If every path ends at the same tensor
   X, the region computes y = A·X + c.
2. Geometry. Along each path through the region, strides multiply and receptive fields grow:
   k_path = k₁ + (k₂ − 1)·s₁ + …, p_path = p₁ + p₂·s₁ + …. The merged conv covers the union of the
   paths' windows: P = max p, K = P + max(k − p). Paths of unequal total stride are not mergeable.
3. Measure, not derive. The region is run in float64 (onnx.reference) on zeros (the bias) and on
   unit impulses, one per input channel and per stride phase (s² batches), reading the kernel tap by
   tap. The group count is the largest g whose off-diagonal blocks are all zero.
4. Certify. The float32 candidate is compared with the region on random inputs at two sizes (both
   parities, so the borders and the stride phase are exercised); it replaces the region only when
   max|a − b| / max|a| ≤ 1e-6. A misaligned padding or an exporter quirk fails here and is skipped with
   the reason — never merged wrongly.
5. It is only kept when the merged conv costs no more multiply-accumulates than the region's convs.
Repeated to a fixed point, outermost Add first, so one pass merges a block however deeply nested.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .core import PassReport, PassResult, Site, register_pass
from .onnx_fuse import onnx_fuse_bn
from .onnx_graph import GraphIndex, add_initializer, attributes, eliminate_dead_nodes, graph_counts, unique_name

# Ops that are affine in their (single) non-constant data input, given constant other inputs.
AFFINE_OPS = {"Conv", "BatchNormalization", "Pad", "Slice", "Concat", "Add", "Sub", "Mul", "Div", "Sum",
              "AveragePool", "Identity", "Dropout", "Neg", "Unsqueeze", "Squeeze", "Expand", "Where",
              "ScatterND", "Cast", "Transpose"}
SHAPE_OPS = {"Shape", "Size"}  # their output depends on shapes only: constants for a fixed input size
ROOT_OPS = {"Add", "Sum"}
CERTIFY_TOLERANCE = 1e-6


class NotMergeable(Exception):
    """A candidate region that cannot become one Conv; the message is the reason reported."""


@dataclass
class Region:
    root: onnx.NodeProto
    source: str
    nodes: list[onnx.NodeProto] = field(default_factory=list)  # in graph order
    # tensors outside the region whose shape (only) the region reads: constants at the file's size
    shape_reads: set[str] = field(default_factory=set)


def _linear_in_data(node: onnx.NodeProto, data: list[str], index: GraphIndex) -> str | None:
    """None when ``node`` is affine in its non-constant inputs ``data``; else why not."""
    op = node.op_type
    if op in ("Mul", "Div") and len(data) > 1:
        return f"{op} of two non-constant tensors"
    if op == "Div" and data and node.input[1] in data:
        return "Div by a non-constant"
    if op == "Pad":
        mode = attributes(node).get("mode", b"constant")
        if mode not in (b"constant", "constant"):
            return f"Pad mode {mode!r} is not affine"
    if op in ("Conv", "BatchNormalization") and any(name in data for name in node.input[1:]):
        return f"{op} with non-constant weights"
    if op == "BatchNormalization" and len(node.output) > 1 and any(node.output[1:]):
        return "BatchNormalization in training mode"
    if op == "AveragePool":
        attrs = attributes(node)
        if any(attrs.get("pads", [])) and not attrs.get("count_include_pad", 0):
            return "AveragePool whose padded zeros do not count in the average"
        if attrs.get("ceil_mode", 0):
            return "AveragePool with ceil_mode"
    if op == "Where" and node.input[0] in data:
        return "Where on a data-dependent condition"
    if op == "Cast":
        to = attributes(node).get("to")
        if to not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
            return "Cast to a non-float type"
    return None


def constant_tensors(index: GraphIndex) -> set[str]:
    """Tensors whose values do not depend on the graph's input values: initializers, Constant outputs,
    shapes (Shape/Size), and whatever is computed from those alone. One forward sweep."""
    const = set(index.initializers) | {""}
    for node in index.graph.node:
        if node.op_type == "Constant" or node.op_type in SHAPE_OPS or all(i in const for i in node.input):
            const.update(node.output)
    return const


def find_region(root: onnx.NodeProto, index: GraphIndex, const: set[str]) -> Region:
    """The affine region behind ``root`` and its single source tensor, or NotMergeable."""
    if root.op_type not in ROOT_OPS:
        raise NotMergeable(f"{root.op_type} is not a sum")
    data_nodes: dict[int, onnx.NodeProto] = {}
    sources: set[str] = set()
    seen: set[str] = set()

    def visit(name: str, shape_only: bool = False) -> None:
        if name in seen or name in const:
            return
        seen.add(name)
        node = index.producer.get(name)
        if node is None or node.op_type not in AFFINE_OPS:
            # a graph input, or the output of a non-affine op (Relu …); read through a Shape, only its
            # shape matters: the branches' source if it is that, else a constant at the file's size
            (shape_reads if shape_only else sources).add(name)
            return
        data = [i for i in node.input if i not in const]
        why = _linear_in_data(node, data, index)
        if why is not None:
            raise NotMergeable(why)
        data_nodes[id(node)] = node
        for name_in in data:
            visit(name_in, shape_only)

    data_nodes[id(root)] = root
    for name in root.input:
        visit(name)
    # the constant subgraphs the region reads (shape arithmetic, Constant nodes), shared ones included;
    # a Shape of a tensor computed from X pulls that computation into the region too
    members: dict[int, onnx.NodeProto] = {}
    stack: list[str] = []
    shape_reads: set[str] = set()

    def admit_data_nodes() -> None:
        for key, node in list(data_nodes.items()):
            if key not in members:
                members[key] = node
                stack.extend(i for i in node.input if i in const and i and i not in index.initializers)

    admit_data_nodes()
    while stack:
        name = stack.pop()
        node = index.producer.get(name)
        if node is None or id(node) in members:
            continue
        members[id(node)] = node
        if node.op_type in SHAPE_OPS:
            if node.input[0] not in const:
                visit(node.input[0], shape_only=True)
                admit_data_nodes()
            elif node.input[0] not in index.initializers:  # the shape of shape arithmetic: computed too
                stack.append(node.input[0])
            continue
        stack.extend(i for i in node.input if i and i not in index.initializers)
    if len(sources) != 1:
        raise NotMergeable(f"branches start from {len(sources)} different tensors")
    source = next(iter(sources))
    if not any(n.op_type in ("Conv", "AveragePool") for n in data_nodes.values()):
        raise NotMergeable("no Conv in the branches (nothing to merge into)")
    # the region's own tensors must not feed anything outside it
    for node in data_nodes.values():
        if node is root:
            continue
        for out in node.output:
            if out in index.graph_outputs or any(id(c) not in members for c in index.consumers.get(out, [])):
                raise NotMergeable(f"{node.op_type} {node.name or out} inside the branches is also used elsewhere")
    order = {id(n): i for i, n in enumerate(index.graph.node)}
    produced = {t for n in data_nodes.values() for t in n.output}
    outside = {t for t in shape_reads if t != source and t not in produced}
    return Region(root, source, sorted(members.values(), key=lambda n: order[id(n)]), outside)


# -- geometry -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """What one path through the region does on one spatial axis: output o reads inputs
    [o·stride − pad, o·stride − pad + kernel − 1]."""

    stride: int = 1
    pad: int = 0
    kernel: int = 1

    def then(self, stride: int, pad: int, kernel: int, dilation: int = 1) -> Window:
        span = (kernel - 1) * dilation + 1
        return Window(self.stride * stride, self.pad + pad * self.stride, self.kernel + (span - 1) * self.stride)


def _node_windows(node: onnx.NodeProto, rank: int) -> list[tuple[int, int, int, int]] | None:
    """Per spatial axis (stride, pad_begin, kernel, dilation) for Conv/AveragePool/Pad; None when the op
    does not change geometry."""
    attrs = attributes(node)
    if node.op_type in ("Conv", "AveragePool"):
        if node.op_type == "Conv":
            kernel = list(attrs.get("kernel_shape", [])) or None
            if kernel is None:
                raise NotMergeable("Conv without kernel_shape")
        else:
            kernel = list(attrs["kernel_shape"])
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        if auto_pad not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
            raise NotMergeable(f"{node.op_type} with auto_pad {auto_pad!r}")
        strides = list(attrs.get("strides", [1] * rank))
        pads = list(attrs.get("pads", [0] * 2 * rank))
        dilations = list(attrs.get("dilations", [1] * rank))
        return [(strides[a], pads[a], kernel[a], dilations[a]) for a in range(rank)]
    return None


def path_windows(region: Region, index: GraphIndex, rank: int, resolve=None) -> tuple[list[list[Window]], dict]:
    """Every path from the source to the root as its per-axis window (constant padding and crops count),
    and the windows of every tensor on the way."""
    inside = {id(n) for n in region.nodes}
    windows: dict[str, list[list[Window]]] = {region.source: [[Window()] * rank]}

    def paths(name: str) -> list[list[Window]]:
        if name in windows:
            return windows[name]
        node = index.producer.get(name)
        if node is None or id(node) not in inside or node.op_type == "Constant" or node.op_type in SHAPE_OPS:
            return []
        result: list[list[Window]] = []
        for inp in node.input:
            for per_axis in paths(inp):
                geometry = _node_windows(node, rank)
                if geometry is not None:
                    per_axis = [w.then(s, p, k, d) for w, (s, p, k, d) in zip(per_axis, geometry)]
                elif node.op_type == "Pad" and inp == node.input[0]:
                    pads = index.constant(node.input[1]) if len(node.input) > 1 else attributes(node).get("pads")
                    if pads is None and resolve is not None:
                        pads = resolve(node.input[1])  # computed from shapes: evaluated at a probe size
                    if pads is None:
                        raise NotMergeable("Pad with non-constant pads")
                    if len(node.input) > 3 and node.input[3]:
                        raise NotMergeable("Pad with explicit axes")
                    pads = [int(v) for v in np.asarray(pads).reshape(-1)]
                    begin = pads[len(pads) // 2 - rank: len(pads) // 2]
                    per_axis = [Window(w.stride, w.pad + b * w.stride, w.kernel) for w, b in zip(per_axis, begin)]
                elif node.op_type == "Slice" and inp == node.input[0]:
                    per_axis = _slice_window(node, index, per_axis, rank, resolve)
                result.append(per_axis)
        windows[name] = result
        return result

    all_paths = [p for name in region.root.input for p in paths(name)]
    if not all_paths:
        raise NotMergeable("no path from the source to the sum")
    return all_paths, windows


def _slice_window(node: onnx.NodeProto, index: GraphIndex, per_axis: list[Window], rank: int,
                  resolve=None) -> list[Window]:
    """A crop of the spatial axes by constant starts: output o reads o + start (pad −= start·stride)."""
    names = list(node.input) + [""] * (5 - len(node.input))

    def value(name: str):
        if not name:
            return None
        found = index.constant(name)
        return resolve(name) if found is None and resolve is not None else found

    starts, axes, steps = (value(names[i]) for i in (1, 3, 4))
    if starts is None:
        raise NotMergeable("Slice with non-constant starts")
    starts = [int(v) for v in np.asarray(starts).reshape(-1)]
    axes = list(range(len(starts))) if axes is None else [int(v) for v in np.asarray(axes).reshape(-1)]
    if steps is not None and any(int(v) != 1 for v in np.asarray(steps).reshape(-1)):
        raise NotMergeable("Slice with steps")
    ndim = rank + 2
    out = list(per_axis)
    for axis, start in zip(axes, starts):
        axis = axis + ndim if axis < 0 else axis
        if axis >= 2:
            if start < 0:
                raise NotMergeable("Slice from the end of a spatial axis")
            w = out[axis - 2]
            out[axis - 2] = Window(w.stride, w.pad - start * w.stride, w.kernel)
    return out


@dataclass(frozen=True)
class Geometry:
    stride: tuple[int, ...]
    pad_begin: tuple[int, ...]
    kernel: tuple[int, ...]


def merged_geometry(paths: list[list[Window]]) -> Geometry:
    rank = len(paths[0])
    strides = {tuple(w.stride for w in p) for p in paths}
    if len(strides) > 1:
        raise NotMergeable(f"branches have unequal strides {sorted(strides)}")
    stride = strides.pop()
    pad = tuple(max(p[a].pad for p in paths) for a in range(rank))
    reach = tuple(max(p[a].kernel - p[a].pad for p in paths) for a in range(rank))
    return Geometry(stride, pad, tuple(pad[a] + reach[a] for a in range(rank)))


# -- running the region in float64 ---------------------------------------------------------------------
def _region_model(region: Region, index: GraphIndex, opsets: list,
                  shapes: dict[str, list[int | None]] | None = None) -> onnx.ModelProto:
    """The region alone as a float64 model: X → root output. A Shape of a tensor outside the region is
    the constant that tensor's shape is in the file (shape arithmetic fed by the graph input, say)."""
    needed = {name for n in region.nodes for name in n.input if name in index.initializers}
    inits = []
    for name in sorted(needed):
        array = numpy_helper.to_array(index.initializers[name])
        if np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float64)
        inits.append(numpy_helper.from_array(array, name))
    nodes = []
    for node in region.nodes:
        if node.op_type == "Shape" and node.input[0] in region.shape_reads:
            dims = (shapes or {}).get(node.input[0])
            if not dims or any(d is None for d in dims[1:]):
                raise NotMergeable(f"the branches read the shape of {node.input[0]}, which the file leaves free")
            attrs = attributes(node)
            start, end = attrs.get("start", 0), attrs.get("end", len(dims))
            if start < 0 or end < 0 or (dims[0] is None and start > 0):
                start, end = (start % len(dims)), (end % len(dims) if end < 0 else end)
            out = node.output[0]
            rest = np.asarray(dims[max(start, 1):end], np.int64)
            if dims[0] is None and start == 0:  # a free batch: the source's own (the batch runs through)
                nodes += [helper.make_node("Shape", [region.source], [out + "_src"]),
                          helper.make_node("Slice", [out + "_src", out + "_0", out + "_1"], [out + "_batch"]),
                          helper.make_node("Concat", [out + "_batch", out + "_rest"], [out], axis=0)]
                inits += [numpy_helper.from_array(np.asarray([0], np.int64), out + "_0"),
                          numpy_helper.from_array(np.asarray([1], np.int64), out + "_1"),
                          numpy_helper.from_array(rest, out + "_rest")]
            else:
                value = np.asarray(dims[start:end], np.int64)
                nodes.append(helper.make_node("Constant", [], [out], value=numpy_helper.from_array(value, out + "_v")))
            continue
        node = onnx.NodeProto.FromString(node.SerializeToString())
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float64), attr.t.name))
            if node.op_type == "Cast" and attr.name == "to" and attr.i in (TensorProto.FLOAT, TensorProto.FLOAT16):
                attr.i = TensorProto.DOUBLE
        nodes.append(node)
    x = helper.make_tensor_value_info(region.source, TensorProto.DOUBLE, None)
    y = helper.make_tensor_value_info(region.root.output[0], TensorProto.DOUBLE, None)
    graph = helper.make_graph(nodes, "region", [x], [y], inits)
    return helper.make_model(graph, opset_imports=opsets)


def _fast_average_pool():
    """AveragePool for onnx.reference, vectorised (its own loops over every output element in Python:
    144 of 160 s on dbb_resnet18). Only what regions admit: zero padding counted in the mean, no ceil_mode."""
    from onnx.reference.op_run import OpRun

    class AveragePool(OpRun):
        op_domain = ""

        def _run(self, x, auto_pad=None, ceil_mode=None, count_include_pad=None, dilations=None,
                 kernel_shape=None, pads=None, strides=None):
            rank = len(kernel_shape)
            pads = list(pads or [0] * 2 * rank)
            strides = list(strides or [1] * rank)
            if ceil_mode or any(d != 1 for d in (dilations or [1] * rank)):
                raise NotMergeable("AveragePool with ceil_mode or dilation")
            if any(pads) and not count_include_pad:
                raise NotMergeable("AveragePool whose padded zeros do not count in the average")
            widths = [(0, 0), (0, 0)] + [(pads[a], pads[rank + a]) for a in range(rank)]
            padded = np.pad(x, widths)
            axes = tuple(range(2, 2 + rank))
            windows = np.lib.stride_tricks.sliding_window_view(padded, kernel_shape, axis=axes)
            windows = windows[(slice(None), slice(None)) + tuple(slice(None, None, st) for st in strides)]
            return (windows.mean(axis=tuple(range(-rank, 0))).astype(x.dtype),)

    return AveragePool


class RegionRunner:
    def __init__(self, model: onnx.ModelProto):
        from onnx.reference import ReferenceEvaluator

        self.evaluator = ReferenceEvaluator(model, new_ops=[_fast_average_pool()])
        self.input = model.graph.input[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.evaluator.run(None, {self.input: x})[0], dtype=np.float64)

    def value_at(self, name: str, channels: int, rank: int, size: int = 16,
                 fixed: tuple[int, ...] | None = None) -> np.ndarray:
        """An intermediate tensor's value for a zero input of spatial ``size`` (shape arithmetic)."""
        spatial = tuple(fixed) if fixed else (size,) * rank
        return np.asarray(self.evaluator.run([name], {self.input: np.zeros((1, channels) + spatial)})[0])


def _measure_size(geometry: Geometry, pad_end: tuple[int, ...],
                  fixed: tuple[int, ...] | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The smallest input (per axis: size n, first impulse position c) whose outputs show every tap of
    every stride phase: impulses at c … c+s−1 reach outputs (c + d + P − k)/s, which must all lie in
    [0, out) with out = floor((n + P + P_end − K)/s) + 1. Small inputs keep the impulse runs cheap."""
    sizes, starts = [], []
    for s, P, K, E in zip(geometry.stride, geometry.pad_begin, geometry.kernel, pad_end):
        c = max(0, K - 1 - P)
        n = c + s
        while (n + P + E - K) // s + 1 <= (c + s - 1 + P) // s or n + P + E < K:
            n += 1
        sizes.append(n)
        starts.append(c)
    if fixed is not None:  # a region whose constants hold the file's own size: measured at that size
        if any(f < n for f, n in zip(fixed, sizes)):
            raise NotMergeable(f"the input ({'×'.join(map(str, fixed))}) is too small to read the merged kernel")
        return tuple(fixed), tuple(starts)
    return tuple(sizes), tuple(starts)


def measure_conv(run: RegionRunner, channels: int, geometry: Geometry, pad_end: tuple[int, ...],
                 fixed: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Kernel (Cout, Cin, *K) and bias (Cout) of the region, read from impulse responses (see module doc)."""
    rank = len(geometry.kernel)
    s, P, K = geometry.stride, geometry.pad_begin, geometry.kernel
    size, start = _measure_size(geometry, pad_end, fixed)
    zero = run(np.zeros((1, channels, *size)))
    cout = zero.shape[1]
    kernel = np.zeros((cout, channels, *K))
    for phase in np.ndindex(*s):
        x = np.zeros((channels, channels, *size))
        position = tuple(start[a] + phase[a] for a in range(rank))
        x[(np.arange(channels), np.arange(channels)) + position] = 1.0
        response = run(x) - zero  # (Cin, Cout, *out)
        taps = [[k for k in range(K[a]) if (position[a] + P[a] - k) % s[a] == 0] for a in range(rank)]
        for tap in np.ndindex(*[len(t) for t in taps]):
            k = tuple(taps[a][tap[a]] for a in range(rank))
            out = tuple((position[a] + P[a] - k[a]) // s[a] for a in range(rank))
            if any(o < 0 or o >= response.shape[2 + a] for a, o in enumerate(out)):
                raise NotMergeable("the region's output is too small to read its kernel")
            kernel[(slice(None), slice(None)) + k] = response[(slice(None), slice(None)) + out].T
    # the bias: the response to zeros away from any border effect (certification checks the borders)
    centre = tuple(min(zero.shape[2 + a] - 1, max(0, (start[a] + P[a]) // s[a])) for a in range(rank))
    bias = zero[(0, slice(None)) + centre]
    return kernel, bias


def detect_groups(kernel: np.ndarray) -> int:
    """The largest g dividing Cin and Cout whose off-diagonal blocks are exactly zero."""
    cout, cin = kernel.shape[:2]
    for g in sorted({d for d in range(1, math.gcd(cout, cin) + 1) if cout % d == 0 and cin % d == 0}, reverse=True):
        blocks = kernel.reshape(g, cout // g, g, cin // g, -1)
        mask = ~np.eye(g, dtype=bool)
        if not np.any(blocks[np.where(mask)[0], :, np.where(mask)[1]]):
            return g
    return 1


def grouped_weight(kernel: np.ndarray, groups: int) -> np.ndarray:
    cout, cin = kernel.shape[:2]
    blocks = kernel.reshape(groups, cout // groups, groups, cin // groups, *kernel.shape[2:])
    return np.stack([blocks[g, :, g] for g in range(groups)]).reshape(cout, cin // groups, *kernel.shape[2:])


def _conv_model(source: str, output: str, weight: np.ndarray, bias: np.ndarray, geometry: Geometry,
                pad_end: tuple[int, ...], groups: int) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(weight.astype(np.float64), "W"), numpy_helper.from_array(bias, "B")]
    node = helper.make_node("Conv", [source, "W", "B"], [output], kernel_shape=list(geometry.kernel),
                            strides=list(geometry.stride), pads=list(geometry.pad_begin) + list(pad_end),
                            group=groups)
    graph = helper.make_graph([node], "candidate", [helper.make_tensor_value_info(source, TensorProto.DOUBLE, None)],
                              [helper.make_tensor_value_info(output, TensorProto.DOUBLE, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _pad_end(geometry: Geometry, run: RegionRunner, channels: int,
             fixed: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """End padding that makes the conv's output size equal the region's, found from one probe."""
    rank = len(geometry.kernel)
    size = tuple(fixed) if fixed else tuple(geometry.stride[a] * (geometry.kernel[a] + 3) + 5 for a in range(rank))
    out = run(np.zeros((1, channels, *size))).shape[2:]
    ends = []
    for a in range(rank):
        s, k, pb, n = geometry.stride[a], geometry.kernel[a], geometry.pad_begin[a], size[a]
        # a conv gives out = floor((n + P_b + P_e − K) / s) + 1: the smallest P_e ≥ 0 giving the region's size
        end = max(0, (out[a] - 1) * s + k - n - pb)
        if (n + pb + end - k) // s + 1 != out[a]:
            raise NotMergeable(f"no padding makes a {k}-tap conv give the branches' output size")
        ends.append(end)
    return tuple(ends)


def certify(run: RegionRunner, candidate: RegionRunner, channels: int, geometry: Geometry, seed: int,
            fixed: tuple[int, ...] | None = None) -> float:
    """Largest relative error of the candidate against the region over two random inputs (of two sizes,
    both parities; at the file's own size when its constants fix it)."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    for extra in (0, 1):
        size = tuple(fixed) if fixed else tuple(
            geometry.stride[a] * (geometry.kernel[a] + 2) + 3 + extra for a in range(len(geometry.kernel)))
        x = rng.standard_normal((2, channels, *size))
        a, b = run(x), candidate(x)
        if a.shape != b.shape:
            raise NotMergeable(f"merged conv gives shape {b.shape[1:]}, the branches {a.shape[1:]}")
        scale = float(np.abs(a).max()) or 1.0
        worst = max(worst, float(np.abs(a - b).max()) / scale)
    return worst


def _macs_of_region(region: Region, index: GraphIndex, windows: dict, final_stride: tuple[int, ...]) -> float:
    """MACs per output pixel of the merged conv spent by the region's convs: Cout·Cin/g·k² of each conv,
    times the number of its own output pixels per final one, (final stride / its stride)²."""
    total = 0.0
    for node in region.nodes:
        if node.op_type != "Conv":
            continue
        w = index.constant(node.input[1])
        if w is None:
            continue
        strides = {tuple(win.stride for win in path) for path in windows.get(node.output[0], [])}
        own = max(strides, default=final_stride)
        total += float(np.prod(w.shape)) * float(np.prod([f / o for f, o in zip(final_stride, own)]))
    return total


def _measure(run: RegionRunner, region: Region, index: GraphIndex, channels: int, rank: int, seed: int,
             fixed: tuple[int, ...] | None):
    paths, windows = path_windows(region, index, rank,
                                  resolve=lambda name: run.value_at(name, channels, rank, fixed=fixed))
    geometry = merged_geometry(paths)
    pad_end = _pad_end(geometry, run, channels, fixed)
    kernel, bias = measure_conv(run, channels, geometry, pad_end, fixed)
    groups = detect_groups(kernel)
    weight = grouped_weight(kernel, groups).astype(np.float32)
    candidate = RegionRunner(_conv_model(region.source, region.root.output[0], weight.astype(np.float64),
                                         bias, geometry, pad_end, groups))
    error = certify(run, candidate, channels, geometry, seed, fixed)
    if not error <= CERTIFY_TOLERANCE:
        raise NotMergeable(f"the measured conv does not reproduce the branches (rel. error {error:.1e}): "
                           "misaligned padding or a non-conv border")
    return windows, geometry, pad_end, groups, weight, bias, error


def merge_region(model: onnx.ModelProto, index: GraphIndex, region: Region, channels: int, rank: int,
                 seed: int = 0, spatial: tuple[int, ...] | None = None,
                 shapes: dict[str, list[int | None]] | None = None) -> str:
    """Measure, certify and splice in one Conv for ``region``; returns what it did.

    Regions are measured on small inputs of their own choosing. One whose shape arithmetic was baked into
    constants at the file's size (an exporter writing slice assignments as ScatterND over Expand of a fixed
    shape) cannot run at another size: it is measured and certified at ``spatial``, the size its source
    has in the file."""
    run = RegionRunner(_region_model(region, index, list(model.opset_import), shapes))
    at = None
    try:
        windows, geometry, pad_end, groups, weight, bias, error = _measure(run, region, index, channels, rank,
                                                                           seed, None)
    except Exception as first:  # the evaluator's broadcasting errors, or a NotMergeable at foreign sizes
        if not spatial or any(d is None for d in spatial):
            raise first if isinstance(first, NotMergeable) else NotMergeable(
                f"the branches cannot be run at other sizes ({type(first).__name__}) and the input size is "
                f"unknown") from None
        at = tuple(spatial)
        try:
            windows, geometry, pad_end, groups, weight, bias, error = _measure(run, region, index, channels,
                                                                               rank, seed, at)
        except NotMergeable:
            raise
        except Exception as second:
            raise NotMergeable(f"the branches fail to run at the file's size: {type(second).__name__}: "
                               f"{str(second).splitlines()[0][:120]}") from None
    merged_macs = int(np.prod(weight.shape))
    region_macs = _macs_of_region(region, index, windows, geometry.stride)
    if merged_macs > region_macs * (1 + 1e-9):
        raise NotMergeable(f"one {'×'.join(map(str, geometry.kernel))} conv would cost {merged_macs:,} MACs per "
                           f"output pixel, the branches {region_macs:,.0f}")
    graph = model.graph
    base = region.root.name or region.root.output[0]
    w_name = add_initializer(graph, f"{base}.merged.weight", weight)
    b_name = add_initializer(graph, f"{base}.merged.bias", bias.astype(np.float32))
    conv = helper.make_node("Conv", [region.source, w_name, b_name], [region.root.output[0]],
                            name=unique_name(graph, f"{base}.merged"), kernel_shape=list(geometry.kernel),
                            strides=list(geometry.stride), pads=list(geometry.pad_begin) + list(pad_end),
                            group=groups)
    position = list(graph.node).index(region.root)
    graph.node.remove(region.root)
    graph.node.insert(position, conv)
    convs = sum(1 for n in region.nodes if n.op_type == "Conv")
    what = (f"{len(region.nodes)} nodes ({convs} Conv) → Conv {'×'.join(map(str, geometry.kernel))} "
            f"stride {geometry.stride[0]} groups {groups}, certified rel. error {error:.1e}"
            + (f" at the file's size {'×'.join(map(str, at))}" if at else ""))
    return what


def tensor_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
    return shapes


@register_pass("onnx_reparam", stage="onnx")
def onnx_reparam(model: onnx.ModelProto, fuse_bn: bool = True, max_sweeps: int = 50) -> PassResult:
    """Merge parallel affine branches summed by Add/Sum into one Conv (generic, measured, certified)."""
    start = time.perf_counter()
    report = PassReport("onnx_reparam", before=graph_counts(model))
    if fuse_bn:  # every fold it makes is a change of this pass too, and is reported as one
        folded = onnx_fuse_bn(model)
        model = folded.model
        report.sites.extend(folded.report.sites)
    else:
        model = onnx.ModelProto.FromString(model.SerializeToString())
    failed: dict[str, str] = {}  # root output → last reason, for the report
    tried: set[tuple[str, int]] = set()  # (root output, region size) measured and refused already
    for _ in range(max_sweeps):
        index = GraphIndex(model.graph)
        const = constant_tensors(index)
        shapes = tensor_shapes(model)
        consumed: set[int] = set()
        merged = 0
        for root in reversed(list(model.graph.node)):  # outermost sums first
            if root.op_type not in ROOT_OPS or id(root) in consumed:
                continue
            key = root.output[0]
            region = None
            try:
                region = find_region(root, index, const)
                if any(id(n) in consumed for n in region.nodes) or (key, len(region.nodes)) in tried:
                    continue
                shape = shapes.get(region.source) or []
                if len(shape) < 3 or shape[1] is None:
                    raise NotMergeable(f"channel count of {region.source} unknown")
                what = merge_region(model, index, region, shape[1], rank=len(shape) - 2,
                                    spatial=tuple(shape[2:]), shapes=shapes)
            except NotMergeable as why:
                failed[key] = str(why)
                if region is not None:
                    tried.add((key, len(region.nodes)))
                continue
            consumed.update(id(n) for n in region.nodes)
            failed.pop(key, None)
            report.sites.append(Site(root.name or key, what))
            merged += 1
        if not merged:
            break
        eliminate_dead_nodes(model.graph)
        if fuse_bn:  # a merged conv followed by a BN folds now
            folded = onnx_fuse_bn(model)
            model = folded.model
            report.sites.extend(folded.report.sites)
    alive = {n.output[0] for n in model.graph.node}
    for key, why in failed.items():
        if key in alive:
            report.skipped.append(Site(key, why))
    eliminate_dead_nodes(model.graph)
    report.after = graph_counts(model)
    report.seconds = time.perf_counter() - start
    return PassResult(model, report)
