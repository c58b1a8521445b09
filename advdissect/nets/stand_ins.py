"""Cheap networks that stand in for the study's architectures where only the plumbing is measured.

`resnet18_shapes` has ResNet-18's dissected shapes at 224 px (layer3: 256 x 14 x 14, layer4:
512 x 7 x 7) for a twenty-fifth of its multiply-adds (69 M against 1.8 G per image), so the
whole chain can be rehearsed at Broden's size on a few CPU cores: every file, job and
whole-layer step has the real study's size, while the network's arithmetic is small. Its
units are not meant to be interpreted.

`vit_tiny` and `swin_tiny` are test-sized transformers, torchvision's own VisionTransformer and
SwinTransformer classes with tiny dimensions, so the workflow's tests can dissect token grids in
seconds: vit_tiny takes 64 x 64 images only (8 x 8 patches of 8 px, two encoder blocks
`encoder.layers.encoder_layer_0`/`_1` of 16 channels); swin_tiny takes any size divisible by 8
(patches of 4 px, stages `features.1` (8 channels) and `features.3` (16 channels, half the grid)).
They are not the study's architectures: use vit_b_16 or swin_t for that.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import SwinTransformer, VisionTransformer


def _block(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=(kernel - stride + 1) // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ResNet18Shapes(nn.Module):
    """224 -> stem (32 x 56 x 56) -> layer1 (64 x 28) -> layer2 (64 x 14) -> layer3 (256 x 14)
    -> layer4 (512 x 7) -> global average -> fc. Strided 2x2 and 4x4 convolutions do the
    downsampling that ResNet-18 spends most of its arithmetic on."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.stem = _block(3, 32, 4, 4)
        self.layer1 = _block(32, 64, 2, 2)
        self.layer2 = _block(64, 64, 2, 2)
        self.layer3 = _block(64, 256, 3, 1)
        self.layer4 = _block(256, 512, 2, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def vit_tiny(num_classes: int = 1000) -> VisionTransformer:
    """A two-block ViT on 64 px images: 8 x 8 patches, 16 channels, 2 heads. Its head starts
    random, as Swin's does (torchvision's ViT starts it at zero: a randomly initialised vit_tiny
    would give every class the same logit, and attacks no gradient)."""
    net = VisionTransformer(
        image_size=64, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=num_classes
    )
    nn.init.trunc_normal_(net.heads.head.weight, std=0.02)
    return net


def swin_tiny(num_classes: int = 1000) -> SwinTransformer:
    """A two-stage Swin: 4 px patches, 8 then 16 channels, one block and one head per stage, 2 x 2 windows."""
    return SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=[2, 2], num_classes=num_classes
    )


STAND_INS = {"resnet18_shapes": ResNet18Shapes, "vit_tiny": vit_tiny, "swin_tiny": swin_tiny}
