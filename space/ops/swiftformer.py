"""SwiftFormer's efficient additive attention, and the blocks its network is made of.

Paper: "SwiftFormer: Efficient Additive Attention for Transformer-based Real-time Mobile Vision
Applications", Shaker et al., ICCV 2023, arXiv 2303.15446.
Official code: https://github.com/Amshaker/SwiftFormer (``models/swiftformer.py``).

Efficient additive attention (EAA), on tokens x (B, N, D):
    q = normalize(W_q x), k = normalize(W_k x)         L2 over channels
    alpha = normalize((q @ w_g) * D^-1/2)              w_g a (D, 1) vector; L2 over *tokens*
    G = sum_n alpha_n q_n                              one global query (B, D)
    out = final(Proj(G * k) + q)
No value projection, no softmax, no N x N matrix: the cost is linear in N.  Parameters:
W_q, W_k, Proj, final (each D^2 + D) and w_g (D): 4D^2 + 5D.

Registered: TOKEN_MIXERS ``additive_attention`` (channels-first; the map is flattened to tokens
inside).  The network blocks (``ConvEncoder``, ``LocalRepresentation``) are used by the
``metaformer`` space to build SwiftFormer-style stages.

Departures from the official code:
- The encoder uses EAA with ``token_dim=dim, num_heads=1``; that is the only form the
  networks use, so the module has no ``token_dim``/``num_heads`` arguments (``final`` maps
  D -> D).
- ``w_g`` starts from ``torch.randn`` as in the official code (the network's init only touches
  Linear/Conv weights, so it stays a standard normal there too).
- The official ``einops.repeat`` of G over the tokens is a broadcast here (same values; no
  einops dependency).
- Counting: fvcore leaves normalize, the multiplies and the sum uncounted; ``nas/flops.py``
  counts them (1 per element), so our count is a little above the official fvcore figure.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import TOKEN_MIXERS
from .common import drop_path


class EfficientAdditiveAttention(nn.Module):
    """EAA on a channels-first map: (B, D, H, W) -> (B, D, H, W)."""

    def __init__(self, dim: int):
        super().__init__()
        self.to_query = nn.Linear(dim, dim)
        self.to_key = nn.Linear(dim, dim)
        self.w_g = nn.Parameter(torch.randn(dim, 1))
        self.scale_factor = dim ** -0.5
        self.Proj = nn.Linear(dim, dim)
        self.final = nn.Linear(dim, dim)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        q = F.normalize(self.to_query(x), dim=-1)
        k = F.normalize(self.to_key(x), dim=-1)
        alpha = F.normalize((q @ self.w_g) * self.scale_factor, dim=1)  # over tokens: (B, N, 1)
        g = torch.sum(alpha * q, dim=1, keepdim=True)  # (B, 1, D), broadcast over the tokens
        return self.final(self.Proj(g * k) + q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.forward_tokens(x.flatten(2).transpose(1, 2))
        return t.transpose(1, 2).reshape(b, c, h, w)


@TOKEN_MIXERS.register("additive_attention", tags={"attention", "global"})
def additive_attention(dim: int, **kw) -> nn.Module:
    """SwiftFormer's efficient additive attention (linear in the number of tokens)."""
    return EfficientAdditiveAttention(dim, **kw)


def _trunc_normal_convs(module: nn.Module) -> None:
    """The official blocks initialise their own convs: truncated normal (std 0.02), zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class LocalRepresentation(nn.Module):
    """SwiftFormer's local representation before each EAA encoder:
    x + s * PW(GELU(PW(BN(DW3x3(x))))), s a per-channel scale initialised to ones (official)."""

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.BatchNorm2d(dim)
        self.pwconv1 = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()
        self.pwconv2 = nn.Conv2d(dim, dim, 1)
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1))
        self.drop_prob = 0.0  # stochastic depth of the branch, set by the network's set_drop_path
        _trunc_normal_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pwconv2(self.act(self.pwconv1(self.norm(self.dwconv(x)))))
        return x + drop_path(self.layer_scale * y, self.drop_prob, self.training)


class ConvEncoder(nn.Module):
    """SwiftFormer's convolutional block (every block of a stage but the last):
    x + s * PW(GELU(PW_{D->rD}(BN(DW3x3(x))))), s initialised to ones (official)."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, kernel_size: int = 3):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.BatchNorm2d(dim)
        self.pwconv1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.pwconv2 = nn.Conv2d(hidden, dim, 1)
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1))
        _trunc_normal_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pwconv2(self.act(self.pwconv1(self.norm(self.dwconv(x)))))
        return x + self.layer_scale * y
