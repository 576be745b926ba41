"""Does the ground truth rank as a longer training does?  The estimators' benchmarked scores
against a second truth of the same architectures trained longer (another fidelity, one seed).

    python bench/truth_fidelity.py --truth results/benchmarks/ranking/truth_darts_cifar10_subset.csv \
        --second results/benchmarks/ranking/truth_darts_cifar10_subset_e6.csv [--out FILE]

The scores come from the first truth's ranking reports (``<truth>_ranking/report_*.json``, written
by ``bench/ranking.py``): nothing is scored again.  On the architectures both truths hold it
prints the agreement of the two truths (how far the short truth stands in for the longer one),
and each estimator's Kendall tau, Spearman rho and top-quarter overlap against each truth.  An
estimator that ranks well against the short truth only is tuned to short training.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _report import command, emit  # noqa: E402  (bench/ is this script's folder)
from nas.rank.check import BENCHMARKS  # noqa: E402
from nas.rank.evaluate import load_truth, ranking_metrics  # noqa: E402


def fidelity(first: Path, second: Path):
    """(rows, shared architecture count, agreement of the truths): one row per estimator."""
    a, b = load_truth(first), load_truth(second)
    shared = sorted(set(a.arch_hash) & set(b.arch_hash))
    ta = a.set_index("arch_hash").loc[shared, "truth"].to_numpy()
    tb = b.set_index("arch_hash").loc[shared, "truth"].to_numpy()
    agree = ranking_metrics(ta, tb)
    rows = []
    for rep in sorted((first.parent / f"{first.stem}_ranking").glob("report_*.json")):
        d = json.loads(rep.read_text())
        if d.get("n_archs") != len(a):
            continue  # a report over another size of this truth
        for name, e in d["estimators"].items():
            if name not in ("zc:params", "zc:flops"):  # the report's own estimator, with its variant's tag
                name = rep.stem[len("report_"):].replace("zc-", "zc:", 1)
            if any(r["estimator"] == name for r in rows):
                continue
            by_hash = dict(zip(a.arch_hash, e["scores"]))
            s = [by_hash[h] for h in shared]
            rows.append({"estimator": name, "first": ranking_metrics(s, ta), "second": ranking_metrics(s, tb),
                         "report": rep.name})
    rows.sort(key=lambda r: -r["second"]["kendall_tau"])
    return rows, len(shared), agree


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--truth", default=str(ROOT / "results/benchmarks/ranking/truth_darts_cifar10_subset.csv"))
    ap.add_argument("--second", default=str(ROOT / "results/benchmarks/ranking/truth_darts_cifar10_subset_e6.csv"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--what", default=None, help="how the second truth differs, as the runs' trust line says it "
                    "(default: '<epochs> epochs, same architectures')")
    ap.add_argument("--no-write-benchmarks", action="store_true", help="leave nas/rank/benchmarks.json alone")
    a = ap.parse_args()
    first, second = Path(a.truth), Path(a.second)
    rows, n, agree = fidelity(first, second)
    meta = json.loads(second.with_suffix(".json").read_text())["settings"]
    lines = [command(), "",
             f"first truth:  {first.name} (mean of its seeds)",
             f"second truth: {second.name} ({meta['epochs']} epochs, {meta['seeds']} seed(s), same recipe otherwise)",
             f"{n} architectures in both; the two truths agree at Kendall tau {agree['kendall_tau']:.3f}, "
             f"Spearman {agree['spearman_rho']:.3f}, top-25% overlap {agree['top25_overlap']:.2f}", "",
             f"{'estimator':<60}{'tau first':>10}{'tau second':>11}{'rho second':>11}{'top-25% 2nd':>12}"]
    for r in rows:
        lines.append(f"{r['estimator']:<60}{r['first']['kendall_tau']:>10.3f}{r['second']['kendall_tau']:>11.3f}"
                     f"{r['second']['spearman_rho']:>11.3f}{r['second']['top25_overlap']:>12.2f}")
    emit(lines, a.out)
    if not a.no_write_benchmarks:  # what every run's trust line quotes beside the first truth's figure
        allb = json.loads(BENCHMARKS.read_text())
        entry = allb[meta.get("space", "darts")]
        others = [o for o in entry.get("other_truths", []) if o["truth"] != second.name]
        others.append({"truth": second.name, "what": a.what or f"{meta['epochs']} epochs, same architectures",
                       "kendall_tau": {r["estimator"]: round(r["second"]["kendall_tau"], 4) for r in rows}})
        entry["other_truths"] = others
        BENCHMARKS.write_text(json.dumps(allb, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
