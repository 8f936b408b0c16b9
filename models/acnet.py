"""ACNet (Ding et al., ICCV 2019): ResNet-18 whose 3×3 conv-BN pairs are asymmetric-convolution blocks."""

from __future__ import annotations

from torch import nn

from ._rep_resnet import conv_bn_resnet18, plain_conv3x3
from .blocks import ACBlock
from .registry import register_model


def _acb(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    return ACBlock(in_channels, out_channels, 3, stride, 1)


@register_model(family="acnet")
def acnet_resnet18(num_classes: int = 1000, deploy: bool = False) -> nn.Module:
    """ResNet-18 with ACBlocks (3x3 + 3x1 + 1x3 conv-BN); fuses to ResNet-18 with biased 3x3 convs."""
    return conv_bn_resnet18(plain_conv3x3 if deploy else _acb, num_classes)
