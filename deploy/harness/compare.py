"""Numeric equivalence of two artifacts: one :class:`OutputDiff` per output, judged by a tolerance.

Metrics (a = reference, b = candidate, per output, over all samples):
  max_abs  = max|a − b|
  max_rel  = max|a − b| / max|a|
  cosine   = the 5th percentile of the per-sample cosine similarities of a and b, over the samples whose
             reference is not ~0 (‖a‖ ≤ 1e-6 · the largest ‖a‖); those are counted apart (near_zero), as
             one near-empty output would otherwise set the score (cosine_min keeps the lowest of all)
  cosine_median: the median of the same
  sqnr_db  = 10·log10(Σa² / Σ(a − b)²)
  centred_sqnr_db: the same after removing each sample's mean from a and from the error — a random-
             weight net's nearly flat logits carry a large common offset that plain SQNR rewards
  channel_sqnr_db: the lowest SQNR of one channel along the feature axis (axis 1; for a 3-D output the
             shorter of axes 1 and 2, as detection heads lay out (N, 4 + classes, anchors) either way),
             over samples and positions — a dead score channel next to large box coordinates cannot
             hide in the whole output's cosine; worst_channel names it
  top1     = share of samples whose argmax agrees (2-D outputs of several classes)

Signal, not silence. The worst-channel rule exists to catch a score channel that int8 killed; a channel
that carries nothing on the data (a class absent from the images: its sigmoid scores ~0 everywhere) has an
SQNR of −∞ dB from one quantization step of noise. So a *score* channel (every fp32 value in [0, 1], the
range a uint8 score is quantized over, one step = 1/255) whose fp32 values all stay below SILENT_STEPS
steps is silent: it is judged in steps, not dB — int8 must keep each of its values within SILENT_STEPS
steps of fp32 (a false score of 0.5 on an absent class still fails), and silent_channels counts them.
A killed live channel (fp32 scores up to 0.9, int8 0) is never silent.

Probability outputs. When every position of an output is a distribution over the feature axis (values in
[0, 1] summing to 1: a softmax), cosine measures the wrong thing — near-uniform distributions have a high
cosine whatever happens, confident ones a low one for a harmless 0.9 → 0.8. The preset then judges the
total variation distance TV = ½·Σ|p − q| (the probability mass moved, which bounds how far any decision
made from the distribution can move) at its 95th percentile over positions (tv_p95) in place of the cosine;
cosine 0.99 on a confident two-way output allows TV ≈ 0.12, so int8's max_tv = 0.1 is no looser.
top1_positions is the share of positions whose argmax agrees (for a (N, T, classes) sequence: per step).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from ..artifacts.files import jsonable
from ..errors import BadInputError
from ..reporting import Report


@dataclass(frozen=True)
class Tolerance:
    """Thresholds an output must meet; None means not judged."""

    max_rel: float | None = None
    max_abs: float | None = None
    min_cosine: float | None = None
    min_sqnr_db: float | None = None
    min_top1: float | None = None
    min_channel_sqnr_db: float | None = None
    max_tv: float | None = None  # probability outputs only: judged instead of min_cosine (module docstring)

    def describe(self) -> str:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return ", ".join(f"{k}={v:g}" for k, v in values.items() if v is not None)


PRESETS: dict[str, Tolerance] = {
    "fp32": Tolerance(max_rel=1e-5),
    # fp16 by energy, not by its worst element: a saturating sigmoid map has elements off by 2e-2 at
    # 60 dB overall; float16's 11-bit mantissa gives ~60 dB on a healthy network (resnet18: 62 dB, its
    # worst class 39 dB on 8 photos)
    "fp16": Tolerance(min_cosine=0.9999, min_sqnr_db=40.0, min_channel_sqnr_db=20.0),
    # bf16 (OpenVINO's bf16 inference precision, ov-cpu-bf16) is held to the same 16-bit-float bar as fp16, not a
    # looser one for its 8-bit mantissa: resnet18 computed in bf16 on AMX meets it (cosine 0.99994)
    "bf16": Tolerance(min_cosine=0.9999, min_sqnr_db=40.0, min_channel_sqnr_db=20.0),
    # a channel at 3 dB keeps about half its signal: a collapsed score channel (0 dB when zeroed) fails,
    # a rarely active class of a healthy int8 classifier (resnet18: 8 dB on 8 photos) passes
    "int8": Tolerance(min_cosine=0.99, min_channel_sqnr_db=3.0, max_tv=0.1),
}
NEAR_ZERO = 1e-6
SCORE_STEP = 1.0 / 255.0  # one step of a uint8 score over [0, 1]
SILENT_STEPS = 2.0  # a score channel below this many steps in fp32 carries no signal int8 can represent
DISTRIBUTION_SUM = 1e-3  # |Σp − 1| at every position: the output is a probability distribution


def parse_tolerance_overrides(items: list[str]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """``["max_rel=1e-4", "logits:min_cosine=0.999"]`` → (for all outputs, per output name)."""
    known = {f.name for f in fields(Tolerance)}
    common: dict[str, float] = {}
    per_output: dict[str, dict[str, float]] = {}
    for item in items:
        target, _, assignment = item.rpartition(":") if ":" in item else ("", "", item)
        key, eq, value = assignment.partition("=")
        if not eq or key not in known:
            keys = ", ".join(sorted(known))
            raise BadInputError(f"--tol '{item}': expected [OUTPUT:]KEY=VALUE with KEY one of {keys}")
        try:
            number = float(value)
        except ValueError:
            raise BadInputError(f"--tol '{item}': '{value}' is not a number") from None
        (per_output.setdefault(target, {}) if target else common)[key] = number
    return common, per_output


@dataclass
class OutputDiff:
    name: str
    shape: list[int]
    max_abs: float
    max_rel: float
    cosine: float
    sqnr_db: float
    centred_sqnr_db: float
    top1: float | None
    tolerance: Tolerance
    failures: list[str] = field(default_factory=list)
    reference_fp32_error: float | None = None  # the reference's own fp32 vs float64 max rel error
    cosine_median: float | None = None
    cosine_min: float | None = None
    near_zero: int = 0  # samples whose reference is ~0, left out of the cosine
    channel_sqnr_db: float | None = None
    worst_channel: int | None = None
    silent_channels: int = 0  # score channels below SILENT_STEPS steps in fp32, judged in steps (docstring)
    distribution_axis: int | None = None  # the axis a probability output sums to 1 along
    tv_p95: float | None = None  # 95th percentile of the total variation distance per position
    top1_positions: float | None = None  # share of positions whose argmax agrees (probability outputs)

    @property
    def passed(self) -> bool:
        return not self.failures

    def shortfall(self) -> float:
        """How far the output is from its tolerance, summed over the criteria it misses, each in units of its
        own margin (cosine: of 1 − min_cosine; total variation: of max_tv; dB: per 10 dB; top-1: per point);
        0 when it passes. Lets a search tell which of two failing candidates is nearer the preset."""
        t, total = self.tolerance, 0.0
        if self.distribution_axis is not None and t.max_tv is not None and self.tv_p95 is not None:
            total += max(0.0, (self.tv_p95 - t.max_tv) / t.max_tv)
        elif t.min_cosine is not None:
            total += max(0.0, (t.min_cosine - self.cosine) / max(1e-9, 1.0 - t.min_cosine))
        if t.min_channel_sqnr_db is not None and self.channel_sqnr_db is not None:
            total += max(0.0, (t.min_channel_sqnr_db - max(self.channel_sqnr_db, -100.0)) / 10.0)
        if t.min_sqnr_db is not None:
            total += max(0.0, (t.min_sqnr_db - max(self.sqnr_db, -100.0)) / 10.0)
        if t.min_top1 is not None and self.top1 is not None:
            total += max(0.0, (t.min_top1 - self.top1) * 100.0)
        for limit, value in ((t.max_rel, self.max_rel), (t.max_abs, self.max_abs)):
            if limit is not None and value > limit:
                total += math.log10(value / limit) if math.isfinite(value) and limit > 0 else 100.0
        return total if total or self.passed else 1e-9

    def to_dict(self) -> dict:
        out = asdict(self)
        out["tolerance"] = {k: v for k, v in asdict(self.tolerance).items() if v is not None}
        out["passed"] = self.passed
        out["exact"] = self.max_abs == 0.0  # why sqnr_db is null: no error at all (∞ dB); see files.jsonable
        return jsonable(out)


def _db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def accuracy(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    """Top-1 accuracy in % of (N, classes) logits against class labels (or one-hot rows); None without labels
    or for an output that is not a classifier's."""
    if labels is None or logits.ndim != 2:
        return None
    labels = np.asarray(labels)[:len(logits)]
    if labels.ndim == 2:  # one-hot (or per-class scores): the class is the argmax
        labels = labels.argmax(1)
    return float((logits.argmax(1) == labels.reshape(-1)).mean() * 100)


