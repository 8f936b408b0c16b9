"""Structural-reparameterization blocks: multi-branch at training time, one conv at deployment.

Each block takes ``deploy`` (build only the fused conv) and has ``fuse()``, which returns an equivalent
deploy-form module holding the merged kernel. Fusion uses BN running statistics (eval semantics), so it
refuses a block in training mode. Module names follow the official implementations (DingXiaoH/RepVGG,
DingXiaoH/ACNet, DingXiaoH/DiverseBranchBlock, apple/ml-mobileone) so their checkpoints load.

All the maths (BN folding, kernel embedding, composition, merging) is :mod:`deploy.passes.kernels`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..passes import kernels

Kernel = tuple[Tensor, Tensor]  # (weight, bias) of a conv


# ------------------------------------------------------------------------------------------- helpers


def conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    groups: int = 1,
) -> nn.Sequential:
    """Conv (no bias) then BatchNorm, as children ``conv`` and ``bn`` (the official ``conv_bn``)."""
    seq = nn.Sequential()
    seq.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups,
                                     bias=False))
    seq.add_module("bn", nn.BatchNorm2d(out_channels))
    return seq


def _require_eval(block: nn.Module) -> None:
    if block.training:
        raise RuntimeError(
            f"{type(block).__name__}.fuse() needs eval mode: in training mode BatchNorm normalises with batch "
            "statistics, which no fixed conv reproduces; call .eval() first"
        )


def _zeros(weight: Tensor) -> Tensor:
    """A zero bias on the weight's device and dtype (kernels' own default lives on the CPU)."""
    return weight.new_zeros(weight.shape[0])


def _bn(bn: nn.Module) -> kernels.BNParams:
    return kernels.BNParams.from_module(bn)


def _fold(weight: Tensor, bn: nn.Module) -> Kernel:
    """A bias-free conv kernel followed by ``bn`` (a BatchNorm2d or a BNAndPad)."""
    return kernels.fold_bn(weight, _zeros(weight), _bn(bn.bn if isinstance(bn, BNAndPad) else bn))


def _embed(kernel: Kernel, padding: tuple[int, int], size: int, merged_padding: int) -> Kernel:
    """Place a branch kernel read with ``padding`` inside a ``size``×``size`` kernel read with ``merged_padding``."""
    weight, bias = kernel
    offsets = []
    for k, p in zip(weight.shape[2:], padding):
        offset = kernels.embedding_offset(k, p, size, merged_padding)
        if offset is None:
            raise ValueError(f"a {tuple(weight.shape[2:])} branch with padding {padding} does not fit a "
                             f"{size}×{size} kernel with padding {merged_padding}")
        offsets.append(offset)
    if tuple(weight.shape[2:]) == (size, size):
        return weight, bias
    return kernels.embed_kernel(weight, (size, size), tuple(offsets)), bias


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _conv_branch(seq: nn.Sequential, size: int, merged_padding: int) -> Kernel:
    """A ``conv_bn`` branch as a folded kernel embedded in the merged size."""
    return _embed(_fold(seq.conv.weight, seq.bn), _pair(seq.conv.padding), size, merged_padding)


def _identity_branch(bn: nn.BatchNorm2d, channels: int, groups: int, size: int, like: Tensor) -> Kernel:
    """A BN on the block's input as a conv: the identity kernel (centred) folded with the BN."""
    eye = kernels.identity_kernel(channels, groups, (size, size), dtype=like.dtype).to(like.device)
    return kernels.fold_bn(eye, _zeros(eye), _bn(bn))


def _load_conv(conv: nn.Conv2d, kernel: Kernel) -> nn.Conv2d:
    with torch.no_grad():
        conv.weight.copy_(kernel[0])
        conv.bias.copy_(kernel[1])
    return conv


def _build_quietly(factory: Callable[[], nn.Module], like: Tensor) -> nn.Module:
    """Build a module without consuming the caller's RNG (its initial weights are overwritten anyway)."""
    with torch.random.fork_rng(devices=[]):
        module = factory()
    return module.to(device=like.device, dtype=like.dtype).eval()


def _check_same_size(kernel_size: int, padding: int, what: str) -> None:
    """Branches read without the main conv's padding (1×1, identity) align only for 'same' padding."""
    if kernel_size % 2 == 0 or padding != kernel_size // 2:
        raise ValueError(f"{what} needs an odd kernel_size and padding = kernel_size // 2, "
                         f"got kernel_size={kernel_size}, padding={padding}")


# ------------------------------------------------------------------------------------------- RepVGG


