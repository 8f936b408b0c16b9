"""Empirical bias correction of an int8 graph (Nagel et al. 2019, "Data-Free Quantization", §4.2, empirical form).

Quantization noise is not zero-mean after a layer: clipped ranges, rounding of near-constant activations and
int8 weights shift each output channel's mean, and the shift of one layer feeds every layer after it. The
correction adds, to each quantized layer's bias, the mean shift of its output channel measured on
calibration data:

    c_L = E[y_L^fp32] − E[y_L^int8 | c_1 … c_{L−1}]      (mean over samples and positions, per channel)

where y_L is the layer's raw output (before its activation and Q) and the int8 side already carries the
corrections of the layers before it. Measured all at once instead, each layer's shift also holds the shifts
its inputs inherit from layers that are corrected too, and the corrections compound (measured here: a text
classifier went from 23.0 to 10.3 dB). Done one layer per run it is exact but costs a run per layer; here the
layers go in ``waves`` of consecutive layers in graph order (one run each, corrections within a wave
measured together) and the sweep is repeated: the coupling is triangular, so each sweep settles more of it.

Mechanics: a probe copy of the int8 graph adds a feedable vector to each layer's raw output (rank-matched:
(1, C, 1, …) for Conv, (C,) on the last axis for Gemm/MatMul), so every wave reuses one session. The result
is a per-layer correction vector; :func:`fold_corrections` adds it to the fp32 model's biases (a Conv or Gemm
without one gets one; a MatMul's bias is the Add after it), and the caller quantizes again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_graph import GraphIndex, NameAllocator

CORRECTION_SUFFIX = "_bias_correction"


@dataclass
class BiasCorrection:
    """What the correction measured: per layer the vector added and the mean |shift| it removes."""

    corrections: dict[str, np.ndarray] = field(default_factory=dict)
    shift_before: dict[str, float] = field(default_factory=dict)  # mean |E fp32 − E int8| per layer, uncorrected
    shift_after: dict[str, float] = field(default_factory=dict)  # as measured in the last sweep (before its fold)
    sweeps: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    runs: int = 0
    seconds: float = 0.0
    stopped_early: bool = False

    def summary(self) -> str:
        before = float(np.mean(list(self.shift_before.values()))) if self.shift_before else 0.0
        after = float(np.mean(list(self.shift_after.values()))) if self.shift_after else 0.0
        budget = " (time budget reached)" if self.stopped_early else ""
        # one sweep measures each shift once, with the corrections before it applied: nothing measures "after"
        shift = f"{before:.3g} → {after:.3g} left" if self.sweeps > 1 else f"{before:.3g} folded into the biases"
        return (f"bias correction: {len(self.corrections)} layer(s), mean channel shift {shift} "
                f"in {self.runs} run(s), {self.seconds:.1f} s{budget}")


def _channel_axis(node: onnx.NodeProto) -> int:
    return 1 if node.op_type in ("Conv", "ConvTranspose") else -1


def _channel_means(array: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(array.astype(np.float64), axis, -1)
    return moved.reshape(-1, moved.shape[-1]).mean(axis=0)


def _probe(int8: onnx.ModelProto, layers: Sequence[str], ranks: dict[str, int]) -> tuple[onnx.ModelProto, dict]:
    """A copy of ``int8`` where each layer's raw output gets ``+ correction`` (a graph input) before anything
    reads it, and is a graph output. Returns (model, layer → (input name, output name))."""
    model = onnx.ModelProto()
    model.CopyFrom(int8)
    graph = model.graph
    names = NameAllocator(graph)
    by_name = {n.name: n for n in graph.node}
    wiring, new_nodes = {}, {}
    for layer in layers:
        node = by_name[layer]
        out = node.output[0]
        raw = names.fresh(f"{out}_raw")
        node.output[0] = raw
        feed = names.fresh(f"{layer}{CORRECTION_SUFFIX}")
        shape = [1, None] + [1] * (ranks[layer] - 2) if _channel_axis(node) == 1 else [None]
        graph.input.append(helper.make_tensor_value_info(feed, TensorProto.FLOAT, shape))
        new_nodes[id(node)] = helper.make_node("Add", [raw, feed], [out], name=names.fresh(f"{layer}_corrected"))
        wiring[layer] = (feed, out)
    ordered = []
    for node in graph.node:
        ordered.append(node)
        if id(node) in new_nodes:
            ordered.append(new_nodes[id(node)])
    del graph.node[:]
    graph.node.extend(ordered)
    present = {o.name for o in graph.output}
    for _feed, out in wiring.values():
        if out not in present:
            graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
    return model, wiring


Runner = Callable[[dict[str, np.ndarray], list[str]], dict[str, np.ndarray]]


def measure_corrections(
    fp32: onnx.ModelProto,
    int8: onnx.ModelProto,
    layers: Sequence[str],
    feeds: list[dict[str, np.ndarray]],
    load: Callable[[onnx.ModelProto], Runner],
    waves: int = 12,
    sweeps: int = 2,
    time_budget: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> BiasCorrection:
    """The per-layer corrections that bring each int8 layer's output channel means to fp32's (module docstring).

    ``layers``: quantized layers (node names, present in both graphs); ``load(model)`` gives a function that
    runs it on feeds and returns the named outputs. ``time_budget`` (s) stops between waves."""
    from .qdq import with_outputs

    start = time.perf_counter()
    say = progress or (lambda _msg: None)
    result = BiasCorrection()
    fp_nodes = {n.name: n for n in fp32.graph.node}
    layers = [layer for layer in layers if layer in fp_nodes]
    outputs = {layer: fp_nodes[layer].output[0] for layer in layers}
    say(f"bias correction: fp32 channel means of {len(layers)} layers")
    run_fp = load(with_outputs(fp32, list(outputs.values())))
    sums: dict[str, np.ndarray] = {}
    ranks: dict[str, int] = {}
    for feed in feeds:
        got = run_fp(feed, list(outputs.values()))
        for layer, name in outputs.items():
            ranks[layer] = got[name].ndim
            axis = _channel_axis(fp_nodes[layer])
            sums[layer] = sums.get(layer, 0.0) + _channel_means(got[name], axis) * len(got[name])
    total = sum(len(next(iter(f.values()))) for f in feeds)
    target = {layer: s / total for layer, s in sums.items()}
    for layer in layers:
        node = fp_nodes[layer]
        if _channel_axis(node) == 1 and ranks[layer] < 3:
            result.skipped[layer] = f"output rank {ranks[layer]}"
    layers = [layer for layer in layers if layer not in result.skipped]
    probe, wiring = _probe(int8, layers, ranks)
    run_q = load(probe)
    correction = {layer: np.zeros_like(target[layer]) for layer in layers}

    def shape(layer: str, vector: np.ndarray) -> np.ndarray:
        if _channel_axis(fp_nodes[layer]) == 1:
            return vector.reshape(1, -1, *([1] * (ranks[layer] - 2))).astype(np.float32)
        return vector.astype(np.float32)

    size = max(1, -(-len(layers) // max(1, waves)))
    groups = [layers[i:i + size] for i in range(0, len(layers), size)]
    for sweep in range(sweeps):
        for g, group in enumerate(groups, 1):
            if time_budget is not None and time.perf_counter() - start > time_budget:
                result.stopped_early = True
                break
            say(f"bias correction: sweep {sweep + 1}/{sweeps}, wave {g}/{len(groups)}")
            fetch = [wiring[layer][1] for layer in group]
            means: dict[str, np.ndarray] = {}
            for feed in feeds:
                extra = {wiring[layer][0]: shape(layer, correction[layer]) for layer in layers}
                got = run_q({**feed, **extra}, fetch)
                for layer in group:
                    axis = _channel_axis(fp_nodes[layer])
                    value = got[wiring[layer][1]]
                    means[layer] = means.get(layer, 0.0) + _channel_means(value, axis) * len(value)
            result.runs += 1
            for layer in group:
                shift = target[layer] - means[layer] / total
                if sweep == 0:
                    result.shift_before[layer] = float(np.abs(shift).mean())
                result.shift_after[layer] = float(np.abs(shift).mean())
                correction[layer] = correction[layer] + shift
        result.sweeps = sweep + 1
        if result.stopped_early:
            break
    result.corrections = {layer: c for layer, c in correction.items() if np.any(c)}
    result.seconds = time.perf_counter() - start
    return result


def fold_corrections(model: onnx.ModelProto, corrections: dict[str, np.ndarray]) -> list[str]:
    """Add each correction to its layer's bias in ``model`` (in place): Conv/Gemm input 2 (created when absent;
    copied when another node shares it), or the constant of the Add that is a MatMul's bias. Returns the
    layers it could not fold (a MatMul without a bias Add)."""
    graph = model.graph
    index = GraphIndex(graph)
    names = NameAllocator(graph)
    by_name = {n.name: n for n in graph.node}
    missed = []

    def replace_constant(node: onnx.NodeProto, slot: int, value: np.ndarray) -> None:
        name = names.fresh(f"{node.name}_bias_corrected")
        graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
        while len(node.input) <= slot:
            node.input.append("")
        node.input[slot] = name

    for layer, vector in corrections.items():
        node = by_name.get(layer)
        if node is None:
            missed.append(layer)
            continue
        if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
            bias = index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            base = np.zeros(vector.shape, np.float64) if bias is None else bias.astype(np.float64).reshape(-1)
            if base.shape != vector.shape:
                missed.append(layer)
                continue
            replace_constant(node, 2, base + vector)
            continue
        reader = index.single_consumer(node.output[0])  # MatMul: its bias is the Add that follows
        if reader is not None and reader.op_type == "Add":
            slot = next((i for i, t in enumerate(reader.input) if t != node.output[0]), None)
            bias = index.constant(reader.input[slot]) if slot is not None else None
            if bias is not None and bias.reshape(-1).shape == vector.shape and bias.ndim <= 1:
                replace_constant(reader, slot, bias.astype(np.float64).reshape(-1) + vector)
                continue
        missed.append(layer)
    return missed
