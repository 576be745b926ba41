"""Which registered module goes to which format, and why not: one small instance of every entry of
every registry, exported and checked as a network is.  The README's table is ``markdown_table()``
(a test compares them), and a network whose export fails names the entries that cannot go."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

import space
from space.registry import Registry

from .formats import FORMATS, Outcome, export_many


class _Levels(nn.Module):
    """A neck as a network: maps in, its output maps flattened into one tensor out."""

    def __init__(self, neck: nn.Module):
        super().__init__()
        self.neck = neck

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat([o.flatten(1) for o in self.neck(list(xs))], 1)


def _neck(reg: Registry, name: str) -> Tuple[nn.Module, List[Tuple[int, ...]]]:
    n = reg.meta(name).get("inputs", 4)
    chans = [16 * 2 ** i for i in range(n)]
    return _Levels(reg[name](chans, 32)), [(c, 32 // 2 ** i, 32 // 2 ** i) for i, c in enumerate(chans)]


# registry kind -> (module, input shapes without the batch); a new registry must add its own
EXAMPLES: Dict[str, Callable[[Registry, str], Tuple[nn.Module, List[Tuple[int, ...]]]]] = {
    "op": lambda r, n: (r[n](16, 16, 1), [(16, 16, 16)]),
    "fusion": lambda r, n: (r[n](32), [(32, 10, 10), (32, 10, 10)]),
    "attention": lambda r, n: (r[n](32), [(32, 12, 12)]),
    "token mixer": lambda r, n: (r[n](32), [(32, 14, 14)]),
    "channel mixer": lambda r, n: (r[n](32, 4.0), [(32, 14, 14)]),
    "depthwise conv": lambda r, n: (r[n](32, 3, 1), [(32, 14, 14)]),
    "neck": _neck,
    "head": lambda r, n: (r[n](32, 10, 64), [(32, 7, 7)]),
}
# the registries of modules (SPACES is not one) and, per space, which registry each role draws from
MODULE_REGISTRIES = (space.OPS, space.FUSIONS, space.ATTENTIONS, space.DW_CONVS, space.HEADS, space.TOKEN_MIXERS,
                     space.CHANNEL_MIXERS, space.NECKS)
ROLES = {"op": space.OPS, "fusion": space.FUSIONS, "conv": space.DW_CONVS, "attention": space.ATTENTIONS,
         "head": space.HEADS, "token": space.TOKEN_MIXERS, "channel": space.CHANNEL_MIXERS, "neck": space.NECKS}


def example(reg: Registry, name: str) -> Tuple[nn.Module, List[torch.Tensor], List[torch.Tensor]]:
    from space.ops import deploy

    torch.manual_seed(0)
    m, shapes = EXAMPLES[reg.kind](reg, name)
    m = deploy(m).eval()
    g = torch.Generator().manual_seed(1)
    make = lambda: [torch.randn(1, *s, generator=g) for s in shapes]  # noqa: E731
    return m, make(), make()


_CACHE: Dict[Tuple[str, str, str], Outcome] = {}


def support(kind: str, name: str, fmt: str) -> Outcome:
    """Export entry ``name`` of the registry ``kind`` alone in ``fmt``; cached per process."""
    _fill([(kind, name)], fmt)
    return _CACHE[(kind, name, fmt)]


def _fill(entries: Sequence[Tuple[str, str]], fmt: str) -> None:
    todo = [e for e in entries if (*e, fmt) not in _CACHE]
    if not todo:
        return
    regs = {r.kind: r for r in MODULE_REGISTRIES}
    with tempfile.TemporaryDirectory() as d:
        items = []
        for i, (kind, name) in enumerate(todo):
            (Path(d) / str(i)).mkdir()
            m, ex, check = example(regs[kind], name)
            items.append((m, Path(d) / str(i), ex, check, f"{kind} {name}"))
        for e, o in zip(todo, export_many(fmt, items)):
            _CACHE[(*e, fmt)] = o


def culprits(modules: Sequence[Tuple[str, str]], fmt: str) -> List[Dict[str, str]]:
    """The modules of a network (space roles and names) that fail ``fmt`` on their own, with why."""
    out = []
    for role, name in modules:
        reg = ROLES.get(role)
        if reg is None or name not in reg.names():
            continue
        o = support(reg.kind, name, fmt)
        if not o.ok:
            out.append({"role": role, "module": name, "reason": o.message})
    return out


def table(formats: Sequence[str] = FORMATS) -> List[Dict[str, str]]:
    entries = [(reg.kind, n) for reg in MODULE_REGISTRIES for n in reg.names()]
    for fmt in formats:
        _fill(entries, fmt)
    rows = []
    for reg in MODULE_REGISTRIES:
        for name in reg.names():
            row = {"registry": reg.kind, "module": name}
            for fmt in formats:
                o = support(reg.kind, name, fmt)
                row[fmt] = "yes" if o.ok else f"no: {o.message}"
            rows.append(row)
    return rows


def markdown_table(rows: Optional[List[Dict[str, str]]] = None) -> str:
    rows = rows if rows is not None else table()
    head = "| registry | module | " + " | ".join(FORMATS) + " |\n|" + " --- |" * (2 + len(FORMATS)) + "\n"
    return head + "".join(f"| {r['registry']} | `{r['module']}` | " + " | ".join(r[f] for f in FORMATS) + " |\n"
                          for r in rows)
