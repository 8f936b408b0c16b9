"""The one held-out judge: a reference's outputs on held-out data, computed once, and every candidate judged
against them the same way — by `deploy quantize` (its tournament, mixed precision, the final file) and by
`deploy pipeline` / `deploy verify` (their certificates).

What a judgement holds (first output; a, reference; b, candidate):
  * the comparison of :func:`deploy.harness.compare.diff_output` (SQNR, mean-centred SQNR, cosine, max rel);
  * top-1 agreement with the reference, in % of samples, with its 95 % Wilson interval;
  * accuracy against the labels, in %, when the data has them;
  * the drop in top-1 points: the accuracy drop with labels, else 100 − agreement (the share of decisions
    that changed).
Top-1 figures are percentages everywhere a user reads them (``Tolerance.min_top1`` and
``OutputDiff.top1`` stay fractions: they are the comparison's own units).

A budget (:class:`Budget`) is ``max_drop`` top-1 points and/or ``min_sqnr`` dB of mean-centred SQNR.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import BadInputError
from .compare import OutputDiff, Tolerance, accuracy, diff_output


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion, in %: 58 agreements in 64 samples (90.6 %) give [81.0, 95.6]."""
    if n == 0:
        return (0.0, 100.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(100 * max(0.0, centre - half), 2), round(100 * min(1.0, centre + half), 2))


def top1_drop(accuracy_now: float | None, reference_accuracy: float | None, agreement: float | None) -> float | None:
    """Top-1 points lost: the accuracy drop with labels, else disagreement with the reference (100 − agreement)."""
    if accuracy_now is not None and reference_accuracy is not None:
        return reference_accuracy - accuracy_now
    return None if agreement is None else 100.0 - agreement


@dataclass(frozen=True)
class Budget:
    """What a result may lose: ``max_drop`` top-1 points and/or ``min_sqnr`` dB of mean-centred SQNR."""

    max_drop: float | None = None
    min_sqnr: float | None = None

    def __post_init__(self) -> None:
        if self.max_drop is not None and not 0 <= self.max_drop <= 100:
            raise BadInputError(f"--max-drop {self.max_drop:g}: give top-1 points between 0 and 100, e.g. 1.0")
        if self.min_sqnr is not None and not math.isfinite(self.min_sqnr):
            raise BadInputError(f"--min-sqnr {self.min_sqnr}: give a finite number of dB, e.g. 30")

    @property
    def given(self) -> bool:
        return self.max_drop is not None or self.min_sqnr is not None

    def describe(self, labels: bool) -> str:
        parts = []
        if self.max_drop is not None:
            parts.append(f"{'accuracy drop' if labels else 'top-1 disagreement with fp32'} ≤ {self.max_drop:g} points")
        if self.min_sqnr is not None:
            parts.append(f"centred SQNR ≥ {self.min_sqnr:g} dB")
        return " and ".join(parts)

    def misses(self, judged) -> list[str]:
        """Why a judgement (anything with ``drop`` and ``centred_sqnr_db``) is over budget; empty: within."""
        out = []
        if self.max_drop is not None:
            if judged.drop is None:
                out.append("no top-1 to judge --max-drop by (not a classifier output; use --min-sqnr)")
            elif judged.drop > self.max_drop + 1e-9:
                out.append(f"drop {judged.drop:.2f} > {self.max_drop:g} points")
        if self.min_sqnr is not None and not judged.centred_sqnr_db >= self.min_sqnr:
            out.append(f"centred SQNR {judged.centred_sqnr_db:.1f} < {self.min_sqnr:g} dB")
        return out


@dataclass
class Judgement:
    """One candidate's outputs judged against the reference on the held-out data."""

    diff: OutputDiff
    samples: int
    agreement: float | None  # % of samples whose argmax matches the reference
    agreement_interval: tuple[float, float] | None
    accuracy: float | None  # % against the labels
    drop: float | None  # top-1 points lost

    @property
    def centred_sqnr_db(self) -> float:
        return self.diff.centred_sqnr_db


class HeldOut:
    """The reference's first output on held-out batches, computed once; :meth:`judge` compares a candidate's.

    ``run(batch) -> first output`` runs the reference; ``batches`` are the held-out feeds in runs of the model's
    batch; ``labels`` (optional) are their classes. Subclasses say how a candidate is run."""

    def __init__(self, batches: list, labels: np.ndarray | None, reference: np.ndarray | None = None,
                 run_reference: Callable | None = None):
        self.batches = batches
        self.labels = None if labels is None else np.asarray(labels)
        self.reference = reference if reference is not None else \
            np.concatenate([run_reference(b) for b in batches])
        self.reference_accuracy = accuracy(self.reference, self.labels)

    @property
    def has_top1(self) -> bool:
        """Whether the first output is a classifier's, (N, classes): what a top-1 budget needs."""
        return self.reference.ndim == 2 and self.reference.shape[1] > 1

    def judge(self, out: np.ndarray, name: str, tolerance: Tolerance) -> Judgement:
        """``out`` (the candidate's first output on the first len(out) held-out samples) against the reference."""
        n = len(out)
        d = diff_output(name, self.reference[:n], out, tolerance)
        agreement = None if d.top1 is None else d.top1 * 100
        interval = None if d.top1 is None else wilson_interval(round(d.top1 * n), n)
        acc = accuracy(out, None if self.labels is None else self.labels[:n])
        return Judgement(d, n, agreement, interval, acc, top1_drop(acc, self.reference_accuracy, agreement))
