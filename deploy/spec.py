"""Model specs: what a user may hand us, and how each becomes an :class:`Artifact`.

A spec is one of
  * a zoo name (``resnet18``);
  * ``package.module:factory`` importable from the current folder;
  * ``path/to/file.py:factory`` — the file's folder goes first on ``sys.path``, so the user's own
    packages (a top-level ``models`` among them) import as they do in their project;
  * an ``.onnx`` file.
Weights (``--weights``) load into torch specs from ``.pt/.pth`` (``torch.load(weights_only=True)``:
checkpoints that would run code are refused) or ``.safetensors``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import pickle
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .backends.base import TensorSpec, first_line
from .errors import BadInputError, MissingDependencyError
from .models import UnknownModelError, create_model, get_model_entry, list_models

TORCH_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


@dataclass
class Artifact:
    """A loaded model: a torch module or an ONNX file, with its input specs."""

    label: str  # what the user wrote (or a name for derived artifacts)
    kind: str  # "torch" or "onnx"
    inputs: list[TensorSpec]
    module: nn.Module | None = None
    onnx_path: Path | None = None
    num_classes: int | None = None
    example_shape: tuple[int, ...] | None = None  # torch: the concrete input shape for export and FLOPs
    notes: list[str] = field(default_factory=list)  # how it was made, for reports

    @property
    def input_shape(self) -> tuple[int | str, ...]:
        return self.inputs[0].shape


_SHAPE_RE = re.compile(r"^\s*\d+(\s*[,x]\s*\d+)*\s*$")


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``"1,3,224,224"`` (or ``1x3x224x224``) → ``(1, 3, 224, 224)``."""
    if text is None:
        return None
    if not _SHAPE_RE.match(text) or any(int(d) <= 0 for d in re.split(r"[,x]", text)):
        raise BadInputError(f"--shape '{text}': expected positive integers separated by commas, like 1,3,224,224")
    return tuple(int(d) for d in re.split(r"\s*[,x]\s*", text.strip()))


def is_onnx_spec(spec: str) -> bool:
    return spec.lower().endswith(".onnx")


def load_artifact(
    spec: str,
    *,
    weights: str | None = None,
    shape: tuple[int, ...] | None = None,
    realistic: bool = True,
) -> Artifact:
    """Resolve a spec to an artifact. Zoo models without weights get seeded weights and, with
    ``realistic``, realistic BN statistics (see :mod:`deploy.numerics`) so that every command that
    names the same zoo model sees the same numbers."""
    if is_onnx_spec(spec):
        if weights:
            raise BadInputError(f"{spec}: --weights applies to PyTorch models; an ONNX file carries its weights")
        return load_onnx_artifact(spec, shape)
    if ":" in spec:
        module, notes = _load_user_model(spec), [f"built by {spec}"]
        if shape is None:
            raise BadInputError(f"{spec}: give the input shape of a user model with --shape, e.g. --shape 1,3,224,224")
        num_classes = None
    else:
        try:
            entry = get_model_entry(spec)
        except UnknownModelError as err:
            if Path(spec).exists() or "/" in spec or "." in spec:
                raise BadInputError(
                    f"{spec}: not a zoo name, an .onnx file or a module:factory spec "
                    f"(a Python file is given as path/to/file.py:factory)"
                ) from None
            raise BadInputError(str(err)) from None
        module, num_classes = create_model(spec), entry.num_classes
        notes = [f"zoo {spec}"]
        shape = shape or entry.input_shape
    if weights:
        load_weights(module, weights)
        notes.append(f"weights {weights}")
    elif realistic and ":" not in spec:
        from .numerics import make_realistic

        try:
            make_realistic(module, shape)
        except Exception as err:
            raise BadInputError(f"{spec}: the model does not run on input shape {tuple(shape)}: "
                                f"{first_line(err)}") from None
        notes.append("seeded random weights, BN statistics from the bundled photos")
    # a module takes any batch: the spec's batch dim is symbolic; the concrete shape is kept for export
    inputs = [TensorSpec("input", ("batch", *shape[1:]))]
    return Artifact(spec, "torch", inputs, module=module.eval(), num_classes=num_classes,
                    example_shape=tuple(shape), notes=notes)


def load_onnx_artifact(path: str | os.PathLike, shape: tuple[int, ...] | None = None) -> Artifact:
    """Read an ONNX file's input specs; a missing, truncated or invalid file is a one-line error."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadInputError(f"{path}: not a valid ONNX file (truncated or corrupt?): {reason[:200]}") from None
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
        raise BadInputError(f"{path}: the graph has no inputs")
    if shape is not None:
        if len(inputs) != 1 or len(shape) != len(inputs[0].shape):
            raise BadInputError(f"{path}: --shape {shape} does not fit the inputs {[s.shape for s in inputs]}")
        for axis, (want, have) in enumerate(zip(shape, inputs[0].shape)):
            if isinstance(have, int) and have > 0 and have != want:
                raise BadInputError(f"{path}: --shape {shape} conflicts with the file's fixed dim {axis} = {have}")
        keep_batch = inputs[0].dynamic_batch  # --shape fills the free dims; a dynamic batch stays dynamic
        dims = ((inputs[0].shape[0],) if keep_batch else (shape[0],)) + tuple(shape[1:])
        inputs = [TensorSpec(inputs[0].name, dims, inputs[0].dtype)]
    outputs = model.graph.output
    num_classes = None
    if len(outputs) == 1 and len(outputs[0].type.tensor_type.shape.dim) == 2:
        last = outputs[0].type.tensor_type.shape.dim[1]
        num_classes = last.dim_value or None
    return Artifact(str(path), "onnx", inputs, onnx_path=path, num_classes=num_classes, notes=[f"ONNX file {path}"])


def _load_user_model(spec: str) -> nn.Module:
    target, _, attr = spec.rpartition(":")
    if not target or not attr.isidentifier():
        raise BadInputError(f"'{spec}': a user model is given as package.module:factory or path/to/file.py:factory")
    if target.endswith(".py") or os.sep in target or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise BadInputError(f"{path}: no such file (model spec '{spec}')")
        folder = str(path.resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)  # so the file's sibling packages (e.g. its own `models`) import
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
        name = f"_deploy_user_{path.stem}_{digest}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:
            sys.modules.pop(name, None)
            raise BadInputError(f"{path}: importing it failed: {type(err).__name__}: {err}") from None
    else:
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
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
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise BadInputError(f"'{spec}': {target} has no callable '{attr}' (it has: {', '.join(public[:10])})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # deterministic random init, so repeated loads agree
        try:
            model = factory()
        except Exception as err:
            raise BadInputError(f"'{spec}': {attr}() failed: {type(err).__name__}: {first_line(err)} "
                                f"(the factory is called with no arguments)") from None
    if not isinstance(model, nn.Module):
        raise BadInputError(f"'{spec}': {attr}() returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


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
            detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
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
