"""The ``darts`` architecture and its plan: the cell layout (``plan``), the edge rule
(``_Layer.edge_stride``) and from them the deployed network and its parts (costs, latency keys).
space/darts.py describes the space and the presets, space/darts_supernet.py the supernet."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar, List, Optional, Tuple

import torch
from torch import nn

from .arch import ArchBase, ArchError, added_field
from .base import Part, make_op, part_key
from .ops import deploy as deploy_ops
from .ops.base import WithState, link_state, stateful_key
from .ops.common import FactorizedReduce, ReLUConvBN, drop_path
from .registry import FUSIONS, OPS

STEPS = 4  # intermediate nodes per cell, as DARTS
STEM_MULTIPLIER = 3
STEMS = ("cifar", "imagenet")


@dataclass(frozen=True)
class Cell:
    """DARTS' genotype half: ``edges[2i], edges[2i+1]`` feed node i+2 as (op, input state)."""

    edges: Tuple[Tuple[str, int], ...]
    combine: Tuple[str, ...] = ("sum",) * STEPS
    concat: Tuple[int, ...] = tuple(range(2, 2 + STEPS))


@dataclass(frozen=True)
class DartsArch(ArchBase):
    space: ClassVar[str] = "darts"
    normal: Cell
    reduce: Cell
    channels: int = 36  # C of the first cells (DARTS CIFAR: 36)
    cells: int = 20  # DARTS CIFAR: 20
    input_size: Tuple[int, int, int] = (3, 32, 32)
    num_classes: int = 10
    stem: str = added_field("cifar")  # "cifar": 3x3 conv to 3C; "imagenet": NetworkImageNet's two stems (/8)

    def validate(self) -> None:
        for name, cell in (("normal", self.normal), ("reduce", self.reduce)):
            steps = len(cell.edges) // 2
            if len(cell.edges) != 2 * steps or steps < 1:
                raise ArchError(f"{name}: a cell needs two edges per node, got {len(cell.edges)} edges")
            if len(cell.combine) != steps:
                raise ArchError(f"{name}: {steps} nodes need {steps} combine ops, got {len(cell.combine)}")
            for k, (op, inp) in enumerate(cell.edges):
                if op not in OPS:
                    raise ArchError(f"{name}: {OPS.unknown_message(op)}")
                if not 0 <= inp < k // 2 + 2:
                    raise ArchError(f"{name}: edge {k} of node {k // 2} reads state {inp}, "
                                    f"which does not exist yet (0..{k // 2 + 1})")
            for c in cell.combine:
                if c not in FUSIONS:
                    raise ArchError(f"{name}: {FUSIONS.unknown_message(c)}")
            if not cell.concat or any(not 0 <= j < steps + 2 for j in cell.concat):
                raise ArchError(f"{name}: concat {cell.concat} names states outside 0..{steps + 1}")
        if self.stem not in STEMS:
            raise ArchError(f"stem must be one of {', '.join(STEMS)}; got {self.stem!r}")
        if self.channels < 2 or self.cells < 1 or self.num_classes < 1:
            raise ArchError("channels >= 2, cells >= 1 and num_classes >= 1 are required")
        if len(self.input_size) != 3 or min(self.input_size) < 1:
            raise ArchError(f"input_size must be (C, H, W), got {self.input_size}")


# -- the network, described once as a plan that both the builder and the parts follow -----

@dataclass(frozen=True)
class _Layer:
    index: int
    C_pp: int
    C_p: int
    C: int
    reduction: bool
    reduction_prev: bool
    hw_pp: Tuple[int, int]  # resolution of s0 (input 0)
    hw: Tuple[int, int]  # resolution of s1 (input 1), and of the cell's states 0/1
    hw_out: Tuple[int, int]

    # The one edge rule (DARTS' Cell._compile): an edge strides, in a reduction cell, only when it
    # reads a cell input (state 0 or 1); later states already have the output resolution.
    def edge_stride(self, j: int) -> int:
        return 2 if self.reduction and j < 2 else 1

    def edge_hw(self, j: int) -> Tuple[int, int]:
        return self.hw if j < 2 else self.hw_out

    def edge_op(self, name: str, j: int) -> nn.Module:
        return make_op(name, self.C, self.C, self.edge_stride(j), self.edge_hw(j))


