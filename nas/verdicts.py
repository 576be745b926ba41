"""Which modules pay off at this budget: per module of the space, how often it was chosen, how much
more often the front chose it (enrichment), and a paired ablation.

For each of the ``k`` best-scoring feasible candidates that use a module, every use of it is
replaced by the space's plain counterpart for its role (``space.without``; e.g. a conv op by
DARTS' separable conv of its kernel, an attention op by its conv alone, a fusion by ``sum``, a
token mixer by pooling).  Both are scored by the run's estimator and counted the same way; the
change in score (with - without) gets a bootstrap interval over the pairs, and the interval
decides the verdict: *pays off* (above 0), *costs accuracy* (below 0), *no measurable effect*
(spans 0).  With fewer than ``MIN_PAIRS`` pairs there is no verdict.  Scores are in the
estimator's units (an accuracy for the supernet, a proxy value for ``zc:*``): they compare
modules with each other, not with accuracies elsewhere.

Computed here, drawn by ``nas.plots.plot_modules``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

MIN_PAIRS = 3  # a bootstrap over fewer pairs is no interval
COLUMNS = ["role", "module", "plain", "evaluated", "share_evaluated", "on_front", "share_front", "enrichment",
           "pairs", "d_score", "d_score_lo", "d_score_hi", "d_mflops", "d_params", "d_latency_ms",
           "score_per_mflop", "verdict"]
PAIR_COLUMNS = ["role", "module", "plain", "trial", "d_score", "d_mflops", "d_params", "d_latency_ms"]


def bootstrap_mean(values: Sequence[float], n: int = 2000, level: float = 0.95, seed: int = 0):
    """(mean, low, high): the percentile bootstrap interval of the mean of ``values``."""
    v = np.asarray(values, float)
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    means = np.random.default_rng(seed).choice(v, (n, len(v)), replace=True).mean(1)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def verdict(lo: float, hi: float, pairs: int) -> str:
    if pairs < MIN_PAIRS or math.isnan(lo):
        return "too few pairs"
    if lo > 0:
        return "pays off"
    if hi < 0:
        return "costs accuracy"
    return "no measurable effect"


def module_verdicts(space, records: Sequence[Any], front: Sequence[Any], score: Callable[[Any], float],
                    costs: Callable[[Any], Dict[str, float]], k: int = 3, seed: int = 0,
                    progress: bool = False, pairs: Optional[List[Dict[str, Any]]] = None) -> pd.DataFrame:
    """One row per module the evaluated (feasible) candidates used; see the module docstring.
    ``pairs``: a list that receives every ablation pair (``PAIR_COLUMNS``), which ``nas.report``
    pools over runs."""
    evaluated = [r for r in records if r.state == "complete" and r.arch is not None]
    if not evaluated:
        return pd.DataFrame(columns=COLUMNS)
    uses = {r.number: space.modules(r.arch) for r in evaluated}
    front_ids = {r.number for r in front}
    keys = sorted({key for u in uses.values() for key in u})
    scored: Dict[str, float] = {r.arch_hash: r.score for r in evaluated}  # a counterpart already evaluated
    lenient = getattr(costs, "lenient", costs)

    def score_of(arch) -> float:
        h = arch.arch_hash
        if h not in scored:
            scored[h] = float(score(arch))
        return scored[h]

    rows: List[Dict[str, Any]] = []
    for role, name in tqdm(keys, desc="module verdicts", unit="module", disable=not progress, leave=False):
        users = sorted((r for r in evaluated if (role, name) in uses[r.number]), key=lambda r: -(r.score or 0))
        on_front = sum(r.number in front_ids for r in users)
        deltas, dflops, dparams, dlat = [], [], [], []
        for r in users[:k]:
            plain_arch = space.without(r.arch, role, name)
            try:
                s2, c2 = score_of(plain_arch), lenient(plain_arch)
            except Exception:  # the counterpart cannot be built or scored: no pair
                continue
            if not math.isfinite(s2):
                continue
            deltas.append(r.score - s2)
            dflops.append((r.flops - c2["flops"]) / 1e6)
            dparams.append(r.params - c2["params"])
            if r.latency_ms is not None and c2.get("latency_ms") is not None:
                dlat.append(r.latency_ms - c2["latency_ms"])
            if pairs is not None:
                pairs.append({"role": role, "module": name, "plain": space.plain(role, name), "trial": r.number,
                              "d_score": deltas[-1], "d_mflops": dflops[-1], "d_params": dparams[-1],
                              "d_latency_ms": (r.latency_ms - c2["latency_ms"]) if r.latency_ms is not None
                              and c2.get("latency_ms") is not None else math.nan})
        mean, lo, hi = bootstrap_mean(deltas, seed=seed)
        share_eval = len(users) / len(evaluated)
        share_front = on_front / max(1, len(front_ids))
        mflops = float(np.mean(dflops)) if dflops else math.nan
        rows.append({"role": role, "module": name, "plain": space.plain(role, name),
                     "evaluated": len(users), "share_evaluated": share_eval, "on_front": on_front,
                     "share_front": share_front, "enrichment": share_front / share_eval if share_eval else math.nan,
                     "pairs": len(deltas), "d_score": mean, "d_score_lo": lo, "d_score_hi": hi, "d_mflops": mflops,
                     "d_params": float(np.mean(dparams)) if dparams else math.nan,
                     "d_latency_ms": float(np.mean(dlat)) if dlat else math.nan,
                     "score_per_mflop": mean / mflops if dflops and abs(mflops) > 1e-9 else math.nan,
                     "verdict": verdict(lo, hi, len(deltas))})
    return pd.DataFrame(rows, columns=COLUMNS)


def verify_pairs(space, records: Sequence[Any], pairs: Sequence[Dict[str, Any]], k: int, splits, ds, seed: int,
                 epochs: int, folder, progress: bool = False) -> Optional[Dict[str, Any]]:
    """``--verify K``: the K ablation pairs of the best-scored candidates trained stand-alone
    (reduced copies, ``epochs`` each: the ground truth's recipe), with the module and with its
    plain counterpart.  A pair agrees where the trained accuracy moved the way the score did.
    Rows go to ``verify.csv`` as they finish."""
    import csv

    from .rank.truth import train_copy

    by_trial = {r.number: r for r in records}
    pick = sorted(pairs, key=lambda p: -(by_trial[p["trial"]].score or 0.0))[:k]
    if not pick:
        return None
    trained: Dict[str, float] = {}

    def acc(arch) -> float:
        if arch.arch_hash not in trained:
            trained[arch.arch_hash] = train_copy(arch, None, splits, epochs, 0.05, seed, ds.input_size,
                                                 ds.num_classes)["val_acc"]
        return trained[arch.arch_hash]

    rows = []
    with open(folder / "verify.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["role", "module", "plain", "trial", "d_score", "acc_with", "acc_without", "d_acc",
                               "agree"])
        w.writeheader()
        for p in tqdm(pick, desc="verify", unit="pair", disable=not progress):
            arch = by_trial[p["trial"]].arch
            a_with, a_without = acc(arch), acc(space.without(arch, p["role"], p["module"]))
            d_acc = a_with - a_without
            row = {**{key: p[key] for key in ("role", "module", "plain", "trial", "d_score")},
                   "acc_with": a_with, "acc_without": a_without, "d_acc": d_acc,
                   "agree": bool(np.sign(d_acc) == np.sign(p["d_score"]))}
            w.writerow(row)
            f.flush()
            rows.append(row)
    return {"k": len(rows), "agree": sum(r["agree"] for r in rows), "epochs": epochs, "file": "verify.csv",
            "note": "stand-alone reduced copies trained briefly: does training move the way the score did?"}
