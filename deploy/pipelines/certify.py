"""Certificates: every candidate of a pipeline judged against one reference on held-out data.

The reference is the fp32 export, itself certified equal to the original at fp32 tolerance (harness), so
"against the export" is "against the original" within 1e-5. A candidate's certificate holds its mean-centred
SQNR, top-1 agreement with the reference (95 % Wilson interval), accuracy when the data has labels, and
whether it meets the budget. The same class re-runs the certificates for ``deploy verify``.

Budget (one of, or both): ``max_drop`` top-1 points — with labels the accuracy drop, else 100 − agreement
(the share of held-out samples whose decision changed) — and ``min_sqnr`` dB of mean-centred SQNR.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import BadInputError
from ..harness.compare import Tolerance, diff_output
from ..jobs.quantize import wilson_interval
from ..ort import cpu_session, run_function

DEFAULT_MAX_DROP = 1.0  # top-1 points, when the user gives no budget


@dataclass(frozen=True)
class Budget:
    max_drop: float | None = None
    min_sqnr: float | None = None

    def __post_init__(self) -> None:
        if self.max_drop is not None and not 0 <= self.max_drop <= 100:
            raise BadInputError(f"--max-drop {self.max_drop:g}: give top-1 points between 0 and 100, e.g. 1.0")
        if self.min_sqnr is not None and not math.isfinite(self.min_sqnr):
            raise BadInputError(f"--min-sqnr {self.min_sqnr}: give a finite number of dB, e.g. 30")

    @classmethod
    def of(cls, max_drop: float | None, min_sqnr: float | None) -> Budget:
        """The user's budget; none given: at most DEFAULT_MAX_DROP top-1 points."""
        if max_drop is None and min_sqnr is None:
            return cls(DEFAULT_MAX_DROP, None)
        return cls(max_drop, min_sqnr)

    def describe(self, labels: bool) -> str:
        parts = []
        if self.max_drop is not None:
            parts.append(f"{'accuracy drop' if labels else 'top-1 disagreement with fp32'} ≤ {self.max_drop:g} points")
        if self.min_sqnr is not None:
            parts.append(f"centred SQNR ≥ {self.min_sqnr:g} dB")
        return " and ".join(parts)

    def misses(self, cert: Certificate) -> list[str]:
        """Why ``cert`` is over budget (empty: within)."""
        out = []
        if self.max_drop is not None:
            if cert.drop is None:
                out.append("no top-1 to judge --max-drop by (not a classifier output; use --min-sqnr)")
            elif cert.drop > self.max_drop + 1e-9:
                out.append(f"drop {cert.drop:.2f} > {self.max_drop:g} points")
        if self.min_sqnr is not None and not cert.centred_sqnr_db >= self.min_sqnr:
            out.append(f"centred SQNR {cert.centred_sqnr_db:.1f} < {self.min_sqnr:g} dB")
        return out


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


class Certifier:
    """The reference's outputs on the held-out data, computed once; ``certify`` judges a candidate file.

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
        self.labels = None if labels is None else np.asarray(labels)[:stop]
        self.input = model.graph.input[0].name
        self.output = model.graph.output[0].name
        self.reference = self._outputs(reference)
        self.reference_accuracy = self._accuracy(self.reference)

    def _outputs(self, path: str | Path) -> np.ndarray:
        session = cpu_session(onnx.load(str(path)), self.threads)
        name = session.get_inputs()[0].name  # by position: a re-export may rename the input
        first = session.get_outputs()[0].name
        run = run_function(session, [first])
        return np.concatenate([run({name: self.array[i:i + self.batch]})[first]
                               for i in range(0, len(self.array), self.batch)])

    @property
    def has_top1(self) -> bool:
        """Whether the first output is a classifier's, (N, classes): what a top-1 budget needs."""
        return self.reference.ndim == 2 and self.reference.shape[1] > 1

    def _accuracy(self, logits: np.ndarray) -> float | None:
        if self.labels is None or logits.ndim != 2:
            return None
        labels = self.labels[:len(logits)]
        if labels.ndim == 2:
            labels = labels.argmax(1)
        return float((logits.argmax(1) == labels.reshape(-1)).mean() * 100)

    def certify(self, path: str | Path) -> Certificate:
        out = self._outputs(path)
        d = diff_output(self.output, self.reference, out, Tolerance())
        agreement = None if d.top1 is None else d.top1 * 100
        interval = None if d.top1 is None else wilson_interval(round(d.top1 * len(out)), len(out))
        accuracy = self._accuracy(out)
        if accuracy is not None and self.reference_accuracy is not None:
            drop = self.reference_accuracy - accuracy
        else:
            drop = None if agreement is None else 100.0 - agreement
        return Certificate(len(out), d.centred_sqnr_db, d.sqnr_db, d.cosine, d.max_rel, agreement, interval,
                           accuracy, self.reference_accuracy, drop)
