"""Dynamic Group Convolution for Accelerating Convolutional Neural Networks (Su, Fang, Kang,
Hu, Pietikainen, Liu; ECCV 2020).

arXiv: 2007.04242 · official code: https://github.com/zhuogege1943/dgc (``layers.py``:
``DynamicMultiHeadConv``/``HeadConv``; ``main.py`` for the lasso weight; read at ba07486)

Structure of ``DynamicMultiHeadConv(C_in, C_out, k, stride, heads=4, squeeze_rate=16,
gate_factor=0.25)``:

1. pre-activation inside: ``x = ReLU(BN(x))``; ``s = GAP(x)``;
2. per head h a saliency generator ``g_h = ReLU(FC2(ReLU(FC1(s))))`` (FC1 C_in -> C_in/sq without
   bias, FC2 back to C_in with bias initialised to 1; ``sq`` is halved when C_in < 80);
   the lasso term is ``sum_h mean(g_h)``;
3. the ``inactive`` smallest saliencies of each head and sample are zeroed (topk on the detached
   gate, then every entry <= the largest of those is dropped, as the official ``le`` does);
4. ``x_h = x * g_h`` for every head; the heads' inputs are concatenated and one grouped conv
   (groups=heads, head h owns output rows ``h*C_out/heads ...``) runs over them;
5. the output channels are interleaved: channel ``j*heads + h`` is head h's j-th output
   (the official ``view(b, heads, c/heads).transpose(1, 2)``).

``gate_factor`` is the fraction of input channels *kept*: pruning ends at
``round(C_in * (1 - gate_factor))`` inactive channels per head.  The number ramps linearly with
training progress p: ``round(C_in*(1-gate_factor)*3/2*(p-1/12))`` for 1/12 < p < 3/4, the full
number from p >= 3/4.  It lives in a buffer, so eval mode and checkpoints use the last value a
training forward set; a fresh model prunes nothing.

Departures from the official code, and why:
* Progress comes from ``set_progress(p)`` (the project's hook, per module) instead of the
  class-level ``DynamicMultiHeadConv.global_progress``.  As officially, the buffer is only
  rewritten by a *training* forward (set_progress alone changes nothing in eval mode).
* The lasso term reaches the loss through ``self.aux_loss`` (training forwards only), already
  multiplied by ``lasso_weight=1e-5``: the official ``--group-lasso-lambda`` default, used by
  every published recipe (the official loss is ``CE + lambda * sum_layers sum_heads mean(g)``).
* The heads' FC1s are one 1x1 conv to ``heads*hidden`` channels and their FC2s one grouped 1x1
  conv (groups=heads) on the pooled vector; the heads' conv weights are one ``(C_out, C_in, k,
  k)`` parameter.  Same arithmetic and init as the per-head ``nn.Linear``/``nn.Conv2d`` modules
  (kaiming-normal fan-in FCs, FC2 bias 1; conv weights N(0, 2/(k*k*C_out/heads)) as the
  official ResNet/DenseNet initialisers give each head's conv), only batched.
* Zeroing uses ``torch.where`` instead of indexed assignment on a clone (same values and the
  same zero gradient through dropped gates) so that the op traces; a trace freezes the number
  of inactive channels (a constant in eval mode anyway).
* ``heads`` that do not divide C_out become the largest divisor of C_out not above ``heads``
  (the official code asserts divisibility; C_in need not be divisible: every head sees all
  C_in channels).  The FC width is ``max(1, C_in // sq)`` (the official code would build an
  empty layer below C_in = sq).
* As a DARTS edge, ``dgc_3x3`` = DGC conv (its BN+ReLU take the place of DARTS' leading ReLU)
  followed by BN(C_out), as the official DyResNet follows each DGC conv with a BN.
  Stride and channel change happen in the conv itself, as in DyResNet's first block conv.

Cost: fvcore counts what runs: the dense grouped conv (``C_out*C_in*k*k`` per output pixel,
pruned channels multiplied by zero), the gate FCs, BN, GAP, the gating multiply
(``heads*C_in*H*W``) and, while pruning is active, topk/max per ``nas/flops.py``.  A
gather-based implementation would skip the pruned channels: ``gated_macs`` (tests/ops/test_dgc.py) gives that
effective count (dense minus ``inactive*(C_out*k*k*Ho*Wo + heads*H*W)`` per DGC conv; gates
that tie with the k-th smallest and are dropped beyond ``inactive`` are not subtracted).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import OPS
from .common import check_stride, fast_forms, is_channels_last

LASSO_WEIGHT = 1e-5  # official main.py --group-lasso-lambda default


def _heads_dividing(C_out: int, heads: int) -> int:
    return max(h for h in range(1, max(1, heads) + 1) if C_out % h == 0)


class DynamicMultiHeadConv(nn.Module):
    """DGC conv: BN-ReLU, per-head saliency gates with top-k pruning, one grouped conv."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int = 3, stride: int = 1,
                 padding: Optional[int] = None, dilation: int = 1, heads: int = 4,
                 squeeze_rate: int = 16, gate_factor: float = 0.25,
                 lasso_weight: float = LASSO_WEIGHT):
        super().__init__()
        if not 0.0 <= gate_factor <= 1.0:
            raise ValueError(f"gate_factor is the kept fraction, in [0, 1]; got {gate_factor}")
        self.C_in, self.C_out, self.kernel_size = C_in, C_out, kernel_size
        self.stride, self.dilation = stride, dilation
        self.padding = dilation * (kernel_size - 1) // 2 if padding is None else padding
        self.heads = _heads_dividing(C_out, heads)
        self.gate_factor = gate_factor
        self.lasso_weight = lasso_weight
        sq = squeeze_rate // 2 if C_in < 80 else squeeze_rate
        self.hidden = max(1, C_in // max(1, sq))

        self.norm = nn.BatchNorm2d(C_in)
        self.fc1 = nn.Conv2d(C_in, self.heads * self.hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(self.heads * self.hidden, self.heads * C_in, 1, groups=self.heads)
        self.weight = nn.Parameter(torch.empty(C_out, C_in, kernel_size, kernel_size))
        self.register_buffer("inactive", torch.zeros((), dtype=torch.long))
        self.progress = 0.0
        self.aux_loss: Optional[torch.Tensor] = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.fc1.weight)
        nn.init.kaiming_normal_(self.fc2.weight)
        nn.init.constant_(self.fc2.bias, 1.0)  # all gates open at the start
        fan_out_head = self.kernel_size ** 2 * (self.C_out // self.heads)
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / fan_out_head))

    # -- schedule ---------------------------------------------------------------------------
    def set_progress(self, p: float) -> None:
        self.progress = float(p)

    def inactive_at(self, p: float) -> int:
        """Inactive channels per head the official ramp gives at training progress p."""
        if p >= 3.0 / 4:
            return round(self.C_in * (1 - self.gate_factor))
        if p > 1.0 / 12:
            return round(self.C_in * (1 - self.gate_factor) * 3.0 / 2 * (p - 1.0 / 12))
        return 0

    @property
    def inactive_channels(self) -> int:
        return int(self.inactive)

    # -- forward ----------------------------------------------------------------------------
    def saliency(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head gates (B, heads, C_in) of the (already BN-ReLU'd) input, before pruning."""
        s = x.mean((2, 3), keepdim=True)
        g = F.relu(self.fc2(F.relu(self.fc1(s))))
        return g.view(x.shape[0], self.heads, self.C_in)

    @staticmethod
    def prune(g: torch.Tensor, inactive: int) -> torch.Tensor:
        """Zero, per head and sample, the ``inactive`` smallest gates (and ties with them)."""
        if inactive <= 0:
            return g
        d = g.detach()  # the selection itself is not differentiated
        smallest, _ = d.topk(inactive, dim=-1, largest=False, sorted=False)
        cut, _ = smallest.max(dim=-1, keepdim=True)
        return torch.where(d.le(cut), 0.0, g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.progress > 1.0 / 12:
            self.inactive.fill_(self.inactive_at(self.progress))
        x = F.relu(self.norm(x))
        g = self.saliency(x)
        if self.training:
            self.aux_loss = self.lasso_weight * g.mean(dim=(0, 2)).sum()
        g = self.prune(g, self.inactive_channels)
        b, heads = x.shape[0], self.heads
        if fast_forms(self) and is_channels_last(x):
            # the same products and interleave in channels-last order: the official order's
            # broadcast gives a plain-contiguous input, reordered by oneDNN forward and backward
            xs = (x.permute(0, 2, 3, 1).unsqueeze(3) * g.view(b, 1, 1, heads, self.C_in)).flatten(3)
            out = F.conv2d(xs.permute(0, 3, 1, 2), self.weight, None, self.stride, self.padding,
                           self.dilation, heads).permute(0, 2, 3, 1)
            _, h, w, c = out.shape
            out = out.view(b, h, w, heads, c // heads).transpose(3, 4).reshape(b, h, w, c)
            return out.permute(0, 3, 1, 2)
        xs = (x.unsqueeze(1) * g.view(b, heads, self.C_in, 1, 1)).flatten(1, 2)
        out = F.conv2d(xs, self.weight, None, self.stride, self.padding, self.dilation, heads)
        _, c, h, w = out.shape
        return out.view(b, heads, c // heads, h, w).transpose(1, 2).reshape(b, c, h, w)

    # -- cost -------------------------------------------------------------------------------
    def out_size(self, H: int, W: int) -> Sequence[int]:
        k = self.dilation * (self.kernel_size - 1) + 1
        return ((H + 2 * self.padding - k) // self.stride + 1,
                (W + 2 * self.padding - k) // self.stride + 1)

    def pruned_macs(self, H: int, W: int) -> int:
        """Per-sample MACs a gather-based implementation skips at the current pruning: the
        pruned channels' share of the conv and of the gating multiply."""
        ho, wo = self.out_size(H, W)
        k = self.inactive_channels
        return k * (self.C_out * self.kernel_size ** 2 * ho * wo + self.heads * H * W)


class DGCConv(nn.Sequential):
    """A DARTS edge: DGC conv (BN-ReLU inside, stride and C_in -> C_out) then BN."""

    def __init__(self, C_in: int, C_out: int, stride: int, kernel_size: int = 3, **kw):
        super().__init__(DynamicMultiHeadConv(C_in, C_out, kernel_size, check_stride(stride), **kw),
                         nn.BatchNorm2d(C_out))


@OPS.register("dgc_3x3", tags={"conv", "dynamic", "aux_loss", "progress"})
def dgc_3x3(C_in: int, C_out: int, stride: int, **kw) -> nn.Module:
    """DGC 3x3 (heads=4, squeeze_rate=16, gate_factor=0.25 by default) then BN."""
    return DGCConv(C_in, C_out, stride, 3, **kw)


__all__ = ["DynamicMultiHeadConv", "DGCConv", "LASSO_WEIGHT"]
