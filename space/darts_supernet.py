"""The ``darts`` space's weight-sharing supernet (SPOS): every candidate on every edge of every
node and every combine, one path active; built on the plan of space/darts_plan.py."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn

from .choice import Choice
from .darts_plan import STEPS, Cell, DartsArch, Head, ReLUConvBN, _Layer, _preprocess0, _stem, plan
from .ops.base import link_state
from .registry import FUSIONS


def _supernet_edge(name: str, layer: _Layer, j: int) -> nn.Module:
    """A candidate on a supernet edge, followed by an affine-free BN.  DARTS' search network
    appends one after pooling ops; here every candidate gets one, because single-path training
    switches ops between steps, and ops whose outputs differ in scale and mean (a max-pool's are
    strongly positive, a conv's end in a zero-mean BN) otherwise make the shared cells and head
    diverge: with sep_conv_3x3 and max_pool_3x3 as candidates the loss rose to 5 and stayed at
    chance.  The deployed network has no such BN; recalibration re-estimates it per path."""
    op = layer.edge_op(name, j)
    return nn.Sequential(op, nn.BatchNorm2d(layer.C, affine=False))


class SuperCell(nn.Module):
    def __init__(self, layer: _Layer, ops: Sequence[str], fusions: Sequence[str]):
        super().__init__()
        self.reduction = layer.reduction
        self.preprocess0 = _preprocess0(layer)
        self.preprocess1 = ReLUConvBN(layer.C_p, layer.C, 1)
        self.edges = nn.ModuleList(
            nn.ModuleList(Choice.of(ops, lambda n, j=j: _supernet_edge(n, layer, j)) for j in range(i + 2))
            for i in range(STEPS))
        self.combines = nn.ModuleList(Choice.of(fusions, lambda n: FUSIONS[n](layer.C)) for _ in range(STEPS))
        self.active: List[Tuple[int, int]] = [(0, 1)] * STEPS

    def set_active(self, cell: Cell) -> None:
        if len(cell.edges) != 2 * STEPS or tuple(cell.concat) != tuple(range(2, 2 + STEPS)):
            raise ValueError("the supernet holds 4-node cells concatenating all nodes")
        active = []
        for i in range(STEPS):
            (o1, i1), (o2, i2) = cell.edges[2 * i], cell.edges[2 * i + 1]
            self.edges[i][i1].set(o1)
            self.edges[i][i2].set(o2)
            self.combines[i].set(cell.combine[i])
            active.append((i1, i2))
        self.active = active

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i, (a, b) in enumerate(self.active):
            states.append(self.combines[i](self.edges[i][a](states[a]), self.edges[i][b](states[b])))
        return torch.cat(states[2:], dim=1)


class DartsSupernet(nn.Module):
    def __init__(self, ops: Sequence[str], fusions: Sequence[str], C: int, layers: int,
                 num_classes: int, input_size: Sequence[int]):
        super().__init__()
        c_in, h, w = input_size
        C_stem, plan_, C_last = plan(C, layers, (h, w))
        self.stem = _stem(c_in, C_stem)
        self.cells = nn.ModuleList(SuperCell(l, ops, fusions) for l in plan_)
        self.head = Head(C_last, num_classes)
        self.state = link_state(self)

    def set_active(self, arch: DartsArch) -> None:
        for cell in self.cells:
            cell.set_active(arch.reduce if cell.reduction else arch.normal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.state.clear()
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            if cell.reduction:
                self.state.clear()
            s0, s1 = s1, cell(s0, s1)
        return self.head(s1)
