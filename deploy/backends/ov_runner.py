"""OpenVINO's CPU plugin: ``ov-cpu`` (openvino is imported when the runner loads).

It reads our ONNX files directly (``Core.read_model``), compiles them for the CPU with the thread count, a
latency hint and f32 inference precision (the plugin's default is bf16 where the CPU has it, which changes what
an fp32 file computes), and runs one infer request per call. A free batch dim stays dynamic (the CPU plugin compiles
dynamic shapes); Q/DQ int8 files run on its int8 kernels as written.
"""

from __future__ import annotations

import numpy as np

from ..errors import BadInputError, MissingDependencyError, first_line
from .base import Runner


def cpu_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin says this CPU can run (FP32, INT8, BF16, FP16, …); empty without openvino."""
    try:
        import openvino as ov

        return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # not installed, or a plugin that cannot start here
        return []


class OvRunner(Runner):
    artifact_kind = "onnx"
    name = "ov-cpu"
    device = "cpu"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import openvino as ov
        except ImportError:
            return False, "openvino is not installed (pip install openvino)"
        try:
            core = ov.Core()
            if "CPU" not in core.available_devices:
                return False, f"openvino {ov.__version__} has no CPU plugin here"
        except Exception as err:  # the plugin failed to start
            return False, f"openvino {ov.__version__}: {first_line(err)}"
        capabilities = ", ".join(c for c in cpu_capabilities() if c in ("INT8", "BF16", "FP16"))
        return True, f"openvino {ov.__version__.split('-')[0]} (CPU: {capabilities or 'FP32 only'})"

    def load(self) -> None:
        ok, why = self.available()
        if not ok:
            raise MissingDependencyError(f"{self.name} unavailable: {why}")
        import openvino as ov

        path = self.artifact.onnx_path
        if path is None:
            raise BadInputError(f"{self.artifact.label}: {self.name} needs an ONNX file; export it first")
        # f32: on a CPU with bf16 the plugin would otherwise compute float layers in bf16 by default (measured:
        # resnet18 at max rel 7.5e-3 against ONNX Runtime) — what the file says is what runs; bf16 is a choice
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        try:
            core = ov.Core()
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as err:  # OpenVINO raises RuntimeError with its own messages
            raise BadInputError(f"{path}: OpenVINO cannot compile it for the CPU: {first_line(err)}") from None
        self.request = self.compiled.create_infer_request()
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]

    def close(self) -> None:
        self.request = None
        self.compiled = None

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return {name: np.array(results[output]) for name, output in zip(self.output_names, self.compiled.outputs)}
