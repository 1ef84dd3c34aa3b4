"""ResNet-10: the ImageNet ResNet with one BasicBlock per stage, OLTR's ImageNet-LT backbone.

He et al., CVPR 2016 (7x7/2 stem conv, 3x3/2 max pool, four stages of BasicBlocks with 64/128/256/512
channels, strides 1/2/2/2), with blocks [1, 1, 1, 1] as in Liu et al., "Large-Scale Long-Tailed
Recognition in an Open World", CVPR 2019 (trained from scratch; 4.9 M parameters; 7x7x512 map at 224 px).
Built from timm's ``ResNet`` class (timm only ships ``resnet10t``, a deep-tiered-stem, avg-down variant).
"""

from __future__ import annotations

from torch import nn


def resnet10(in_chans: int = 3) -> nn.Module:
    """Plain ResNet-10 (BasicBlock x [1, 1, 1, 1]) returning pooled 512-d features; ``forward_features``
    gives the last feature map [B, 512, H/32, W/32]."""
    from timm.models.resnet import BasicBlock, ResNet

    return ResNet(block=BasicBlock, layers=[1, 1, 1, 1], num_classes=0, in_chans=in_chans)
