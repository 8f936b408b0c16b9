"""A session on one of the two CPU runtimes, by backend name: ONNX Runtime's, or OpenVINO's (which answers the
same ``run``/``get_inputs``/``get_outputs`` calls) — for the jobs that judge or time in-memory models on the
runtime a file is made for (quantize's held-out judge and placement timing, the pipeline's certificates)."""

from __future__ import annotations

from ..ort import cpu_session

CPU_RUNTIMES = {"ort-cpu": "ONNX Runtime CPU", "ov-cpu": "OpenVINO CPU"}


def open_session(model, threads: int | None = None, runtime: str = "ort-cpu", timing: bool = False):
    """``model`` (a path or an ``onnx.ModelProto``) ready to run on ``runtime``. ``timing``: ONNX Runtime's idle
    threads do not spin (they would take the cores from the entry timed next); OpenVINO's runs in f32 unless the
    file is int8 (see :mod:`deploy.ov`)."""
    if runtime in ("ov-cpu", "ov-cpu-bf16"):  # the second: float layers in bf16 (OpenVINO's precision hint)
        from ..ov import cpu_session as ov_session

        return ov_session(model, threads, precision="bf16" if runtime == "ov-cpu-bf16" else "f32")
    if runtime != "ort-cpu":
        raise ValueError(f"open_session: {runtime} is not a CPU runtime ({', '.join(CPU_RUNTIMES)})")
    return cpu_session(model, threads, allow_spinning=not timing)
