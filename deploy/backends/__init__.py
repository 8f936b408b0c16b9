"""Backend runners: each turns an artifact into ``infer(feeds) -> outputs`` on one device/runtime.

Holds: the runner contract (:mod:`.base`), the registry of names (:mod:`.registry`), the PyTorch, ONNX
Runtime and TensorRT runners, the TensorRT builder (:mod:`.trt_build`) and what ONNX Runtime's optimized graph
runs in integer kernels (:mod:`.ort_graph`).

May import: ``deploy.artifacts`` and below (``deploy.ort``, ``deploy.gpu``, ``deploy.errors``, the passes).
"""

from .registry import BACKENDS, backend_status, get_runner_class, parse_backend_list

__all__ = ["BACKENDS", "backend_status", "get_runner_class", "parse_backend_list"]
