"""DO-Conv: Depthwise Over-parameterized Convolutional Layer (Cao et al., IEEE TIP 2022).

arXiv: 2006.12030 · official code: https://github.com/yangyanli/DO-Conv
(``do_conv_pytorch_1_10.py``, ``DOConv2d``; folding demo ``sample_pt_with_fusion.py``)

Structure: a k x k conv whose weight is the composition of a trainable depthwise kernel
``D`` (C_in, k*k, D_mul) and a conventional kernel ``W`` (C_out, C_in/groups, D_mul):
``DoW[o, i, m] = sum_s (D + d_diag)[row(o, i), m, s] * W[o, i, s]`` followed by one ordinary conv.
``D`` is zero-initialised and ``d_diag`` is the identity tiled along D_mul, so at init
``DoW == W`` (with the default ``D_mul = k*k``) and training starts from a plain conv.
Because ``DoW`` depends on weights only, ``deploy()`` computes it once and returns a plain
``nn.Conv2d``: the over-parameterisation costs nothing at inference.  groups=1 is DO-Conv,
groups=C_in (=C_out) DO-DConv, anything else DO-GConv.

As candidates:
* ``OPS["do_conv_3x3"]``: DARTS' ReLUConvBN with DO-Conv in place of the conv: ReLU ->
  DOConv2d(C_in, C_out, 3, stride, padding 1, bias=False) -> BN.  The stride sits on the conv
  (as DARTS' ReLUConvBN/SepConv), channels change in the conv itself, so no adaptation is needed.
* ``DW_CONVS["do_conv"]``: DO-DConv, ``DOConv2d(C, C, k, stride, padding k//2, groups=C,
  bias=False)`` (no BN/activation: MobileNet-like blocks add their own, as ``"plain"``).

Departures from the official code:
* ``d_diag`` is a registered buffer, not a ``Parameter(requires_grad=False)``: it is a constant,
  so ``parameters()`` holds only what trains (the official module over-counts by C_in*k*k*D_mul).
  The names ``W``, ``D``, ``d_diag``, ``bias`` are kept, so official state dicts load.
* Padding defaults to "same" (``dilation * (k - 1) // 2``) in the ops; the class keeps the
  official default 0.  Only zero padding is implemented (the official ``padding_mode`` is not).
* ``D_mul < k*k`` raises ValueError: the paper requires D_mul >= M*N, and the official code
  would silently build an all-zero ``d_diag`` (so DoW == 0 at init).
* Grouped layout (``group_layout``): the official code reshapes W (C_out, C_in/g, D_mul) to
  (C_out/g, C_in, D_mul), so output o, in-group channel i uses D row ``(o % g) * C_in/g + i``,
  not the input channel it convolves (``(o // (C_out/g)) * C_in/g + i``, the paper's "D is a
  depthwise conv on the input").  Both agree for groups=1 and for groups=C_in=C_out, i.e. for
  every registered op here.  They differ only for DO-GConv (1 < g < C_in) and depthwise
  multipliers; both fold exactly.  Default ``"official"`` (what the published runs used);
  ``"paper"`` gives the input-channel-aligned layout.
* FLOPs: before ``deploy()`` fvcore counts the weight-side einsum
  (C_in * k*k * D_mul * C_out/g multiply-adds, batch-independent) on every forward, as the
  official module does.  Count deployed networks (``space.ops.deploy``): that cost disappears.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import DW_CONVS, OPS
from .common import check_stride


class DOConv2d(nn.Module):
    """``nn.Conv2d``-like DO-Conv (zero padding); ``deploy()`` returns the folded ``nn.Conv2d``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 D_mul: Optional[int] = None, stride: int = 1, padding: int = 0, dilation: int = 1,
                 groups: int = 1, bias: bool = True, group_layout: str = "official"):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must be divisible by groups ({groups})")
        if group_layout not in ("official", "paper"):
            raise ValueError(f"group_layout must be 'official' or 'paper', got {group_layout!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.groups, self.group_layout = dilation, groups, group_layout
        mn = kernel_size * kernel_size
        if mn == 1:  # a 1x1 kernel has nothing to over-parameterise: plain conv (official)
            D_mul = 1
        elif D_mul is None:
            D_mul = mn
        elif D_mul < mn:
            raise ValueError(f"D_mul must be >= k*k = {mn} (DO-Conv paper), got {D_mul}")
        self.D_mul = D_mul

        self.W = nn.Parameter(torch.empty(out_channels, in_channels // groups, D_mul))
        nn.init.kaiming_uniform_(self.W, a=math.sqrt(5))
        if mn > 1:
            self.D = nn.Parameter(torch.zeros(in_channels, mn, D_mul))
            reps, rest = divmod(D_mul, mn)
            diag = torch.eye(mn).repeat(1, reps)  # identity tiled along D_mul, zeros after
            diag = torch.cat([diag, torch.zeros(mn, rest)], dim=1)
            self.register_buffer("d_diag", diag.expand(in_channels, mn, D_mul).clone())
        else:
            self.register_parameter("D", None)
            self.register_buffer("d_diag", None)
        if bias:
            bound = 1 / math.sqrt((in_channels // groups) * D_mul)  # fan_in of W, as official
            self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)

    def folded_weight(self) -> torch.Tensor:
        """DoW, the (C_out, C_in/g, k, k) kernel the layer applies."""
        k, g = self.kernel_size, self.groups
        shape = (self.out_channels, self.in_channels // g, k, k)
        if self.D is None:
            return self.W.reshape(shape)
        D = self.D + self.d_diag
        if self.group_layout == "official":
            W = self.W.reshape(self.out_channels // g, self.in_channels, self.D_mul)
            return torch.einsum("ims,ois->oim", D, W).reshape(shape)
        D = D.reshape(g, self.in_channels // g, k * k, self.D_mul)
        W = self.W.reshape(g, self.out_channels // g, self.in_channels // g, self.D_mul)
        return torch.einsum("gims,gois->goim", D, W).reshape(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.folded_weight(), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)

    @torch.no_grad()
    def deploy(self) -> nn.Conv2d:
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                         self.padding, self.dilation, self.groups, bias=self.bias is not None)
        conv.to(self.W.device, self.W.dtype)
        conv.weight.copy_(self.folded_weight())
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"D_mul={self.D_mul}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}")


@OPS.register("do_conv_3x3", tags={"conv", "reparam"})
def do_conv_3x3(C_in: int, C_out: int, stride: int, D_mul: Optional[int] = None, **kw) -> nn.Module:
    """ReLU -> DO-Conv 3x3 (stride, C_in -> C_out, no bias) -> BN: DARTS' ReLUConvBN with
    DO-Conv; ``deploy`` folds the DO-Conv into a plain conv."""
    return nn.Sequential(
        nn.ReLU(inplace=False),
        DOConv2d(C_in, C_out, 3, D_mul=D_mul, stride=check_stride(stride), padding=1, bias=False),
        nn.BatchNorm2d(C_out),
    )


@DW_CONVS.register("do_conv", tags={"reparam"})
def do_dconv(C: int, kernel_size: int, stride: int, D_mul: Optional[int] = None, **kw) -> nn.Module:
    """DO-DConv: depthwise (groups=C) DO-Conv, no bias; folds into a depthwise ``nn.Conv2d``."""
    return DOConv2d(C, C, kernel_size, D_mul=D_mul, stride=check_stride(stride),
                    padding=kernel_size // 2, groups=C, bias=False)
