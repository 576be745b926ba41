"""How table entries combine into a network's latency, and how that combination is fitted.

A network's parts run one after another, so the plain sum of their entries is the first guess.
It is biased: an op timed among other ops still differs from the same op inside a network
(cache contents, the glue between parts: concatenations, Python control flow, allocation),
and by an amount that depends on what kind of op it is.  The build therefore also times
random networks of the space end to end and fits, by weighted least squares on relative error,

    latency = overhead + per_part * n_parts + sum_p factor[kind(p)] * entry[p]

with one ``factor`` shared by all kinds (``affine``) or one per group of parts shrunk towards
the shared one (ridge penalty chosen by leave-one-out).  Parts are grouped either by kind
(``kind(lam=..)``) or by the resolution they run at (``res(lam=..)``: the first input's spatial
size, ``+`` for several inputs): how far a part inside a network drifts from its timing alone
follows its activations' size as much as its kind (MetaFormer networks: leave-one-out 79% within
10% with kinds, 88% with resolutions, over 48 networks).  The candidate with the lowest
leave-one-out RMSPE on the build's networks is kept; ``sum`` (factor 1, no overhead) is what a
table without networks uses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np


@dataclass
class LatencyModel:
    name: str = "sum"
    factor: float = 1.0
    overhead_ms: float = 0.0
    per_part_ms: float = 0.0
    kind_factor: Dict[str, float] = field(default_factory=dict)  # group label -> factor
    cv: Dict[str, Any] = field(default_factory=dict)  # leave-one-out errors of every candidate
    group_by: str = "kind"  # what kind_factor's labels are: "kind" or "res" (see res_label)

    def factor_of(self, label: str) -> float:
        return self.kind_factor.get(label, self.factor)

    def factor_for(self, kind: str, inputs: str) -> float:
        """The factor of a part of ``kind`` whose input shapes are ``inputs`` (``shapes_text``)."""
        return self.factor_of(res_label(inputs) if self.group_by == "res" else kind)

    def predict_sums(self, kind_sums: Dict[str, float], n_parts: int) -> float:
        return (self.overhead_ms + self.per_part_ms * n_parts
                + sum(self.factor_of(k) * v for k, v in kind_sums.items()))

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "factor": self.factor, "overhead_ms": self.overhead_ms,
                "per_part_ms": self.per_part_ms, "kind_factor": dict(self.kind_factor), "cv": self.cv,
                "group_by": self.group_by}

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> "LatencyModel":
        if not d:
            return cls()
        return cls(name=str(d.get("name", "sum")), factor=float(d.get("factor", 1.0)),
                   overhead_ms=float(d.get("overhead_ms", 0.0)), per_part_ms=float(d.get("per_part_ms", 0.0)),
                   kind_factor={str(k): float(v) for k, v in (d.get("kind_factor") or {}).items()},
                   cv=dict(d.get("cv") or {}), group_by=str(d.get("group_by", "kind")))


# -- fitting -----------------------------------------------------------------------------------

def res_label(inputs: str) -> str:
    """``"1x64x56x56"`` -> ``"56x56"``; several inputs (``"..;..."``) -> the first one's, plus ``+``."""
    shapes = inputs.split(";")
    dims = shapes[0].split("x")[2:]
    return "x".join(dims) + ("+" if len(shapes) > 1 else "")


@dataclass
class Sample:
    """One network timed end to end: its sums of entries per kind (and per resolution), part
    count and latency."""

    kind_sums: Dict[str, float]
    n_parts: int
    ms: float
    res_sums: Dict[str, float] = field(default_factory=dict)


