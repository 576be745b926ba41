"""Sandglass block: "Rethinking Bottleneck Structure for Efficient Mobile Network Design"
(Zhou, Hou, Chen, Feng, Yan; ECCV 2020), the block of MobileNeXt.

arXiv: 2007.02269 · official code: https://github.com/zhoudaquan/rethinking_bottleneck_design
(``mobilenext/codebase/models/mnext.py``: ``SGBlock``, ``MXNet``; read at commit 195ee73)

Structure (``SGBlock(inp, oup, stride, t)``; t is a *reduction* ratio):
    hidden = inp // t, raised to make_divisible(ceil(oup / 6), 16) when below oup / 6
    dw k x k (stride 1) -> BN -> ReLU6 -> 1x1 inp->hidden -> BN (linear bottleneck)
    -> 1x1 hidden->oup -> BN -> ReLU6 -> dw k x k (stride s) -> BN (linear)
The identity shortcut joins the two high-dimensional ends (input and output), not the
bottleneck.  ``identity_div`` adds the shortcut to the first C // div channels only.
The official code picks one of four forms (``sandglass_form`` reproduces the rule):
  * t == 2 (MobileNeXt's first block): the full form, no shortcut;
  * inp != oup, stride 1 (and not keep_3x3): both 1x1 convs only, no depthwise conv at all;
  * inp != oup, stride 2 (and not keep_3x3): the two 1x1 convs, then dw (stride 2) -> BN;
  * otherwise (inp == oup, or keep_3x3): the full form; shortcut unless keep_3x3.
MXNet sets keep_3x3 on the first block of a stage that has one block and stride 1.

Departures from the official code:
  * the depthwise convs are ``DW_CONVS[dw_conv](C, k, stride)`` ("plain" = nn.Conv2d,
    groups=C, padding k//2, as the official code) and the kernel size is a parameter (the
    official block is 3x3 only), so the search spaces can swap conv variants and kernels;
  * in the last form the official code hard-codes stride 1 on the last dw conv and keeps the
    shortcut whatever ``stride`` says; MXNet never builds that block with stride 2.  Here the
    stride goes to the last dw conv and the shortcut is dropped at stride 2 (it could not be
    added), so a stride-2 request is honoured instead of silently ignored;
  * the shortcut is added out of place (``cat`` of the summed and untouched channels) instead
    of the official in-place slice assignment: same values, autograd- and trace-safe;
  * ReLU6 is not in-place (same values; attention plug-ins may read the tensor);
  * ``mobile_init`` (MXNet's ``_initialize_weights``, identical to torchvision MobileNetV2's)
    is applied to the layers the block builds, but not inside a non-plain conv variant, which
    keeps its own (e.g. DO-Conv's zero-initialised D).

DARTS edge ops ``sandglass_3x3`` / ``sandglass_5x5``: the paper adds the block to the DARTS
search space but publishes no code for it, and the exact operator is unverified.  We use the
full form C_in -> C_out with the stride on the *last* dw conv (as the block strides) and the
identity shortcut when C_in == C_out and stride 1.  Reduction ratio t = 2: DARTS cells run at
16-64 channels, where MobileNeXt's own block at that width (its first, 32 -> 96) uses t = 2;
t = 6 would leave 2-6 bottleneck channels (the oup/6 floor applies either way).  Consistent
with the paper's "25% parameter reduction" [P]: DARTS-V2 (C=36, 20 cells, 3.349M) with its
sep_conv_3x3 edges swapped for sandglass_3x3 has 2.556M params at t=2 (-24%; t=4: -36%).
No leading ReLU as in DARTS' ReLU-Conv-BN ops: the block starts on linear features by design.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import nn

from ..registry import OPS
from .common import check_stride, dw_bn, make_divisible, mobile_init

FORMS = ("full", "pw_dw", "pw")  # dw+pw+pw+dw | pw+pw+dw (stride 2) | pw+pw


def sandglass_hidden(inp: int, oup: int, t: int) -> int:
    """Bottleneck width: inp // t, with the official floor at oup / 6 (rounded to 16)."""
    hidden = inp // t
    if hidden < oup / 6.0:
        hidden = make_divisible(math.ceil(oup / 6.0), 16)
    return hidden


