"""The ``darts`` architecture and its plan: the cell layout (``plan``), the edge rule
(``_Layer.edge_stride``) and from them the deployed network and its parts (costs, latency keys).
space/darts.py describes the space and the presets, space/darts_supernet.py the supernet."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar, Iterator, List, Sequence, Tuple

import torch
from torch import nn

from .arch import ArchBase, ArchError, added_field
from .base import Part, make_op
from .ops.base import stateful_key
from .ops.common import FactorizedReduce, ReLUConvBN
from .plan import Network, Ref, Step
from .plan import build as finish
from .plan import parts as plan_parts
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


def layout(C: int, layers: int, hw: Tuple[int, int], concat_normal: int = STEPS,
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


# -- the plan: the network as steps (space/plan.py runs and costs them) ------------------------
# Steps are memoised: they depend only on their arguments, and a search plans every candidate.
_memo = functools.lru_cache(maxsize=65536)


def _hw(hw: Tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]}"


@_memo
def stem_steps(stem: str, c_in: int, C: int, hw: Tuple[int, int]) -> Tuple[Step, ...]:
    if stem == "cifar":
        return (Step("stem", (("cin", c_in), ("cout", C), ("hw", _hw(hw))), ((1, c_in, *hw),),
                     lambda: _stem(c_in, C), name="stem", key_kind="darts_stem"),)
    h4 = _half(_half(hw))
    return (Step("stem", (("cin", c_in), ("cout", C), ("hw", _hw(hw))), ((1, c_in, *hw),),
                 lambda: _stem0(c_in, C), name="stem0", key_kind="darts_stem0"),
            Step("stem", (("c", C), ("hw", _hw(h4))), ((1, C, *h4),), lambda: _stem1(C), name="stem1",
                 key_kind="darts_stem1"))


@_memo
def pre_steps(layer: _Layer, s0: Ref, s1: Ref) -> Tuple[Step, Step]:
    """A cell's two input convs, reading values ``s0`` and ``s1``; a reduction cell starts a stage."""
    kind0 = "factorized_reduce" if layer.reduction_prev else "relu_conv_bn"
    cell = f"cells.{layer.index}"
    return (Step(kind0, (("cin", layer.C_pp), ("cout", layer.C), ("hw", _hw(layer.hw_pp))),
                 ((1, layer.C_pp, *layer.hw_pp),), lambda: _preprocess0(layer), name=f"{cell}.preprocess0",
                 reads=(s0,), stage_start=layer.reduction),
            Step("relu_conv_bn", (("cin", layer.C_p), ("cout", layer.C), ("hw", _hw(layer.hw))),
                 ((1, layer.C_p, *layer.hw),), lambda: ReLUConvBN(layer.C_p, layer.C, 1),
                 name=f"{cell}.preprocess1", reads=(s1,)))


@_memo
def edge_step(name: str, layer: _Layer, node: int, j: int, k: int, read: int) -> Step:
    """The op on the edge from state ``j`` into ``node`` (edge ``k`` of the cell), reading value
    ``read``; it strides where ``_Layer.edge_stride`` says."""
    stride, hw = layer.edge_stride(j), layer.edge_hw(j)
    fields = (("name", name), ("cin", layer.C), ("cout", layer.C), ("s", stride), ("hw", _hw(hw)))
    return Step(name, fields, ((1, layer.C, *hw),), lambda: layer.edge_op(name, j),
                name=f"cells.{layer.index}.ops.{k}", reads=(read,), slot=f"cells.{layer.index}.edges.{node}.{j}",
                option=name, state=stateful_key(OPS.meta(name)), drop=True, key_kind="op")


@_memo
def combine_step(name: str, layer: _Layer, node: int, a: int, b: int) -> Step:
    shape = (1, layer.C, *layer.hw_out)
    return Step(f"fusion:{name}", (("name", name), ("c", layer.C), ("hw", _hw(layer.hw_out))), (shape, shape),
                lambda: FUSIONS[name](layer.C), name=f"cells.{layer.index}.combines.{node}", reads=(a, b),
                slot=f"cells.{layer.index}.combines.{node}", option=name)


