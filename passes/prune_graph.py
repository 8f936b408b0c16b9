"""Channel dependency groups for structured pruning, found on a torch.fx trace.

A *channel space* is the set of channels one tensor's channel axis ranges over. Ops that tie two tensors'
channels together (a residual Add, BN, a depthwise conv, an SE gate's Mul, pooling, activations) unite
their spaces; a Conv or Linear starts a fresh one. All the parameters that index one united space form a
**group**: removing channel ``i`` of the group removes row ``i`` of every producer (Conv/Linear output),
entry ``i`` of every BN and depthwise conv on the way, and column ``i`` of every consumer (the next layer's
input), so the pruned network computes exactly what the original computes with those channels zeroed.

A Concat along channels lays its inputs' spaces side by side (a *layout* of segments), so a consumer of the
concatenated tensor drops the right columns at the right offsets. ``flatten`` of an N×C×H×W tensor into a
Linear repeats each channel H·W times (VGG, AlexNet classifiers).

Anything the analysis does not understand **freezes** the spaces it touches instead of guessing: graph
inputs and outputs, reshapes other than flatten (channel shuffle), slicing and chunking of channels, grouped
(non-depthwise) convs, norms other than BatchNorm, parameters read as tensors (``self.weight`` in a
functional op), modules called twice, unknown leaf modules and functions. A frozen group keeps every
channel, so an unknown op can make pruning weaker but never wrong. Torch-Pruning instead *guesses*
through such ops, which is how channel shuffle and 1-channel convs end up mis-grouped (its #45, #126).
"""

from __future__ import annotations

import fnmatch
import operator
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.modules.batchnorm import _BatchNorm

# Modules and functions that keep each channel in place (element-wise or per-channel spatial ops).
_PASSTHROUGH_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.SiLU, nn.GELU, nn.Tanh,
                        nn.LeakyReLU, nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d,
                        nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.MaxPool1d, nn.AvgPool1d,
                        nn.AdaptiveAvgPool1d, nn.Softplus, nn.Hardtanh, nn.Upsample, nn.UpsamplingNearest2d,
                        nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d,
                        nn.ReplicationPad2d)
_PASSTHROUGH_FUNCTIONS = {
    torch.relu, torch.sigmoid, torch.tanh, torch.nn.functional.relu, torch.nn.functional.relu6,
    torch.nn.functional.hardswish, torch.nn.functional.hardsigmoid, torch.nn.functional.silu,
    torch.nn.functional.gelu, torch.nn.functional.sigmoid, torch.nn.functional.dropout,
    torch.nn.functional.adaptive_avg_pool2d, torch.nn.functional.avg_pool2d, torch.nn.functional.max_pool2d,
    torch.nn.functional.adaptive_max_pool2d, torch.nn.functional.leaky_relu, torch.nn.functional.mish,
    torch.nn.functional.hardtanh, operator.neg, torch.neg, torch.clone, torch.nn.functional.elu,
    torch.nn.functional.interpolate, torch.nn.functional.upsample,
}
_PASSTHROUGH_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "float", "detach", "neg", "relu_",
                        "sigmoid_", "clamp", "clamp_min", "clamp_max", "to", "type_as", "exp", "abs"}
_ELEMENTWISE = {operator.add, operator.iadd, operator.mul, operator.imul, operator.sub, operator.isub,
                operator.truediv, operator.itruediv, torch.add, torch.mul, torch.sub, torch.div, torch.maximum,
                torch.minimum}
_ELEMENTWISE_METHODS = {"add", "add_", "mul", "mul_", "sub", "sub_", "div", "div_", "expand_as"}
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class FxTraceError(ValueError):
    """The model cannot be traced by torch.fx; the message names the op and the workaround."""


@dataclass
class Segment:
    """A run of channels of one space; ``repeat`` > 1 after flatten (each channel spans H·W features)."""

    space: int
    size: int
    repeat: int = 1


Layout = list[Segment]


@dataclass
class Member:
    """One parameter axis indexed by a space: ``role`` is 'out' (Conv/Linear rows, ConvTranspose dim 1),
    'in' (the next layer's columns), 'bn' (BatchNorm vectors) or 'dw' (a depthwise conv: rows and groups)."""

    module: str
    role: str
    layout: Layout


