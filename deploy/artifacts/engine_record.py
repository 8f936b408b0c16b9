"""The engine record: ``model.engine.json``, written beside every TensorRT engine `deploy build` makes.

It says where the engine came from (TensorRT version, GPU, the ONNX file and its hash, the build plan and the
optimization profile) so that loading it elsewhere fails with a clear line instead of a deserialization error.
Reading it needs no TensorRT: the spec loader, the TensorRT runner, ``deploy info`` and the builder all
import this module, which imports nothing above the artifacts.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .artifact import TensorSpec
from .files import atomic_path

SIDECAR_FORMAT = "deploy-engine"
SIDECAR_VERSION = 1


@dataclass(frozen=True)
class ShapeRange:
    """One input's optimization-profile shapes (TensorRT: min ≤ opt ≤ max per dim)."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: dict) -> ShapeRange:
        return cls(tuple(d["min"]), tuple(d["opt"]), tuple(d["max"]))

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))

    def describe(self) -> str:
        dims = lambda s: "x".join(map(str, s))  # noqa: E731
        return dims(self.min) if self.min == self.max else f"{dims(self.min)} … {dims(self.opt)} … {dims(self.max)}"


def spec_dict(spec: TensorSpec) -> dict:
    return {"name": spec.name, "shape": list(spec.shape), "dtype": np.dtype(spec.dtype).name}


def spec_from_dict(d: dict) -> TensorSpec:
    return TensorSpec(d["name"], tuple(d["shape"]), np.dtype(d["dtype"]))


def sidecar_path(engine: str | os.PathLike) -> Path:
    return Path(f"{engine}.json")


@dataclass
class EngineRecord:
    """``model.engine.json``: where an engine came from, so a mismatch at load time is a clear error."""

    tensorrt: str
    api: int
    gpu: str | None
    compute_capability: str | None
    driver: str | None
    cuda: str | None
    onnx: str
    onnx_sha256: str
    engine_sha256: str
    timing_cache_sha256: str | None
    build_seconds: float
    plan: dict
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    built: str = ""
    deploy: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["inputs"] = [spec_dict(s) for s in self.inputs]
        d["outputs"] = [spec_dict(s) for s in self.outputs]
        return {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict) -> EngineRecord:
        if not isinstance(d, dict) or d.get("format") != SIDECAR_FORMAT:
            raise ValueError(f'not a deploy engine record (no "format": "{SIDECAR_FORMAT}")')
        if d.get("version") != SIDECAR_VERSION:
            raise ValueError(f"record version {d.get('version')}; this deploy reads {SIDECAR_VERSION}")
        fields = {k: v for k, v in d.items() if k not in ("format", "version")}
        try:
            fields["inputs"] = [spec_from_dict(s) for s in fields["inputs"]]
            fields["outputs"] = [spec_from_dict(s) for s in fields["outputs"]]
            return cls(**fields)
        except (KeyError, TypeError) as err:
            raise ValueError(f"incomplete record: {err}") from None

    def profile(self) -> dict[str, ShapeRange]:
        return {k: ShapeRange.from_dict(v) for k, v in self.plan.get("profile", {}).items()}


def write_sidecar(record: EngineRecord, engine: str | os.PathLike) -> Path:
    target = sidecar_path(engine)
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(record.to_dict(), indent=2) + "\n")
    return target


def read_sidecar(engine: str | os.PathLike) -> EngineRecord:
    path = sidecar_path(engine)
    if not path.is_file():
        raise BadInputError(f"{engine}: no {path.name} beside it (the record `deploy build` writes); rebuild with "
                            f"`deploy build MODEL.onnx -o {engine}`")
    try:
        return EngineRecord.from_dict(json.loads(path.read_text()))
    except (ValueError, OSError) as err:
        raise BadInputError(f"{path}: {err}; rebuild with `deploy build MODEL.onnx -o {engine}`") from None


def compatibility_problems(record: EngineRecord, tensorrt_version: str | None, here: dict,
                           engine_bytes: bytes | None = None) -> list[str]:
    """Why an engine will not load here. A serialized engine is specific to the TensorRT version and to
    the GPU's compute capability (unless built version/hardware compatible, which deploy does not)."""
    problems = []
    if engine_bytes is not None and hashlib.sha256(engine_bytes).hexdigest() != record.engine_sha256:
        problems.append("the engine file changed since its record was written")
    if tensorrt_version and record.tensorrt != tensorrt_version:
        problems.append(f"built with TensorRT {record.tensorrt}, this machine has {tensorrt_version}")
    cc = here.get("compute_capability")
    if cc and record.compute_capability and cc != record.compute_capability:
        problems.append(f"built for {record.gpu} (compute capability {record.compute_capability}), this GPU is "
                        f"{here.get('gpu')} ({cc})")
    return problems


def require_compatible(record: EngineRecord, engine: str | os.PathLike, tensorrt_version: str | None, here: dict,
                       engine_bytes: bytes | None = None) -> None:
    problems = compatibility_problems(record, tensorrt_version, here, engine_bytes)
    if problems:
        raise BadInputError(f"{engine}: {'; '.join(problems)}: rebuild it here with `deploy build {record.onnx} "
                            f"-o {engine}`")