class RepVGGBlock(nn.Module):
    """RepVGG: K×K conv-BN + 1×1 conv-BN + identity BN, summed, then ReLU (DingXiaoH/RepVGG names)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, groups: int = 1, deploy: bool = False) -> None:
        super().__init__()
        if kernel_size % 2 == 0 or padding < kernel_size // 2:
            raise ValueError(f"RepVGGBlock needs an odd kernel_size and padding >= kernel_size // 2, "
                             f"got kernel_size={kernel_size}, padding={padding}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.groups = kernel_size, stride, padding, groups
        self.deploy = deploy
        self.nonlinearity = nn.ReLU()
        self.se = nn.Identity()
        if deploy:
            self.rbr_reparam = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups,
                                         bias=True)
            return
        has_identity = in_channels == out_channels and stride == 1
        if has_identity:
            _check_same_size(kernel_size, padding, "RepVGGBlock with an identity branch")
        self.rbr_identity = nn.BatchNorm2d(in_channels) if has_identity else None
        self.rbr_dense = conv_bn(in_channels, out_channels, kernel_size, stride, padding, groups)
        self.rbr_1x1 = conv_bn(in_channels, out_channels, 1, stride, padding - kernel_size // 2, groups)

    def forward(self, x: Tensor) -> Tensor:
        if self.deploy:
            return self.nonlinearity(self.se(self.rbr_reparam(x)))
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return self.nonlinearity(self.se(out))

    def fused_kernel(self) -> Kernel:
        """The (weight, bias) of the single conv equal to the three branches (eval semantics)."""
        _require_eval(self)
        if self.deploy:
            return self.rbr_reparam.weight.detach(), self.rbr_reparam.bias.detach()
        k, p = self.kernel_size, self.padding
        branches = [_conv_branch(self.rbr_dense, k, p), _conv_branch(self.rbr_1x1, k, p)]
        if self.rbr_identity is not None:
            branches.append(_identity_branch(self.rbr_identity, self.in_channels, self.groups, k,
                                             self.rbr_dense.conv.weight))
        return kernels.merge_parallel(branches)

    def fuse(self) -> RepVGGBlock:
        """An equivalent ``RepVGGBlock(deploy=True)`` whose ``rbr_reparam`` holds the merged kernel."""
        kernel = self.fused_kernel()
        if self.deploy:
            return self
        fused = _build_quietly(lambda: RepVGGBlock(self.in_channels, self.out_channels, self.kernel_size,
                                                   self.stride, self.padding, self.groups, deploy=True), kernel[0])
        _load_conv(fused.rbr_reparam, kernel)
        return fused


# ------------------------------------------------------------------------------------------- ACNet


class ACBlock(nn.Module):
    """ACNet asymmetric convolution: K×K, K×1 and 1×K conv-BN branches, summed; no activation.

    A drop-in for a conv-BN pair (DingXiaoH/ACNet names). Needs ``padding >= kernel_size // 2`` (the
    official cropping for smaller paddings is not supported)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, groups: int = 1, deploy: bool = False) -> None:
        super().__init__()
        if padding < kernel_size // 2:
            raise ValueError(f"ACBlock needs padding >= kernel_size // 2, got kernel_size={kernel_size}, "
                             f"padding={padding}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.groups = kernel_size, stride, padding, groups
        self.deploy = deploy
        if deploy:
            self.fused_conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups,
                                        bias=True)
            return
        k, p, short = kernel_size, padding, padding - kernel_size // 2
        self.square_conv = nn.Conv2d(in_channels, out_channels, k, stride, p, groups=groups, bias=False)
        self.square_bn = nn.BatchNorm2d(out_channels)
        self.ver_conv = nn.Conv2d(in_channels, out_channels, (k, 1), stride, (p, short), groups=groups, bias=False)
        self.hor_conv = nn.Conv2d(in_channels, out_channels, (1, k), stride, (short, p), groups=groups, bias=False)
        self.ver_bn = nn.BatchNorm2d(out_channels)
        self.hor_bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        if self.deploy:
            return self.fused_conv(x)
        square = self.square_bn(self.square_conv(x))
        return square + self.ver_bn(self.ver_conv(x)) + self.hor_bn(self.hor_conv(x))

    def fused_kernel(self) -> Kernel:
        _require_eval(self)
        if self.deploy:
            return self.fused_conv.weight.detach(), self.fused_conv.bias.detach()
        k, p = self.kernel_size, self.padding
        branches = [
            _embed(_fold(conv.weight, bn), _pair(conv.padding), k, p)
            for conv, bn in ((self.square_conv, self.square_bn), (self.ver_conv, self.ver_bn),
                             (self.hor_conv, self.hor_bn))
        ]
        return kernels.merge_parallel(branches)

    def fuse(self) -> nn.Conv2d:
        """An equivalent plain ``nn.Conv2d`` with bias."""
        kernel = self.fused_kernel()
        if self.deploy:
            return self.fused_conv
        conv = _build_quietly(lambda: nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                                                self.padding, groups=self.groups, bias=True), kernel[0])
        return _load_conv(conv, kernel)


