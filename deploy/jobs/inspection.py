"""Per-layer shapes, parameters and FLOPs of a torch model or an ONNX graph.

FLOPs count multiply and add separately (2 per MAC), for the layers that dominate inference:
  conv        2 · Cin/g · kh · kw · Cout · Hout · Wout   (depthwise: g = Cin, so 2 · kh · kw · C · Hout · Wout)
  conv-transp 2 · Cin · kh · kw · Cout/g · Hin · Win
  linear/gemm 2 · in · out · rows
Everything else (BN, activations, pooling, adds) counts 0: it is memory-bound and small beside these.
torchvision's tables quote MACs under the name "GFLOPS": its 4.09 for ResNet-50 is our 8.18.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..artifacts.artifact import Artifact
from ..errors import BadInputError, first_line


@dataclass
class LayerInfo:
    name: str
    op: str
    output_shape: list[int | str]
    params: int
    flops: int


@dataclass
class InspectReport:
    model: str
    kind: str
    input_shape: list[int]
    layers: list[LayerInfo]
    params: int
    flops: int
    ops: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"model": self.model, "kind": self.kind, "input_shape": self.input_shape, "params": self.params,
                "flops": self.flops, "gflops": round(self.flops / 1e9, 4), "ops": self.ops,
                "layers": [asdict(layer) for layer in self.layers]}


def _prod(values) -> int:
    return int(math.prod(int(v) for v in values))


def conv_flops(cin: int, cout: int, groups: int, kernel: tuple[int, ...], out_spatial: tuple[int, ...]) -> int:
    return 2 * (cin // groups) * _prod(kernel) * cout * _prod(out_spatial)


def _module_flops(module: nn.Module, inputs: tuple, output) -> int:
    if isinstance(module, nn.modules.conv._ConvNd) and isinstance(output, torch.Tensor):
        if module.transposed:
            spatial = inputs[0].shape[2:]
            return 2 * module.in_channels * _prod(module.kernel_size) * (module.out_channels // module.groups) \
                * _prod(spatial)
        return conv_flops(module.in_channels, module.out_channels, module.groups, module.kernel_size,
                          tuple(output.shape[2:]))
    if isinstance(module, nn.Linear) and isinstance(output, torch.Tensor) and output.numel():
        rows = output.numel() // output.shape[-1] // output.shape[0]  # per sample
        return 2 * module.in_features * module.out_features * rows
    return 0


def inspect_module(module: nn.Module, input_shape: tuple[int, ...], label: str = "model",
                   more_shapes: list[tuple[int, ...]] | None = None) -> InspectReport:
    """Walk leaf modules with forward hooks on one sample (batch 1). FLOPs are per sample.
    ``more_shapes``: the shapes of forward()'s further inputs, for multi-input models."""
    shape = (1, *input_shape[1:])
    extra = [torch.zeros((1, *s[1:])) for s in more_shapes or []]
    layers: list[LayerInfo] = []
    hooks = []

    def hook(name):
        def record(mod, inputs, output):
            out_shape = list(output.shape) if isinstance(output, torch.Tensor) else []
            params = sum(p.numel() for p in mod.parameters(recurse=False))
            layers.append(LayerInfo(name, type(mod).__name__, out_shape, params, _module_flops(mod, inputs, output)))
        return record

    for name, mod in module.named_modules():
        if not list(mod.children()):
            hooks.append(mod.register_forward_hook(hook(name)))
    try:
        with torch.inference_mode():
            module(torch.zeros(shape), *extra)
    except Exception as err:  # the user's model failed on these shapes: their input, not our bug
        shapes = ", ".join(str(tuple(t)) for t in [shape, *(e.shape for e in extra)])
        raise BadInputError(f"{label}: the model does not run on input shape {shapes}: {first_line(err)}") from None
    finally:
        for h in hooks:
            h.remove()
    total_params = sum(p.numel() for p in module.parameters())
    ops = Counter(layer.op for layer in layers)
    return InspectReport(label, "torch", list(shape), layers, total_params, sum(lay.flops for lay in layers),
                         dict(ops.most_common()))