def _design(samples: Sequence[Sample], kinds: List[str]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    K = np.array([[s.kind_sums.get(k, 0.0) for k in kinds] for s in samples], dtype=float)
    n = np.array([s.n_parts for s in samples], dtype=float)
    y = np.array([s.ms for s in samples], dtype=float)
    return K, n, y


def _solve(K: np.ndarray, n: np.ndarray, y: np.ndarray, per_kind: bool, lam: float,
           use_count: bool) -> Tuple[float, np.ndarray, float, float]:
    """Weighted (1/y) least squares; returns (shared factor, per-kind deltas, overhead, per_part).

    Columns: total sum (shared factor), per-kind sums (deltas, ridge ``lam`` scaled to the data),
    1 (overhead) and n_parts (per-part cost, only when part counts vary).
    """
    w = 1.0 / y
    total = K.sum(1)
    cols = [total, np.ones_like(total)]
    if use_count:
        cols.append(n)
    base = len(cols)
    if per_kind:
        cols += [K[:, j] for j in range(K.shape[1])]
    A = np.stack(cols, 1) * w[:, None]
    b = y * w
    if per_kind and lam > 0:
        scale = np.sqrt(np.mean((K * w[:, None]) ** 2, 0)) + 1e-12
        reg = np.zeros((K.shape[1], A.shape[1]))
        reg[:, base:] = np.diag(np.sqrt(lam) * scale * np.sqrt(len(y)))
        A = np.vstack([A, reg])
        b = np.concatenate([b, np.zeros(K.shape[1])])
    coef = np.linalg.lstsq(A, b, rcond=None)[0]
    deltas = coef[base:] if per_kind else np.zeros(K.shape[1])
    return float(coef[0]), deltas, float(coef[1]), float(coef[2]) if use_count else 0.0


def _predict(K, n, factor, deltas, overhead, per_part) -> np.ndarray:
    return K @ (factor + deltas) + overhead + per_part * n


def _loo(K, n, y, **kw) -> np.ndarray:
    errs = np.empty(len(y))
    for i in range(len(y)):
        m = np.arange(len(y)) != i
        f, d, o, c = _solve(K[m], n[m], y[m], **kw)
        errs[i] = _predict(K[i:i + 1], n[i:i + 1], f, d, o, c)[0] / y[i] - 1
    return errs


def _summary(errs: np.ndarray) -> Dict[str, float]:
    return {"rmspe": float(np.sqrt(np.mean(errs ** 2))), "within10": float(np.mean(np.abs(errs) <= 0.10)),
            "within5": float(np.mean(np.abs(errs) <= 0.05))}


LAMBDAS = (0.01, 0.1, 1.0, 10.0)


def fit(samples: Sequence[Sample], candidates: Sequence[str] = ("affine", "kind", "res")) -> LatencyModel:
    """The candidate with the lowest leave-one-out RMSPE over ``samples`` (>= 4 networks)."""
    if len(samples) < 4:
        return LatencyModel(cv={"note": f"{len(samples)} networks: too few to fit, plain sum"})
    designs = {}
    for group, of in (("kind", lambda s: s.kind_sums), ("res", lambda s: s.res_sums)):
        labels = sorted({k for s in samples for k in of(s)})
        if labels and all(of(s) for s in samples):
            designs[group] = (labels, _design([Sample(of(s), s.n_parts, s.ms) for s in samples], labels)[0])
    kinds, K = designs["kind"]
    _, n, y = _design(samples, kinds)
    use_count = bool(np.ptp(n) > 0)
    cv: Dict[str, Any] = {"networks": len(samples), "sum": _summary(K.sum(1) / y - 1)}
    options: List[Tuple[str, str, Dict[str, Any]]] = []
    if "affine" in candidates:
        options.append(("affine", "kind", dict(per_kind=False, lam=0.0, use_count=use_count)))
    for group, (labels, _) in designs.items():
        if group in candidates and len(labels) > 1 and len(samples) >= 8:
            options += [(f"{group}(lam={lam:g})", group, dict(per_kind=True, lam=lam, use_count=use_count))
                        for lam in LAMBDAS]
    best, best_err = None, cv["sum"]["rmspe"]
    for name, group, kw in options:
        s = _summary(_loo(designs[group][1], n, y, **kw))
        cv[name] = s
        if s["rmspe"] < best_err:
            best, best_err = (name, group, kw), s["rmspe"]
    if best is None:
        return LatencyModel(cv=cv)
    name, group, kw = best
    labels, G = designs[group]
    f, d, o, c = _solve(G, n, y, **kw)
    factors = {k: float(f + dk) for k, dk in zip(labels, d)} if kw["per_kind"] else {}
    return LatencyModel(name=name, factor=f, overhead_ms=o, per_part_ms=c, kind_factor=factors, cv=cv,
                        group_by=group)
