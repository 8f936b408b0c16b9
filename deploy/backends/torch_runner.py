"""PyTorch eager runners: ``torch-cpu`` and ``torch-cuda``."""

from __future__ import annotations

import copy
import functools

import numpy as np
import torch

from ..artifacts.artifact import name_outputs
from ..errors import BadInputError, MissingDependencyError
from .base import Runner


class TorchRunner(Runner):
    artifact_kind = "torch"
    name = "torch-cpu"
    device = "cpu"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return True, f"torch {torch.__version__}"

    def load(self) -> None:
        if self.artifact.module is None:
            raise BadInputError(
                f"{self.artifact.label}: {self.name} runs PyTorch models, not ONNX files; use an ort-* backend"
            )
        self._saved_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        module = self.artifact.module
        # a device runner gets its own copy: the artifact may be shared with a CPU runner in the same bench
        self.module = (module if self.device == "cpu" else copy.deepcopy(module).to(self.device)).eval()

    def close(self) -> None:
        torch.set_num_threads(self._saved_threads)
        if self.device != "cpu":
            self.module = None
            torch.cuda.empty_cache()

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[s.name])).to(self.device) for s in self.input_specs]
        with torch.inference_mode():
            outputs = name_outputs(self.module(*args))
        return {k: v.detach().float().cpu().numpy() for k, v in outputs.items()}


class TorchFloat64Runner(TorchRunner):
    """PyTorch on CPU in float64: the exact function of a model, the reference that exact passes and
    exports are judged against (not a serving backend, so not in the backend table)."""

    name = "torch-cpu-fp64"

    def load(self) -> None:
        super().load()
        self.module = copy.deepcopy(self.module).double()

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = []
        for s in self.input_specs:
            t = torch.from_numpy(np.ascontiguousarray(feeds[s.name]))
            args.append(t.double() if t.is_floating_point() else t)
        with torch.inference_mode():
            outputs = name_outputs(self.module(*args))
        return {k: v.detach().double().numpy() for k, v in outputs.items()}


class TorchCudaRunner(TorchRunner):
    """PyTorch on CUDA, timed with CUDA events (not yet run on a GPU by this project's tests)."""

    name = "torch-cuda"
    device = "cuda"

    def timer(self, feeds: dict[str, np.ndarray], include_copies: bool = False,
              cuda_graphs: bool = False):
        self.validate(feeds)
        host = [torch.from_numpy(np.ascontiguousarray(feeds[s.name])) for s in self.input_specs]
        if include_copies:
            host = [t.pin_memory() for t in host]
        staged = [t.to(self.device) for t in host]
        forward = functools.partial(self.module, *staged)
        if cuda_graphs and not include_copies:
            forward = self._capture_graph(staged)

        def once() -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.inference_mode():
                start.record()
                if include_copies:
                    outputs = name_outputs(self.module(*[t.to(self.device, non_blocking=True) for t in host]))
                    for value in outputs.values():
                        value.to("cpu", non_blocking=True)
                else:
                    forward()
                end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0

        return once

    def _capture_graph(self, staged: list[torch.Tensor]):
        """Capture one forward pass as a CUDA graph (after warm-up on a side stream, as CUDA requires)."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(3):
                self.module(*staged)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            self.module(*staged)
        return graph.replay

    @classmethod
    def available(cls) -> tuple[bool, str]:
        if not torch.cuda.is_available():
            build = "CPU-only build of torch" if torch.version.cuda is None else "no CUDA device visible"
            return False, f"torch {torch.__version__}: {build}"
        return True, torch.cuda.get_device_name(0)

    def load(self) -> None:
        ok, why = self.available()
        if not ok:
            raise MissingDependencyError(f"{self.name} unavailable: {why}")
        super().load()

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super()._run(feeds)
        torch.cuda.synchronize()
        return out
