"""Certificates: every candidate of a pipeline judged against one reference on held-out data.

The reference is the fp32 export, itself certified equal to the original at fp32 tolerance (harness), so
"against the export" is "against the original" within 1e-5. A candidate's certificate holds its mean-centred
SQNR, top-1 agreement with the reference (95 % Wilson interval), accuracy when the data has labels, and
whether it meets the budget. The same class re-runs the certificates for ``deploy verify``.

The budget (:class:`deploy.harness.heldout.Budget`, one of, or both): ``max_drop`` top-1 points — with labels the
accuracy drop, else 100 − agreement (the share of held-out samples whose decision changed) — and ``min_sqnr`` dB
of mean-centred SQNR; none given, the pipeline's default is ``DEFAULT_MAX_DROP`` points.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from ..backends.cpu_sessions import open_session
from ..errors import BadInputError
from ..harness.compare import Tolerance
from ..harness.heldout import Budget, HeldOut
from ..ort import run_function

DEFAULT_MAX_DROP = 1.0  # top-1 points, when the user gives no budget


def default_budget(max_drop: float | None, min_sqnr: float | None) -> Budget:
    """The user's budget; none given: at most DEFAULT_MAX_DROP top-1 points."""
    if max_drop is None and min_sqnr is None:
        return Budget(DEFAULT_MAX_DROP, None)
    return Budget(max_drop, min_sqnr)


@dataclass
class Certificate:
    """One artifact judged on the held-out data against the reference (first output)."""

    samples: int
    centred_sqnr_db: float
    sqnr_db: float
    cosine: float
    max_rel: float
    agreement: float | None  # % of samples whose argmax matches the reference
    agreement_interval: tuple[float, float] | None
    accuracy: float | None  # % against the labels
    reference_accuracy: float | None
    drop: float | None  # top-1 points: accuracy drop with labels, else 100 − agreement

    def to_dict(self) -> dict:
        out = asdict(self)
        out["agreement_interval"] = list(self.agreement_interval) if self.agreement_interval else None
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else
                    (round(v, 6) if isinstance(v, float) else v)) for k, v in out.items()}

    def metric(self) -> tuple[str, float]:
        """The figure a user reads first: accuracy with labels, else agreement, else centred SQNR."""
        if self.accuracy is not None:
            return "accuracy", self.accuracy
        if self.agreement is not None:
            return "agreement", self.agreement
        return "centred_sqnr_db", self.centred_sqnr_db


class Certifier(HeldOut):
    """The reference's outputs on the held-out data, computed once; ``certify`` judges a candidate file
    (:class:`deploy.harness.heldout.HeldOut`, the judge `deploy quantize` uses too).

    ``batch``: samples per run (a file with a fixed batch runs that many; a partial last run is dropped)."""

    def __init__(self, reference: str | Path, array: np.ndarray, labels: np.ndarray | None,
                 threads: int | None = None, batch: int = 8):
        model = onnx.load(str(reference), load_external_data=True)
        dim = model.graph.input[0].type.tensor_type.shape.dim
        fixed = dim[0].dim_value if dim and dim[0].HasField("dim_value") else 0
        self.batch = fixed or batch
        stop = len(array) - len(array) % self.batch if fixed else len(array)
        if stop == 0:
            raise BadInputError(f"{reference}: {len(array)} held-out samples do not fill one run of its fixed batch "
                                f"{self.batch}; give more (--eval-samples)")
        self.array, self.threads = array[:stop], threads
        self.input = model.graph.input[0].name
        self.output = model.graph.output[0].name
        batches = [self.array[i:i + self.batch] for i in range(0, len(self.array), self.batch)]
        super().__init__(batches, None if labels is None else np.asarray(labels)[:stop],
                         reference=self._outputs(reference))

    def _outputs(self, path: str | Path, runtime: str = "ort-cpu") -> np.ndarray:
        session = open_session(onnx.load(str(path)), self.threads, runtime)
        name = session.get_inputs()[0].name  # by position: a re-export may rename the input
        first = session.get_outputs()[0].name
        run = run_function(session, [first])
        return np.concatenate([run({name: self.array[i:i + self.batch]})[first]
                               for i in range(0, len(self.array), self.batch)])

    def certify(self, path: str | Path, runtime: str = "ort-cpu") -> Certificate:
        """``path`` judged as it runs on ``runtime`` (an int8 file made for OpenVINO: on its int8 kernels)."""
        j = self.judge(self._outputs(path, runtime), self.output, Tolerance())
        d = j.diff
        return Certificate(j.samples, d.centred_sqnr_db, d.sqnr_db, d.cosine, d.max_rel, j.agreement,
                           j.agreement_interval, j.accuracy, self.reference_accuracy, j.drop)
