"""What this machine offers the GPU paths, probed without importing anything heavy at module load.

TensorRT, pycuda and CUDA are optional: each probe imports its library only when called,
and every "no" comes with the exact reason, so ``deploy backends`` and ``deploy build`` can say what is
missing (no GPU, no driver, tensorrt not importable, a TensorRT too old) instead of a stack trace.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
from dataclasses import dataclass

from .errors import MissingDependencyError, first_line

SUPPORTED_TENSORRT = (10, 11)  # the API majors deploy/backends/trt_build.py and the trt runner are written to
INSTALL_TRT = "pip install '.[trt]' (tensorrt, pycuda) on a machine with an NVIDIA GPU and driver"


@dataclass(frozen=True)
class Probe:
    ok: bool
    detail: str


def driver_probe() -> Probe:
    """An NVIDIA kernel driver: its version file, or nvidia-smi on the PATH."""
    version_file = "/proc/driver/nvidia/version"
    if os.path.exists(version_file):
        try:
            with open(version_file) as handle:
                first = handle.readline()
        except OSError:
            first = ""
        words = first.split()
        version = next((w for w in words if w[:1].isdigit() and "." in w), "")
        return Probe(True, f"NVIDIA driver {version}".strip())
    if shutil.which("nvidia-smi"):
        return Probe(True, "nvidia-smi found")
    return Probe(False, "no NVIDIA driver")


@functools.lru_cache(maxsize=1)
def import_tensorrt():
    """The tensorrt module (``tensorrt``, or ``tensorrt_bindings`` from a bindings-only wheel), or None."""
    for name in ("tensorrt", "tensorrt_bindings"):
        try:
            return importlib.import_module(name)
        except Exception:  # ImportError, or OSError when libnvinfer.so is missing
            continue
    return None


def tensorrt_error() -> str:
    """Why ``import tensorrt`` fails here, in one line (the library's own first line)."""
    try:
        importlib.import_module("tensorrt")
    except Exception as err:  # noqa: BLE001 - any import failure is the answer we want
        text = first_line(err)
        return f"tensorrt not importable ({text[:160]})"
    return ""


def tensorrt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def tensorrt_probe() -> Probe:
    trt = import_tensorrt()
    if trt is None:
        return Probe(False, tensorrt_error() or "tensorrt not importable")
    major = tensorrt_major(trt)
    if major not in SUPPORTED_TENSORRT:
        return Probe(False, f"TensorRT {trt.__version__} found; deploy supports TensorRT 10 and 11")
    return Probe(True, f"TensorRT {trt.__version__}")


def cuda_memory_probe() -> Probe:
    """Device buffers for the trt runner: torch with CUDA, else pycuda."""
    try:
        import torch

        if torch.cuda.is_available():
            return Probe(True, f"torch {torch.__version__} CUDA {torch.version.cuda}")
        torch_why = ("torch is a CPU-only build" if torch.version.cuda is None else "torch sees no CUDA device")
    except ImportError:
        torch_why = "no torch"
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() > 0:
            return Probe(True, f"pycuda, CUDA driver API {'.'.join(map(str, cuda.get_version()))}")
        return Probe(False, f"no CUDA buffers ({torch_why}, pycuda sees no device)")
    except ImportError:
        return Probe(False, f"no CUDA buffers ({torch_why}, pycuda not installed)")
    except Exception as err:  # pycuda.driver.Error: no device, driver too old
        return Probe(False, f"no CUDA buffers ({torch_why}, pycuda: {str(err).strip()[:100]})")


def trt_status() -> Probe:
    """Whether the trt backend can run here, naming every missing piece at once."""
    parts = [driver_probe(), tensorrt_probe(), cuda_memory_probe()]
    missing = [p.detail for p in parts if not p.ok]
    if missing:
        hint = f" — {INSTALL_TRT}" if not (parts[1].ok and parts[2].ok) else ""
        return Probe(False, "; ".join(missing) + hint)
    return Probe(True, ", ".join(p.detail for p in parts))


def require_tensorrt():
    """The tensorrt module, or MissingDependencyError (exit 3) saying what is missing."""
    status = trt_status()
    if not status.ok:
        raise MissingDependencyError(f"TensorRT unavailable: {status.detail}")
    return import_tensorrt()


def device_facts() -> dict:
    """GPU name, compute capability, driver and CUDA versions of device 0, as far as they can be read.

    This is what an engine and a timing cache are specific to (TensorRT "Optimizing Builder Performance"):
    the sidecar records it at build time and the loader compares it at run time."""
    facts: dict = {"gpu": None, "compute_capability": None, "driver": None, "cuda": None}
    driver = driver_probe()
    if driver.ok and driver.detail.startswith("NVIDIA driver "):
        facts["driver"] = driver.detail.removeprefix("NVIDIA driver ")
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            facts.update(gpu=torch.cuda.get_device_name(0), compute_capability=f"{major}.{minor}",
                         cuda=torch.version.cuda)
            return facts
    except ImportError:
        pass
    try:
        import pycuda.driver as cuda

        cuda.init()
        device = cuda.Device(0)
        major, minor = device.compute_capability()
        facts.update(gpu=device.name(), compute_capability=f"{major}.{minor}",
                     cuda=".".join(map(str, cuda.get_version())))
    except Exception:  # no pycuda or no device: the facts stay unknown
        pass
    return facts
