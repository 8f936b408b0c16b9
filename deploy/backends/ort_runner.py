"""ONNX Runtime runners: ``ort-cpu`` and ``ort-cuda`` (onnxruntime is imported when a runner loads)."""

from __future__ import annotations

import time

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
            return False, (f"onnxruntime {ort.__version__} has no {cls.provider} "
                           f"(pip install '.[cuda]' for onnxruntime-gpu)")
        return True, f"onnxruntime {ort.__version__}"

    def session_options(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        if not self.allow_spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
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


def cpu_session(model, threads: int | None = None, optimized_path: str | None = None,
                provider: str = "CPUExecutionProvider", optimize: bool = True, allow_spinning: bool = True):
    """An ONNX Runtime session on a model given as a ModelProto, bytes or a path (calibration and
    scoring inside ``deploy quantize``, debug's tensor reads, where the models live in memory). With
    ``optimized_path`` ORT writes the graph it will actually run (after its fusions) there; ``optimize``
    False runs the graph as written (the noise floor of ORT's own optimizations). ``provider`` is the CPU
    one unless a caller checked another's availability itself."""
    if provider == "CPUExecutionProvider":
        ok, why = OrtRunner.available()
        if not ok:
            raise MissingDependencyError(f"ort-cpu unavailable: {why}")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if optimized_path:
        options.optimized_model_filepath = str(optimized_path)
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if not allow_spinning:  # sessions timed against each other: a spinning pool slows whoever runs next
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model) \
        if not isinstance(model, bytes) else model
    try:
        return ort.InferenceSession(source, options, providers=[provider])
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadInputError(f"ONNX Runtime cannot load the model: {first}") from None


def session_timer(session, feeds: dict[str, np.ndarray]):
    """A callable that runs ``session`` once on ``feeds`` and returns the seconds it took (for bench.interleave)."""
    def once() -> float:
        start = time.perf_counter()
        session.run(None, feeds)
        return time.perf_counter() - start

    return once


def run_function(session, outputs: list[str] | None = None):
    """``session`` as a ``run(feeds) -> {name: array}`` callable (what ``deploy.calib`` is handed)."""
    names = outputs or [o.name for o in session.get_outputs()]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, feeds)))

    return run


def optimized_graph(model, threads: int | None = 1, provider: str = "CPUExecutionProvider"):
    """The graph ONNX Runtime runs after its optimizations (e.g. QLinearConv), as an onnx.ModelProto."""
    import tempfile
    from pathlib import Path

    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "optimized.onnx"
        cpu_session(model, threads=threads, optimized_path=str(path), provider=provider)
        return onnx.load(str(path))


def optimized_op_counts(model, threads: int | None = 1, provider: str = "CPUExecutionProvider") -> dict[str, int]:
    """Op types of the graph ONNX Runtime CPU really runs, after its optimizations (e.g. QLinearConv)."""
    from collections import Counter

    return dict(Counter(node.op_type for node in optimized_graph(model, threads, provider).graph.node))