def count_model(factory, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(params, FLOPs per sample) of a model built on the meta device: no memory, no arithmetic."""
    with torch.device("meta"):
        model = factory().eval()
    shape = (1, *input_shape[1:])
    flops = 0

    def record(mod, inputs, output):
        nonlocal flops
        flops += _module_flops(mod, inputs, output)

    hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    with torch.inference_mode():
        model(torch.zeros(shape, device="meta"))
    for h in hooks:
        h.remove()
    return sum(p.numel() for p in model.parameters()), flops


def inspect_onnx(path, input_shape: tuple[int, ...] | None = None, label: str | None = None) -> InspectReport:
    """Shape inference at batch 1, then FLOPs per Conv/ConvTranspose/Gemm/MatMul node."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    graph_inputs = [v for v in graph.input if v.name not in inits]
    for i, value in enumerate(graph_inputs):
        dims = value.type.tensor_type.shape.dim
        for axis, d in enumerate(dims):
            if not d.HasField("dim_value"):
                if i == 0 and input_shape is not None and axis < len(input_shape):
                    d.dim_value = int(input_shape[axis]) if axis else 1
                elif axis == 0:
                    d.dim_value = 1
    model = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int | str]] = {}
    for v in [*model.graph.value_info, *model.graph.output, *model.graph.input]:
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                          for d in v.type.tensor_type.shape.dim]
    for t in graph.initializer:
        shapes[t.name] = list(t.dims)

    def static(name) -> list[int] | None:
        s = shapes.get(name)
        return s if s is not None and all(isinstance(x, int) and x > 0 for x in s) else None

    layers, counted = [], set()
    for index, node in enumerate(graph.node):
        params = 0
        for name in node.input:
            if name in inits and name not in counted:
                counted.add(name)
                params += _prod(inits[name].dims)
        out_shape = shapes.get(node.output[0], []) if node.output else []
        flops = 0
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
            w, y, x = static(node.input[1]), static(node.output[0]), static(node.input[0])
            g = int(attrs.get("group", 1))
            if w and y and node.op_type == "Conv":
                flops = conv_flops(w[1] * g, w[0], g, tuple(w[2:]), tuple(y[2:]))
            elif w and x and node.op_type == "ConvTranspose":  # weight (Cin, Cout/g, k…)
                flops = 2 * w[0] * _prod(w[2:]) * w[1] * _prod(x[2:])
        elif node.op_type in ("Gemm", "MatMul") and len(node.input) > 1:
            a, b, y = static(node.input[0]), static(node.input[1]), static(node.output[0])
            per_sample = y[1:] if y and len(y) >= 2 else y  # rows of the batch count once, like convs
            if a and y:
                k = a[-1] if not (node.op_type == "Gemm" and attrs.get("transA", 0)) else a[0]
                flops = 2 * k * _prod(per_sample)
            elif b and y:
                flops = 2 * (b[0] if not attrs.get("transB", 0) else b[-1]) * _prod(per_sample)
        layers.append(LayerInfo(node.name or f"{node.op_type}_{index}", node.op_type, out_shape, params, flops))
    params = sum(_prod(t.dims) for t in graph.initializer)
    first = graph_inputs[0] if graph_inputs else None
    in_shape = shapes.get(first.name, []) if first else []
    ops = Counter(node.op_type for node in graph.node)
    return InspectReport(label or str(path), "onnx", in_shape, layers, int(params), sum(lay.flops for lay in layers),
                         dict(ops.most_common()))


def inspect_artifact(artifact: Artifact) -> InspectReport:
    if artifact.kind == "onnx":
        for spec in artifact.inputs:
            spec.concrete(1)  # a symbolic H/W needs --shape: refuse rather than measure a 1×1 input
        return inspect_onnx(artifact.onnx_path, artifact.inputs[0].concrete(1), artifact.label)
    shapes = artifact.example_shapes or [artifact.example_shape]
    return inspect_module(artifact.module, shapes[0], artifact.label, more_shapes=shapes[1:])
