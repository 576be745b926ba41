"""WeightNet: Revisiting the Design Space of Weight Networks (Ma, Zhang, Zhang, Sun; ECCV 2020).

arXiv: 2007.11823 · official code (MegEngine): https://github.com/megvii-model/WeightNet
(``weightnet.py``: ``WeightNet``, ``WeightNet_DW``; ``shufflenet_v2.py``; read at 669b5f4)

A conv whose kernel is generated per sample by grouped fully connected layers:

* ``x_gap`` = ``reduce(GAP(x))``, ``reduce`` a 1x1 conv C -> max(16, C//16) with bias
  (officially computed once per ShuffleNetV2 block, outside the module);
* ``WeightNet(inp, oup, k, stride)``: fc1 = 1x1 conv gap -> M*oup (+bias), sigmoid;
  fc2 = grouped 1x1 conv M*oup -> oup*inp*k*k, groups=G*oup, no bias; the output is sample b's
  kernel (oup, inp, k, k).  M=G=2, so fc2 holds (M/G)*oup*inp*k*k = as many weights as the
  static conv.  The per-sample convs run as one conv: x -> (1, B*inp, H, W), kernels ->
  (B*oup, inp, k, k), groups=B; padding k//2, no bias, no BN inside;
* ``WeightNet_DW(inp, k, stride)``: fc1 gap -> (M/G)*inp, fc2 groups=inp -> inp*k*k; one
  depthwise conv with groups=B*inp.

Departures from the official code, and why:
* The registry ops take one input, so ``GapReduce`` (the official block's ``mean`` + ``reduce``)
  lives inside each op: every WeightNet op pools and reduces its own input instead of sharing
  the block input's ``x_gap`` among the block's three to five WeightNets.  ``WeightNet`` and
  ``WeightNetDW`` keep the official two-input form for networks that share it (the tests build
  ShuffleNetV2 + WeightNet that way).
* The official B == 1 branch (plain conv with the reshaped kernel) is the groups=B path at
  B = 1, so one path serves both; both are tested against a per-sample loop.  A
  ``torch.jit.trace`` records groups=B as a constant, so a traced op only runs at the traced
  batch size (the batch-as-groups trick itself; eager mode takes any batch).
* The official network initialiser (normal(0, 1/weight.shape[1]) in MegEngine's layout, where a
  grouped weight is (groups, out/groups, in/groups, k, k); biases 0) is applied by each module:
  fc1 N(0, 1/gap), fc2 N(0, G/(inp*k*k)), DW fc2 N(0, 1/(k*k)), reduce N(0, 1/C).
* M and G are arguments (default 2, 2 as hard-coded officially); G must divide M and inp*k*k.
* ``weightnet_3x3`` as a DARTS edge is ReLU -> WeightNet 3x3 (stride, C_in -> C_out) -> BN, the
  ReLU-Conv-BN order of DARTS' convs; the pooled descriptor is taken after the ReLU (officially
  it pools the block input, itself a ReLU output).  ``weightnet`` in DW_CONVS is GapReduce +
  WeightNet_DW with no BN/activation, as the plain depthwise conv it replaces.

Cost (fvcore, per sample): GAP C*H*W, reduce C*gap, fc1 gap*M*oup, fc2 (M/G)*oup*inp*k*k
(a 1x1 conv on a 1x1 map), the dynamic conv oup*inp*k*k*Ho*Wo (counted from the generated
weight's shape), BN 2*oup*Ho*Wo.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import DW_CONVS, OPS
from .common import check_stride


def gap_channels(C: int) -> int:
    return max(16, C // 16)


class GapReduce(nn.Module):
    """Official ``reduce(GAP(x))``: the descriptor every WeightNet of a block reads."""

    def __init__(self, C: int):
        super().__init__()
        self.reduce = nn.Conv2d(C, gap_channels(C), 1, bias=True)
        nn.init.normal_(self.reduce.weight, 0.0, 1.0 / C)
        nn.init.zeros_(self.reduce.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduce(x.mean((2, 3), keepdim=True))


class WeightNet(nn.Module):
    """Per-sample k x k conv inp -> oup whose kernel grouped FCs generate from ``x_gap``."""

    def __init__(self, inp: int, oup: int, ksize: int, stride: int, M: int = 2, G: int = 2,
                 gap: int = 0):
        super().__init__()
        if M % G or (inp * ksize * ksize) % G:
            raise ValueError(f"G={G} must divide M={M} and inp*k*k={inp * ksize * ksize}")
        self.inp, self.oup, self.ksize, self.stride, self.pad = inp, oup, ksize, stride, ksize // 2
        gap = gap or gap_channels(inp)
        self.wn_fc1 = nn.Conv2d(gap, M * oup, 1, bias=True)
        self.wn_fc2 = nn.Conv2d(M * oup, oup * inp * ksize * ksize, 1, groups=G * oup, bias=False)
        nn.init.normal_(self.wn_fc1.weight, 0.0, 1.0 / gap)
        nn.init.zeros_(self.wn_fc1.bias)
        nn.init.normal_(self.wn_fc2.weight, 0.0, G / (inp * ksize * ksize))

    def kernels(self, x_gap: torch.Tensor) -> torch.Tensor:
        """The generated kernels, (B, oup, inp, k, k)."""
        w = self.wn_fc2(torch.sigmoid(self.wn_fc1(x_gap)))
        return w.view(-1, self.oup, self.inp, self.ksize, self.ksize)

    def forward(self, x: torch.Tensor, x_gap: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        weight = self.kernels(x_gap).reshape(b * self.oup, self.inp, self.ksize, self.ksize)
        y = F.conv2d(x.reshape(1, b * self.inp, h, w), weight, None, self.stride, self.pad,
                     groups=b)
        return y.view(b, self.oup, y.shape[2], y.shape[3])


class WeightNetDW(nn.Module):
    """Per-sample depthwise k x k conv (official ``WeightNet_DW``)."""

    def __init__(self, inp: int, ksize: int, stride: int, M: int = 2, G: int = 2, gap: int = 0):
        super().__init__()
        if M % G:
            raise ValueError(f"G={G} must divide M={M}")
        self.inp, self.ksize, self.stride, self.pad = inp, ksize, stride, ksize // 2
        gap = gap or gap_channels(inp)
        self.wn_fc1 = nn.Conv2d(gap, M // G * inp, 1, bias=True)
        self.wn_fc2 = nn.Conv2d(M // G * inp, inp * ksize * ksize, 1, groups=inp, bias=False)
        nn.init.normal_(self.wn_fc1.weight, 0.0, 1.0 / gap)
        nn.init.zeros_(self.wn_fc1.bias)
        nn.init.normal_(self.wn_fc2.weight, 0.0, 1.0 / (ksize * ksize))

    def kernels(self, x_gap: torch.Tensor) -> torch.Tensor:
        """The generated depthwise kernels, (B, inp, 1, k, k)."""
        w = self.wn_fc2(torch.sigmoid(self.wn_fc1(x_gap)))
        return w.view(-1, self.inp, 1, self.ksize, self.ksize)

    def forward(self, x: torch.Tensor, x_gap: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        weight = self.kernels(x_gap).reshape(b * self.inp, 1, self.ksize, self.ksize)
        y = F.conv2d(x.reshape(1, b * self.inp, h, w), weight, None, self.stride, self.pad,
                     groups=b * self.inp)
        return y.view(b, self.inp, y.shape[2], y.shape[3])


class WeightNetConv(nn.Module):
    """A DARTS edge: ReLU -> (GAP + reduce, WeightNet k x k) -> BN."""

    def __init__(self, C_in: int, C_out: int, stride: int, kernel_size: int = 3, M: int = 2,
                 G: int = 2):
        super().__init__()
        self.gap = GapReduce(C_in)
        self.conv = WeightNet(C_in, C_out, kernel_size, check_stride(stride), M, G)
        self.bn = nn.BatchNorm2d(C_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return self.bn(self.conv(x, self.gap(x)))


class WeightNetDWConv(nn.Module):
    """Depthwise WeightNet as a DW_CONVS variant: GAP + reduce of its own input, then
    ``WeightNet_DW`` (no BN/activation: the block adds its own)."""

    def __init__(self, C: int, kernel_size: int, stride: int, M: int = 2, G: int = 2, **kw):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (padding k//2 keeps the size), got {kernel_size}")
        self.gap = GapReduce(C)
        self.conv = WeightNetDW(C, kernel_size, check_stride(stride), M, G)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, self.gap(x))


@OPS.register("weightnet_3x3", tags={"conv", "dynamic"})
def weightnet_3x3(C_in: int, C_out: int, stride: int, **kw) -> nn.Module:
    """ReLU -> WeightNet 3x3 (M=G=2, per-sample kernels) -> BN."""
    return WeightNetConv(C_in, C_out, stride, 3, **kw)


DW_CONVS.register("weightnet", WeightNetDWConv, tags={"dynamic"})

__all__ = ["GapReduce", "WeightNet", "WeightNetDW", "WeightNetConv", "WeightNetDWConv",
           "gap_channels"]