def _half(hw: Tuple[int, int]) -> Tuple[int, int]:
    return ((hw[0] + 1) // 2, (hw[1] + 1) // 2)


def plan(C: int, layers: int, hw: Tuple[int, int], concat_normal: int = STEPS,
         concat_reduce: int = STEPS, stem: str = "cifar") -> Tuple[int, List[_Layer], int]:
    """(stem channels, per-cell layout, channels into the head), as DARTS' NetworkCIFAR, or with
    ``stem="imagenet"`` NetworkImageNet: stem0 (/4, C channels) feeds the first cell's input 0
    through a FactorizedReduce, stem1 (/8) its input 1."""
    if stem == "imagenet":
        C_stem, C_pp, C_p, C_curr = C, C, C, C
        hw_pp, hw_p = _half(_half(hw)), _half(_half(_half(hw)))
        reduction_prev = True
    else:
        C_stem = C_pp = C_p = STEM_MULTIPLIER * C
        C_curr = C
        hw_pp = hw_p = hw
        reduction_prev = False
    out: List[_Layer] = []
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            C_curr *= 2
        hw_out = _half(hw_p) if reduction else hw_p
        out.append(_Layer(i, C_pp, C_p, C_curr, reduction, reduction_prev, hw_pp, hw_p, hw_out))
        mult = concat_reduce if reduction else concat_normal
        C_pp, C_p = C_p, mult * C_curr
        hw_pp, hw_p = hw_p, hw_out
        reduction_prev = reduction
    return C_stem, out, C_p


def _stem(C_in: int, C_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(C_in, C_out, 3, padding=1, bias=False), nn.BatchNorm2d(C_out))


def _stem0(C_in: int, C: int) -> nn.Module:
    """NetworkImageNet's stem0: two 3x3 stride-2 convs (C/2, then C) with BN, ReLU between."""
    return nn.Sequential(nn.Conv2d(C_in, C // 2, 3, 2, 1, bias=False), nn.BatchNorm2d(C // 2), nn.ReLU(),
                         nn.Conv2d(C // 2, C, 3, 2, 1, bias=False), nn.BatchNorm2d(C))


def _stem1(C: int) -> nn.Module:
    """NetworkImageNet's stem1: ReLU, 3x3 stride-2 conv, BN."""
    return nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 3, 2, 1, bias=False), nn.BatchNorm2d(C))


def _preprocess0(layer: _Layer) -> nn.Module:
    return FactorizedReduce(layer.C_pp, layer.C) if layer.reduction_prev else ReLUConvBN(layer.C_pp, layer.C, 1)


class Head(nn.Module):
    """Global average pooling and the linear classifier."""

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.global_pooling(x), 1))


class DartsCell(nn.Module):
    def __init__(self, cell: Cell, layer: _Layer):
        super().__init__()
        self.preprocess0 = _preprocess0(layer)
        self.preprocess1 = ReLUConvBN(layer.C_p, layer.C, 1)
        self.indices = [i for _, i in cell.edges]
        self.concat = list(cell.concat)
        self.ops = nn.ModuleList(layer.edge_op(name, i) for name, i in cell.edges)
        self.combines = nn.ModuleList(FUSIONS[c](layer.C) for c in cell.combine)
        self._skip = [isinstance(op, nn.Identity) for op in self.ops]

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i, combine in enumerate(self.combines):
            hs = []
            for k in (2 * i, 2 * i + 1):
                h = self.ops[k](states[self.indices[k]])
                if self.training and drop_prob > 0 and not self._skip[k]:
                    h = drop_path(h, drop_prob)
                hs.append(h)
            states.append(combine(hs[0], hs[1]))
        return torch.cat([states[j] for j in self.concat], dim=1)


class DartsNetwork(nn.Module):
    """DARTS' NetworkCIFAR (no auxiliary head: DARTS' published counts exclude it)."""

    def __init__(self, arch: DartsArch):
        super().__init__()
        c_in, h, w = arch.input_size
        C_stem, layers, C_last = plan(arch.channels, arch.cells, (h, w),
                                      len(arch.normal.concat), len(arch.reduce.concat), arch.stem)
        self.drop_path_prob = 0.0  # set_drop_path: DARTS uses 0.2, ramped over training
        if arch.stem == "imagenet":
            self.stem0, self.stem1 = _stem0(c_in, C_stem), _stem1(C_stem)
        else:
            self.stem = _stem(c_in, C_stem)
        self.cells = nn.ModuleList(DartsCell(arch.reduce if l.reduction else arch.normal, l) for l in layers)
        self.reductions = [l.reduction for l in layers]
        self.head = Head(C_last, arch.num_classes)
        self.state = link_state(self)

    def set_drop_path(self, rate: float, progress: float) -> None:
        """DARTS' schedule: every edge but skips drops with ``rate`` x the training progress."""
        self.drop_path_prob = rate * progress

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.state.clear()
        if hasattr(self, "stem0"):
            s0 = self.stem0(x)
            s1 = self.stem1(s0)
        else:
            s0 = s1 = self.stem(x)
        for cell, reduction in zip(self.cells, self.reductions):
            if reduction:
                self.state.clear()  # a new stage starts a new attention chain
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
        return self.head(s1)


# -- parts: the same plan, one Part per op instance ------------------------------------------

def _deployed(make):
    def f() -> nn.Module:
        return deploy_ops(make()).eval()
    return f


# Parts are frozen and depend only on their arguments: memoised, since a search enumerates the
# parts of every candidate (for FLOPs and latency) and formatting keys dominated that.
_memo = functools.lru_cache(maxsize=65536)


