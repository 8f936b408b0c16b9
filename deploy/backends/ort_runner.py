"""ONNX Runtime runners: ``ort-cpu`` and ``ort-cuda`` (onnxruntime is imported when a runner loads)."""

from __future__ import annotations

import numpy as np

from ..errors import BadInputError, MissingDependencyError
from .base import Runner


class OrtRunner(Runner):
    artifact_kind = "onnx"
    name = "ort-cpu"
    device = "cpu"
    provider = "CPUExecutionProvider"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError:
            return False, "onnxruntime is not installed (pip install onnxruntime)"
        if cls.provider not in ort.get_available_providers():
            return False, f"onnxruntime {ort.__version__} has no {cls.provider} (pip install onnxruntime-gpu)"
        return True, f"onnxruntime {ort.__version__}"

    def session_options(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        return options

    def load(self) -> None:
        ok, why = self.available()
        if not ok:
            raise MissingDependencyError(f"{self.name} unavailable: {why}")
        import onnxruntime as ort

        path = self.artifact.onnx_path
        if path is None:
            raise BadInputError(f"{self.artifact.label}: {self.name} needs an ONNX file; export it first")
        try:
            self.session = ort.InferenceSession(str(path), self.session_options(), providers=[self.provider])
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BadInputError(f"{path}: ONNX Runtime cannot load it: {first}") from None
        self.output_names = [o.name for o in self.session.get_outputs()]

    def close(self) -> None:
        self.session = None

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, results))


class OrtCudaRunner(OrtRunner):
    name = "ort-cuda"
    device = "cuda"
    provider = "CUDAExecutionProvider"
