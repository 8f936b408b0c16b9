"""Where two artifacts diverge (`deploy debug`): intermediate tensors aligned, two error views per tensor.

The candidate B is an ONNX file; the reference A is a PyTorch model or an ONNX file.

**Alignment.** ONNX ↔ ONNX: tensors of the same name (passes keep the names of what they do not remove;
Q/DQ and Cast tensors are new and said so, with the float tensor they quantize). PyTorch ↔ ONNX: the
TorchScript exporter names each node by its module scope (``/layer1/layer1.0/relu_1/Relu`` is the second
call of ``layer1.0.relu``); a leaf module's output pairs with the output of its last node. A leaf with no
node of its own (a BatchNorm the exporter folded into the Conv before it, an Identity, a Dropout) hands
its producer's tensor on: the folded Conv's output is the BatchNorm's output, found by tensor identity in
forward hooks, never by value.

**Two views.** *Accumulated*: B run on the inputs, every aligned tensor read as an extra output, against
A's. *Local*: B's layers fed A's own values — one "cut" copy of B where every read of an aligned tensor
is replaced by a new graph input carrying A's value, so each aligned tensor is recomputed from A's values
at the nearest aligned tensors upstream (its boundary). A layer that is bad by itself has a large local
error; one that only inherits upstream error has a small one.

**Not perturbing what is measured.** Exposing tensors stops ONNX Runtime fusing across them (Conv+Relu,
DQ→Conv→Q into QLinearConv). The final outputs always come from the unmodified session; the report
compares the optimized graphs with and without the extra outputs and names the fusions lost, and says
whether the exposed run's final outputs moved. Torch is read through forward hooks, which change nothing.

Metrics are :func:`deploy.harness.compare.diff_output`'s; fp32 against a PyTorch reference is judged against its
float64 run with max_rel ≤ max(1e-5, 2 × its own fp32 error at that tensor), as `deploy check` does.
"""

from __future__ import annotations

import copy
import math
import re
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import BadInputError, first_line
from ..harness.compare import OutputDiff, Tolerance, diff_output, tolerance_for
from ..ort import cpu_session, optimized_op_counts
from ..passes.qdq import WEIGHTED_OPS, with_outputs
from ..reporting import Report

REF_SUFFIX = "__deploy_ref"
SKIP_OPS = {"Constant", "ConstantOfShape", "Shape", "Size"}  # weights and shape arithmetic, not activations


# --------------------------------------------------------------------------------------------- report

@dataclass
class LayerError:
    """One aligned tensor of the candidate: both error views, and what feeds its local recomputation."""

    tensor: str
    reference: str  # A's tensor name, or module#call for a PyTorch reference
    op: str
    node: str
    position: int  # index of its producer in B's (topological) node order
    accumulated: OutputDiff
    local: OutputDiff
    boundary: list[str]  # B tensors its local subgraph reads (aligned tensors or graph inputs)
    # the reference's final outputs when this layer alone carries B's local error (A run with this one
    # tensor replaced by B's local value): what the layer's own error costs at the output
    impact_db: float | None = None

    def to_dict(self) -> dict:
        return {"tensor": self.tensor, "reference": self.reference, "op": self.op, "node": self.node,
                "position": self.position, "accumulated": self.accumulated.to_dict(),
                "local": self.local.to_dict(), "boundary": self.boundary,
                "output_sqnr_db_alone": _finite(self.impact_db)}


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


