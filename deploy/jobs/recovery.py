"""Recovering a pruned net without labels: BN re-estimation and knowledge distillation from the original.

BN re-estimation: pruning removes channels that fed the next layers, so every downstream BN sees inputs
with other statistics than its running ones; a few train-mode passes over calibration images (no labels,
no gradients) measure the new ones (ModelOpt's ``_reset_bn``, EagleEye's adaptive BN).

Distillation (Hinton et al. 2015): the student minimises T²·KL(softmax(t/T) ‖ softmax(s/T)) against the
unpruned teacher's logits t, which needs no labels — any images the user has will do; with labels a
cross-entropy term is added (weight ``hard_weight``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..artifacts.numerics import batchnorm_layers, estimate_bn_statistics
from ..harness.compare import agreement as top1_agreement


def recalibrate_bn(model: nn.Module, batches: Sequence[torch.Tensor]) -> int:
    """Running statistics of every BN measured afresh on ``batches``; returns the number of BN layers."""
    return estimate_bn_statistics(model, list(batches))


@dataclass
class DistillConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.01  # peak of a one-cycle schedule, SGD with Nesterov momentum
    temperature: float = 4.0
    hard_weight: float = 0.5  # weight of the cross-entropy on labels, when there are labels
    max_shift: int = 2  # random translation (pixels) as augmentation; 0 for non-image inputs
    seed: int = 0


@dataclass
class DistillResult:
    epochs: int
    seconds: float
    final_loss: float
    used_labels: bool


def _shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """One random (dy, dx) translation per batch, edges replicated (cheap, label-preserving for images)."""
    if max_shift <= 0 or x.ndim != 4:
        return x
    dy, dx = (torch.randint(-max_shift, max_shift + 1, (2,), generator=generator)).tolist()
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    h, w = x.shape[2:]
    return padded[:, :, max_shift + dy: max_shift + dy + h, max_shift + dx: max_shift + dx + w]


def distill(student: nn.Module, teacher: nn.Module, inputs: np.ndarray, labels: np.ndarray | None = None,
            config: DistillConfig | None = None, progress: Callable[[int, int, float], None] | None = None
            ) -> DistillResult:
    """Train ``student`` (in place) to match ``teacher`` on ``inputs``; ``progress(epoch, epochs, loss)``."""
    config = config or DistillConfig()
    generator = torch.Generator().manual_seed(config.seed)
    xs = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
    ys = torch.from_numpy(np.asarray(labels, dtype=np.int64)) if labels is not None else None
    teacher = teacher.eval()
    decay = [p for p in student.parameters() if p.ndim > 1]
    no_decay = [p for p in student.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": 5e-5}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=config.lr, momentum=0.9, nesterov=True)
    steps = max(1, config.epochs * math.ceil(len(xs) / config.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps, pct_start=0.15)
    t2 = config.temperature ** 2
    start = time.perf_counter()
    loss_value = float("nan")
    has_bn = bool(batchnorm_layers(student))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for epoch in range(config.epochs):
            student.train()
            perm = torch.randperm(len(xs), generator=generator)
            total, count = 0.0, 0
            for begin in range(0, len(xs), config.batch_size):
                index = perm[begin:begin + config.batch_size]
                if has_bn and len(index) < 2:
                    continue  # train-mode BN cannot normalise one sample
                x = _shift(xs[index], config.max_shift, generator)
                with torch.no_grad():
                    soft = F.log_softmax(teacher(x) / config.temperature, dim=1)
                logits = student(x)
                loss = t2 * F.kl_div(F.log_softmax(logits / config.temperature, dim=1), soft, log_target=True,
                                     reduction="batchmean")
                if ys is not None:
                    loss = (1 - config.hard_weight) * loss + config.hard_weight * F.cross_entropy(logits, ys[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach()) * len(index)
                count += len(index)
            loss_value = total / max(count, 1)
            if progress:
                progress(epoch + 1, config.epochs, loss_value)
    student.eval()
    return DistillResult(config.epochs, time.perf_counter() - start, loss_value, ys is not None)


def agreement(a: nn.Module, b: nn.Module, inputs: np.ndarray, batch: int = 64) -> float:
    """Top-1 agreement in % of two classifiers over ``inputs``."""
    if len(inputs) == 0:
        return 0.0
    outputs = ([], [])
    with torch.no_grad():
        for begin in range(0, len(inputs), batch):
            x = torch.from_numpy(np.ascontiguousarray(inputs[begin:begin + batch], dtype=np.float32))
            for model, out in zip((a, b), outputs):
                out.append(model.eval()(x).numpy())
    return top1_agreement(np.concatenate(outputs[0]), np.concatenate(outputs[1]))


def accuracy(model: nn.Module, inputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in % (the digits harness's evaluation, on any classifier)."""
    from .digits import evaluate, torch_logits

    return evaluate(torch_logits(model), np.ascontiguousarray(inputs, dtype=np.float32), labels)


def output_sqnr(reference: nn.Module, candidate: nn.Module, inputs: np.ndarray, batch: int = 64) -> float:
    """Mean-centred SQNR in dB of ``candidate``'s outputs against ``reference``'s (any output shape):
    10·log10(Σ (r − mean r)² / Σ (r − c)²)."""
    signal = noise = 0.0
    with torch.no_grad():
        refs, cands = [], []
        for begin in range(0, len(inputs), batch):
            x = torch.from_numpy(np.ascontiguousarray(inputs[begin:begin + batch], dtype=np.float32))
            r, c = _flat(reference.eval()(x)), _flat(candidate.eval()(x))
            if r is None or c is None:
                return float("nan")
            refs.append(r)
            cands.append(c)
        r, c = torch.cat(refs), torch.cat(cands)
        signal = float(((r - r.mean()) ** 2).sum())
        noise = float(((r - c) ** 2).sum())
    return float("inf") if noise == 0 else 10 * math.log10(max(signal, 1e-300) / noise)


def _flat(output) -> torch.Tensor | None:
    """Every output tensor of a batch (a tensor, tuple, list or dict of them), per sample, side by side."""
    if isinstance(output, torch.Tensor):
        return output.double().reshape(output.shape[0], -1)
    parts = list(output.values()) if isinstance(output, dict) else list(output) \
        if isinstance(output, (tuple, list)) else None
    if not parts or not all(isinstance(p, torch.Tensor) for p in parts):
        return None
    return torch.cat([p.double().reshape(p.shape[0], -1) for p in parts], dim=1)
