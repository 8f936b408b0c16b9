"""`deploy fuse`: exact passes on a model spec (torch stage, export, ONNX stage) or on an ONNX file (ONNX
stage), then proof: the result against the original on real photos, fp32 tolerance. Nothing is written
unless the proof passes."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ..artifacts.artifact import Artifact
from ..artifacts.files import staged_output
from ..artifacts.onnx_export import onnx_output_path, save_onnx
from ..artifacts.spec import load_onnx_artifact
from ..errors import BadInputError, CheckFailedError
from ..harness.check import check_artifacts
from ..harness.compare import CompareReport
from ..passes import core as pass_core
from ..passes.onnx_graph import graph_counts
from .export import export_onnx

# Registering the passes is a side effect of importing their modules.
from ..passes import fuse_conv_bn as _fuse_conv_bn  # noqa: F401  isort: skip
from ..passes import onnx_activations as _onnx_activations  # noqa: F401  isort: skip
from ..passes import onnx_reparam as _onnx_reparam  # noqa: F401  isort: skip
from ..passes import reparam as _reparam  # noqa: F401  isort: skip
from ..reporting import Report

DEFAULT_TORCH_PASSES = ("reparameterize",)  # runs fuse_conv_bn after the blocks
DEFAULT_ONNX_PASSES = ("onnx_reparam",)  # runs onnx_fuse_bn before and between merges
# ONNX files from other exporters (Paddle2ONNX, opsets < 14) spell HardSwish out in four ops; torch exports here
# write the op itself, so models need no rewrite
DEFAULT_FILE_PASSES = (*DEFAULT_ONNX_PASSES, "onnx_fuse_hardswish")


@dataclass(repr=False)
class FuseReport(Report):
    model: str
    output: str
    passes: list[dict]
    before: dict[str, int]
    after: dict[str, int]
    check: CompareReport | None
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.check is None or self.check.passed

    def summary(self) -> str:
        """The last line `deploy fuse` prints."""
        return self.check.summary() if self.check else f"FUSED {self.output} (not verified)"

    def to_dict(self) -> dict:
        return {"model": self.model, "output": self.output, "passes": self.passes, "before": self.before,
                "after": self.after, "passed": self.passed, "seconds": round(self.seconds, 3),
                "check": self.check.to_dict() if self.check else None, "notes": self.notes}


def parse_passes(text: str | None, kind: str) -> list[str]:
    if text is None:
        return list(DEFAULT_FILE_PASSES) if kind == "onnx" else [*DEFAULT_TORCH_PASSES, *DEFAULT_ONNX_PASSES]
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = {p.name: p for p in pass_core.list_passes() if p.name != "prune"}  # not exact: `deploy prune`
    for name in names:
        if name == "prune":
            raise BadInputError("--passes: prune changes what the model computes, so fuse (exact passes, proven "
                                "equal) does not run it; use `deploy prune MODEL -o OUT.onnx --ratio 0.3`")
        if name not in known:
            raise BadInputError(f"--passes: unknown pass '{name}'; passes: {', '.join(sorted(known))}")
        if kind == "onnx" and known[name].stage == "torch":
            raise BadInputError(f"--passes: {name} works on PyTorch models; an ONNX file takes "
                                f"{', '.join(sorted(n for n, p in known.items() if p.stage == 'onnx'))}")
    stages = [known[n].stage for n in names]
    if stages != sorted(stages, key=lambda s: s != "torch"):
        raise BadInputError("--passes: torch-stage passes must come before ONNX-stage passes")
    return names


def _export_to(artifact: Artifact, folder: Path, name: str, opset: int,
               dynamic: tuple[str, ...] | None = None) -> onnx.ModelProto:
    path = folder / name
    export_onnx(artifact, path, verify=False, opset=opset, dynamic=dynamic)
    return onnx.load(str(path))


def fuse_artifact(
    artifact: Artifact,
    output: str | os.PathLike,
    *,
    passes: list[str],
    verify: bool = True,
    samples: int = 8,
    data: str | None = "photos",
    opset: int = 17,
    progress=None,
    dynamic: tuple[str, ...] | None = None,
    threads: int | None = None,
    overrides: list[str] | None = None,
) -> FuseReport:
    """Run ``passes`` (torch stage first) and prove the result equal to ``artifact``. A model spec is
    exported with ``dynamic`` free axes (default: the batch)."""
    say = progress or (lambda _msg: None)
    output = onnx_output_path(output)
    start = time.perf_counter()
    infos = [pass_core.get_pass(n) for n in passes]
    reports: list[dict] = []
    notes: list[str] = []
    with staged_output(output) as staged:
        tmp_dir = staged.folder
        if artifact.kind == "torch":
            say("exporting the original for comparison")
            before_model = _export_to(artifact, tmp_dir, "original.onnx", opset, dynamic)
            module = artifact.module.eval()
            for info in (i for i in infos if i.stage == "torch"):
                say(f"{info.name} (torch)")
                try:
                    result = info.fn(module)
                except ValueError as err:
                    raise BadInputError(f"{artifact.label}: {info.name}: {err}") from None
                module = result.model
                reports.append({**result.report.to_dict(), "stage": "torch"})
            fused = Artifact(artifact.label, "torch", artifact.inputs, module=module.eval(),
                             num_classes=artifact.num_classes, example_shapes=artifact.example_shapes)
            say("exporting the fused model")
            model = _export_to(fused, tmp_dir, "fused.onnx", opset, dynamic)
        else:
            model = onnx.load(str(artifact.onnx_path))
            before_model = model
        before = graph_counts(before_model)
        for info in (i for i in infos if i.stage == "onnx"):
            say(f"{info.name} (ONNX)")
            result = info.fn(model)
            model = result.model
            reports.append({**result.report.to_dict(), "stage": "onnx"})
        onnx.checker.check_model(model)
        tmp_path = staged.path
        save_onnx(model, tmp_path)
        report = FuseReport(artifact.label, str(output), reports, before, graph_counts(model), None,
                            time.perf_counter() - start, notes)
        if verify:
            say("checking the result against the original on real photos")
            candidate = load_onnx_artifact(tmp_path)
            candidate.label = str(output)
            report.check = check_artifacts(artifact, candidate, samples=samples, data=data, threads=threads,
                                           overrides=overrides)
            if not report.check.passed:
                error = CheckFailedError(report.check.summary() + f" — {output} not written")
                error.report = report  # type: ignore[attr-defined]
                raise error
        staged.commit()
        report.seconds = time.perf_counter() - start
        return report