@dataclass(repr=False)
class DebugReport(Report):
    reference: str
    candidate: str
    backend_reference: str
    backend_candidate: str
    data: str
    samples: int
    precision: str
    candidate_tensors: int  # B's activation tensors
    layers: list[LayerError]
    convs_aligned: int
    convs_total: int
    unaligned: dict[str, str]  # B tensor → why it has no partner
    reference_only: int  # A tensors with no partner in B (removed by a pass)
    final: list[OutputDiff]  # A's and B's final outputs, from the unmodified runs
    perturbation: dict
    notes: list[str] = field(default_factory=list)

    @property
    def first(self) -> LayerError | None:
        return next((layer for layer in self.layers if not layer.accumulated.passed), None)

    def ranked(self) -> list[LayerError]:
        """Largest local error first: the layers that break the tolerance by themselves, worst local SQNR
        first; then the others by what their error alone costs the output where that was measured, then
        by local SQNR (ties: largest local max_rel)."""
        def key(e: LayerError):
            if not e.local.passed:
                return (0, e.local.sqnr_db, -e.local.max_rel)
            return (1, e.impact_db if e.impact_db is not None else math.inf, e.local.sqnr_db, -e.local.max_rel)
        return sorted(self.layers, key=key)

    @property
    def qdq_tensors(self) -> int:
        return sum(1 for why in self.unaligned.values() if why.startswith("Q/DQ"))

    @property
    def passed(self) -> bool:
        return self.first is None

    def keep_float(self, n: int = 3) -> list[str]:
        """Node names of the n layers with the largest local error (for `deploy quantize --keep-float`)."""
        weighted = [e for e in self.layers if e.op in WEIGHTED_OPS and e.local.max_rel > 0]
        weighted.sort(key=lambda e: (e.impact_db if e.impact_db is not None else math.inf, e.local.sqnr_db))
        return [e.node for e in weighted][:n]

    def summary(self) -> str:
        aligned = f"{len(self.layers)} of {self.candidate_tensors} tensors aligned"
        if self.qdq_tensors:
            aligned += f" ({self.qdq_tensors} more are Q/DQ of aligned ones)"
        first = self.first
        if first is None:
            return (f"PASSED {self.candidate} vs {self.reference}: no divergence at {self.precision} tolerance, "
                    f"{aligned}")
        return (f"FAILED {self.candidate} vs {self.reference}: first divergence at {first.node} ({first.op}, tensor "
                f"{first.tensor} ↔ {first.reference}): {'; '.join(first.accumulated.failures)}; local "
                f"SQNR {first.local.sqnr_db:.1f} dB, {aligned}")

    def to_dict(self) -> dict:
        first = self.first
        return {
            "passed": self.passed,
            "reference": {"artifact": self.reference, "backend": self.backend_reference},
            "candidate": {"artifact": self.candidate, "backend": self.backend_candidate},
            "data": self.data, "samples": self.samples, "precision": self.precision,
            "alignment": {"aligned": len(self.layers), "candidate_tensors": self.candidate_tensors,
                          "qdq_tensors": self.qdq_tensors,
                          "convs_aligned": self.convs_aligned, "convs_total": self.convs_total,
                          "reference_only": self.reference_only, "unaligned": self.unaligned},
            "first_divergence": first.to_dict() if first else None,
            "ranked_by_local_error": [e.tensor for e in self.ranked()],
            "keep_float": self.keep_float(),
            "layers": [e.to_dict() for e in self.layers],
            "final": [d.to_dict() for d in self.final],
            "perturbation": self.perturbation, "notes": self.notes, "summary": self.summary(),
        }


# ----------------------------------------------------------------------------------------------- graphs