def agreement(a: np.ndarray, b: np.ndarray) -> float | None:
    """Top-1 agreement in % of two (N, classes) outputs: the share of samples whose argmax is the same. The
    one top-1 computation (with :func:`accuracy`): ``OutputDiff.top1`` is this as a fraction."""
    if a.ndim != 2 or a.shape != b.shape:
        return None
    return float((a.argmax(axis=1) == b.argmax(axis=1)).mean() * 100)


def diff_output(name: str, a: np.ndarray, b: np.ndarray, tolerance: Tolerance) -> OutputDiff:
    """Compare one output pair (reference ``a``, candidate ``b``) and judge it."""
    if a.shape != b.shape:
        return OutputDiff(name, list(a.shape), math.inf, math.inf, -1.0, -math.inf, -math.inf, None, tolerance,
                          [f"shape {list(b.shape)} differs from reference {list(a.shape)}"])
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if not np.all(np.isfinite(b64)):
        bad = int(np.size(b64) - np.isfinite(b64).sum())
        return OutputDiff(name, list(a.shape), math.inf, math.inf, -1.0, -math.inf, -math.inf, None, tolerance,
                          [f"{bad} non-finite values (NaN/inf)"])
    err = b64 - a64
    max_abs = float(np.abs(err).max()) if err.size else 0.0
    scale = float(np.abs(a64).max()) if a64.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    n = a64.shape[0] if a64.ndim > 1 else 1
    a2, b2, e2 = a64.reshape(n, -1), b64.reshape(n, -1), err.reshape(n, -1)
    norm_a = np.linalg.norm(a2, axis=1)
    norms = norm_a * np.linalg.norm(b2, axis=1)
    dots = (a2 * b2).sum(axis=1)
    both_zero = np.where(np.all(a2 == b2, axis=1), 1.0, 0.0)  # cosine of zero vectors: 1 if equal
    per_sample = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), both_zero)
    near_zero = norm_a <= NEAR_ZERO * (norm_a.max() if norm_a.size else 0.0)
    judged = per_sample[~near_zero] if (~near_zero).any() else per_sample
    cosine = float(np.percentile(judged, 5))
    sqnr = _db(float((a64 ** 2).sum()), float((err ** 2).sum()))
    ac = a2 - a2.mean(axis=1, keepdims=True)
    ec = e2 - e2.mean(axis=1, keepdims=True)
    centred = _db(float((ac ** 2).sum()), float((ec ** 2).sum()))
    top1 = None if a64.ndim != 2 or a64.shape[1] < 2 else agreement(a64, b64) / 100.0
    dist_axis = distribution_axis(a64)
    channel_db, worst, silent = channel_sqnr(a64, err, dist_axis)
    diff = OutputDiff(name, list(a.shape), max_abs, max_rel, cosine, sqnr, centred, top1, tolerance,
                      cosine_median=float(np.median(judged)), cosine_min=float(per_sample.min()),
                      near_zero=int(near_zero.sum()) if (~near_zero).any() else 0, channel_sqnr_db=channel_db,
                      worst_channel=worst, silent_channels=silent, distribution_axis=dist_axis)
    if dist_axis is not None:
        p, q = np.moveaxis(a64, dist_axis, -1), np.moveaxis(b64, dist_axis, -1)
        tv = 0.5 * np.abs(p - q).sum(axis=-1)
        diff.tv_p95 = float(np.percentile(tv, 95))
        diff.top1_positions = float((p.argmax(-1) == q.argmax(-1)).mean())
    t = tolerance
    if t.max_rel is not None and not max_rel <= t.max_rel:
        diff.failures.append(f"max_rel {max_rel:.3g} > {t.max_rel:g}")
    if t.max_abs is not None and not max_abs <= t.max_abs:
        diff.failures.append(f"max_abs {max_abs:.3g} > {t.max_abs:g}")
    if dist_axis is not None and t.max_tv is not None:  # a probability output: mass moved, not cosine
        if not diff.tv_p95 <= t.max_tv:
            diff.failures.append(f"probability moved (total variation, 95th percentile) {diff.tv_p95:.3f} > "
                                 f"{t.max_tv:g}")
    elif t.min_cosine is not None and not cosine >= t.min_cosine:
        diff.failures.append(f"cosine {cosine:.6f} < {t.min_cosine:g}")
    if t.min_sqnr_db is not None and not sqnr >= t.min_sqnr_db:
        diff.failures.append(f"sqnr {sqnr:.1f} dB < {t.min_sqnr_db:g}")
    if t.min_top1 is not None and top1 is not None and not top1 >= t.min_top1:
        diff.failures.append(f"top1 {top1:.3f} < {t.min_top1:g}")
    if t.min_channel_sqnr_db is not None and channel_db is not None and not channel_db >= t.min_channel_sqnr_db:
        diff.failures.append(f"channel {worst} sqnr {channel_db:.1f} dB < {t.min_channel_sqnr_db:g}")
    return diff


