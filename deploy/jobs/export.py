"""`deploy export`: torch → ONNX (:mod:`deploy.artifacts.onnx_export` converts), then verified against PyTorch;
or another exporter's ONNX file converted to an opset and checked equal to itself.

Nothing is written at the destination until the file is complete and verified: work happens in a
temporary folder beside it and ends in an atomic rename.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

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

FORMATS = ("auto", "onnx", "openvino")  # auto: by the output's suffix (.xml: an OpenVINO IR)


def resolve_format(fmt: str, output: str | os.PathLike) -> str:
    """``--format`` against ``-o``: "onnx" or "openvino" (an IR: ``-o model.xml``, its ``model.bin`` beside it)."""
    if fmt not in FORMATS:
        raise BadInputError(f"--format {fmt}: choose from {', '.join(FORMATS)}")
    suffix = Path(output).suffix.lower()
    if fmt == "auto":
        return "openvino" if suffix == ".xml" else "onnx"
    if fmt == "openvino" and suffix != ".xml":
        raise BadInputError(f"-o {output}: an OpenVINO IR is written as NAME.xml (its weights as NAME.bin beside it); "
                            f"give -o {Path(output).with_suffix('.xml')}")
    return fmt


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
    ir: dict | None = None  # --format openvino: the IR's files, their sha256, its check against the ONNX file

    @property
    def nodes(self) -> int:
        return sum(self.nodes_by_op.values())

    @property
    def passed(self) -> bool:
        return (self.check is None or self.check.passed) and (self.ir is None or self.ir["check"]["passed"])

    def summary(self) -> str:
        """The last line `deploy export` prints."""
        if self.ir is not None:
            verdict = "PASSED" if self.passed else "FAILED"
            return (f"{verdict} {self.ir['xml']} (OpenVINO IR, ov-cpu) vs {self.ir['source']} (ov-cpu): "
                    f"{self.ir['check']['summary'].split(': ', 1)[-1]}")
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
            **({"openvino": self.ir} if self.ir is not None else {}),
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



def export_openvino(artifact: Artifact, output: str | os.PathLike, *, samples: int = 4, data: str | None = "photos",
                    threads: int | None = None, progress=None, **onnx_options) -> ExportReport:
    """An OpenVINO IR (``output``: NAME.xml, NAME.bin beside it) written by OpenVINO's ONNX frontend from a proven
    ONNX file — the given one, or the export of a PyTorch model (verified against PyTorch first, as `deploy export`
    does; ``onnx_options`` go to :func:`export_onnx`) — then checked equal to that ONNX file on ov-cpu (fp32 preset:
    the IR computes what OpenVINO computes from the file) and hashed. Weights stay fp32 (OpenVINO's
    ``save_model`` would compress them to fp16 by default). Nothing is written unless the check passes."""
    from ..artifacts.files import output_path, sha256_file
    from ..artifacts.spec import load_ir_artifact
    from ..ov import available

    ok, why = available()
    if not ok:
        from ..errors import MissingDependencyError

        raise MissingDependencyError(f"--format openvino needs OpenVINO: {why}")
    import openvino as ov

    output = output_path(output, "-o", ".xml")
    say = progress or (lambda _msg: None)
    with tempfile.TemporaryDirectory(prefix="deploy-ir-") as scratch, staged_output(output) as staged:
        if artifact.kind == "torch":
            source = Path(scratch) / "model.onnx"
            report = export_onnx(artifact, source, threads=threads, progress=say, verify_samples=samples,
                                 verify_data=data, **onnx_options)
            onnx_artifact = load_onnx_artifact(source)
            onnx_artifact.label = f"the ONNX export of {artifact.label}"
        else:
            onnx_artifact = artifact
            source = artifact.onnx_path
            import onnx

            from ..artifacts.normalize import default_opset

            graph = onnx.load(str(source))
            nodes_by_op, params = graph_stats(graph)
            report = ExportReport(artifact.label, str(output), "openvino", default_opset(graph),
                                  any(s.dynamic_batch for s in artifact.inputs), False, nodes_by_op, params, 0, False,
                                  0.0, 0.0, 0.0)
        say("converting with OpenVINO's ONNX frontend")
        start = time.perf_counter()
        try:
            # the frontend's conversion, as ov-cpu reads the file (read_model); ov.convert_model adds offline
            # transformations that move int8 rounding (measured: resnet18 int8 at max rel 2.9e-3 from the file)
            model = ov.Core().read_model(str(source))
            ov.save_model(model, str(staged.path), compress_to_fp16=False)
        except Exception as err:  # the converter's own errors
            from ..ov import error_line

            raise BadInputError(f"{artifact.label}: OpenVINO's converter refused it: {error_line(err)}") from None
        convert_seconds = time.perf_counter() - start
        say("checking the IR against the ONNX file on ov-cpu")
        ir = load_ir_artifact(staged.path)
        ir.label = str(output)
        check = check_artifacts(onnx_artifact, ir, backend_reference="ov-cpu", backend_candidate="ov-cpu",
                                samples=samples, data=data, threads=threads)
        weights = staged.path.with_suffix(".bin")
        report.output = str(output)
        report.ir = {"xml": str(output), "bin": str(output.with_suffix(".bin")),
                     "source": onnx_artifact.label if artifact.kind == "torch" else str(artifact.label),
                     "openvino": ov.__version__.split("-")[0], "convert_seconds": round(convert_seconds, 3),
                     "sha256": {"xml": sha256_file(staged.path), "bin": sha256_file(weights)},
                     "bytes": {"xml": staged.path.stat().st_size, "bin": weights.stat().st_size},
                     "check": check.to_dict()}
        report.file_bytes = staged.path.stat().st_size + weights.stat().st_size
        if not check.passed:
            error = CheckFailedError(report.summary() + f" — {output} not written")
            error.report = report  # type: ignore[attr-defined]
            raise error
        staged.commit()
        return report
