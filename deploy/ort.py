"""The one place deploy opens ONNX Runtime in-process: availability, session options, sessions on a file or
a model in memory, and the small callables built on a session (a timer, a ``run(feeds)`` function, the graph
ORT really runs).

Every session is made here so settings cannot drift between callers. Thread spinning: ONNX Runtime's pool
spins between runs, which helps a session run alone (calibration, scoring) and slows whichever session runs
next when several are timed in turn, so every caller that times passes ``allow_spinning=False`` — as the
ort-cpu runner does under ``deploy bench`` (measured in :mod:`deploy.harness.bench`). Imports nothing of deploy
but the errors; onnxruntime is imported when a function is called.
"""

from __future__ import annotations

import time

import numpy as np

from .errors import BadInputError, MissingDependencyError, first_line


def provider_available(provider: str = "CPUExecutionProvider") -> tuple[bool, str]:
    """Whether this onnxruntime has ``provider``, and what it is (or why not)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False, "onnxruntime is not installed (pip install onnxruntime)"
    if provider not in ort.get_available_providers():
        return False, (f"onnxruntime {ort.__version__} has no {provider} "
                       f"(pip install '.[cuda]' for onnxruntime-gpu)")
    return True, f"onnxruntime {ort.__version__}"


def session_options(threads: int | None = None, *, allow_spinning: bool = True, optimize: bool = True,
                    optimized_path: str | None = None):
    """ONNX Runtime session options: ``threads`` intra-op threads (one inter-op), spinning, the graph
    optimizations on or off, and where to write the optimized graph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_path:
        options.optimized_model_filepath = str(optimized_path)
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if not allow_spinning:  # sessions timed against each other: a spinning pool slows whoever runs next
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def cpu_session(model, threads: int | None = None, optimized_path: str | None = None,
                provider: str = "CPUExecutionProvider", optimize: bool = True, allow_spinning: bool = True):
    """An ONNX Runtime session on a model given as a ModelProto, bytes or a path (calibration and
    scoring inside ``deploy quantize``, debug's tensor reads, where the models live in memory). With
    ``optimized_path`` ORT writes the graph it will actually run (after its fusions) there; ``optimize``
    False runs the graph as written (the noise floor of ORT's own optimizations). ``provider`` is the CPU
    one unless a caller checked another's availability itself."""
    if provider == "CPUExecutionProvider":
        ok, why = provider_available(provider)
        if not ok:
            raise MissingDependencyError(f"ort-cpu unavailable: {why}")
    import onnxruntime as ort

    options = session_options(threads, allow_spinning=allow_spinning, optimize=optimize,
                              optimized_path=optimized_path)
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model) \
        if not isinstance(model, bytes) else model
    try:
        return ort.InferenceSession(source, options, providers=[provider])
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
        raise BadInputError(f"ONNX Runtime cannot load the model: {first_line(err)}") from None


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
