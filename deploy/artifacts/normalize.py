"""One ONNX-stage entry every verb loads through: files other exporters wrote, made regular.

- **Constant-node weights become initializers**, so parameters are counted and passes see weights.
- **Opset < 13 is upgraded to 13** with ``onnx.version_converter``: per-axis Q/DQ needs 13, and so do the
  passes' shape rules.
- **Literal −1 / 0 dims of graph inputs and outputs become symbolic** (``batch`` for dim 0), so a free
  batch is a free batch and not a dim of size −1.
- **Shape inference** fills value_info for everything the passes and inspect read.

A file that needs none of this is used as it is. A changed file is written to a folder that lives as
long as the process, and checked equal to the original in ONNX Runtime on seeded inputs before any
verb sees it. A mismatch is an error naming the file, never a silently different model.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadInputError, first_line

MIN_OPSET = 13
_FOLDER: list[Path] = []


def _work_folder() -> Path:
    if not _FOLDER:
        folder = Path(tempfile.mkdtemp(prefix="deploy-normalized-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _FOLDER.append(folder)
    return _FOLDER[0]


@dataclass
class Normalization:
    source: Path
    path: Path  # the file verbs read: the source itself, or its normalized copy
    changes: list[str] = field(default_factory=list)
    verified: str = ""

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def note(self) -> str:
        return f"{self.source} normalized on load: {'; '.join(self.changes)}" + (
            f" ({self.verified})" if self.verified else "")


def default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def constants_to_initializers(model) -> int:
    """Constant nodes holding a tensor (``value``) become initializers of the same name."""
    import onnx

    keep, moved = [], 0
    for node in model.graph.node:
        value = next((a for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
        if node.op_type == "Constant" and value is not None and len(node.output) == 1:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
            moved += 1
        else:
            keep.append(node)
    if moved:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return moved


def symbolic_dims(model) -> list[str]:
    """Literal −1 / 0 dims of graph inputs and outputs → dim_param; returns what was renamed."""
    renamed = []
    for value in [*model.graph.input, *model.graph.output]:
        if not value.type.HasField("tensor_type"):
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value <= 0:
                literal = dim.dim_value
                dim.Clear()
                dim.dim_param = "batch" if axis == 0 else f"{value.name}_dim{axis}"
                renamed.append(f"{value.name} dim {axis} ({literal})")
    return renamed


def upgrade(model, target: int):
    """``model`` converted to opset ``target`` (onnx.version_converter); BadInputError when it cannot be."""
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, target)
    except Exception as err:  # the converter raises plain RuntimeError/ValueError with its reason
        text = first_line(err)
        raise BadInputError(f"cannot upgrade opset {default_opset(model)} → {target}: {text[:200]}") from None


def regularize(model, opset: int):
    """Constant-node weights → initializers, literal −1/0 I/O dims symbolic, the opset raised to ``opset``
    (never lowered): the model and what changed, in words."""
    changes = []
    moved = constants_to_initializers(model)
    if moved:
        changes.append(f"{moved} Constant-node weights → initializers")
    renamed = symbolic_dims(model)
    if renamed:
        changes.append(f"literal dims made symbolic: {', '.join(renamed)}")
    was = default_opset(model)
    if was < opset:
        model = upgrade(model, opset)
        changes.append(f"opset {was} → {opset}")
    return model, changes


def _inputs_for(model, batch: int = 2, shapes: dict | None = None) -> dict[str, np.ndarray] | None:
    """Seeded inputs for every graph input whose dims are known (free dim 0 → ``batch``; other free dims
    from ``shapes``, name → dims as --shape gave them); None if some dim is unknown."""
    import onnx

    initializers = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(0)
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        t = value.type.tensor_type
        dims = []
        given = (shapes or {}).get(value.name)
        for axis, d in enumerate(t.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(d.dim_value)
            elif axis == 0:
                dims.append(batch)
            elif given is not None and axis < len(given) and isinstance(given[axis], int) and given[axis] > 0:
                dims.append(given[axis])
            else:
                return None
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
        if dtype.kind == "f":
            feeds[value.name] = rng.standard_normal(dims).astype(dtype)
        elif dtype.kind in "iu":
            feeds[value.name] = rng.integers(0, 2, dims).astype(dtype)
        else:
            return None
    return feeds


def verify_same(original, changed, where: str, shapes: dict | None = None) -> str:
    """Run both in ONNX Runtime on seeded inputs; raise when the outputs differ beyond fp32 rounding."""
    from ..ort import cpu_session

    feeds = _inputs_for(original, shapes=shapes)
    if feeds is None:
        return "not run: free dims other than the batch (give --shape and check it)"

    def run(model):
        return cpu_session(model, optimize=False).run(None, feeds)

    try:
        before, after = run(original), run(changed)
    except BadInputError as err:
        raise BadInputError(f"{where}: {err}") from None
    except Exception as err:  # onnxruntime's own exception types
        text = first_line(err)
        raise BadInputError(f"{where}: ONNX Runtime cannot run it to check the normalization: {text[:200]}") from None
    worst = 0.0
    for a, b in zip(before, after):
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a64.shape != b64.shape:
            raise BadInputError(f"{where}: normalizing changed an output's shape {a64.shape} → {b64.shape}")
        scale = float(np.abs(a64).max()) if a64.size else 0.0
        worst = max(worst, float(np.abs(a64 - b64).max()) / scale if scale > 0 else float(np.abs(b64).max()))
    if worst > 1e-5:
        raise BadInputError(f"{where}: the normalized model differs from the file (max rel {worst:.2e}); "
                            f"re-export it at opset ≥ {MIN_OPSET}")
    return f"checked in ONNX Runtime on seeded inputs: max rel {worst:.1e}"


def needs_normalizing(model) -> bool:
    """A cheap look (weights need not be loaded): is there anything :func:`normalize_onnx` would change?"""
    if default_opset(model) < MIN_OPSET:
        return True
    if any(n.op_type == "Constant" and any(a.name == "value" for a in n.attribute) for n in model.graph.node):
        return True
    return any(d.HasField("dim_value") and d.dim_value <= 0 for v in [*model.graph.input, *model.graph.output]
               if v.type.HasField("tensor_type") for d in v.type.tensor_type.shape.dim)


def normalize_onnx(path: str | Path, shapes: dict | None = None) -> Normalization:
    """The file every verb should read for ``path`` (see the module docstring); ``shapes`` (input name →
    dims, from --shape) fill free dims for the check."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    original = onnx.ModelProto()
    original.CopyFrom(model)
    model, changes = regularize(model, MIN_OPSET)
    if not changes:
        return Normalization(path, path)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # an op onnx cannot infer: the passes fall back to ONNX Runtime's shapes
        pass
    verified = verify_same(original, model, str(path), shapes)
    target = _work_folder() / f"{len(list(_work_folder().iterdir()))}-{path.name}"
    onnx.save(model, str(target))
    return Normalization(path, target, changes, verified)
