"""Lifecycle hooks some ops need beyond ``forward``; the trainer and builder call these.

* ``deploy``: an op with a train-time form (DO-Conv, DEConv) defines ``deploy(self) -> nn.Module``
  returning an equivalent inference module; ``deploy(model)`` swaps every such op in place.
* auxiliary losses: an op with a side loss (DGC's lasso) stores it in ``self.aux_loss`` during
  a training forward; ``aux_loss(model)`` sums those of the ops that ran and clears them.
* network state: an op that threads a value along the network (DCANet's attention state)
  defines ``network_state_key`` (a class attribute naming the state), ``use_network_state(state)``
  and ``example_state(x)`` (a zero state of the right shape for input x, used to cost it in
  isolation).  ``link_state(net)`` gives all such ops one shared ``NetworkState``; the network
  clears it at each forward and at each stage start, so a chain runs along one stage.
* task loss: a module with its own training objective (GENet's per-member losses) defines
  ``task_loss(target)``; ``task_loss(model, logits, target)`` uses it instead of the
  cross-entropy of the network's output.
* training progress: ops with schedules (DGC's pruning ramp) define ``set_progress(p)``, p in
  [0, 1]; ``set_progress(model, p)`` reaches all of them.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
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


def task_loss(model: nn.Module, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the output, unless modules that ran define their own objective."""
    own = []
    for m in model.modules():
        fn = getattr(m, "task_loss", None)
        if m is not model and callable(fn):
            loss = fn(target)
            if loss is not None:
                own.append(loss)
    return torch.stack(own).sum() if own else F.cross_entropy(logits, target)


def set_progress(model: nn.Module, progress: float) -> None:
    p = min(max(float(progress), 0.0), 1.0)
    for m in model.modules():  # ops define set_progress; containers must not (recursion)
        fn = getattr(m, "set_progress", None)
        if callable(fn):
            fn(p)


class NetworkState(dict):
    """Values ops thread along one forward of a network, by state name (e.g. ``"dca"``)."""


def link_state(model: nn.Module) -> NetworkState:
    """Share one NetworkState among every op of ``model`` that uses one; returns it."""
    state = NetworkState()
    for m in model.modules():
        fn = getattr(m, "use_network_state", None)
        if callable(fn):
            fn(state)
    return state


class WithState(nn.Module):
    """An op costed in isolation as it runs inside a chain: with (or without) a previous state."""

    def __init__(self, op: nn.Module, prefill: bool):
        super().__init__()
        self.op = op
        self.prefill = prefill
        self.state = link_state(op)
        self._users = [m for m in op.modules() if callable(getattr(m, "example_state", None))]

    def forward(self, *xs):
        self.state.clear()
        if self.prefill:
            for m in self._users[:1]:
                self.state[m.network_state_key] = m.example_state(xs[0])
        return self.op(*xs)


def stateful_key(module_or_meta) -> Optional[str]:
    """The network-state name an op uses (from its registry meta ``state=``), or None."""
    if isinstance(module_or_meta, dict):
        return module_or_meta.get("state")
    return getattr(module_or_meta, "network_state_key", None)
