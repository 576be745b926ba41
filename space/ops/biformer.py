"""BiFormer's bi-level routing attention (BRA), and the full attention of its last stage.

Paper: "BiFormer: Vision Transformer with Bi-Level Routing Attention", Zhu et al., CVPR 2023,
arXiv 2303.08810.  Official code: https://github.com/rayleizhu/BiFormer (``ops/bra_legacy.py``
``BiLevelRoutingAttention``, used by ``models/biformer.py``; ``models/_common.py``
``AttentionLePE``; ``ops/bra_nchw.py`` is a later NCHW refactor).

BRA on a map split into n_win x n_win regions (each of T = (H/n_win)(W/n_win) tokens):
  1. one linear gives q, k (qk_dim each) and v (dim) per token;
  2. region-level routing: region means of q and k, logits (q_r * scale) k_r^T between the
     P = n_win^2 regions, ``topk`` regions kept per region; the routing is detached (hard,
     non-differentiable, the official default);
  3. the k/v tokens of the kept regions are gathered (topk * T keys per region);
  4. token attention, multi-head, from each region's queries to its gathered keys (softmax);
  5. + LePE: a depthwise ``side_dwconv`` conv of v over the whole map; then the output linear.
kv_downsample is ``identity`` (BiFormer-T/S/B), so no pooling of k/v.

``topk = -2`` is BiFormer's last stage (``AttentionLePE``): plain multi-head attention over
all tokens (qkv without bias, 8 heads as the official default) plus a depthwise LePE conv of
the *input* (not of v, as the official class does), then the projection.

Registered: TOKEN_MIXERS ``bra`` (channels-first in and out; ``topk=-2`` gives the full
attention form).  Defaults are BiFormer-T's: head_dim 32 (heads = dim // 32), n_win 7,
side_dwconv 5 (the legacy class defaults to 3, but every published BiFormer passes 5), topk 4.

Departures from the official code, and why:
- Channels-first interface: the map is permuted to NHWC inside (the official block does the
  same permute around its LayerNorms).
- Sizes not divisible by n_win: padded as the legacy ``auto_pad`` (zeros appended at the
  bottom/right of the *input* before the qkv linear, so padded tokens carry the qkv bias and
  take part in routing means and attention as keys), then the output is cropped.  This is on
  by default (the official default is an assert), so every H, W works.  ``bra_nchw.py`` pads
  after the projection instead; we follow the legacy file the published models use.
- The scale is ``qk_dim ** -0.5`` (total qk width, not per head) in both the routing and the
  token attention, as the official code ("consistent with old models"); pass ``qk_scale`` to
  override.
- The token attention runs through ``F.scaled_dot_product_attention`` (same maths as
  ``softmax(q k^T * scale) v``); ``nas/flops.py`` counts it as its two matmuls, which is what
  fvcore counts on the official einsum/matmul code (softmax uncounted there and here).
  topk and the region means are counted by our table (1 per element; fvcore: 0) and gather is
  free: the published FLOPs exclude the routing selection, so do we, within 1%.
- The kv gather is one ``torch.gather`` over an expanded view, as the official KVGather.
- Heads: ``dim // head_dim`` rounded down to a divisor of dim (at least 1), so any width works;
  BiFormer's widths divide exactly.  ``topk`` larger than the number of regions is an error.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import TOKEN_MIXERS


def _heads(dim: int, head_dim: int) -> int:
    h = max(1, dim // head_dim)
    while dim % h:
        h -= 1
    return h


class BiLevelRoutingAttention(nn.Module):
    """BRA on a channels-first map: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim: int, num_heads: Optional[int] = None, head_dim: int = 32, n_win: int = 7,
                 topk: int = 4, side_dwconv: int = 5, qk_dim: Optional[int] = None,
                 qk_scale: Optional[float] = None, auto_pad: bool = True):
        super().__init__()
        self.dim = dim
        self.qk_dim = qk_dim or dim
        self.num_heads = num_heads or _heads(dim, head_dim)
        if self.qk_dim % self.num_heads or dim % self.num_heads:
            raise ValueError(f"qk_dim {self.qk_dim} and dim {dim} must divide by {self.num_heads} heads")
        if not 1 <= topk <= n_win * n_win:
            raise ValueError(f"topk must be in 1..{n_win * n_win} (n_win={n_win}), got {topk}")
        self.n_win, self.topk, self.auto_pad = n_win, topk, auto_pad
        self.scale = qk_scale or self.qk_dim ** -0.5
        self.qkv = nn.Linear(dim, 2 * self.qk_dim + dim)
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim) \
            if side_dwconv > 0 else None
        self.wo = nn.Linear(dim, dim)

    def route(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Indices (B, P, topk) of the regions each region attends to (no gradient)."""
        q_r, k_r = q.detach().mean(2), k.detach().mean(2)  # (B, P, qk_dim)
        logits = (q_r * self.scale) @ k_r.transpose(-2, -1)
        return torch.topk(logits, k=self.topk, dim=-1).indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h_in, w_in = x.shape
        n = self.n_win
        x = x.permute(0, 2, 3, 1)
        pad_b, pad_r = (-h_in) % n, (-w_in) % n
        if pad_b or pad_r:
            if not self.auto_pad:
                raise ValueError(f"{h_in}x{w_in} is not divisible by n_win={n} and auto_pad is off")
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        H, W = h_in + pad_b, w_in + pad_r
        rh, rw = H // n, W // n
        T, P, m = rh * rw, n * n, self.num_heads
        qkv = self.qkv(x)  # (B, H, W, 2qk + C)
        regions = qkv.view(b, n, rh, n, rw, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, P, T, -1)
        q, k, v = regions.split([self.qk_dim, self.qk_dim, self.dim], dim=-1)

        idx = self.route(q, k)
        kv = regions[..., self.qk_dim:]  # (B, P, T, qk + C)
        sel = torch.gather(kv.unsqueeze(1).expand(b, P, P, T, kv.shape[-1]), 2,
                           idx.view(b, P, self.topk, 1, 1).expand(b, P, self.topk, T, kv.shape[-1]))
        k_sel, v_sel = sel.reshape(b * P, self.topk * T, -1).split([self.qk_dim, self.dim], dim=-1)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B*P, L, m*d) -> (B*P, m, L, d)
            return t.reshape(t.shape[0], t.shape[1], m, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(q.reshape(b * P, T, -1)), heads(k_sel), heads(v_sel),
                                             scale=self.scale)
        out = out.transpose(1, 2).reshape(b, n, n, rh, rw, self.dim).permute(0, 1, 3, 2, 4, 5)
        out = out.reshape(b, H, W, self.dim)
        if self.lepe is not None:
            v_map = qkv[..., 2 * self.qk_dim:].permute(0, 3, 1, 2)
            out = out + self.lepe(v_map).permute(0, 2, 3, 1)
        out = self.wo(out)
        if pad_b or pad_r:
            out = out[:, :h_in, :w_in]
        return out.permute(0, 3, 1, 2)


class AttentionLePE(nn.Module):
    """BiFormer's last-stage attention (``topk=-2``): full multi-head attention + LePE."""

    def __init__(self, dim: int, num_heads: int = 8, side_dwconv: int = 5, qkv_bias: bool = False,
                 qk_scale: Optional[float] = None):
        super().__init__()
        self.num_heads = math.gcd(num_heads, dim)  # 8 divides BiFormer's widths; gcd for others
        self.scale = qk_scale or (dim // self.num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim) \
            if side_dwconv > 0 else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, N, C)
        q, k, v = self.qkv(t).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = out.transpose(1, 2).reshape(b, h * w, c)
        if self.lepe is not None:
            out = out + self.lepe(x).flatten(2).transpose(1, 2)
        return self.proj(out).transpose(1, 2).reshape(b, c, h, w)


@TOKEN_MIXERS.register("bra", tags={"attention", "sparse", "global"})
def bra(dim: int, topk: int = 4, n_win: int = 7, side_dwconv: int = 5, head_dim: int = 32,
        num_heads: Optional[int] = None, **kw) -> nn.Module:
    """Bi-level routing attention; ``topk=-2`` is BiFormer's full-attention last stage."""
    if topk == -2:
        return AttentionLePE(dim, num_heads=num_heads or 8, side_dwconv=side_dwconv, **kw)
    return BiLevelRoutingAttention(dim, num_heads=num_heads, head_dim=head_dim, n_win=n_win, topk=topk,
                                   side_dwconv=side_dwconv, **kw)
