"""Ranking report: how well an estimator orders a ground truth's architectures.

``ranking_metrics`` computes, ``plot_ranking`` draws.  Every figure is against the mean over the
truth's seeds of stand-alone *test* accuracy (no estimator sees the test split); the noise ceiling
is the same statistic between two seeds of the truth itself (mean over seed pairs), which no
estimator can be expected to beat.  Scores are cached per estimator fingerprint and architecture,
so a report run cut short, or rerun on a grown truth, re-scores nothing it has.
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats

import space
from space.arch import ArchBase

from .truth import TruthError

BASELINES = ("zc:params", "zc:flops")


def load_truth(path: Path) -> pd.DataFrame:
    """One row per architecture: arch, params, flops, per-seed test accuracies and their mean."""
    if not path.exists():
        raise TruthError(f"no such ground truth: {path}")
    df = pd.read_csv(path)
    need = {"arch_hash", "seed", "test_acc", "arch", "params", "flops"}
    if not need <= set(df.columns):
        raise TruthError(f"{path} is not a ground truth CSV (needs {', '.join(sorted(need))})")
    wide = df.pivot_table(index="arch_hash", columns="seed", values="test_acc", aggfunc="mean")
    wide.columns = [f"test_acc_seed{c}" for c in wide.columns]
    first = df.drop_duplicates("arch_hash").set_index("arch_hash")[["arch", "params", "flops"]]
    out = first.join(wide)
    seeds = [c for c in out.columns if c.startswith("test_acc_seed")]
    out["truth"] = out[seeds].mean(axis=1)
    out["n_seeds"] = out[seeds].notna().sum(axis=1)
    return out.reset_index()


def top_overlap(score: Sequence[float], truth: Sequence[float], frac: float = 0.25) -> float:
    """Share of the true top ``frac`` that the score also puts in its top ``frac``."""
    n = len(truth)
    k = max(1, math.ceil(n * frac))
    mine = set(np.argsort(-np.asarray(score, float), kind="stable")[:k])
    true = set(np.argsort(-np.asarray(truth, float), kind="stable")[:k])
    return len(mine & true) / k


def ranking_metrics(score: Sequence[float], truth: Sequence[float]) -> Dict[str, float]:
    s, t = np.asarray(score, float), np.asarray(truth, float)
    if len(s) < 3 or np.ptp(s) == 0:
        return {"kendall_tau": 0.0 if len(s) >= 3 else math.nan, "spearman_rho": 0.0 if len(s) >= 3 else math.nan,
                "top25_overlap": top_overlap(s, t) if len(s) else math.nan}
    return {"kendall_tau": float(stats.kendalltau(s, t).statistic),
            "spearman_rho": float(stats.spearmanr(s, t).statistic), "top25_overlap": top_overlap(s, t)}


def noise_ceiling(truth: pd.DataFrame) -> Dict[str, float]:
    """Agreement between seeds of the truth, averaged over seed pairs (architectures with both)."""
    seeds = [c for c in truth.columns if c.startswith("test_acc_seed")]
    rows = []
    for a, b in itertools.combinations(seeds, 2):
        both = truth[[a, b]].dropna()
        if len(both) >= 3:
            rows.append(ranking_metrics(both[a], both[b]))
    if not rows:
        return {"kendall_tau": math.nan, "spearman_rho": math.nan, "top25_overlap": math.nan}
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


class ScoreCache:
    """Scores already computed, by (estimator fingerprint, architecture hash); appended as made."""

    COLUMNS = ["estimator", "fingerprint", "arch_hash", "score", "seconds"]

    def __init__(self, path: Path):
        self.path = path
        self.rows: Dict[tuple, Dict[str, Any]] = {}
        if path.exists():
            with open(path, newline="") as f:
                for r in csv.DictReader(f):
                    self.rows[(r["fingerprint"], r["arch_hash"])] = r

    def get(self, fp: str, arch_hash: str) -> Optional[float]:
        r = self.rows.get((fp, arch_hash))
        return None if r is None else float(r["score"])

    def put(self, name: str, fp: str, arch_hash: str, score: float, seconds: float) -> None:
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.COLUMNS)
            if new:
                w.writeheader()
            row = {"estimator": name, "fingerprint": fp, "arch_hash": arch_hash, "score": repr(float(score)),
                   "seconds": round(seconds, 3)}
            w.writerow(row)
        self.rows[(fp, arch_hash)] = row

    def seconds(self, fp: str) -> List[float]:
        return [float(r["seconds"]) for (f, _), r in self.rows.items() if f == fp]


def fingerprint_of(est) -> str:
    return hashlib.sha1(json.dumps(est.fingerprint(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def score_truth(est, archs: List[ArchBase], cache: ScoreCache, progress: bool = True) -> Dict[str, Any]:
    """Scores of ``archs`` (cached ones reused); seconds per candidate include ``prepare``."""
    from tqdm.auto import tqdm

    fp = fingerprint_of(est)
    todo = [i for i, a in enumerate(archs) if cache.get(fp, a.arch_hash) is None]
    prep = 0.0
    if todo:
        t0 = time.time()
        est.prepare()
        prep = time.time() - t0
        if est.scores_as_set:
            t0 = time.time()  # successive halving needs the whole set at once
            scores = est.score_many([archs[i] for i in todo])
            per = (time.time() - t0) / len(todo)
            for i, s in zip(todo, scores):
                cache.put(est.name, fp, archs[i].arch_hash, s, per + prep / len(todo))
        else:
            for i in tqdm(todo, desc=est.name, unit="arch", disable=not progress, leave=False):
                t0 = time.time()
                s = est.score(archs[i])
                cache.put(est.name, fp, archs[i].arch_hash, s, time.time() - t0 + prep / len(todo))
    scores = [cache.get(fp, a.arch_hash) for a in archs]
    secs = cache.seconds(fp)
    return {"scores": scores, "seconds_per_candidate": float(np.mean(secs)) if secs else math.nan}


def evaluate(truth: pd.DataFrame, estimators: Dict[str, Any], cache: ScoreCache, progress: bool = True,
             pending: Sequence[ArchBase] = ()) -> Dict[str, Any]:
    """Metrics of each estimator (and of the baselines) against the truth; computed, not drawn.
    ``pending``: architectures the truth will hold, scored (into the cache) first."""
    archs = [space.ArchBase.from_json(a) for a in truth["arch"]]
    t = truth["truth"].to_numpy()
    out: Dict[str, Any] = {"n_archs": len(archs), "noise_ceiling": noise_ceiling(truth), "estimators": {}}
    known = {a.arch_hash for a in archs}
    for name, est in estimators.items():
        res = score_truth(est, archs + [a for a in pending if a.arch_hash not in known], cache, progress)
        res["scores"] = res["scores"][:len(archs)]
        out["estimators"][name] = {**ranking_metrics(res["scores"], t), "seconds_per_candidate":
                                   res["seconds_per_candidate"], "scores": res["scores"]}
    return out


def format_report(res: Dict[str, Any], truth_path: str) -> str:
    nc = res["noise_ceiling"]
    lines = [f"ground truth: {truth_path} ({res['n_archs']} architectures; truth = mean stand-alone test "
             f"accuracy over seeds)",
             f"{'estimator':<22} {'kendall':>8} {'spearman':>9} {'top-25%':>8} {'s/cand':>8}"]
    rows = sorted(res["estimators"].items(), key=lambda kv: -np.nan_to_num(kv[1]["kendall_tau"], nan=-9))
    for name, m in rows:
        lines.append(f"{name:<22} {m['kendall_tau']:>8.3f} {m['spearman_rho']:>9.3f} {m['top25_overlap']:>8.2f} "
                     f"{m['seconds_per_candidate']:>8.2f}")
    lines.append(f"{'noise ceiling (seeds)':<22} {nc['kendall_tau']:>8.3f} {nc['spearman_rho']:>9.3f} "
                 f"{nc['top25_overlap']:>8.2f}")
    return "\n".join(lines)


def plot_ranking(res: Dict[str, Any], truth: pd.DataFrame, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["estimators"])
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.1 * rows), squeeze=False)
    t = truth["truth"].to_numpy() * 100
    for ax, name in zip(axes.flat, names):
        m = res["estimators"][name]
        ax.scatter(m["scores"], t, s=16, c="tab:blue")
        ax.set_title(f"{name}: tau {m['kendall_tau']:.2f}", fontsize=9)
        ax.set_xlabel("score", fontsize=8)
        ax.set_ylabel("stand-alone test acc. (%)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    nc = res["noise_ceiling"]["kendall_tau"]
    fig.suptitle(f"{title}  (noise ceiling tau {nc:.2f})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
