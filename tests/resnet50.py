"""torchvision-style ResNet-50 for paper-figure tests of plug-ins (DCANet, AFF): a bottleneck
whose output can pass through an attention and whose residual merge can be a fusion."""
from typing import Callable, Optional

import torch
from torch import nn

WIDTHS, DEPTHS = (64, 128, 256, 512), (3, 4, 6, 3)


class Bottleneck(nn.Module):
    """Stride on the 3x3 (torchvision); ``att(inplanes, out)`` after the last BN, ``fuse(out)``
    merges the residual (plain add when None)."""

    def __init__(self, inplanes: int, planes: int, stride: int, att: Optional[Callable] = None,
                 fuse: Optional[Callable] = None):
        super().__init__()
        out = planes * 4
        self.body = nn.Sequential(
            nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out))
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
        self.att = att(inplanes, out) if att is not None else nn.Identity()
        self.fuse = fuse(out) if fuse is not None else None

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = self.att(self.body(x))
        return torch.relu(y + identity if self.fuse is None else self.fuse(y, identity))


def resnet50(att: Optional[Callable] = None, fuse_for_stage: Callable[[int], Optional[Callable]] = lambda i: None
             ) -> nn.Sequential:
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    inplanes = 64
    for i, (planes, blocks) in enumerate(zip(WIDTHS, DEPTHS)):
        for b in range(blocks):
            layers.append(Bottleneck(inplanes, planes, 2 if b == 0 and i > 0 else 1, att, fuse_for_stage(i)))
            inplanes = planes * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000)]
    return nn.Sequential(*layers)
