"""OpenVINO's CPU plugin: ``ov-cpu``, and ``ov-cpu-bf16`` (its bf16 inference precision, where the CPU has it).

Both read our ONNX files directly and OpenVINO IRs (``.xml`` + ``.bin``); :mod:`deploy.ov` compiles them with the
thread count, a performance hint (latency unless ``DEPLOY_OV_HINT=throughput``) and an inference precision. A free
batch dim stays dynamic (the CPU plugin compiles dynamic shapes); Q/DQ int8 files run on its int8 kernels as
written.

``ov-cpu`` computes float layers in f32, so an fp32 file computes what it says (the plugin's own default on a bf16
CPU is bf16). ``ov-cpu-bf16`` is that default made a choice: the same file, float layers in bf16 (AMX or
AVX-512 BF16) — a different precision, judged by ``deploy check --precision bf16`` like any other.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import BadInputError, MissingDependencyError
from ..ov import PERFORMANCE_HINTS, OvSession, available, cpu_session, precision_supported
from .base import Runner

HINT_ENV = "DEPLOY_OV_HINT"


class OvRunner(Runner):
    artifact_kind = "onnx"
    also_runs = ("ir",)
    name = "ov-cpu"
    device = "cpu"
    precision = "f32"

    def __init__(self, artifact, threads: int | None = None, allow_spinning: bool = True, hint: str | None = None):
        super().__init__(artifact, threads, allow_spinning)
        self.hint = hint or os.environ.get(HINT_ENV, "latency").strip().lower()
        if self.hint not in PERFORMANCE_HINTS:
            raise BadInputError(f"{HINT_ENV}={self.hint}: choose from {', '.join(PERFORMANCE_HINTS)}")
        self.session: OvSession | None = None

    @classmethod
    def available(cls) -> tuple[bool, str]:
        ok, detail = available()
        if ok and cls.precision != "f32":
            supported, why = precision_supported(cls.precision)
            if not supported:
                return False, why
        return ok, detail

    def load(self) -> None:
        ok, why = self.available()
        if not ok:
            raise MissingDependencyError(f"{self.name} unavailable: {why}")
        path = self.artifact.ir_path or self.artifact.onnx_path
        if path is None:
            raise BadInputError(f"{self.artifact.label}: {self.name} needs an ONNX file or an OpenVINO IR; export it "
                                f"first")
        self.session = cpu_session(path, self.threads, self.hint, self.precision, label=str(path))
        self.output_names = [o.name for o in self.session.get_outputs()]

    def close(self) -> None:
        self.session = None

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))


class OvBf16Runner(OvRunner):
    name = "ov-cpu-bf16"
    precision = "bf16"
