"""The DARTS cell search space (Liu et al., arXiv 1806.09055; quark0/darts ``cnn/model.py``).

An architecture is two cells (normal, reduction); each of the 4 nodes takes two distinct
earlier states through one op each and merges them with a combine op (``sum`` in DARTS, any
fusion op here).  The deployed network is DARTS' CIFAR network: a 3x3 stem to 3C channels,
``cells`` cells with reductions at cells//3 and 2*cells//3, global pooling and a linear head.
The supernet is the same network, smaller (DARTS searches with 8 cells and 16 channels), with
every candidate on every edge and combine; one path is active at a time (SPOS).

Files: the architecture, the cell layout and edge rule, the network and its parts are in
space/darts_plan.py; this file holds the presets and the space; the supernet is
space/darts_supernet.py.

Ops that thread a state along the network (DCANet's ``dca_se``) chain along a *stage*: the
state is cleared at the start of every forward and at every reduction cell, and within a stage
it flows in execution order (cells in order; inside a cell node by node, edge 0 then edge 1).
"""
from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from .base import Part, SearchSpace, whole, wholes
from .darts_plan import STEMS, STEPS, Cell, DartsArch, bank, build, parts
from .darts_supernet import supernet
from .plan import Supernet, bank_parts
from .registry import FUSIONS, OPS, SPACES


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


# -- the space ---------------------------------------------------------------------------

# The default candidates, an explicit list as DARTS' PRIMITIVES is: registering an op never
# changes a default search, the trials a seed gives or which shipped latency table matches.
# (``none`` is not among them: DARTS never keeps it in a derived cell.)
DEFAULT_OPS = ("cfnet_focal", "cga", "cga_3x3", "skip_connect", "max_pool_3x3", "avg_pool_3x3",
               "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "se", "se_3x3", "dca_se",
               "dca_se_3x3", "deconv_3x3", "dgc_3x3", "do_conv_3x3", "sandglass_3x3", "sandglass_5x5", "lka",
               "ms_cam", "ms_cam_3x3", "psconv_3x3", "pyconv_3x3", "ulsam", "ulsam_3x3", "weightnet_3x3")
DEFAULT_FUSIONS = ("cga_fusion", "sum", "aff", "iaff")


# Plain counterparts of the edge ops, for module verdicts: a conv becomes DARTS' separable conv of
# its kernel, an attention op its own conv without the attention (``se_3x3`` -> ``conv_3x3``),
# VAN's attention (on the identity path) ``skip_connect``; a fusion becomes ``sum``.
PLAIN_OPS = ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3", "sep_conv_5x5",
             "dil_conv_3x3", "dil_conv_5x5", "conv_1x1", "conv_3x3")
PLAIN_OVERRIDES = {"lka": "skip_connect"}


def plain_op(name: str) -> Optional[str]:
    """The plain counterpart of edge op ``name`` (None: it is plain itself)."""
    if name in PLAIN_OPS:
        return None
    if name in PLAIN_OVERRIDES:
        return PLAIN_OVERRIDES[name]
    k = 5 if name.endswith("_5x5") else 3
    if "attention" in OPS.tags(name):
        return f"conv_{k}x{k}" if name.endswith(("_3x3", "_5x5")) else "conv_1x1"
    return f"sep_conv_{k}x{k}"


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
        if set(self.ops) <= {"none"}:
            raise ValueError("the space needs an op other than none (every cell would output zeros)")
        self.channels, self.cells = whole("channels", channels, 2), whole("cells", cells)
        self.input_size = tuple(wholes("input_size", input_size))
        self.num_classes = whole("num_classes", num_classes, 2)
        self.supernet_channels = whole("supernet_channels", supernet_channels, 2)
        self.supernet_cells = whole("supernet_cells", supernet_cells)

    @property
    def min_side(self) -> int:  # type: ignore[override]
        return 32 if self.stem == "imagenet" else 8  # stem stride 8 (ImageNet) or 1, then two reductions

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

    def modules(self, arch: DartsArch) -> Dict[Tuple[str, str], int]:
        return self.count_uses([u for cell in (arch.normal, arch.reduce)
                                for u in [("op", n) for n, _ in cell.edges] + [("fusion", c) for c in cell.combine]])

    BASELINES = ("darts_v2", "darts_v1")

    def scaled(self, arch: DartsArch, factor: float) -> DartsArch:
        """DARTS' own knobs, channels and cells (its CIFAR network is 20 cells of 36, its ImageNet one
        14 of 48), both times ``factor ** (1/3)``: multiply-adds grow with cells x channels^2, so
        ``factor`` is about the fraction of compute kept.  Channels even and >= 4, cells >= 3 (one
        normal and the two reductions); the space's input size and classes."""
        g = factor ** (1 / 3)
        return replace(arch, channels=max(4, 2 * round(arch.channels * g / 2)), cells=max(3, round(arch.cells * g)),
                       input_size=self.input_size, num_classes=self.num_classes)

    def plain(self, role: str, name: str) -> str:
        return (plain_op(name) or name) if role == "op" else "sum"

    def without(self, arch: DartsArch, role: str, name: str) -> DartsArch:
        def cell(c: Cell) -> Cell:
            if role == "op":
                return replace(c, edges=tuple((plain_op(n) if n == name else n, i) for n, i in c.edges))
            return replace(c, combine=tuple("sum" if n == name else n for n in c.combine))
        return replace(arch, normal=cell(arch.normal), reduce=cell(arch.reduce))

    def supernet(self, num_classes: int, input_size: Sequence[int]) -> Supernet:
        return supernet(self.ops, self.fusions, self.supernet_channels, self.supernet_cells, num_classes, input_size)

    def all_parts(self) -> Iterator[Part]:
        return bank_parts(bank(self.ops, self.fusions, self.channels, self.cells, self.input_size,
                               self.num_classes, self.stem))
