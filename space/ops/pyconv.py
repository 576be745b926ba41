"""PyConv: "Pyramidal Convolution: Rethinking Convolutional Neural Networks for Visual
Recognition" (Duta, Liu, Zhu, Shao; 2020).

arXiv: 2006.11538 · official code: https://github.com/iduta/pyconv (``models/pyconvresnet.py``:
``PyConv2d``, ``PyConv2/3/4``, ``get_pyconv``, ``PyConvBlock``, ``PyConvResNet``)

Structure: parallel convs ("levels") that all read the full input, with growing kernels and
growing group counts, concatenated on channels.  PyConvResNet uses one setting per stage, i.e.
per feature-map resolution (224 input: stage outputs 56, 28, 14, 7):

=====  ============  ===========  ======================
level  kernels       groups       output split
=====  ============  ===========  ======================
4      3, 5, 7, 9    1, 4, 8, 16  C/4, C/4, C/4, C/4
3      3, 5, 7       1, 4, 8      C/4, C/4, C/2
2      3, 5          1, 4         C/2, C/2
1      3             1            C
=====  ============  ===========  ======================

As a candidate, ``OPS["pyconv_3x3"]`` is ReLU -> PyConv (stride on every level, C_in -> C_out)
-> BN, DARTS' ReLUConvBN with PyConv as the conv (PyConvBlock likewise puts BN after it).
The number of levels is, in order of precedence: ``levels=`` (1..4); else chosen from
``resolution=`` (the op's input H) by ``levels_for_resolution``; else ``DEFAULT_LEVELS`` (4,
the full pyramid of the paper's Fig. 1).  Spaces know an edge's resolution; the registry
signature does not carry it, so the registry meta ``resolution=True`` asks spaces to pass
``resolution=H`` (the edge's input height), which gives PyConvResNet's rule.
The rule keys on the OUTPUT resolution ceil(H/stride), because PyConvResNet's first block of a
stage strides inside the PyConv and already uses that stage's setting (stage 1 reads 112 and
writes 56 with 4 levels).  Thresholds: H' >= 32 -> 4, >= 16 -> 3, >= 8 -> 2, else 1.  This
gives exactly PyConvResNet's 56/28/14/7 -> 4/3/2/1 at 224, and 32/16/8/4 -> 4/3/2/1 on CIFAR
maps (a DARTS CIFAR net's cells see 32, 16, 8): each halving of the map drops the largest
kernel, and the 9x9 level only runs on maps >= 32 (>= 3.5x the kernel; 6x at 56).
(Scaling the thresholds with the input instead would put 9x9 kernels on 8x8 CIFAR maps.)

Departures from the official code:
* Padding is ``dilation * (k // 2)``; the official ``k // 2`` is only right for dilation 1.
* Groups that do not divide the channels are adapted: level i uses ``gcd(g_i, C_in, out_i)``
  (the official code leaves it to nn.Conv2d, which raises; PyConvResNet's stage-1 setting
  needs C % 64 == 0).
  For power-of-two g_i this is the largest power of two <= g_i dividing both; e.g. C=16 at 4
  levels uses groups 1, 4, 4, 4.  ``PyConv2d.groups`` records the groups used.
* Output splits that do not divide: the last level takes the remainder (the official code
  would silently drop channels for C_out not divisible by 4).
* No depthwise (DW_CONVS) form: every PyConv level reads ALL input channels and writes only
  its share out_i < C of the output, so no level can be depthwise (groups = C would need C to
  divide out_i).  Splitting the input among kernels instead is MixConv, a different module.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from torch import nn

from ..registry import OPS
from .common import check_stride

# levels -> (kernels, groups, output shares in quarters), PyConvResNet's stage settings
SETTINGS = {
    4: ((3, 5, 7, 9), (1, 4, 8, 16), (1, 1, 1, 1)),
    3: ((3, 5, 7), (1, 4, 8), (1, 1, 2)),
    2: ((3, 5), (1, 4), (1, 1)),
    1: ((3,), (1,), (1,)),
}
DEFAULT_LEVELS = 4
THRESHOLDS = ((32, 4), (16, 3), (8, 2))  # output H' >= t -> levels


def levels_for_resolution(h: int, stride: int = 1) -> int:
    """PyConvResNet's levels for an op reading an H x H map (keyed on its output size)."""
    h_out = -(-h // stride)
    for t, levels in THRESHOLDS:
        if h_out >= t:
            return levels
    return 1


def split_channels(C: int, shares: Sequence[int]) -> List[int]:
    total = sum(shares)
    out = [C * s // total for s in shares[:-1]]
    return out + [C - sum(out)]


class PyConv2d(nn.Module):
    """Parallel convs, one per level, all reading the input; outputs concatenated."""

    def __init__(self, in_channels: int, out_channels: Sequence[int], kernels: Sequence[int],
                 groups: Sequence[int], stride: int = 1, dilation: int = 1, bias: bool = False):
        super().__init__()
        if not len(out_channels) == len(kernels) == len(groups):
            raise ValueError("out_channels, kernels and groups need one entry per level")
        self.groups = [math.gcd(g, in_channels, c) for g, c in zip(groups, out_channels)]
        self.levels = nn.ModuleList(
            nn.Conv2d(in_channels, c, k, stride, dilation * (k // 2), dilation, g, bias=bias)
            for c, k, g in zip(out_channels, kernels, self.groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([level(x) for level in self.levels], dim=1)


def pyconv(C_in: int, C_out: int, levels: int, stride: int = 1, dilation: int = 1) -> PyConv2d:
    """PyConv with PyConvResNet's setting for ``levels`` (1..4)."""
    if levels not in SETTINGS:
        raise ValueError(f"PyConv levels must be 1..4, got {levels}")
    kernels, groups, shares = SETTINGS[levels]
    return PyConv2d(C_in, split_channels(C_out, shares), kernels, groups, stride, dilation)


@OPS.register("pyconv_3x3", tags={"conv", "multi_kernel"}, resolution=True)
def pyconv_3x3(C_in: int, C_out: int, stride: int, levels: Optional[int] = None,
               resolution: Optional[int] = None, **kw) -> nn.Module:
    """ReLU -> PyConv (levels from ``levels``, else ``resolution``, else 4) -> BN."""
    stride = check_stride(stride)
    if levels is None:
        levels = DEFAULT_LEVELS if resolution is None else levels_for_resolution(resolution, stride)
    return nn.Sequential(nn.ReLU(inplace=False), pyconv(C_in, C_out, levels, stride),
                         nn.BatchNorm2d(C_out))
