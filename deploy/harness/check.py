"""Run artifacts on backends and compare them: the engine behind `deploy check` and export verification."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..artifacts.artifact import Artifact, TensorSpec
from ..artifacts.inputs import Feeds, make_feeds
from ..artifacts.onnx_export import convert_artifact
from ..artifacts.spec import load_onnx_artifact
from ..backends import get_runner_class
from ..backends.base import Runner
from ..backends.torch_runner import TorchFloat64Runner
from ..errors import BadInputError
from .compare import CompareReport, compare_outputs


def _unoptimized_runs(artifact: Artifact, feeds: Feeds, threads: int | None) -> list[dict[str, np.ndarray]]:
    """The reference ONNX file run with every ONNX Runtime optimization off: how far the runtime alone moves
    its outputs (fused kernels, other summation orders) — the floor an exact pass is judged against."""
    from ..ort import cpu_session

    session = cpu_session(artifact.onnx_path, threads, optimize=False)
    names = [o.name for o in session.get_outputs()]
    specs = list(artifact.inputs)
    return [dict(zip(names, session.run(names, named_for(specs, batch)))) for batch in feeds.batches]


def default_backend(artifact: Artifact) -> str:
    return {"torch": "torch-cpu", "engine": "trt", "ir": "ov-cpu"}.get(artifact.kind, "ort-cpu")


def runnable(artifact: Artifact, backend: str, stack: contextlib.ExitStack) -> tuple[Artifact, list[str]]:
    """The artifact in the form ``backend`` runs: a torch model asked to run on ONNX Runtime is exported
    to a temporary file first (unverified: the comparison itself is the verification)."""
    cls = get_runner_class(backend)
    if cls.artifact_kind == artifact.kind or artifact.kind in cls.also_runs:
        return artifact, []
    if artifact.kind == "engine":
        raise BadInputError(f"{artifact.label}: a TensorRT engine runs on the trt backend only")
    if artifact.kind == "ir":
        raise BadInputError(f"{artifact.label}: an OpenVINO IR runs on ov-cpu (or ov-cpu-bf16) only")
    if artifact.kind == "onnx":
        raise BadInputError(f"{artifact.label}: {backend} runs PyTorch models; run ONNX files on ort-cpu, "
                            f"ov-cpu, ort-cuda or trt")
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="deploy-")))
    path = folder / "model.onnx"
    convert_artifact(artifact, path)
    converted = load_onnx_artifact(path)
    converted.label = artifact.label
    return converted, [f"{artifact.label} exported to ONNX (opset 17, simplified) to run on {backend}"]


def feed_specs(*artifacts: Artifact) -> list[TensorSpec]:
    """The most constrained input specs: an ONNX file's fixed dims win over a module's free batch, and a
    module's example shape fills an ONNX file's free height and width (a ``--dynamic`` export)."""
    examples = next((a.example_shapes for a in artifacts if a.kind == "torch" and a.example_shapes), None)
    for artifact in artifacts:
        if artifact.kind == "onnx":
            if examples is None or len(examples) != len(artifact.inputs):
                return artifact.inputs
            return [_fill_free(spec, shape) for spec, shape in zip(artifact.inputs, examples)]
    return artifacts[0].inputs


def _fill_free(spec: TensorSpec, example: tuple[int, ...]) -> TensorSpec:
    if len(example) != len(spec.shape):
        return spec
    dims = tuple(d if (isinstance(d, int) and d > 0) or i == 0 else example[i] for i, d in enumerate(spec.shape))
    return TensorSpec(spec.name, dims, spec.dtype)


def named_for(specs: list[TensorSpec], batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``batch`` under the names ``specs`` use: as it is when the names agree, else by position (an
    exporter named the input ``images`` where the module's argument is ``input``)."""
    names = [s.name for s in specs]
    if set(batch) == set(names) or len(batch) != len(names):
        return batch
    return dict(zip(names, batch.values()))


def run_batches(runner: Runner, feeds: Feeds, tick: Callable[[], None] | None = None) -> list[dict[str, np.ndarray]]:
    outputs = []
    for batch in feeds.batches:
        outputs.append(runner.infer(named_for(runner.input_specs, batch)))
        if tick:
            tick()
    return outputs


def check_artifacts(
    reference: Artifact,
    candidate: Artifact,
    *,
    backend_reference: str | None = None,
    backend_candidate: str | None = None,
    samples: int = 8,
    batch: int | None = None,
    data: str | None = "photos",
    seed: int = 0,
    precision: str = "fp32",
    overrides: list[str] | None = None,
    threads: int | None = None,
    tick: Callable[[], None] | None = None,
    exact_reference: bool = True,
) -> CompareReport:
    """Run both artifacts on the same inputs and judge every output (reference first).

    ``exact_reference``: a PyTorch reference on torch-cpu is also run in float64, the candidate is judged
    against that, and the fp32 threshold allows twice the reference's own fp32 error (compare_outputs)."""
    backend_reference = backend_reference or default_backend(reference)
    backend_candidate = backend_candidate or default_backend(candidate)
    with contextlib.ExitStack() as stack:
        ref, notes_a = runnable(reference, backend_reference, stack)
        cand, notes_b = runnable(candidate, backend_candidate, stack)
        feeds = make_feeds(feed_specs(ref, cand), samples=samples, batch=batch, data=data, seed=seed)
        results = []
        names = [[s.name for s in x.inputs] for x in (ref, cand)]
        if names[0] != names[1] and len(names[0]) == len(names[1]) and set(names[0]) != set(names[1]):
            pairs = ", ".join(f"{a} ↔ {b}" for a, b in zip(*names))
            notes_b = [*notes_b, f"inputs paired by position: {pairs}"]
        for artifact, backend in ((ref, backend_reference), (cand, backend_candidate)):
            with get_runner_class(backend)(artifact, threads=threads) as runner:
                results.append(run_batches(runner, feeds, tick))
        exact = exact_reference and ref.kind == "torch" and backend_reference == "torch-cpu"
        if exact:
            with TorchFloat64Runner(ref, threads=threads) as runner:
                ref64 = run_batches(runner, feeds, tick)
        floor = None
        if (exact_reference and ref.kind == "onnx" and cand.kind == "onnx" and backend_reference == "ort-cpu"
                and precision == "fp32"):
            floor = _unoptimized_runs(ref, feeds, threads)
    if exact:
        diffs, pair_notes = compare_outputs(ref64, results[1], precision, overrides, ref_fp32_batches=results[0])
        pair_notes.append("reference evaluated in float64; fp32 threshold = max(preset, 2 × the reference's own "
                          "fp32 error)")
    elif floor is not None:
        diffs, pair_notes = compare_outputs(results[0], results[1], precision, overrides, ref_fp32_batches=floor)
        worst = max((d.reference_fp32_error or 0.0) for d in diffs) if diffs else 0.0
        pair_notes.append(f"noise floor: ONNX Runtime with all optimizations vs none on the reference differs by "
                          f"max rel {worst:.1e}; fp32 threshold = max(preset, 2 × that)")
    else:
        diffs, pair_notes = compare_outputs(results[0], results[1], precision, overrides)
    return CompareReport(reference.label, candidate.label, backend_reference, backend_candidate, feeds.source,
                         feeds.samples, precision, diffs, notes_a + notes_b + pair_notes)
