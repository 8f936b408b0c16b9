"""The pipeline's candidates: how each is built from the one before it, and what it records.

fp32 (the export, certified equal to the original) → fused (exact passes, certified equal) → fp16 (where a
backend computes in float16) · int8 (per quantization target: the tournament, then fallback under the
budget) · pruned at each latency target (BN re-estimated; distilled without labels when data is given) →
pruned+int8. A candidate that cannot be built is kept with the reason, so the report says why it is missing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..artifacts.files import sha256_file
from ..backends.ort_graph import round_trips_text
from ..errors import DeployError, first_line, internal_error_text
from ..harness.heldout import Budget
from .certify import Certificate

# The backends a pipeline times (its candidates are ONNX files) and the quantization target of each.
QUANT_TARGETS = {"ort-cpu": "ort-cpu", "ov-cpu": "ov-cpu", "ort-cuda": "ort-cuda", "trt": "trt"}
CPU_TARGETS = ("ort-cpu", "ov-cpu")  # either CPU runtime runs the other's int8 file: each is timed on both


def runs_on(c: Candidate, backend: str) -> bool:
    """Whether the pipeline times candidate ``c`` on ``backend``: float files everywhere; an int8 file on the
    backend it was made for, and an int8 file for one CPU runtime on the other too (the timing then says which
    file each runtime runs fastest: ONNX Runtime may gain nothing from OpenVINO's file, and the reverse)."""
    if c.precision == "bf16":
        return backend == "ov-cpu"
    if c.precision != "int8":
        return True
    target = c.details.get("target")
    return target == QUANT_TARGETS[backend] or (target in CPU_TARGETS and QUANT_TARGETS[backend] in CPU_TARGETS)
FP16_BACKENDS = ("ort-cuda", "trt")  # ONNX Runtime's CPU provider computes float16 Conv/Gemm in float32


@dataclass
class Candidate:
    name: str
    precision: str  # fp32 | fp16 | bf16 (a runtime precision: its parent's file on ov-cpu-bf16) | int8
    parent: str | None
    file: str | None = None  # relative to the pipeline folder
    built: bool = False
    why_not: str | None = None  # not built: the reason
    changes: list[str] = field(default_factory=list)  # what each pass changed, in words
    backends: list[str] = field(default_factory=list)  # the backends it is timed on
    seconds: float = 0.0
    bytes: int = 0
    sha256: str | None = None
    certificate: Certificate | None = None
    misses: list[str] = field(default_factory=list)  # the budget's, on the held-out data
    extra_files: list[dict] = field(default_factory=list)  # written beside it (ranges table, weights): file, sha256
    details: dict = field(default_factory=dict)

    @property
    def within_budget(self) -> bool:
        return self.built and self.certificate is not None and not self.misses

    def to_dict(self) -> dict:
        return {"name": self.name, "precision": self.precision, "parent": self.parent, "file": self.file,
                "built": self.built, "why_not": self.why_not, "changes": self.changes, "backends": self.backends,
                "seconds": round(self.seconds, 2), "bytes": self.bytes, "sha256": self.sha256,
                "certificate": self.certificate.to_dict() if self.certificate else None,
                "within_budget": self.within_budget, "misses": self.misses, "extra_files": self.extra_files,
                "details": self.details}


@dataclass
class BuildContext:
    """What every builder needs: the folder, the original, the data and the budget."""

    folder: Path
    artifact: object  # the original (torch or ONNX Artifact)
    data: str
    samples: int  # tuning samples (calibration / BN statistics / distillation)
    budget: Budget
    labels: bool
    threads: int | None
    distil: bool
    bench_batch: int
    say: Callable[[str], None]
    tuning_file: Path | None = None  # the tuning samples as .npy (preprocessed, no labels), for pruning


def load_candidate(path: Path, shape: tuple | None = None):
    """A candidate file as an artifact whose free dims are filled from ``shape`` (the model input's shape as
    the pipeline was given it: an ONNX input with dynamic height and width is read at that size)."""
    from ..artifacts.spec import load_onnx_artifact

    given = tuple(d if isinstance(d, int) and d > 0 else 1 for d in shape) if shape else None
    return load_onnx_artifact(path, shape=given)


def finish(candidate: Candidate, ctx: BuildContext, path: Path, start: float,
           extras: tuple[str, ...] = ()) -> Candidate:
    candidate.file = path.name
    candidate.built = True
    candidate.changes = [x for x in candidate.changes if x]
    candidate.bytes = path.stat().st_size
    candidate.sha256 = sha256_file(path)
    candidate.seconds = time.perf_counter() - start
    candidate.extra_files = [{"file": f, "sha256": sha256_file(ctx.folder / f)} for f in extras
                             if (ctx.folder / f).is_file()]
    return candidate


def build_fp32(ctx: BuildContext) -> Candidate:
    """The export every other candidate is measured against (torch: exported and certified equal)."""
    from ..jobs.export import export_onnx

    start = time.perf_counter()
    path = ctx.folder / "fp32.onnx"
    opset = 17
    if ctx.artifact.kind == "onnx":  # a user's file keeps its opset (17 or newer): deploy never downgrades
        import onnx

        from ..artifacts.normalize import default_opset

        opset = max(17, default_opset(onnx.load(str(ctx.artifact.onnx_path), load_external_data=False)))
    report = export_onnx(ctx.artifact, path, opset=opset, threads=ctx.threads, progress=ctx.say)
    c = Candidate("fp32", "fp32", None)
    ops = getattr(report, "nodes_by_op", None)
    if ops is not None:
        check = report.check
        c.changes.append(f"exported: {sum(ops.values())} nodes, {report.parameters:,} params")
        c.changes.append(_certified(check))
        c.details["export"] = {"nodes": sum(ops.values()), "parameters": report.parameters,
                               "max_rel": max((d.max_rel for d in check.outputs), default=None) if check else None}
    else:
        c.changes.append("the ONNX file as given (normalized on load)")
    return finish(c, ctx, path, start)


def build_fused(ctx: BuildContext) -> Candidate:
    from ..jobs.fuse import fuse_artifact, parse_passes

    start = time.perf_counter()
    path = ctx.folder / "fused.onnx"
    c = Candidate("fused", "fp32", "fp32")
    report = fuse_artifact(ctx.artifact, path, passes=parse_passes(None, ctx.artifact.kind), threads=ctx.threads,
                           progress=ctx.say)
    for p in report.passes:
        c.changes.append(_pass_words(p))
    c.details["nodes"] = {"before": report.before.get("nodes"), "after": report.after.get("nodes")}
    c.changes.append(_certified(report.check))
    c.changes = [x for x in c.changes if x]
    return finish(c, ctx, path, start)


def _certified(check) -> str:
    if check is None:
        return ""
    worst = max((d.max_rel for d in check.outputs), default=0.0)
    return (f"certified equal to the original ({check.backend_candidate} vs {check.backend_reference}): max rel "
            f"{worst:.1e} on {check.samples} samples, fp32 tolerance")


def _pass_words(p: dict) -> str:
    """'reparameterize (torch): 20 × fuse_conv_bn: BatchNorm2d folded into Conv2d' from a pass report."""
    what: dict[str, int] = {}
    for site in p.get("sites", []):
        what[site.get("what", "")] = what.get(site.get("what", ""), 0) + 1
    if not what:
        return f"{p.get('name')} ({p.get('stage')}): nothing to change"
    return f"{p.get('name')} ({p.get('stage')}): " + "; ".join(f"{n} × {w}" for w, n in what.items())


def build_quantized(ctx: BuildContext, source: Candidate, precision: str, target: str, name: str) -> Candidate:
    """int8 (tournament, fallback under the budget) or fp16 of ``source``, scored by quantize on the tail
    of the tuning data; the pipeline certifies it afterwards on its own held-out data."""
    from ..jobs.quantize import QuantizeOptions, quantize_artifact
    start = time.perf_counter()
    c = Candidate(name, precision, source.name)
    path = ctx.folder / f"{name}.onnx"
    held = max(8, ctx.samples // 2)  # ranges settle on few samples; the fallback's verdict needs many
    options = QuantizeOptions(precision=precision, target=target, calib=ctx.data, samples=ctx.samples - held,
                              eval_samples=held, counts_given=True, max_drop=ctx.budget.max_drop,
                              min_sqnr=ctx.budget.min_sqnr, keep_failed=False, allow_poor=True, measure=False,
                              threads=ctx.threads)
    shape = ctx.artifact.input_shape
    report = quantize_artifact(load_candidate(ctx.folder / source.file, shape), path, options,
                               progress=lambda msg, **_kw: ctx.say(msg))
    unmet = None
    if not report.written:  # no fallback met the budget on the tuning data: the plain one, for the chart
        unmet = (f"the fallback missed the budget on the tuning data even with {len(report.kept_float)} layer(s) "
                 f"in float; this is the {precision} with no budget, so the chart shows what {precision} costs")
        report = quantize_artifact(load_candidate(ctx.folder / source.file, shape), path,
                                   replace(options, max_drop=None, min_sqnr=None, aim_preset=False, tier2=False),
                                   progress=lambda msg, **_kw: ctx.say(msg))
    if precision == "int8":
        k = report.integer_kernels or {}
        c.changes.append(f"int8 Q/DQ for {target}: method {report.chosen} (of the tournament), "
                         f"{report.quantized_nodes} nodes quantized"
                         + (f", {len(report.kept_float)} layer(s) kept in float by the fallback" if report.kept_float
                            else ""))
        if k:
            c.changes.append("ONNX Runtime runs: " + ", ".join(f"{v} {op}" for op, v in k.items()
                                                                 if isinstance(v, int) and v))
            c.changes.append(round_trips_text(k.get("round_trips") or {}))
        c.details = {"method": report.chosen, "kept_float": report.kept_float, "target": target,
                     "round_trips": k.get("round_trips"),
                     "budget_met_on_tuning_data": False if unmet else report.budget_met}
        extras = (Path(report.table_path).name,) if report.table_path else ()
    else:
        extras = ()
        c.changes.append("float16 weights and compute, float32 at the boundary")
    if unmet:
        c.changes.append(unmet)
    if report.preset_failures:
        c.changes.append(f"misses deploy check's {precision} preset: {'; '.join(report.preset_failures)}")
    return finish(c, ctx, path, start, extras)


def build_pruned(ctx: BuildContext, target: float, backend: str) -> Candidate:
    from ..jobs.prune import PruneJobOptions, prune_artifact, safetensors_path_for
    from ..jobs.prune_search import PruneSettings, PruneTarget

    start = time.perf_counter()
    name = f"pruned-{target:g}"
    c = Candidate(name, "fp32", "fp32")
    path = ctx.folder / f"{name}.onnx"
    settings = PruneSettings(PruneTarget("latency", target), round_to=None, backend=backend, batch=ctx.bench_batch,
                             threads=ctx.threads)
    # the tuning samples alone, as an array file: pruning reads nothing the certificates judge (its own BN
    # check scores the last quarter of them; distillation reads all of them, and no labels)
    calibrate = max(8, ctx.samples * 3 // 4)
    options = PruneJobOptions(settings, data=str(ctx.tuning_file), samples=calibrate,
                              finetune=str(ctx.tuning_file) if ctx.distil else None)
    report = prune_artifact(ctx.artifact, path, options, progress=ctx.say)
    o = report.outcome
    c.changes.append(f"pruned to {target:.0%} of the latency on {backend}: {o.macs_kept:.1%} of the MACs, "
                     f"{o.params_after / o.params_before:.1%} of the params, channels in multiples of {o.round_to}")
    last = report.stages[-1] if report.stages else None
    if last is not None:
        c.changes.append("recovery: " + " → ".join(s.name for s in report.stages))
    c.details = {"macs_kept": o.macs_kept, "params_after": o.params_after, "params_before": o.params_before,
                 "round_to": o.round_to, "latency_target": target, "prune_backend": backend,
                 "stages": [s.to_dict() for s in report.stages]}
    return finish(c, ctx, path, start, (safetensors_path_for(path).name,))


BF16_RUNTIME = "ov-cpu-bf16"  # the backend a bf16 candidate is certified and timed on (its file is its parent's)


def bf16_candidate(ctx: BuildContext, base: Candidate) -> Candidate:
    """bf16 on OpenVINO: ``base``'s own file (no new file) run with the CPU plugin's bf16 inference precision —
    a precision to certify like int8, offered where the CPU computes in bf16 (AMX, AVX-512 BF16); elsewhere a
    not-built row that says the CPU lacks it."""
    from ..ov import precision_supported

    supported, why = precision_supported("bf16")
    if not supported:
        return not_built("bf16", "bf16", base.name, f"{why}: OpenVINO would compute it in f32")
    start = time.perf_counter()
    c = Candidate("bf16", "bf16", base.name)
    c.changes.append(f"{base.name}'s file as it is, compiled by OpenVINO with INFERENCE_PRECISION_HINT=bf16: float "
                     f"layers in bf16 ({BF16_RUNTIME}); ship the file with that hint")
    c.details.update(runtime=BF16_RUNTIME, certified_on=BF16_RUNTIME)
    return finish(c, ctx, ctx.folder / base.file, start)


def not_built(name: str, precision: str, parent: str | None, why: str) -> Candidate:
    return Candidate(name, precision, parent, why_not=why)


def attempt(build: Callable[[], Candidate], name: str, precision: str, parent: str | None) -> Candidate:
    """Run a builder; a refusal, a failed check or a crash of one candidate becomes a not-built candidate
    with its one-line reason, and the other candidates go on."""
    try:
        return build()
    except DeployError as error:
        return not_built(name, precision, parent, first_line(error))
    except Exception as error:  # a bug or a library failure in one candidate: said, not fatal to the others
        if os.environ.get("DEPLOY_DEBUG"):
            raise
        crashed = not_built(name, precision, parent, internal_error_text(error))
        crashed.details["internal_error"] = True  # a bug, not a refusal: the demo exits 4 on it
        return crashed