@_memo
def head_step(C: int, classes: int, hw: Tuple[int, int], read: Ref) -> Step:
    return Step("head", (("c", C), ("classes", classes), ("hw", _hw(hw))), ((1, C, *hw),),
                lambda: Head(C, classes), name="head", reads=(read,))


def cell_steps(cell: Cell, layer: _Layer, s0: Ref, s1: Ref, first: int) -> Tuple[List[Step], Ref]:
    """One cell whose first step is step ``first``: the input convs, the edges (built in edge
    order, as DARTS' Cell), then the combines; execution follows the reads.  The cell's output is
    the concatenation of the ``concat`` states (free glue: the next reads name its values)."""
    out = list(pre_steps(layer, s0, s1))
    steps = len(cell.combine)
    # value of state j: 0/1 the input convs, node i the i-th combine
    state = [first + 1, first + 2] + [first + 3 + 2 * steps + i for i in range(steps)]
    out += [edge_step(name, layer, k // 2, j, k, state[j]) for k, (name, j) in enumerate(cell.edges)]
    edge_value = first + 3
    out += [combine_step(c, layer, i, edge_value + 2 * i, edge_value + 2 * i + 1) for i, c in enumerate(cell.combine)]
    return out, tuple(state[j] for j in cell.concat)


def plan(arch: DartsArch) -> List[Step]:
    """The network as steps: stem(s), cells, head (DARTS' NetworkCIFAR or NetworkImageNet; no
    auxiliary head: DARTS' published counts exclude it)."""
    c_in, h, w = arch.input_size
    C_stem, layers, C_last = layout(arch.channels, arch.cells, (h, w),
                                    len(arch.normal.concat), len(arch.reduce.concat), arch.stem)
    steps: List[Step] = list(stem_steps(arch.stem, c_in, C_stem, (h, w)))
    s0, s1 = 1, len(steps)  # values: the CIFAR stem feeds both inputs, ImageNet's stem0 and stem1
    for layer in layers:
        cell, out = cell_steps(arch.reduce if layer.reduction else arch.normal, layer, s0, s1, len(steps))
        steps += cell
        s0, s1 = s1, out
    steps.append(head_step(C_last, arch.num_classes, layers[-1].hw_out, s1))
    return steps


def bank(ops: Sequence[str], fusions: Sequence[str], C: int, cells: int, input_size: Sequence[int],
         num_classes: int, stem: str = "cifar") -> Iterator[Step]:
    """Every step the choices can produce in a network of ``cells`` cells of ``C`` channels (each
    node's op from every earlier state, every combine; cells concatenating all nodes), in the
    order a supernet builds them; its distinct parts are what a latency table must hold.  Only
    their bank paths, keys and constructors count (reads and edge indices are placeholders): a
    supernet runs each architecture's own plan on them."""
    c_in, h, w = input_size
    C_stem, layers, C_last = layout(C, cells, (h, w), stem=stem)
    yield from stem_steps(stem, c_in, C_stem, (h, w))
    for layer in layers:
        yield from pre_steps(layer, 0, 0)
        for node in range(STEPS):
            for j in range(node + 2):
                yield from (edge_step(name, layer, node, j, 0, 0) for name in ops)
        for node in range(STEPS):
            yield from (combine_step(f, layer, node, 0, 0) for f in fusions)
    yield head_step(C_last, num_classes, layers[-1].hw_out, 0)


def parts(arch: DartsArch) -> List[Part]:
    """The deployed network as Parts, in execution order (costs add up exactly)."""
    return plan_parts(plan(arch))


def build(arch: DartsArch, deploy: bool = True) -> nn.Module:
    """The stand-alone network; ``deploy`` folds train-time ops (what the budget counts)."""
    arch.validate()
    return finish(Network(plan(arch)), deploy)
