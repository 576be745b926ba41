"""Pareto fronts as pure data (drawing lives in ``nas.plots``)."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np


def pareto_front(values: np.ndarray, maximize: Sequence[bool]) -> List[int]:
    """Indices of the non-dominated rows of ``values`` (n x k), one direction per column.

    A row is dominated if another is at least as good in every column and better in one.
    Duplicated rows are all kept.  Rows with NaN are never on the front.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 2 or v.shape[1] != len(maximize):
        raise ValueError("values must be n x k with one direction per column")
    sign = np.where(np.asarray(maximize), -1.0, 1.0)  # minimise everything
    v = v * sign
    ok = ~np.isnan(v).any(axis=1)
    idx = np.flatnonzero(ok)
    front = []
    for i in idx:
        others = v[idx]
        dominated = np.any(np.all(others <= v[i], axis=1) & np.any(others < v[i], axis=1))
        if not dominated:
            front.append(int(i))
    return front


def hypervolume_2d(points: np.ndarray, reference: Sequence[float], maximize: Sequence[bool]) -> float:
    """Area dominated by a 2-objective front with respect to a reference point."""
    p = np.asarray(points, dtype=float) * np.where(np.asarray(maximize), -1.0, 1.0)
    r = np.asarray(reference, dtype=float) * np.where(np.asarray(maximize), -1.0, 1.0)
    p = p[np.all(p < r, axis=1)]
    if len(p) == 0:
        return 0.0
    p = p[np.argsort(p[:, 0])]
    area, best_y = 0.0, r[1]
    for x, y in p:
        if y < best_y:
            area += (r[0] - x) * (best_y - y)
            best_y = y
    return float(area)