def elem_types(model) -> dict[str, int]:
    """Element type of every tensor ONNX shape inference can type (graph inputs, outputs, activations)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # an op onnx cannot infer: what the file declares is all we have
        inferred = model
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]
             if v.type.HasField("tensor_type")}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def constant_tensors(model) -> set[str]:
    """Initializers and every node output computed from constants alone (a dequantized weight, a folded
    shape): weights, not activations."""
    constants = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" or all(not t or t in constants for t in node.input):
            constants.update(t for t in node.output if t)
    return constants


def activations(model) -> list[tuple[str, int]]:
    """(tensor, producer position) for every node output that carries data, in node order."""
    constants = constant_tensors(model)
    out = []
    for position, node in enumerate(model.graph.node):
        if node.op_type in SKIP_OPS:
            continue
        out.extend((t, position) for t in node.output if t and t not in constants)
    return out


def cut_model(model, fed: set[str], outputs: list[str], types: dict[str, int],
              shapes: dict[str, tuple[int, ...]] | None = None):
    """B with every read of a ``fed`` tensor replaced by a graph input ``name + REF_SUFFIX``: each node then
    recomputes its outputs from the values given there (the local view). ``shapes``: the values' shapes, written
    on the new inputs with a free batch dim (OpenVINO's ONNX reader needs each input's rank)."""
    import onnx

    out = with_outputs(model, outputs, types)
    for node in out.graph.node:
        for i, name in enumerate(node.input):
            if name in fed:
                node.input[i] = name + REF_SUFFIX
    for name in sorted(fed):
        shape = shapes.get(name) if shapes else None
        dims = None if shape is None else ["batch", *shape[1:]]
        out.graph.input.append(onnx.helper.make_tensor_value_info(name + REF_SUFFIX, types.get(name, 1), dims))
    return out


def boundaries(model, aligned: set[str]) -> dict[str, list[str]]:
    """For each tensor: the ``aligned`` tensors (those fed) and graph inputs its local subgraph reads.

    One pass in node order (no recursion: graphs of thousands of nodes): an unaligned tensor's reads are
    its producer's inputs' reads; an aligned tensor, a graph input, read as an input, is a read itself."""
    constants = constant_tensors(model)
    reads: dict[str, list[str]] = {}  # unaligned activation → what it reads
    out: dict[str, list[str]] = {}

    def of(tensor: str) -> list[str]:
        if not tensor or tensor in constants:
            return []
        if tensor in aligned or tensor not in reads:
            return [tensor]  # an aligned tensor, or a graph input
        return reads[tensor]

    for node in model.graph.node:
        found = list(dict.fromkeys(x for t in node.input for x in of(t)))
        for t in node.output:
            if not t or t in constants:
                continue
            out[t] = found
            if t not in aligned:
                reads[t] = found
    return out


def quantized_source(model, tensor: str) -> str | None:
    """The float tensor a Q/DQ output stands for (DequantizeLinear ← QuantizeLinear ← X), else None."""
    producer = {t: node for node in model.graph.node for t in node.output}
    node = producer.get(tensor)
    if node is None:
        return None
    if node.op_type == "DequantizeLinear":
        q = producer.get(node.input[0])
        return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None
    if node.op_type == "QuantizeLinear":
        return node.input[0]
    return None


# ------------------------------------------------------------------------------------------ alignment

def align_onnx(reference, candidate) -> tuple[dict[str, str], dict[str, str], int]:
    """Same-named activations. Returns (B tensor → A tensor, B tensor → why unaligned, A-only count)."""
    a_tensors = {t for t, _ in activations(reference)} | {i.name for i in reference.graph.input}
    pairs, why = {}, {}
    for tensor, _ in activations(candidate):
        if tensor in a_tensors:
            pairs[tensor] = tensor
            continue
        source = quantized_source(candidate, tensor)
        why[tensor] = f"Q/DQ of {source}" if source else "not in the reference (added by a pass)"
    b_tensors = {t for t, _ in activations(candidate)}
    reference_only = len({t for t, _ in activations(reference)} - b_tensors)
    return pairs, why, reference_only


@dataclass
class Call:
    """One call of a leaf module in a PyTorch forward pass."""

    module: str
    index: int
    input_id: int | None
    output_id: int | None
    foldable: bool = False  # a BatchNorm, Identity or Dropout: may have no node of its own in an export
    input_version: int = 0  # the tensors' in-place version counters when the call ran
    output_version: int = 0

    @property
    def key(self) -> str:
        return f"{self.module}#{self.index}"


def _scope(node_name: str, modules: set[str]) -> tuple[str, int] | None:
    """``/layer1/layer1.0/relu_1/Relu`` → ("layer1.0.relu", 1); None when the name is not a module scope.

    The TorchScript exporter writes each scope level as the child's name, or its qualified name inside
    a container (``layer1.0``), with ``_k`` for the k-th call of a module called more than once."""
    parts = node_name.strip("/").split("/")
    if len(parts) < 2 or not node_name.startswith("/"):
        return None
    path, index = "", 0
    for comp in parts[:-1]:
        options = [(comp, 0)]
        numbered = re.fullmatch(r"(.+)_(\d+)", comp)
        if numbered:
            options.append((numbered.group(1), int(numbered.group(2))))
        found = None
        for name, k in options:
            # a container's child is written "<container>.<child>" (layer1.0, downsample.0)
            for joined in dict.fromkeys([f"{path}.{name}" if path else name,
                                         f"{path}.{name.rsplit('.', 1)[-1]}" if path and "." in name else name]):
                if joined in modules:
                    found = (joined, k)
                    break
            if found:
                break
        if found is None:
            return None
        path, index = found
    return path, index


def align_torch(calls: list[Call], modules: set[str], candidate) -> tuple[dict[str, str], dict[str, str], int]:
    """B tensor → module#call; see the module docstring for the rules."""
    last: dict[tuple[str, int], str] = {}
    for node in candidate.graph.node:
        if node.op_type in SKIP_OPS or not node.output:
            continue
        scope = _scope(node.name, modules)
        if scope is not None:
            last[scope] = node.output[0]
    pairs: dict[str, str] = {}
    by_output: dict[int, tuple[str, int]] = {}  # tensor id → (B tensor, its version when produced)
    used = set()
    with_nodes = {module for module, _ in last}
    for call in calls:
        tensor = last.get((call.module, call.index))
        if tensor is None and call.foldable and call.module not in with_nodes and call.input_id is not None:
            # no node of its own: folded into its producer's — if nothing changed the tensor in place since
            produced = by_output.get(call.input_id)
            if produced is not None and produced[1] == call.input_version:
                tensor = produced[0]
        if tensor is None:
            continue
        used.add((call.module, call.index))
        pairs[tensor] = call.key
        if call.output_id is not None:
            by_output[call.output_id] = (tensor, call.output_version)
    why = {}
    for tensor, _ in activations(candidate):
        if tensor not in pairs:
            why[tensor] = "no module output (a functional op, or inside a module's forward)"
    return pairs, why, sum(1 for c in calls if (c.module, c.index) not in used)


