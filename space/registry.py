"""Name -> constructor registry, as DARTS' ``OPS`` dict and mobile-vision's ``PRIMITIVES``:
the ``Registry`` class and, at the end, every registry the spaces, tests and drivers use.

A registry holds constructors that share one signature; the name is the spec.  Entries may
carry tags (``"attention"``, ``"reparam"``...) so that a space can choose defaults by role
without naming every op.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple


class UnknownName(KeyError):
    """An op/space name that no registry entry has; the message suggests close names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


# What an entry may declare about its module's needs, with the type: declared once with the
# module, read by the spaces and the tests.  An unknown key or a wrong type fails at import.
META_FIELDS: Dict[str, Tuple[type, str]] = {
    "resolution": (bool, "takes resolution=H of its input (PyConv picks its pyramid levels by it)"),
    "state": (str, "carries a state of this name along a stage (DCANet's attention chain)"),
    "reads_residual": (bool, "its side path reads the block's input, outside the layer scale (AdaptFormer)"),
    "kernels": (tuple, "the depthwise kernel sizes it exists at; others fall back to the nearest"),
    "inputs": (int, "a neck: how many of the deepest stage outputs it reads"),
    "stage": (str, "where in a network it belongs, in words (CFNet's focal block)"),
    "no_trace": (str, "why torch.jit.trace cannot capture it (the contract test skips tracing)"),
}


class Registry:
    def __init__(self, kind: str, signature: str):
        self.kind = kind
        self.signature = signature  # shown in errors and docs: the contract every entry honours
        self._fns: Dict[str, Callable] = {}
        self._tags: Dict[str, frozenset] = {}
        self._meta: Dict[str, dict] = {}
        self._origin: Dict[str, str] = {}  # the module that registered each entry (its paper's file)
        self._aliases: Dict[str, str] = {}  # another accepted spelling -> the registered name

    def register(self, name: str, fn: Optional[Callable] = None, *, tags: Iterable[str] = (),
                 **meta):
        """Use as ``@REG.register("name")`` or ``REG.register("name", fn)``.

        ``meta`` declares the module's needs (``META_FIELDS``: ``resolution=True``,
        ``state="dca"``, ``no_trace="why"`` ...); the spaces and the tests read them.
        """
        for key, value in meta.items():
            if key not in META_FIELDS:
                raise TypeError(f"{self.kind} {name!r}: unknown registry field {key!r}; known: {', '.join(META_FIELDS)}")
            if not isinstance(value, META_FIELDS[key][0]):
                raise TypeError(f"{self.kind} {name!r}: {key} must be a {META_FIELDS[key][0].__name__}, got {value!r}")

        origin = _caller_module()

        def deco(f: Callable) -> Callable:
            if name in self._fns:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._origin[name] = origin
            self._fns[name] = f
            self._tags[name] = frozenset(tags)
            self._meta[name] = dict(meta)
            return f
        return deco(fn) if fn is not None else deco

    def origin(self, name: str) -> str:
        """The module that registered ``name``: the file of its published idea, whose docstring opens
        with the paper (an op adapted from an attention names the attention's file, not the adapter's)."""
        return self._origin[self.canonical(name)]

    def remove(self, name: str) -> None:
        """Forget ``name`` and its aliases (a test's throwaway entry, a plug-in being reloaded)."""
        self.get(name)
        name = self.canonical(name)
        for d in (self._fns, self._tags, self._meta, self._origin):
            d.pop(name, None)
        for a in [a for a, n in self._aliases.items() if n == name]:
            del self._aliases[a]

    def alias(self, alias: str, name: str) -> None:
        """Accept ``alias`` wherever ``name`` is accepted (lookup, ``check``), without a second
        entry: a space offers the registered name once, and archs store it."""
        self.get(name)
        if alias in self._fns or alias in self._aliases:
            raise ValueError(f"{self.kind} {alias!r} is registered twice")
        self._aliases[alias] = name

    def canonical(self, name: str) -> str:
        return self._aliases.get(name, name)

    def get(self, name: str) -> Callable:
        try:
            return self._fns[self.canonical(name)]
        except KeyError:
            raise UnknownName(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self._fns, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; known: {', '.join(self.names())}"

    def __getitem__(self, name: str) -> Callable:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._fns or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._fns)

    def names(self, tag: Optional[str] = None, exclude: Iterable[str] = ()) -> List[str]:
        """Names in registration order, optionally only those carrying ``tag``."""
        ex = set(exclude)
        return [n for n in self._fns
                if (tag is None or tag in self._tags[n]) and not (self._tags[n] & ex)]

    def tags(self, name: str) -> frozenset:
        self.get(name)
        return self._tags[self.canonical(name)]

    def meta(self, name: str) -> dict:
        self.get(name)
        return self._meta[self.canonical(name)]

    def items(self) -> List[Tuple[str, Callable]]:
        return list(self._fns.items())

    def check(self, names: Iterable[str]) -> List[str]:
        """Validate user-given names, raising one UnknownName for the first bad one; aliases
        come back as the registered names."""
        names = list(names)
        for n in names:
            self.get(n)
        return [self.canonical(n) for n in names]

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {len(self)} entries)"


# -- the registry -------------------------------------------------------------------------
# Each has one constructor signature; modules register themselves on import (``space.ops``
# imports every module file of the package).

OPS = Registry("op", "(C_in: int, C_out: int, stride: int, **kw) -> nn.Module; forward(x) -> y "
               "with C_out channels and ceil(H/stride) x ceil(W/stride) resolution")
FUSIONS = Registry("fusion", "(C: int, **kw) -> nn.Module; forward(x, y) -> tensor shaped like x")
ATTENTIONS = Registry("attention", "(C: int, **kw) -> nn.Module; forward(x) -> same shape; "
                      "a plug-in applied after a conv")
TOKEN_MIXERS = Registry("token mixer", "(dim: int, **kw) -> nn.Module; forward(x: B,C,H,W) -> same shape")
CHANNEL_MIXERS = Registry("channel mixer", "(dim: int, mlp_ratio: float, **kw) -> nn.Module; "
                          "forward(x: B,C,H,W) -> same shape")
DW_CONVS = Registry("depthwise conv", "(C: int, kernel_size: int, stride: int, **kw) -> nn.Module; "
                    "a depthwise (groups=C) conv variant: forward(x: B,C,H,W) -> B,C,H/s,W/s")
SPACES = Registry("search space", "class with choices/decode/build/parts/supernet")
NECKS = Registry("neck", "(channels: Sequence[int], C_out: int, **kw) -> nn.Module; forward(list "
                 "of len(channels) maps, finest first, each level half the previous size) -> "
                 "list of maps, finest first, with .out_channels; meta inputs=n: how many of "
                 "the deepest backbone levels it takes")
HEADS = Registry("head", "(C_in: int, num_classes: int, mid_channels: int = 0, **kw) -> nn.Module; "
                 "forward(x: B,C,H,W) -> B,num_classes logits")


# helpers that register entries on behalf of a paper's file (the op adapters)
_ON_BEHALF = {__name__, "space.ops.common"}


def _caller_module() -> str:
    frame = inspect.currentframe()
    while frame is not None and (frame.f_globals.get("__name__") == __name__ or frame.f_globals.get(
            "__name__") in _ON_BEHALF and frame.f_code.co_name != "<module>"):  # an adapter, not the file itself
        frame = frame.f_back
    return frame.f_globals.get("__name__", "?") if frame is not None else "?"

