"""Search efficiency: the hypervolume of the (score up, FLOPs down) front that NSGA-II, TPE and
random search find in the default space under the default budget, at equal numbers of
evaluations, over seeds.

    python bench/samplers.py [--data PATH] [--trials 64] [--seeds 3] [--estimator zc:synflow] [--out FILE]

Every sampler proposes through the search's own drivers and Problem (over-budget candidates are
rejected unevaluated, as in a search).  Scores come from a cheap estimator (``zc:synflow`` by
default: about a second a candidate, deterministic) and are cached by architecture in
``results/benchmarks/samplers/scores_<estimator>.csv``, so a run cut short resumes, and the
samplers are compared on one fixed score landscape.  What is compared is the search, not the
estimator's ranking (see bench/ranking.py for that).  Hypervolume: Optuna's own implementation
(``optuna._hypervolume``, pinned by tests/test_foreign_internals.py), in normalised units: score
min-max over all runs' feasible candidates, FLOPs over the budget; the reference point is the
worst corner (lowest score, FLOPs at the budget).
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _report import command, emit  # noqa: E402  (bench/ is this script's folder)

import numpy as np  # noqa: E402

from nas import drivers, estimators  # noqa: E402
from nas.budget import parse_budget  # noqa: E402
from nas.costs import CostModel  # noqa: E402
from nas.data import Splits, load_dataset  # noqa: E402
from nas.problem import Objective, Problem  # noqa: E402
import space  # noqa: E402

SAMPLERS = [("optuna", "nsga2"), ("optuna", "tpe"), ("random", "random")]


class CachedScore:
    """Scores by architecture hash, appended to a CSV as they are computed."""

    def __init__(self, est, path: Path):
        self.est, self.path, self.scores = est, path, {}
        if path.exists():
            with open(path, newline="") as f:
                self.scores = {r["arch_hash"]: float(r["score"]) for r in csv.DictReader(f)}

    def __call__(self, arch) -> float:
        h = arch.arch_hash
        if h not in self.scores:
            self.scores[h] = float(self.est.score(arch))
            new = not self.path.exists()
            with open(self.path, "a", newline="") as f:
                w = csv.DictWriter(f, ["arch_hash", "score"])
                if new:
                    w.writeheader()
                w.writerow({"arch_hash": h, "score": self.scores[h]})
        return self.scores[h]


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    from optuna._hypervolume import compute_hypervolume

    inside = points[np.all(points < reference, axis=1)]
    return float(compute_hypervolume(inside, reference)) if len(inside) else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="as search.py --data (default: $NAS_DATA, else digits)")
    ap.add_argument("--budget", default="300MFLOPs")
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--estimator", default="zc:synflow")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    ds = load_dataset(a.data)
    sp = space.SPACES["darts"](num_classes=ds.num_classes)
    ctx = estimators.Context(sp, Splits.make(ds, 64, 0.2, 0, 4), ds.num_classes, ds.input_size, progress=False)
    est = estimators.make(a.estimator, ctx)
    est.prepare()
    cache_dir = ROOT / "results/benchmarks/samplers"
    cache_dir.mkdir(parents=True, exist_ok=True)
    score = CachedScore(est, cache_dir / f"scores_{a.estimator.replace(':', '-')}_{ds.name}.csv")
    constraints = parse_budget(a.budget)
    limit = next(c.limit for c in constraints if c.kind == "flops")
    objectives = [Objective("score", True), Objective("flops", False)]
    runs = {}
    for drv, sampler in SAMPLERS:
        for seed in range(a.seeds):
            t0 = time.time()
            d = drivers.get(drv, storage=None, study_name=f"{sampler}-{seed}", sampler=sampler, population=None)
            recs = []
            d.run(Problem(sp, constraints, CostModel(), score, objectives), a.trials, seed, recs.append)
            runs[sampler, seed] = [(r.score, r.flops) for r in recs if r.state == "complete"]
            print(f"{sampler} seed {seed}: {len(runs[sampler, seed])} of {a.trials} within budget, "
                  f"{time.time() - t0:.0f} s", file=sys.stderr)
    # one fixed frame for every run: the score axis from the 5th percentile of all feasible
    # candidates' scores (the minimum is one outlier, and would decide most of the volume) to the
    # best; the reference point is that low score at the budget
    allscores = np.array([s for pts in runs.values() for s, _ in pts])
    lo, hi = float(np.quantile(allscores, 0.05)), float(allscores.max())
    ref = np.array([1.0, 1.0])  # minimise (1 - normalised score, FLOPs / budget)
    hv = {k: hypervolume(np.array([[1 - (s - lo) / (hi - lo), f / limit] for s, f in pts]), ref)
          for k, pts in runs.items()}
    feasible = {k: len(pts) / a.trials for k, pts in runs.items()}
    lines = [command(), "",
             f"darts space (default candidates), budget {a.budget} (1 FLOP = 1 multiply-add, fvcore), "
             f"{a.trials} trials per run, seeds 0..{a.seeds - 1}, scores: {a.estimator} on {ds.name} "
             f"(cached per architecture), hypervolume of (score up, FLOPs down): score from the 5th percentile "
             f"of all runs' feasible scores (0) to the best (1), FLOPs over the budget; reference (0, budget)", "",
             f"{'sampler':<10}{'hypervolume':>12}{'std':>8}   {'per seed':<44}{'vs random':>10}{'within budget':>15}"]
    rand = statistics.mean(hv["random", s] for s in range(a.seeds))
    for _, sampler in SAMPLERS:
        vals = [hv[sampler, s] for s in range(a.seeds)]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        share = statistics.mean(feasible[sampler, s] for s in range(a.seeds))
        lines.append(f"{sampler:<10}{statistics.mean(vals):>12.4f}{sd:>8.4f}   "
                     f"{' '.join(f'{v:.4f}' for v in vals):<44}{statistics.mean(vals) / rand:>9.2f}x{share:>14.0%}")
    emit(lines, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
