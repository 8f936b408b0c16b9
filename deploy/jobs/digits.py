"""Our own trained weights for the ``digits-*`` zoo models: data splits, deterministic CPU training, accuracy.

The zoo cannot download pretrained weights, and int8 error on random weights says little about the
accuracy a user would lose. scikit-learn's digits (1,797 8×8 greys, shipped inside the package, no
network) is small enough to train on in seconds on a laptop CPU, and real enough that accuracy means
something. The pieces:

  - :func:`digits_splits`: disjoint, class-stratified train / calib / test splits (1,197 / 200 / 400);
    calib is what a quantizer may look at, test is what accuracy is measured on.
  - :func:`train_digits`: seeded, deterministic training whose checkpoint is cached as a plain state dict
    (loadable with ``--weights``); a second call loads it.
  - :func:`evaluate`: accuracy from any callable returning logits (torch, ONNX Runtime fp32 or int8).
  - :func:`write_digits_npz`: a split as ``{"input": x, "y": y}`` for the CLI tools.
  - :func:`deploy_form`: the reparameterized model (RepVGG blocks fused into single convs).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..artifacts.files import atomic_path, default_cache_dir, jsonable
from ..harness.compare import accuracy
from ..models import create_model, get_model_entry
from ..ort import cpu_session

# Bump when the training code changes what it produces (data, augmentation, loop): old checkpoints then miss.
CODE_VERSION = 1

SPLIT_SIZES = {"test": 400, "calib": 200}  # train gets the rest: 1,197 of 1,797
SIZE = 32
# x/16 lies in [0, 1]; (x/16 - MEAN) / STD puts it in [-2, 2]. The same constants as the bundled photos'
# preset for 1-channel inputs (calib.data.Preprocess.for_input_shape), so `--data photos` and these agree.
MEAN, STD = 0.5, 0.25
BACKGROUND = (0.0 - MEAN) / STD  # a blank pixel after normalisation: what shifted-in borders are filled with
MODELS = ("digits-resnet", "digits-repvgg")


# ------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DigitsSplits:
    """Each split an ``(x, y)`` pair: x float32 (N, 1, 32, 32) normalised, y int64 (N,). ``indices`` are
    the rows of ``sklearn.datasets.load_digits()`` in each split, in the same order."""

    train: tuple[np.ndarray, np.ndarray]
    calib: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    indices: dict[str, np.ndarray]


def preprocess(images: np.ndarray) -> np.ndarray:
    """8×8 digit images (N, 8, 8), values 0..16 → float32 (N, 1, 32, 32), normalised with MEAN / STD.

    Upsampling is bilinear (``align_corners=False``): nearest would hand the nets 4×4 blocks of equal
    pixels whose only edges sit on a fixed grid, so a ±2 px shift (half a source pixel) would change
    nothing inside a block; bilinear gives smooth strokes, more like the camera images the zoo exists for.
    Scaling happens before resizing; interpolation is linear, so the order only changes rounding.
    """
    x = torch.from_numpy(np.array(images, dtype=np.float32).reshape(-1, 1, 8, 8))  # a copy: the input may be read-only
    x = F.interpolate(x / 16.0, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return ((x - MEAN) / STD).numpy()


def digits_splits(seed: int = 0) -> DigitsSplits:
    """Disjoint, deterministic, class-stratified splits: test 400, calib 200, train 1,197.

    Samples are shuffled with ``np.random.default_rng(seed)``, then ordered by their rank within their
    class (as a fraction of the class's size): classes interleave, so every prefix of the order, and
    hence every split and every prefix of a split (a calibration subset), holds the classes in proportion.
    """
    images, labels = _load_digits()
    order = np.random.default_rng(seed).permutation(len(labels))
    rank = np.empty(len(order), dtype=np.float64)  # position of each sample within its class, in shuffled order
    for c in np.unique(labels):
        members = order[labels[order] == c]
        rank[members] = (np.arange(len(members)) + 0.5) / len(members)
    order = order[np.argsort(rank[order], kind="stable")]
    n_test, n_calib = SPLIT_SIZES["test"], SPLIT_SIZES["calib"]
    indices = {"test": order[:n_test], "calib": order[n_test:n_test + n_calib], "train": order[n_test + n_calib:]}
    x = preprocess(images)
    parts = {k: (np.ascontiguousarray(x[i]), labels[i]) for k, i in indices.items()}
    return DigitsSplits(parts["train"], parts["calib"], parts["test"], indices)


@functools.cache
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's images (1797, 8, 8) and labels, read once per process (the import alone takes ~0.5 s)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images, labels = data.images.astype(np.float32), data.target.astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False  # shared between calls
    return images, labels


def write_digits_npz(path: str | os.PathLike, split: tuple[np.ndarray, np.ndarray]) -> Path:
    """Write a split as ``{"input": x, "y": y}`` (the exported models' input is named "input"), atomically."""
    path = Path(path)
    x, y = split
    with _atomic(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, input=np.asarray(x, dtype=np.float32), y=np.asarray(y, dtype=np.int64))
    return path


# ------------------------------------------------------------------------------------------- evaluation


def evaluate(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray, batch: int = 100) -> float:
    """Top-1 accuracy in % of ``run`` (a batch of inputs → logits) over ``x``, ``batch`` samples at a time."""
    if len(x) == 0:
        raise ValueError("evaluate: no samples")
    logits = np.concatenate([np.asarray(run(x[start:start + batch])) for start in range(0, len(x), batch)])
    return accuracy(logits, y)


def torch_logits(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """A torch model as an :func:`evaluate` callable (eval mode, no autograd)."""
    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    return run


def onnx_logits(path: str | os.PathLike, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX file on ONNX Runtime's CPU provider as an :func:`evaluate` callable (first input, first output)."""
    session = cpu_session(path, threads)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def deploy_form(model: nn.Module) -> nn.Module:
    """The reparameterized copy: every RepVGG block fused into one 3×3 conv with bias, so the result has
    the ``deploy=True`` architecture (its state dict loads into ``create_model(name, deploy=True)``).
    BatchNorms outside such blocks stay (no conv-BN folding), so a ResNet comes back unchanged."""
    from ..passes.reparam import reparameterize

    return reparameterize(model.eval(), fuse_bn=False).model


# ------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters; all of them are hashed into the checkpoint's name."""

    epochs: int
    batch_size: int = 64
    lr: float = 0.1  # peak of the one-cycle schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4  # on conv / linear weights only, not on BN or biases
    max_shift: int = 2  # random translation of up to ± this many pixels (of 32)
    threads: int = 2  # fixed: the summation order of CPU kernels depends on the thread count


DEFAULT_EPOCHS = {"digits-resnet": 20, "digits-repvgg": 20}


@dataclass
class TrainedDigits:
    """A trained digits model (eval mode) and how it was obtained."""

    name: str
    model: nn.Module
    seed: int
    config: TrainConfig
    checkpoint: Path
    from_cache: bool  # loaded instead of trained
    train_seconds: float  # of the run that trained it (recorded beside the checkpoint); NaN if unknown
    test_accuracy: float  # fp32, %, on digits_splits(seed).test, measured now

    def deploy_form(self) -> nn.Module:
        return deploy_form(self.model)


def checkpoint_path(name: str, config: TrainConfig, seed: int = 0, cache_dir: Path | None = None) -> Path:
    """``<cache>/digits/{name}-seed{seed}-{key}.pt``; the key hashes the code version, the hyperparameters,
    the split sizes and the model's parameter names and shapes (so a changed architecture misses too)."""
    shapes = [(k, list(v.shape)) for k, v in create_model(name).state_dict().items()]
    blob = json.dumps({"code": CODE_VERSION, "name": name, "seed": seed, "config": asdict(config),
                       "splits": SPLIT_SIZES, "size": SIZE, "norm": [MEAN, STD], "state": shapes}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return Path(cache_dir or default_cache_dir()) / "digits" / f"{name}-seed{seed}-{key}.pt"


def train_digits(name: str, *, epochs: int | None = None, seed: int = 0, cache_dir: Path | None = None
                 ) -> TrainedDigits:
    """The digits model ``name`` trained on ``digits_splits(seed).train``: loaded from the cache if there,
    else trained (deterministically, on the CPU) and cached. Returns it in eval mode with its test accuracy."""
    if get_model_entry(name).family != "digits":
        raise ValueError(f"{name}: not a digits model (choose from {', '.join(MODELS)})")
    config = TrainConfig(epochs=DEFAULT_EPOCHS.get(name, 20) if epochs is None else epochs)
    path = checkpoint_path(name, config, seed, cache_dir)
    splits = digits_splits(seed)
    model = create_model(name, seed=seed)
    from_cache = _load_checkpoint(model, path)
    if from_cache:
        train_seconds = _read_meta(path).get("train_seconds", math.nan)
    else:
        model = create_model(name, seed=seed)  # afresh: a failed load may have left some tensors behind
        start = time.perf_counter()
        _fit(model, *splits.train, config, seed)
        train_seconds = time.perf_counter() - start
    model.eval()
    accuracy = evaluate(torch_logits(model), *splits.test)
    if not from_cache:
        _save_checkpoint(model, path, {"name": name, "seed": seed, "config": asdict(config), "code": CODE_VERSION,
                                       "train_seconds": train_seconds, "test_accuracy": accuracy,
                                       "torch": torch.__version__})
    return TrainedDigits(name, model, seed, config, path, from_cache, train_seconds, accuracy)


@contextlib.contextmanager
def _deterministic(threads: int) -> Iterator[None]:
    """Fixed thread count and deterministic kernels for the block; the caller's settings come back after."""
    saved_threads, saved_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        torch.use_deterministic_algorithms(saved_det)


def _shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by its own random (dy, dx) in [-max_shift, max_shift], filling with blank."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=BACKGROUND)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


def _fit(model: nn.Module, x: np.ndarray, y: np.ndarray, config: TrainConfig, seed: int) -> None:
    """SGD with Nesterov momentum, one-cycle learning rate, random shifts; BatchNorm in train mode."""
    generator = torch.Generator().manual_seed(seed)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    decay = [p for p in model.parameters() if p.ndim > 1]  # conv and linear weights
    no_decay = [p for p in model.parameters() if p.ndim <= 1]  # BN affine, biases
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=config.lr, momentum=config.momentum, nesterov=True)
    steps_per_epoch = math.ceil(len(xs) / config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.epochs *
                                                   steps_per_epoch, pct_start=0.2)
    with _deterministic(config.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.train()
        for _ in range(config.epochs):
            perm = torch.randperm(len(xs), generator=generator)
            for start in range(0, len(xs), config.batch_size):
                index = perm[start:start + config.batch_size]
                loss = F.cross_entropy(model(_shift(xs[index], config.max_shift, generator)), ys[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    model.eval()


# ------------------------------------------------------------------------------------------- cache


def _atomic(path: Path):
    """A temporary name beside ``path`` (its folder made first), renamed over it when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_path(path)


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(_meta_path(path).read_text())
    except (OSError, ValueError):
        return {}


def _save_checkpoint(model: nn.Module, path: Path, meta: dict) -> None:
    """The state dict (tensors only, so ``--weights`` and ``torch.load(weights_only=True)`` take it), then a
    JSON of how it was made beside it. The .pt is the cache entry; the JSON is informational."""
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    with _atomic(path) as tmp:
        torch.save(state, tmp)
    with _atomic(_meta_path(path)) as tmp:
        tmp.write_text(json.dumps(jsonable(meta), indent=2, allow_nan=False) + "\n")


def _load_checkpoint(model: nn.Module, path: Path) -> bool:
    """Load ``path`` into ``model`` strictly; False (train instead) when absent, unreadable or mismatched."""
    if not path.is_file():
        return False
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception:  # a corrupt or foreign file: retraining overwrites it
        return False
    return True
