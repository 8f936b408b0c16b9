"""Inputs for the harness: seeded random tensors or real images, batched for a model's input specs."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..calib.data import DataSourceError, PreprocessSpec, current_preprocess, load_samples, set_preprocess
from ..errors import BadInputError
from .artifact import Artifact, TensorSpec


@dataclass
class Feeds:
    """Batches of named inputs, and a description of where they came from."""

    batches: list[dict[str, np.ndarray]]
    source: str
    samples: int


def _random(spec: TensorSpec, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, *spec.concrete()[1:])
    if np.issubdtype(spec.dtype, np.floating):
        return rng.standard_normal(shape).astype(spec.dtype)
    if spec.dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(np.bool_)
    return rng.integers(0, 10, shape).astype(spec.dtype)


def _samples(spec: TensorSpec, n: int, data: str, offset: int) -> tuple[np.ndarray, str]:
    """``n`` samples from photos, an image folder or an .npy/.npz file (the same sources quantize reads)."""
    try:
        samples = load_samples(data, spec.concrete(), n=n, offset=offset, input_name=spec.name)
    except DataSourceError as err:
        raise BadInputError(f"--data {data}: {err}") from None
    from ..calib.data import preprocess_text

    image = data == "photos" or Path(data).is_dir()
    how = f" (preprocessing {preprocess_text()})" if image else ""
    if data == "photos":
        return samples.array, f"{len(samples.array)} crops of the bundled photos{how}"
    skipped = f", {len(samples.skipped)} unreadable skipped" if samples.skipped else ""
    return samples.array, f"{len(samples.array)} samples from {data}{skipped}{how}"


def make_feeds(
    specs: list[TensorSpec],
    samples: int = 8,
    batch: int | None = None,
    data: str | None = None,
    seed: int = 0,
    offset: int = 0,
) -> Feeds:
    """``samples`` inputs split into batches of ``batch`` (default: the fixed batch dim, else all at once).

    ``data`` None gives seeded Gaussian noise; ``"photos"`` or a folder gives preprocessed images, an
    .npy/.npz file its arrays as they are (one input only).
    """
    if samples < 1:
        raise BadInputError(f"--samples {samples}: need at least 1 sample")
    if batch is not None and batch < 1:
        raise BadInputError(f"--run-batch {batch}: need at least 1 sample per run")
    fixed = {s.shape[0] for s in specs if not s.dynamic_batch}
    if len(fixed) > 1:
        raise BadInputError(f"inputs disagree on the batch dim: {sorted(fixed)}")
    if fixed:
        fixed_batch = fixed.pop()
        if batch not in (None, fixed_batch):
            raise BadInputError(f"--run-batch {batch}: the model fixes the batch at {fixed_batch}")
        batch = fixed_batch
        samples = math.ceil(samples / batch) * batch
    batch = batch or samples
    if data is not None:
        if len(specs) != 1:
            raise BadInputError(f"--data feeds one input; the model has {len(specs)} "
                                f"({', '.join(s.name for s in specs)}): use --data random")
        array, source = _samples(specs[0], samples, data, offset)
        if len(array) % batch:
            if fixed:
                raise BadInputError(f"--data {data}: {len(array)} samples do not fill whole batches of {batch}, "
                                    f"the model's fixed batch; add samples or lower --samples")
            batch = min(batch, len(array))
        samples = len(array)
        arrays = {specs[0].name: array.astype(specs[0].dtype)}
    else:
        arrays = {s.name: _random(s, samples, seed + i) for i, s in enumerate(specs)}
        source = f"{samples} seeded random inputs (seed {seed})"
    batches = [{k: v[i:i + batch] for k, v in arrays.items()} for i in range(0, samples, batch)]
    return Feeds(batches, source, samples)


def adopt_stored_preprocess(artifact: Artifact, notify: Callable[[str], None]) -> PreprocessSpec | None:
    """The preprocessing stored in an ONNX file deploy wrote (its metadata), made the current one when none
    is set, so later verbs read the same images the same way without the flags again. ``notify`` hears what
    happened (adopted, or unreadable and ignored). Returns the stored spec, or None."""
    if artifact.preprocess is None:
        return None
    try:
        spec = PreprocessSpec.from_json(artifact.preprocess)
    except (ValueError, KeyError, TypeError):
        notify(f"note: {artifact.label}: its stored preprocessing is unreadable; using the default")
        return None
    if current_preprocess() is None:
        set_preprocess(spec)
        notify(f"note: preprocessing {spec.describe()}, as stored in {artifact.label}")
    return spec