# ------------------------------------------------------------------------------------------- DBB


class BNAndPad(nn.Module):
    """BatchNorm, then pad by ``pad_pixels`` with the BN's output for a zero input, β − μ·γ/sqrt(σ² + ε).

    Padding with that value (rather than zero) is what lets a 1×1 conv-BN followed by an unpadded K×K
    conv fold into one K×K conv with zero padding. The value uses the running statistics in both modes,
    detached from γ and β, as the official ``BNAndPadLayer`` does. The border is written as a sum with a
    ones-on-the-border mask (no in-place slice assignment), so it exports to plain ONNX ops with a dynamic
    batch."""

    def __init__(self, pad_pixels: int, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, eps, momentum)
        self.pad_pixels = pad_pixels

    def pad_values(self) -> Tensor:
        bn = self.bn
        return bn.bias.detach() - bn.running_mean * bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(x)
        p = self.pad_pixels
        if p <= 0:
            return y
        border = F.pad(torch.zeros_like(y[:, :1]), [p] * 4, value=1.0)
        return F.pad(y, [p] * 4) + border * self.pad_values().view(1, -1, 1, 1)


class IdentityBasedConv1x1(nn.Conv2d):
    """1×1 conv whose kernel is ``weight + identity`` (``weight`` starts at zero): the DBB ``idconv1``.

    The identity is a non-persistent buffer, so the state dict holds ``weight`` only, as the official one."""

    def __init__(self, channels: int, groups: int = 1) -> None:
        super().__init__(channels, channels, kernel_size=1, stride=1, padding=0, groups=groups, bias=False)
        self.register_buffer("id_tensor", kernels.identity_kernel(channels, groups), persistent=False)
        nn.init.zeros_(self.weight)

    def get_actual_kernel(self) -> Tensor:
        return self.weight + self.id_tensor

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.get_actual_kernel(), None, 1, 0, self.dilation, self.groups)


