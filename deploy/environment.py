"""The machine a benchmark ran on: CPU model and the flags that decide kernel choice, cores, threads,
library versions, and the GPU (name, driver, clocks) when there is one. Every bench report holds it."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata

# CPU flags that change which kernels run: SIMD width and the integer dot-product/matrix units.
FLAGS_THAT_MATTER = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
                     "amx_bf16", "f16c")
LIBRARIES = ("torch", "onnxruntime", "onnxruntime-gpu", "openvino", "onnx", "numpy", "tensorrt")


def cpu_info() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = None
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "flags": [f for f in FLAGS_THAT_MATTER if f in flags],
            "logical_cores": os.cpu_count(), "physical_cores": physical, "usable_cores": affinity}


def library_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def gpu_info() -> list[dict]:
    """One dict per GPU from nvidia-smi (name, driver, SM clock now/max, memory); empty without one."""
    if not shutil.which("nvidia-smi"):
        return []
    fields = "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,memory.total,power.limit"
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = []
    for line in done.stdout.strip().splitlines():
        values = [v.strip() for v in line.split(",")]
        if len(values) == 7:
            gpus.append(dict(zip(("name", "driver", "sm_clock_mhz", "sm_clock_max_mhz", "mem_clock_mhz",
                                  "memory_mib", "power_limit_w"), values)))
    return gpus


def default_threads() -> int:
    """Physical cores (hyper-threads slow dense kernels down), within this process's CPU affinity."""
    info = cpu_info()
    return max(1, min(info["physical_cores"] or info["usable_cores"] or 1, info["usable_cores"] or 1))


def environment(threads: int | None = None) -> dict:
    return {"cpu": cpu_info(), "threads": threads, "libraries": library_versions(), "gpus": gpu_info(),
            "platform": platform.platform()}