def trace_torch(module, batches: list[dict[str, np.ndarray]], names: list[str],
                double: bool = False) -> tuple[list[Call], dict[str, np.ndarray], set[str]]:
    """Every leaf module call's output over all batches (float64 with ``double``), the calls of the
    first batch with tensor identities, and the module names."""
    import torch

    model = copy.deepcopy(module).double() if double else module
    leaves = {m: n for n, m in model.named_modules() if n and not any(True for _ in m.children())}
    calls: list[Call] = []
    values: dict[str, list[np.ndarray]] = {}
    counts: Counter = Counter()
    keep: list = []  # the first batch's tensors stay alive, so their ids stay unique
    first = [True]

    def hook(mod, inputs, output):
        name = leaves[mod]
        index = counts[name]
        counts[name] += 1
        key = f"{name}#{index}"
        if isinstance(output, torch.Tensor):
            values.setdefault(key, []).append(output.detach().to(torch.float64 if double else torch.float32)
                                              .cpu().numpy().copy())
        if first[0]:
            source = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            tensor = output if isinstance(output, torch.Tensor) else None
            keep.extend([source, output])
            calls.append(Call(name, index, id(source) if source is not None else None,
                              id(tensor) if tensor is not None else None, isinstance(mod, FOLDABLE),
                              source._version if source is not None else 0,
                              tensor._version if tensor is not None else 0))

    FOLDABLE = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.Identity, torch.nn.modules.dropout._DropoutNd)  # noqa: N806
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():  # not inference_mode: version counters tell in-place changes apart
            for batch in batches:
                counts.clear()
                args = [torch.from_numpy(np.ascontiguousarray(batch[n])) for n in names]
                model(*[a.double() if double and a.is_floating_point() else a for a in args])
                first[0] = False
    finally:
        for h in handles:
            h.remove()
        keep.clear()
    modules = {n for n, _ in model.named_modules() if n}
    return calls, {k: np.concatenate(v) for k, v in values.items()}, modules


# ------------------------------------------------------------------------------------------- running

def _session(model, backend: str, threads: int | None):
    """``model`` on ``backend``: ONNX Runtime with its provider, or OpenVINO's CPU plugin (same session calls)."""
    if backend == "ov-cpu":
        from ..backends.cpu_sessions import open_session

        return open_session(model, threads, backend)
    return cpu_session(model, threads, provider=PROVIDERS[backend])


def run_onnx(model, batches: list[dict[str, np.ndarray]], outputs: list[str], backend: str, threads: int | None,
             extra: Callable[[int], dict[str, np.ndarray]] | None = None) -> dict[str, np.ndarray]:
    session = _session(model, backend, threads)
    wanted = {i.name for i in session.get_inputs()}
    got: dict[str, list[np.ndarray]] = {}
    for i, batch in enumerate(batches):
        feeds = {k: v for k, v in batch.items() if k in wanted}
        if extra is not None:  # OpenVINO's reader drops an input nothing reads (a fed final output)
            feeds.update({k: v for k, v in extra(i).items() if k in wanted})
        try:
            results = session.run(outputs, feeds)
        except Exception as err:  # onnxruntime's own exception types: wrong shapes, a kernel failing
            text = first_line(err)
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feeds.items() if not k.endswith(REF_SUFFIX))
            raise BadInputError(f"{RUNTIMES[backend]} fails on inputs {shapes}: {text[:200]}") from None
        for name, value in zip(outputs, results):
            got.setdefault(name, []).append(value)
    return {k: np.concatenate(v) for k, v in got.items()}


# ----------------------------------------------------------------------------------------------- debug

PROVIDERS = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider"}
FLOAT_TYPES = (1, 10, 11, 16)  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16 (onnx loads with the job)
RUNTIMES = {"ort-cpu": "ONNX Runtime", "ort-cuda": "ONNX Runtime", "ov-cpu": "OpenVINO"}


