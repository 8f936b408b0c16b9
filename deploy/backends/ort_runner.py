"""ONNX Runtime runners: ``ort-cpu`` and ``ort-cuda`` (onnxruntime is imported when a runner loads)."""

from __future__ import annotations

import time

import numpy as np

from ..errors import BadInputError, MissingDependencyError, first_line
from ..ort import provider_available, session_options
from .base import Runner


class OrtRunner(Runner):
    artifact_kind = "onnx"
    name = "ort-cpu"
    device = "cpu"
    provider = "CPUExecutionProvider"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return provider_available(cls.provider)

    def session_options(self):
        return session_options(self.threads, allow_spinning=self.allow_spinning)

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
            raise BadInputError(f"{path}: ONNX Runtime cannot load it: {first_line(err)}") from None
        if self.provider not in self.session.get_providers():
            # the wheel lists the provider, but it could not start (CUDA/cuDNN libraries): ORT fell back
            raise MissingDependencyError(f"{self.name} unavailable: ONNX Runtime could not start "
                                         f"{self.provider} (CUDA/cuDNN libraries?) and fell back to "
                                         f"{self.session.get_providers()}")
        self.output_names = [o.name for o in self.session.get_outputs()]

    def close(self) -> None:
        self.session = None

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, results))


class OrtCudaRunner(OrtRunner):
    """ONNX Runtime's CUDA provider, timed through I/O binding (not yet run on a GPU by this project's tests).

    By default inputs are placed on the device and outputs left there, so only the device work is
    timed; ``include_copies`` binds host buffers instead, adding both copies. ``run_with_iobinding``
    returns after the provider synchronises its stream, so host wall time is device time here.
    """

    name = "ort-cuda"
    device = "cuda"
    provider = "CUDAExecutionProvider"

    def timer(self, feeds: dict[str, np.ndarray], include_copies: bool = False, cuda_graphs: bool = False):
        import onnxruntime as ort

        self.validate(feeds)
        binding = self.session.io_binding()
        for name, array in feeds.items():
            if include_copies:
                binding.bind_cpu_input(name, np.ascontiguousarray(array))
            else:
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array),
                                                                                   "cuda", 0))
        for name in self.output_names:
            binding.bind_output(name, "cpu" if include_copies else "cuda")

        def once() -> float:
            start = time.perf_counter()
            self.session.run_with_iobinding(binding)
            if include_copies:
                binding.copy_outputs_to_cpu()
            return time.perf_counter() - start

        return once