def op_part(name: str, C_in: int, C_out: int, stride: int, hw: Tuple[int, int],
            chain: Optional[set] = None) -> Part:
    """An edge op; ``chain`` (the network-state names already written in this stage) decides
    whether a stateful op runs as the start of its chain or continues one."""
    key = stateful_key(OPS.meta(name))
    if key is None:
        return _op_part(name, C_in, C_out, stride, tuple(hw), None)
    prev = chain is not None and key in chain
    if chain is not None:
        chain.add(key)
    return _op_part(name, C_in, C_out, stride, tuple(hw), prev)


@_memo
def _op_part(name: str, C_in: int, C_out: int, stride: int, hw: Tuple[int, int], prev: Optional[bool]) -> Part:
    fields = dict(name=name, cin=C_in, cout=C_out, s=stride, hw=f"{hw[0]}x{hw[1]}")
    if prev is None:
        return Part(part_key("op", **fields), name, ((1, C_in, *hw),),
                    _deployed(lambda: make_op(name, C_in, C_out, stride, hw)))
    return Part(part_key("op", **fields, prev=int(prev)), name, ((1, C_in, *hw),),
                _deployed(lambda: WithState(make_op(name, C_in, C_out, stride, hw), prev)))


def edge_part(name: str, layer: _Layer, j: int, chain: Optional[set] = None) -> Part:
    """The op of an edge reading state ``j`` in ``layer`` (see ``_Layer.edge_stride``)."""
    return op_part(name, layer.C, layer.C, layer.edge_stride(j), layer.edge_hw(j), chain)


@_memo
def fusion_part(name: str, C: int, hw: Tuple[int, int]) -> Part:
    shape = (1, C, *hw)
    return Part(part_key("fusion", name=name, c=C, hw=f"{hw[0]}x{hw[1]}"), f"fusion:{name}",
                (shape, shape), _deployed(lambda: FUSIONS[name](C)))


def _stem_parts(stem: str, c_in: int, C: int, hw) -> List[Part]:
    if stem == "cifar":
        return [Part(part_key("darts_stem", cin=c_in, cout=C, hw=f"{hw[0]}x{hw[1]}"), "stem",
                     ((1, c_in, *hw),), _deployed(lambda: _stem(c_in, C)))]
    h4 = _half(_half(hw))
    return [Part(part_key("darts_stem0", cin=c_in, cout=C, hw=f"{hw[0]}x{hw[1]}"), "stem",
                 ((1, c_in, *hw),), _deployed(lambda: _stem0(c_in, C))),
            Part(part_key("darts_stem1", c=C, hw=f"{h4[0]}x{h4[1]}"), "stem",
                 ((1, C, *h4),), _deployed(lambda: _stem1(C)))]


@_memo
def _pre_parts(layer: _Layer) -> Tuple[Part, ...]:
    kind0 = "factorized_reduce" if layer.reduction_prev else "relu_conv_bn"
    hw_pp, hw = layer.hw_pp, layer.hw
    return (
        Part(part_key(kind0, cin=layer.C_pp, cout=layer.C, hw=f"{hw_pp[0]}x{hw_pp[1]}"), kind0,
             ((1, layer.C_pp, *hw_pp),), _deployed(lambda: _preprocess0(layer))),
        Part(part_key("relu_conv_bn", cin=layer.C_p, cout=layer.C, hw=f"{hw[0]}x{hw[1]}"), "relu_conv_bn",
             ((1, layer.C_p, *hw),), _deployed(lambda: ReLUConvBN(layer.C_p, layer.C, 1))),
    )


def _head_part(C: int, classes: int, hw) -> Part:
    return Part(part_key("head", c=C, classes=classes, hw=f"{hw[0]}x{hw[1]}"), "head",
                ((1, C, *hw),), _deployed(lambda: Head(C, classes)))


def parts(arch: DartsArch) -> List[Part]:
    """The deployed network as Parts, in execution order (costs add up exactly)."""
    c_in, h, w = arch.input_size
    C_stem, layers, C_last = plan(arch.channels, arch.cells, (h, w),
                                  len(arch.normal.concat), len(arch.reduce.concat), arch.stem)
    out = _stem_parts(arch.stem, c_in, C_stem, (h, w))
    chain: set = set()
    for layer in layers:
        cell = arch.reduce if layer.reduction else arch.normal
        if layer.reduction:
            chain = set()
        out += _pre_parts(layer)
        for k, (name, i) in enumerate(cell.edges):
            out.append(edge_part(name, layer, i, chain))
            if k % 2:
                out.append(fusion_part(cell.combine[k // 2], layer.C, tuple(layer.hw_out)))
    out.append(_head_part(C_last, arch.num_classes, layers[-1].hw_out))
    return out


def build(arch: DartsArch, deploy: bool = True) -> nn.Module:
    """The stand-alone network; ``deploy`` folds train-time ops (what the budget counts)."""
    arch.validate()
    net = DartsNetwork(arch)
    return deploy_ops(net) if deploy else net
