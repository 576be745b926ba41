"""The DARTS cell search space (Liu et al., arXiv 1806.09055; quark0/darts ``cnn/model.py``).

An architecture is two cells (normal, reduction); each of the 4 nodes takes two distinct
earlier states through one op each and merges them with a combine op (``sum`` in DARTS, any
fusion op here).  The deployed network is DARTS' CIFAR network: a 3x3 stem to 3C channels,
``cells`` cells with reductions at cells//3 and 2*cells//3, global pooling and a linear head.
The supernet is the same network, smaller (DARTS searches with 8 cells and 16 channels), with
every candidate on every edge and combine; one path is active at a time (SPOS).

Ops that thread a state along the network (DCANet's ``dca_se``) chain along a *stage*: the
state is cleared at the start of every forward and at every reduction cell, and within a stage
it flows in execution order (cells in order; inside a cell node by node, edge 0 then edge 1).
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .arch import ArchBase, ArchError, added_field
from .base import Part, SearchSpace, make_op, part_key
from .choice import Choice
from .ops import deploy as deploy_ops
from .ops.base import WithState, link_state, stateful_key
from .ops.common import FactorizedReduce, ReLUConvBN, drop_path
from .registry import FUSIONS, OPS, SPACES

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


def _genotype(pairs: Sequence[Tuple[str, int]]) -> Cell:
    return Cell(edges=tuple((op, i) for op, i in pairs))


DARTS_V1 = DartsArch(
    normal=_genotype([("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
                      ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)]),
    reduce=_genotype([("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
                      ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)]))
DARTS_V2 = DartsArch(
    normal=_genotype([("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                      ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)]),
    reduce=_genotype([("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
                      ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)]))


# NetworkImageNet as DARTS trains it on ImageNet (train_imagenet.py: C=48, 14 cells, 224x224)
DARTS_V1_IMAGENET = replace(DARTS_V1, channels=48, cells=14, input_size=(3, 224, 224), num_classes=1000,
                            stem="imagenet")
DARTS_V2_IMAGENET = replace(DARTS_V2, channels=48, cells=14, input_size=(3, 224, 224), num_classes=1000,
                            stem="imagenet")  # paper: 4.7M params, 574M multiply-adds


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
        self.ops = nn.ModuleList(
            make_op(name, layer.C, layer.C, 2 if layer.reduction and i < 2 else 1,
                    layer.hw if i < 2 else layer.hw_out) for name, i in cell.edges)
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
            stride = 2 if layer.reduction and i < 2 else 1
            out.append(op_part(name, layer.C, layer.C, stride, layer.hw if i < 2 else layer.hw_out, chain))
            if k % 2:
                out.append(fusion_part(cell.combine[k // 2], layer.C, tuple(layer.hw_out)))
    out.append(_head_part(C_last, arch.num_classes, layers[-1].hw_out))
    return out


def build(arch: DartsArch, deploy: bool = True) -> nn.Module:
    """The stand-alone network; ``deploy`` folds train-time ops (what the budget counts)."""
    arch.validate()
    net = DartsNetwork(arch)
    return deploy_ops(net) if deploy else net


# -- supernet ----------------------------------------------------------------------------

def _supernet_edge(name: str, layer: _Layer, j: int) -> nn.Module:
    """A candidate on a supernet edge, followed by an affine-free BN.  DARTS' search network
    appends one after pooling ops; here every candidate gets one, because single-path training
    switches ops between steps, and ops whose outputs differ in scale and mean (a max-pool's are
    strongly positive, a conv's end in a zero-mean BN) otherwise make the shared cells and head
    diverge: with sep_conv_3x3 and max_pool_3x3 as candidates the loss rose to 5 and stayed at
    chance.  The deployed network has no such BN; recalibration re-estimates it per path."""
    op = make_op(name, layer.C, layer.C, 2 if layer.reduction and j < 2 else 1, layer.hw if j < 2 else layer.hw_out)
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


# -- the space ---------------------------------------------------------------------------

# The default candidates, an explicit list as DARTS' PRIMITIVES is: registering an op never
# changes a default search, the trials a seed gives or which shipped latency table matches.
# (``none`` is not among them: DARTS never keeps it in a derived cell.)
DEFAULT_OPS = ("cfnet_focal", "cga", "cga_3x3", "skip_connect", "max_pool_3x3", "avg_pool_3x3",
               "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "se", "se_3x3", "dca_se",
               "dca_se_3x3", "deconv_3x3", "dgc_3x3", "do_conv_3x3", "sandglass_3x3", "sandglass_5x5", "lka",
               "ms_cam", "ms_cam_3x3", "psconv_3x3", "pyconv_3x3", "ulsam", "ulsam_3x3", "weightnet_3x3")
DEFAULT_FUSIONS = ("cga_fusion", "sum", "aff", "iaff")


def _pairs(node: int) -> List[str]:
    return [f"{a}-{b}" for a, b in itertools.combinations(range(node + 2), 2)]


@SPACES.register("darts")
class DartsSpace(SearchSpace):
    """DARTS' CIFAR network (20 cells) with a searched normal and reduction cell.

    The deployed width defaults to 16 channels, not DARTS' 36: with every published module as a
    candidate, random cells at 36 channels count 0.76-2.7G multiply-adds (DARTS-V2 itself 0.54G),
    so the toolkit's headline budget of 300M would reject nearly all of them; at 16 channels
    about 40% of random cells fit (DARTS-V2 counts 120M).  ``channels=36`` gives DARTS' size.
    ``stem="imagenet"`` (with ``channels=48, cells=14, input_size=3,224,224``) is DARTS'
    NetworkImageNet; the supernet keeps the CIFAR stem at the data's resolution.
    """
    name = "darts"
    arch_cls = DartsArch
    classes_from_data = True  # deployed with the data's class count; input size stays CIFAR's unless set
    presets = {"darts_v1": DARTS_V1, "darts_v2": DARTS_V2, "darts_v1_imagenet": DARTS_V1_IMAGENET,
               "darts_v2_imagenet": DARTS_V2_IMAGENET}
    build = staticmethod(build)
    parts = staticmethod(parts)

    def __init__(self, ops: Optional[Sequence[str]] = None, fusions: Optional[Sequence[str]] = None,
                 channels: int = 16, cells: int = 20, input_size: Sequence[int] = (3, 32, 32),
                 num_classes: int = 10, supernet_channels: int = 16, supernet_cells: int = 8,
                 stem: str = "cifar"):
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {', '.join(STEMS)}; got {stem!r}")
        self.stem = stem
        self.ops = OPS.check(ops if ops is not None else DEFAULT_OPS)
        self.fusions = FUSIONS.check(fusions if fusions is not None else DEFAULT_FUSIONS)
        if not self.ops or not self.fusions:
            raise ValueError("the space needs at least one op and one fusion")
        self.channels, self.cells = int(channels), int(cells)
        self.input_size = tuple(int(v) for v in input_size)
        self.num_classes = int(num_classes)
        self.supernet_channels, self.supernet_cells = int(supernet_channels), int(supernet_cells)

    def settings(self) -> Dict[str, Any]:
        return {"space": self.name, "ops": list(self.ops), "fusions": list(self.fusions),
                "channels": self.channels, "cells": self.cells, "input_size": list(self.input_size),
                "num_classes": self.num_classes, "supernet_channels": self.supernet_channels,
                "supernet_cells": self.supernet_cells,
                # a setting added later: written only when set, so that tables built before it match
                **({"stem": self.stem} if self.stem != "cifar" else {})}

    def choices(self) -> Dict[str, List[Any]]:
        out: Dict[str, List[Any]] = {}
        for cell in ("normal", "reduce"):
            for i in range(STEPS):
                out[f"{cell}_n{i}_inputs"] = _pairs(i)
                out[f"{cell}_n{i}_op0"] = list(self.ops)
                out[f"{cell}_n{i}_op1"] = list(self.ops)
                out[f"{cell}_n{i}_combine"] = list(self.fusions)
        return out

    def decode(self, params: Dict[str, Any]) -> DartsArch:
        cells = {}
        for cell in ("normal", "reduce"):
            edges, combine = [], []
            for i in range(STEPS):
                a, b = (int(v) for v in str(params[f"{cell}_n{i}_inputs"]).split("-"))
                edges += [(params[f"{cell}_n{i}_op0"], a), (params[f"{cell}_n{i}_op1"], b)]
                combine.append(params[f"{cell}_n{i}_combine"])
            cells[cell] = Cell(edges=tuple(edges), combine=tuple(combine))
        arch = DartsArch(normal=cells["normal"], reduce=cells["reduce"], channels=self.channels,
                         cells=self.cells, input_size=self.input_size, num_classes=self.num_classes, stem=self.stem)
        arch.validate()
        return arch

    def encode(self, arch: DartsArch) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for cell_name in ("normal", "reduce"):
            cell: Cell = getattr(arch, cell_name)
            for i in range(STEPS):
                (o1, i1), (o2, i2) = sorted([cell.edges[2 * i], cell.edges[2 * i + 1]], key=lambda e: e[1])
                if i1 == i2:
                    raise ValueError(f"{cell_name} node {i} reads state {i1} twice; the space needs distinct inputs")
                out[f"{cell_name}_n{i}_inputs"] = f"{i1}-{i2}"
                out[f"{cell_name}_n{i}_op0"], out[f"{cell_name}_n{i}_op1"] = o1, o2
                out[f"{cell_name}_n{i}_combine"] = cell.combine[i]
        return out

    def supernet(self, num_classes: int, input_size: Sequence[int]) -> DartsSupernet:
        return DartsSupernet(self.ops, self.fusions, self.supernet_channels, self.supernet_cells,
                             num_classes, input_size)

    def all_parts(self) -> Iterator[Part]:
        c_in, h, w = self.input_size
        C_stem, layers, C_last = plan(self.channels, self.cells, (h, w), stem=self.stem)
        seen = set()

        def new(p: Part) -> bool:
            if p.key in seen:
                return False
            seen.add(p.key)
            return True

        candidates = [*_stem_parts(self.stem, c_in, C_stem, (h, w)),
                      _head_part(C_last, self.num_classes, layers[-1].hw_out)]
        for layer in layers:
            candidates += _pre_parts(layer)
            for name in self.ops:
                for prev in ({False, True} if stateful_key(OPS.meta(name)) else {False}):
                    chain = {stateful_key(OPS.meta(name))} if prev else set()
                    if layer.reduction:
                        candidates.append(op_part(name, layer.C, layer.C, 2, layer.hw, set(chain)))
                    candidates.append(op_part(name, layer.C, layer.C, 1, layer.hw_out, set(chain)))
            candidates += [fusion_part(f, layer.C, tuple(layer.hw_out)) for f in self.fusions]
        yield from (p for p in candidates if new(p))