def _provider(backend: str) -> str:
    """``backend`` checked: one debug can read intermediate tensors on, and available here."""
    if backend not in RUNTIMES:
        raise BadInputError(f"--backend {backend}: deploy debug runs ONNX files on {', '.join(RUNTIMES)} (it reads "
                            f"their intermediate tensors)")
    from ..backends import get_runner_class
    from ..errors import MissingDependencyError

    ok, why = get_runner_class(backend).available()
    if not ok:
        raise MissingDependencyError(f"backend {backend} unavailable here: {why}")
    return backend


def _check_inputs(a, b) -> None:
    names_a = [s.name for s in a.inputs]
    names_b = [s.name for s in b.inputs]
    if sorted(names_a) != sorted(names_b) and len(names_a) != len(names_b):
        raise BadInputError(f"{b.label}: inputs {names_b} do not correspond to {a.label}'s {names_a}")
    for sa, sb in zip(a.inputs, b.inputs):
        if len(sa.shape) != len(sb.shape):
            raise BadInputError(f"{b.label}: input '{sb.name}' has rank {len(sb.shape)}, {a.label}'s '{sa.name}' "
                                f"{len(sa.shape)}")
        for axis, (x, y) in enumerate(zip(sa.shape, sb.shape)):
            if isinstance(x, int) and isinstance(y, int) and x > 0 and y > 0 and x != y:
                raise BadInputError(f"{b.label}: input '{sb.name}' dim {axis} is {y}, {a.label}'s is {x}: not the "
                                    f"same model's inputs")


