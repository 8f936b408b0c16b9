"""RepVGG (Ding et al., CVPR 2021) in the official layout and names (DingXiaoH/RepVGG)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import init_weights
from .blocks import RepVGGBlock
from .registry import register_model


class RepVGG(nn.Module):
    """``stage0`` (one strided block), ``stage1``–``stage4`` (first block strided), ``gap``, ``linear``."""

    def __init__(self, num_blocks: Sequence[int], width_multiplier: Sequence[float], num_classes: int = 1000,
                 deploy: bool = False) -> None:
        super().__init__()
        self.deploy = deploy
        self.in_planes = min(64, int(64 * width_multiplier[0]))
        self.stage0 = RepVGGBlock(3, self.in_planes, 3, stride=2, padding=1, deploy=deploy)
        self.stage1 = self._make_stage(int(64 * width_multiplier[0]), num_blocks[0])
        self.stage2 = self._make_stage(int(128 * width_multiplier[1]), num_blocks[1])
        self.stage3 = self._make_stage(int(256 * width_multiplier[2]), num_blocks[2])
        self.stage4 = self._make_stage(int(512 * width_multiplier[3]), num_blocks[3])
        self.gap = nn.AdaptiveAvgPool2d(output_size=1)
        self.linear = nn.Linear(int(512 * width_multiplier[3]), num_classes)

    def _make_stage(self, planes: int, num_blocks: int) -> nn.Sequential:
        blocks = []
        for stride in [2] + [1] * (num_blocks - 1):
            blocks.append(RepVGGBlock(self.in_planes, planes, 3, stride=stride, padding=1, deploy=self.deploy))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.stage1(self.stage0(x)))))
        return self.linear(torch.flatten(self.gap(x), 1))


def _repvgg(num_blocks: Sequence[int], width_multiplier: Sequence[float], num_classes: int, deploy: bool) -> RepVGG:
    model = RepVGG(num_blocks, width_multiplier, num_classes, deploy)
    init_weights(model, linear_std=None)
    return model


@register_model(family="repvgg")
def repvgg_a0(num_classes: int = 1000, deploy: bool = False) -> RepVGG:
    """RepVGG-A0 (blocks 2-4-14-1, widths 0.75/2.5)."""
    return _repvgg([2, 4, 14, 1], [0.75, 0.75, 0.75, 2.5], num_classes, deploy)


@register_model(family="repvgg")
def repvgg_a1(num_classes: int = 1000, deploy: bool = False) -> RepVGG:
    """RepVGG-A1 (blocks 2-4-14-1, widths 1/2.5)."""
    return _repvgg([2, 4, 14, 1], [1, 1, 1, 2.5], num_classes, deploy)


@register_model(family="repvgg")
def repvgg_b0(num_classes: int = 1000, deploy: bool = False) -> RepVGG:
    """RepVGG-B0 (blocks 4-6-16-1, widths 1/2.5)."""
    return _repvgg([4, 6, 16, 1], [1, 1, 1, 2.5], num_classes, deploy)
