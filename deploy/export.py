"""torch → ONNX: export, check, infer shapes, simplify, save in one file, verify against PyTorch.

Exporter choice (measured on this machine's zoo): the TorchScript exporter takes 0.3–1.6 s per model
and honours ``--opset``; the dynamo exporter takes 2.4–8.1 s, writes opset 18 whatever is asked and
splits weights into ``.onnx.data``. TorchScript is the default; ``exporter="dynamo"`` is offered, and
its output is re-saved as one file like the other's.

Nothing is written at the destination until the file is complete and verified: work happens in a
temporary folder beside it and ends in an atomic rename.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .backends.base import first_line
from .backends.torch_runner import name_outputs
from .compare import CompareReport
from .errors import BadInputError, CheckFailedError, MissingDependencyError
from .spec import Artifact

TWO_GB = 2**31
EXPORTERS = ("torchscript", "dynamo")


@dataclass
class ExportReport:
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

    @property
    def nodes(self) -> int:
        return sum(self.nodes_by_op.values())

    @property
    def passed(self) -> bool:
        return self.check is None or self.check.passed

    def to_dict(self) -> dict:
        return {
            "model": self.model, "output": self.output, "exporter": self.exporter, "opset": self.opset,
            "dynamic_batch": self.dynamic_batch, "simplified": self.simplified, "nodes": self.nodes,
            "nodes_by_op": self.nodes_by_op, "parameters": self.parameters, "file_bytes": self.file_bytes,
            "external_data": self.external_data, "export_seconds": round(self.export_seconds, 3),
            "simplify_seconds": round(self.simplify_seconds, 3), "verify_seconds": round(self.verify_seconds, 3),
            "passed": self.passed, "check": self.check.to_dict() if self.check else None, "notes": self.notes,
        }


def graph_stats(model) -> tuple[dict[str, int], int]:
    """Nodes by op type (sorted by count) and the number of parameters (elements of initializers)."""
    import numpy as np

    ops = Counter(n.op_type for n in model.graph.node)
    params = sum(int(np.prod(t.dims)) if t.dims else 1 for t in model.graph.initializer)
    return dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))), params


def _output_names(module: torch.nn.Module, example: torch.Tensor, label: str) -> list[str]:
    try:
        with torch.inference_mode():
            return list(name_outputs(module(example)))
    except BadInputError:
        raise
    except Exception as err:
        raise BadInputError(f"{label}: the model does not run on input shape {tuple(example.shape)}: "
                            f"{first_line(err)}") from None


def _export_torchscript(module, example, path: Path, opset: int, dynamic: bool, out_names: list[str]) -> None:
    axes = {n: {0: "batch"} for n in ["input", *out_names]} if dynamic else None
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=out_names, dynamic_axes=axes,
                          do_constant_folding=True)


def _export_dynamo(module, example, path: Path, opset: int, dynamic: bool, out_names: list[str]) -> None:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise MissingDependencyError("the dynamo exporter needs onnxscript (pip install onnxscript)") from None
    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic else None
    if dynamic and example.shape[0] == 1:  # batch 1 would be specialised as a constant
        example = example.expand(2, *example.shape[1:]).contiguous()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset, dynamic_shapes=shapes,
                                    input_names=["input"], output_names=out_names, verbose=False)
        program.save(str(path))


def initializer_bytes(model) -> int:
    """Bytes of weights, counted without serialising the model (which fails above 2 GB)."""
    total = 0
    for t in model.graph.initializer:
        total += len(t.raw_data) if t.raw_data else 4 * (len(t.float_data) + len(t.int32_data)) + \
            8 * (len(t.int64_data) + len(t.double_data))
    return total


def simplify_model(model):
    """onnxsim's simplify; returns (model, ok, note)."""
    try:
        import onnxsim
    except ImportError:
        return model, False, "onnxsim not installed: graph left unsimplified (pip install onnxsim)"
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as err:  # onnxsim raises RuntimeError/ValueError from its C++ core
        return model, False, f"onnxsim failed ({type(err).__name__}: {str(err)[:120]}); graph left unsimplified"
    if not ok:
        return model, False, "onnxsim could not validate its result; graph left unsimplified"
    return simplified, True, ""


def save_onnx(model, path: Path) -> bool:
    """Save in one file, or with external data beside it when over protobuf's 2 GB; returns whether external."""
    import onnx

    external = initializer_bytes(model) >= TWO_GB - 64 * 2**20  # leave room for the graph itself
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    return external


