"""ResNet-18 with every 3×3 conv-BN pair replaced by a reparameterizable block (ACNet, DBB).

The layout and names are torchvision's (:mod:`.resnet`): ``layer1.0.conv1`` is the block that replaces
``conv1`` + ``bn1``, so after fusion it is a plain conv with bias under the same name. The 7×7 stem and
the 1×1 downsample projections stay conv + BN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from ._common import init_weights
from .resnet import ResNet

ConvBN = Callable[[int, int, int], nn.Module]  # (in_channels, out_channels, stride) → a 3×3 conv-BN stand-in


class ConvBNBasicBlock(nn.Module):
    """ResNet's basic block with each 3×3 conv-BN pair one module (``conv1``, ``conv2``)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int, downsample: nn.Module | None,
                 conv_bn: ConvBN) -> None:
        super().__init__()
        self.conv1 = conv_bn(in_channels, channels, stride)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv_bn(channels, channels, 1)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv2(self.relu(self.conv1(x)))
        return self.relu(out + identity)


@dataclass(frozen=True)
class _BlockFactory:
    """Stands in for a block class in :class:`.resnet.ResNet` (which calls ``block(in, ch, stride, downsample)``
    and reads ``block.expansion``)."""

    conv_bn: ConvBN
    expansion: int = 1

    def __call__(self, in_channels: int, channels: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> ConvBNBasicBlock:
        return ConvBNBasicBlock(in_channels, channels, stride, downsample, self.conv_bn)


def plain_conv3x3(in_channels: int, out_channels: int, stride: int) -> nn.Conv2d:
    """The deploy form of a fused 3×3 conv-BN block: one conv with bias."""
    return nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=True)


def conv_bn_resnet18(conv_bn: ConvBN, num_classes: int) -> ResNet:
    model = ResNet(_BlockFactory(conv_bn), [2, 2, 2, 2], num_classes=num_classes)  # type: ignore[arg-type]
    init_weights(model, linear_std=None)
    return model
