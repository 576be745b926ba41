"""How far a run's ranking can be trusted: the estimator's benchmarked figures for the space
(``benchmarks.json``, written by ``bench/ranking.py``) and, with ``--rank-check K``, a check on the
run's own data: the top-K and K random evaluated candidates trained stand-alone briefly."""
from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .evaluate import ranking_metrics

BENCHMARKS = Path(__file__).with_name("benchmarks.json")
DIGITS_NOTE = ("this is the offline fallback (scikit-learn's 1,797 8x8 digits, upsampled): architectures do differ "
               "on it (16 random cells trained stand-alone: 31-97% test accuracy, seed-to-seed Kendall tau 0.81) and tse "
               "ranks them (tau 0.77, where parameter count gets -0.27 and the zero-cost proxies -0.38 to -0.55: "
               "results/benchmarks/ranking_darts_digits.txt), but what pays off on 16x16 digits says little about natural "
               "images: it shows the tool working; give --data (e.g. NAS_DATA=../shared/data/cifar10_subset.npz) for that")


def benchmarked(space: str, estimator: str, options: Optional[Dict[str, Any]] = None,
                settings: Optional[Dict[str, Any]] = None, epochs: Optional[int] = None) -> Optional[Dict[str, Any]]:
    """The committed ranking benchmark of ``estimator`` run as this run runs it (same options, the
    benchmarked space settings, and for the supernet the same epochs), or None where none exists."""
    if not BENCHMARKS.exists():
        return None
    entry = json.loads(BENCHMARKS.read_text()).get(space, {})
    settings = settings or {}

    def same(b: Dict[str, Any]) -> bool:
        return (b.get("options", {}) == (options or {})
                and all(settings.get(k) == v for k, v in b.get("space_options", {}).items())
                and (estimator != "supernet" or b.get("epochs") == epochs))

    found = next((b for k, b in entry.get("estimators", {}).items()
                  if k.split("[")[0] == estimator and same(b)), None)
    if found is None:
        return None
    key = next(k for k, b in entry["estimators"].items() if b is found)
    others = [{"what": o["what"], "kendall_tau": o["kendall_tau"][key],
               "params_tau": o["kendall_tau"].get("zc:params")}
              for o in entry.get("other_truths", []) if key in o.get("kendall_tau", {})]
    return {**found, "params_tau": entry["estimators"].get("zc:params", {}).get("kendall_tau"),
            "noise_ceiling": entry.get("noise_ceiling"), "truth": entry.get("truth"), "n_archs": entry.get("n_archs"),
            "other_truths": others}


def trust_line(b: Optional[Dict[str, Any]], estimator: str, space: str) -> str:
    if b is None:
        return f"no ranking benchmark of {estimator} on the {space} space exists: its ranking is unmeasured"
    tau, pt, nc = b["kendall_tau"], b.get("params_tau"), b.get("noise_ceiling")
    others = [o for o in b.get("other_truths", []) if o.get("params_tau") is not None]
    # 0.1 above counting parameters is the ranking issue's bar; it must hold on every truth measured
    short = [o["what"] for o in others if o["kendall_tau"] < o["params_tau"] + 0.1]
    if pt is not None and tau < pt + 0.1:
        verdict = "no better than counting parameters"
    elif short:
        verdict = f"better than counting parameters on the benchmark, but not on the truth of {' or '.join(short)}"
    else:
        verdict = "better than counting parameters"
    # the ranking issue's goal is 0.5 on every truth: say plainly on which it is not met
    below = [w for w, t in [("the benchmark", tau)] + [(f"the truth of {o['what']}", o["kendall_tau"])
                                                       for o in others] if t < 0.5]
    if min([tau] + [o["kendall_tau"] for o in others]) < 0.3:
        verdict += ", and far from reliable (goal 0.5): read the front's score axis as a rough order"
    elif below:
        verdict += (f", but short of the goal (0.5) on {' and on '.join(below)}: read candidates whose scores "
                    f"are close as ties")
    also = "".join(f"; against a truth of {o['what']}: {o['kendall_tau']:.2f} (parameter count "
                   f"{o['params_tau']:.2f})" for o in others)
    return (f"benchmarked Kendall tau {tau:.2f} against stand-alone training on {b.get('n_archs')} architectures "
            f"({b.get('truth')}); parameter count {pt:.2f}, seed-to-seed ceiling {nc:.2f}{also}: {verdict}")


def rank_check(records: Sequence[Any], k: int, splits, ds, seed: int, epochs: int, folder: Path,
               progress: bool = True) -> Optional[Dict[str, Any]]:
    """Train the K best-scored and K random other evaluated candidates (reduced copies, ``epochs``
    each, the ground truth's recipe) and compare their validation accuracy with the scores.
    Rows go to ``rank_check.csv`` as they finish."""
    from tqdm.auto import tqdm

    from .truth import train_copy

    uniq: Dict[str, Any] = {}
    for r in records:
        if r.feasible and r.score is not None:
            uniq.setdefault(r.arch_hash, r)
    ranked = sorted(uniq.values(), key=lambda r: -r.score)
    if len(ranked) < 3:
        return None
    top = ranked[:k]
    rest = ranked[k:]
    pick = top + random.Random(seed).sample(rest, min(k, len(rest)))
    path = folder / "rank_check.csv"
    rows: List[Dict[str, Any]] = []
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["trial", "arch_hash", "group", "score", "trained_val_acc", "seconds"])
        w.writeheader()
        for i, r in enumerate(tqdm(pick, desc="rank check", unit="training", disable=not progress)):
            res = train_copy(r.arch, None, splits, epochs, 0.05, seed,
                             ds.input_size, ds.num_classes)
            row = {"trial": r.number, "arch_hash": r.arch_hash, "group": "top" if i < len(top) else "random",
                   "score": r.score, "trained_val_acc": res["val_acc"], "seconds": res["seconds"]}
            w.writerow(row)
            f.flush()
            rows.append(row)
    m = ranking_metrics([r["score"] for r in rows], [r["trained_val_acc"] for r in rows])
    return {**m, "k": k, "epochs": epochs, "n": len(rows), "file": path.name,
            "note": "stand-alone reduced copies trained briefly on this run's data: a noisy but independent check"}


def check_line(c: Optional[Dict[str, Any]]) -> str:
    if c is None:
        return "rank check: fewer than 3 evaluated candidates, nothing to check"
    tau = c["kendall_tau"]
    return (f"rank check: Kendall tau {tau:.2f} between the estimator and {c['n']} candidates trained "
            f"stand-alone for {c['epochs']} epoch(s) on this data ({c['file']})" if not math.isnan(tau) else
            "rank check: undefined (constant scores)")


def quality_warnings(history, records: Sequence[Any], num_classes: int, data: str = "") -> List[str]:
    """Say so when the supernet's ranking is close to noise, rather than let a user trust it."""
    out = []
    chance = 1.0 / max(num_classes, 1)
    if history and history[-1]["train_acc"] < 2 * chance:
        out.append(f"the supernet reached only {history[-1]['train_acc']:.0%} training accuracy (chance "
                   f"{chance:.0%}): its ranking of candidates is close to noise; raise --epochs (each candidate op "
                   f"of an edge is trained only when sampled, so more ops need more epochs) or use --device cuda")
    accs = {r.score for r in records if r.score is not None}
    if len(accs) == 1 and sum(r.score is not None for r in records) > 1:
        out.append("every scored candidate got the same score: the estimator cannot tell them apart "
                   "(a supernet that predicts one class does this)")
    if data == "digits":
        out.append(DIGITS_NOTE)
    return out