def debug_artifacts(reference, candidate, *, backend_reference: str | None = None,
                    backend_candidate: str = "ort-cpu", samples: int = 8, batch: int | None = None,
                    data: str | None = "photos", seed: int = 0, precision: str = "fp32", threads: int | None = None,
                    impact: int = 64, progress: Callable[[str], None] = lambda _: None) -> tuple[DebugReport, dict]:
    """``impact``: for up to this many weighted layers (worst local SQNR first), also run the reference
    with that layer's tensor replaced by the candidate's local value (0: skip)."""
    import onnx

    from ..artifacts.inputs import make_feeds
    from ..harness.check import feed_specs

    if candidate.kind != "onnx":
        raise BadInputError(f"{candidate.label}: the candidate of deploy debug is an ONNX file (the reference may "
                            f"be a PyTorch model): put the PyTorch model first")
    if reference.kind not in ("torch", "onnx"):
        raise BadInputError(f"{reference.label}: the reference is a PyTorch model or an ONNX file")
    _check_inputs(reference, candidate)
    tolerance = tolerance_for(precision, {}, {})
    provider_b = _provider(backend_candidate)
    backend_reference = backend_reference or ("torch-cpu" if reference.kind == "torch" else "ort-cpu")
    if reference.kind == "torch" and backend_reference != "torch-cpu":
        raise BadInputError(f"--backend-a {backend_reference}: a PyTorch reference is read on torch-cpu (hooks)")
    model_b = onnx.load(str(candidate.onnx_path))
    types_b = elem_types(model_b)
    # candidate input name → reference input name: by name when the names agree, else by position
    if sorted(s.name for s in reference.inputs) == sorted(s.name for s in candidate.inputs):
        input_map = {s.name: s.name for s in candidate.inputs}
    else:
        input_map = {sb.name: sa.name for sa, sb in zip(reference.inputs, candidate.inputs)}
    specs = feed_specs(candidate, reference) if reference.kind == "onnx" else feed_specs(reference, candidate)
    if reference.kind == "onnx":  # a dim either file fixes is fixed for both
        by_name = {s.name: s for s in reference.inputs}
        specs = [_merge_dims(s, by_name[input_map[s.name]]) for s in specs]
    feeds = make_feeds(specs, samples=samples, batch=batch, data=data, seed=seed)
    batches = feeds.batches  # keyed by the candidate's input names
    notes: list[str] = []
    if any(a.type == onnx.AttributeProto.GRAPH or a.graphs for n in model_b.graph.node for a in n.attribute):
        notes.append("nodes with subgraphs (If/Loop/Scan) read outer tensors directly: inside them the local "
                     "view is the accumulated one")

    progress("aligning tensors")
    floors: dict[str, float] = {}
    if reference.kind == "torch":
        names = [input_map.get(s.name, s.name) for s in candidate.inputs]
        a_batches = [{input_map.get(k, k): v for k, v in b.items()} for b in batches]
        calls, values32, modules = trace_torch(reference.module, a_batches, names)
        pairs, why, reference_only = align_torch(calls, modules, model_b)
        if precision == "fp32":
            _, values64, _ = trace_torch(reference.module, a_batches, names, double=True)
            for key, v64 in values64.items():
                if key in values32:
                    floors[key] = diff_output(key, v64, values32[key], Tolerance()).max_rel
            values_a = values64
            del values32  # the float64 values are the reference; the fp32 ones only set the floors
            notes.append("reference read in float64 (hooks); fp32 threshold per tensor = max(1e-5, 2 × the "
                         "reference's own fp32 error there)")
        else:
            values_a = values32
        final_a = _torch_final(reference, a_batches, names)
    else:
        model_a = onnx.load(str(reference.onnx_path))
        types_a = elem_types(model_a)
        pairs, why, reference_only = align_onnx(model_a, model_b)
        provider_a = _provider(backend_reference)
        wanted = sorted(set(pairs.values()))
        a_batches = [{input_map.get(k, k): v for k, v in b.items()} for b in batches]
        values_a = run_onnx(with_outputs(model_a, wanted, types_a), a_batches, wanted, provider_a, threads)
        final_names_a = [o.name for o in model_a.graph.output]
        final_a = run_onnx(model_a, a_batches, final_names_a, provider_a, threads)
    pairs = {t: k for t, k in pairs.items() if k in values_a}
    if not pairs:
        hint = ("its node names carry no PyTorch module scopes (export with `deploy export`, the TorchScript "
                "exporter)" if reference.kind == "torch" else "the two files share no tensor names")
        raise BadInputError(f"{candidate.label}: no tensor aligns with {reference.label}: {hint}")

    order = {t: p for t, p in activations(model_b)}
    aligned = sorted(pairs, key=lambda t: order[t])
    node_at = list(model_b.graph.node)

    progress(f"accumulated view: {len(aligned)} tensors")
    final_names_b = [o.name for o in model_b.graph.output]
    exposed = with_outputs(model_b, aligned, types_b)
    acc_b = run_onnx(exposed, batches, list(dict.fromkeys(aligned + final_names_b)), provider_b, threads)
    final_b = run_onnx(model_b, batches, final_names_b, provider_b, threads)
    for t in list(aligned):  # same name, other shape (a layout change): not the same tensor
        if values_a[pairs[t]].shape != acc_b[t].shape:
            why[t] = f"shape {list(acc_b[t].shape)} differs from the reference's {list(values_a[pairs[t]].shape)}"
            aligned.remove(t)
            del pairs[t]
    if not aligned:
        raise BadInputError(f"{candidate.label}: no tensor aligns with {reference.label}: every same-named tensor "
                            f"has another shape")

    progress("local view")
    # A's values replace B's where they hold float samples along axis 0; a shape tensor (Paddle's Reshape targets:
    # the same few int64 per batch) is recomputed in B, not sliced out of every batch's values joined together
    samples = sum(len(next(iter(b.values()))) for b in batches)
    fed = {t for t in aligned if types_b.get(t, 1) in FLOAT_TYPES and values_a[pairs[t]].ndim >= 1
           and values_a[pairs[t]].shape[0] == samples}
    cut = cut_model(model_b, fed, aligned, types_b, {t: values_a[pairs[t]].shape for t in fed})

    given = {t + REF_SUFFIX: values_a[pairs[t]] for t in fed}
    dtypes = {t + REF_SUFFIX: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(types_b.get(t, 1))) for t in fed}
    local_b = run_onnx(cut, batches, aligned, provider_b, threads, extra=_slicer(batches, given, dtypes))

    progress("judging")
    bounds = boundaries(model_b, fed)
    layers = []
    for t in aligned:
        key = pairs[t]
        tol = tolerance
        if key in floors and tol.max_rel is not None:
            tol = replace(tol, max_rel=max(tol.max_rel, 2.0 * floors[key]))
        node = node_at[order[t]]
        ref = values_a[key]
        layers.append(LayerError(t, key, node.op_type, node.name or t, order[t],
                                 diff_output(t, ref, acc_b[t], tol), diff_output(t, ref, local_b[t], tol),
                                 bounds[t]))
    final = _final_diffs(final_a, final_b, precision)

    # a layer whose local error is exactly zero costs the output nothing: not measured
    weighted = sorted((e for e in layers if e.op in WEIGHTED_OPS and e.local.max_rel > 0),
                      key=lambda e: e.local.sqnr_db)[:max(impact, 0)]
    for i, layer in enumerate(weighted):
        progress(f"output impact of each layer's error: {i + 1}/{len(weighted)}")
        value = local_b[layer.tensor]
        if reference.kind == "torch":
            got = _torch_replaced(reference, a_batches, names, layer.reference, value)
        else:
            cut_a = cut_model(model_a, {layer.reference}, [], types_a, {layer.reference: value.shape})
            dtype = onnx.helper.tensor_dtype_to_np_dtype(types_a.get(layer.reference, 1))
            got = run_onnx(cut_a, a_batches, final_names_a, provider_a, threads,
                           extra=_slicer(a_batches, {layer.reference + REF_SUFFIX: value}, {
                               layer.reference + REF_SUFFIX: np.dtype(dtype)}))
            if layer.reference in got:  # the tensor is itself a final output: the cut only redirects reads
                got[layer.reference] = value.astype(got[layer.reference].dtype)
        layer.impact_db = min((diff_output(k, final_a[k].astype(np.float64), got[k].astype(np.float64),
                                           Tolerance()).centred_sqnr_db for k in final_a if k in got), default=None)

    progress("checking what exposing tensors changed")
    perturbation = _perturbation(model_b, exposed, final_b, acc_b, final_names_b, provider_b, threads)
    convs = [n for n in model_b.graph.node if n.op_type in ("Conv", "Gemm", "ConvTranspose", "MatMul")]
    report = DebugReport(
        reference=reference.label, candidate=candidate.label, backend_reference=backend_reference,
        backend_candidate=backend_candidate, data=feeds.source, samples=feeds.samples, precision=precision,
        candidate_tensors=len(order), layers=layers,
        convs_aligned=sum(1 for n in convs if n.output[0] in pairs), convs_total=len(convs),
        unaligned=why, reference_only=reference_only, final=final, perturbation=perturbation, notes=notes)
    return report, {"model_b": model_b, "values_a": values_a, "pairs": pairs, "local_b": local_b,
                    "batches": batches, "types_b": types_b}




