"""DEA-Net's content-guided attention (Chen, He, Lu; IEEE TIP 2024): CGA and CGAFusion.

arXiv: 2301.04805 · official code: https://github.com/cecret3350/DEA-Net
(``code/model/modules/cga.py``: SpatialAttention, ChannelAttention, PixelAttention;
``deablock.py``: how DEABlock applies them; ``fusion.py``: CGAFusion).

Structure:
* channel attention ``CA``: GAP, 1x1 conv C->C/r (bias), ReLU, 1x1 conv C/r->C (bias); r = 8.
* spatial attention ``SA``: [mean over channels, max over channels] -> 7x7 conv 2->1 (bias,
  reflect padding).
* ``pattn1 = SA + CA`` (B,1,H,W + B,C,1,1 -> B,C,H,W): a coarse spatial importance map per
  channel.
* pixel attention ``PA``: interleave the channels of the features and of pattn1
  (x_0, p_0, x_1, p_1, ...), grouped 7x7 conv 2C->C with groups=C (bias, reflect padding), then
  sigmoid: the refined per-channel map ``pattn2``.
* ``CGA(C)`` as DEABlock uses it: ``x * pattn2`` (registered in ATTENTIONS as ``cga``, and so as
  OPS ``cga`` / ``cga_3x3``: a 1x1 / 3x3 ReLUConvBN then CGA).
* ``CGAFusion(C, reduction=8)`` (FUSIONS ``cga_fusion``): ``init = x + y``; pattn1 from init;
  ``pattn2 = sigmoid(PA(init, pattn1))``; ``out = conv1x1(init + pattn2*x + (1-pattn2)*y)``
  (1x1 conv with bias).  PA already ends in a sigmoid, so the official fusion applies sigmoid
  twice and its mixing weight lies in (0.5, 0.73); that double sigmoid is kept for fidelity.
  Params (C=128, r=8): 99 (SA) + 4,240 (CA) + 12,672 (PA) + 16,512 (1x1) = 33,523.

Departures:
* Reflect padding: PyTorch only reflects a border narrower than the map (pad 3 needs H, W >= 4).
  Where a map is smaller (stride-2 ops on 4x4 or 5x5 inputs, late stages of small inputs) the
  padding is reflected again from the padded map until it is 3 wide (a 1-pixel side is
  replicated).  At H, W >= 4 this is exactly the official ``padding_mode='reflect'``.
* C/r is floored at 1 channel so that small C works (the official ``dim // reduction`` gives 0).
* Init is PyTorch's default, as the official code.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import FUSIONS
from .common import fast_forms, is_channels_last, register_attention


def _reflect_along(x: torch.Tensor, p: int, dim: int) -> torch.Tensor:
    def pad(n: int):
        return (n, n, 0, 0) if dim == -1 else (0, 0, n, n)

    if x.shape[dim] == 1:  # a 1-pixel side reflects onto itself
        return F.pad(x, pad(p), mode="replicate")
    while p > 0:
        step = min(p, x.shape[dim] - 1)
        x = F.pad(x, pad(step), mode="reflect")
        p -= step
    return x


def reflect_pad(x: torch.Tensor, p: int) -> torch.Tensor:
    """Reflect padding of width p on H and W, reflecting repeatedly where the map is narrower."""
    with warnings.catch_warnings():
        # the branch depends on the map size only, which a (shape-specialised) trace fixes anyway
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if min(x.shape[-2:]) > p:
            return F.pad(x, (p, p, p, p), mode="reflect")
        return _reflect_along(_reflect_along(x, p, -1), p, -2)  # 2-D reflection is separable


class ReflectConv(nn.Conv2d):
    """A 'same' k x k conv with the reflect padding above (the official convs use
    ``padding_mode='reflect'``)."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, groups: int = 1):
        super().__init__(C_in, C_out, kernel_size, padding=0, groups=groups, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(reflect_pad(x, self.kernel_size[0] // 2))


class SpatialAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.sa = ReflectConv(2, 1, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.max(dim=1, keepdim=True)[0]], dim=1)
        if fast_forms(self) and is_channels_last(x):  # two 1-channel maps concatenate plain-contiguous
            pooled = pooled.contiguous(memory_format=torch.channels_last)
        return self.sa(pooled)


class ChannelAttention(nn.Sequential):
    def __init__(self, C: int, reduction: int = 8):
        inter = max(1, C // reduction)
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(C, inter, 1), nn.ReLU(inplace=True),
                         nn.Conv2d(inter, C, 1))


class PixelAttention(nn.Module):
    def __init__(self, C: int):
        super().__init__()
        self.pa2 = ReflectConv(2 * C, C, 7, groups=C)

    def forward(self, x: torch.Tensor, pattn1: torch.Tensor) -> torch.Tensor:
        if fast_forms(self):
            # The same conv as two depthwise convs (x_c and p_c each with its own kernel half),
            # summed: oneDNN's fast kernels cover depthwise convs only, and the grouped conv with
            # two channels per group trained 4.6-6x slower channels-last (bench/grouped_conv.py).  Inference
            # keeps the official form, which the latency tables timed.
            if is_channels_last(x):  # SA + CA broadcasts to a plain-contiguous map (CGAFusion 1.3x)
                pattn1 = pattn1.contiguous(memory_format=torch.channels_last)
            c, w, pad = self.pa2, self.pa2.weight, self.pa2.kernel_size[0] // 2
            out = (F.conv2d(reflect_pad(x, pad), w[:, :1], c.bias, groups=c.out_channels)
                   + F.conv2d(reflect_pad(pattn1, pad), w[:, 1:], None, groups=c.out_channels))
            return torch.sigmoid(out)
        pairs = torch.stack([x, pattn1], dim=2).flatten(1, 2)  # channel order x_0, p_0, x_1, ...
        return torch.sigmoid(self.pa2(pairs))


class CGA(nn.Module):
    """Content-guided attention as in DEABlock: ``x * PA(x, SA(x) + CA(x))``."""

    def __init__(self, C: int, reduction: int = 8):
        super().__init__()
        self.sa = SpatialAttention()
        self.ca = ChannelAttention(C, reduction)
        self.pa = PixelAttention(C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pattn1 = self.sa(x) + self.ca(x)
        return x * self.pa(x, pattn1)


class CGAFusion(nn.Module):
    """DEA-Net's CGA-based mixup fusion of two same-shaped features."""

    def __init__(self, C: int, reduction: int = 8):
        super().__init__()
        self.sa = SpatialAttention()
        self.ca = ChannelAttention(C, reduction)
        self.pa = PixelAttention(C)
        self.conv = nn.Conv2d(C, C, 1, bias=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        initial = x + y
        pattn1 = self.sa(initial) + self.ca(initial)
        pattn2 = torch.sigmoid(self.pa(initial, pattn1))  # second sigmoid: official, see docstring
        return self.conv(initial + pattn2 * x + (1 - pattn2) * y)


register_attention("cga", CGA, tags={"dea_net"})
FUSIONS.register("cga_fusion", CGAFusion, tags={"dea_net", "attention"})

__all__ = ["CGA", "CGAFusion", "reflect_pad"]
