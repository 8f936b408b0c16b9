"""Backend name → runner class, and what this machine can run."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BadInputError
from .base import Runner
from .ort_runner import OrtCudaRunner, OrtRunner
from .ov_runner import OvBf16Runner, OvRunner
from .torch_runner import TorchCudaRunner, TorchRunner
from .trt_runner import TrtRunner

BACKENDS: dict[str, type[Runner]] = {
    cls.name: cls for cls in (TorchRunner, OrtRunner, OvRunner, OvBf16Runner, TorchCudaRunner, OrtCudaRunner, TrtRunner)
}


@dataclass(frozen=True)
class BackendStatus:
    name: str
    runs: str  # "torch" or "onnx"
    device: str
    available: bool
    detail: str


def get_runner_class(name: str) -> type[Runner]:
    try:
        return BACKENDS[name]
    except KeyError:
        raise BadInputError(f"unknown backend '{name}'; choose from {', '.join(BACKENDS)}") from None


def parse_backend_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise BadInputError(f"--backend '{text}': give one or more of {', '.join(BACKENDS)}")
    for n in names:
        get_runner_class(n)
    return names


def backend_status() -> list[BackendStatus]:
    out = []
    for name, cls in BACKENDS.items():
        ok, detail = cls.available()
        out.append(BackendStatus(name, cls.artifact_kind, cls.device, ok, detail))
    return out
