"""ULSAM: Ultra-Lightweight Subspace Attention Module (Saini, Jha, Das, Mittal, Mohan; WACV 2020).

arXiv: 2006.15102 · official code: https://github.com/Nandan91/ULSAM (``ulsam.py``)

Structure: the channels are split into G subspaces (``torch.chunk``).  Each subspace of c = C/G
channels computes one spatial attention map:
  depthwise 1x1 conv (bias) -> BN -> ReLU -> MaxPool 3x3 s1 p1 -> 1x1 conv c->1 (bias) -> BN(1)
  -> ReLU -> softmax over the H*W positions -> a (B,1,H,W);
and the subspace output is ``a * x + x``.  The subspaces are concatenated back.
Params: 2c (dw conv) + 2c (BN) + c+1 (pw conv) + 2 (BN) per subspace = 5C + 3G.

Implementation: the G subspaces run at once.  A depthwise conv and a BN over all C channels are
exactly the G per-subspace depthwise convs and BNs (both act per channel); the G pointwise convs
c->1 are one grouped conv C->G with groups=G; the attention map of subspace g multiplies its c
channels through a (B,G,c,H,W) view.  The test compares this with a per-subspace loop.

Departures from the official code:
* BN momentum is kept at 0.9, as in the official code.  That value is a Keras-convention
  carry-over: in PyTorch it gives the *new* batch 90% weight in the running statistics (Keras
  0.9 means 10%), so running stats track the last batches closely.  Kept for fidelity only.
* ``ULSAM(nin, nout, h, w, num_splits)``: nout, h and w are unused there and dropped here.
* The official file sets CUDA tensors as the default type at import; not reproduced.
* The official code asserts nin % num_splits == 0.  Here G = gcd(C, num_splits), so any C works
  (with the default G = 4 and the registry's channel multiples of 4, G stays 4).
* Default ``num_splits=4``: the configuration of the official file's example
  (``ULSAM(64, 64, 112, 112, 4)``) and a middle value of the paper's G in {1, 2, 4, 8, 16}
  sweep.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .common import register_attention

BN_MOMENTUM = 0.9  # official value (Keras convention carried into PyTorch), see module docstring


class ULSAM(nn.Module):
    def __init__(self, C: int, num_splits: int = 4):
        super().__init__()
        self.groups = math.gcd(C, num_splits)
        self.conv_dws = nn.Conv2d(C, C, 1, groups=C)
        self.bn_dws = nn.BatchNorm2d(C, momentum=BN_MOMENTUM)
        self.relu_dws = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(3, stride=1, padding=1)
        self.conv_point = nn.Conv2d(C, self.groups, 1, groups=self.groups)
        self.bn_point = nn.BatchNorm2d(self.groups, momentum=BN_MOMENTUM)
        self.relu_point = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        a = self.relu_dws(self.bn_dws(self.conv_dws(x)))
        a = self.relu_point(self.bn_point(self.conv_point(self.maxpool(a))))
        a = torch.softmax(a.reshape(b, self.groups, h * w), dim=-1).reshape(b, self.groups, 1, h, w)
        xs = x.reshape(b, self.groups, c // self.groups, h, w)
        return (a * xs + xs).reshape(b, c, h, w)


register_attention("ulsam", ULSAM, tags={"ulsam"})

__all__ = ["ULSAM", "BN_MOMENTUM"]
