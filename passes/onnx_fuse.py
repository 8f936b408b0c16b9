"""`onnx_fuse_bn`: fold BatchNormalization into the Conv, ConvTranspose or Gemm before it, or into a
Conv after it when that Conv reads no padding (DESIGN.md §4). Every BN left is reported with why."""

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


@register_pass("onnx_fuse_bn", stage="onnx")
def onnx_fuse_bn(model: onnx.ModelProto) -> PassResult:
    """Fold BatchNormalization into adjacent Conv/ConvTranspose/Gemm (ONNX stage)."""
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
