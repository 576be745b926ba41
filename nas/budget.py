"""Budgets: "300MFLOPs", "0.3GFLOPs", "300MMACs", "2.5Mparams", "5ms" -> constraints.

One place for units.  FLOPs and MACs are the same quantity here (fvcore counts one multiply-add
as one FLOP), so "300MFLOPs" == "300MMACs".  Several constraints may be joined with commas:
"300MFLOPs,5ms".
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import List, Tuple

# counts never mean milli-FLOPs, so "300mflops" reads as mega
PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
TIME = {"s": 1e3, "ms": 1.0, "us": 1e-3, "µs": 1e-3}  # to milliseconds
UNIT_KIND = {"flops": "flops", "flop": "flops", "macs": "flops", "mac": "flops",
             "madds": "flops", "params": "params", "param": "params"}
_NUM = r"(?P<num>\d+(?:\.\d*)?|\.\d+)(?:[eE](?P<exp>[+-]?\d+))?"
_COUNT = re.compile(rf"^{_NUM}\s*(?P<prefix>[kKmMgGtT]?)\s*(?P<unit>flops?|macs?|madds|params?)$", re.I)
_TIME = re.compile(rf"^{_NUM}\s*(?P<unit>ms|us|µs|s)$")
EXAMPLES = "300MFLOPs, 0.3GFLOPs, 300MMACs, 2.5Mparams, 5ms"


class BudgetError(ValueError):
    pass


@dataclass(frozen=True)
class Constraint:
    kind: str  # "flops" | "params" | "latency"
    limit: float  # count, or milliseconds for latency
    text: str  # as the user wrote it, normalised

    def violation(self, value: float) -> float:
        """Relative excess over the limit (<= 0 is within budget), as Optuna's constraints."""
        return value / self.limit - 1.0

    def describe(self) -> str:
        if self.kind == "latency":
            return f"latency <= {self.limit:g} ms"
        if self.kind == "flops":
            return f"FLOPs <= {human(self.limit)} (1 FLOP = 1 multiply-add, fvcore)"
        return f"params <= {human(self.limit)}"


def human(n: float) -> str:
    for p, f in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= f:
            return f"{n / f:.4g}{p}"
    return f"{n:.4g}"


def _parse_one(text: str) -> Constraint:
    try:
        return _parse_number(text)
    except OverflowError:
        raise BudgetError(f"budget {text.strip()!r} is too large: give a finite limit") from None


def _parse_number(text: str) -> Constraint:
    t = text.strip()
    m = _COUNT.match(t)
    if m:
        value = float(m["num"]) * 10 ** int(m["exp"] or 0) * PREFIX[m["prefix"].lower()]
        kind = UNIT_KIND[m["unit"].lower()]
        norm = f"{human(value)}{'FLOPs' if kind == 'flops' else 'params'}"
    else:
        m = _TIME.match(t)
        if not m:
            raise BudgetError(f"cannot read budget {text.strip()!r}: expected a number with a unit, "
                              f"e.g. {EXAMPLES}")
        value = float(m["num"]) * 10 ** int(m["exp"] or 0) * TIME[m["unit"]]
        kind, norm = "latency", f"{value:g}ms"
    if not value > 0:
        raise BudgetError(f"budget {text.strip()!r} must be positive")
    if not math.isfinite(value):
        raise BudgetError(f"budget {text.strip()!r} is infinite: give a finite limit")
    return Constraint(kind, value, norm)


def parse_budget(text: str) -> Tuple[Constraint, ...]:
    """Parse one or more comma-separated budgets; at most one per kind."""
    if not text or not text.strip():
        raise BudgetError(f"empty budget: give e.g. {EXAMPLES}")
    out: List[Constraint] = []
    for piece in text.split(","):
        c = _parse_one(piece)
        if any(o.kind == c.kind for o in out):
            raise BudgetError(f"budget {text!r} gives two {c.kind} limits")
        out.append(c)
    return tuple(out)


def slug(constraints: Tuple[Constraint, ...]) -> str:
    """For folder names: "300MFLOPs", "300MFLOPs-5ms"."""
    return "-".join(c.text for c in constraints)
