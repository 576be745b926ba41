"""Query-guided cross-attention fusion, from "Query-guided Attention in Vision Transformers for
Localizing Objects Using a Single Sketch" (Tripathi, Mishra, Chakraborty; WACV 2024).

arXiv: 2303.08784 · official code: https://github.com/vcl-iisc/locformer-SGOL
(``methods/swin_w_ram.py``: ``CrossMHAFusion``, ``PositionEmbeddingSine`` and the fusion step of
``SwinTransformer.forward``, read at e4501a3).

Before each Swin stage the paper lets the image tokens attend to the sketch tokens.  The official
step, generalised here to any second feature map ``y`` (another resolution, another width):

1. ``y' = GroupNorm(Conv1x1(y))``: y projected to the image width C (official: 256 -> d, 32 groups);
2. unnormalised sine position encodings (DETR's ``PositionEmbeddingSine(C/2)``, normalize=False:
   positions 1..H, 1..W) for both maps, each from its own size;
3. ``a = MHA(q = x + pos_x, k = y' + pos_y, v = y')`` (nn.MultiheadAttention, dropout on the
   attention weights);
4. ``out = LayerNorm(x + Dropout(Linear(Dropout(ReLU(Linear(a))))))``: the attention output reaches
   the residual only through the FFN (there is no ``x + a`` step).

``cross_attn_fusion`` (FUSIONS): ``(C, C_y=C, ...)``, forward(x: B,C,H,W, y: B,C_y,Hy,Wy) -> B,C,H,W.

Departures from the official code, and why:

* Defaults for small widths.  The official layer has 8 heads and ``d_ffn=1024`` at every width
  (96..768), the defaults of the ViDT/Deformable-DETR decoder layer it was copied from (its
  docstring still lists ``n_levels``/``n_points``), whose width is 256: there d_ffn is 4x.  Here
  ``n_heads`` defaults to the largest of 8, 4, 2, 1 that divides C with heads at least 8 wide (8 at
  every official width, e.g. 2 at C=16) and ``d_ffn`` to ``4*C`` (DETR's ratio); pass
  ``n_heads=8, d_ffn=1024`` to get the official layer.  Dropout keeps the official 0.4.
* GroupNorm of the projection uses ``gcd(32, C)`` groups so that any width works (32 officially).
* The attention runs as q/k/v Linear layers + ``F.scaled_dot_product_attention`` + out Linear,
  numerically the same as ``nn.MultiheadAttention`` (same parameters, same scale 1/sqrt(head
  dim), dropout on the weights); nas/flops.py counts SDPA as B*heads*L*S*(E+Ev) multiply-adds.
* ``CrossMHAFusion`` also builds ``norm1``/``dropout1``, which its forward never uses: not built
  here.  Its forward returns 4 values ``(tgt, sk, attention, tgt2)`` while the official backbone
  unpacks 3 (``x, sket, tgt = ...``), which raises as stored; we return only the fused map, which
  is what the backbone keeps (the other values are the untouched sketch and attention maps).
  The backbone's unused ``normalize_image``/``normalize_sketch``/``projection`` layers are
  not built either.
* Position encodings are input-independent constants, computed once per size with numpy (float64,
  cast to the input dtype) so that tracing and FLOP counting see them as constants, not as
  sin/cos/div ops; they match the official float32 ones to ~1e-7.

Not in any space's default candidate list (opt in with ``--fusions``): its point is a
second feature set of another resolution or modality.  Where a space merges two maps of the same
size (a DARTS node, a residual) it becomes full attention over all H*W tokens: 37M multiply-adds
per DARTS node at 16 channels and 32x32, about 3.9 s per forward+backward of a 64-image batch on a
2-core CPU, and an H*W x H*W attention map per head, so every cell holding it exceeds a 300M budget
and it would dominate supernet training time without ever surviving the search.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..registry import FUSIONS


@functools.lru_cache(maxsize=64)
def _sine_table(h: int, w: int, channels: int, temperature: float) -> np.ndarray:
    """DETR's unnormalised 2-D sine encoding: channels/2 for y, then channels/2 for x; within
    each half, even channels are sin and odd channels cos of position / T^(2*(i//2)/half)."""
    half = channels // 2
    i = np.arange(half)
    dim_t = temperature ** (2 * (i // 2) / half)
    ys = np.arange(1, h + 1, dtype=np.float64)[:, None] / dim_t  # (h, half)
    xs = np.arange(1, w + 1, dtype=np.float64)[:, None] / dim_t  # (w, half)
    even = (i % 2 == 0)
    ys = np.where(even, np.sin(ys), np.cos(ys))
    xs = np.where(even, np.sin(xs), np.cos(xs))
    pos = np.concatenate([np.broadcast_to(ys[:, None, :], (h, w, half)),
                          np.broadcast_to(xs[None, :, :], (h, w, half))], axis=-1)
    return np.ascontiguousarray(pos.transpose(2, 0, 1)[None])  # (1, channels, h, w)


def sine_position(x: torch.Tensor, temperature: float = 10000.0) -> torch.Tensor:
    """(1, C, H, W) sine encoding for a map shaped like ``x`` (a constant under tracing)."""
    with warnings.catch_warnings():  # under tracing the table is a constant of this size,
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # as intended: no warning
        _, c, h, w = x.shape
        table = _sine_table(int(h), int(w), int(c), float(temperature))
        return torch.from_numpy(table).to(device=x.device, dtype=x.dtype)


def default_heads(C: int, max_heads: int = 8, min_head_dim: int = 8) -> int:
    h = max_heads
    while h > 1 and (C % h or C // h < min_head_dim):
        h //= 2
    return h


class CrossAttentionFusion(nn.Module):
    """Image features ``x`` attend to ``y`` (any size, ``C_y`` channels): the official
    CrossMHAFusion with the sketch projection and position encodings of its backbone."""

    def __init__(self, C: int, C_y: Optional[int] = None, n_heads: Optional[int] = None,
                 d_ffn: Optional[int] = None, dropout: float = 0.4, temperature: float = 10000.0):
        super().__init__()
        if C % 2:
            raise ValueError(f"the sine encoding splits C in two halves; C={C} is odd")
        C_y = C if C_y is None else C_y
        self.n_heads = default_heads(C) if n_heads is None else n_heads
        if C % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} does not divide C={C}")
        d_ffn = 4 * C if d_ffn is None else d_ffn
        self.temperature = temperature
        self.dropout = dropout
        self.proj_y = nn.Sequential(nn.Conv2d(C_y, C, 1), nn.GroupNorm(math.gcd(32, C), C))
        self.q = nn.Linear(C, C)
        self.k = nn.Linear(C, C)
        self.v = nn.Linear(C, C)
        self.out = nn.Linear(C, C)
        self.ffn = nn.Sequential(nn.Linear(C, d_ffn), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(d_ffn, C), nn.Dropout(dropout))
        self.norm = nn.LayerNorm(C)
        self._init_like_mha()

    def _init_like_mha(self) -> None:
        # nn.MultiheadAttention: xavier_uniform on the packed (3C, C) in-projection, zero biases
        w = torch.empty(3 * self.q.weight.shape[0], self.q.weight.shape[1])
        nn.init.xavier_uniform_(w)
        with torch.no_grad():
            for lin, part in zip((self.q, self.k, self.v), w.chunk(3)):
                lin.weight.copy_(part)
                lin.bias.zero_()
            self.out.bias.zero_()

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, heads, L, C/heads)
        b, n, c = t.shape
        return t.view(b, n, self.n_heads, c // self.n_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.proj_y(y)
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        tokens_y = y.flatten(2).transpose(1, 2)
        pos = sine_position(x, self.temperature).flatten(2).transpose(1, 2)
        pos_y = sine_position(y, self.temperature).flatten(2).transpose(1, 2)
        q = self._heads(self.q(tokens + pos))
        k = self._heads(self.k(tokens_y + pos_y))
        v = self._heads(self.v(tokens_y))
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        a = self.out(a.transpose(1, 2).reshape(b, h * w, c))
        fused = self.norm(tokens + self.ffn(a))
        return fused.transpose(1, 2).reshape(b, c, h, w)


@FUSIONS.register("cross_attn_fusion", tags={"attention", "cross_scale", "locformer"})
def cross_attn_fusion(C: int, **kw) -> nn.Module:
    """x (B,C,H,W) attends to y (B,C_y,Hy,Wy; kw ``C_y``, default C) -> shaped like x."""
    return CrossAttentionFusion(C, **kw)
