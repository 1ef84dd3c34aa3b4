"""ResNet-32 for 32x32 inputs, the standard long-tailed CIFAR backbone.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, §4.2 (the CIFAR ResNets:
a 3x3 stem with 16 channels, three stages of n basic blocks with 16/32/64 channels, depth 6n+2;
n = 5 gives ResNet-32, 0.46 M parameters). As in the LDAM-DRW protocol (Cao et al., NeurIPS 2019)
the shortcut is "option A": identity, or stride-2 subsampling with zero-padded extra channels,
so shortcuts add no parameters; convolutions and the classifier use Kaiming-normal init.

The module returns the 64-d pooled feature; the classifier head lives in :mod:`ltr_core.models.heads`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PadShortcut(nn.Module):
    """Option-A shortcut: x[:, :, ::2, ::2] with zero channels appended (no parameters)."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection: y = relu(bn(conv(relu(bn(conv(x))))) + s(x))."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity() if stride == 1 and in_ch == out_ch else PadShortcut(out_ch - in_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2 returning pooled features of size ``num_features``."""

    def __init__(self, blocks_per_stage: int = 5, widths: tuple[int, int, int] = (16, 32, 64), in_chans: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, in_ch = [], widths[0]
        for stage, width in enumerate(widths):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(in_ch, width, stride))
                in_ch = width
        self.layers = nn.Sequential(*layers)
        self.num_features = in_ch
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map [B, 64, H/4, W/4] (OLTR's attention works on it)."""
        return self.layers(F.relu(self.bn1(self.conv1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(dim=(2, 3))


def resnet32(in_chans: int = 3) -> CifarResNet:
    """ResNet-32: 3 stages x 5 basic blocks, 16/32/64 channels."""
    return CifarResNet(5, (16, 32, 64), in_chans)
