"""Attentional Feature Fusion (Dai, Gieseke, Oehmcke, Wu, Barnard; WACV 2021): MS-CAM, AFF, iAFF.

arXiv: 2009.14082 · official code: https://github.com/YimianDai/open-aff (MXNet ``model/fusion.py``:
``ASKCFuse`` = AFF, ``ResGlobLocaforGlobLocaChaFuse`` = iAFF; community PyTorch port linked from
its README: ``aff_pytorch/aff_net/fusion.py``: ``MS_CAM``, ``AFF``, ``iAFF``).

Structure:
* ``MSCAM(C, r=4)``, the multi-scale channel attention module.  Local branch: 1x1 conv C->C/r
  (bias), BN, ReLU, 1x1 conv C/r->C (bias), BN, on the full map.  Global branch: the same
  bottleneck after global average pooling (a B,C,1,1 map).  ``w = sigmoid(local + global)``
  (broadcast add); the plug-in returns ``x * w``.  Params: 2 * (2C^2/r + 3C/r + 3C).
* ``AFF(C, r=4)``: ``w = MSCAM-weights(x + y)``; ``out = 2*x*w + 2*y*(1-w)``.  The factor 2 is
  in the official code (MXNet and port) but not in the paper's formula; it keeps the output at
  the scale of ``x + y`` when ``w = 0.5``, so it is kept.  It is applied once to the blend,
  ``(x*w + y*(1-w)) * 2``, which is the same value (exactly so at w = 0.5) for one multiply
  per element less.
* ``IAFF(C, r=4)``: ``w1 = M1(x + y)``, ``xi = x*w1 + y*(1-w1)``, ``w2 = M2(xi)``,
  ``out = x*w2 + y*(1-w2)`` (no factor 2).  M1 and M2 are separate MS-CAMs, each with its own
  local *and* global branch, as in the MXNet original.  The PyTorch port's second stage calls
  ``self.global_att`` (the first stage's) instead of ``self.global_att2``, leaving
  ``global_att2`` dead; that bug is not reproduced.

Registered as: ATTENTIONS ``ms_cam`` (and so OPS ``ms_cam`` / ``ms_cam_3x3``: a 1x1 / 3x3
ReLUConvBN then MS-CAM); FUSIONS ``aff`` and ``iaff`` (a cell node's merge of two inputs, in
place of DARTS' sum).

Departures and choices:
* Default r = 4, the port's default and the CIFAR models' value; the ImageNet models use r = 16
  (``ASKCFuse(channels=planes*4, r=16)``): pass ``r=16`` for those.
* C/r is floored at 1 channel so that small C works (the official ``int(C // r)`` gives 0).
* Init is PyTorch's default, as the port (the MXNet scripts initialise with their own schemes).
* The global branch applies BN to a 1x1 map, as the official code: in training mode it needs
  batch > 1 (eval mode works at batch 1).
"""
from __future__ import annotations

import torch
from torch import nn

from ..registry import FUSIONS
from .common import register_attention


def _bottleneck(C: int, inter: int, pooled: bool) -> nn.Sequential:
    layers = [nn.AdaptiveAvgPool2d(1)] if pooled else []
    layers += [nn.Conv2d(C, inter, 1), nn.BatchNorm2d(inter), nn.ReLU(inplace=True),
               nn.Conv2d(inter, C, 1), nn.BatchNorm2d(C)]
    return nn.Sequential(*layers)


class MSCAM(nn.Module):
    """Multi-scale channel attention: ``x * sigmoid(local(x) + global(x))``."""

    def __init__(self, C: int, r: int = 4):
        super().__init__()
        inter = max(1, C // r)
        self.local_att = _bottleneck(C, inter, pooled=False)
        self.global_att = _bottleneck(C, inter, pooled=True)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.local_att(x) + self.global_att(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)


class AFF(nn.Module):
    """Attentional feature fusion: ``2*x*w + 2*y*(1-w)`` with ``w = MS-CAM(x + y)``."""

    def __init__(self, C: int, r: int = 4):
        super().__init__()
        self.cam = MSCAM(C, r)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = self.cam.weights(x + y)
        return (x * w + y * (1 - w)) * 2  # the official factor 2, see the module docstring


class IAFF(nn.Module):
    """Iterative AFF: a first MS-CAM blend feeds a second, separate MS-CAM."""

    def __init__(self, C: int, r: int = 4):
        super().__init__()
        self.cam1 = MSCAM(C, r)
        self.cam2 = MSCAM(C, r)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w1 = self.cam1.weights(x + y)
        xi = x * w1 + y * (1 - w1)
        w2 = self.cam2.weights(xi)
        return x * w2 + y * (1 - w2)


register_attention("ms_cam", MSCAM, tags={"aff"})
FUSIONS.register("aff", AFF, tags={"aff", "attention"})
FUSIONS.register("iaff", IAFF, tags={"aff", "attention"})

__all__ = ["MSCAM", "AFF", "IAFF"]
