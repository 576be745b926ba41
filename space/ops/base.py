"""Lifecycle hooks some ops need beyond ``forward``; the trainer and builder call these.

* ``deploy``: an op with a train-time form (DO-Conv, DEConv) defines ``deploy(self) -> nn.Module``
  returning an equivalent inference module; ``deploy(model)`` swaps every such op in place.
* auxiliary losses: an op with a side loss (DGC's lasso) stores it in ``self.aux_loss`` during
  a training forward; ``aux_loss(model)`` sums those of the ops that ran and clears them.
* training progress: ops with schedules (DGC's pruning ramp) define ``set_progress(p)``, p in
  [0, 1]; ``set_progress(model, p)`` reaches all of them.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def deploy(model: nn.Module) -> nn.Module:
    """Fold every re-parameterisable op into its inference form; returns the (same) model."""
    if hasattr(model, "deploy") and callable(model.deploy) and not isinstance(model, type):
        return model.deploy()
    for name, child in list(model.named_children()):
        new = deploy(child)
        if new is not child:
            setattr(model, name, new)
    return model


def aux_loss(model: nn.Module) -> Optional[torch.Tensor]:
    """Sum of side losses left by ops during the last forward (None if no op left one)."""
    total = None
    for m in model.modules():
        loss = getattr(m, "aux_loss", None)
        if isinstance(loss, torch.Tensor):
            total = loss if total is None else total + loss
            m.aux_loss = None
    return total


def set_progress(model: nn.Module, progress: float) -> None:
    p = min(max(float(progress), 0.0), 1.0)
    for m in model.modules():  # ops define set_progress; containers must not (recursion)
        fn = getattr(m, "set_progress", None)
        if callable(fn):
            fn(p)
