"""DARTS: Differentiable Architecture Search (Liu, Simonyan, Yang; ICLR 2019).

arXiv: 1806.09055 · official code: https://github.com/quark0/darts (``cnn/operations.py``)

The eight DARTS operations with DARTS' semantics, and the ``sum`` node combine.  Departures:
* the registry signature is ``(C_in, C_out, stride)``; DARTS' ops take ``(C, stride, affine)``.
  At C_in != C_out, pools and ``skip_connect`` add a 1x1 ReLUConvBN projection (stride 1) or use
  ``FactorizedReduce(C_in, C_out)`` (stride 2); separable/dilated convs change channels in their
  last 1x1 conv as DARTS' own ``SepConv(C_in, C_out)`` does.
* ``none`` returns zeros without DARTS' ``x.mul(0.)``, so it costs nothing (same output).
* BN is always affine: DARTS' final networks use affine=True; its search-only affine=False is
  not needed by single-path supernets.
"""
from __future__ import annotations

import torch
from torch import nn

from ..registry import FUSIONS, OPS
from .common import DilatedDWConv, FactorizedReduce, ReLUConvBN, Zero, check_stride, project


class SepConv(nn.Sequential):
    """Separable conv applied twice, stride on the first depthwise conv (DARTS ``SepConv``)."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int):
        pad = kernel_size // 2
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, pad, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, 1, bias=False),
            nn.BatchNorm2d(C_in),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, 1, pad, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out),
        )


class DilConv(nn.Sequential):
    """ReLU -> depthwise k x k dilation 2 -> 1x1 -> BN (DARTS ``DilConv``)."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, dilation: int = 2):
        pad = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.ReLU(inplace=False),
            DilatedDWConv(C_in, C_in, kernel_size, stride, pad, dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out),
        )


def _pool(pool: nn.Module, C_in: int, C_out: int) -> nn.Module:
    return pool if C_in == C_out else nn.Sequential(pool, ReLUConvBN(C_in, C_out, 1))


@OPS.register("none", tags={"darts", "zero"})
def none(C_in: int, C_out: int, stride: int, **kw) -> nn.Module:
    return Zero(C_out, check_stride(stride))


@OPS.register("skip_connect", tags={"darts", "parameter_free"})
def skip_connect(C_in: int, C_out: int, stride: int, **kw) -> nn.Module:
    """Identity at stride 1 (1x1 projection if channels differ), FactorizedReduce at stride 2."""
    return project(C_in, C_out, check_stride(stride))


@OPS.register("max_pool_3x3", tags={"darts", "pool"})
def max_pool_3x3(C_in: int, C_out: int, stride: int, **kw) -> nn.Module:
    return _pool(nn.MaxPool2d(3, stride=check_stride(stride), padding=1), C_in, C_out)


@OPS.register("avg_pool_3x3", tags={"darts", "pool"})
def avg_pool_3x3(C_in: int, C_out: int, stride: int, **kw) -> nn.Module:
    return _pool(nn.AvgPool2d(3, stride=check_stride(stride), padding=1, count_include_pad=False),
                 C_in, C_out)


@OPS.register("sep_conv_3x3", tags={"darts", "conv"})
def sep_conv_3x3(C_in: int, C_out: int, stride: int, **kw) -> nn.Module:
    return SepConv(C_in, C_out, 3, check_stride(stride))


@OPS.register("sep_conv_5x5", tags={"darts", "conv"})
def sep_conv_5x5(C_in: int, C_out: int, stride: int, **kw) -> nn.Module:
    return SepConv(C_in, C_out, 5, check_stride(stride))


@OPS.register("dil_conv_3x3", tags={"darts", "conv"})
def dil_conv_3x3(C_in: int, C_out: int, stride: int, **kw) -> nn.Module:
    return DilConv(C_in, C_out, 3, check_stride(stride))


@OPS.register("dil_conv_5x5", tags={"darts", "conv"})
def dil_conv_5x5(C_in: int, C_out: int, stride: int, **kw) -> nn.Module:
    return DilConv(C_in, C_out, 5, check_stride(stride))


# The attention ops' convs without their attention (``se`` is ReLUConvBN 1x1 then SE, ``se_3x3``
# 3x3): the plain counterparts a module verdict ablates to.  Not default candidates.
@OPS.register("conv_1x1", tags={"conv", "plain"})
def conv_1x1(C_in: int, C_out: int, stride: int, **kw) -> nn.Module:
    return ReLUConvBN(C_in, C_out, 1, check_stride(stride), 0)


@OPS.register("conv_3x3", tags={"conv", "plain"})
def conv_3x3(C_in: int, C_out: int, stride: int, **kw) -> nn.Module:
    return ReLUConvBN(C_in, C_out, 3, check_stride(stride), 1)


class Sum(nn.Module):
    """DARTS' node combine: ``h1 + h2``."""

    def __init__(self, C: int = 0, **kw):
        super().__init__()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


FUSIONS.register("sum", Sum, tags={"darts"})
__all__ = ["SepConv", "DilConv", "FactorizedReduce", "ReLUConvBN", "Sum"]
