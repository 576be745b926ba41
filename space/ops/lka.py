"""Visual Attention Network: Large Kernel Attention (Guo, Lu, Liu, Cheng, Hu; CVMJ 2023).

arXiv: 2202.09741 · official code: https://github.com/Visual-Attention-Network/VAN-Classification
(``models/van.py``: ``AttentionModule`` = LKA, ``SpatialAttention`` = the attention sub-block).

Structure:
* ``LKA(C)``: ``attn = 1x1(DW7x7_dil3(DW5x5(x)))``, out ``x * attn``.  The 5x5 depthwise conv
  (pad 2), the 7x7 depthwise conv with dilation 3 (pad 9) and the 1x1 conv decompose a 21x21
  kernel; every conv has a bias, so params = 25C+C + 49C+C + C^2+C = C^2 + 77C.
* ``VANAttention(C)`` (VAN's ``SpatialAttention``): 1x1 proj -> GELU -> LKA -> 1x1 proj, plus
  the input as shortcut.  In a VAN ``Block`` it sits after BN and is scaled by layer scale.

Registered as:
* ATTENTIONS ``lka``: LKA itself, a plug-in applied after a conv (registered with ``op=False``).
* OPS ``lka``: the VAN attention sub-block, as VAN uses LKA.  At C_in == C_out and stride 1 it
  is the sub-block alone; otherwise DARTS' ``FactorizedReduce`` (stride 2) or a 1x1 ReLUConvBN
  (channel change) runs first (``Adapted``).  No ``lka_3x3`` is registered: the sub-block is
  already a spatial mixer with a 23x23 receptive field and its own projections, so a 3x3
  ReLUConvBN in front (what ``register_attention`` would add) is a combination VAN never uses
  and adds 9C^2 weights for almost no extra context.
* TOKEN_MIXERS ``lka``: the VAN attention sub-block (dim -> dim), the token mixer of the
  MetaFormer space's VAN preset (the block's norm, layer scale and residual stay outside).

Departures: none in structure.  Weights are initialised as VAN does (``_init_weights``: conv
weights N(0, sqrt(2 / fan_out)) with fan_out = k*k*C_out/groups, zero biases).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..registry import OPS, TOKEN_MIXERS
from .common import Adapted, DilatedDWConv, check_stride, register_attention


def _van_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class LKA(nn.Module):
    """Large kernel attention: ``x * conv1x1(dw7x7_d3(dw5x5(x)))``."""

    def __init__(self, C: int):
        super().__init__()
        self.conv0 = nn.Conv2d(C, C, 5, padding=2, groups=C)
        self.conv_spatial = DilatedDWConv(C, C, 7, padding=9, dilation=3, groups=C)
        self.conv1 = nn.Conv2d(C, C, 1)
        _van_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv1(self.conv_spatial(self.conv0(x)))


class VANAttention(nn.Module):
    """VAN's attention sub-block: ``proj_2(LKA(GELU(proj_1(x)))) + x``."""

    def __init__(self, C: int):
        super().__init__()
        self.proj_1 = nn.Conv2d(C, C, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = LKA(C)
        self.proj_2 = nn.Conv2d(C, C, 1)
        _van_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x)))) + x


register_attention("lka", LKA, tags={"van"}, op=False)
TOKEN_MIXERS.register("lka", VANAttention, tags={"van"})


@OPS.register("lka", tags={"van", "attention"})
def lka_op(C_in: int, C_out: int, stride: int, **kw) -> nn.Module:
    """VAN's attention sub-block, after FactorizedReduce / 1x1 ReLUConvBN when shapes change."""
    return Adapted(C_in, C_out, check_stride(stride), VANAttention(C_out))


__all__ = ["LKA", "VANAttention"]
