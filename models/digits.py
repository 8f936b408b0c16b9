"""Two small nets for scikit-learn's digits (8×8 greys upsampled to 1×32×32, 10 classes) that we train ourselves.

The zoo cannot download pretrained weights, so these are what int8 accuracy is measured on
(:mod:`deploy.jobs.digits` trains them). One per quantization story:

  - ``digits-resnet``: plain conv-BN-ReLU and residual adds, the easy case for int8;
  - ``digits-repvgg``: RepVGG blocks, whose train form fuses into single 3×3 convs (``deploy=True``).

Both downsample early: the images carry only 8×8 pixels of information, so full-resolution stages
would cost compute without seeing anything new.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import init_weights
from .blocks import RepVGGBlock
from .registry import register_model
from .resnet import BasicBlock

_DIGITS = {"family": "digits", "input_shape": (1, 1, 32, 32), "num_classes": 10}
WIDTHS = (16, 32, 64)


class DigitsResNet(nn.Module):
    """Conv-BN-ReLU stem (stride 2: 32→16), then one basic block per width, the later ones strided (16→8→4)."""

    def __init__(self, widths: Sequence[int] = WIDTHS, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, widths[0], kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers, in_channels = [], widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or in_channels != width:
                downsample = nn.Sequential(nn.Conv2d(in_channels, width, 1, stride=stride, bias=False),
                                           nn.BatchNorm2d(width))
            layers.append(BasicBlock(in_channels, width, stride, downsample))
            in_channels = width
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class DigitsRepVGG(nn.Module):
    """RepVGG in miniature: a strided ``stage0`` block (32→16), then two blocks per width, the first strided."""

    def __init__(self, widths: Sequence[int] = WIDTHS, num_classes: int = 10, deploy: bool = False) -> None:
        super().__init__()
        self.deploy = deploy
        self.stage0 = RepVGGBlock(1, widths[0], 3, stride=2, padding=1, deploy=deploy)
        stages, in_channels = [], widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(RepVGGBlock(in_channels, width, 3, stride=stride, padding=1, deploy=deploy),
                                        RepVGGBlock(width, width, 3, stride=1, padding=1, deploy=deploy)))
            in_channels = width
        self.stage1, self.stage2, self.stage3 = stages
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stage0(x))))
        return self.linear(torch.flatten(self.gap(x), 1))


@register_model("digits-resnet", **_DIGITS)
def digits_resnet(num_classes: int = 10) -> DigitsResNet:
    """Stride-2 stem + three basic residual blocks (16/32/64, 1x1 projections), for the digits dataset."""
    model = DigitsResNet(num_classes=num_classes)
    init_weights(model, linear_std=None)
    return model


@register_model("digits-repvgg", **_DIGITS)
def digits_repvgg(num_classes: int = 10, deploy: bool = False) -> DigitsRepVGG:
    """Strided RepVGG stem + three stages of two RepVGG blocks (16/32/64), for the digits dataset."""
    model = DigitsRepVGG(num_classes=num_classes, deploy=deploy)
    init_weights(model, linear_std=None)
    return model
