"""Int8 accuracy on real labelled data: the digits-trained nets (`deploy digits`, and a section of the demo).

The zoo cannot download pretrained weights, so accuracy is measured on nets this project trains itself on
scikit-learn's digits (deploy.jobs.digits: deterministic, cached). Each net is exported, quantized with
`deploy quantize` calibrated on the digits calibration split and scored on the disjoint test split, with
labels: the accuracy drop is the measure. The tournament and the budget are judged on a
slice of the training split, so that the test split, which reports the accuracy, chose nothing. RepVGG is
shown in its train form, after reparameterization (where plain PTQ is known to fail: one fused kernel
mixes branches of very different scales), and after reparameterization with the sensitivity fallback under
a 0.5-point budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts.spec import load_artifact, load_onnx_artifact
from ..errors import BadInputError
from ..passes.qdq import QuantizeError, get_target
from .digits import digits_splits, evaluate, onnx_logits, train_digits, write_digits_npz
from .export import export_onnx
from .fuse import fuse_artifact
from .quantize import QuantizeOptions, QuantizeReport, quantize_artifact

BUDGET_POINTS = 0.5


@dataclass
class AccuracyRow:
    model: str
    form: str  # "train form", "reparameterized", ...
    fp32_accuracy: float
    int8_accuracy: float
    method: str
    kept_float: list[str]
    centred_sqnr_db: float
    budget: str | None
    budget_met: bool | None
    quantize_seconds: float
    int8_path: str
    tier2: list[str] = field(default_factory=list)  # second-tier steps kept (GPTQ rounding, bias correction)

    @property
    def drop(self) -> float:
        return self.fp32_accuracy - self.int8_accuracy

    def to_dict(self) -> dict:
        return {**self.__dict__, "drop": round(self.drop, 3)}


SELECT_SAMPLES = 300  # the tail of the training split: what the tournament and the budget are judged on


def _row(model: str, form: str, fp32: Path, report: QuantizeReport, test: tuple) -> AccuracyRow:
    fp32_acc = evaluate(onnx_logits(fp32), *test)
    int8_acc = evaluate(onnx_logits(report.output), *test)
    return AccuracyRow(model, form, fp32_acc, int8_acc, report.chosen, report.kept_float,
                       report.final.centred_sqnr_db, report.budget, report.budget_met, report.seconds["total"],
                       report.output, [step["step"] for step in report.steps if step.get("kept")])


def run_digits_accuracy(out_dir: Path, seed: int = 0, target: str = "ort-cpu", cache_dir: Path | None = None,
                        progress: Callable[[str], None] | None = None) -> list[AccuracyRow]:
    say = progress or (lambda _msg: None)
    try:
        get_target(target)
    except QuantizeError as err:
        raise BadInputError(f"--target: {err}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = digits_splits(seed)
    calib_npz = write_digits_npz(out_dir / "digits-calib.npz", splits.calib)
    x_train, y_train = splits.train
    select_npz = write_digits_npz(out_dir / "digits-select.npz",
                                  (x_train[-SELECT_SAMPLES:], y_train[-SELECT_SAMPLES:]))

    def quantize(fp32: Path, suffix: str, **extra) -> QuantizeReport:
        options = QuantizeOptions(target=target, calib=str(calib_npz), eval_data=str(select_npz),
                                  samples=len(splits.calib[0]), eval_samples=SELECT_SAMPLES, batch=100,
                                  **extra)
        return quantize_artifact(load_onnx_artifact(fp32), fp32.with_name(f"{fp32.stem}.{suffix}.onnx"), options,
                                 progress=lambda msg: say(f"{fp32.stem}: {msg}"))

    rows = []
    for name in ("digits-resnet", "digits-repvgg"):
        start = time.perf_counter()
        say(f"{name}: training (or loading the cached checkpoint)")
        trained = train_digits(name, seed=seed, cache_dir=cache_dir)
        artifact = load_artifact(name, weights=str(trained.checkpoint))
        fp32 = out_dir / f"{name}.onnx"
        say(f"{name}: exporting")
        export_onnx(artifact, fp32, verify=False)
        form = "train form" if name == "digits-repvgg" else "as trained"
        rows.append(_row(name, form, fp32, quantize(fp32, "int8"), splits.test))
        if name == "digits-repvgg":
            fused = out_dir / f"{name}.fused.onnx"
            say(f"{name}: reparameterizing (ONNX stage)")
            fuse_artifact(load_onnx_artifact(fp32), fused, passes=["onnx_reparam"], verify=True, data=None)
            rows.append(_row(name, "reparameterized", fused, quantize(fused, "int8"), splits.test))
            rows.append(_row(name, f"reparameterized, --max-drop {BUDGET_POINTS:g}", fused,
                             quantize(fused, "int8-drop", max_drop=BUDGET_POINTS), splits.test))
            # the SQNR the train form reached: what does it take to give it back after the fusion?
            floor = round(rows[-3].centred_sqnr_db, 1)
            rows.append(_row(name, f"reparameterized, --min-sqnr {floor:g}", fused,
                             quantize(fused, "int8-sqnr", min_sqnr=floor), splits.test))
        say(f"{name}: done in {time.perf_counter() - start:.1f} s")
    return rows


def accuracy_markdown(rows: list[AccuracyRow]) -> list[str]:
    if not rows:
        return []
    lines = ["## Int8 accuracy on real data: nets trained on scikit-learn's digits", "",
             "Calibrated on the 200-image calibration split; method chosen (and budget judged) on 300 images of "
             "the training split; accuracy on the disjoint 400-image test split (`deploy digits`).", "",
             "| model | form | fp32 acc | int8 acc | drop (points) | method | tier 2 | kept in float "
             "| centred SQNR dB |",
             "|---|---|---:|---:|---:|---|---|---|---:|"]
    for r in rows:
        kept = ", ".join(r.kept_float) if r.kept_float else "—"
        lines.append(f"| {r.model} | {r.form} | {r.fp32_accuracy:.2f} % | {r.int8_accuracy:.2f} % | {r.drop:+.2f} | "
                     f"{r.method} | {', '.join(r.tier2) or '—'} | {kept} | {r.centred_sqnr_db:.1f} |")
    return [*lines, ""]
