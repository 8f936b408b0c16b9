"""VGG with batch norm, in torchvision's layout (``features`` / ``avgpool`` / ``classifier``)."""

from __future__ import annotations

import torch
from torch import nn

from ._common import init_weights
from .registry import register_model

# Output channels per 3x3 conv; "M" is a 2x2 max-pool.
_CONFIGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def _make_features(config: list[int | str]) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            out_channels = int(item)
            layers += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            in_channels = out_channels
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, features: nn.Sequential, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _vgg(config: str, num_classes: int) -> VGG:
    model = VGG(_make_features(_CONFIGS[config]), num_classes=num_classes)
    init_weights(model)
    return model


@register_model(family="vgg")
def vgg11_bn(num_classes: int = 1000) -> VGG:
    """VGG-11 with batch norm (configuration A), 132.9M params."""
    return _vgg("A", num_classes)


@register_model(family="vgg")
def vgg16_bn(num_classes: int = 1000) -> VGG:
    """VGG-16 with batch norm (configuration D), 138.4M params."""
    return _vgg("D", num_classes)
