"""The maths of exact fusion, once. Pure torch on tensors; no modules, no graphs.

Conventions: a conv kernel W has shape (Cout, Cin/g, kH, kW) and bias b of shape (Cout,); a BN is
(γ, β, μ, σ², ε) with s = γ / sqrt(σ² + ε) per channel. Everything is computed in float64 and cast back,
so folding several branches adds no rounding beyond the final cast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class BNParams:
    gamma: Tensor
    beta: Tensor
    mean: Tensor
    var: Tensor
    eps: float

    @classmethod
    def from_module(cls, bn: torch.nn.modules.batchnorm._BatchNorm) -> BNParams:
        c = bn.num_features
        gamma = bn.weight.detach() if bn.affine else torch.ones(c)
        beta = bn.bias.detach() if bn.affine else torch.zeros(c)
        if bn.running_mean is None:
            raise ValueError("BatchNorm without running statistics (track_running_stats=False) cannot be folded")
        return cls(gamma, beta, bn.running_mean.detach(), bn.running_var.detach(), float(bn.eps))

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        """BN as y = a·x + c: a = γ/sqrt(σ²+ε), c = β − μ·a (float64)."""
        a = self.gamma.double() / torch.sqrt(self.var.double() + self.eps)
        return a, self.beta.double() - self.mean.double() * a


def _bias(bias: Tensor | None, channels: int) -> Tensor:
    return torch.zeros(channels, dtype=torch.float64) if bias is None else bias.detach().double()


def fold_bn(weight: Tensor, bias: Tensor | None, bn: BNParams) -> tuple[Tensor, Tensor]:
    """Conv/Linear followed by BN → one layer (output channels on axis 0):
    W' = s·W, b' = s·(b − μ) + β."""
    a, _ = bn.scale_shift()
    shape = (-1,) + (1,) * (weight.dim() - 1)
    w = weight.detach().double() * a.reshape(shape)
    b = a * (_bias(bias, weight.shape[0]) - bn.mean.double()) + bn.beta.double()
    return w.to(weight.dtype), b.to(weight.dtype)


def fold_bn_transposed(weight: Tensor, bias: Tensor | None, bn: BNParams, groups: int = 1) -> tuple[Tensor, Tensor]:
    """ConvTranspose followed by BN. Its weight is (Cin, Cout/g, k…): output channel g·(Cout/g) + j sits at
    axis 1 index j of the rows of group g, so the scale is applied per group."""
    a, _ = bn.scale_shift()
    cin, cout_g = weight.shape[:2]
    w = weight.detach().double().reshape(groups, cin // groups, cout_g, *weight.shape[2:])
    w = w * a.reshape(groups, 1, cout_g, *([1] * (weight.dim() - 2)))
    b = a * (_bias(bias, cout_g * groups) - bn.mean.double()) + bn.beta.double()
    return w.reshape(weight.shape).to(weight.dtype), b.to(weight.dtype)


def fold_bn_into_next(weight: Tensor, bias: Tensor | None, bn: BNParams, groups: int = 1) -> tuple[Tensor, Tensor]:
    """BN *before* a conv with no zero padding: conv(a⊙x + c) = conv'(x) with
    W'[o, i] = W[o, i]·a[i_global] and b'[o] = b[o] + Σ_{i,h,w} W[o, i, h, w]·c[i_global].
    Only exact when the conv never reads padding (padding would see zeros, not c)."""
    a, c = bn.scale_shift()
    cout, cin_g = weight.shape[:2]
    out_per_group = cout // groups
    w = weight.detach().double()
    # the global input channel read by (o, i) is (o // out_per_group)·cin_g + i
    index = (torch.arange(cout) // out_per_group)[:, None] * cin_g + torch.arange(cin_g)[None, :]
    spatial = (1,) * (weight.dim() - 2)
    w_new = w * a[index].reshape(cout, cin_g, *spatial)
    b_new = _bias(bias, cout) + (w * c[index].reshape(cout, cin_g, *spatial)).flatten(1).sum(1)
    return w_new.to(weight.dtype), b_new.to(weight.dtype)


def embedding_offset(kernel: int, padding: int, size: int, merged_padding: int) -> int | None:
    """Where a kernel of size k with padding p sits in a merged kernel of size K with padding P: at
    offset P − p, which fits iff 0 ≤ P − p and (P − p) + k ≤ K (then both windows read the same pixels)."""
    offset = merged_padding - padding
    return offset if 0 <= offset and offset + kernel <= size else None


def embed_kernel(weight: Tensor, size: tuple[int, ...], offset: tuple[int, ...]) -> Tensor:
    """Zero kernel of spatial ``size`` with ``weight`` placed at ``offset`` (per spatial axis)."""
    spatial = weight.shape[2:]
    if len(size) != len(spatial) or len(offset) != len(spatial):
        raise ValueError(f"kernel {tuple(spatial)} and size {size} / offset {offset} differ in rank")
    for k, K, o in zip(spatial, size, offset):
        if o < 0 or o + k > K:
            raise ValueError(f"kernel {tuple(spatial)} does not fit in {size} at offset {offset}")
    out = weight.new_zeros(*weight.shape[:2], *size)
    slices = tuple(slice(o, o + k) for o, k in zip(offset, spatial))
    out[(slice(None), slice(None)) + slices] = weight
    return out


def identity_kernel(channels: int, groups: int = 1, size: tuple[int, ...] = (1, 1),
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """The identity as a grouped conv kernel (C, C/g, …): 1 at the centre of output channel i, input
    channel i mod (C/g). Odd sizes only (the centre must be a pixel)."""
    if any(k % 2 == 0 for k in size):
        raise ValueError(f"identity kernel needs odd sizes, got {size}")
    per_group = channels // groups
    w = torch.zeros(channels, per_group, *size, dtype=dtype)
    centre = tuple(k // 2 for k in size)
    w[(torch.arange(channels), torch.arange(channels) % per_group) + centre] = 1.0
    return w


def avgpool_kernel(channels: int, groups: int, size: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
    """Average pooling over a window as a conv kernel: 1/|window| on the (i, i mod C/g) diagonal.
    Exact for padded pooling only when padded zeros count in the average (count_include_pad)."""
    per_group = channels // groups
    w = torch.zeros(channels, per_group, *size, dtype=dtype)
    area = 1
    for k in size:
        area *= k
    w[torch.arange(channels), torch.arange(channels) % per_group] = 1.0 / area
    return w


def compose_sequential(first_w: Tensor, first_b: Tensor | None, second_w: Tensor, second_b: Tensor | None,
                       groups: int = 1) -> tuple[Tensor, Tensor]:
    """A 1×1 conv (W1, b1) followed by a K×K conv (W2, b2), same groups, as one K×K conv:
    W[o, i] = Σ_m W2[o, m] · W1[m, i] (within each group), b = b2 + Σ_{m,h,w} W2[o, m, h, w] · b1[m].

    Exact when the K×K conv's padded border holds b1 rather than zero (DBB pads with it), or when the
    K×K conv has no padding."""
    if first_w.shape[2:] != (1,) * (first_w.dim() - 2):
        raise ValueError(f"the first conv must be 1×1, got {tuple(first_w.shape[2:])}")
    mid, cin_g = first_w.shape[:2]
    cout, mid_g = second_w.shape[:2]
    if mid_g * groups != mid:
        raise ValueError(f"channel mismatch: first gives {mid}, second reads {mid_g}×{groups} groups")
    w1 = first_w.detach().double().reshape(groups, mid // groups, cin_g)
    w2 = second_w.detach().double().reshape(groups, cout // groups, mid_g, *second_w.shape[2:])
    w = torch.einsum("gom...,gmi->goi...", w2, w1).reshape(cout, cin_g, *second_w.shape[2:])
    b1 = _bias(first_b, mid).reshape(groups, mid_g)
    b = _bias(second_b, cout) + torch.einsum("gom...,gm->go", w2, b1).reshape(cout)
    return w.to(second_w.dtype), b.to(second_w.dtype)


def merge_parallel(branches: list[tuple[Tensor, Tensor | None]]) -> tuple[Tensor, Tensor]:
    """Sum of parallel convs with equal kernel shape, stride, dilation and groups = one conv:
    kernels add, biases add."""
    if not branches:
        raise ValueError("no branches to merge")
    shape = branches[0][0].shape
    for w, _ in branches:
        if w.shape != shape:
            raise ValueError(f"kernels must be embedded to one shape first: {tuple(w.shape)} vs {tuple(shape)}")
    w = sum(b[0].detach().double() for b in branches)
    b = sum(_bias(b[1], shape[0]) for b in branches)
    return w.to(branches[0][0].dtype), b.to(branches[0][0].dtype)
