"""The ``mobile`` space's weight-sharing supernet (SPOS with channel masking); see space/mobile.py.

It builds on the plan (space/mobile_plan.py), which the space (space/mobile.py) imports too:
no import cycle.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .choice import Choice
from .mobile_plan import BlockPlan, MobileArch, STEM_STRIDE, _scaled, ir_post, make_stem, plan
from .ops.base import link_state
from .ops.common import conv1x1_bn_act, dw_bn, dw_kernel
from .registry import HEADS
from .ops.sandglass import sandglass_hidden
from .registry import ATTENTIONS, FUSIONS

if TYPE_CHECKING:  # the space imports this module at its top; the name is only a type here
    from .mobile import MobileSpace

def _fit(x: torch.Tensor, C: int) -> torch.Tensor:
    """x with C channels: extra ones cut, missing ones zero."""
    c = x.shape[1]
    if c == C:
        return x
    if c > C:
        return x[:, :C]
    return torch.cat([x, x.new_zeros(x.shape[0], C - c, *x.shape[2:])], dim=1)


def _mask(x: torch.Tensor, n: int) -> torch.Tensor:
    """Zero every channel from n on (the inactive part of an allocated width)."""
    if n >= x.shape[1]:
        return x
    return torch.cat([x[:, :n], x.new_zeros(x.shape[0], x.shape[1] - n, *x.shape[2:])], dim=1)


@dataclass(frozen=True)
class SlotOptions:
    """What one supernet block slot must be able to run."""

    types: Tuple[str, ...]
    kernels: Tuple[int, ...]
    expansions: Tuple[int, ...]
    convs: Tuple[str, ...]
    attentions: Tuple[str, ...]
    fusions: Tuple[str, ...]


@dataclass(frozen=True)
class _Active:
    p: BlockPlan
    cin: int
    cout: int
    hidden: int
    restart: Optional[str]


class SuperBlock(nn.Module):
    """All candidates of one block slot at allocated widths; ``set`` picks the active path."""

    def __init__(self, cin: int, cout: int, stride: int, opts: SlotOptions, ir_hidden: int, sg_hidden: int):
        super().__init__()
        self.cin, self.cout, self.ir_hidden, self.sg_hidden = cin, cout, ir_hidden, sg_hidden
        dws = list(dict.fromkeys((dw_kernel(c, k), c) for k in opts.kernels for c in opts.convs))

        def atts(C: int) -> Choice:
            return Choice.of(opts.attentions, lambda n: nn.Identity() if n == "none" else ATTENTIONS[n](C))

        if "ir" in opts.types:
            if any(t != 1 for t in opts.expansions):
                self.ir_expand = conv1x1_bn_act(cin, ir_hidden)
            self.ir_dw = Choice({f"k{k}_{c}": dw_bn(ir_hidden, k, stride, c, act=True) for k, c in dws})
            self.ir_att = atts(ir_hidden)
            self.ir_project = ir_post(ir_hidden, cout)
        if "sg" in opts.types:
            self.sg_dw1 = Choice({f"k{k}_{c}": dw_bn(cin, k, 1, c, act=True) for k, c in dws})
            self.sg_reduce = ir_post(cin, sg_hidden)  # the same linear 1x1 conv -> BN
            self.sg_expand = conv1x1_bn_act(sg_hidden, cout)
            self.sg_dw2 = Choice({f"k{k}_{c}": dw_bn(cout, k, stride, c) for k, c in dws})
            self.sg_att = atts(cout)
        self.fusion = Choice.of(opts.fusions, lambda n: FUSIONS[n](cout))
        self.active: Optional[_Active] = None
        self._state: Optional[dict] = None

    def use_network_state(self, state: dict) -> None:
        self._state = state

    def set(self, a: _Active) -> None:
        b = a.p.block
        dw = f"k{b.kernel}_{b.conv}"
        if b.type == "ir":
            self.ir_dw.set(dw)
            self.ir_att.set(b.attention)
        else:
            if a.p.form != "pw":
                self.sg_dw2.set(dw)
            if a.p.form == "full":
                self.sg_dw1.set(dw)
            self.sg_att.set(b.attention)
        if a.p.residual:
            self.fusion.set(b.fusion)
        self.active = a

    def _restart(self) -> None:
        if self.active.restart is not None and self._state is not None:
            self._state.pop(self.active.restart, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.active
        p = a.p
        if p.form == "ir":
            h = self.ir_expand(x) if p.block.expand != 1 else _fit(x, self.ir_hidden)
            h = _mask(self.ir_dw(_mask(h, a.hidden)), a.hidden)
            self._restart()
            y = self.ir_project(_mask(self.ir_att(h), a.hidden))
        else:
            h = _mask(self.sg_dw1(x), a.cin) if p.form == "full" else x
            h = _mask(self.sg_expand(_mask(self.sg_reduce(h), a.hidden)), a.cout)
            if p.form != "pw":
                h = _mask(self.sg_dw2(h), a.cout)
            self._restart()
            y = self.sg_att(h)
        y = _mask(y, a.cout)
        if p.residual:
            y = _mask(self.fusion(y, _fit(x, self.cout)), a.cout)
        return y


def supernet_strides(strides: Sequence[int], hw: Tuple[int, int], min_res: int) -> List[int]:
    """``strides`` (stem first) with the earliest stride-2 layers set to 1 until the output
    keeps at least ``min_res`` pixels per side."""
    out = list(strides)
    for i, s in enumerate(out):
        if math.ceil(min(hw) / math.prod(out)) >= min_res:
            break
        if s == 2:
            out[i] = 1
    return out


class MobileSupernet(nn.Module):
    def __init__(self, space: "MobileSpace", num_classes: int, input_size: Sequence[int]):
        super().__init__()
        c_in, h, w = input_size
        base = space.base_net.preset
        self.percent = space.supernet_width
        strides = supernet_strides([STEM_STRIDE] + [st.stride for st in base.stages], (h, w),
                                   space.supernet_min_resolution)
        self.deployed_strides = [st.stride for st in base.stages]
        self.stem_active = _scaled(base.stem, self.percent)
        self.stem = make_stem(c_in, max(16, self.stem_active), strides[0])
        # allocated width per stage: the widest option, scaled
        stage_opts = [[st.width] for st in base.stages[:1]] + [
            [space.width(c, m) for m in space.width_mults] for c, _, _ in space.base_net.stages]
        # searched stages get at least 16 channels: attention plug-ins divide channels by 16
        alloc = [max(16 if si else 8, max(_scaled(c, self.percent) for c in opts))
                 for si, opts in enumerate(stage_opts)]
        first = base.stages[0].blocks[0]
        fixed = SlotOptions((first.type,), (first.kernel,), (first.expand,), (first.conv,), ("none",),
                            tuple(space.fusions))
        searched = SlotOptions(tuple(space.block_types), tuple(space.kernels), tuple(space.expansions),
                               tuple(space.convs), tuple(space.attentions), tuple(space.fusions))
        self.stages = nn.ModuleList()
        cin_alloc, cin_opts = max(16, self.stem_active), [base.stem]
        for si, st in enumerate(base.stages):
            opts = fixed if si == 0 else searched
            depth = len(st.blocks) if si == 0 else max(space.depths)
            slots = nn.ModuleList()
            for bi in range(depth):
                ci, co = (cin_alloc, cin_opts) if bi == 0 else (alloc[si], stage_opts[si])
                sg_hidden = max(sandglass_hidden(_scaled(a, self.percent), _scaled(b, self.percent), t)
                                for a in co for b in stage_opts[si] for t in opts.expansions)
                slots.append(SuperBlock(ci, alloc[si], strides[si + 1] if bi == 0 else 1, opts,
                                        ci * max(opts.expansions), max(16, sg_hidden)))
            self.stages.append(slots)
            cin_alloc, cin_opts = alloc[si], stage_opts[si]
        mid = _scaled(base.head_channels, self.percent) if base.head_channels else 0
        kw = {"genet": {"groups": space.genet_groups}}
        self.head = Choice.of(space.heads, lambda n: HEADS[n](alloc[-1], num_classes, mid, **kw.get(n, {})))
        self.depths = [len(s) for s in self.stages]
        self.state = link_state(self)
        self.set_active(space.decode({k: v[0] for k, v in space.choices().items()}))

    def set_active(self, arch: MobileArch) -> None:
        if len(arch.stages) != len(self.stages):
            raise ValueError(f"the supernet holds {len(self.stages)} stages, the arch has {len(arch.stages)}")
        pl = plan(arch)
        depths = [len(st.blocks) for st in arch.stages]
        if any(d > len(s) for d, s in zip(depths, self.stages)):
            raise ValueError(f"stage depths {depths} exceed the supernet's {[len(s) for s in self.stages]}")
        if [st.stride for st in arch.stages] != self.deployed_strides:
            raise ValueError(f"stage strides {[st.stride for st in arch.stages]} differ from the supernet's "
                             f"base {self.deployed_strides}")
        cin = min(_scaled(arch.stem, self.percent), self.stem[0].out_channels)
        chain: Dict[str, int] = {}
        for p in pl.blocks:
            slot: SuperBlock = self.stages[p.stage][p.index]
            if p.index == 0:
                chain = {}
            cout = min(_scaled(p.cout, self.percent), slot.cout)
            if p.form == "ir":
                hidden, att_alloc = min(int(round(cin * p.block.expand)), slot.ir_hidden), slot.ir_hidden
            else:
                hidden, att_alloc = min(sandglass_hidden(cin, cout, p.block.expand), slot.sg_hidden), slot.cout
            restart = None
            if p.state_key is not None:  # also restart where allocated widths differ
                if p.restart or (p.att_prev and chain.get(p.state_key) != att_alloc):
                    restart = p.state_key
                chain[p.state_key] = att_alloc
            slot.set(_Active(p, cin, cout, hidden, restart))
            cin = cout
        self.stem_active = min(_scaled(arch.stem, self.percent), self.stem[0].out_channels)
        self.depths = depths
        self.head.set(arch.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.state.clear()
        x = _mask(self.stem(x), self.stem_active)
        for stage, depth in zip(self.stages, self.depths):
            self.state.clear()
            for slot in stage[:depth]:
                x = slot(x)
        return self.head(x)
