"""Realistic numerics for random-weight models.

A freshly initialised net has BN running statistics of (0, 1) and γ = 1, β = 0, so its activations
explode or die layer after layer and its logits are nearly flat: comparisons on such a net hide real
errors. :func:`make_realistic` gives every BN layer a random affine (γ ~ U(0.5, 1.5),
β ~ U(−0.25, 0.25)), running statistics measured by train-mode forward passes over the bundled
photos, and a cap on each channel's gain — what a trained net's BN layers look like, without training.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..calib.data import DataSourceError, Preprocess, load_photos

# Sample window of the bundled photos used for BN statistics; checks start at 0, so they do not overlap.
BN_STATS_OFFSET = 200
BN_STATS_SAMPLES = 16  # 8 leave late 7×7 layers with 392 values per channel: variances too noisy
MAX_GAIN_RATIO = 10.0

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BN_TYPES)]


def randomize_bn_affine(model: nn.Module, seed: int = 0) -> int:
    """Random γ, β on every affine BN layer; returns how many layers were touched."""
    generator = torch.Generator().manual_seed(seed)
    layers = [m for m in batchnorm_layers(model) if m.affine]
    with torch.no_grad():
        for bn in layers:
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=generator) + 0.5)
            bn.bias.copy_((torch.rand(bn.bias.shape, generator=generator) - 0.5) * 0.5)
    return len(layers)


def estimate_bn_statistics(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replace BN running statistics by their average over ``batches`` (train-mode passes).

    With ``momentum=None`` PyTorch keeps a cumulative average, so the result does not depend on the
    order of batches. Dropout stays off; the model is returned to eval mode.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    saved = [bn.momentum for bn in layers]
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None
    was_training = model.training
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout | nn.Dropout2d | nn.Dropout3d | nn.AlphaDropout):
            m.eval()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for bn, momentum in zip(layers, saved):
        bn.momentum = momentum
    model.train(was_training)
    return len(layers)


def limit_bn_gain(model: nn.Module, max_ratio: float = MAX_GAIN_RATIO) -> int:
    """Cap each BN channel's gain s_c = |γ_c| / sqrt(var_c + ε) at ``max_ratio`` × the layer's median gain.

    A channel that was nearly constant on the calibration images gets a tiny variance, hence a gain in
    the hundreds: on other images it amplifies fp32 rounding by as much, and the net becomes ill-
    conditioned in a way trained nets are not (weight decay keeps γ small where a channel carries no
    signal). Scaling such γ_c down does what training does. Returns how many channels were capped.
    """
    capped = 0
    with torch.no_grad():
        for bn in batchnorm_layers(model):
            if not bn.affine or bn.running_var is None:
                continue
            gain = bn.weight.abs() / torch.sqrt(bn.running_var + bn.eps)
            limit = max_ratio * gain.median()
            over = gain > limit
            bn.weight[over] *= limit / gain[over]
            capped += int(over.sum())
    return capped


def calibration_batch(input_shape: Sequence[int], samples: int | None = None, seed: int = 0) -> torch.Tensor:
    """Photos for an image input (N, 1|3, H, W); seeded Gaussian noise for anything else."""
    samples = samples or BN_STATS_SAMPLES
    try:
        preprocess = Preprocess.for_input_shape(input_shape)
        return torch.from_numpy(load_photos(samples, preprocess, offset=BN_STATS_OFFSET))
    except DataSourceError:
        generator = torch.Generator().manual_seed(seed)
        return torch.randn((samples, *input_shape[1:]), generator=generator)


def make_realistic(model: nn.Module, input_shape: Sequence[int], seed: int = 0) -> nn.Module:
    """Random BN affine plus running statistics from the bundled photos; returns ``model`` in eval mode."""
    if batchnorm_layers(model):
        randomize_bn_affine(model, seed)
        estimate_bn_statistics(model, [calibration_batch(input_shape, seed=seed)])
        limit_bn_gain(model)
    return model.eval()