def feature_axis(shape: tuple[int, ...]) -> int | None:
    """The axis channels lie along: 1 for (N, C, …); for (N, X, Y) the shorter of X and Y (a detection head
    writes (N, 4 + classes, anchors) or (N, anchors, 4 + classes)); None when there is one channel."""
    if len(shape) < 2:
        return None
    axis = 1
    if len(shape) == 3 and shape[2] < shape[1]:
        axis = 2
    return axis if shape[axis] > 1 else None


def distribution_axis(a: np.ndarray) -> int | None:
    """The axis along which every position of ``a`` is a probability distribution (values in [0, 1] summing to
    1 within DISTRIBUTION_SUM): the last axis, else :func:`feature_axis`; None when there is none."""
    if a.ndim < 2 or a.size == 0 or a.min() < 0.0 or a.max() > 1.0 + DISTRIBUTION_SUM:
        return None
    for axis in dict.fromkeys((a.ndim - 1, feature_axis(a.shape))):
        if axis is not None and a.shape[axis] > 1 and np.all(np.abs(a.sum(axis=axis) - 1.0) <= DISTRIBUTION_SUM):
            return axis
    return None


def channel_sqnr(a: np.ndarray, err: np.ndarray, axis: int | None = None) -> tuple[float | None, int | None, int]:
    """(lowest per-channel SQNR in dB, its channel, silent channels) along ``axis`` (default
    :func:`feature_axis`). A channel whose reference is all zero counts only if the candidate is not (then −∞).
    A silent score channel (module docstring) whose error stays within SILENT_STEPS steps is left out."""
    axis = feature_axis(a.shape) if axis is None else axis
    if axis is None or a.size == 0:
        return None, None, 0
    other = tuple(i for i in range(a.ndim) if i != axis)
    signal = (a ** 2).sum(axis=other)
    noise = (err ** 2).sum(axis=other)
    silent = ((a.min(axis=other) >= 0.0) & (np.abs(a).max(axis=other) < SILENT_STEPS * SCORE_STEP)
              & (np.abs(err).max(axis=other) <= SILENT_STEPS * SCORE_STEP))
    values = [math.inf if quiet else _db(float(s), float(e)) for s, e, quiet in zip(signal, noise, silent)]
    worst = int(np.argmin(values))
    return values[worst], worst, int(silent.sum())


