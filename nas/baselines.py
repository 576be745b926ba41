"""Hand-designed baselines at the budget: what a user would pick without a search.

Each of the space's ``BASELINES`` presets is taken at the space's input size and classes and, where
it exceeds the budget, scaled down by its family's own rule (``space.scaled``: DARTS' channels and
cells, the MobileNets' width multiplier, the MetaFormers' widths and depths) to the largest factor
that fits every constraint.  It is then scored by the run's estimator, so the Pareto plot shows whether the search
beat it.  ``baselines.csv`` gives the factor; FLOPs are plain fvcore counts of the deployed network.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

import pandas as pd

COLUMNS = ["name", "scale", "flops", "params", "latency_ms", "score", "note"]


def preset_choices(space) -> Dict[str, Dict[str, Any]]:
    """The space's ``BASELINES`` presets as its own choices (their cells or blocks at the space's
    sizes), where every value is one of the space's candidates: what a warm-started search
    proposes first.  A preset the candidates cannot express (``--ops`` without its ops) is left out."""
    choices, out = space.choices(), {}
    for name in space.BASELINES:
        try:
            params = space.encode(space.presets[name])
        except ValueError:  # a preset this space's choices cannot hold
            continue
        if set(params) == set(choices) and all(v in choices[k] for k, v in params.items()) \
                and params not in out.values():
            out[name] = params
    return out


def _fits(c: Dict[str, float], constraints: Sequence[Any]) -> bool:
    values = {"flops": c["flops"], "params": c["params"], "latency": c.get("latency_ms")}
    return all(values[k.kind] is not None and k.violation(values[k.kind]) <= 0 for k in constraints)


def fit_to_budget(space, arch, constraints: Sequence[Any], costs: Callable[[Any], Dict[str, float]],
                  lowest: float = 0.1, step: float = 0.95):
    """(scaled arch, factor, its costs): the largest factor in 1, 0.95, 0.95^2 ... >= ``lowest``
    whose scaled arch fits, or None where none does."""
    factor, cost = 1.0, getattr(costs, "lenient", costs)
    while factor >= lowest:
        a = space.scaled(arch, factor)
        c = cost(a)
        if _fits(c, constraints):
            return a, factor, c
        factor *= step
    return None


def scaled_baselines(space, constraints: Sequence[Any], costs: Callable[[Any], Dict[str, float]],
                     score: Callable[[Any], float]) -> pd.DataFrame:
    rows: List[Dict[str, Any]] = []
    for name in space.BASELINES:
        preset = space.presets[name]
        try:
            found = fit_to_budget(space, preset, constraints, costs)
        except Exception as e:  # a preset this space's settings cannot build
            rows.append({"name": name, "note": f"not buildable here: {type(e).__name__}: {e}"[:200]})
            continue
        if found is None:
            rows.append({"name": name, "note": "does not fit the budget even at a tenth of its width"})
            continue
        arch, factor, c = found
        try:
            s, note = float(score(arch)), ""
        except Exception as e:  # e.g. a supernet that holds no path of this width
            s, note = float("nan"), f"not scored: {type(e).__name__}: {e}"[:200]
        label = name if factor == 1.0 else f"{name} x{factor:.2f}"
        rows.append({"name": label, "scale": round(factor, 4), "flops": c["flops"], "params": c["params"],
                     "latency_ms": c.get("latency_ms"), "score": s, "note": note})
    return pd.DataFrame(rows, columns=COLUMNS)
