"""One module at several widths, sharing one set of weights: the leading channels of the widest.

Once-for-all (Cai et al., arXiv 1908.09791) trains elastic widths by slicing the widest layer's
weights; this does that for any module without knowing its layers.  ``Sliced(make, sizes)``
builds ``make(size)`` for each size: the widest holds the weights, every narrower copy is
*hollow* (its parameters and persistent buffers are empty placeholders) and runs with the
widest's tensors cut to its own shapes (``torch.func.functional_call``).  So the path at a size
*is* the stand-alone module of that size with inherited weights, by construction, whatever the
module does inside (attention heads, norms over channels, adapters): channel masking, by
contrast, is exact only for channel-separable layers (a LayerNorm sees the zeros).

Gradients reach the shared weights through the slices; batch-norm statistics are updated in
place in the widest's buffers (views), so recalibrating them per architecture works as before.
A size whose module is not a prefix-shaped copy of the widest's (other parameter names, a larger
tensor) keeps weights of its own, and ``shared(size)`` says so.
"""
from __future__ import annotations

import contextlib

from typing import Callable, Dict, Hashable, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.func import functional_call


def _tensors(m: nn.Module) -> Dict[str, torch.Tensor]:
    """Parameters and persistent buffers, by name (what a state dict holds)."""
    return dict(m.state_dict(keep_vars=True))


def _prefix_shapes(thin: nn.Module, full: nn.Module) -> Optional[Dict[str, Tuple[int, ...]]]:
    t, f = _tensors(thin), _tensors(full)
    if set(t) != set(f):
        return None
    for n, v in t.items():
        if v.dim() != f[n].dim() or any(a > b for a, b in zip(v.shape, f[n].shape)):
            return None
    return {n: tuple(v.shape) for n, v in t.items()}


def _hollow(m: nn.Module, names: Sequence[str]) -> None:
    """Replace the named tensors by empty non-persistent buffers: no memory, no state-dict entry,
    no optimiser slot, yet they move with ``.to()`` and let ``functional_call`` find the names."""
    for name in names:
        owner, _, attr = name.rpartition(".")
        sub = m.get_submodule(owner) if owner else m
        delattr(sub, attr)
        sub.register_buffer(attr, torch.empty(0, device="cpu"), persistent=False)


def _thin(make: Callable[[Hashable], nn.Module], size: Hashable, full: nn.Module):
    """``make(size)``, hollow where it can inherit the widest's tensors."""
    m = make(size)
    shapes = _prefix_shapes(m, full)
    if shapes is not None:
        _hollow(m, list(shapes))
    return m, shapes


def _cut(x: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
    return x[tuple(slice(0, k) for k in shape)]


class Sliced(nn.Module):
    """``make(size)`` for every size of ``sizes``; ``size`` picks the one that runs.

    ``widest`` names the size whose module holds the weights (default: the last of ``sizes``;
    sizes may be tuples, e.g. (C_in, C_out) of a downsample).
    """

    def __init__(self, make: Callable[[Hashable], nn.Module], sizes: Sequence[Hashable],
                 widest: Optional[Hashable] = None, lazy: bool = False):
        super().__init__()
        self._sizes = list(dict.fromkeys(sizes))
        self.widest = self._sizes[-1] if widest is None else widest
        if self.widest not in self._sizes:
            raise ValueError(f"widest size {self.widest!r} is not among {self._sizes}")
        self._make, self.lazy = make, lazy
        self.full = make(self.widest)
        self.thin = nn.ModuleList()
        self._index: Dict[Hashable, int] = {}
        self._shapes: Dict[Hashable, Optional[Dict[str, Tuple[int, ...]]]] = {}
        if not lazy:
            for s in self._sizes:
                if s != self.widest:
                    self._add(s)
        self.size = self.widest

    def _add(self, size: Hashable) -> None:
        # built mid-training, a lazy copy leaves the global random stream as it was, so that a run
        # resumed from a checkpoint draws what an uninterrupted one does
        with torch.random.fork_rng(devices=[]) if self.lazy else contextlib.nullcontext():
            m, shapes = _thin(self._make, size, self.full)
        if self.lazy:
            if shapes is None:  # its own weights would miss the optimiser, created before it
                raise ValueError(f"{type(m).__name__} at size {size!r} does not inherit the widest's "
                                 "weights (other tensor names or larger shapes); build this Sliced eagerly")
            m.to(next(iter(_tensors(self.full).values()), torch.empty(0)).device)
        self._index[size], self._shapes[size] = len(self.thin), shapes
        self.thin.append(m)

    @property
    def sizes(self) -> list:
        return list(self._sizes)

    def _known(self, size: Hashable) -> None:
        if size not in self._sizes:
            raise KeyError(f"size {size!r} is not one of this module's sizes {self._sizes}")
        if size != self.widest and size not in self._index:
            self._add(size)

    def shared(self, size: Hashable) -> bool:
        self._known(size)
        return size == self.widest or self._shapes[size] is not None

    def set(self, size: Hashable) -> None:
        """Make ``size`` the one that runs (a lazy copy is built, hollow, on first use:
        many-input necks have one per combination of widths)."""
        self._known(size)
        self.size = size

    def _inherited(self, size: Hashable) -> Dict[str, torch.Tensor]:
        full = _tensors(self.full)
        return {n: _cut(full[n], shape) for n, shape in self._shapes[size].items()}

    def forward(self, *xs):
        if self.size == self.widest:
            return self.full(*xs)
        m = self.thin[self._index[self.size]]
        if self._shapes[self.size] is None:
            return m(*xs)
        return functional_call(m, self._inherited(self.size), xs)

    def state_at(self, size: Optional[Hashable] = None) -> Dict[str, torch.Tensor]:
        """The state dict of the stand-alone module at ``size`` (default: the active one), with
        the weights it inherits: load it into ``make(size)`` to run that path on its own."""
        size = self.size if size is None else size
        if size == self.widest:
            return {n: v.detach().clone() for n, v in self.full.state_dict().items()}
        if self._shapes[size] is None:
            return {n: v.detach().clone() for n, v in self.thin[self._index[size]].state_dict().items()}
        return {n: v.detach().clone() for n, v in self._inherited(size).items()}
