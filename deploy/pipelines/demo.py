"""The main job (`deploy demo`, `make demo`): `deploy pipeline` once per demo model, then an index page.

The demo has no glue of its own: each model goes through :func:`deploy.pipelines.run.run_pipeline` exactly as
`deploy pipeline` runs it (candidates, certificates on held-out data, a budget, interleaved timing, the Pareto
choice, ``report.html``, a ``manifest.json`` that `deploy verify` re-checks). This module only says which
models, with which data and options, and keeps going when one of them fails:

  * a model that cannot run (bad input, a missing dependency, no candidate within its budget) is a FAILED
    row with its one-line reason, and the other models still run;
  * a bug (an exception that is not one of our errors, in the pipeline or in any candidate) is an
    internal-error row naming the model; the demo finishes the others and exits 4.

The default models: the digits ResNet (real weights we train, real labels: accuracy is the budget, and
pruning is tried), the RepVGG-A0 train form (seeded weights: shows the generic ONNX reparameterization),
and PaddleOCR's text-direction classifier (a real trained third-party ONNX file from a package, labelled
text-line crops).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import (
    EXIT_CHECK_FAILED,
    EXIT_INTERNAL,
    EXIT_OK,
    BadInputError,
    DeployError,
    first_line,
    internal_error_text,
)
from .demo_index import shipped, write_index
from .run import PipelineOptions, PipelineReport, run_pipeline

DEFAULT_MODELS = ("digits-resnet", "repvgg_a0", "ppocr-cls")


@dataclass
class DemoModel:
    """One pipeline of the demo: what to load, on what data, with which options, and what it shows."""

    name: str  # the row's name and its folder under the demo's output
    spec: str
    about: str  # what the model is and what it shows, one sentence
    options: PipelineOptions
    weights: str | None = None
    shape: object | None = None  # one shape or {input: shape} (spec.parse_shapes)
    preprocess: object | None = None  # calib.data.PreprocessSpec stored in the files it writes
    trained: bool = False  # real trained weights (not seeded)


@dataclass
class DemoRow:
    model: str
    about: str
    status: str  # ran | failed | internal error
    seconds: float
    report: PipelineReport | None = None
    reason: str | None = None  # failed / internal error: one line
    trained: bool = False
    internal: list[str] = field(default_factory=list)  # candidates that crashed (bugs), "name: message"

    @property
    def passed(self) -> bool:
        return self.status == "ran" and self.report is not None and self.report.passed and not self.internal

    def verdict(self) -> str:
        if self.status == "internal error" or self.internal:
            return "INTERNAL ERROR"
        return "PASSED" if self.passed else "FAILED"

    def to_dict(self) -> dict:
        out = {"model": self.model, "about": self.about, "status": self.status, "verdict": self.verdict(),
               "seconds": round(self.seconds, 1), "reason": self.reason, "trained_weights": self.trained,
               "internal_errors": self.internal}
        if self.report is not None:
            out["folder"] = Path(self.report.folder).name
            out["summary"] = self.report.summary()
            out["choices"] = {b: shipped(self.report, b) for b in self.report.choices}
        return out


@dataclass
class DemoReport:
    folder: str
    rows: list[DemoRow]
    seconds: float
    threads: int | None = None

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r.passed for r in self.rows)

    @property
    def exit_code(self) -> int:
        if any(r.verdict() == "INTERNAL ERROR" for r in self.rows):
            return EXIT_INTERNAL
        return EXIT_OK if self.passed else EXIT_CHECK_FAILED

    def summary(self) -> str:
        minutes = f"{self.seconds / 60:.1f} min"
        if self.passed:
            ships = "; ".join(f"{r.model}: {_ships_words(r.report)}" for r in self.rows)
            return f"PASSED demo: {len(self.rows)} model(s) in {minutes} — {ships} — {self.folder}/index.html"
        bad = [f"{r.model}: {r.reason or _why_failed(r)}" for r in self.rows if not r.passed]
        return f"FAILED demo: {len(bad)} of {len(self.rows)} model(s) — {'; '.join(bad)} — {self.folder}/index.html"

    def to_dict(self) -> dict:
        return {"passed": self.passed, "exit_code": self.exit_code, "seconds": round(self.seconds, 1),
                "models": [r.to_dict() for r in self.rows]}


def _ships_words(report: PipelineReport) -> str:
    words = []
    for backend in report.choices:
        s = shipped(report, backend)
        if s["chosen"] is None:
            words.append(f"{backend} nothing")
        elif s["chosen"] == "fp32":
            words.append(f"{backend} fp32")
        else:
            words.append(f"{backend} {s['chosen']} {s['speedup'] or 0:.2f}×"
                         + ("" if s["beyond_noise"] else " (within the noise)"))
    return ", ".join(words)


def _why_failed(row: DemoRow) -> str:
    if row.internal:
        return "; ".join(row.internal)
    if row.report is not None:
        return "; ".join(f"{b}: {c.why}" for b, c in row.report.choices.items() if c.chosen is None)
    return "did not run"


# ------------------------------------------------------------------------------------------- the models


RESERVED_FOLDERS = ("data",)  # the demo's own data folder under --out


def check_names(names: tuple[str, ...]) -> None:
    """Refuse, before any work, what cannot name a model: an unknown zoo name, an .onnx or .py file that is
    not there (exit 2). What is named but fails later is a FAILED row instead."""
    from ..artifacts.spec import is_onnx_spec, split_call
    from ..models import UnknownModelError, get_model_entry

    if not names:
        raise BadInputError("--models: give one or more models, e.g. digits-resnet,repvgg_a0,ppocr-cls")
    for name in names:
        if name == "ppocr-cls":
            continue
        if is_onnx_spec(name):
            if not Path(name).is_file():
                raise BadInputError(f"--models {name}: no such file")
            continue
        if ":" in name:
            head = split_call(name)[0].rpartition(":")[0]
            if head.endswith(".py") and not Path(head).is_file():
                raise BadInputError(f"--models {name}: {head}: no such file")
            continue
        try:
            get_model_entry(name)
        except UnknownModelError as error:
            raise BadInputError(f"--models {name}: {error}") from None


def _unique_folders(items: list[DemoModel | DemoRow]) -> None:
    """Two models never share a folder (a.onnx and b/a.onnx, a zoo name equal to a file's stem): the later
    ones get -2, -3…; the demo's data folder is not a model's."""
    taken = set(RESERVED_FOLDERS)
    for item in items:
        if not isinstance(item, DemoModel):
            continue
        base, n = item.name, 1
        while item.name in taken:
            n += 1
            item.name = f"{base}-{n}"
        taken.add(item.name)


def plan_models(names: tuple[str, ...], data_dir: Path, base: PipelineOptions,
                say: Callable[[str], None] = lambda _m: None, shape=None) -> list[DemoModel | DemoRow]:
    """Each name's pipeline, with its data written under ``data_dir``; a name that cannot be prepared is a
    FAILED row (its reason) rather than an error that stops the others. ``shape`` (``--shape``) is for the
    user's own models and ONNX files; the demo's own models know theirs."""
    from ..artifacts.spec import is_onnx_spec
    from ..jobs.digits import MODELS as DIGITS_MODELS
    from ..models import UnknownModelError, get_model_entry

    planned: list[DemoModel | DemoRow] = []
    for name in names:
        start = time.perf_counter()
        try:
            if name == "ppocr-cls":
                planned.append(_ppocr_cls(data_dir, base, say))
            elif name in DIGITS_MODELS:  # trained here, labelled data
                planned.append(_digits(name, data_dir, base, say))
            elif is_onnx_spec(name):
                if not Path(name).is_file():
                    raise BadInputError(f"{name}: no such file")
                planned.append(DemoModel(_clean(Path(name).stem), name, "your ONNX file on the bundled photos",
                                         replace(base, prune_latency=()), shape=shape))
            elif ":" in name:  # the user's own code, pkg.module:factory or file.py:factory
                planned.append(DemoModel(_folder_name(name), name, "your PyTorch model on the bundled photos",
                                         replace(base, prune_latency=()), shape=shape))
            else:
                get_model_entry(name)
                planned.append(DemoModel(name, name, _zoo_about(name), replace(base, prune_latency=()), shape=shape))
        except (DeployError, UnknownModelError) as error:
            planned.append(DemoRow(name, "", "failed", time.perf_counter() - start, reason=_line(error)))
        except Exception as error:  # a bug while preparing: named, and the others go on
            planned.append(DemoRow(name, "", "internal error", time.perf_counter() - start,
                                   reason=_internal(error)))
    _unique_folders(planned)
    return planned


def _folder_name(spec: str) -> str:
    """A folder name for a spec: 'models/net.py:build(width=2)' → 'net-build'."""
    head, _, factory = spec.partition(":")
    stem = Path(head).stem if head.endswith(".py") else head.rsplit(".", 1)[-1]
    return _clean(f"{stem}-{factory.split('(')[0]}")


def _clean(name: str) -> str:
    """A folder name that is one path component and a plain URL: letters, digits, '_', '.', '-'."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "model"


def check_plan(names: tuple[str, ...], base: PipelineOptions,
               say: Callable[[str], None] = lambda _m: None, shape=None) -> list[DemoModel | DemoRow]:
    """``--dry-run``: every model prepared (data made in a temporary folder) and loaded, nothing run or
    written; what could not be is a FAILED (or internal-error) row, as in a real run."""
    import tempfile

    from ..artifacts.spec import load_artifact
    from .run import validate

    check_names(names)
    checked: list[DemoModel | DemoRow] = []
    with tempfile.TemporaryDirectory(prefix="deploy-demo-plan-") as tmp:
        for item in plan_models(names, Path(tmp), base, say, shape):
            if isinstance(item, DemoModel):
                try:
                    validate(item.options)
                    load_artifact(item.spec, weights=item.weights, shape=item.shape)
                except DeployError as error:
                    item = DemoRow(item.name, item.about, "failed", 0.0, reason=_line(error))
                except Exception as error:
                    item = DemoRow(item.name, item.about, "internal error", 0.0, reason=_internal(error))
            checked.append(item)
    return checked


def _zoo_about(name: str) -> str:
    from ..models import get_model_entry

    entry = get_model_entry(name)
    reparam = "reparameterized by the generic ONNX branch merge" if entry.family in (
        "repvgg", "acnet", "dbb", "mobileone") else "exact passes"
    return (f"zoo {name}, train form, seeded weights with realistic BN statistics, bundled photos "
            f"(top-1 agreement with fp32 is the budget; {reparam})")


def _digits(name: str, data_dir: Path, base: PipelineOptions, say) -> DemoModel:
    from ..jobs.digits import digits_splits, train_digits, write_digits_npz

    say(f"{name}: training on scikit-learn's digits (or loading the cached checkpoint)")
    trained = train_digits(name)
    splits = digits_splits()
    calib = write_digits_npz(data_dir / "digits-calib.npz", splits.calib)
    test = write_digits_npz(data_dir / "digits-test.npz", splits.test)
    # Batch 32: the digits nets are so small that batch 1 times dispatch, not compute (int8 ties fp32 there).
    # Pruning at 0.8 of the latency: 0.7 and below are out of reach for this net on ort-cpu (measured).
    options = replace(base, data=str(calib), eval_data=str(test), samples=len(splits.calib[0]),
                      eval_samples=len(splits.test[0]), prune_latency=(0.8,), batch=32, distil=True)
    return DemoModel(name, name, f"{name} trained here on scikit-learn's digits ({trained.test_accuracy:.2f} % on the "
                     f"400 test digits); accuracy on them is the budget; pruning and int8 tried",
                     options, weights=str(trained.checkpoint), trained=True)


def _ppocr_cls(data_dir: Path, base: PipelineOptions, say) -> DemoModel:
    import numpy as np

    from ..artifacts import ppocr

    path = ppocr.model_path("cls")
    say("ppocr-cls: cutting text lines out of scikit-image's page scan")
    tune, held = ppocr.write_orientation_npz(data_dir, input_name="x")
    with np.load(tune) as t, np.load(held) as h:
        n_tune, n_held = len(t["y"]), len(h["y"])
    options = replace(base, data=str(tune), eval_data=str(held), samples=n_tune, eval_samples=n_held,
                      prune_latency=())
    return DemoModel("ppocr-cls", str(path), f"PaddleOCR's text-direction classifier (real trained weights, "
                     f"{ppocr.WHEEL}=={ppocr.VERSION}), labelled 0°/180° text-line crops of scikit-image's page "
                     f"({n_tune} tune, {n_held} held out, other lines); accuracy is the budget",
                     options, shape=ppocr.CLS_SHAPE, preprocess=ppocr.cls_preprocess_spec(), trained=True)


# ------------------------------------------------------------------------------------------- running


def run_demo(out_dir: Path, names: tuple[str, ...], base: PipelineOptions,
             progress: Callable[[str, int, int, str], None] | None = None,
             say: Callable[[str], None] | None = None, shape=None) -> DemoReport:
    """Every model's pipeline into ``out_dir/<model>/``, then ``index.html``, ``demo.json`` and ``demo.md``.
    ``progress(model, done, total, text)`` follows each pipeline's steps."""
    from ..artifacts.spec import load_artifact
    from ..calib.data import set_preprocess

    tell = say or (lambda _m: None)
    start = time.perf_counter()
    check_names(names)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = out_dir / "data"
    data_dir.mkdir(exist_ok=True)
    rows: list[DemoRow] = []
    for item in plan_models(names, data_dir, base, say=tell, shape=shape):
        if isinstance(item, DemoRow):
            rows.append(item)
            continue
        t0 = time.perf_counter()
        row = DemoRow(item.name, item.about, "ran", 0.0, trained=item.trained)
        try:
            artifact = load_artifact(item.spec, weights=item.weights, shape=item.shape)
            set_preprocess(item.preprocess or _stored_preprocess(artifact, tell))
            row.report = run_pipeline(artifact, out_dir / item.name, item.options,
                                      progress=lambda d, n, text, m=item.name: (progress or (lambda *_: None))(
                                          m, d, n, text),
                                      say=lambda msg, m=item.name: tell(f"{m}: {msg}"))
            row.internal = [f"{c.name}: {c.why_not}" for c in row.report.candidates
                            if c.details.get("internal_error")]
        except DeployError as error:
            row.status, row.reason = "failed", _line(error)
        except Exception as error:
            row.status, row.reason = "internal error", _internal(error)
        finally:
            set_preprocess(None)
        row.seconds = time.perf_counter() - t0
        rows.append(row)
    report = DemoReport(str(out_dir), rows, time.perf_counter() - start, base.threads)
    write_index(report, out_dir)
    return report


def _stored_preprocess(artifact, tell):
    """An ONNX file that deploy wrote carries its preprocessing: the demo uses it, as every verb does."""
    from ..calib.data import PreprocessSpec

    stored = getattr(artifact, "preprocess", None)
    if not stored:
        return None
    try:
        spec = PreprocessSpec.from_json(stored)
    except (ValueError, KeyError, TypeError):
        tell(f"{artifact.label}: its stored preprocessing is unreadable; using the default")
        return None
    tell(f"preprocessing {spec.describe()}, as stored in {artifact.label}")
    return spec


def _line(error: BaseException) -> str:
    return first_line(error)


def _internal(error: BaseException) -> str:
    import os

    if os.environ.get("DEPLOY_DEBUG"):
        traceback.print_exception(error)
    return internal_error_text(error)
