"""What every search space provides, and the unit both cost models share (``Part``)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Iterable, List, Sequence, Tuple, Type

from torch import nn

from .arch import ArchBase
from .registry import OPS, UnknownName


@dataclass(frozen=True)
class Part:
    """One op instance of a network, with everything that decides its cost.

    ``key`` is canonical (equal keys cost the same FLOPs and latency), ``make`` builds the
    deployed op in eval form, ``inputs`` are its input shapes at batch 1, ``kind`` groups parts
    for reports and per-type latency factors.  A network is the composition of its parts with
    only free glue (cat, views) between them, so costs add up.
    """

    key: str
    kind: str
    inputs: Tuple[Tuple[int, ...], ...]
    make: Callable[[], nn.Module] = field(compare=False, repr=False)


def make_op(name: str, C_in: int, C_out: int, stride: int, hw: Tuple[int, int], **kw: Any) -> nn.Module:
    """``OPS[name](C_in, C_out, stride)``, passing ``resolution=H`` to ops whose registry meta
    asks for it (PyConv picks its pyramid levels per stage, as PyConvResNet does)."""
    if OPS.meta(name).get("resolution"):
        kw.setdefault("resolution", hw[0])
    return OPS[name](C_in, C_out, stride, **kw)


def split_names(names: Sequence[str], slots: Dict[str, Any], always: Dict[str, Sequence[str]],
                space: str) -> Dict[str, List[str]]:
    """Map ``--ops`` names onto a space's candidate slots (e.g. mobile: conv variants and
    attention plug-ins), each slot keeping its ``always`` options ("plain", "none").  A name
    that fits no slot is an error listing what does."""
    out: Dict[str, List[str]] = {k: list(always.get(k, ())) for k in slots}
    for n in names:
        hits = [k for k, reg in slots.items() if n in reg]
        if not hits:
            valid = sorted({m for reg in slots.values() for m in reg.names()})
            raise UnknownName(f"{n!r} is not a candidate of the {space} space's slots "
                              f"({', '.join(slots)}); choose from: {', '.join(valid)}")
        for k in hits:
            if n not in out[k]:
                out[k].append(n)
    return out


def whole(name: str, value: Any, least: int = 1) -> int:
    """A space setting as an integer >= ``least``, or a ValueError naming it (settings arrive as
    text from ``--space-opt``)."""
    try:
        v = int(value)
        ok = v == value or isinstance(value, str)
    except (TypeError, ValueError):
        ok = False
    if not ok or v < least:
        raise ValueError(f"space setting {name} must be an integer >= {least}, got {value!r}")
    return v


def wholes(name: str, values: Any, least: int = 1) -> List[int]:
    if isinstance(values, (int, str)):
        values = [values]
    return [whole(name, v, least) for v in values]


def part_key(kind: str, **fields: Any) -> str:
    body = ",".join(f"{k}={v}" for k, v in sorted(fields.items()))
    return f"{kind}({body})"


class SearchSpace:
    """A configured space: the choices offered to drivers, and how they become an ``Arch``.

    ``build``/``parts`` depend on the architecture only (an Arch carries all it needs);
    the instance's settings (candidate ops, macro sizes, supernet size) shape the choices.
    """

    name: ClassVar[str] = ""
    arch_cls: ClassVar[Type[ArchBase]]
    # smallest image side the space takes: its downsampling must leave a feature map, not padding
    min_side: ClassVar[int] = 16
    presets: ClassVar[Dict[str, ArchBase]] = {}

    def choices(self) -> Dict[str, List[Any]]:
        """Flat categorical parameters, name -> options (strings/ints), stable order."""
        raise NotImplementedError

    def decode(self, params: Dict[str, Any]) -> ArchBase:
        raise NotImplementedError

    def encode(self, arch: ArchBase) -> Dict[str, Any]:
        """Inverse of decode where the arch lies inside this space's choices."""
        raise NotImplementedError

    def sample(self, rng: random.Random) -> ArchBase:
        return self.decode({k: rng.choice(v) for k, v in self.choices().items()})

    def check_input(self, input_size: Sequence[int]) -> None:
        """A ValueError for images the space cannot take (before any network is built)."""
        _, h, w = input_size
        if min(h, w) < self.min_side:
            raise ValueError(f"images of {h}x{w} pixels are too small for the {self.name} space: it takes sides "
                             f"of at least {self.min_side} (its downsampling would leave only padding)")

    def settings(self) -> Dict[str, Any]:
        """Resolved settings, written to config.json."""
        raise NotImplementedError

    def supernet(self, num_classes: int, input_size: Sequence[int]) -> nn.Module:
        """Weight-sharing supernet with ``set_active(arch)``, for accuracy estimation."""
        raise NotImplementedError

    def all_parts(self) -> Iterable[Part]:
        """Every distinct part the space can produce (what a latency table must hold)."""
        raise NotImplementedError

    # -- modules, for verdicts: which published modules an arch uses, and the arch without one --
    def modules(self, arch: ArchBase) -> Dict[Tuple[str, str], int]:
        """(role, module name) -> how often ``arch`` uses it, for the modules that have a plain
        counterpart (the plain ones themselves are not listed)."""
        raise NotImplementedError

    def count_uses(self, uses: Iterable[Tuple[str, str]]) -> Dict[Tuple[str, str], int]:
        """``modules`` from a list of (role, name) uses: the plain ones left out."""
        out: Dict[Tuple[str, str], int] = {}
        for role, name in uses:
            if name != self.plain(role, name):
                out[(role, name)] = out.get((role, name), 0) + 1
        return out

    def plain(self, role: str, name: str) -> str:
        """The plain counterpart of module ``name`` in ``role`` (what ``without`` puts in)."""
        return getattr(self, "PLAIN")[role]

    def without(self, arch: ArchBase, role: str, name: str) -> ArchBase:
        """``arch`` with every use of ``name`` in ``role`` replaced by its plain counterpart."""
        raise NotImplementedError

    # -- hand-designed baselines, scaled to a budget by their family's own rule ------------------
    BASELINES: ClassVar[Tuple[str, ...]] = ()  # preset names a run compares its front with

    def scaled(self, arch: ArchBase, factor: float) -> ArchBase:
        """Preset ``arch`` at this space's input size and classes, narrowed by ``factor`` (<= 1) the
        way its family scales (DARTS: channels; MobileNets: the width multiplier; MetaFormers: widths)."""
        raise NotImplementedError

    @staticmethod
    def recipe_drop_path(arch: ArchBase) -> float:
        """The stochastic-depth rate ``nas.train`` uses unless told (the family's official
        recipe where it has one for this schedule; DARTS' 0.2 is for 600 epochs, so 0 here)."""
        return 0.0

    @staticmethod
    def build(arch: ArchBase, deploy: bool = True) -> nn.Module:
        raise NotImplementedError

    @staticmethod
    def parts(arch: ArchBase) -> List[Part]:
        raise NotImplementedError