class DiverseBranchBlock(nn.Module):
    """DBB: K×K, 1×1, 1×1→avg-pool and 1×1→K×K conv-BN branches, summed; no activation.

    A drop-in for a conv-BN pair (DingXiaoH/DiverseBranchBlock names). When ``groups == out_channels``
    (depthwise) the 1×1 branch is dropped, the average pool reads the input directly and the 1×1→K×K
    branch widens to 2·in_channels (``conv1``), as in the official block."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, groups: int = 1, deploy: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.groups = kernel_size, stride, padding, groups
        self.deploy = deploy
        if deploy:
            self.dbb_reparam = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups,
                                         bias=True)
            return
        k = kernel_size
        self.dbb_origin = conv_bn(in_channels, out_channels, k, stride, padding, groups)

        self.dbb_avg = nn.Sequential()
        if groups < out_channels:
            _check_same_size(k, padding, "DiverseBranchBlock (its 1×1 branch)")
            self.dbb_avg.add_module("conv", nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=False))
            self.dbb_avg.add_module("bn", BNAndPad(padding, out_channels))
            self.dbb_avg.add_module("avg", nn.AvgPool2d(k, stride, padding=0))
            self.dbb_1x1 = conv_bn(in_channels, out_channels, 1, stride, 0, groups)
        else:
            if in_channels != out_channels:
                raise ValueError("a depthwise DiverseBranchBlock (groups == out_channels) needs in == out channels")
            self.dbb_avg.add_module("avg", nn.AvgPool2d(k, stride, padding))
        self.dbb_avg.add_module("avgbn", nn.BatchNorm2d(out_channels))

        internal = in_channels if groups < out_channels else 2 * in_channels
        self.dbb_1x1_kxk = nn.Sequential()
        if internal == in_channels:
            self.dbb_1x1_kxk.add_module("idconv1", IdentityBasedConv1x1(in_channels, groups))
        else:
            self.dbb_1x1_kxk.add_module("conv1", nn.Conv2d(in_channels, internal, 1, groups=groups, bias=False))
        self.dbb_1x1_kxk.add_module("bn1", BNAndPad(padding, internal))
        self.dbb_1x1_kxk.add_module("conv2", nn.Conv2d(internal, out_channels, k, stride, 0, groups=groups,
                                                       bias=False))
        self.dbb_1x1_kxk.add_module("bn2", nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        if self.deploy:
            return self.dbb_reparam(x)
        out = self.dbb_origin(x)
        if hasattr(self, "dbb_1x1"):
            out = out + self.dbb_1x1(x)
        return out + self.dbb_avg(x) + self.dbb_1x1_kxk(x)

    def fused_kernel(self) -> Kernel:
        _require_eval(self)
        if self.deploy:
            return self.dbb_reparam.weight.detach(), self.dbb_reparam.bias.detach()
        k, p, g = self.kernel_size, self.padding, self.groups
        like = self.dbb_origin.conv.weight
        branches = [_conv_branch(self.dbb_origin, k, p)]
        if hasattr(self, "dbb_1x1"):
            branches.append(_conv_branch(self.dbb_1x1, k, p))

        # 1×1 → BN (border = BN(0)) → unpadded K×K average: a 1×1 conv composed with the pooling kernel
        avg = self.dbb_avg
        pool = kernels.avgpool_kernel(self.out_channels, g, (k, k), dtype=like.dtype).to(like.device)
        if hasattr(avg, "conv"):
            w, b = kernels.compose_sequential(*_fold(avg.conv.weight, avg.bn), pool, _zeros(pool), g)
        else:  # zero-padded pooling of the input itself (count_include_pad: padded zeros are averaged in)
            w, b = pool, _zeros(pool)
        branches.append(kernels.fold_bn(w, b, _bn(avg.avgbn)))

        # 1×1 → BN (border = BN(0)) → unpadded K×K → BN
        seq = self.dbb_1x1_kxk
        first = seq.idconv1.get_actual_kernel() if hasattr(seq, "idconv1") else seq.conv1.weight
        w, b = kernels.compose_sequential(*_fold(first, seq.bn1), seq.conv2.weight, _zeros(seq.conv2.weight), g)
        branches.append(kernels.fold_bn(w, b, _bn(seq.bn2)))
        return kernels.merge_parallel(branches)

    def fuse(self) -> nn.Conv2d:
        """An equivalent plain ``nn.Conv2d`` with bias."""
        kernel = self.fused_kernel()
        if self.deploy:
            return self.dbb_reparam
        conv = _build_quietly(lambda: nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                                                self.padding, groups=self.groups, bias=True), kernel[0])
        return _load_conv(conv, kernel)


# ------------------------------------------------------------------------------------------- MobileOne


class MobileOneBlock(nn.Module):
    """MobileOne: ``num_conv_branches`` K×K conv-BN + a 1×1 conv-BN (K > 1) + identity BN, summed, then
    ReLU (apple/ml-mobileone names; ``deploy`` is its ``inference_mode``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 groups: int = 1, num_conv_branches: int = 1, deploy: bool = False, use_se: bool = False) -> None:
        super().__init__()
        if use_se:
            raise NotImplementedError("MobileOneBlock: the squeeze-excitation variant is not implemented")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.groups = kernel_size, stride, padding, groups
        self.num_conv_branches = num_conv_branches
        self.deploy = deploy
        self.se = nn.Identity()
        self.activation = nn.ReLU()
        if deploy:
            self.reparam_conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups,
                                          bias=True)
            return
        has_skip = out_channels == in_channels and stride == 1
        if has_skip or kernel_size > 1:
            _check_same_size(kernel_size, padding, "MobileOneBlock with a skip or scale branch")
        self.rbr_skip = nn.BatchNorm2d(in_channels) if has_skip else None
        self.rbr_conv = nn.ModuleList(
            conv_bn(in_channels, out_channels, kernel_size, stride, padding, groups) for _ in range(num_conv_branches)
        )
        self.rbr_scale = conv_bn(in_channels, out_channels, 1, stride, 0, groups) if kernel_size > 1 else None

    def forward(self, x: Tensor) -> Tensor:
        if self.deploy:
            return self.activation(self.se(self.reparam_conv(x)))
        out = None
        for branch in (self.rbr_skip, self.rbr_scale, *self.rbr_conv):
            if branch is not None:
                y = branch(x)
                out = y if out is None else out + y
        return self.activation(self.se(out))

    def fused_kernel(self) -> Kernel:
        _require_eval(self)
        if self.deploy:
            return self.reparam_conv.weight.detach(), self.reparam_conv.bias.detach()
        k, p = self.kernel_size, self.padding
        branches = [_conv_branch(seq, k, p) for seq in self.rbr_conv]
        if self.rbr_scale is not None:
            branches.append(_conv_branch(self.rbr_scale, k, p))
        if self.rbr_skip is not None:
            like = self.rbr_skip.running_mean
            branches.append(_identity_branch(self.rbr_skip, self.in_channels, self.groups, k, like))
        return kernels.merge_parallel(branches)

    def fuse(self) -> MobileOneBlock:
        """An equivalent ``MobileOneBlock(deploy=True)`` whose ``reparam_conv`` holds the merged kernel."""
        kernel = self.fused_kernel()
        if self.deploy:
            return self
        fused = _build_quietly(lambda: MobileOneBlock(self.in_channels, self.out_channels, self.kernel_size,
                                                      self.stride, self.padding, self.groups, deploy=True),
                               kernel[0])
        _load_conv(fused.reparam_conv, kernel)
        return fused