@dataclass(repr=False)
class CompareReport(Report):
    reference: str
    candidate: str
    backend_reference: str
    backend_candidate: str
    data: str
    samples: int
    precision: str
    outputs: list[OutputDiff]
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(o.passed for o in self.outputs)

    def worst(self) -> OutputDiff:
        return max(self.outputs, key=lambda o: o.max_rel)

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        who = f"{self.candidate} ({self.backend_candidate}) vs {self.reference} ({self.backend_reference})"
        if not self.outputs:
            return f"{verdict} {who}: no outputs compared"
        w = self.worst()
        failed = [f"{o.name}: {'; '.join(o.failures)}" for o in self.outputs if not o.passed]
        detail = f" — {'; '.join(failed)}" if failed else ""
        floor = (f" (vs float64 reference; its own fp32 error {w.reference_fp32_error:.1e})"
                 if w.reference_fp32_error is not None and self.backend_reference.startswith("torch") else
                 f" (noise floor of {self.backend_reference} on the reference {w.reference_fp32_error:.1e})"
                 if w.reference_fp32_error is not None else "")
        return (f"{verdict} {who}: {len(self.outputs)} output(s), max rel {w.max_rel:.2e}{floor}, cosine "
                f"{w.cosine:.6f}, {self.samples} samples, {self.precision} tolerance{detail}")

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "reference": {"artifact": self.reference, "backend": self.backend_reference},
            "candidate": {"artifact": self.candidate, "backend": self.backend_candidate},
            "data": self.data,
            "samples": self.samples,
            "precision": self.precision,
            "outputs": [o.to_dict() for o in self.outputs],
            "notes": self.notes,
            "summary": self.summary(),
        }


