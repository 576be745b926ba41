"""The ``darts`` space's weight-sharing supernet (SPOS): the generic supernet of space/plan.py over
the DARTS bank (every candidate on every edge of every node and every combine), one path active."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from torch import nn

from .darts_plan import DartsArch, bank, plan
from .plan import Step, Supernet


def _make(step: Step) -> nn.Module:
    """A bank module; a candidate on an edge is followed by an affine-free BN.  DARTS' search
    network appends one after pooling ops; here every candidate gets one, because single-path
    training switches ops between steps, and ops whose outputs differ in scale and mean (a
    max-pool's are strongly positive, a conv's end in a zero-mean BN) otherwise make the shared
    cells and head diverge: with sep_conv_3x3 and max_pool_3x3 as candidates the loss rose to 5 and
    stayed at chance.  The deployed network has no such BN; recalibration re-estimates it per path."""
    if step.key_kind != "op":
        return step.make()
    return nn.Sequential(step.make(), nn.BatchNorm2d(dict(step.fields)["cout"], affine=False))


def supernet(ops: Sequence[str], fusions: Sequence[str], C: int, cells: int, num_classes: int,
             input_size: Sequence[int]) -> Supernet:
    """DARTS' search network (the CIFAR stem at the data's resolution, ``cells`` cells of ``C``);
    ``set_active(arch)`` runs ``arch``'s cells at that size."""
    size = dict(channels=C, cells=cells, input_size=tuple(input_size), num_classes=num_classes, stem="cifar")

    def at_size(arch: DartsArch):
        return plan(replace(arch, **size))

    return Supernet(bank(ops, fusions, C, cells, input_size, num_classes), at_size, _make)