def sandglass_form(inp: int, oup: int, stride: int, t: int, keep_3x3: bool = False) -> Tuple[str, bool]:
    """(form, identity shortcut) as ``SGBlock.__init__`` chooses them (see module docstring)."""
    check_stride(stride)
    if t == 2:
        return "full", False
    if inp != oup and not keep_3x3:
        return ("pw" if stride == 1 else "pw_dw"), False
    return "full", (not keep_3x3 and stride == 1)


class SandglassConv(nn.Sequential):
    """The sandglass conv branch (no shortcut) in one of the official forms."""

    def __init__(self, inp: int, oup: int, stride: int, hidden: int, form: str = "full",
                 kernel_size: int = 3, dw_conv: str = "plain"):
        check_stride(stride)
        if form not in FORMS:
            raise ValueError(f"unknown sandglass form {form!r}; known: {FORMS}")
        if form == "pw" and stride != 1:
            raise ValueError("the 1x1-only sandglass form cannot stride")
        layers = []
        if form == "full":
            layers.append(dw_bn(inp, kernel_size, 1, dw_conv, act=True))
        pw = [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden),  # linear bottleneck
              nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU6()]
        mobile_init(*pw)
        layers += pw
        if form != "pw":
            layers.append(dw_bn(oup, kernel_size, stride, dw_conv, act=False))
        super().__init__(*layers)


def add_identity(out: torch.Tensor, x: torch.Tensor, div: int = 1) -> torch.Tensor:
    """``out`` with ``x`` added to its first C // div channels (MobileNeXt's identity_div)."""
    k = x.shape[1] // div
    if k == out.shape[1]:
        return out + x
    return torch.cat([out[:, :k] + x[:, :k], out[:, k:]], dim=1)


class SGBlock(nn.Module):
    """MobileNeXt's sandglass block, as ``mnext.SGBlock`` (plus kernel/conv-variant options)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, keep_3x3: bool = False,
                 kernel_size: int = 3, dw_conv: str = "plain", identity_div: int = 1):
        super().__init__()
        self.hidden = sandglass_hidden(inp, oup, expand_ratio)
        self.form, self.identity = sandglass_form(inp, oup, stride, expand_ratio, keep_3x3)
        self.identity_div = identity_div
        self.conv = SandglassConv(inp, oup, stride, self.hidden, self.form, kernel_size, dw_conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return add_identity(out, x, self.identity_div) if self.identity else out


class SandglassEdge(nn.Module):
    """The block as a DARTS edge: full form, stride on the last dw conv, identity if shapes allow."""

    def __init__(self, C_in: int, C_out: int, stride: int, kernel_size: int, t: int = 2,
                 dw_conv: str = "plain"):
        super().__init__()
        self.identity = C_in == C_out and check_stride(stride) == 1
        self.conv = SandglassConv(C_in, C_out, stride, sandglass_hidden(C_in, C_out, t), "full",
                                  kernel_size, dw_conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out + x if self.identity else out


@OPS.register("sandglass_3x3", tags={"sandglass", "conv"})
def sandglass_3x3(C_in: int, C_out: int, stride: int, **kw) -> nn.Module:
    """Sandglass block with 3x3 depthwise convs (t=2) as a DARTS edge."""
    return SandglassEdge(C_in, C_out, stride, 3, **kw)


@OPS.register("sandglass_5x5", tags={"sandglass", "conv"})
def sandglass_5x5(C_in: int, C_out: int, stride: int, **kw) -> nn.Module:
    """Sandglass block with 5x5 depthwise convs (t=2) as a DARTS edge."""
    return SandglassEdge(C_in, C_out, stride, 5, **kw)
