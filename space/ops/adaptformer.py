"""AdaptFormer's AdaptMLP: an MLP with a parallel bottleneck adapter.

Paper: "AdaptFormer: Adapting Vision Transformers for Scalable Visual Recognition", Chen et al.,
NeurIPS 2022, arXiv 2205.13535.  Official code: https://github.com/ShoufaChen/AdaptFormer
(``models/adapter.py`` ``Adapter``; placement in ``models/custom_modules.py`` ``Block``).

Adapter (the training defaults of ``main_image.py``): Linear(d -> 64) -> ReLU -> dropout 0.1 ->
Linear(64 -> d) -> x 0.1, no adapter LayerNorm, "lora" init: down projection kaiming-uniform
(a = sqrt 5), up projection weight and both biases zero, so the adapter outputs exactly 0 at
init.  Parameters 2 d r + r + d.  Parallel placement in the ViT block:
    x = x + attn(LN1(x));  x = x + (MLP(LN2(x)) + adapter(x))
the adapter reads the residual stream x, not LN2(x).

Registered: CHANNEL_MIXERS ``adapt_mlp`` (dim, mlp_ratio, base="mlp", bottleneck=64,
scale=0.1, dropout=0.1): the channel mixer ``base`` (any CHANNEL_MIXERS name, default the plain
MLP) plus the adapter.

How the residual stream reaches the adapter in our channels-first blocks: a channel mixer only
sees the normed input, so ``AdaptMLP`` exposes its two paths, ``main`` (the MLP, on the normed
input) and ``side`` (the adapter, on the block input), and its registry entry declares
``reads_residual=True``; the
metaformer block then computes ``x + (ls * main(norm(x)) + side(x))``, the official order
(the adapter is outside the block's layer scale, which the ViT block does not have).  Called on
its own, ``forward(x, residual=None)`` returns ``main(x) + side(residual if given else x)``.

Departures: 1x1 convs instead of Linear on tokens (the same map on a channels-first tensor);
``scale`` is the fixed 0.1 (the "learnable_scalar" option is not offered).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import CHANNEL_MIXERS


class Adapter(nn.Module):
    """Bottleneck adapter, channels first: up(dropout(ReLU(down(x)))) * scale."""

    def __init__(self, dim: int, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.1):
        super().__init__()
        self.down_proj = nn.Conv2d(dim, bottleneck, 1)
        self.up_proj = nn.Conv2d(bottleneck, dim, 1)
        self.scale, self.dropout = scale, dropout
        with torch.no_grad():  # "lora" init: identity-preserving insertion
            nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))
            nn.init.zeros_(self.down_proj.bias)
            nn.init.zeros_(self.up_proj.weight)
            nn.init.zeros_(self.up_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(F.relu(self.down_proj(x)), p=self.dropout, training=self.training)
        return self.up_proj(h) * self.scale


class AdaptMLP(nn.Module):

    def __init__(self, dim: int, mlp_ratio: float = 4.0, base: str = "mlp", bottleneck: int = 64,
                 scale: float = 0.1, dropout: float = 0.1):
        super().__init__()
        if base == "adapt_mlp":
            raise ValueError("adapt_mlp cannot wrap itself")
        self.mlp = CHANNEL_MIXERS[base](dim, mlp_ratio)
        self.adapter = Adapter(dim, bottleneck, scale, dropout)

    def main(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)

    def side(self, residual: torch.Tensor) -> torch.Tensor:
        return self.adapter(residual)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.main(x) + self.side(x if residual is None else residual)


@CHANNEL_MIXERS.register("adapt_mlp", tags={"mlp", "adapter"}, reads_residual=True)
def adapt_mlp(dim: int, mlp_ratio: float = 4.0, **kw) -> nn.Module:
    """MLP plus AdaptFormer's parallel adapter (bottleneck 64, scale 0.1, LoRA init)."""
    return AdaptMLP(dim, mlp_ratio, **kw)
