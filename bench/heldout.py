"""Do the rankings measured on one ground truth hold on other architectures?  Each estimator's
Kendall tau against the committed truth and against a held-out truth of *other* random in-budget
architectures (the same recipe, another ``--sample-seed``), and the same for its negation.

    python bench/heldout.py --truth results/benchmarks/ranking/truth_darts_cifar10_subset.csv \
        --heldout results/benchmarks/ranking/truth_darts_cifar10_subset_s1.csv [--out FILE]

The scores come from each truth's ranking reports (``<truth>_ranking/report_*.json``, written by
``python -m nas.rank evaluate``): nothing is scored again.  The negations answer one question the
first truth raised: gradient proxies (Zen, SNIP, grad_norm, synflow) ranked strongly *against* it.
Flipping their sign was a hypothesis formed on that truth; the held-out truth tests it.  A
negation's tau is minus the estimator's, so it needs no scoring of its own.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _report import command, emit  # noqa: E402  (bench/ is this script's folder)
from nas.rank.check import BENCHMARKS  # noqa: E402
from nas.rank.evaluate import load_truth, noise_ceiling, ranking_metrics  # noqa: E402


def taus(truth: Path) -> Dict[str, Dict[str, float]]:
    """Estimator name -> its figures against ``truth``, from the reports over the whole truth."""
    n = len(load_truth(truth))
    out: Dict[str, Dict[str, float]] = {}
    for rep in sorted((truth.parent / f"{truth.stem}_ranking").glob("report_*.json")):
        d = json.loads(rep.read_text())
        if d.get("n_archs") != n:
            continue
        for name, e in d["estimators"].items():
            if name not in ("zc:params", "zc:flops"):
                name = rep.stem[len("report_"):].replace("zc-", "zc:", 1)
            out.setdefault(name, e)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--truth", default=str(ROOT / "results/benchmarks/ranking/truth_darts_cifar10_subset.csv"))
    ap.add_argument("--heldout", default=str(ROOT / "results/benchmarks/ranking/truth_darts_cifar10_subset_s1.csv"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-write-benchmarks", action="store_true", help="leave nas/rank/benchmarks.json alone")
    a = ap.parse_args()
    first, held = Path(a.truth), Path(a.heldout)
    t1, t2 = taus(first), taus(held)
    d1, d2 = load_truth(first), load_truth(held)
    shared = set(d1.arch_hash) & set(d2.arch_hash)
    lines = [command(), "",
             f"committed truth: {first.name}, {len(d1)} architectures, seed-to-seed ceiling {noise_ceiling(d1)['kendall_tau']:.2f}",
             f"held-out truth:  {held.name}, {len(d2)} other architectures ({len(shared)} shared), "
             f"ceiling {noise_ceiling(d2)['kendall_tau']:.2f}", "",
             f"{'estimator':<28}{'tau committed':>14}{'tau held-out':>13}{'pooled':>8}"
             f"{'  negated: committed':>21}{'held-out':>10}"]
    names = [n for n in t1 if n in t2]
    truth = list(d1.truth) + list(d2.truth)  # one recipe and data: the accuracies share a scale
    pooled = {n: ranking_metrics(list(t1[n]["scores"]) + list(t2[n]["scores"]), truth)["kendall_tau"]
              for n in names if isinstance(t1[n].get("scores"), list) and isinstance(t2[n].get("scores"), list)}
    for name in sorted(names, key=lambda n: -t2[n]["kendall_tau"]):
        k1, k2 = t1[name]["kendall_tau"], t2[name]["kendall_tau"]
        pool = f"{pooled[name]:>8.3f}" if name in pooled else f"{'-':>8}"
        lines.append(f"{name:<28}{k1:>14.3f}{k2:>13.3f}{pool}{-k1:>21.3f}{-k2:>10.3f}")
    only = sorted(set(t1) - set(t2))
    if only:
        lines += ["", f"not scored on the held-out truth: {', '.join(only)}"]
    p1, p2 = t1.get("zc:params", {}).get("kendall_tau"), t2.get("zc:params", {}).get("kendall_tau")
    best = max(names, key=lambda n: t2[n]["kendall_tau"]) if names else None
    if best is not None and p2 is not None:
        ok = t2[best]["kendall_tau"] >= 0.5 and t2[best]["kendall_tau"] >= p2 + 0.1
        lines += ["", f"parameter count: {p1:.3f} committed, {p2:.3f} held-out; best held-out estimator {best} "
                      f"{t2[best]['kendall_tau']:.3f}: the goal (tau >= 0.5 and >= params + 0.1) is "
                      f"{'met' if ok else 'not met'} there"]
    emit(lines, a.out)
    if not a.no_write_benchmarks:  # what every run's trust line quotes beside the committed truth's figure
        allb = json.loads(BENCHMARKS.read_text())
        entry = allb[json.loads(held.with_suffix(".json").read_text())["settings"]["space"]]
        others = [o for o in entry.get("other_truths", []) if o["truth"] != held.name]
        seed = json.loads(held.with_suffix(".json").read_text())["settings"].get("sample_seed")
        others.append({"truth": held.name, "what": f"{len(d2)} other architectures (held out, sample seed {seed})",
                       "kendall_tau": {n: round(t2[n]["kendall_tau"], 4) for n in names}})
        entry["other_truths"] = others
        BENCHMARKS.write_text(json.dumps(allb, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
