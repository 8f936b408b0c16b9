"""MobileNet v1, v2 and v3 (small/large); v2 and v3 use torchvision's layout and parameter names."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from ._common import init_weights, make_divisible
from .registry import register_model

Activation = Callable[..., nn.Module]


def conv_bn_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    groups: int = 1,
    activation: Activation | None = nn.ReLU,
    bn_eps: float = 1e-5,
    bn_momentum: float = 0.1,
) -> nn.Sequential:
    """Conv (no bias, "same" padding) → BatchNorm → optional activation, named 0/1/2 like torchvision."""
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False
        ),
        nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum),
    ]
    if activation is not None:
        layers.append(activation(inplace=True))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------------- v1


def depthwise_separable(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 depthwise conv-bn-relu (``.0``) then 1x1 pointwise conv-bn-relu (``.1``)."""
    return nn.Sequential(
        conv_bn_act(in_channels, in_channels, 3, stride, groups=in_channels),
        conv_bn_act(in_channels, out_channels, 1),
    )


# (out_channels, stride) of the 13 depthwise-separable blocks of MobileNet v1 at width 1.0.
_V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)]
_V1_BLOCKS += [(512, 1)] * 5 + [(1024, 2), (1024, 1)]


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_act(3, 32, 3, stride=2)]
        in_channels = 32
        for out_channels, stride in _V1_BLOCKS:
            layers.append(depthwise_separable(in_channels, out_channels, stride))
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.fc(torch.flatten(x, 1))


# --------------------------------------------------------------------------------------------- v2


class InvertedResidualV2(nn.Module):
    """1x1 expand (ReLU6) → 3x3 depthwise (ReLU6) → 1x1 linear projection, residual when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_act(in_channels, hidden, 1, activation=nn.ReLU6))
        layers += [
            conv_bn_act(hidden, hidden, 3, stride, groups=hidden, activation=nn.ReLU6),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# (expand ratio t, out channels c, repeats n, first stride s)
_V2_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]  # fmt: skip


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.2, last_channel: int = 1280) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_act(3, 32, 3, stride=2, activation=nn.ReLU6)]
        in_channels = 32
        for t, c, n, s in _V2_SETTINGS:
            for i in range(n):
                layers.append(InvertedResidualV2(in_channels, c, s if i == 0 else 1, t))
                in_channels = c
        layers.append(conv_bn_act(in_channels, last_channel, 1, activation=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last_channel, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------------------------- v3


class SqueezeExcitation(nn.Module):
    """Global pool → 1x1 squeeze (ReLU) → 1x1 excite (Hardsigmoid) → channel-wise rescale."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * scale


class BlockConfig(NamedTuple):
    """One MobileNet v3 bottleneck: input, kernel, expanded and output channels, SE, hardswish, stride."""

    in_channels: int
    kernel: int
    expanded: int
    out_channels: int
    use_se: bool
    use_hs: bool
    stride: int


