"""Small helpers over an ONNX graph for the ONNX-stage passes: lookups, constants, clean-up, counts."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

FOLDABLE_SHAPE_OPS = ("Reshape", "Unsqueeze", "Squeeze", "Flatten", "Cast")


class GraphIndex:
    """Producer and consumers of every tensor, and the graph's constants (initializers, Constant nodes)."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for out in node.output:
                self.producer[out] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_outputs = {o.name for o in graph.output}
        self.graph_inputs = {i.name for i in graph.input if i.name not in self.initializers}

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a tensor that is an initializer or a Constant node's output, else None."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        while node is not None and node.op_type == "Identity":  # exporters alias shared weights this way
            name = node.input[0]
            if name in self.initializers:
                return numpy_helper.to_array(self.initializers[name])
            node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
                if attr.name in ("value_float", "value_int"):
                    return np.array(helper.get_attribute_value(attr))
                if attr.name in ("value_floats", "value_ints"):
                    return np.array(helper.get_attribute_value(attr))
        return None

    def is_constant(self, name: str) -> bool:
        return name == "" or self.constant(name) is not None

    def value(self, name: str, depth: int = 0) -> np.ndarray | None:
        """Like :meth:`constant`, and also a Reshape/Unsqueeze/Squeeze/Flatten/Cast of constants, evaluated
        (Paddle2ONNX writes a conv bias as Reshape(bias, shape) → Add: a constant the runtime folds, which a
        placement must see as one). Only for reading: the tensor is not an initializer that a pass may rewrite."""
        found = self.constant(name)
        node = self.producer.get(name)
        if found is not None or node is None or depth > 8 or node.op_type not in FOLDABLE_SHAPE_OPS:
            return found
        x = self.value(node.input[0], depth + 1)
        if x is None:
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        second = self.value(node.input[1], depth + 1) if len(node.input) > 1 and node.input[1] else None
        if len(node.input) > 1 and node.input[1] and second is None:
            return None
        try:
            if node.op_type == "Reshape":
                shape = [x.shape[i] if d == 0 and not attrs.get("allowzero", 0) else int(d)
                         for i, d in enumerate(second)]
                return x.reshape(shape)
            if node.op_type in ("Unsqueeze", "Squeeze"):
                axes = [int(a) for a in (second if second is not None else attrs.get("axes", []))]
                if node.op_type == "Squeeze":
                    return np.squeeze(x, axis=tuple(axes)) if axes else np.squeeze(x)
                for a in sorted(a % (x.ndim + len(axes)) for a in axes):
                    x = np.expand_dims(x, a)
                return x
            if node.op_type == "Flatten":
                axis = attrs.get("axis", 1) % max(x.ndim, 1)
                return x.reshape(int(np.prod(x.shape[:axis])), -1)
            if node.op_type == "Cast":
                return x.astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
        except (ValueError, KeyError, TypeError):
            return None
        return None

    def is_value(self, name: str) -> bool:
        return name == "" or self.value(name) is not None

    def single_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        if len(users) == 1 and name not in self.graph_outputs:
            return users[0]
        return None


def attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def eliminate_dead_nodes(graph: onnx.GraphProto) -> int:
    """Drop nodes whose outputs nobody reads and initializers no node reads; returns nodes removed."""
    removed = 0
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        keep = [n for n in graph.node if any(out in used for out in n.output)]
        if len(keep) == len(graph.node):
            break
        removed += len(graph.node) - len(keep)
        del graph.node[:]
        graph.node.extend(keep)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    dead = [t for t in graph.initializer if t.name not in used]
    for t in dead:
        graph.initializer.remove(t)
    inputs_dead = [i for i in graph.input if i.name not in used and i.name in {t.name for t in dead}]
    for i in inputs_dead:
        graph.input.remove(i)
    return removed


class NameAllocator:
    """Fresh tensor and node names for one graph, without rescanning the graph for each (passes that add
    hundreds of nodes would otherwise be quadratic)."""

    def __init__(self, graph: onnx.GraphProto):
        self.taken = {t.name for t in graph.initializer} | {i.name for i in graph.input}
        self.taken |= {o.name for o in graph.output} | {n.name for n in graph.node}
        self.taken |= {out for n in graph.node for out in n.output} | {x for n in graph.node for x in n.input}

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


def unique_name(graph: onnx.GraphProto, base: str) -> str:
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} | \
        {n.name for n in graph.node} | {i.name for i in graph.input}
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def add_initializer(graph: onnx.GraphProto, base: str, value: np.ndarray) -> str:
    name = unique_name(graph, base)
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    return name


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(n.op_type for n in model.graph.node))


def parameter_count(model: onnx.ModelProto) -> int:
    return int(sum(int(np.prod(t.dims)) if t.dims else 1 for t in model.graph.initializer))


def graph_counts(model: onnx.ModelProto) -> dict[str, int]:
    """nodes, params, and nodes per op type (what a pass report shows before/after)."""
    hist = op_histogram(model)
    return {"nodes": sum(hist.values()), "params": parameter_count(model), **dict(sorted(hist.items()))}


def fold_shape_constants(model: onnx.ModelProto) -> int:
    """Reshape/Unsqueeze/Squeeze/Flatten/Cast nodes whose inputs are all constants become initializers, in place
    (what ONNX Runtime's constant folding does at load): a bias written as Reshape(bias, shape) → Add is then a
    plain constant Add the BN/affine fold can take into its layer. Returns how many nodes were folded."""
    index = GraphIndex(model.graph)
    inner = {n for node in model.graph.node for attr in node.attribute if attr.type == onnx.AttributeProto.GRAPH
             for n in (i for sub in attr.g.node for i in sub.input)}
    folded, keep = 0, []
    for node in model.graph.node:
        out = node.output[0] if node.output else ""
        if node.op_type in FOLDABLE_SHAPE_OPS and len(node.output) == 1 and out not in index.graph_outputs and \
                out not in inner and index.constant(out) is None:
            value = index.value(out)
            if value is not None:
                model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), out))
                index.initializers[out] = model.graph.initializer[-1]
                folded += 1
                continue
        keep.append(node)
    if folded:
        del model.graph.node[:]
        model.graph.node.extend(keep)
        eliminate_dead_nodes(model.graph)
    return folded

