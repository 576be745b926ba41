"""Squeeze-and-excitation and DCANet's connected SE (DCA-SE).

* SE: "Squeeze-and-Excitation Networks" (Hu, Shen, Albanie, Sun, Wu; CVPR 2018), arXiv 1709.01507,
  https://github.com/hujie-frank/SENet.  ``SE(C, reduction=16)``: GAP, Linear C->C/16 (bias),
  ReLU, Linear C/16->C (bias), sigmoid, ``x * att``, as DCANet's ``SELayer``
  (``models/resnet/resnet_se.py``).  Params: 2*C*(C/16) + C/16 + C.
* DCA-SE: "DCANet: Learning Connected Attentions for Convolutional Neural Networks" (Ma, Guo,
  Tang, Qiao, Chen, Yang, Fu; ECCV 2020), arXiv 2007.05099, https://github.com/13952522076/DCANet
  (``CSELayer`` in ``models/resnet/resnet_se_dca.py``, bottleneck ``att_fc`` in
  ``models/mnas/mnasnet_se_dca.py``).

DCA-SE: an SE block that also reads the "transformation output" of the previous attention
block.  With ``gap = GAP(x)`` (B,C):
  no previous state: ``att = fc(gap)`` (plain SE);
  previous state p:  ``pre = att_fc(p)`` if p has other channels than C, else p;
                     ``fuse = ReLU(LayerNorm_C(Conv2d(2,1,1x1)(stack[gap, pre])))`` (a learned
                     weighted sum of the two vectors plus a bias, normalised over channels);
                     ``att = fc(fuse)``;
and the block returns ``x * att`` and passes ``gap * att`` on as the new state.
Extra params over SE: 3 + 2C, plus att_fc where declared.

How the state travels here (``network_state_key = "dca"``, see ``space/ops/base.py``).  The
official networks pass a ``{0: x, 1: gap * att}`` dict from block to block; our ops keep the
(C_in, C_out, stride) signature, so the network holds the state instead: ``link_state(net)``
gives every DCA-SE op one shared ``NetworkState`` dict; an op reads ``state["dca"]`` (the
previous op's transformation output) and writes its own.  The state is stored as the pair
``(gap, att)`` and the reading op forms ``gap * att``: the product then exists (and is costed)
only where a later op uses it, so a part costed alone (``WithState``) counts what it counts in
the network (a product no op reads would be traced away in one and not in the other).  The
network clears the dict at the start of every forward and at every stage start, so:
* along a chain of blocks (a sequential stage, e.g. the MobileNet space), the first DCA-SE op of
  a stage is plain SE and each later one reads the op before it, as in DCANet's ResNets;
* in a DARTS cell network a stage is the run of cells between reductions (the state is cleared
  at each reduction cell, which starts the stage at the new width).  Ops run cell by cell, and
  inside a cell in edge order (edge 0 then edge 1 of node 0, ...); a DCA-SE op reads the state of
  the DCA-SE op that ran last, which in a DAG may sit on a parallel edge rather than on its
  input's path (DCANet only defines sequential chains; execution order is the natural
  extension).  Ops that are not DCA-SE neither read nor change the state.  ``space.plan.parts``
  follows the same order to cost each op with or without a previous state (``prev=0/1`` in the
  part key).
* a stand-alone op (never linked) is plain SE on every call.

Departures from the official code and why:
* Chains restart at every stage start; DCANet runs one chain through the whole network and
  maps the state to the new width with ``att_fc`` at each stage transition.  Restarting keeps a
  part's cost a function of (op, shape, prev-state-or-not), and within a stage channels never
  change, so ``att_fc`` is never needed in our spaces.  For fidelity ``DCASE`` still accepts a
  declared ``prev_channels`` and then builds ``att_fc``: ``"bottleneck"`` (default; Linear
  prev->C/16, LN, ReLU, Linear C/16->C, LN, ReLU, from ``mnasnet_se_dca.py``) reproduces the
  README's DCA-SE-ResNet-50 28.65M; ``"linear"`` (Linear prev->C, LN, ReLU, the HEAD ResNet file)
  gives that file's 30.90M.  The tests rebuild both ResNet-50s with a whole-network chain.
* The fusion weights (conv 2->1, LayerNorm, att_fc) are created when the op is linked to a
  network state, i.e. when it is part of a chain.  A stand-alone op can never read a state, so
  it holds SE's parameters only (and every parameter it has receives gradients).  The first op
  of a chain holds unused fusion weights, as DCANet's first block does.
* The fusion conv is initialised as DCANet's ResNets initialise every conv
  (``kaiming_normal_(mode="fan_out", nonlinearity="relu")``); the rest uses PyTorch defaults.
* The hidden width C/16 is floored at 1 so that small C works.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .common import register_attention


def _excitation(C: int, reduction: int) -> nn.Sequential:
    hidden = max(1, C // reduction)
    return nn.Sequential(nn.Linear(C, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, C), nn.Sigmoid())


class SE(nn.Module):
    """Squeeze-and-excitation: ``x * sigmoid(fc2(relu(fc1(GAP(x)))))``."""

    def __init__(self, C: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = _excitation(C, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        return x * self.fc(self.avg_pool(x).flatten(1)).view(b, c, 1, 1)


class DCASE(nn.Module):
    """DCANet's CSELayer: SE whose excitation also sees the previous block's ``gap * att``."""

    network_state_key = "dca"

    def __init__(self, C: int, reduction: int = 16, prev_channels: Optional[int] = None,
                 att_fc: str = "bottleneck"):
        super().__init__()
        if att_fc not in ("bottleneck", "linear"):
            raise ValueError(f"att_fc must be 'bottleneck' or 'linear', got {att_fc!r}")
        self.channels, self.reduction = C, reduction
        self.prev_channels = C if prev_channels is None else int(prev_channels)
        self.att_fc_kind = att_fc
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = _excitation(C, reduction)
        self.conv: Optional[nn.Module] = None  # fusion weights: built by use_network_state
        self.att_fc: Optional[nn.Module] = None
        self._state = None

    def _build_fusion(self) -> None:
        C, hidden = self.channels, max(1, self.channels // self.reduction)
        conv = nn.Conv2d(2, 1, kernel_size=1)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        self.conv = nn.Sequential(conv, nn.LayerNorm(C), nn.ReLU(inplace=True))
        if self.prev_channels != C:
            if self.att_fc_kind == "bottleneck":
                self.att_fc = nn.Sequential(nn.Linear(self.prev_channels, hidden), nn.LayerNorm(hidden),
                                            nn.ReLU(inplace=True), nn.Linear(hidden, C), nn.LayerNorm(C),
                                            nn.ReLU(inplace=True))
            else:
                self.att_fc = nn.Sequential(nn.Linear(self.prev_channels, C), nn.LayerNorm(C),
                                            nn.ReLU(inplace=True))
        ref = self.fc[0].weight
        self.conv.to(ref.device, ref.dtype)
        if self.att_fc is not None:
            self.att_fc.to(ref.device, ref.dtype)

    def use_network_state(self, state) -> None:
        self._state = state
        if self.conv is None:
            self._build_fusion()

    def example_state(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        zeros = x.new_zeros(x.shape[0], self.prev_channels)
        return zeros, zeros

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        gap = self.avg_pool(x).flatten(1)
        prev = None if self._state is None else self._state.get(self.network_state_key)
        if prev is None:
            att = self.fc(gap)
        else:
            prev_gap, prev_att = prev
            if not torch.jit.is_tracing() and prev_gap.shape[1] != self.prev_channels:
                raise ValueError(f"dca_se({c}) received a {prev_gap.shape[1]}-channel state but was "
                                 f"declared with prev_channels={self.prev_channels}; chains must "
                                 "restart where the width changes, or declare prev_channels")
            pre = prev_gap * prev_att  # the previous block's transformation output
            if self.att_fc is not None:
                pre = self.att_fc(pre)
            both = torch.stack([gap, pre], dim=1).view(b, 2, 1, c)
            att = self.fc(self.conv(both).view(b, c))
        if self._state is not None:
            self._state[self.network_state_key] = (gap, att)  # the reader forms gap * att
        return x * att.view(b, c, 1, 1)


register_attention("se", SE, tags={"se"})
register_attention("dca_se", DCASE, tags={"se", "dca"}, state="dca")

__all__ = ["SE", "DCASE"]
