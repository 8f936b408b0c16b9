"""Backend runners: each turns an artifact into ``run(inputs) -> outputs`` on one device/runtime."""

from .registry import BACKENDS, backend_status, get_runner_class, parse_backend_list

__all__ = ["BACKENDS", "backend_status", "get_runner_class", "parse_backend_list"]
