"""Model specs: what a user may hand us, and how each becomes an :class:`Artifact`.

A spec is one of
  * a zoo name (``resnet18``);
  * ``package.module:factory`` importable from the current folder;
  * ``path/to/file.py:factory`` — a file inside a package (its folders hold ``__init__.py``) is imported
    as that package's module, so its relative imports work; a loose file's folder goes first on
    ``sys.path``, so the user's own packages (a top-level ``models`` among them) import as at home;
  * an ``.onnx`` file.
A zoo name or a factory may take literal arguments: ``resnet50(num_classes=10)``,
``path/to/resnet.py:resnet50(num_classes=10)``.
Weights (``--weights``) load into torch specs from ``.pt/.pth`` (``torch.load(weights_only=True)``:
checkpoints that would run code are refused) or ``.safetensors``.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import BadInputError, MissingDependencyError, first_line
from ..models import UnknownModelError, create_model, get_model_entry, list_models
from .artifact import Artifact, TensorSpec

# the pruning record a pruned checkpoint carries in its safetensors metadata (written by `deploy prune`)
RECORD_KEY = "deploy.pruning"
PREPARED_KEY = "deploy.prepared"

TORCH_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


_SHAPE_RE = re.compile(r"^\s*\d+(\s*[,x]\s*\d+)*\s*$")

# --shape values: one unnamed shape (a one-input model) or name=dims per input
Shapes = dict[str | None, tuple[int, ...]]


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``"1,3,224,224"`` (or ``1x3x224x224``) → ``(1, 3, 224, 224)``."""
    if text is None:
        return None
    if not _SHAPE_RE.match(text) or any(int(d) <= 0 for d in re.split(r"[,x]", text)):
        raise BadInputError(f"--shape '{text}': expected positive integers separated by commas, like 1,3,224,224")
    return tuple(int(d) for d in re.split(r"\s*[,x]\s*", text.strip()))


def parse_shapes(values: list[str] | str | None) -> Shapes | None:
    """Repeated ``--shape``: ``["1,3,224,224"]`` or ``["x=1,3,224,224", "y=1,10"]`` → {name or None: dims}.

    An input named twice, or an unnamed shape beside others, is an error: the last one silently winning
    is how a typo goes unnoticed."""
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    shapes: Shapes = {}
    for text in values:
        name, sep, dims = text.partition("=")
        key = name.strip() if sep else None
        if sep and not key:
            raise BadInputError(f"--shape '{text}': give name=dims, like --shape input=1,3,224,224")
        if key in shapes:
            which = f"for input '{key}'" if key else "without an input name"
            raise BadInputError(f"--shape given twice {which}; give each input's shape once "
                                f"(--shape x=1,3,224,224 --shape y=1,10 for two inputs)")
        shapes[key] = parse_shape(dims if sep else text)
    if None in shapes and len(shapes) > 1:
        raise BadInputError("--shape: name every input when giving several (--shape x=1,3,224,224 --shape y=1,10)")
    return shapes or None


_CALL_RE = re.compile(r"^(?P<head>.*?:[A-Za-z_]\w*)(?P<call>\(.*\))\s*$", re.S)  # file.py:f(...) / pkg.mod:f(...)
_ZOO_CALL_RE = re.compile(r"^(?P<head>[\w.\-]+)(?P<call>\(.*\))\s*$", re.S)  # resnet18(num_classes=10)


def split_call(spec: str) -> tuple[str, tuple[list, dict] | None]:
    """``"a.py:f(num_classes=10)"`` → ``("a.py:f", ([], {"num_classes": 10}))``: literal arguments only,
    read with ``ast.literal_eval`` (nothing the user writes there is executed). The call is the one right
    after ``:factory``, so a folder named ``runs(2)/`` stays part of the path."""
    match = _CALL_RE.match(spec) or (None if ":" in spec else _ZOO_CALL_RE.match(spec))
    if match is None:
        return spec, None
    head, call = match.group("head"), match.group("call")
    try:
        node = ast.parse(f"f{call}", mode="eval").body  # a stand-in name: zoo names may hold "-"
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            raise ValueError("one call, like f(3, k=1)")
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
        if len(kwargs) != len(node.keywords):
            raise ValueError("**kwargs")
    except (SyntaxError, ValueError, TypeError) as err:
        raise BadInputError(f"'{spec}': the factory's arguments must be Python literals, like "
                            f"resnet50(num_classes=10) or f(3, widths=[32, 64]) ({first_line(err)})") from None
    return head, (args, kwargs)