def onnx_output_path(output: str | os.PathLike) -> Path:
    """Validate where an .onnx file will be written, before any work is done."""
    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise BadInputError(f"{output}: the output file must end in .onnx")
    if not output.parent.exists():
        raise BadInputError(f"{output}: folder {output.parent} does not exist")
    if output.is_dir():
        raise BadInputError(f"{output}: is a folder; give a file name")
    return output


def finalize(tmp_dir: Path, tmp_path: Path, output: Path) -> None:
    """Move a finished file (and its external data) into place atomically."""
    data = tmp_path.with_name(tmp_path.name + ".data")
    if data.exists():
        os.replace(data, output.with_name(output.name + ".data"))
    os.replace(tmp_path, output)


def export_onnx(
    artifact: Artifact,
    output: str | os.PathLike,
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    simplify: bool = True,
    exporter: str = "torchscript",
    verify: bool = True,
    verify_samples: int = 4,
    verify_data: str | None = "photos",
    progress=None,
) -> ExportReport:
    """Export a torch artifact to ``output`` and (by default) prove it equal to PyTorch on real photos.

    Raises :class:`CheckFailedError` (no file written) when ONNX Runtime disagrees beyond fp32 tolerance.
    ``progress`` is an optional callable receiving a short stage description.
    """
    import onnx

    if artifact.module is None:
        raise BadInputError(f"{artifact.label}: already an ONNX file; nothing to export")
    if exporter not in EXPORTERS:
        raise BadInputError(f"--exporter {exporter}: choose from {', '.join(EXPORTERS)}")
    if not 7 <= opset <= 23:
        raise BadInputError(f"--opset {opset}: choose an opset between 7 and 23 (17 is a safe default)")
    output = onnx_output_path(output)
    say = progress or (lambda _msg: None)
    example = torch.zeros(artifact.example_shape)
    module = artifact.module.eval()
    out_names = _output_names(module, example, artifact.label)
    notes: list[str] = []

    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        tmp_path = tmp_dir / output.name
        say(f"exporting with the {exporter} exporter")
        start = time.perf_counter()
        try:
            (_export_dynamo if exporter == "dynamo" else _export_torchscript)(
                module, example, tmp_path, opset, dynamic_batch, out_names)
        except (MissingDependencyError, BadInputError):
            raise
        except Exception as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            other = "dynamo" if exporter == "torchscript" else "torchscript"
            raise BadInputError(
                f"{artifact.label}: torch.onnx.export failed: {first} (try --exporter {other})") from None
        export_seconds = time.perf_counter() - start

        say("checking and inferring shapes")
        # the path forms work above protobuf's 2 GB limit, where in-memory checking cannot serialise
        onnx.checker.check_model(str(tmp_path))
        onnx.shape_inference.infer_shapes_path(str(tmp_path), str(tmp_path))
        model = onnx.load(str(tmp_path))
        written_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
        if written_opset != opset:
            notes.append(f"the {exporter} exporter wrote opset {written_opset} (asked {opset})")
        if simplify and initializer_bytes(model) >= TWO_GB:
            simplify = False
            notes.append("over 2 GB of weights: onnxsim cannot take it; graph left unsimplified")

        simplify_seconds = 0.0
        simplified = False
        if simplify:
            say("simplifying (onnxsim)")
            start = time.perf_counter()
            model, simplified, note = simplify_model(model)
            simplify_seconds = time.perf_counter() - start
            if note:
                notes.append(note)
        # the dynamo exporter writes external data; re-save everything into one file
        for leftover in tmp_dir.iterdir():
            if leftover != tmp_path:
                leftover.unlink()
        external = save_onnx(model, tmp_path)
        nodes_by_op, params = graph_stats(model)

        report = ExportReport(artifact.label, str(output), exporter, written_opset, dynamic_batch, simplified,
                              nodes_by_op, params, tmp_path.stat().st_size, external, export_seconds,
                              simplify_seconds, 0.0, notes=notes)
        if verify:
            from .harness import check_artifacts
            from .spec import load_onnx_artifact

            say("verifying in ONNX Runtime against PyTorch")
            start = time.perf_counter()
            candidate = load_onnx_artifact(tmp_path)
            candidate.label = str(output)
            report.check = check_artifacts(artifact, candidate, samples=verify_samples, data=verify_data)
            report.verify_seconds = time.perf_counter() - start
            if not report.check.passed:
                raise CheckFailedError(report.check.summary() + f" — {output} not written", ) from None
        finalize(tmp_dir, tmp_path, output)
        report.file_bytes = output.stat().st_size
        return report
    except CheckFailedError as err:
        err.report = report  # type: ignore[attr-defined]
        raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)