@dataclass
class Group:
    """A united channel space: its size, the parameter axes it indexes, and why it is frozen (if it is)."""

    id: int
    size: int
    producers: list[str] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return not self.frozen and bool(self.producers) and self.size > 1

    def describe(self) -> str:
        head = self.producers[0] if self.producers else f"space {self.id}"
        more = f" (+{len(self.producers) - 1})" if len(self.producers) > 1 else ""
        return f"{head}{more}"


class _Spaces:
    """Union-find over channel spaces, with each root's size, freeze reasons and members."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.frozen: dict[int, list[str]] = defaultdict(list)

    def new(self, size: int, frozen: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        if frozen:
            self.frozen[len(self.parent) - 1].append(frozen)
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int, why: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:  # cannot happen for a graph that runs; refuse to guess
            self.frozen[ra].append(f"{why}: sizes {self.size[ra]} and {self.size[rb]} differ")
        self.parent[rb] = ra
        self.frozen[ra].extend(self.frozen.pop(rb, []))

    def freeze(self, a: int, why: str) -> None:
        reasons = self.frozen[self.find(a)]
        if why not in reasons and len(reasons) < 4:
            reasons.append(why)


class _Tracer(fx.Tracer):
    """torch.nn's own modules are leaves (the default); subclasses of Conv/Linear/BN with their own forward
    are traced through, so their functional ops freeze what they touch rather than being taken as plain.
    Modules matching ``leaves`` (the user's --ignore) are not traced into: code fx cannot trace can be
    left whole that way (a leaf we do not know freezes its channels)."""

    def __init__(self, leaves: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        if any(fnmatch.fnmatchcase(qualified_name, p) for p in self.leaves):
            return True
        return super().is_leaf_module(m, qualified_name)


def trace(model: nn.Module, leaves: tuple[str, ...] = ()) -> fx.GraphModule:
    try:
        graph = _Tracer(tuple(leaves)).trace(model)
    except Exception as err:  # fx raises TraceError, TypeError, NotImplementedError, … on dynamic code
        text = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise FxTraceError(
            f"torch.fx cannot trace {type(model).__name__}: {type(err).__name__}: {text}. Pruning needs a static "
            f"graph: move data-dependent control flow (if/for on tensor values) out of forward(), or wrap that "
            f"part in a submodule and pass its name to --ignore") from None
    return fx.GraphModule(model, graph)


@dataclass
class ChannelGraph:
    """The groups of a model, and the per-module facts pruning needs."""

    groups: list[Group]
    module_macs: dict[str, int]  # MACs of each Conv/Linear at the traced input shape

    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _macs(module: nn.Module, out_shape: tuple[int, ...]) -> int:
    if isinstance(module, _CONVS):
        k = int(torch.tensor(module.kernel_size).prod())
        spatial = int(torch.tensor(out_shape[2:]).prod()) if len(out_shape) > 2 else 1
        return out_shape[0] * module.out_channels * (module.in_channels // module.groups) * k * spatial
    if isinstance(module, _CONV_TRANSPOSES):
        k = int(torch.tensor(module.kernel_size).prod())
        spatial = int(torch.tensor(out_shape[2:]).prod()) if len(out_shape) > 2 else 1
        return out_shape[0] * module.out_channels * (module.in_channels // module.groups) * k * spatial
    if isinstance(module, nn.Linear):
        rows = int(torch.tensor(out_shape[:-1]).prod()) if len(out_shape) > 1 else 1
        return rows * module.in_features * module.out_features
    return 0


def analyse(model: nn.Module, example: tuple[torch.Tensor, ...], leaves: tuple[str, ...] = ()) -> ChannelGraph:
    """Trace ``model`` and return its channel groups (see the module docstring for the rules)."""
    gm = trace(model, leaves)
    with torch.no_grad():
        ShapeProp(gm).propagate(*example)
    modules = dict(gm.named_modules())
    spaces = _Spaces()
    layouts: dict[fx.Node, Layout | None] = {}
    members: list[Member] = []
    producers: dict[int, list[str]] = defaultdict(list)
    module_macs: dict[str, int] = {}
    calls: dict[str, int] = defaultdict(int)
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] += 1

    def channels(node: fx.Node) -> int | None:
        shape = _shape(node)
        return shape[1] if shape is not None and len(shape) >= 2 else None

    def fresh(node: fx.Node, why: str | None = None) -> Layout | None:
        c = channels(node)
        return [Segment(spaces.new(c, why), c)] if c else None

    def freeze(layout: Layout | None, why: str) -> None:
        for seg in layout or []:
            spaces.freeze(seg.space, why)

    def unite(a: Layout, b: Layout, why: str) -> bool:
        """Tie two layouts channel by channel; False (nothing tied) when their segmentations differ."""
        if [(s.size, s.repeat) for s in a] != [(s.size, s.repeat) for s in b]:
            return False
        for sa, sb in zip(a, b):
            spaces.union(sa.space, sb.space, why)
        return True

    def tensor_args(node: fx.Node) -> list[fx.Node]:
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if isinstance(n, fx.Node) else None)
        return found

    def freeze_all(node: fx.Node, why: str) -> Layout | None:
        for arg in tensor_args(node):
            freeze(layouts.get(arg), why)
        return fresh(node, why) if _shape(node) is not None else None

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            layouts[node] = fresh(node, "a graph input")
            continue
        if node.op == "get_attr":
            layouts[node] = None  # a constant: it indexes no space of ours
            continue
        if node.op == "output":
            for arg in tensor_args(node):
                freeze(layouts.get(arg), "a graph output")
            continue
        inputs = tensor_args(node)
        first = layouts.get(inputs[0]) if inputs else None
        if node.op == "call_module":
            module = modules[node.target]
            has_params = any(True for _ in module.parameters(recurse=False))
            has_state = has_params or any(True for _ in module.buffers(recurse=False))
            if has_state and calls[node.target] > 1:
                layouts[node] = freeze_all(node, f"{node.target} is called more than once")
                continue
            if module._forward_pre_hooks or module._forward_hooks:  # e.g. the old weight_norm rebuilds weights
                layouts[node] = freeze_all(node, f"{node.target} has forward hooks")
                continue
            if isinstance(module, _CONVS + _CONV_TRANSPOSES + (nn.Linear,)):
                module_macs[node.target] = _macs(module, _shape(node) or (1,))
            if isinstance(module, _CONVS):
                out_shape = _shape(node) or ()
                depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
                if depthwise and first is not None:
                    members.append(Member(node.target, "dw", first))
                    layouts[node] = first
                elif module.groups == 1 and first is not None:
                    members.append(Member(node.target, "in", first))
                    out = [Segment(spaces.new(out_shape[1]), out_shape[1])]
                    producers[out[0].space].append(node.target)
                    members.append(Member(node.target, "out", out))
                    layouts[node] = out
                else:
                    layouts[node] = freeze_all(node, f"grouped conv {node.target} (groups={module.groups})")
            elif isinstance(module, _CONV_TRANSPOSES):
                if module.groups == 1 and first is not None:
                    members.append(Member(node.target, "in", first))
                    c = module.out_channels
                    out = [Segment(spaces.new(c), c)]
                    producers[out[0].space].append(node.target)
                    members.append(Member(node.target, "out", out))
                    layouts[node] = out
                else:
                    layouts[node] = freeze_all(node, f"grouped transposed conv {node.target}")
            elif isinstance(module, nn.Linear):
                in_shape = _shape(inputs[0]) or ()
                if first is not None and len(in_shape) == 2 and \
                        sum(s.size * s.repeat for s in first) == module.in_features:
                    members.append(Member(node.target, "in", first))
                    out = [Segment(spaces.new(module.out_features), module.out_features)]
                    producers[out[0].space].append(node.target)
                    members.append(Member(node.target, "out", out))
                    layouts[node] = out
                else:
                    layouts[node] = freeze_all(node, f"Linear {node.target} on a tensor of rank {len(in_shape)}")
            elif isinstance(module, _BatchNorm) and first is not None and all(s.repeat == 1 for s in first):
                if module.affine or module.track_running_stats:
                    members.append(Member(node.target, "bn", first))
                layouts[node] = first
            elif isinstance(module, nn.Flatten) and first is not None and _is_flatten(node, "flatten", inputs):
                in_shape = _shape(inputs[0])
                spatial = int(torch.tensor(in_shape[2:]).prod()) if len(in_shape) > 2 else 1
                layouts[node] = [Segment(s.space, s.size, s.repeat * spatial) for s in first]
            elif isinstance(module, _PASSTHROUGH_MODULES) and not has_params:
                ok = channels(node) == channels(inputs[0]) and _batched(type(module).__name__, inputs[0])
                layouts[node] = first if ok else freeze_all(node, f"{type(module).__name__} {node.target} on a "
                                                                  f"tensor of rank {len(_shape(inputs[0]) or ())}")
            else:
                layouts[node] = freeze_all(node, f"{type(module).__name__} {node.target} (not understood)")
            continue

        name = getattr(node.target, "__name__", str(node.target))
        if node.op == "call_method":
            name = node.target
        shape = _shape(node)
        if shape is None:  # sizes and tuples: size queries read no channels; anything else (max, topk, chunk)
            query = (node.op == "call_method" and name in ("size", "dim", "numel", "nelement")) or \
                    (node.op == "call_function" and node.target in (getattr, len, operator.getitem))
            if not query:
                for arg in inputs:
                    freeze(layouts.get(arg), f"{name} ({node.name}) returns several values")
            layouts[node] = None
            continue
        if node.op == "call_function" and node.target is operator.getitem:
            source = node.args[0]
            if isinstance(source, fx.Node) and _shape(source) is None:  # an item of chunk/split: frozen
                layouts[node] = fresh(node, "a piece of a chunk/split")
            else:
                layouts[node] = freeze_all(node, "channel slicing")
            continue
        passthrough = (node.op == "call_function" and node.target in _PASSTHROUGH_FUNCTIONS) or \
                      (node.op == "call_method" and name in _PASSTHROUGH_METHODS)
        if passthrough and len(inputs) > 1 and name not in ("to", "type_as"):
            layouts[node] = _elementwise(node, inputs, layouts, spaces, unite, freeze, fresh, channels)
            continue
        pooling = getattr(node.target, "__name__", "")
        if passthrough and first is not None and channels(node) == channels(inputs[0]) and \
                (node.op != "call_function" or _batched(pooling, inputs[0])):
            layouts[node] = first
            continue
        if (node.op == "call_function" and node.target in _ELEMENTWISE) or \
                (node.op == "call_method" and name in _ELEMENTWISE_METHODS):
            layouts[node] = _elementwise(node, inputs, layouts, spaces, unite, freeze, fresh, channels)
            continue
        if (node.op == "call_function" and node.target is torch.cat) or (node.op == "call_method" and name == "cat"):
            layouts[node] = _concat(node, inputs, layouts, unite, freeze, fresh)
            continue
        if node.op == "call_method" and name == "mean" or node.op == "call_function" and node.target is torch.mean:
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            dims = [dims] if isinstance(dims, int) else list(dims or [])
            rank = len(_shape(inputs[0]) or ())
            if first is not None and dims and all(d % rank >= 2 for d in dims) and len(shape) >= 2:
                layouts[node] = first
                continue
        if _is_spatial_pad(node, inputs) and first is not None:
            layouts[node] = first
            continue
        if _is_flatten(node, name, inputs):
            in_shape = _shape(inputs[0])
            spatial = int(torch.tensor(in_shape[2:]).prod()) if len(in_shape) > 2 else 1
            if first is not None:
                layouts[node] = [Segment(s.space, s.size, s.repeat * spatial) for s in first]
                continue
        layouts[node] = freeze_all(node, f"{name} ({node.name}) is not understood")

    # Collect the groups: members keyed by the root of each segment's space.
    groups: dict[int, Group] = {}

    def group_of(space: int) -> Group:
        root = spaces.find(space)
        if root not in groups:
            groups[root] = Group(root, spaces.size[root], frozen=list(spaces.frozen.get(root, [])))
        return groups[root]

    for space, names in producers.items():
        group_of(space).producers.extend(names)
    for member in members:
        member.layout = [Segment(spaces.find(s.space), s.size, s.repeat) for s in member.layout]
        for root in {s.space for s in member.layout}:
            group_of(root).members.append(member)
    for g in groups.values():
        g.frozen = list(spaces.frozen.get(g.id, []))
    return ChannelGraph(sorted(groups.values(), key=lambda g: g.id), module_macs)


def _is_spatial_pad(node: fx.Node, inputs: list[fx.Node]) -> bool:
    """F.pad(x, pad) whose pad list touches only the dims after the channel axis."""
    if node.op != "call_function" or node.target is not torch.nn.functional.pad or not inputs:
        return False
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    rank = len(_shape(inputs[0]) or ())
    return isinstance(pad, (list, tuple)) and rank >= 3 and len(pad) <= 2 * (rank - 2)


def _is_flatten(node: fx.Node, name: str, inputs: list[fx.Node]) -> bool:
    """flatten(x, 1), x.flatten(1), x.view(N, -1) / reshape(N, -1): N×C×… to N×(C·…)."""
    if not inputs:
        return False
    in_shape, out_shape = _shape(inputs[0]), _shape(node)
    if in_shape is None or out_shape is None or len(in_shape) < 2 or len(out_shape) != 2:
        return False
    is_call = (node.op == "call_function" and node.target in (torch.flatten, torch.reshape)) or \
              (node.op == "call_method" and name in ("flatten", "view", "reshape")) or node.op == "call_module"
    return is_call and out_shape[0] == in_shape[0] and out_shape[1] == int(torch.tensor(in_shape[1:]).prod())


def _elementwise(node, inputs, layouts, spaces, unite, freeze, fresh, channels) -> Layout | None:
    """Binary broadcast ops. Broadcasting aligns dims from the right, so an operand of rank r in a result of
    rank R has its channel axis at 1 − (R − r). Operands of the result's rank with the full channel axis are
    tied; a size-1 axis broadcasts freely; a constant that spans the channels, or a channel-indexed operand
    of another rank, freezes what it touches (we would have to slice it, or its channels sit elsewhere)."""
    out_shape = _shape(node) or ()
    rank = len(out_shape)
    out_c = out_shape[1] if rank >= 2 else None
    result: Layout | None = None
    operands = [(arg, layouts.get(arg), _shape(arg) or ()) for arg in inputs]

    def freeze_everything(why: str) -> None:
        for _, lay, _ in operands:
            freeze(lay, why)

    frozen_why = None
    for _arg, layout, shape in operands:
        axis = 1 - (rank - len(shape))
        size = shape[axis] if 0 <= axis < len(shape) else 1
        if layout is None:
            if size > 1 and out_c is not None and size == out_c:
                frozen_why = f"{node.name}: a constant spans the channels"
            continue
        if len(shape) != rank:
            frozen_why = f"{node.name}: a channel-indexed operand of rank {len(shape)} in a rank-{rank} result"
            freeze(layout, frozen_why)
            continue
        if size == 1 and out_c != 1:
            continue  # broadcast along channels: no tie
        if result is None:
            result = layout
        elif not unite(result, layout, node.name):
            frozen_why = f"{node.name}: operands concatenated differently"
    if frozen_why:
        freeze_everything(frozen_why)
        freeze(result, frozen_why)
    return result if result is not None else fresh(node, frozen_why)


def _batched(kind: str, arg: fx.Node) -> bool:
    """A pool/pad/upsample of d spatial dims reads an input of rank d + 1 as unbatched (its channels become
    the batch, or worse the pooled axis): only rank d + 2 keeps the channel axis in place."""
    rank = len(_shape(arg) or ())
    for d in (1, 2, 3):
        if f"{d}d" in kind.lower():
            return rank == d + 2
    if "upsampl" in kind.lower() or "interpolate" in kind.lower():
        return rank >= 3
    return True


def _concat(node, inputs, layouts, unite, freeze, fresh) -> Layout | None:
    tensors = node.args[0] if node.args else node.kwargs.get("tensors", [])
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    rank = len(_shape(node) or ())
    parts = [layouts.get(t) for t in tensors]
    if any(p is None for p in parts):
        for p in parts:
            freeze(p, f"{node.name}: concatenated with a tensor of unknown channels")
        return fresh(node, f"{node.name}: concatenation of unknown channels")
    if rank and dim % rank == 1:
        return [seg for part in parts for seg in part]
    # along another axis: every part indexes the same channels
    for p in parts[1:]:
        if not unite(parts[0], p, node.name):
            for q in parts:
                freeze(q, f"{node.name}: concatenated along dim {dim} with different layouts")
    return parts[0]
