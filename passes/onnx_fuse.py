"""`onnx_fuse_bn`: fold BatchNormalization into the Conv, ConvTranspose or Gemm before it, or into a
Conv after it when that Conv reads no padding. Every BN left is reported with why.

A per-channel constant scale or shift — Mul, Add, Sub or Div by a constant that is a scalar or varies only
along the channel axis — is a BatchNormalization in all but name (γ = the scale, β = the shift, mean 0,
variance 1, ε 0) and folds the same way. Exporters write them for learnable affine blocks (PaddleOCR's
PP-LCNetV3: every Conv is followed by Mul and Add by scalars), layer scales and normalisation constants;
left in place they are float ops between integer convs in an int8 graph."""

from __future__ import annotations

import time

import numpy as np
import onnx
import torch
from onnx import helper

from . import kernels
from .core import PassReport, PassResult, Site, register_pass
from .onnx_graph import GraphIndex, add_initializer, attributes, eliminate_dead_nodes, graph_counts


def _bn_params(index: GraphIndex, bn: onnx.NodeProto) -> kernels.BNParams | None:
    if len(bn.output) > 1 and any(bn.output[1:]):
        return None  # training-mode BN (running stats as outputs)
    values = [index.constant(name) for name in bn.input[1:5]]
    if any(v is None for v in values):
        return None
    eps = float(attributes(bn).get("epsilon", 1e-5))
    gamma, beta, mean, var = (torch.from_numpy(np.asarray(v, dtype=np.float64)) for v in values)
    return kernels.BNParams(gamma, beta, mean, var, eps)


def _set_conv_weights(graph: onnx.GraphProto, node: onnx.NodeProto, weight: torch.Tensor, bias: torch.Tensor,
                      dtype: np.dtype) -> None:
    w_name = add_initializer(graph, f"{node.name or node.output[0]}.weight", weight.numpy().astype(dtype))
    b_name = add_initializer(graph, f"{node.name or node.output[0]}.bias", bias.numpy().astype(dtype))
    del node.input[1:]
    node.input.extend([w_name, b_name])


def _fold_after(index: GraphIndex, graph: onnx.GraphProto, node: onnx.NodeProto, bn: onnx.NodeProto,
                params: kernels.BNParams) -> str | None:
    """Fold ``bn`` into the producer ``node``; returns None on success, else why not."""
    w = index.constant(node.input[1]) if len(node.input) > 1 else None
    if w is None:
        return f"{node.op_type} weight is not a constant"
    b = index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if len(node.input) > 2 and node.input[2] and b is None:
        return f"{node.op_type} bias is not a constant"
    wt = torch.from_numpy(np.asarray(w, dtype=np.float64))
    bt = None if b is None else torch.from_numpy(np.asarray(b, dtype=np.float64))
    attrs = attributes(node)
    if node.op_type == "Conv":
        new_w, new_b = kernels.fold_bn(wt, bt, params)
    elif node.op_type == "ConvTranspose":
        new_w, new_b = kernels.fold_bn_transposed(wt, bt, params, int(attrs.get("group", 1)))
    else:  # Gemm: y = α·A·op(B) + β·C, BN over the columns of y
        if attrs.get("transA", 0):
            return "Gemm with transA"
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        linear = (wt if attrs.get("transB", 0) else wt.T) * alpha  # (out, in)
        bias = None if bt is None else (bt * beta).reshape(-1) if bt.numel() > 1 else bt.expand(linear.shape[0]) * beta
        new_w, new_b = kernels.fold_bn(linear, bias, params)
        for key in ("alpha", "beta", "transB"):
            for attr in list(node.attribute):
                if attr.name == key:
                    node.attribute.remove(attr)
        node.attribute.append(helper.make_attribute("transB", 1))
    _set_conv_weights(graph, node, new_w, new_b, np.asarray(w).dtype)
    node.output[0] = bn.output[0]
    return None


