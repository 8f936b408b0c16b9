"""Learned weight rounding for int8 per-channel weights: GPTQ (Frantar et al. 2022, "OPTQ"), on ONNX weights.

Round-to-nearest minimises each weight's own error; what matters is the layer's output error on real inputs,
‖(W − Ŵ) X‖². Per output channel c that is δ_cᵀ H δ_c with H = X Xᵀ, the Gram matrix of the layer's
inputs (for a Conv, of its im2col patches). GPTQ quantizes the input dimensions one at a time and moves the
error of each onto the dimensions not yet quantized, through the inverse Hessian (Optimal Brain Surgeon):

    q_i = round(w_i / s) · s            (s: the channel's scale, fixed at max|W_c| / 127)
    e   = (w_i − q_i) / U_ii            (U: upper Cholesky factor of H⁻¹)
    w_j −= e · U_ij   for j > i

AdaRound and AdaQuant reach the same objective by gradient descent over many iterations; GPTQ solves it in
closed form in one sweep per layer, with no learning rate to tune: seconds for a ResNet-50 on two cores.
The scale stays max|W_c| / 127 (the grid ONNX Runtime and TensorRT expect); only the rounding changes.

H is accumulated over calibration batches from the fp32 model's layer inputs (a subsample of positions per
image); dampening λ = 1 % of the mean diagonal keeps it invertible; an input that is always zero gets weight 0.
Grouped and depthwise convs get one H per group.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from .onnx_graph import GraphIndex, attributes

DAMPENING = 0.01
POSITIONS_PER_BATCH = 2048  # rows of X kept per batch and layer (a random subset of the im2col patches)
BLOCK = 128  # columns quantized between two lazy updates of the rest (GPTQ's block trick)


@dataclass
class GptqResult:
    """Per weight (initializer name, axis): (int8 values, per-channel scales), as insert_qdq's weight cache."""

    weights: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    error_ratio: dict[str, float] = field(default_factory=dict)  # layer: output error GPTQ / round-to-nearest
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    stopped_early: bool = False

    def summary(self) -> str:
        ratios = list(self.error_ratio.values())
        mean = float(np.mean(ratios)) if ratios else 1.0
        budget = " (time budget reached)" if self.stopped_early else ""
        return (f"GPTQ weight rounding: {len(self.weights)} layer(s), layer output error {mean:.2f}× that of "
                f"round-to-nearest on calibration data, {self.seconds:.1f} s{budget}")


@dataclass
class _Layer:
    node: onnx.NodeProto
    weight: np.ndarray  # as stored
    axis: int  # per-channel axis as stored
    groups: int = 1
    conv: dict | None = None  # kernel, strides, dilations, pads for a 2-D Conv
    gram: np.ndarray | None = None  # (groups, d, d)


def _as_rows(layer: _Layer) -> np.ndarray:
    """The weight as (groups, out per group, d): rows are output channels, columns the inputs they read."""
    w = layer.weight.astype(np.float64)
    if layer.conv is not None:
        out = w.shape[0]
        return w.reshape(layer.groups, out // layer.groups, -1)
    w = w if layer.axis == 0 else w.T  # Gemm transB=1 stores (N, K); MatMul/Gemm transB=0 store (K, N)
    return w[None]


def _from_rows(layer: _Layer, rows: np.ndarray) -> np.ndarray:
    if layer.conv is not None:
        return rows.reshape(layer.weight.shape)
    w = rows[0]
    return w if layer.axis == 0 else w.T


def _layers(model: onnx.ModelProto, names: Sequence[str]) -> tuple[list[_Layer], dict[str, str]]:
    """The named layers with their weight and per-channel axis as insert_qdq quantizes them (qdq.weight_input)."""
    from .qdq import weight_input

    index = GraphIndex(model.graph)
    wanted = set(names)
    layers, skipped = [], {}
    for node in model.graph.node:
        if node.name not in wanted:
            continue
        found = weight_input(index, node)
        if found is None or node.op_type not in ("Conv", "Gemm", "MatMul"):
            skipped[node.name] = f"{node.op_type} weight layout not handled"
            continue
        weight, axis = found
        if node.op_type != "Conv":
            layers.append(_Layer(node, weight, axis))
            continue
        attrs = attributes(node)
        if weight.ndim != 4 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            skipped[node.name] = "only 2-D convs with explicit pads"
            continue
        conv = {"kernel": weight.shape[2:], "strides": tuple(attrs.get("strides", (1, 1))),
                "dilations": tuple(attrs.get("dilations", (1, 1))), "pads": tuple(attrs.get("pads", (0, 0, 0, 0)))}
        layers.append(_Layer(node, weight, axis, int(attrs.get("group", 1)), conv))
    return layers, skipped


def _patches(layer: _Layer, x: np.ndarray, rng: np.random.Generator):
    """Rows of the layer's input as it multiplies them: (M, groups, d)."""
    import torch
    import torch.nn.functional as F

    if layer.conv is None:
        rows = x.reshape(-1, x.shape[-1])
        if len(rows) > POSITIONS_PER_BATCH:
            rows = rows[rng.choice(len(rows), POSITIONS_PER_BATCH, replace=False)]
        return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))[:, None, :]
    c = layer.conv
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    top, left, bottom, right = c["pads"]
    if any(c["pads"]):
        t = F.pad(t, (left, right, top, bottom))
    cols = F.unfold(t, c["kernel"], dilation=c["dilations"], stride=c["strides"])  # (N, C·k·k, L)
    cols = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    if len(cols) > POSITIONS_PER_BATCH:
        cols = cols[torch.from_numpy(rng.choice(len(cols), POSITIONS_PER_BATCH, replace=False))]
    return cols.reshape(len(cols), layer.groups, -1)


