"""OpenVINO's CPU plugin: the one place a model is compiled for it (openvino is imported on first use).

:func:`cpu_session` compiles an ONNX file, an in-memory ``onnx.ModelProto`` or an OpenVINO IR (``.xml`` beside its
``.bin``) and returns an :class:`OvSession`, which answers ``run(names, feeds)``/``get_inputs()``/``get_outputs()``
as an ONNX Runtime session does — so :func:`deploy.ort.run_function`, :func:`deploy.ort.session_timer` and the
quantize judge take either runtime.

The inference precision is ``f32`` unless asked: on a CPU with bf16 the plugin's own default computes float layers
in bf16 (measured: resnet18 at max rel 7.5e-3 against ONNX Runtime), which changes what an fp32 file computes;
bf16 is a precision to choose and certify (:data:`PRECISION_HINTS`), never a silent default.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BadInputError, MissingDependencyError, first_line

PERFORMANCE_HINTS = ("latency", "throughput")
PRECISION_HINTS = {"f32": "f32", "bf16": "bf16", "f16": "f16"}  # ours → INFERENCE_PRECISION_HINT
IR_SUFFIX = ".xml"
# CPU flags (Linux /proc/cpuinfo names, as deploy.environment reads them) that decide which kernels OpenVINO's CPU
# plugin picks, in our words
CPU_FEATURES = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"),
                ("avx512_bf16", "AVX-512 BF16"), ("amx_int8", "AMX-INT8"), ("amx_bf16", "AMX-BF16"))


def available() -> tuple[bool, str]:
    """(True, "openvino X (…)") when OpenVINO's CPU plugin starts here, else (False, why not)."""
    try:
        import openvino as ov
    except ImportError:
        return False, "openvino is not installed (pip install openvino; `make setup` installs it)"
    try:
        if "CPU" not in _core().available_devices:
            return False, f"openvino {version()} has no CPU plugin here"
    except Exception as err:  # the plugin failed to start
        return False, f"openvino {ov.__version__}: {first_line(err)}"
    return True, f"openvino {version()} ({describe_cpu()})"


def version() -> str:
    import openvino as ov

    return ov.__version__.split("-")[0]


_CORE = []


def _core():
    """One ``ov.Core`` per process (it holds the loaded plugins)."""
    if not _CORE:
        import openvino as ov

        _CORE.append(ov.Core())
    return _CORE[0]


