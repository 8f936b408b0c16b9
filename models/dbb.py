"""Diverse Branch Block (Ding et al., CVPR 2021): ResNet-18 whose 3×3 conv-BN pairs are DBBs."""

from __future__ import annotations

from torch import nn

from ._rep_resnet import conv_bn_resnet18, plain_conv3x3
from .blocks import DiverseBranchBlock, IdentityBasedConv1x1
from .registry import register_model


def _dbb(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    return DiverseBranchBlock(in_channels, out_channels, 3, stride, 1)


@register_model(family="dbb")
def dbb_resnet18(num_classes: int = 1000, deploy: bool = False) -> nn.Module:
    """ResNet-18 with Diverse Branch Blocks; fuses to ResNet-18 with biased 3x3 convs."""
    model = conv_bn_resnet18(plain_conv3x3 if deploy else _dbb, num_classes)
    for m in model.modules():
        if isinstance(m, IdentityBasedConv1x1):  # starts as the identity, as the official block
            nn.init.zeros_(m.weight)
    return model