def is_onnx_spec(spec: str) -> bool:
    return spec.lower().endswith(".onnx")


ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def is_engine_spec(spec: str) -> bool:
    return spec.lower().endswith(ENGINE_SUFFIXES)


IR_SUFFIX = ".xml"


def is_ir_spec(spec: str) -> bool:
    """An OpenVINO IR (``model.xml`` with ``model.bin`` beside it)."""
    return spec.lower().endswith(IR_SUFFIX)


def load_ir_artifact(path: str | os.PathLike, shape: tuple[int, ...] | Shapes | None = None) -> Artifact:
    """An OpenVINO IR: its inputs as OpenVINO reads them (loading needs openvino; running, the ov-cpu backend)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    if not path.with_suffix(".bin").is_file():
        raise BadInputError(f"{path}: an OpenVINO IR needs its weights beside it ({path.with_suffix('.bin').name})")
    try:
        import openvino as ov
    except ImportError:
        raise BadInputError(f"{path}: reading an OpenVINO IR needs openvino (pip install openvino)") from None
    try:
        model = ov.Core().read_model(str(path))
    except Exception as err:  # not an IR OpenVINO can read
        from ..ov import error_line

        raise BadInputError(f"{path}: OpenVINO cannot read it: {error_line(err)}") from None
    dtypes = {"f32": np.float32, "f16": np.float16, "i64": np.int64, "i32": np.int32, "u8": np.uint8, "i8": np.int8,
              "boolean": np.bool_}
    inputs = []
    for port in model.inputs:
        dims = tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())
        inputs.append(TensorSpec(port.get_any_name(), dims, np.dtype(dtypes.get(port.get_element_type().get_type_name(),
                                                                                 np.float32))))
    if shape:
        if len(shape) == 1 and None in shape:
            shape = {inputs[0].name: shape[None]}
        inputs = [_fill_dims(path, s, tuple(shape[s.name])) if s.name in shape else s for s in inputs]
    outputs = model.outputs
    last = outputs[0].get_partial_shape() if len(outputs) == 1 else None
    num_classes = last[1].get_length() if last is not None and len(last) == 2 and last[1].is_static else None
    return Artifact(str(path), "ir", inputs, ir_path=path, num_classes=num_classes,
                    notes=[f"OpenVINO IR {path} (+ {path.with_suffix('.bin').name})"])


def load_engine_artifact(path: str | os.PathLike, shape: tuple[int, ...] | Shapes | None = None) -> Artifact:
    """A TensorRT engine, described by the record `deploy build` wrote beside it (its inputs and profile):
    loading needs no TensorRT, running needs the trt backend."""
    from .engine_record import read_sidecar

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    record = read_sidecar(path)
    inputs = list(record.inputs)
    if shape:
        raise BadInputError(f"{path}: an engine's input shapes are its build profile; --shape does not apply "
                            f"(rebuild with --profile)")
    profile = record.profile()
    # the profile's opt shape fills dims the ONNX left free (a dynamic batch stays dynamic)
    filled = []
    for spec in inputs:
        r = profile.get(spec.name)
        dims = tuple(d if (isinstance(d, int) and d > 0) or i == 0 or r is None else r.opt[i]
                     for i, d in enumerate(spec.shape))
        filled.append(TensorSpec(spec.name, dims, spec.dtype))
    outputs = record.outputs
    num_classes = outputs[0].shape[1] if len(outputs) == 1 and len(outputs[0].shape) == 2 and \
        isinstance(outputs[0].shape[1], int) and outputs[0].shape[1] > 0 else None
    return Artifact(str(path), "engine", filled, engine_path=path, num_classes=num_classes,
                    notes=[f"TensorRT {record.tensorrt} engine {path} ({record.plan.get('precision')}, built from "
                           f"{record.onnx} for {record.gpu})"])


def load_artifact(
    spec: str,
    *,
    weights: str | None = None,
    shape: tuple[int, ...] | Shapes | None = None,
    realistic: bool = True,
) -> Artifact:
    """Resolve a spec to an artifact. Zoo models without weights get seeded weights and, with
    ``realistic``, realistic BN statistics (see :mod:`deploy.artifacts.numerics`) so that every command that
    names the same zoo model sees the same numbers.

    ``shape`` is one shape (a one-input model) or {input name: shape} (:func:`parse_shapes`)."""
    shapes: Shapes | None = {None: tuple(shape)} if isinstance(shape, tuple) else shape
    if is_onnx_spec(spec):
        if weights:
            raise BadInputError(f"{spec}: --weights applies to PyTorch models; an ONNX file carries its weights")
        return load_onnx_artifact(spec, shapes)
    if is_ir_spec(spec):
        if weights:
            raise BadInputError(f"{spec}: --weights applies to PyTorch models; an IR carries its weights (.bin)")
        return load_ir_artifact(spec, shapes)
    if is_engine_spec(spec):
        if weights:
            raise BadInputError(f"{spec}: --weights applies to PyTorch models; an engine carries its weights")
        return load_engine_artifact(spec, shapes)
    head, call = split_call(spec)
    args, kwargs = call or ([], {})
    origin = {"spec": spec, "weights": weights, "shapes": {k or "": list(v) for k, v in (shapes or {}).items()}}
    if ":" in head:
        module, notes, file = _load_user_model(spec, head, args, kwargs)
        origin["file"] = file
        if not shapes:
            raise BadInputError(f"{spec}: give the input shape of a user model with --shape, e.g. --shape 1,3,224,224")
        num_classes = kwargs.get("num_classes") if isinstance(kwargs.get("num_classes"), int) else None
    else:
        try:
            entry = get_model_entry(head)
        except UnknownModelError as err:
            if Path(head).exists() or "/" in head or "." in head:
                raise BadInputError(
                    f"{spec}: not a zoo name, an .onnx file or a module:factory spec "
                    f"(a Python file is given as path/to/file.py:factory)"
                ) from None
            raise BadInputError(str(err)) from None
        if args:
            raise BadInputError(f"'{spec}': a zoo model takes keyword arguments only, like {head}(num_classes=10)")
        try:
            module = create_model(head, **kwargs)
        except Exception as err:  # the zoo factory refused the arguments (TypeError, ZeroDivisionError, …)
            raise BadInputError(f"'{spec}': {type(err).__name__}: {first_line(err)}") from None
        num_classes = kwargs.get("num_classes", entry.num_classes)
        notes = [f"zoo {spec}"]
        shapes = shapes or {None: entry.input_shape}
    specs, examples = _torch_inputs(module, shapes, spec)
    if weights:
        module, pruned = replay_pruning(module, weights)
        load_weights(module, weights)
        notes.append(f"weights {weights}" + (" (pruned: its record replayed on the architecture)" if pruned else ""))
    elif realistic and ":" not in head:
        from .numerics import make_realistic

        try:
            make_realistic(module, examples[0])
        except Exception as err:
            raise BadInputError(f"{spec}: the model does not run on input shape {tuple(examples[0])}: "
                                f"{first_line(err)}") from None
        notes.append("seeded random weights, BN statistics from the bundled photos")
    return Artifact(spec, "torch", specs, module=module.eval(), num_classes=num_classes, notes=notes,
                    example_shapes=examples, origin=origin)


def module_artifact(module: nn.Module, shape: tuple[int, ...] | Shapes, label: str | None = None) -> Artifact:
    """A torch module the caller built in memory (the Python API): its input specs from ``shape`` and
    forward()'s signature, as for a user factory. It carries no origin, so nothing can load it again in a
    fresh process (bench measures its memory inline and says so)."""
    if not isinstance(module, nn.Module):
        raise BadInputError(f"{type(module).__name__} is not a torch.nn.Module")
    shapes: Shapes = {None: tuple(shape)} if isinstance(shape, tuple) else dict(shape)
    label = label or type(module).__name__
    specs, examples = _torch_inputs(module, shapes, label)
    num_classes = None
    return Artifact(label, "torch", specs, module=module.eval(), num_classes=num_classes,
                    notes=[f"{label}: a module in memory"], example_shapes=examples)


def _forward_inputs(module: nn.Module) -> tuple[list[str], int]:
    """Names of forward()'s positional parameters, and how many of them have no default."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return [], 1
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(1 for p in positional if p.default is p.empty)
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return [p.name for p in positional], max(required, 1)
    return [p.name for p in positional], required