def capabilities() -> list[str]:
    """What the CPU plugin says it can compute in (FP32, INT8, BF16, FP16, …); empty without openvino."""
    try:
        return list(_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # not installed, or a plugin that cannot start here
        return []


def cpu_flags() -> list[str]:
    """The instruction sets of :data:`CPU_FEATURES` this CPU has (empty where /proc/cpuinfo is absent)."""
    from .environment import cpu_info

    flags = set(cpu_info()["flags"])
    return [name for flag, name in CPU_FEATURES if flag in flags]


def describe_cpu() -> str:
    """"CPU: INT8, BF16; AVX-512 VNNI, AMX-INT8, …" — the precisions OpenVINO reports and the features behind them."""
    precisions = [c for c in capabilities() if c in ("INT8", "BF16", "FP16")]
    flags = cpu_flags()
    text = f"CPU: {', '.join(precisions) or 'FP32 only'}"
    return text + (f"; {', '.join(flags)}" if flags else "")


def precision_supported(precision: str) -> tuple[bool, str]:
    """Whether the CPU plugin computes in ``precision`` here ("f32" always), and why not."""
    if precision not in PRECISION_HINTS:
        raise BadInputError(f"OpenVINO precision '{precision}': choose from {', '.join(PRECISION_HINTS)}")
    if precision == "f32":
        return True, ""
    wanted = {"bf16": "BF16", "f16": "FP16"}[precision]
    found = capabilities()
    if wanted in found:
        return True, ""
    return False, f"this CPU lacks {precision} (OpenVINO's CPU plugin reports {', '.join(found) or 'nothing'})"


def error_line(err: BaseException) -> str:
    """The line of an OpenVINO error that says what failed: its messages open with "Exception from <file>:<line>:"
    frames, one per layer they crossed."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(("Exception from", "Check '", "FrontEnd API failed"))]
    text = said[0] if said else first_line(err)
    return text if len(text) <= 300 else text[:297] + "…"


@dataclass(frozen=True)
class _Port:
    name: str
    shape: list
    type: str = "tensor(float)"


class OvSession:
    """A compiled model with ONNX Runtime's session calls (``run``, ``get_inputs``, ``get_outputs``)."""

    def __init__(self, compiled, label: str):
        self.compiled, self.label = compiled, label
        self.request = compiled.create_infer_request()
        self._outputs = {o.get_any_name(): o for o in compiled.outputs}
        self._names = {name: _port_names(o) for name, o in self._outputs.items()}

    def get_inputs(self) -> list[_Port]:
        return [_Port(i.get_any_name(), _dims(i)) for i in self.compiled.inputs]

    def get_outputs(self) -> list[_Port]:
        return [_Port(name, _dims(o)) for name, o in self._outputs.items()]

    def output(self, name: str):
        if name in self._outputs:
            return self._outputs[name]
        for key, names in self._names.items():  # a tensor with several names (an ONNX output renamed)
            if name in names:
                return self._outputs[key]
        raise BadInputError(f"{self.label}: no output '{name}' (it has {', '.join(self._outputs)})")

    def run(self, names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self.request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        # copies: the request's buffers are overwritten by the next call
        return [np.array(results[self.output(n)]) for n in (names or list(self._outputs))]

    def runtime_model(self):
        return self.compiled.get_runtime_model()


def _port_names(port) -> set[str]:
    try:
        return set(port.get_names())
    except Exception:  # a port without names
        return set()


def _dims(port) -> list:
    shape = port.get_partial_shape()
    return [d.get_length() if d.is_static else "?" for d in shape]


def read_model(model, label: str | None = None):
    """An ``ov.Model`` from a path (.onnx, or .xml with its .bin), ``onnx.ModelProto`` or serialized ONNX bytes."""
    core = _core()
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.suffix.lower() == IR_SUFFIX and not path.with_suffix(".bin").is_file():
            raise BadInputError(f"{path}: an OpenVINO IR needs its weights beside it ({path.with_suffix('.bin').name})")
        return core.read_model(str(path))
    if not isinstance(model, bytes):
        model = model.SerializeToString()
    return core.read_model(model)


def cpu_session(model, threads: int | None = None, hint: str = "latency", precision: str = "f32",
                label: str | None = None) -> OvSession:
    """``model`` (see :func:`read_model`) compiled for the CPU with ``threads``, a latency or throughput hint and an
    inference precision; OpenVINO's errors come back as one line naming the file."""
    ok, why = available()
    if not ok:
        raise MissingDependencyError(f"ov-cpu unavailable: {why}")
    if hint not in PERFORMANCE_HINTS:
        raise BadInputError(f"OpenVINO hint '{hint}': choose from {', '.join(PERFORMANCE_HINTS)}")
    supported, why = precision_supported(precision)
    if not supported:
        raise BadInputError(f"OpenVINO precision {precision}: {why}")
    label = label or (str(model) if isinstance(model, (str, os.PathLike)) else "the model")
    config = {"PERFORMANCE_HINT": hint.upper(), "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        compiled = _core().compile_model(read_model(model, label), "CPU", config)
    except BadInputError:
        raise
    except Exception as err:  # OpenVINO raises RuntimeError with its own messages
        raise BadInputError(f"{label}: OpenVINO cannot compile it for the CPU: {error_line(err)}") from None
    return OvSession(compiled, label)


def runtime_precisions(session: OvSession) -> Counter:
    """How the compiled model runs: (layer type, runtime precision) → count, from the plugin's runtime graph
    (``Convolution`` at ``u8``/``i8`` is an integer kernel; ``f32`` a float one)."""
    found: Counter = Counter()
    for node in session.runtime_model().get_ordered_ops():
        info = node.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else node.get_type_name()
        precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
        found[(kind, precision)] += 1
    return found


def integer_kernels(session: OvSession) -> dict[str, int]:
    """Convolutions (and FullyConnected/MatMul) the plugin runs on integers vs in float, and its Reorders."""
    counts = runtime_precisions(session)
    out = {"int8 convolutions": 0, "float convolutions": 0, "int8 matmuls": 0, "float matmuls": 0, "reorders": 0}
    for (kind, precision), n in counts.items():
        integer = precision.lower() in ("u8", "i8")
        if kind == "Convolution":
            out["int8 convolutions" if integer else "float convolutions"] += n
        elif kind in ("FullyConnected", "MatMul"):
            out["int8 matmuls" if integer else "float matmuls"] += n
        elif kind == "Reorder":
            out["reorders"] += n
    return out
