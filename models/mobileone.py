"""MobileOne (Vasu et al., CVPR 2023) in the official layout and names (apple/ml-mobileone)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import init_weights
from .blocks import MobileOneBlock
from .registry import register_model


class MobileOne(nn.Module):
    """``stage0`` (3×3 stride 2), ``stage1``–``stage4`` of depthwise 3×3 + pointwise 1×1 block pairs (the first
    pair of each stage strided), ``gap``, ``linear``."""

    def __init__(self, num_blocks_per_stage: Sequence[int] = (2, 8, 10, 1), num_classes: int = 1000,
                 width_multipliers: Sequence[float] = (0.75, 1.0, 1.0, 2.0), num_conv_branches: int = 1,
                 deploy: bool = False) -> None:
        super().__init__()
        self.deploy = deploy
        self.num_conv_branches = num_conv_branches
        self.in_planes = min(64, int(64 * width_multipliers[0]))
        self.stage0 = MobileOneBlock(3, self.in_planes, 3, stride=2, padding=1, deploy=deploy)
        self.stage1 = self._make_stage(int(64 * width_multipliers[0]), num_blocks_per_stage[0])
        self.stage2 = self._make_stage(int(128 * width_multipliers[1]), num_blocks_per_stage[1])
        self.stage3 = self._make_stage(int(256 * width_multipliers[2]), num_blocks_per_stage[2])
        self.stage4 = self._make_stage(int(512 * width_multipliers[3]), num_blocks_per_stage[3])
        self.gap = nn.AdaptiveAvgPool2d(output_size=1)
        self.linear = nn.Linear(int(512 * width_multipliers[3]), num_classes)

    def _make_stage(self, planes: int, num_blocks: int) -> nn.Sequential:
        blocks: list[nn.Module] = []
        for stride in [2] + [1] * (num_blocks - 1):
            branches = self.num_conv_branches
            blocks.append(MobileOneBlock(self.in_planes, self.in_planes, 3, stride=stride, padding=1,
                                         groups=self.in_planes, num_conv_branches=branches, deploy=self.deploy))
            blocks.append(MobileOneBlock(self.in_planes, planes, 1, stride=1, padding=0, groups=1,
                                         num_conv_branches=branches, deploy=self.deploy))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.stage1(self.stage0(x)))))
        return self.linear(torch.flatten(self.gap(x), 1))


@register_model(family="mobileone")
def mobileone_s0(num_classes: int = 1000, deploy: bool = False) -> MobileOne:
    """MobileOne-S0 (blocks 2-8-10-1, widths 0.75/1/1/2, 4 conv branches at training time)."""
    model = MobileOne((2, 8, 10, 1), num_classes, (0.75, 1.0, 1.0, 2.0), num_conv_branches=4, deploy=deploy)
    init_weights(model, linear_std=None)
    return model