def _torch_inputs(module: nn.Module, shapes: Shapes, spec: str) -> tuple[list[TensorSpec], list[tuple[int, ...]]]:
    """Input specs (batch dim symbolic: a module takes any batch) and concrete example shapes, in the
    order forward() takes them. One unnamed shape names the input ``input`` (the exporter's name)."""
    names, required = _forward_inputs(module)
    if None in shapes:
        if required > 1:
            listed = ", ".join(names[:required])
            raise BadInputError(f"'{spec}': forward() takes {required} inputs ({listed}); give each its shape: "
                                + " ".join(f"--shape {n}=…" for n in names[:required]))
        ordered = [("input", shapes[None])]
    else:
        unknown = [n for n in shapes if n not in names]
        if unknown and names:
            raise BadInputError(f"'{spec}': --shape names {', '.join(map(repr, unknown))}, but forward() takes "
                                f"{', '.join(names) or 'no named inputs'}")
        missing = [n for n in names[:required] if n not in shapes]
        if missing:
            raise BadInputError(f"'{spec}': no --shape for input(s) {', '.join(missing)} of forward()")
        ordered = [(n, shapes[n]) for n in names if n in shapes] if names else list(shapes.items())
    specs = [TensorSpec(name, ("batch", *dims[1:])) for name, dims in ordered]
    return specs, [tuple(dims) for _, dims in ordered]


