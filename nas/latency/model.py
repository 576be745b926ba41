"""How table entries combine into a network's latency, and how that combination is fitted.

A network's parts run one after another, so the plain sum of their entries is the first guess.
It is biased: an op timed among other ops still differs from the same op inside a network
(cache contents, the glue between parts: concatenations, Python control flow, allocation),
and by an amount that depends on what kind of op it is.  The build therefore also times
random networks of the space end to end and fits, by weighted least squares on relative error,

    latency = overhead + per_part * n_parts + sum_p factor[kind(p)] * entry[p]

with one ``factor`` shared by all kinds (``affine``) or one per kind shrunk towards the shared
one (``kind``; ridge penalty chosen by leave-one-out).  The candidate with the lowest
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
    kind_factor: Dict[str, float] = field(default_factory=dict)
    cv: Dict[str, Any] = field(default_factory=dict)  # leave-one-out errors of every candidate

    def factor_of(self, kind: str) -> float:
        return self.kind_factor.get(kind, self.factor)

    def predict_sums(self, kind_sums: Dict[str, float], n_parts: int) -> float:
        return (self.overhead_ms + self.per_part_ms * n_parts
                + sum(self.factor_of(k) * v for k, v in kind_sums.items()))

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "factor": self.factor, "overhead_ms": self.overhead_ms,
                "per_part_ms": self.per_part_ms, "kind_factor": dict(self.kind_factor), "cv": self.cv}

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> "LatencyModel":
        if not d:
            return cls()
        return cls(name=str(d.get("name", "sum")), factor=float(d.get("factor", 1.0)),
                   overhead_ms=float(d.get("overhead_ms", 0.0)), per_part_ms=float(d.get("per_part_ms", 0.0)),
                   kind_factor={str(k): float(v) for k, v in (d.get("kind_factor") or {}).items()},
                   cv=dict(d.get("cv") or {}))


# -- fitting -----------------------------------------------------------------------------------

@dataclass
class Sample:
    """One network timed end to end: its per-kind sums of entries, part count and latency."""

    kind_sums: Dict[str, float]
    n_parts: int
    ms: float


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


def fit(samples: Sequence[Sample], candidates: Sequence[str] = ("affine", "kind")) -> LatencyModel:
    """The candidate with the lowest leave-one-out RMSPE over ``samples`` (>= 4 networks)."""
    if len(samples) < 4:
        return LatencyModel(cv={"note": f"{len(samples)} networks: too few to fit, plain sum"})
    kinds = sorted({k for s in samples for k in s.kind_sums})
    K, n, y = _design(samples, kinds)
    use_count = bool(np.ptp(n) > 0)
    cv: Dict[str, Any] = {"networks": len(samples), "sum": _summary(K.sum(1) / y - 1)}
    options: List[Tuple[str, Dict[str, Any]]] = []
    if "affine" in candidates:
        options.append(("affine", dict(per_kind=False, lam=0.0, use_count=use_count)))
    if "kind" in candidates and len(kinds) > 1 and len(samples) >= 8:
        options += [(f"kind(lam={lam:g})", dict(per_kind=True, lam=lam, use_count=use_count)) for lam in LAMBDAS]
    best_name, best_kw, best_err = "sum", None, cv["sum"]["rmspe"]
    for name, kw in options:
        s = _summary(_loo(K, n, y, **kw))
        cv[name] = s
        if s["rmspe"] < best_err:
            best_name, best_kw, best_err = name, kw, s["rmspe"]
    if best_kw is None:
        return LatencyModel(cv=cv)
    f, d, o, c = _solve(K, n, y, **best_kw)
    kind_factor = {k: float(f + dk) for k, dk in zip(kinds, d)} if best_kw["per_kind"] else {}
    return LatencyModel(name=best_name, factor=f, overhead_ms=o, per_part_ms=c, kind_factor=kind_factor, cv=cv)