def _quantize_rows(rows: np.ndarray, gram: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """GPTQ on (groups, out, d) rows with (groups, d, d) Gram matrices. Returns (int8 rows, scales
    (groups, out), output error ratio GPTQ / round-to-nearest)."""
    import torch

    w = torch.from_numpy(rows.copy())
    h = torch.from_numpy(gram.copy())
    scale = w.abs().amax(dim=2).clamp_min(1e-12) / 127.0  # (groups, out)
    nearest = torch.clamp(torch.round(w / scale[..., None]), -127, 127)
    dead = torch.diagonal(h, dim1=1, dim2=2) == 0
    w[dead[:, None, :].expand_as(w)] = 0.0
    diag = torch.diagonal(h, dim1=1, dim2=2)
    diag[dead] = 1.0
    damp = DAMPENING * diag.mean(dim=1)
    h = h + damp[:, None, None] * torch.eye(h.shape[-1], dtype=h.dtype)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)  # (groups, d, d)
    q = torch.zeros_like(w)
    work = w.clone()
    d = w.shape[2]
    for i1 in range(0, d, BLOCK):
        i2 = min(i1 + BLOCK, d)
        block = work[:, :, i1:i2].clone()
        errors = torch.zeros_like(block)
        for i in range(i2 - i1):
            column = block[:, :, i]
            qi = torch.clamp(torch.round(column / scale), -127, 127)
            q[:, :, i1 + i] = qi
            err = (column - qi * scale) / u[:, i1 + i, i1 + i][:, None]
            block[:, :, i:] -= err[:, :, None] * u[:, None, i1 + i, i1 + i:i2]
            errors[:, :, i] = err
        if i2 < d:  # the block's errors onto every later column at once
            work[:, :, i2:] -= torch.einsum("goi,gij->goj", errors, u[:, i1:i2, i2:])
    original = torch.from_numpy(rows)

    def output_error(levels):
        delta = original - levels * scale[..., None]
        return float(torch.einsum("goi,gij,goj->", delta, torch.from_numpy(gram), delta))

    base = output_error(nearest)
    ratio = output_error(q) / base if base > 0 else 1.0
    return q.numpy(), scale.numpy(), ratio


def gptq_weights(
    model: onnx.ModelProto,
    layers: Sequence[str],
    feeds: list[dict[str, np.ndarray]],
    run: Callable[[dict[str, np.ndarray], list[str]], dict[str, np.ndarray]],
    time_budget: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> GptqResult:
    """GPTQ-rounded int8 weights for ``layers`` (node names of quantized Conv/Gemm/MatMul in ``model``).

    ``run(feeds, outputs)`` runs ``model`` with the layers' input tensors as extra outputs (the caller builds
    that session: see :func:`input_tensors`). A layer whose error GPTQ does not lower keeps round-to-nearest."""
    start = time.perf_counter()
    say = progress or (lambda _msg: None)
    result = GptqResult()
    found, result.skipped = _layers(model, layers)
    rng = np.random.default_rng(0)
    inputs = sorted({layer.node.input[0] for layer in found})
    for b, feed in enumerate(feeds, 1):
        say(f"GPTQ: layer inputs, batch {b}/{len(feeds)}")
        got = {**run(feed, [t for t in inputs if t not in feed]), **feed}
        for layer in found:
            x = _patches(layer, got[layer.node.input[0]], rng).transpose(0, 1)  # (groups, M, d)
            contribution = (x.transpose(1, 2) @ x).double().numpy()
            layer.gram = contribution if layer.gram is None else layer.gram + contribution
    for n, layer in enumerate(found, 1):
        if time_budget is not None and time.perf_counter() - start > time_budget:
            result.stopped_early = True
            break
        say(f"GPTQ: {layer.node.name} ({n}/{len(found)})")
        rows = _as_rows(layer)
        q, scales, ratio = _quantize_rows(rows, layer.gram)
        result.error_ratio[layer.node.name] = ratio
        if ratio >= 1.0:
            continue
        levels = _from_rows(layer, q).astype(np.int8)
        per_channel = scales.reshape(-1).astype(np.float32)
        result.weights[(layer.node.input[1], layer.axis)] = (levels, per_channel)
    result.seconds = time.perf_counter() - start
    return result


def input_tensors(model: onnx.ModelProto, layers: Sequence[str]) -> list[str]:
    """The data inputs of ``layers``: the extra outputs :func:`gptq_weights` needs."""
    wanted = set(layers)
    return list(dict.fromkeys(n.input[0] for n in model.graph.node if n.name in wanted))