def _merge_dims(spec, other):
    """``spec`` with the dims ``other`` fixes where ``spec`` leaves them free."""
    from ..artifacts.artifact import TensorSpec

    dims = tuple(d if isinstance(d, int) and d > 0 else (o if isinstance(o, int) and o > 0 else d)
                 for d, o in zip(spec.shape, other.shape))
    return TensorSpec(spec.name, dims, spec.dtype)


def _slicer(batches: list[dict], arrays: dict[str, np.ndarray],
            dtypes: dict[str, np.dtype] | None = None) -> Callable[[int], dict[str, np.ndarray]]:
    """Batch i's slice of arrays that hold every sample, cast to ``dtypes`` slice by slice."""
    sizes = [len(next(iter(b.values()))) for b in batches]
    starts = np.cumsum([0, *sizes])
    dtypes = dtypes or {}

    def feeds(i: int) -> dict[str, np.ndarray]:
        return {k: np.ascontiguousarray(v[starts[i]:starts[i + 1]], dtype=dtypes.get(k)) for k, v in arrays.items()}

    return feeds


def _torch_replaced(reference, batches, names, key: str, value: np.ndarray) -> dict[str, np.ndarray]:
    """The PyTorch reference's final outputs with one module call's output replaced by ``value``."""
    import torch

    from ..artifacts.artifact import name_outputs

    module_name, _, index = key.rpartition("#")
    target = dict(reference.module.named_modules())[module_name]
    state = {"calls": 0, "start": 0}

    def hook(mod, inputs, output):
        call = state["calls"]
        state["calls"] += 1
        if call == int(index):
            n = output.shape[0]
            # a copy: an in-place op after this module (ReLU) must not write into the recorded values
            return torch.from_numpy(value[state["start"]:state["start"] + n]).to(output.dtype).clone()
        return None

    handle = target.register_forward_hook(hook)
    outs = []
    try:
        with torch.inference_mode():
            for batch in batches:
                state["calls"] = 0
                args = [torch.from_numpy(np.ascontiguousarray(batch[n])) for n in names]
                outs.append({k: v.float().numpy() for k, v in name_outputs(reference.module(*args)).items()})
                state["start"] += len(args[0])
    finally:
        handle.remove()
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def _torch_final(reference, batches, names) -> dict[str, np.ndarray]:
    from ..backends.torch_runner import TorchRunner

    with TorchRunner(reference) as runner:
        outs = [runner._run({n: b[n] for n in names}) for b in batches]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def _final_diffs(final_a: dict, final_b: dict, precision: str) -> list[OutputDiff]:
    from ..harness.compare import pair_outputs

    try:
        pairs, _ = pair_outputs(final_a, final_b)
    except BadInputError:
        return []
    tol = tolerance_for(precision, {}, {})
    return [diff_output(b, final_a[a].astype(np.float64), final_b[b].astype(np.float64), tol) for a, b in pairs]