def pair_outputs(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray]) -> tuple[list[tuple[str, str]], list[str]]:
    """Match outputs by name, else by position when the counts agree (with a note)."""
    if set(ref) == set(cand):
        return [(k, k) for k in ref], []
    if len(ref) == len(cand):
        pairs = list(zip(ref, cand))
        return pairs, [f"outputs paired by position: {', '.join(f'{a}↔{b}' for a, b in pairs)}"]
    raise BadInputError(f"the artifacts' outputs do not correspond: {sorted(ref)} vs {sorted(cand)}")


def tolerance_for(precision: str, common: dict[str, float], specific: dict[str, float]) -> Tolerance:
    """The preset, then the overrides for all outputs, then those naming this output."""
    if precision not in PRESETS:
        raise BadInputError(f"--precision {precision}: choose from {', '.join(PRESETS)}")
    return replace(PRESETS[precision], **{**common, **specific})


def compare_outputs(
    ref_batches: list[dict[str, np.ndarray]],
    cand_batches: list[dict[str, np.ndarray]],
    precision: str = "fp32",
    overrides: list[str] | None = None,
    ref_fp32_batches: list[dict[str, np.ndarray]] | None = None,
) -> tuple[list[OutputDiff], list[str]]:
    """Concatenate each output over batches, pair them and diff each pair.

    With ``ref_fp32_batches`` (the reference run in fp32 while ``ref_batches`` is its float64 run), each
    output's fp32 max_rel threshold becomes max(threshold, 2 × the reference's own fp32 error): an exact
    transformation is not judged more strictly than the original reproduces itself in fp32."""
    common, per_output = parse_tolerance_overrides(overrides or [])
    pairs, notes = pair_outputs(ref_batches[0], cand_batches[0])
    unknown = set(per_output) - {a for a, _ in pairs} - {b for _, b in pairs}
    if unknown:
        raise BadInputError(f"--tol names outputs {sorted(unknown)}; the outputs are {[a for a, _ in pairs]}")
    diffs = []
    for ref_name, cand_name in pairs:
        a = np.concatenate([b[ref_name] for b in ref_batches])
        b = np.concatenate([b[cand_name] for b in cand_batches])
        specific = {**per_output.get(cand_name, {}), **per_output.get(ref_name, {})}
        tol = tolerance_for(precision, common, specific)
        floor = None
        if ref_fp32_batches is not None:
            a32 = np.concatenate([batch[ref_name] for batch in ref_fp32_batches])
            floor = diff_output(ref_name, a, a32, Tolerance()).max_rel
            if precision == "fp32" and tol.max_rel is not None and "max_rel" not in specific and \
                    "max_rel" not in common:
                tol = replace(tol, max_rel=max(tol.max_rel, 2.0 * floor))
        diff = diff_output(ref_name, a, b, tol)
        diff.reference_fp32_error = floor
        diffs.append(diff)
    return diffs, notes
