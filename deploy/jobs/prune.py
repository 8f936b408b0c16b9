"""The whole `deploy prune` job: prune to a target, recover, export (verified), save the record, measure.

Outputs: ``OUT.onnx`` (exported from the pruned model and proven equal to it in ONNX Runtime) and
``OUT.safetensors`` (the pruned weights, with the pruning record and the preparation steps in the file's
metadata), written only when everything passed. ``MODEL --weights OUT.safetensors`` rebuilds the pruned
model from the original architecture without a pickle (:func:`deploy.artifacts.spec.load_weights`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..artifacts.artifact import Artifact
from ..artifacts.files import atomic_path
from ..artifacts.inputs import make_feeds
from ..artifacts.spec import PREPARED_KEY, RECORD_KEY, pruning_metadata
from ..errors import BadInputError, CheckFailedError
from ..passes.prune import PruneRecord, compose
from ..reporting import Report
from .prune_search import PruneOutcome, Pruner, PruneSettings, default_finetune_epochs
from .recovery import DistillConfig, accuracy, agreement, distill, output_sqnr, recalibrate_bn

MODEL_KEY = "deploy.model"


def safetensors_path_for(output: Path) -> Path:
    return output.with_suffix(".safetensors")


@dataclass
class PruneJobOptions:
    settings: PruneSettings
    data: str | None = "photos"  # calibration images (BN statistics, activation importance, agreement)
    samples: int = 64
    recalibrate: bool = True
    finetune: str | None = None
    epochs: int | None = None
    temperature: float = 4.0
    eval_data: str | None = None
    eval_samples: int = 400
    measure: bool = True
    verify: bool = True


@dataclass
class Stage:
    name: str
    agreement: float | None  # top-1 agreement with the unpruned model, %
    accuracy: float | None  # top-1 accuracy on labelled eval data, %
    seconds: float = 0.0
    sqnr_db: float | None = None  # mean-centred SQNR of the outputs against the unpruned model

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(repr=False)
class PruneJobReport(Report):
    model: str
    target: str
    outcome: PruneOutcome
    stages: list[Stage] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    eval_source: str = ""
    original_accuracy: float | None = None
    seconds: float = 0.0
    export_check: str = ""
    export_max_rel: float | None = None

    @property
    def passed(self) -> bool:
        return True  # failures raise before anything is written

    def groups_table(self) -> list[dict]:
        rows = []
        for p in self.outcome.plans:
            rows.append({"group": p.group.describe(), "channels_before": p.group.size, "channels_after": len(p.keep),
                         "layers": len({m.module for m in p.group.members})})
        return rows

    def to_dict(self) -> dict:
        o = self.outcome
        return {
            "model": self.model, "target": self.target, "method": o.method, "prepared": o.prepared,
            "round_to": o.round_to, "macs": {"before": o.macs_before, "after": o.macs_after, "kept": o.macs_kept},
            "params": {"before": o.params_before, "after": o.params_after},
            "latency": o.latency.to_dict() if o.latency else None,
            "probes": [p.to_dict() for p in o.probes], "groups": self.groups_table(),
            "frozen": [{"group": g.describe(), "why": g.frozen} for g in o.graph.groups if g.frozen and g.producers],
            "stages": [s.to_dict() for s in self.stages], "original_accuracy": self.original_accuracy,
            "eval": self.eval_source, "written": self.written, "notes": self.notes + o.notes,
            "export_check": self.export_check, "export_max_rel": self.export_max_rel,
            "seconds": round(self.seconds, 2), "passed": self.passed,
        }

    def summary(self) -> str:
        o = self.outcome
        lat = (f", latency {o.latency.latency_ratio:.2f}× of the original [{o.latency.low:.2f}, {o.latency.high:.2f}]"
               if o.latency else "")
        last = self.stages[-1] if self.stages else None
        score = ""
        if last and last.accuracy is not None:
            score = f", accuracy {last.accuracy:.1f} %"
        elif last and last.agreement is not None:
            score = f", top-1 agreement {last.agreement:.1f} %"
        elif last and last.sqnr_db is not None:
            score = f", output SQNR {last.sqnr_db:.1f} dB vs the original"
        return (f"PASSED prune {self.model}: {o.macs_kept:.1%} of the MACs, {o.params_after / o.params_before:.1%} "
                f"of the params ({o.method}){lat}{score}")


def _batches(array: np.ndarray, size: int = 32) -> list[torch.Tensor]:
    """Batches of ``size``; a last batch of one sample joins the one before (train-mode BN needs two)."""
    starts = list(range(0, len(array), size))
    if len(starts) > 1 and len(array) - starts[-1] < 2:
        starts.pop()
    ends = starts[1:] + [len(array)]
    return [torch.from_numpy(np.ascontiguousarray(array[a:b])) for a, b in zip(starts, ends)]


def _read(artifact: Artifact, data: str, samples: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray | None, str]:
    from ..calib.data import DataSourceError, load_samples

    spec = artifact.inputs[0]
    try:
        s = load_samples(data, spec.concrete(), n=samples, offset=offset, input_name=spec.name)
    except DataSourceError as err:
        raise BadInputError(f"{data}: {err}") from None
    return s.array.astype(np.float32), s.labels, s.description


def prune_artifact(artifact: Artifact, output: Path, options: PruneJobOptions,
                   progress: Callable[[str], None] | None = None) -> PruneJobReport:
    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    if artifact.kind != "torch":
        raise BadInputError(f"{artifact.label}: prune works on the PyTorch model (channels are removed from its "
                            f"layers, then it is exported); give the zoo name or file.py:factory, not an .onnx")
    if len(artifact.inputs) != 1:
        raise BadInputError(f"{artifact.label}: prune takes models with one input; this one has "
                            f"{len(artifact.inputs)}")
    # calibration images: BN statistics, activation importance, agreement when there is no labelled eval set
    calib, _, calib_source = _read(artifact, options.data or "photos", options.samples) if options.data \
        else (make_feeds(artifact.inputs, samples=options.samples, seed=0).batches[0][artifact.inputs[0].name],
              None, "random")
    calib_batches = _batches(calib)
    held_out = None
    eval_source = ""
    labels = None
    if options.eval_data:
        held_out, labels, eval_source = _read(artifact, options.eval_data, options.eval_samples)
    elif options.data == "photos":
        from ..calib.data import max_photo_samples

        n = min(64, max_photo_samples() - options.samples)
        if n >= 8:
            held_out, _, eval_source = _read(artifact, "photos", n, offset=options.samples)
    elif options.data:  # a folder or an array file: what follows the calibration samples, when there is some
        try:
            held_out, labels, eval_source = _read(artifact, options.data, 64, offset=options.samples)
        except BadInputError:
            held_out = None
        if held_out is not None and len(held_out) < 8:
            held_out, labels, eval_source = None, None, ""

    original = artifact.module.eval()
    pruner = Pruner(artifact, options.settings, calib_batches, say)
    outcome = pruner.run()
    pruned = outcome.model
    report = PruneJobReport(artifact.label, options.settings.target.describe(), outcome, eval_source=eval_source)
    classifier = _is_classifier(original, held_out)

    def stage(name: str, t0: float) -> None:
        agree = agreement(original, pruned, held_out) if classifier and held_out is not None else None
        acc = accuracy(pruned, held_out, labels) if labels is not None and classifier else None
        sqnr = output_sqnr(original, pruned, held_out) if held_out is not None else None
        report.stages.append(Stage(name, agree, acc, round(time.perf_counter() - t0, 2), sqnr))

    if labels is not None and classifier:
        report.original_accuracy = accuracy(original, held_out, labels)
    stage("pruned", time.perf_counter())
    if options.recalibrate and calib_source == "random":
        report.notes.append("BN statistics not re-estimated: the calibration data is random noise (give --data)")
    elif options.recalibrate:
        t0 = time.perf_counter()
        say("re-estimating BN statistics on the calibration data")
        saved = {k: v.clone() for k, v in pruned.state_dict().items()}
        if recalibrate_bn(pruned, calib_batches):
            stage("BN re-estimated", t0)
            before, after = report.stages[-2], report.stages[-1]
            if _fidelity(after) < _fidelity(before):  # e.g. an untrained net, whose BN statistics are not data's
                pruned.load_state_dict(saved)
                report.stages.pop()
                report.notes.append("BN re-estimation moved the outputs away from the original's on the held-out "
                                    "data, so the statistics carried over from the original were kept")
        else:
            report.notes.append("no BatchNorm left to re-estimate")
    if options.finetune:
        t0 = time.perf_counter()
        x, y, source = _read(artifact, options.finetune, None)
        with torch.no_grad():
            probe = original(torch.from_numpy(x[:2]))
        if not (isinstance(probe, torch.Tensor) and probe.ndim == 2 and probe.shape[1] > 1):
            kind = type(probe).__name__ if not isinstance(probe, torch.Tensor) else f"a tensor {tuple(probe.shape)}"
            raise BadInputError(f"--finetune distils class logits (N × classes); {artifact.label} returns {kind}. "
                                f"Prune without --finetune, and recover with your own training loop")
        if y is not None and (y.ndim != 1 or len(y) != len(x)):
            report.notes.append(f"{source}: labels of shape {tuple(y.shape)} are not one class per sample; "
                                f"distilled without them")
            y = None
        epochs = options.epochs or default_finetune_epochs(len(x))
        config = DistillConfig(epochs=epochs, temperature=options.temperature,
                               max_shift=2 if x.ndim == 4 else 0)
        say(f"distilling from the unpruned model: {len(x)} samples × {epochs} epochs")
        result = distill(pruned, original, x, y, config,
                         progress=lambda e, n, loss: say(_bar(e, n, f"distilling: epoch {e}/{n}, loss {loss:.4f}, "
                                                              f"{time.perf_counter() - t0:.0f} s")))
        stage("distilled" + (" (with labels)" if result.used_labels else " (no labels)"), t0)
        report.notes.append(f"distillation: {source}, {epochs} epochs, T={options.temperature:g}, "
                            f"{result.seconds:.1f} s, final loss {result.final_loss:.4f}")

    if options.measure and outcome.latency is None and options.settings.target.kind != "latency":
        kept = outcome.macs_kept
        outcome.latency = pruner.time_candidates("final", [("pruned", pruned, kept)])[0]
        outcome.probes = list(pruner.probes)

    _write(artifact, pruned, outcome, output, options, report, say)
    report.seconds = time.perf_counter() - start
    return report


def _bar(done: int, total: int, text: str, width: int = 20) -> str:
    filled = int(round(width * done / max(total, 1)))
    return f"[{'█' * filled}{'·' * (width - filled)}] {text}"


def _fidelity(stage: Stage) -> float:
    """How close a stage is to the original, without labels: top-1 agreement, else output SQNR."""
    if stage.agreement is not None:
        return stage.agreement
    return stage.sqnr_db if stage.sqnr_db is not None else 0.0


def _is_classifier(model: torch.nn.Module, held_out: np.ndarray | None) -> bool:
    if held_out is None:
        return False
    with torch.no_grad():
        y = model.eval()(torch.from_numpy(held_out[:2]))
    return isinstance(y, torch.Tensor) and y.ndim == 2 and y.shape[1] > 1


def _write(artifact: Artifact, pruned: torch.nn.Module, outcome: PruneOutcome, output: Path,
           options: PruneJobOptions, report: PruneJobReport, say: Callable[[str], None]) -> None:
    """Export (verified against the pruned torch model), then the safetensors; both or neither."""
    from safetensors.torch import save_file

    from .export import export_onnx

    record, prepared = outcome.record, outcome.prepared
    earlier = pruning_metadata(artifact.origin["weights"]) if artifact.origin and artifact.origin.get("weights") \
        else None
    if earlier is not None:  # pruning a pruned model: one record from the original architecture
        if prepared:
            raise BadInputError(f"{artifact.origin['weights']}: already pruned, and this pruning needs its own "
                                f"preparation ({', '.join(prepared)}); prune the original model instead")
        record = compose(PruneRecord.from_json(earlier[0]), record)
        prepared = list(earlier[1])
        report.notes.append("the input was already pruned: its record and this one are composed, so the file "
                            "reloads on the original architecture")
    pruned_artifact = dataclasses.replace(artifact, module=pruned, label=f"{artifact.label} (pruned)")
    side = safetensors_path_for(output)
    say("exporting the pruned model")
    with atomic_path(side) as tmp_side:
        state = {k: v.detach().clone().contiguous() for k, v in pruned.state_dict().items()}  # tied weights too
        meta = {RECORD_KEY: record.to_json(), PREPARED_KEY: json.dumps(prepared),
                MODEL_KEY: artifact.label}
        save_file(state, str(tmp_side), metadata=meta)
        try:
            export = export_onnx(pruned_artifact, output, verify=options.verify, verify_samples=4,
                                 verify_data=options.data or None, threads=options.settings.threads)
        except CheckFailedError:
            raise
    report.written = [str(output), str(side)]
    if export.notes:
        report.notes.extend(export.notes)
    report.export_check = export.check.summary() if export.check is not None else "not verified"
    report.export_max_rel = export.check.worst().max_rel if export.check is not None else None
