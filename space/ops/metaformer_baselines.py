"""Baseline token mixers and the MLP channel mixers of MetaFormer-style blocks.

Papers: "MetaFormer Is Actually What You Need for Vision" (PoolFormer), Yu et al., CVPR 2022,
arXiv 2111.11418, https://github.com/sail-sg/poolformer (``models/poolformer.py`` ``Pooling``,
``Mlp``); the MLP with a depthwise 3x3 inside is VAN's (arXiv 2202.09741,
https://github.com/Visual-Attention-Network/VAN-Classification ``models/van.py`` ``Mlp``, from
PVTv2).

Registered:
- TOKEN_MIXERS ``pool_mixer``: PoolFormer's pooling, AvgPool(3, stride 1, pad 1,
  count_include_pad=False)(x) - x.  The "- x" is PoolFormer's: the block adds x back.
- TOKEN_MIXERS ``dwconv_mixer``: a depthwise k x k conv (with bias), the convolutional baseline
  of the MetaFormer ablations.  Kernel 7 by default, as ConvNeXt's and ConvFormer's depthwise
  token mixing (``kernel_size`` may be given); this is our choice, not a published module.
- CHANNEL_MIXERS ``mlp``: 1x1 (D -> rD) -> GELU -> 1x1 (rD -> D), with biases (PoolFormer's and
  BiFormer's MLP; BiFormer's Linear on NHWC is the same map as a 1x1 conv).
- CHANNEL_MIXERS ``mlp_dw``: VAN's MLP, 1x1 -> depthwise 3x3 (bias) -> GELU -> 1x1.

Hidden width is ``int(dim * mlp_ratio)`` as the official code.  Dropout is 0 in all the
published classification configs, so the MLPs have none.  Norms and residuals belong to the
block (``space/metaformer_blocks.py``), not to the mixers.
"""
from __future__ import annotations

import torch
from torch import nn

from ..registry import CHANNEL_MIXERS, TOKEN_MIXERS


class PoolMixer(nn.Module):
    def __init__(self, dim: int, pool_size: int = 3):
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x


@TOKEN_MIXERS.register("pool_mixer", tags={"baseline", "local"})
def pool_mixer(dim: int, **kw) -> nn.Module:
    """PoolFormer's parameter-free pooling token mixer."""
    return PoolMixer(dim, **kw)


@TOKEN_MIXERS.register("dwconv_mixer", tags={"baseline", "local"})
def dwconv_mixer(dim: int, kernel_size: int = 7, **kw) -> nn.Module:
    """Depthwise k x k conv (bias) as the token mixer (default 7x7)."""
    return nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, **kw)


class Mlp(nn.Module):
    """1x1 -> [depthwise 3x3] -> GELU -> 1x1, channels first."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, dwconv: bool = False):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden) if dwconv else None
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        if self.dwconv is not None:
            x = self.dwconv(x)
        return self.fc2(self.act(x))


@CHANNEL_MIXERS.register("mlp", tags={"mlp"})
def mlp(dim: int, mlp_ratio: float = 4.0, **kw) -> nn.Module:
    """The transformer MLP: 1x1 -> GELU -> 1x1."""
    return Mlp(dim, mlp_ratio, **kw)


@CHANNEL_MIXERS.register("mlp_dw", tags={"mlp"})
def mlp_dw(dim: int, mlp_ratio: float = 4.0, **kw) -> nn.Module:
    """VAN's MLP: 1x1 -> depthwise 3x3 -> GELU -> 1x1."""
    return Mlp(dim, mlp_ratio, dwconv=True, **kw)
