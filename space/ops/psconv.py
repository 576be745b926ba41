"""PSConv: "PSConv: Squeezing Feature Pyramid into One Compact Poly-Scale Convolutional
Layer" (Li, Yao, Chen; ECCV 2020).

arXiv: 2007.06191 · official code: https://github.com/d-li14/PSConv
(``mmdet/models/utils/psconv.py``: ``PSConv2d``, ``PSGConv2d``; used in
``mmdet/models/backbones/resnet.py`` as the bottleneck 3x3 with ``dilation=2, parts=4``)

Structure: input and output channels are cut into P ``parts`` (blocks).  Every (out-block,
in-block) pair of a dense k x k kernel gets its own dilation, implemented as three convs:
``gwconv`` (groups=P, dilation d) covers the diagonal pairs (j, j); ``gwconv_shift`` (groups=P,
dilation 2d) runs on the half-rotated input ``cat(x2, x1)``, so out-block j reads in-block
(j + P/2) % P; a dense ``conv`` (dilation 1) covers every other pair, its diagonal and shifted
blocks masked to zero.  Output = gwconv(x) + conv(x) + gwconv_shift(cat(x2, x1)).  With d=2
the dilation spectrum is {1, 2, 4}.  Effective parameters and multiply-adds equal a dense
k x k conv; stored parameters, and the convs that actually run, are (1 + 2/P)x dense (1.5x
for P=4).  ``nas.flops`` (fvcore) counts what runs, 1.5x, plus the mask multiply (see below);
``effective_params`` (and ``effective_flops`` in tests/ops/test_psconv.py) give the dense-equivalent figures the paper quotes.

As a candidate, ``OPS["psconv_3x3"]`` is ReLU -> PSConv2d(C_in, C_out, 3, stride, dilation=2,
parts=4) -> BN (DARTS' ReLUConvBN with PSConv; PS-ResNet's setting).  The stride is on all three
convs, as official; C_in != C_out is native (blocks are C_in/P wide on the input side and
C_out/P on the output side).

Departures from the official code:
* The mask is a bool buffer (True = weight used) multiplied into the dense weight in every
  forward, instead of a gradient hook plus a ``.byte().cuda()`` mask (CUDA-only).  Masked
  weights are still zeroed at init, and get zero gradient through the multiply.  This also
  closes a gap of the official form: the mmdet backbone's ``init_weights(pretrained=None)``
  re-runs kaiming init on every ``nn.Conv2d``, the masked dense conv included; the hook then
  keeps those now non-zero weights frozen and they act in the output (not an issue on the
  usual path, which loads an ImageNet checkpoint).  A multiplicative mask cannot leak.
* FLOPs: the multiply costs C_out*C_in*k*k (batch-independent) per forward in fvcore's count.
  ``deploy()`` returns ``PSConv2dDeployed``, the same three convs with the mask folded into the
  stored weights and no multiply, so a deployed network counts exactly the (1 + 2/P)x convs.
* Channel adaptation: P must be even (half rotation aligned with blocks) and divide C_in and
  C_out; otherwise the largest even P' <= P that does is used (``self.parts``), e.g. 12 -> 8
  channels with parts=8 uses P'=4.  P'=2 is legal (the dense conv is then fully masked).
  Odd channel counts raise ValueError.
* Padding is ``dilation * (k - 1) // 2`` per conv, right for any odd k (official: ``dilation``,
  right for k=3 only).  ``padding`` is not an argument.
* No depthwise (DW_CONVS) form: ``PSGConv2d`` needs groups * parts to divide the channels, so
  the finest it gets is groups = C/P (P channels per group), never depthwise (groups = C).
  (Its mask indexing ``i + j * groups`` also looks wrong for groups > 1; not reproduced.)
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import OPS
from .common import check_stride


def adapt_parts(C_in: int, C_out: int, parts: int) -> int:
    """The largest even P' <= parts dividing C_in and C_out."""
    for p in range(parts - parts % 2, 1, -2):
        if C_in % p == 0 and C_out % p == 0:
            return p
    raise ValueError(f"PSConv needs an even number of parts dividing C_in={C_in} and C_out={C_out}")


def dense_keep_mask(C_in: int, C_out: int, parts: int) -> torch.Tensor:
    """(C_out, C_in, 1, 1) bool: False on the blocks gwconv / gwconv_shift already cover."""
    keep = torch.ones(parts, parts, dtype=torch.bool)  # [out-block, in-block]
    for j in range(parts):
        keep[j, j] = False
        keep[j, (j + parts // 2) % parts] = False
    keep = keep.repeat_interleave(C_out // parts, 0).repeat_interleave(C_in // parts, 1)
    return keep[:, :, None, None]


class PSConv2d(nn.Module):
    """Poly-scale conv (train form: masked dense conv); ``deploy()`` folds the mask."""

    mask_in_forward = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, parts: int = 4, bias: bool = False):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"PSConv needs an odd kernel size, got {kernel_size}")
        self.parts = adapt_parts(in_channels, out_channels, parts)
        k, d, p = kernel_size, dilation, (kernel_size - 1) // 2
        self.gwconv = nn.Conv2d(in_channels, out_channels, k, stride, d * p, d, self.parts, bias)
        self.gwconv_shift = nn.Conv2d(in_channels, out_channels, k, stride, 2 * d * p, 2 * d,
                                      self.parts, bias)
        self.conv = nn.Conv2d(in_channels, out_channels, k, stride, p, bias=bias)
        self.register_buffer("keep", dense_keep_mask(in_channels, out_channels, self.parts))
        with torch.no_grad():
            self.conv.weight.mul_(self.keep)

    def dense_weight(self) -> torch.Tensor:
        return self.conv.weight * self.keep if self.mask_in_forward else self.conv.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        dense = F.conv2d(x, self.dense_weight(), self.conv.bias, self.conv.stride, self.conv.padding)
        return self.gwconv(x) + dense + self.gwconv_shift(torch.cat((x2, x1), dim=1))

    def masked_weights(self) -> int:
        """Stored dense-conv weights that never act (per output pixel, one wasted MAC each)."""
        kh, kw = self.conv.kernel_size
        return int((~self.keep).sum()) * kh * kw

    def effective_params(self) -> int:
        return sum(p.numel() for p in self.parameters()) - self.masked_weights()

    @torch.no_grad()
    def deploy(self) -> "PSConv2dDeployed":
        out = copy.deepcopy(self)
        out.__class__ = PSConv2dDeployed  # same state, only the forward differs
        out.conv.weight.mul_(out.keep)
        return out


class PSConv2dDeployed(PSConv2d):
    """Inference form: the mask is folded into the stored dense weight, no multiply runs
    (``keep`` stays only for the effective-cost accounting)."""

    mask_in_forward = False

    def deploy(self) -> "PSConv2dDeployed":
        return self


def effective_params(model: nn.Module) -> int:
    """Trainable parameters of ``model`` with PSConv's masked (never acting) weights removed."""
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total - sum(m.masked_weights() for m in model.modules() if isinstance(m, PSConv2d))


@OPS.register("psconv_3x3", tags={"conv", "multi_dilation"})
def psconv_3x3(C_in: int, C_out: int, stride: int, dilation: int = 2, parts: int = 4,
               **kw) -> nn.Module:
    """ReLU -> PSConv 3x3 (dilations 1/d/2d, d=2, parts=4, stride) -> BN."""
    return nn.Sequential(nn.ReLU(inplace=False),
                         PSConv2d(C_in, C_out, 3, check_stride(stride), dilation, parts),
                         nn.BatchNorm2d(C_out))