def load_onnx_artifact(path: str | os.PathLike, shape: tuple[int, ...] | Shapes | None = None) -> Artifact:
    """Read an ONNX file's input specs; a missing, truncated or invalid file is a one-line error.

    ``shape`` fills the free dims of the inputs (a dynamic batch stays dynamic)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as err:
        reason = first_line(err)
        raise BadInputError(f"{path}: not a valid ONNX file (truncated or corrupt?): {reason[:200]}") from None
    source, notes = path, [f"ONNX file {path}"]
    from .normalize import needs_normalizing, normalize_onnx

    if needs_normalizing(model):
        given = {None: tuple(shape)} if isinstance(shape, tuple) else (shape or {})
        if None in given and len(model.graph.input) - len(model.graph.initializer) <= 1 and model.graph.input:
            given = {model.graph.input[0].name: given[None]}
        normalized = normalize_onnx(path, {k: v for k, v in given.items() if k is not None})
        path = normalized.path
        model = onnx.load(str(path), load_external_data=False)
        notes.append(normalized.note())
    initializers = {i.name for i in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims: list[int | str] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                                 for d in tensor_type.shape.dim]
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        inputs.append(TensorSpec(value.name, tuple(dims), dtype))
    if not inputs:
        raise BadInputError(f"{source}: the graph has no inputs")
    shapes: Shapes | None = {None: tuple(shape)} if isinstance(shape, tuple) else shape
    if shapes:
        if None in shapes:
            if len(inputs) != 1:
                raise BadInputError(f"{source}: the model has {len(inputs)} inputs; give each its shape: "
                                    + " ".join(f"--shape {s.name}=…" for s in inputs))
            shapes = {inputs[0].name: shapes[None]}
        unknown = [n for n in shapes if n not in {s.name for s in inputs}]
        if unknown:
            raise BadInputError(f"{source}: --shape names {', '.join(map(repr, unknown))}; the inputs are "
                                f"{', '.join(s.name for s in inputs)}")
        inputs = [_fill_dims(source, s, shapes[s.name]) if s.name in shapes else s for s in inputs]
    outputs = model.graph.output
    num_classes = None
    if len(outputs) == 1 and len(outputs[0].type.tensor_type.shape.dim) == 2:
        last = outputs[0].type.tensor_type.shape.dim[1]
        num_classes = last.dim_value or None
    stored = next((p.value for p in model.metadata_props if p.key == "deploy.preprocess"), None)
    return Artifact(str(source), "onnx", inputs, onnx_path=path, num_classes=num_classes, notes=notes,
                    source_path=source if source != path else None, preprocess=stored)


def _fill_dims(path: Path, spec: TensorSpec, shape: tuple[int, ...]) -> TensorSpec:
    if len(shape) != len(spec.shape):
        raise BadInputError(f"{path}: --shape {shape} does not fit input '{spec.name}' of shape {spec.shape}")
    for axis, (want, have) in enumerate(zip(shape, spec.shape)):
        if isinstance(have, int) and have > 0 and have != want:
            raise BadInputError(f"{path}: --shape {shape} conflicts with the file's fixed dim {axis} = {have}")
    keep_batch = spec.dynamic_batch  # --shape fills the free dims; a dynamic batch stays dynamic
    dims = ((spec.shape[0],) if keep_batch else (shape[0],)) + tuple(shape[1:])
    return TensorSpec(spec.name, dims, spec.dtype)


def _package_module(path: Path) -> tuple[Path, str] | None:
    """For a file inside a package (folders holding ``__init__.py``): the folder above the package root,
    and the file's dotted module name. None for a loose file."""
    parts, folder = [path.stem], path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    if len(parts) == 1 or not all(p.isidentifier() for p in parts):
        return None
    return folder, ".".join(parts)


