"""FPT: "Feature Pyramid Transformer" (D. Zhang, H. Zhang, Tang, Wang, Hua, Sun; ECCV 2020).

arXiv: 2007.09451 · official code: https://github.com/ZHANGDONG-NJUST/FPT
(``lib/modeling/FPT_a.py``, ``mixture_soft.py``, ``grounding_trans.py``, ``rendering_trans.py``,
read at c7c76f9).

FPT turns a feature pyramid into one of the same sizes in which every level has interacted with
every other level, through three transformers:

* Self-transformer (ST, ``SELFTrans(n_head=1, n_mix=2)``): non-local attention within a level,
  queries at every pixel, keys/values on an AvgPool(3, 2, 1) copy of the map; q and k share one
  1x1 conv.  The attention is a Mixture of Softmaxes: the query channels are split in ``n_mix``
  chunks, each gives ``softmax(q_m k_m^T / sqrt(d_k))``, and the maps are mixed with weights
  ``softmax_m(W mean_N(q))``.  Then a 1x1 conv, BN and the residual.
* Grounding transformer (GT, ``GroundTrans(mode='dot')``, top-down): a finer map (queries,
  theta) reads a coarser one (keys phi, values g), inter width C/2, similarity ``theta^T phi / N``
  with **no softmax** (N = coarse positions), out ``W_z`` = 1x1 conv + BN whose BN is
  **zero-initialised**: GT outputs exactly 0 at init.  No residual (FPT concatenates).
* Rendering transformer (RT, ``RenderTrans(upsample=False)``, bottom-up): a coarser map (query)
  is rendered by a finer one: channel weights ``ReLU(BN(1x1(GAP(fine))))`` gate
  ``BN(3x3(coarse))``, added to ``BN(3x3 stride-2 conv(fine))``, then ReLU.
* ``FPT_a``: lateral 1x1 convs to C; every level concatenates [ST(self), RT from each finer
  level (nearest first), GT from each coarser level (nearest first), itself] (5C for 4 levels)
  and a 3x3 conv maps it back to C.  Outputs have the input sizes (as FPN).

Registered: ``NECKS["fpt_neck"]`` (``FPTNeck(channels, C_out)``, forward(list of maps, finest
first) -> list of maps, finest first, each ``C_out`` wide).  ``NECKS`` is defined here and is
the "multi-scale fusion before the head" option of macro spaces (``from space.ops.fpt import
NECKS, fpt_neck``); ``space.ops.cfnet`` registers its transition block in it too.

Departures from the official code, and why:

* Non-adjacent rendering.  ``RenderTrans`` downsamples the fine map by one stride-2 conv, so
  FPT_a's pairs p5<-p3, p5<-p2 and p4<-p2 (4x, 8x, 4x apart) do not add up (shape mismatch; the
  stored code cannot run them).  Here, k levels apart, the fine map is first average-pooled by
  2^(k-1) (kernel = stride, ceil_mode, no parameters) and then goes through the official single
  3x3 stride-2 conv, so every RT keeps exactly the official parameters and adjacent pairs are
  unchanged.  Pooling and conv both round up (ceil(H/2^k), as stride-2 3x3 convs with padding
  and FPN's pyramids do); for a pyramid built by rounding down (kernel-2 stride-2 patch
  merging) the extra last row/column is cropped.  The channel weights come from the whole fine
  map, as officially.
* Odd sizes in ST: the official views the pooled map as ``h*w//4`` positions (even H, W only);
  here the pooled map keeps its real size ceil(H/2) x ceil(W/2) (same pool, count_include_pad=
  False), which equals the official for even sizes.
* ``RenderTrans`` also builds ``conv_reduction`` (1x1) and ``conv_cat`` (1x1, 2C->C) that its
  forward never uses; they are not built (3*C^2 fewer parameters per RT than the official
  module holds).  ``FPT_a`` builds an unused upsampling function and a commented-out DropBlock.
* FPT_a imports ``SelfTrans`` from ``modeling/self_trans.py`` (present at c7c76f9, last changed
  in 75dec07), whose code is that of ``SELFTrans`` in ``mixture_soft.py``; that is what is
  implemented.
* Norm: FPT_a's default ``with_norm='none'`` (lateral and 3x3 fusion convs with bias, no norm)
  is the default; ``norm="bn"`` / ``"gn"`` give its other options (GN with gcd(32, C) groups
  instead of 32, so that small widths work).  Initialisation as FPT_a: every conv of the neck
  kaiming_uniform(a=1) with zero bias (this overrides ST's own normal init, as officially);
  W_z's BN stays zero.
* Widths: GT's inner width C/2 and MoS chunks C/n_mix need C divisible by 2 and n_mix.
* Kept as official: RT's channel weights pass a (B, C, 1, 1) map through BatchNorm, so training
  needs batch > 1 (BN refuses one value per channel); MoS divides by sqrt(d_k), not by the
  chunk width sqrt(d_k / n_mix).
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import NECKS



class MixtureOfSoftmaxes(nn.Module):
    """``sum_m pi_m softmax(q_m k_m^T / sqrt(d_k))`` with ``pi = softmax_m(W mean_N(q))``."""

    def __init__(self, d_k: int, n_mix: int, attn_dropout: float = 0.1):
        super().__init__()
        if d_k % n_mix:
            raise ValueError(f"n_mix={n_mix} must divide d_k={d_k}")
        self.d_k, self.n_mix = d_k, n_mix
        self.scale = d_k ** -0.5  # official: temperature sqrt(d_k), not sqrt(d_k / n_mix)
        self.dropout = nn.Dropout(attn_dropout)
        if n_mix > 1:
            bound = n_mix ** -0.5
            self.weight = nn.Parameter(torch.empty(n_mix, d_k).uniform_(-bound, bound))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: (B, d_k, N), k: (B, d_k, M), v: (B, d_v, M) -> (B, N, d_v)."""
        b, _, n = q.shape
        m = self.n_mix
        qm = q.reshape(b * m, self.d_k // m, n).transpose(1, 2)
        km = k.reshape(b * m, self.d_k // m, k.shape[-1])
        attn = self.dropout(torch.softmax(torch.bmm(qm, km) * self.scale, dim=2))
        if m > 1:
            pi = torch.softmax(torch.matmul(self.weight, q.mean(2, keepdim=True)), dim=1)
            attn = (attn * pi.reshape(b * m, 1, 1)).reshape(b, m, n, -1).sum(1)
        return torch.bmm(attn, v.transpose(1, 2))


class SelfTransformer(nn.Module):
    """FPT's ST (``SELFTrans`` with kq_transform='conv', pooling=True, concat=False)."""

    def __init__(self, C: int, n_mix: int = 2, n_head: int = 1, attn_dropout: float = 0.1):
        super().__init__()
        self.n_head = n_head
        self.pool = nn.AvgPool2d(3, 2, 1, count_include_pad=False)
        self.qk = nn.Conv2d(C, n_head * C, 1)  # shared by queries and keys, as officially
        self.v = nn.Conv2d(C, n_head * C, 1)
        std = math.sqrt(2.0 / (2 * C))
        nn.init.normal_(self.qk.weight, 0.0, std)
        nn.init.normal_(self.v.weight, 0.0, std)
        self.attention = MixtureOfSoftmaxes(C, n_mix, attn_dropout)
        self.proj = nn.Conv2d(n_head * C, C, 1, bias=False)
        self.bn = nn.BatchNorm2d(C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        pooled = self.pool(x)
        q = self.qk(x).reshape(b * self.n_head, c, h * w)
        k = self.qk(pooled).reshape(b * self.n_head, c, -1)
        v = self.v(pooled).reshape(b * self.n_head, c, -1)
        out = self.attention(q, k, v).transpose(1, 2).reshape(b, self.n_head * c, h, w)
        return self.bn(self.proj(out)) + x


class GroundingTransformer(nn.Module):
    """FPT's GT (``GroundTrans(mode='dot', bn_layer=True)``): ``fine`` reads ``coarse``; the
    output has ``fine``'s size and is exactly 0 at init."""

    def __init__(self, C: int, inter: int = 0):
        super().__init__()
        self.inter = inter or C // 2
        self.theta = nn.Conv2d(C, self.inter, 1)
        self.phi = nn.Conv2d(C, self.inter, 1)
        self.g = nn.Conv2d(C, self.inter, 1)
        self.W_z = nn.Sequential(nn.Conv2d(self.inter, C, 1), nn.BatchNorm2d(C))
        nn.init.zeros_(self.W_z[1].weight)
        nn.init.zeros_(self.W_z[1].bias)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        b, _, h, w = fine.shape
        theta = self.theta(fine).flatten(2).transpose(1, 2)  # (B, N_fine, inter)
        phi = self.phi(coarse).flatten(2)  # (B, inter, N_coarse)
        g = self.g(coarse).flatten(2).transpose(1, 2)  # (B, N_coarse, inter)
        f = torch.matmul(theta, phi) / phi.shape[-1]  # 'dot' mode: scaled, no softmax
        y = torch.matmul(f, g).transpose(1, 2).reshape(b, self.inter, h, w)
        return self.W_z(y)


class RenderingTransformer(nn.Module):
    """FPT's RT (``RenderTrans(upsample=False)``): ``coarse`` is rendered by ``fine``, ``levels``
    pyramid levels finer (1 = adjacent, the official case); output has ``coarse``'s size."""

    def __init__(self, C: int, levels: int = 1):
        super().__init__()
        if levels < 1:
            raise ValueError("the fine map must be at least one level finer")
        pre = 2 ** (levels - 1)
        self.pre_pool = nn.AvgPool2d(pre, pre, ceil_mode=True) if pre > 1 else nn.Identity()
        self.weight_conv = nn.Conv2d(C, C, 1, bias=False)  # official conv1x1
        self.weight_bn = nn.BatchNorm2d(C)  # official bn_low
        self.query_conv = nn.Conv2d(C, C, 3, padding=1, bias=False)  # official conv3x3
        self.query_bn = nn.BatchNorm2d(C)  # official bn_high
        self.down_conv = nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False)  # str_conv3x3
        self.down_bn = nn.BatchNorm2d(C)  # bn_reduction

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        weights = F.relu(self.weight_bn(self.weight_conv(F.adaptive_avg_pool2d(fine, 1))))
        att = self.query_bn(self.query_conv(coarse)) * weights
        down = self.down_bn(self.down_conv(self.pre_pool(fine)))
        h, w = coarse.shape[-2:]
        if not torch.jit.is_tracing() and (down.shape[-2] < h or down.shape[-1] < w):
            raise ValueError(f"fine map {tuple(fine.shape[-2:])} is too small to render a "
                             f"{h}x{w} map from {tuple(down.shape[-2:])}")
        # a no-op for pyramids that round sizes up; crops the last row/column for those that
        # round down (kernel-2 stride-2 patch merging)
        return F.relu(down[:, :, :h, :w] + att)


def _norm(kind: str, C: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(C)
    if kind == "gn":
        return nn.GroupNorm(math.gcd(32, C), C)
    raise ValueError(f"norm must be 'none', 'bn' or 'gn', got {kind!r}")


def _conv_norm(C_in: int, C_out: int, k: int, norm: str) -> nn.Module:
    if norm == "none":
        return nn.Conv2d(C_in, C_out, k, padding=k // 2)
    return nn.Sequential(nn.Conv2d(C_in, C_out, k, padding=k // 2, bias=False), _norm(norm, C_out))


class FPTNeck(nn.Module):
    """FPT_a over ``len(channels)`` levels (finest first; 4 in the paper: res2..res5)."""

    def __init__(self, channels: Sequence[int], C_out: int, n_mix: int = 2, norm: str = "none"):
        super().__init__()
        self.channels = list(channels)
        n = len(self.channels)
        if n < 1:
            raise ValueError("FPT needs at least one level")
        self.out_channels = [C_out] * n
        self.lateral = nn.ModuleList(_conv_norm(c, C_out, 1, norm) for c in self.channels)
        self.st = nn.ModuleList(SelfTransformer(C_out, n_mix) for _ in range(n))
        # keys "i_j": level i (the output) reads level j
        self.rt = nn.ModuleDict({f"{i}_{j}": RenderingTransformer(C_out, i - j)
                                 for i in range(n) for j in range(i - 1, -1, -1)})
        self.gt = nn.ModuleDict({f"{i}_{j}": GroundingTransformer(C_out)
                                 for i in range(n) for j in range(i + 1, n)})
        self.fuse = nn.ModuleList(_conv_norm((n + 1) * C_out, C_out, 3, norm) for _ in range(n))
        for m in self.modules():  # FPT.initialize(): every conv, after the sub-modules' own init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feats: List[torch.Tensor]) -> List[torch.Tensor]:
        if len(feats) != len(self.lateral):
            raise ValueError(f"expected {len(self.lateral)} levels, got {len(feats)}")
        p = [lat(f) for lat, f in zip(self.lateral, feats)]
        n = len(p)
        outs = []
        for i in range(n):
            parts = [self.st[i](p[i])]
            parts += [self.rt[f"{i}_{j}"](p[i], p[j]) for j in range(i - 1, -1, -1)]
            parts += [self.gt[f"{i}_{j}"](p[i], p[j]) for j in range(i + 1, n)]
            parts.append(p[i])
            outs.append(self.fuse[i](torch.cat(parts, dim=1)))
        return outs


@NECKS.register("fpt_neck", tags={"fpt", "transformer", "cross_scale"}, inputs=4)
def fpt_neck(channels: Sequence[int], C_out: int, **kw) -> FPTNeck:
    """FPT_a neck: levels finest first (4 in the paper) -> same sizes, ``C_out`` channels each."""
    return FPTNeck(channels, C_out, **kw)
