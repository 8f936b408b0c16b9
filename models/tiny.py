"""Three small, fast 32x32 / 10-class models for tests: a plain convnet, a resnet and a mobilenet."""

from __future__ import annotations

import torch
from torch import nn

from ._common import init_weights
from .mobilenet import BlockConfig, InvertedResidualV3, conv_bn_act, depthwise_separable
from .registry import register_model
from .resnet import BasicBlock

_TINY = {"family": "tiny", "input_shape": (1, 3, 32, 32), "num_classes": 10}


class TinyConvNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_act(3, 16),
            conv_bn_act(16, 32),
            nn.MaxPool2d(kernel_size=2, stride=2),
            conv_bn_act(32, 64),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.fc(torch.flatten(x, 1))


class TinyResNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        downsample = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, stride=2, downsample=downsample))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        x = self.avgpool(x)
        return self.fc(torch.flatten(x, 1))


class TinyMobileNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_act(3, 16, 3, stride=2),
            depthwise_separable(16, 24),
            # expand 4x, residual (stride 1, 24 → 24), ReLU, no SE
            InvertedResidualV3(BlockConfig(24, 3, 96, 24, use_se=False, use_hs=False, stride=1)),
            # expand 4x with squeeze-excitation and hardswish, downsampling
            InvertedResidualV3(BlockConfig(24, 5, 96, 40, use_se=True, use_hs=True, stride=2)),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(40, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.fc(torch.flatten(x, 1))


@register_model("tiny-convnet", **_TINY)
def tiny_convnet(num_classes: int = 10) -> TinyConvNet:
    """Three conv-bn-relu layers, a max-pool, global average pool and a linear head (~24k params)."""
    model = TinyConvNet(num_classes=num_classes)
    init_weights(model)
    return model


@register_model("tiny-resnet", **_TINY)
def tiny_resnet(num_classes: int = 10) -> TinyResNet:
    """Stem + two basic residual blocks (the second strided, 1x1 downsample) and a linear head."""
    model = TinyResNet(num_classes=num_classes)
    init_weights(model)
    return model


@register_model("tiny-mobilenet", **_TINY)
def tiny_mobilenet(num_classes: int = 10) -> TinyMobileNet:
    """Depthwise-separable block, residual inverted bottleneck and an SE + hardswish bottleneck."""
    model = TinyMobileNet(num_classes=num_classes)
    init_weights(model)
    return model