def _import_file(path: Path, spec: str):
    """Import a user's file: as its package's module when it sits in a package (relative imports then
    work), else as a loose module with its folder first on sys.path."""
    package = _package_module(path)
    if package is not None:
        root, dotted = package
        top = dotted.split(".")[0]
        loaded = sys.modules.get(top)
        if loaded is not None and getattr(loaded, "__file__", None) and \
                Path(loaded.__file__).resolve().parent.parent != root.resolve():
            raise BadInputError(f"{path}: its package '{top}' clashes with another package of that name already "
                                f"imported ({loaded.__file__}); rename one of them")
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        try:
            return importlib.import_module(dotted)
        except Exception as err:
            raise BadInputError(f"{path}: importing it as {dotted} (package root {root}) failed: "
                                f"{type(err).__name__}: {first_line(err)}") from None
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # so the file's sibling packages (e.g. its own `models`) import
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    name = f"_deploy_user_{path.stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except ImportError as err:
        sys.modules.pop(name, None)
        hint = (" (a relative import needs the file's folder to be a package: add an __init__.py beside it)"
                if "relative import" in str(err) else "")
        raise BadInputError(f"{path}: importing it failed: {type(err).__name__}: {first_line(err)}{hint}") from None
    except Exception as err:
        sys.modules.pop(name, None)
        raise BadInputError(f"{path}: importing it failed: {type(err).__name__}: {first_line(err)}") from None
    return module


