"""`deploy export`: torch → ONNX (:mod:`deploy.artifacts.onnx_export` converts), then verified against PyTorch;
or another exporter's ONNX file converted to an opset and checked equal to itself.

Nothing is written at the destination until the file is complete and verified: work happens in a
temporary folder beside it and ends in an atomic rename.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from ..artifacts.artifact import Artifact
from ..artifacts.files import staged_output
from ..artifacts.onnx_export import (
    check_export_options,
    convert_artifact,
    graph_stats,
    onnx_output_path,
    save_onnx,
    simplify_model,
)
from ..artifacts.spec import load_onnx_artifact
from ..errors import BadInputError, CheckFailedError
from ..harness.check import check_artifacts
from ..harness.compare import CompareReport
from ..reporting import Report


@dataclass(repr=False)
class ExportReport(Report):
    model: str
    output: str
    exporter: str
    opset: int
    dynamic_batch: bool
    simplified: bool
    nodes_by_op: dict[str, int]
    parameters: int
    file_bytes: int
    external_data: bool
    export_seconds: float
    simplify_seconds: float
    verify_seconds: float
    check: CompareReport | None = None
    notes: list[str] = field(default_factory=list)
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)

    @property
    def nodes(self) -> int:
        return sum(self.nodes_by_op.values())

    @property
    def passed(self) -> bool:
        return self.check is None or self.check.passed

    def summary(self) -> str:
        """The last line `deploy export` prints."""
        if self.exporter == "version_converter":
            return f"CONVERTED {self.output}: opset {self.opset}, {self.notes[-1] if self.notes else 'checked'}"
        return self.check.summary() if self.check else f"EXPORTED {self.output} (not verified)"

    def to_dict(self) -> dict:
        return {
            "model": self.model, "output": self.output, "exporter": self.exporter, "opset": self.opset,
            "dynamic_batch": self.dynamic_batch, "dynamic_axes": self.dynamic_axes, "simplified": self.simplified,
            "nodes": self.nodes,
            "nodes_by_op": self.nodes_by_op, "parameters": self.parameters, "file_bytes": self.file_bytes,
            "external_data": self.external_data, "export_seconds": round(self.export_seconds, 3),
            "simplify_seconds": round(self.simplify_seconds, 3), "verify_seconds": round(self.verify_seconds, 3),
            "passed": self.passed, "check": self.check.to_dict() if self.check else None, "notes": self.notes,
        }


def convert_onnx_file(artifact: Artifact, output: str | os.PathLike, *, opset: int, simplify: bool = False,
                      progress=None) -> ExportReport:
    """An ONNX file given to `deploy export`: converted to ``opset`` (onnx.version_converter) and checked
    equal to the file in ONNX Runtime on seeded inputs; its Constant-node weights become initializers."""
    import onnx

    from ..artifacts.files import atomic_path
    from ..artifacts.normalize import default_opset, regularize, verify_same

    if not 7 <= opset <= 23:
        raise BadInputError(f"--opset {opset}: choose an opset between 7 and 23 (17 is a safe default)")
    source = artifact.source_path or artifact.onnx_path
    output = onnx_output_path(output)
    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    original = onnx.load(str(source))
    model = onnx.ModelProto()
    model.CopyFrom(original)
    was = default_opset(model)
    if opset < was:
        raise BadInputError(f"{source}: opset {was} → {opset} is a downgrade; deploy upgrades files (give --opset ≥ "
                            f"{was})")
    if opset != was:
        say(f"converting opset {was} → {opset}")
    model, notes = regularize(model, opset)
    if opset == was:
        notes.append(f"already opset {opset}: not converted")
    try:
        model = onnx.shape_inference.infer_shapes(model)
        onnx.checker.check_model(model)
    except Exception as err:  # onnx's checker/inference raise their own types
        raise BadInputError(f"{source}: the converted model is not valid ONNX: {str(err).strip()[:200]}") from None
    simplified = False
    if simplify:
        say("simplifying (onnxsim)")
        model, simplified, note = simplify_model(model)
        if note:
            notes.append(note)
    export_seconds = time.perf_counter() - start
    say("checking it against the file in ONNX Runtime")
    start = time.perf_counter()
    notes.append(verify_same(original, model, str(source), {s.name: s.shape for s in artifact.inputs}))
    verify_seconds = time.perf_counter() - start
    with atomic_path(output) as tmp:
        external = save_onnx(model, tmp)
    nodes_by_op, params = graph_stats(model)
    dynamic = {s.name: {0: str(s.shape[0])} for s in artifact.inputs if s.dynamic_batch}
    return ExportReport(str(source), str(output), "version_converter", default_opset(model), bool(dynamic),
                        simplified, nodes_by_op, params, output.stat().st_size, external, export_seconds, 0.0,
                        verify_seconds, notes=notes, dynamic_axes=dynamic)


def export_onnx(
    artifact: Artifact,
    output: str | os.PathLike,
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    dynamic: tuple[str, ...] | None = None,
    simplify: bool = True,
    exporter: str = "torchscript",
    verify: bool = True,
    verify_samples: int = 4,
    verify_data: str | None = "photos",
    progress=None,
    threads: int | None = None,
) -> ExportReport:
    """Export a torch artifact to ``output`` and (by default) prove it equal to PyTorch on real photos.

    Raises :class:`CheckFailedError` (no file written) when ONNX Runtime disagrees beyond fp32 tolerance.
    ``progress`` is an optional callable receiving a short stage description. ``dynamic`` names the axes
    kept symbolic (batch, height, width; see :func:`parse_dynamic`); without it, ``dynamic_batch`` decides.
    ``threads`` caps the verification's CPU threads.
    """

    if artifact.module is None:
        return convert_onnx_file(artifact, output, opset=opset, progress=progress)
    check_export_options(exporter, opset)
    output = onnx_output_path(output)
    say = progress or (lambda _msg: None)
    if dynamic is None:
        dynamic = ("batch",) if dynamic_batch else ()
    with staged_output(output) as staged:
        tmp_path = staged.path
        converted, axes = convert_artifact(artifact, tmp_path, opset=opset, dynamic=tuple(dynamic),
                                           simplify=simplify, exporter=exporter, progress=say)
        dynamic_batch = any(0 in d for d in axes.values())
        nodes_by_op, params = graph_stats(converted.model)
        report = ExportReport(artifact.label, str(output), exporter, converted.opset, dynamic_batch,
                              converted.simplified, nodes_by_op, params, tmp_path.stat().st_size,
                              converted.external, converted.export_seconds, converted.simplify_seconds, 0.0,
                              notes=converted.notes, dynamic_axes=axes)
        if verify:
            say("verifying in ONNX Runtime against PyTorch")
            start = time.perf_counter()
            candidate = load_onnx_artifact(tmp_path)
            candidate.label = str(output)
            report.check = check_artifacts(artifact, candidate, samples=verify_samples, data=verify_data,
                                           threads=threads)
            report.verify_seconds = time.perf_counter() - start
            if not report.check.passed:
                error = CheckFailedError(report.check.summary() + f" — {output} not written")
                error.report = report  # type: ignore[attr-defined]
                raise error
        staged.commit()
        report.file_bytes = output.stat().st_size
        return report

