"""The model side: the op library, the search spaces and how an ``Arch`` becomes a network.

``space.OPS``/``space.FUSIONS`` (and the attention and mixer registry) are the only way the
rest of the project finds components; ``space.build(arch)`` is the only way it builds one.
"""
from __future__ import annotations

from typing import List

from torch import nn

from . import ops  # noqa: F401  (registers every op module)
from .arch import ArchBase, ArchError, load_arch
from .base import Part, SearchSpace
from .registry import ATTENTIONS, CHANNEL_MIXERS, DW_CONVS, FUSIONS, HEADS, NECKS, OPS, SPACES, TOKEN_MIXERS
from .registry import UnknownName
from . import darts, mobile, metaformer  # noqa: F401  (each registers its space; this order is SPACES order)

Arch = ArchBase


def build(arch: ArchBase, deploy: bool = True) -> nn.Module:
    """The stand-alone network of ``arch``; ``deploy=True`` (default) folds train-time ops."""
    return SPACES[arch.space].build(arch, deploy=deploy)


def parts(arch: ArchBase) -> List[Part]:
    return SPACES[arch.space].parts(arch)


def get_space(name: str, **settings) -> SearchSpace:
    return SPACES[name](**settings)


def preset(name: str) -> ArchBase:
    """A shipped architecture by name (``darts_v2``, ...), from any space."""
    for space_name in SPACES.names():
        found = SPACES[space_name].presets.get(name)
        if found is not None:
            return found
    known = sorted(n for s in SPACES.names() for n in SPACES[s].presets)
    raise UnknownName(f"unknown preset {name!r}; known: {', '.join(known)}")


__all__ = ["OPS", "FUSIONS", "ATTENTIONS", "TOKEN_MIXERS", "CHANNEL_MIXERS", "DW_CONVS", "NECKS", "HEADS", "SPACES", "Arch",
           "ArchBase", "ArchError", "Part", "SearchSpace", "build", "parts", "load_arch",
           "get_space", "preset", "UnknownName"]