def _load_user_model(spec: str, head: str, args: list, kwargs: dict) -> tuple[nn.Module, list[str], str | None]:
    target, _, attr = head.rpartition(":")
    if not target or not attr.isidentifier():
        raise BadInputError(f"'{spec}': a user model is given as package.module:factory or path/to/file.py:factory")
    file = None
    if target.endswith(".py") or os.sep in target or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise BadInputError(f"{path}: no such file (model spec '{spec}')")
        path = path.resolve()
        file = str(path)
        module = _import_file(path, spec)
    else:
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        importlib.invalidate_caches()  # a package written after the finders cached its folder
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as err:
            if err.name and target.split(".")[0] != err.name.split(".")[0]:
                raise MissingDependencyError(f"'{spec}': {target} needs the package '{err.name}', which is not "
                                             f"installed") from None
            raise BadInputError(f"'{spec}': cannot import {target}: {err} (run from the folder that holds it)"
                                ) from None
        except Exception as err:
            raise BadInputError(f"'{spec}': importing {target} failed: {type(err).__name__}: {err}") from None
        file = getattr(module, "__file__", None)
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                        and getattr(v, "__module__", None) == module.__name__)
        close = difflib.get_close_matches(attr, public, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise BadInputError(f"'{spec}': {target} has no callable '{attr}'; {hint}it defines {len(public)}: "
                            f"{_few(public, 8)}")
    call = f"{attr}({', '.join([*map(repr, args), *(f'{k}={v!r}' for k, v in kwargs.items())])})"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # deterministic random init, so repeated loads agree
        try:
            model = factory(*args, **kwargs)
        except Exception as err:
            hint = "" if args or kwargs else " (arguments go in the spec: file.py:factory(num_classes=10))"
            raise BadInputError(f"'{spec}': {call} failed: {type(err).__name__}: {first_line(err)}{hint}") from None
    if not isinstance(model, nn.Module):
        raise BadInputError(f"'{spec}': {call} returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval(), [f"built by {spec}"], file


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from .pt/.pth/.bin/.ckpt (weights-only unpickling) or .safetensors.

    Common wrappers are unwrapped: ``{"state_dict": …}``, ``{"model": …}``, ``{"model_state_dict": …}``,
    and a ``module.`` prefix left by DataParallel.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such weights file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as err:
            raise BadInputError(f"{path}: not a readable safetensors file: {err}") from None
    elif suffix in TORCH_WEIGHT_SUFFIXES:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            callables = foreign_pickle_globals(path)
            if callables:
                raise BadInputError(
                    f"{path}: refused: loading it would import and call {', '.join(callables[:3])}; re-save it as a "
                    f"plain state_dict (torch.save(model.state_dict(), …)) or .safetensors"
                ) from None
            detail = [line for line in str(err).splitlines() if line.strip()][-2:]
            raise BadInputError(f"{path}: not a readable checkpoint (truncated or corrupt?): "
                                f"{' '.join(detail)[:160]}") from None
        except Exception as err:
            detail = first_line(err)[:160]
            raise BadInputError(f"{path}: not a readable checkpoint (truncated or corrupt?): {detail}") from None
    else:
        raise BadInputError(f"{path}: unknown weights format '{suffix}'; use .pt/.pth/.bin/.ckpt or .safetensors")
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInputError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


# What torch.save itself puts in a checkpoint: rebuilding tensors and containers, nothing else.
SAFE_PICKLE_PREFIXES = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.tuple")


def foreign_pickle_globals(path: Path) -> list[str]:
    """Callables a pickle would import (GLOBAL / STACK_GLOBAL opcodes) beyond torch's own, read with
    pickletools without executing anything. Works on torch's zip checkpoints and on bare pickles."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                data = archive.read(member) if member else b""
        else:
            data = Path(path).read_bytes()
    except (OSError, zipfile.BadZipFile):
        return []
    found: list[str] = []
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # a corrupt stream ends the scan; what was seen so far still counts
        pass
    return sorted({g for g in found if not g.startswith(SAFE_PICKLE_PREFIXES)})


def _few(keys: list[str], limit: int = 5) -> str:
    more = f" … (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def pruning_metadata(path: str | os.PathLike) -> tuple[str, list[str]] | None:
    """(record JSON, preparation steps) from a safetensors file written by `deploy prune`, else None."""
    if Path(path).suffix.lower() != ".safetensors" or not Path(path).is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:
        return None
    if RECORD_KEY not in meta:
        return None
    return meta[RECORD_KEY], json.loads(meta.get(PREPARED_KEY, "[]"))


def replay_pruning(module: nn.Module, path: str | os.PathLike) -> tuple[nn.Module, bool]:
    """The module sliced as the pruning record in ``path`` says (a pruned copy), or the module itself when
    the file holds no record. A record that does not fit names the first mismatching layer."""
    found = pruning_metadata(path)
    if found is None:
        return module, False
    from ..passes.prune import PruneRecord, RecordMismatchError, replay

    record_json, prepared = found
    try:
        return replay(module, PruneRecord.from_json(record_json), prepared), True
    except RecordMismatchError as err:
        raise BadInputError(f"{path}: the pruning record does not fit this model: {err}") from None


def load_weights(module: nn.Module, path: str | os.PathLike) -> None:
    """Load a checkpoint strictly; a mismatch names the missing, unexpected and mis-shaped keys."""
    state = read_state_dict(path)
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    misshaped = [f"{k} {tuple(state[k].shape)}≠{tuple(v.shape)}" for k, v in own.items()
                 if k in state and state[k].shape != v.shape]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_few(unexpected)}")
        if misshaped:
            parts.append(f"wrong shape: {_few(misshaped, 3)}")
        raise BadInputError(f"{path}: weights do not fit the model — {'; '.join(parts)}")
    module.load_state_dict(state, strict=False)


def zoo_names() -> list[str]:
    return list_models()