def _fold_before(index: GraphIndex, graph: onnx.GraphProto, bn: onnx.NodeProto, conv: onnx.NodeProto,
                 params: kernels.BNParams) -> str | None:
    attrs = attributes(conv)
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
        return "the following Conv pads (auto_pad)"
    if any(attrs.get("pads", [])):
        return "the following Conv pads its input (padding would see zeros, not BN's shift)"
    w = index.constant(conv.input[1])
    if w is None:
        return "the following Conv's weight is not a constant"
    b = index.constant(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
    wt = torch.from_numpy(np.asarray(w, dtype=np.float64))
    bt = None if b is None else torch.from_numpy(np.asarray(b, dtype=np.float64))
    new_w, new_b = kernels.fold_bn_into_next(wt, bt, params, int(attrs.get("group", 1)))
    _set_conv_weights(graph, conv, new_w, new_b, np.asarray(w).dtype)
    conv.input[0] = bn.input[0]
    return None


def _why_left(index: GraphIndex, bn: onnx.NodeProto) -> str:
    """The reason a BatchNormalization could not be folded, for the report."""
    if _bn_params(index, bn) is None:
        return "statistics are not constants, or the BN is in training mode"
    producer = index.producer.get(bn.input[0])
    if producer is not None and producer.op_type in ("Conv", "ConvTranspose", "Gemm"):
        if index.single_consumer(producer.output[0]) is not bn:
            return f"the {producer.op_type} before it ({producer.name}) has other consumers"
        return f"the {producer.op_type} before it has non-constant weights"
    consumer = index.single_consumer(bn.output[0])
    if consumer is not None and consumer.op_type == "Conv":
        return f"follows {producer.op_type if producer else 'a graph input'}; the Conv after it pads its input"
    return f"follows {producer.op_type if producer else 'a graph input'}, not a Conv/ConvTranspose/Gemm"


AFFINE_OPS = ("Mul", "Add", "Sub", "Div")


def _channels(index: GraphIndex, node: onnx.NodeProto) -> tuple[int, int] | None:
    """(output channels, output rank) of a Conv/ConvTranspose/Gemm with a constant weight, else None."""
    w = index.constant(node.input[1]) if len(node.input) > 1 else None
    if w is None or w.ndim < 2:
        return None
    attrs = attributes(node)
    if node.op_type == "Conv":
        return int(w.shape[0]), w.ndim
    if node.op_type == "ConvTranspose":
        return int(w.shape[1]) * int(attrs.get("group", 1)), w.ndim
    if node.op_type == "Gemm" and w.ndim == 2:
        return int(w.shape[0] if attrs.get("transB", 0) else w.shape[1]), 2
    return None


def _affine_params(index: GraphIndex, node: onnx.NodeProto, channels: int,
                   rank: int) -> tuple[kernels.BNParams, str] | None:
    """A constant per-channel Mul/Add/Sub/Div as (BN parameters, its data input), else None."""
    if node.op_type not in AFFINE_OPS or len(node.input) != 2:
        return None
    values = [index.constant(t) for t in node.input]
    if (values[0] is None) == (values[1] is None):
        return None
    slot = 0 if values[0] is not None else 1
    c = np.asarray(values[slot])
    if c.dtype not in (np.float32, np.float64) or c.ndim > rank:
        return None
    aligned = (1,) * (rank - c.ndim) + c.shape  # numpy broadcasting aligns on the right
    if any(d != 1 for i, d in enumerate(aligned) if i != 1) or aligned[1] not in (1, channels):
        return None
    v = torch.from_numpy(np.broadcast_to(c.astype(np.float64).reshape(-1), (channels,)).copy())
    one, zero = torch.ones(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
    op = node.op_type
    if op == "Mul":
        gamma, beta = v, zero
    elif op == "Add":
        gamma, beta = one, v
    elif op == "Sub":
        gamma, beta = (one, -v) if slot == 1 else (-one, v)  # x − c, or c − x
    else:  # Div: only x / c is affine
        if slot == 0 or bool((v == 0).any()):
            return None
        gamma, beta = 1.0 / v, zero
    return kernels.BNParams(gamma, beta, zero, one, 0.0), node.input[1 - slot]


def _fold_affine(index: GraphIndex, graph: onnx.GraphProto, node: onnx.NodeProto) -> str | None:
    """Fold one constant per-channel Mul/Add/Sub/Div into the layer before it (or into a Conv after it that
    reads no padding); returns what it did, or None."""
    for slot in (0, 1):
        producer = index.producer.get(node.input[slot]) if slot < len(node.input) else None
        if producer is None or producer.op_type not in ("Conv", "ConvTranspose", "Gemm"):
            continue
        if index.single_consumer(producer.output[0]) is not node or producer.output[0] in index.graph_outputs:
            continue
        shape = _channels(index, producer)
        found = _affine_params(index, node, *shape) if shape else None
        if found is None or found[1] != producer.output[0]:
            continue
        stand_in = helper.make_node("BatchNormalization", [found[1]], [node.output[0]])
        if _fold_after(index, graph, producer, stand_in, found[0]) is None:
            return f"folded into {producer.op_type} {producer.name}"
    consumer = index.single_consumer(node.output[0])
    if consumer is not None and consumer.op_type == "Conv" and consumer.input[0] == node.output[0]:
        shape = _channels_in(index, consumer)
        found = _affine_params(index, node, *shape) if shape else None
        if found is not None:
            stand_in = helper.make_node("BatchNormalization", [found[1]], [node.output[0]])
            if _fold_before(index, graph, stand_in, consumer, found[0]) is None:
                return f"folded into the following Conv {consumer.name}"
    return None


def _channels_in(index: GraphIndex, conv: onnx.NodeProto) -> tuple[int, int] | None:
    """(input channels, input rank) of a Conv with a constant weight."""
    w = index.constant(conv.input[1]) if len(conv.input) > 1 else None
    if w is None or w.ndim < 3:
        return None
    return int(w.shape[1]) * int(attributes(conv).get("group", 1)), w.ndim


@register_pass("onnx_fuse_bn", stage="onnx")
def onnx_fuse_bn(model: onnx.ModelProto) -> PassResult:
    """Fold BatchNormalization, and constant per-channel Mul/Add/Sub/Div, into adjacent Conv/ConvTranspose/Gemm
    (ONNX stage)."""
    start = time.perf_counter()
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    report = PassReport("onnx_fuse_bn", before=graph_counts(model))
    while True:
        index = GraphIndex(graph)
        done = False
        for bn in graph.node:
            if bn.op_type != "BatchNormalization":
                continue
            params = _bn_params(index, bn)
            if params is None:
                continue
            producer = index.producer.get(bn.input[0])
            why = "its input comes from no Conv/ConvTranspose/Gemm"
            if producer is not None and producer.op_type in ("Conv", "ConvTranspose", "Gemm"):
                if index.single_consumer(producer.output[0]) is not bn:
                    why = f"{producer.op_type} {producer.name} has other consumers"
                else:
                    why = _fold_after(index, graph, producer, bn, params)
                    if why is None:
                        report.sites.append(Site(bn.name or bn.output[0], f"folded into {producer.op_type} "
                                                                         f"{producer.name}"))
                        graph.node.remove(bn)
                        done = True
                        break
            consumer = index.single_consumer(bn.output[0])
            if consumer is not None and consumer.op_type == "Conv" and consumer.input[0] == bn.output[0]:
                why_before = _fold_before(index, graph, bn, consumer, params)
                if why_before is None:
                    report.sites.append(Site(bn.name or bn.output[0], f"folded into the following Conv "
                                                                     f"{consumer.name}"))
                    graph.node.remove(bn)
                    done = True
                    break
                why = f"{why}; {why_before}"
        if not done:
            for node in graph.node:
                if node.op_type in AFFINE_OPS:
                    what = _fold_affine(index, graph, node)
                    if what is not None:
                        report.sites.append(Site(node.name or node.output[0], f"constant {node.op_type} {what}"))
                        graph.node.remove(node)
                        done = True
                        break
        if not done:
            break
        eliminate_dead_nodes(graph)
    index = GraphIndex(graph)
    for bn in graph.node:
        if bn.op_type == "BatchNormalization":
            report.skipped.append(Site(bn.name or bn.output[0], _why_left(index, bn)))
    eliminate_dead_nodes(graph)
    report.after = graph_counts(model)
    report.seconds = time.perf_counter() - start
    return PassResult(model, report)