def _runs_as(model, backend: str, threads: int | None) -> Counter:
    """What the runtime runs: ONNX Runtime's optimized graph by op type; OpenVINO's compiled graph by layer type and
    runtime precision (``Convolution u8``), so a conv that falls back to float shows as a lost int8 kernel."""
    if backend == "ov-cpu":
        from ..ov import runtime_precisions

        found = runtime_precisions(_session(model, backend, threads))
        return Counter({f"{kind} {precision}": n for (kind, precision), n in found.items()
                        if kind not in ("Const", "Input", "Output")})
    return Counter(optimized_op_counts(model, threads, PROVIDERS[backend]))


def _perturbation(model_b, exposed, final_b, acc_b, names, backend, threads) -> dict:
    """Fusions the runtime loses when the tensors are exposed, and whether the final outputs moved."""
    plain = _runs_as(model_b, backend, threads)
    instrumented = _runs_as(exposed, backend, threads)
    lost = {op: [plain[op], instrumented.get(op, 0)] for op in plain if instrumented.get(op, 0) < plain[op]}
    gained = {op: [plain.get(op, 0), instrumented[op]] for op in instrumented if plain.get(op, 0) < instrumented[op]}
    moved = 0.0
    for name in names:
        a, b = final_b[name].astype(np.float64), acc_b[name].astype(np.float64)
        scale = float(np.abs(a).max()) or 1.0
        moved = max(moved, float(np.abs(a - b).max()) / scale)
    return {"fused_ops_lost": lost, "ops_gained": gained, "final_outputs_max_rel_change": moved,
            "note": _perturbation_note(lost, gained, moved, RUNTIMES[backend])}


def _perturbation_note(lost: dict, gained: dict, moved: float, runtime: str = "ONNX Runtime") -> str:
    if not lost and not gained:
        return f"exposing the aligned tensors changed nothing {runtime} runs"
    parts = []
    if lost:
        parts.append("fused ops lost: " + ", ".join(f"{op} {a} → {b}" for op, (a, b) in lost.items()))
    if gained:
        parts.append("ops now run on their own: " + ", ".join(f"{op} {a} → {b}" for op, (a, b) in gained.items()))
    return (f"exposing the aligned tensors changed {runtime}'s graph ({'; '.join(parts)}); the exposed run's "
            f"final outputs moved by max rel {moved:.2e} (the final outputs are judged on the unmodified session)")


# --------------------------------------------------------------------------------------------- extract

def extract_reproducer(report: DebugReport, state: dict, folder: Path) -> dict:
    """The smallest subgraph around the first divergence, with its recorded inputs and both outputs."""
    import onnx

    first = report.first
    if first is None:
        raise BadInputError("--extract: nothing diverged, so there is nothing to extract")
    model = state["model_b"]
    types = state["types_b"]
    values_a, pairs = state["values_a"], state["pairs"]
    folder.mkdir(exist_ok=True)
    inputs = {}
    batches = state["batches"]
    for name in first.boundary:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(types.get(name, 1))
        if name in pairs:
            inputs[name] = values_a[pairs[name]].astype(dtype)
        else:  # a graph input
            inputs[name] = np.concatenate([b[name] for b in batches]).astype(dtype)
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "full.onnx"
        onnx.save(onnx.shape_inference.infer_shapes(model), str(full))
        target = folder / "subgraph.onnx"
        onnx.utils.extract_model(str(full), str(target), list(first.boundary), [first.tensor], check_model=False)
    np.savez(folder / "inputs.npz", **inputs)
    np.savez(folder / "reference.npz", **{first.tensor: values_a[pairs[first.tensor]]})
    np.savez(folder / "candidate.npz", **{first.tensor: state["local_b"][first.tensor]})
    sub = onnx.load(str(folder / "subgraph.onnx"))
    info = {"subgraph": str(target), "nodes": [n.op_type for n in sub.graph.node], "inputs": list(inputs),
            "output": first.tensor, "reference_tensor": first.reference,
            "local_max_rel": first.local.max_rel if math.isfinite(first.local.max_rel) else None}
    return info
