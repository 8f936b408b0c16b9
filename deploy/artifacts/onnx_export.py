"""torch → ONNX conversion: export, check, infer shapes, simplify, save in one file. No verification.

Exporter choice (measured on this machine's zoo): the TorchScript exporter takes 0.3–1.6 s per model
and honours ``--opset``; the dynamo exporter takes 2.4–8.1 s, writes opset 18 whatever is asked and
splits weights into ``.onnx.data``. TorchScript is the default; ``exporter="dynamo"`` is offered, and
its output is re-saved as one file like the other's.

This is the converter the harness uses to run a torch model on ONNX Runtime (the comparison is then the
verification); the `deploy export` job (:mod:`deploy.jobs.export`) adds the proof against PyTorch and the
atomic move into place.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import BadInputError, MissingDependencyError, first_line
from .artifact import Artifact, name_outputs
from .files import output_path

TWO_GB = 2**31
EXPORTERS = ("torchscript", "dynamo")


@dataclass
class ConvertedOnnx:
    """What :func:`convert_to_onnx` wrote, and how."""

    model: object  # the onnx.ModelProto as saved
    opset: int
    simplified: bool
    external: bool
    export_seconds: float
    simplify_seconds: float
    notes: list[str] = field(default_factory=list)


def graph_stats(model) -> tuple[dict[str, int], int]:
    """Nodes by op type (sorted by count) and the number of parameters (elements of initializers)."""
    import numpy as np

    ops = Counter(n.op_type for n in model.graph.node)
    params = sum(int(np.prod(t.dims)) if t.dims else 1 for t in model.graph.initializer)
    return dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))), params


def output_names(module: torch.nn.Module, examples: tuple[torch.Tensor, ...], label: str) -> list[str]:
    try:
        with torch.inference_mode():
            return list(name_outputs(module(*examples)))
    except BadInputError:
        raise
    except Exception as err:
        shapes = ", ".join(str(tuple(e.shape)) for e in examples)
        raise BadInputError(f"{label}: the model does not run on input shape {shapes}: {first_line(err)}") from None


AXIS_NAMES = {"batch": 0, "height": -2, "width": -1}


def parse_dynamic(text: str | None, static: bool = False) -> tuple[str, ...]:
    """``--dynamic batch,height,width`` → the axes kept symbolic in the exported file (``none``: all fixed).
    Height and width are the last two dims of an NCHW image input."""
    if static:
        if text not in (None, "none"):
            raise BadInputError(f"--static and --dynamic {text} contradict each other; give one")
        return ()
    if text is None:
        return ("batch",)
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    if not names:
        raise BadInputError(f"--dynamic '{text}': give axes (batch,height,width) or none")
    if names == ("none",):
        return ()
    unknown = [n for n in names if n not in AXIS_NAMES]
    if unknown:
        raise BadInputError(f"--dynamic {text}: unknown axis {', '.join(unknown)}; choose from batch, height, width "
                            f"(or none)")
    return names


def dynamic_axes(input_names: list[str], ranks: list[int], axes: tuple[str, ...]) -> dict[str, dict[int, str]]:
    """{input: {dim index: symbolic name}}; height/width apply to rank-4 (NCHW) inputs only, and are named
    per input when there are several."""
    out: dict[str, dict[int, str]] = {}
    for name, rank in zip(input_names, ranks):
        dims: dict[int, str] = {}
        for axis in axes:
            if axis != "batch" and rank != 4:
                continue
            label = axis if axis == "batch" or len(input_names) == 1 else f"{name}_{axis}"
            dims[AXIS_NAMES[axis] % rank] = label
        if dims:
            out[name] = dims
    return out


def _export_torchscript(module, examples, path: Path, opset: int, axes: dict, in_names: list[str],
                        out_names: list[str]) -> None:
    dynamic = dict(axes)
    if any(0 in d for d in axes.values()):
        dynamic.update({n: {0: "batch"} for n in out_names})
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(examples), str(path), dynamo=False, opset_version=opset,
                          input_names=in_names, output_names=out_names, dynamic_axes=dynamic or None,
                          do_constant_folding=True)


def _export_dynamo(module, examples, path: Path, opset: int, axes: dict, in_names: list[str],
                   out_names: list[str]) -> None:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise MissingDependencyError("the dynamo exporter needs onnxscript (pip install onnxscript)") from None
    dims: dict[str, torch.export.Dim] = {}
    shapes = []
    examples = list(examples)
    for i, name in enumerate(in_names):
        spec = {}
        for index, label in axes.get(name, {}).items():
            dims.setdefault(label, torch.export.Dim(label, min=2 if index else 1, max=4096 if index == 0 else 8192))
            spec[index] = dims[label]
            if examples[i].shape[index] == 1:  # a size-1 dim would be specialised as a constant
                grown = list(examples[i].shape)
                grown[index] = 2
                examples[i] = examples[i].expand(*grown).contiguous() if index == 0 else torch.zeros(grown)
        shapes.append(spec or None)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, tuple(examples), dynamo=True, opset_version=opset,
                                    dynamic_shapes=tuple(shapes) if axes else None,
                                    input_names=in_names, output_names=out_names, verbose=False)
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

    from ..calib.data import METADATA_KEY, current_preprocess

    spec = current_preprocess()
    if spec is not None:  # later verbs read the same images the same way without the flags again
        kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        model.metadata_props.add(key=METADATA_KEY, value=spec.to_json())
    external = initializer_bytes(model) >= TWO_GB - 64 * 2**20  # leave room for the graph itself
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    return external


def onnx_output_path(output: str | os.PathLike) -> Path:
    """Validate where an .onnx file will be written, before any work is done."""
    return output_path(output, "-o", ".onnx")


def convert_to_onnx(module: torch.nn.Module, examples: tuple[torch.Tensor, ...], path: Path, *, label: str,
                    in_names: list[str], out_names: list[str], opset: int = 17,
                    axes: dict[str, dict[int, str]] | None = None, simplify: bool = True,
                    exporter: str = "torchscript", progress: Callable[[str], None] | None = None) -> ConvertedOnnx:
    """Write ``module`` to ``path`` (a file in a folder of its own: the dynamo exporter's leftovers there are
    removed) as one checked, shape-inferred and (optionally) simplified ONNX file."""
    import onnx

    say = progress or (lambda _msg: None)
    axes = axes or {}
    notes: list[str] = []
    say(f"exporting with the {exporter} exporter")
    start = time.perf_counter()
    try:
        (_export_dynamo if exporter == "dynamo" else _export_torchscript)(
            module, examples, path, opset, axes, in_names, out_names)
    except (MissingDependencyError, BadInputError):
        raise
    except Exception as err:
        other = "dynamo" if exporter == "torchscript" else "torchscript"
        raise BadInputError(f"{label}: torch.onnx.export failed: {first_line(err)[:200]} (try --exporter "
                            f"{other})") from None
    export_seconds = time.perf_counter() - start

    say("checking and inferring shapes")
    # the path forms work above protobuf's 2 GB limit, where in-memory checking cannot serialise
    onnx.checker.check_model(str(path))
    onnx.shape_inference.infer_shapes_path(str(path), str(path))
    model = onnx.load(str(path))
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
    for leftover in path.parent.iterdir():
        if leftover != path:
            leftover.unlink()
    external = save_onnx(model, path)
    return ConvertedOnnx(model, written_opset, simplified, external, export_seconds, simplify_seconds, notes)


def check_export_options(exporter: str, opset: int) -> None:
    if exporter not in EXPORTERS:
        raise BadInputError(f"--exporter {exporter}: choose from {', '.join(EXPORTERS)}")
    if not 7 <= opset <= 23:
        raise BadInputError(f"--opset {opset}: choose an opset between 7 and 23 (17 is a safe default)")


def convert_artifact(artifact: Artifact, path: Path, *, opset: int = 17, dynamic: tuple[str, ...] = ("batch",),
                     simplify: bool = True, exporter: str = "torchscript",
                     progress: Callable[[str], None] | None = None) -> tuple[ConvertedOnnx, dict[str, dict[int, str]]]:
    """A torch artifact written to ``path`` (see :func:`convert_to_onnx`) with the axes named in ``dynamic``
    kept symbolic; returns what was written and those axes."""
    check_export_options(exporter, opset)
    examples = tuple(torch.zeros(shape, dtype=torch.float32) for shape in artifact.example_shapes)
    in_names = [s.name for s in artifact.inputs]
    module = artifact.module.eval()
    out_names = output_names(module, examples, artifact.label)
    axes = dynamic_axes(in_names, [len(e.shape) for e in examples], tuple(dynamic))
    converted = convert_to_onnx(module, examples, path, label=artifact.label, in_names=in_names, out_names=out_names,
                                opset=opset, axes=axes, simplify=simplify, exporter=exporter, progress=progress)
    return converted, axes
