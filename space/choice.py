"""Single-path weight sharing (SPOS): one module per candidate, only the active one runs."""
from __future__ import annotations

from typing import Callable, Dict, Iterable

from torch import nn


class Choice(nn.Module):
    """Holds one instance of every candidate; ``forward`` runs the active one only."""

    def __init__(self, candidates: Dict[str, nn.Module]):
        super().__init__()
        if not candidates:
            raise ValueError("a choice needs at least one candidate")
        self.candidates = nn.ModuleDict(candidates)
        self.active = next(iter(candidates))

    @classmethod
    def of(cls, names: Iterable[str], make: Callable[[str], nn.Module]) -> "Choice":
        return cls({n: make(n) for n in names})

    def set(self, name: str) -> None:
        if name not in self.candidates:
            raise KeyError(f"{name!r} is not a candidate here (candidates: {list(self.candidates)})")
        self.active = name

    @property
    def module(self) -> nn.Module:
        return self.candidates[self.active]

    def forward(self, *xs):
        return self.candidates[self.active](*xs)