class InvertedResidualV3(nn.Module):
    """Optional 1x1 expand → kxk depthwise → optional SE → 1x1 linear projection, in ``.block``."""

    def __init__(self, cfg: BlockConfig, bn_eps: float = 0.001, bn_momentum: float = 0.01) -> None:
        super().__init__()
        self.use_res_connect = cfg.stride == 1 and cfg.in_channels == cfg.out_channels
        act: Activation = nn.Hardswish if cfg.use_hs else nn.ReLU
        norm = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        layers: list[nn.Module] = []
        if cfg.expanded != cfg.in_channels:
            layers.append(conv_bn_act(cfg.in_channels, cfg.expanded, 1, activation=act, **norm))
        layers.append(
            conv_bn_act(cfg.expanded, cfg.expanded, cfg.kernel, cfg.stride, cfg.expanded, act, **norm)
        )
        if cfg.use_se:
            layers.append(SqueezeExcitation(cfg.expanded, make_divisible(cfg.expanded // 4, 8)))
        layers.append(conv_bn_act(cfg.expanded, cfg.out_channels, 1, activation=None, **norm))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res_connect else self.block(x)


_B = BlockConfig
# _B(in, kernel, expanded, out, use_se, use_hs, stride)
_V3_LARGE = [
    _B(16, 3, 16, 16, False, False, 1),
    _B(16, 3, 64, 24, False, False, 2),
    _B(24, 3, 72, 24, False, False, 1),
    _B(24, 5, 72, 40, True, False, 2),
    _B(40, 5, 120, 40, True, False, 1),
    _B(40, 5, 120, 40, True, False, 1),
    _B(40, 3, 240, 80, False, True, 2),
    _B(80, 3, 200, 80, False, True, 1),
    _B(80, 3, 184, 80, False, True, 1),
    _B(80, 3, 184, 80, False, True, 1),
    _B(80, 3, 480, 112, True, True, 1),
    _B(112, 3, 672, 112, True, True, 1),
    _B(112, 5, 672, 160, True, True, 2),
    _B(160, 5, 960, 160, True, True, 1),
    _B(160, 5, 960, 160, True, True, 1),
]
_V3_SMALL = [
    _B(16, 3, 16, 16, True, False, 2),
    _B(16, 3, 72, 24, False, False, 2),
    _B(24, 3, 88, 24, False, False, 1),
    _B(24, 5, 96, 40, True, True, 2),
    _B(40, 5, 240, 40, True, True, 1),
    _B(40, 5, 240, 40, True, True, 1),
    _B(40, 5, 120, 48, True, True, 1),
    _B(48, 5, 144, 48, True, True, 1),
    _B(48, 5, 288, 96, True, True, 2),
    _B(96, 5, 576, 96, True, True, 1),
    _B(96, 5, 576, 96, True, True, 1),
]


class MobileNetV3(nn.Module):
    def __init__(
        self, blocks: list[BlockConfig], last_channel: int, num_classes: int = 1000, dropout: float = 0.2
    ) -> None:
        super().__init__()
        norm = {"bn_eps": 0.001, "bn_momentum": 0.01}
        stem_out = blocks[0].in_channels
        layers: list[nn.Module] = [conv_bn_act(3, stem_out, 3, stride=2, activation=nn.Hardswish, **norm)]
        layers += [InvertedResidualV3(cfg) for cfg in blocks]
        last_conv = 6 * blocks[-1].out_channels
        layers.append(conv_bn_act(blocks[-1].out_channels, last_conv, 1, activation=nn.Hardswish, **norm))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(last_channel, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------------------- factories


@register_model(family="mobilenet")
def mobilenet_v1(num_classes: int = 1000) -> MobileNetV1:
    """MobileNet v1 1.0x: conv stem + 13 depthwise-separable blocks, 4.2M params."""
    model = MobileNetV1(num_classes=num_classes)
    init_weights(model)
    return model


@register_model(family="mobilenet")
def mobilenet_v2(num_classes: int = 1000) -> MobileNetV2:
    """MobileNet v2 1.0x: inverted residuals with linear bottlenecks, 3.5M params."""
    model = MobileNetV2(num_classes=num_classes)
    init_weights(model)
    return model


@register_model(family="mobilenet")
def mobilenet_v3_small(num_classes: int = 1000) -> MobileNetV3:
    """MobileNet v3 small: SE + hardswish inverted residuals, 2.5M params."""
    model = MobileNetV3(_V3_SMALL, last_channel=1024, num_classes=num_classes)
    init_weights(model)
    return model


@register_model(family="mobilenet")
def mobilenet_v3_large(num_classes: int = 1000) -> MobileNetV3:
    """MobileNet v3 large: SE + hardswish inverted residuals, 5.5M params."""
    model = MobileNetV3(_V3_LARGE, last_channel=1280, num_classes=num_classes)
    init_weights(model)
    return model
