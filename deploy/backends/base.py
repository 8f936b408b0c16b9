"""The runner contract: an artifact becomes ``infer(feeds) -> outputs`` on one backend.

A runner is a context manager: entering loads the artifact onto its device, leaving frees it.
``infer`` validates the feeds against the artifact's input specs so a wrong name, rank or static dim
fails with one clear line instead of a backend stack trace.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from ..artifacts.artifact import Artifact, TensorSpec
from ..errors import BadInputError, first_line


class Runner(ABC):
    """Runs one artifact on one backend."""

    name: ClassVar[str]
    device: ClassVar[str] = "cpu"
    artifact_kind: ClassVar[str]  # "torch" or "onnx": what this runner executes natively
    also_runs: ClassVar[tuple[str, ...]] = ()  # other artifact kinds it loads as they are ("engine" for trt)

    def __init__(self, artifact: Artifact, threads: int | None = None, allow_spinning: bool = True):
        self.artifact = artifact
        self.threads = threads
        # Runtimes whose idle worker threads spin (ONNX Runtime) take cores from whatever runs next:
        # benchmarks that interleave several runners in one process turn this off.
        self.allow_spinning = allow_spinning
        self.input_specs: list[TensorSpec] = list(artifact.inputs)

    @classmethod
    @abstractmethod
    def available(cls) -> tuple[bool, str]:
        """(True, detail) when this machine can run the backend, else (False, why not)."""

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None:
        """Free what ``load`` took (default: nothing)."""

    def __enter__(self) -> Runner:
        self.load()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.validate(feeds)
        try:
            return self._run(feeds)
        except Exception as err:  # the model itself failed on these inputs
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feeds.items())
            raise BadInputError(f"{self.artifact.label}: fails on {self.name} with inputs {shapes}: "
                                f"{first_line(err)} (wrong --shape, or a batch size baked into the model?)"
                                ) from None

    def timer(self, feeds: dict[str, np.ndarray], include_copies: bool = False,
              cuda_graphs: bool = False) -> Callable[[], float]:
        """A closure running one inference on ``feeds`` and returning its seconds.

        The default is host wall time around the whole call, which is what a CPU backend costs.
        Device runners override it to time the device alone (``include_copies`` adds the host↔device
        copies back) and may replay a captured CUDA graph.
        """
        self.validate(feeds)

        def once() -> float:
            start = time.perf_counter()
            self._run(feeds)
            return time.perf_counter() - start

        return once

    def validate(self, feeds: dict[str, np.ndarray]) -> None:
        expected = {s.name: s for s in self.input_specs}
        if set(feeds) != set(expected):
            raise BadInputError(
                f"{self.artifact.label}: inputs {sorted(feeds)} given, the model takes {sorted(expected)}"
            )
        for name, array in feeds.items():
            spec = expected[name]
            if array.ndim != len(spec.shape):
                raise BadInputError(
                    f"{self.artifact.label}: input '{name}' has rank {array.ndim}, expected {len(spec.shape)} "
                    f"(shape {spec.shape})"
                )
            for axis, (got, want) in enumerate(zip(array.shape, spec.shape)):
                if isinstance(want, int) and want > 0 and got != want:
                    raise BadInputError(
                        f"{self.artifact.label}: input '{name}' dim {axis} is {got}, the model fixes it at "
                        f"{want} (shape {spec.shape})"
                    )
