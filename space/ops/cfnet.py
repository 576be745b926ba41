"""CFNet: "Cascade Fusion Network for Dense Prediction" (Gang Zhang et al., 2023).

arXiv: 2302.06052 · official repository: https://github.com/zhanggang001/CFNet
**The official code was never released** (the repository holds only a README, "Code will be
available here", checked at 6d143fe).  This file follows the paper: Figure 5(a) (focal NeXt
block) and Figure 4 (transition blocks) with their captions, as reproduced by the unofficial
Tuo-tuo/DLModels ``CFNet`` (read, not followed where it departs from the figures; see below).
No published number could be verified, so none is tested.

CFNet: a stem and a few blocks at 1/4 and 1/8, then several cascaded stages, each a small
sub-backbone (blocks at 1/8 -> down -> blocks at 1/16 -> down -> **focal blocks** at 1/32) and a
light **transition block** that fuses its C3, C4, C5 into P3 for the next stage; only the last
stage emits P3/P4/P5.

* ``OPS["cfnet_focal"]`` (tags ``deep_stage``, ``large_kernel``): the focal NeXt block, a
  ConvNeXt block with two orange additions of Fig. 5(a):
  ``y = x + GELU(LN(dw7x7(x)))``; ``y = y + GELU(LN(dw7x7_dilation_r(y)))``;
  ``out = x + 1x1(GELU(1x1_expand4(y)))``.  The caption: "each d7x7 is followed by a LayerNorm
  and a GELU"; LayerNorm is over channels at each pixel (ConvNeXt's channels-first LN).
  Receptive field of one block: 3 + 3r pixels each side (12 at r = 3, a 25x25 square).
  The paper uses it at the deepest (1/32) stage to enlarge the receptive field of C5 (the tag
  says so; a space decides where to offer it); it still honours the OPS contract at any stride
  and width: C_in != C_out or stride 2 go through DARTS' ``project`` (1x1 ReLUConvBN /
  FactorizedReduce) before the block, as ``space.ops.common.Adapted``; the paper's networks
  downsample with separate layers before the block.
* ``NECKS["cfnet_transition"]`` (``NECKS`` is defined in ``space.ops.fpt``):
  ``CFNetTransition(channels=(d3, d4, d5), C_out, mode)`` takes [C3, C4, C5] at 1/8, 1/16, 1/32
  and returns [P3, P4, P5]; "Conv-d_x" is a 1x1 conv to d_x channels, upsampling is bilinear.
  - ``add`` (Fig. 4a, default): ``P3 = C3 + up4(conv_d3(C5)) + up2(conv_d3(C4))``;
  - ``concat`` (4b): ``P3 = conv_d3(cat(C3, up2(C4), up4(C5)))``;
  - ``seq_add`` (4c, sequentially add): ``P4 = C4 + up2(conv_d4(C5))``,
    ``P3 = C3 + up2(conv_d3(P4))``.
  Caption: "if there is no P4/P5 in a design, C4/C5 is the output P4/P5 (identity mapping)".
  In the cascade only P3 goes on to the next stage.

Departures and choices, and why:

* Focal block: no ConvNeXt layer scale or drop path (Fig. 5 shows neither); biases on every conv
  (ConvNeXt's); dilation r = 3 by default (the figure leaves r open; 3 is the value read by
  secondary sources, unverified).  The unofficial code adds a 1x1 conv after each depthwise
  conv, which the figure does not have: not followed.
* Transition: P3 keeps C3's width when ``C_out == d3`` (the paper); otherwise the convs that
  officially map to d3 map to ``C_out``, and C3 gets a 1x1 conv to ``C_out`` (the only added
  layer).  Upsampling goes to the exact size of the finer map (bilinear, align_corners=False,
  which the paper does not state) instead of a fixed factor, so that odd sizes work.
* "add" is the default: the simplest design; a secondary source reports that the authors found
  sequential add best (unverified).
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import OPS
from .common import Adapted, DilatedDWConv, check_stride
from ..registry import NECKS


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of a (B, C, H, W) map (ConvNeXt's channels_first)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class FocalNeXtBlock(nn.Module):
    """Fig. 5(a): 7x7 DW (+res), 7x7 DW dilation r (+res), 1x1 x4, GELU, 1x1, + identity."""

    def __init__(self, C: int, dilation: int = 3, expansion: int = 4, kernel_size: int = 7):
        super().__init__()
        pad = kernel_size // 2
        self.dw = nn.Conv2d(C, C, kernel_size, padding=pad, groups=C)
        self.norm1 = LayerNorm2d(C, eps=1e-6)
        self.dw_dilated = DilatedDWConv(C, C, kernel_size, padding=pad * dilation, dilation=dilation,
                                        groups=C)
        self.norm2 = LayerNorm2d(C, eps=1e-6)
        self.pw1 = nn.Conv2d(C, expansion * C, 1)
        self.pw2 = nn.Conv2d(expansion * C, C, 1)
        self.reach = pad + pad * dilation  # pixels each side that one block sees

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x + F.gelu(self.norm1(self.dw(x)))
        y = y + F.gelu(self.norm2(self.dw_dilated(y)))
        return x + self.pw2(F.gelu(self.pw1(y)))


@OPS.register("cfnet_focal", tags={"cfnet", "large_kernel", "deep_stage"},
              stage="deepest (1/32): CFNet uses it to enlarge C5's receptive field")
def cfnet_focal(C_in: int, C_out: int, stride: int, dilation: int = 3, **kw) -> nn.Module:
    """CFNet focal NeXt block; channel/stride changes through DARTS' projection first."""
    return Adapted(C_in, C_out, check_stride(stride), FocalNeXtBlock(C_out, dilation, **kw))


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class CFNetTransition(nn.Module):
    """Fig. 4 transition block: [C3, C4, C5] (1/8, 1/16, 1/32) -> [P3, P4, P5]."""

    MODES = ("add", "concat", "seq_add")

    def __init__(self, channels: Sequence[int], C_out: int, mode: str = "add"):
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"the transition block fuses C3, C4, C5; got {len(channels)} levels")
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        d3, d4, d5 = channels
        self.mode = mode
        self.channels = list(channels)
        self.out_channels = [C_out, d4, d5]
        self.lateral3 = nn.Conv2d(d3, C_out, 1) if d3 != C_out and mode != "concat" else None
        if mode == "add":
            self.conv5 = nn.Conv2d(d5, C_out, 1)
            self.conv4 = nn.Conv2d(d4, C_out, 1)
        elif mode == "concat":
            self.conv = nn.Conv2d(d3 + d4 + d5, C_out, 1)
        else:
            self.conv5 = nn.Conv2d(d5, d4, 1)
            self.conv4 = nn.Conv2d(d4, C_out, 1)

    def forward(self, feats: List[torch.Tensor]) -> List[torch.Tensor]:
        c3, c4, c5 = feats
        if self.mode == "concat":
            return [self.conv(torch.cat([c3, _up(c4, c3), _up(c5, c3)], dim=1)), c4, c5]
        base = c3 if self.lateral3 is None else self.lateral3(c3)
        if self.mode == "add":
            return [base + _up(self.conv5(c5), c3) + _up(self.conv4(c4), c3), c4, c5]
        p4 = c4 + _up(self.conv5(c5), c4)
        return [base + _up(self.conv4(p4), c3), p4, c5]


@NECKS.register("cfnet_transition", tags={"cfnet", "cross_scale"}, inputs=3)
def cfnet_transition(channels: Sequence[int], C_out: int, **kw) -> CFNetTransition:
    """CFNet transition block (kw ``mode``: add / concat / seq_add) on C3, C4, C5."""
    return CFNetTransition(channels, C_out, **kw)
