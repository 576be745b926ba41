"""DEConv, the detail-enhanced convolution of DEA-Net (Chen, He, Lu; IEEE TIP 2024:
"DEA-Net: Single image dehazing based on detail-enhanced convolution and content-guided
attention").

arXiv: 2301.04805 · official code: https://github.com/cecret3350/DEA-Net
(``code/model/modules/deconv.py``; deploy folding in ``code/reparam.py``)

Structure: five parallel 3x3 branches, each with a bias: vanilla, central difference (cd: the
centre tap becomes ``w_c - sum(w)``), angular difference (ad: ``w - theta * w[perm]`` with the
clockwise ring shift perm [3,0,1,6,4,2,7,8,5], theta=1, so the centre is 0), horizontal
difference (hd: a 3-tap weight, +w in the left column, -w in the right) and vertical difference
(vd: +w top row, -w bottom row).  Every difference kernel sums to zero.  The forward is already
re-parameterised: kernels and biases are summed and ONE conv runs; ``deploy()`` computes that
sum once and returns a plain ``nn.Conv2d(C_in, C_out, 3, stride, 1, bias=True)``.
Train-time parameters are 33*C_in*C_out + 5*C_out, deployed 9*C_in*C_out + C_out.

As candidates:
* ``OPS["deconv_3x3"]``: ReLU -> DEConv(C_in, C_out, stride) -> BN, DARTS' ReLUConvBN with
  DEConv as the conv.  The official op is dim -> dim, stride 1.  Every difference kernel is
  built per (out, in) 3x3 kernel, so C_in != C_out (weights (C_out, C_in, ...)) and a stride on
  the single summed conv are the same construction, not an adapter; the biases are kept (as
  official) even though BN follows.
* ``DW_CONVS["deconv"]``: the same five branches per channel (groups=C).  The difference
  kernels are defined on a 3x3 grid only (hd/vd use 3 taps, ad a 3x3 ring), so any other
  ``kernel_size`` raises ValueError: a mobile space must offer ``deconv`` with k=3 only.

Departures from the official code:
* ``torch.cuda.FloatTensor`` scratch kernels (CUDA-only) and index assignment are replaced by
  device-agnostic tensor expressions (stack / pad / index_select) that give the same kernels.
* Branch weights are plain parameters initialised as the official ``nn.Conv2d`` (cd, ad,
  vanilla) and ``nn.Conv1d`` (hd, vd: fan_in = C_in*3) modules would be; no unused conv modules.
* ``groups`` (for the depthwise form) and ``stride`` are new; ``theta`` applies to ad only, as
  official (the cd branch ignores it there too).
* FLOPs: before ``deploy()`` fvcore also counts the weight-side ``sum`` of the cd kernel
  (C_out * C_in/groups * 9, batch-independent).  Count deployed networks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import DW_CONVS, OPS
from .common import check_stride

# ad: tap p takes w[p] - theta * w[AD_PERM[p]], a one-step clockwise shift of the ring
AD_PERM = (3, 0, 1, 6, 4, 2, 7, 8, 5)
BRANCHES = ("cd", "hd", "vd", "ad", "vanilla")


def _conv_params(out_ch: int, in_ch: int, taps: tuple) -> tuple:
    """Weight and bias initialised as torch's ConvNd defaults (kaiming_uniform a=sqrt(5))."""
    w = nn.Parameter(torch.empty(out_ch, in_ch, *taps))
    nn.init.kaiming_uniform_(w, a=math.sqrt(5))
    bound = 1 / math.sqrt(w[0].numel())
    return w, nn.Parameter(torch.empty(out_ch).uniform_(-bound, bound))


class DEConv(nn.Module):
    """DEA-Net's DEConv generalised to (C_in, C_out, stride, groups); 3x3 only."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1,
                 theta: float = 1.0):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels ({in_channels}, {out_channels}) must divide by groups {groups}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.groups, self.theta = stride, groups, theta
        cin = in_channels // groups
        for name in BRANCHES:
            taps = (3,) if name in ("hd", "vd") else (3, 3)
            w, b = _conv_params(out_channels, cin, taps)
            self.register_parameter(f"w_{name}", w)
            self.register_parameter(f"b_{name}", b)
        self.register_buffer("ad_perm", torch.tensor(AD_PERM), persistent=False)

    def kernels(self) -> dict:
        """The five 3x3 kernels (C_out, C_in/g, 3, 3) the branches apply."""
        w = self.w_cd
        cd = w - F.pad(w.sum(dim=(2, 3), keepdim=True), (1, 1, 1, 1))  # centre: w_c - sum(w)
        z = torch.zeros_like(self.w_hd)
        hd = torch.stack((self.w_hd, z, -self.w_hd), dim=3)  # columns: +w, 0, -w
        vd = torch.stack((self.w_vd, z, -self.w_vd), dim=2)  # rows: +w, 0, -w
        w = self.w_ad
        ring = w.flatten(2).index_select(2, self.ad_perm).view_as(w)
        ad = w - (ring if self.theta == 1.0 else self.theta * ring)
        return {"cd": cd, "hd": hd, "vd": vd, "ad": ad, "vanilla": self.w_vanilla}

    def fused(self) -> tuple:
        k = self.kernels()
        weight = k["cd"] + k["hd"] + k["vd"] + k["ad"] + k["vanilla"]
        bias = self.b_cd + self.b_hd + self.b_vd + self.b_ad + self.b_vanilla
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.fused()
        return F.conv2d(x, weight, bias, self.stride, 1, 1, self.groups)

    @torch.no_grad()
    def deploy(self) -> nn.Conv2d:
        weight, bias = self.fused()
        conv = nn.Conv2d(self.in_channels, self.out_channels, 3, self.stride, 1,
                         groups=self.groups, bias=True).to(weight.device, weight.dtype)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        return conv

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
                f"groups={self.groups}, theta={self.theta}")


@OPS.register("deconv_3x3", tags={"conv", "reparam"})
def deconv_3x3(C_in: int, C_out: int, stride: int, **kw) -> nn.Module:
    """ReLU -> DEConv (C_in -> C_out, stride on the single summed 3x3 conv) -> BN."""
    return nn.Sequential(nn.ReLU(inplace=False), DEConv(C_in, C_out, check_stride(stride)),
                         nn.BatchNorm2d(C_out))


@DW_CONVS.register("deconv", tags={"reparam"}, kernels=(3,))
def deconv_dw(C: int, kernel_size: int, stride: int, **kw) -> nn.Module:
    """Depthwise DEConv (groups=C); 3x3 only."""
    if kernel_size != 3:
        raise ValueError(f"DW_CONVS 'deconv' exists only for kernel_size=3 (DEConv's difference "
                         f"kernels are defined on a 3x3 grid), got {kernel_size}")
    return DEConv(C, C, check_stride(stride), groups=C)
