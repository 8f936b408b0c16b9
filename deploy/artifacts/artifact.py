"""The types every layer shares: an :class:`Artifact` (a loaded model), the :class:`TensorSpec` of each of its
inputs and outputs, and how a torch model's outputs are named (the exporter's names, which runners and the
comparison use)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import BadInputError


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (ints, or strings for symbolic dims) and dtype of one graph input or output."""

    name: str
    shape: tuple[int | str, ...]
    dtype: np.dtype = np.dtype(np.float32)

    def concrete(self, batch: int = 1) -> tuple[int, ...]:
        """The shape with the leading symbolic dim set to ``batch`` (others must be static)."""
        dims = []
        for i, d in enumerate(self.shape):
            if isinstance(d, int) and d > 0:
                dims.append(d)
            elif i == 0:
                dims.append(batch)
            else:
                raise BadInputError(
                    f"input '{self.name}' has a dynamic dim {i} ({d!r}); give the shape with --shape"
                )
        return tuple(dims)

    @property
    def dynamic_batch(self) -> bool:
        return bool(self.shape) and not (isinstance(self.shape[0], int) and self.shape[0] > 0)


@dataclass
class Artifact:
    """A loaded model: a torch module or an ONNX file, with its input specs."""

    label: str  # what the user wrote (or a name for derived artifacts)
    kind: str  # "torch", "onnx", "engine" (a TensorRT engine with its deploy record) or "ir" (an OpenVINO IR)
    inputs: list[TensorSpec]
    module: nn.Module | None = None
    onnx_path: Path | None = None  # the file verbs read (an other exporter's file: its normalized copy)
    engine_path: Path | None = None
    ir_path: Path | None = None  # an OpenVINO IR's .xml (its .bin beside it)
    source_path: Path | None = None  # the file the user named, when onnx_path is its normalized copy
    preprocess: str | None = None  # the preprocessing stored in an ONNX file's metadata (JSON), if any
    num_classes: int | None = None
    example_shape: tuple[int, ...] | None = None  # torch: the first input's concrete shape (export, FLOPs)
    notes: list[str] = field(default_factory=list)  # how it was made, for reports
    example_shapes: list[tuple[int, ...]] | None = None  # torch: every input's concrete shape, in input order
    origin: dict | None = None  # how to load it again (spec, weights, shapes): a fresh process can

    def __post_init__(self) -> None:
        if self.example_shapes is None and self.example_shape is not None:
            self.example_shapes = [tuple(self.example_shape)]
        if self.example_shape is None and self.example_shapes:
            self.example_shape = tuple(self.example_shapes[0])

    @property
    def input_shape(self) -> tuple[int | str, ...]:
        return self.inputs[0].shape

    @property
    def files(self) -> list[tuple[str, Path]]:
        """The files this artifact was read from (for provenance and the inputs-are-sacred check)."""
        found = [("model", self.source_path or self.onnx_path)] if self.onnx_path is not None else []
        if self.engine_path is not None:
            found.append(("engine", self.engine_path))
        if self.ir_path is not None:
            found.extend([("model", self.ir_path), ("weights", self.ir_path.with_suffix(".bin"))])
        if self.origin:
            if self.origin.get("file"):
                found.append(("model code", Path(self.origin["file"])))
            if self.origin.get("weights"):
                found.append(("weights", Path(self.origin["weights"])))
        return found


def name_outputs(result) -> dict[str, torch.Tensor]:
    """Give a model's outputs the names the exporter gives them.

    One tensor → ``output``; a flat mapping of tensors keeps its keys; anything else (tuples, lists,
    nesting such as a detector's ``(logits, [boxes, scores])``) is flattened in the exporter's order to
    ``output_0``, ``output_1``… so that no nested tensor escapes the comparison.
    """
    from torch.utils._pytree import tree_flatten

    if isinstance(result, torch.Tensor):
        return {"output": result}
    if isinstance(result, Mapping) and all(isinstance(v, torch.Tensor) for v in result.values()):
        return {str(k): v for k, v in result.items()}
    if isinstance(result, Mapping | Sequence):
        flat = [v for v in tree_flatten(result)[0] if isinstance(v, torch.Tensor)]
        if flat:
            return {f"output_{i}": v for i, v in enumerate(flat)}
    raise BadInputError(f"model returned {type(result).__name__}; expected tensors (a tensor, tuple or dict)")
