"""Every registered estimator against a committed ground truth, in one table; writes the figures a
run reports about its own estimator (``nas/rank/benchmarks.json``).

    python bench/ranking.py [--truth results/benchmarks/ranking/truth_darts_cifar10_subset.csv]
                            [--skip train] [--out results/benchmarks/ranking_darts_cifar10_subset.txt]

Each row is one ``python -m nas.rank evaluate`` (scores cached beside the truth, so a run cut short
resumes where it stopped).  ``VARIANTS`` adds supernet settings measured beside the defaults.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from nas.estimators import ESTIMATORS  # noqa: E402
from nas.rank.__main__ import main as rank_main  # noqa: E402
from nas.rank.check import BENCHMARKS  # noqa: E402

# (estimator, estimator options, space options, supernet epochs): what the supernet was tried with
VARIANTS = [
    ("supernet", {"sampling": "fair"}, {"supernet_channels": 8, "supernet_cells": 5}, 12),
]


def _args(name, opts, space_opts, epochs, truth, threads):
    a = ["evaluate", str(truth), "--estimator", name, "--quiet", "--threads", str(threads), "--epochs", str(epochs)]
    for k, v in opts.items():
        a += ["--estimator-opt", f"{k}={v}"]
    for k, v in space_opts.items():
        a += ["--space-opt", f"{k}={v}"]
    return a


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--truth", default=str(ROOT / "results/benchmarks/ranking/truth_darts_cifar10_subset.csv"))
    ap.add_argument("--skip", default="", help="comma-separated estimators left out at their defaults "
                    "('variants' leaves out VARIANTS too); the output lists them")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=6, help="supernet epochs of the default row (search.py's)")
    ap.add_argument("--out", default=None, help="write the table here, headed by this command")
    ap.add_argument("--no-write-benchmarks", action="store_true", help="leave nas/rank/benchmarks.json alone")
    a = ap.parse_args()
    truth = Path(a.truth)
    skip = {s for s in a.skip.split(",") if s}
    runs = [(n, {}, {}, a.epochs) for n in ESTIMATORS.names() if n not in skip] + \
           ([] if "variants" in skip else VARIANTS)
    rows, common = {}, None
    for name, opts, sopts, epochs in runs:
        import io
        from contextlib import redirect_stdout

        buf = io.StringIO()
        with redirect_stdout(buf):
            rc = rank_main(_args(name, opts, sopts, epochs, truth, a.threads))
        if rc != 0:
            print(f"{name}: evaluate failed (exit {rc})", file=sys.stderr)
            return rc
        rep_line = [l for l in buf.getvalue().splitlines() if l.startswith("report and scatter plot:")][0]
        rep = json.loads(Path(rep_line.split(": ", 1)[1].split(",")[0]).read_text())
        common = rep
        label = next(k for k in rep["estimators"] if k.split("[")[0] == name)
        m = rep["estimators"][label]
        rows[label] = {**{k: m[k] for k in ("kendall_tau", "spearman_rho", "top25_overlap", "seconds_per_candidate")},
                       "estimator": name, "options": opts, "space_options": sopts, "epochs": epochs}
        for base in ("zc:params", "zc:flops"):
            b = rep["estimators"][base]
            rows.setdefault(base, {**{k: b[k] for k in ("kendall_tau", "spearman_rho", "top25_overlap",
                                                         "seconds_per_candidate")},
                                   "estimator": base, "options": {}, "space_options": {}, "epochs": None})
    nc = common["noise_ceiling"]
    lines = []
    if a.out:
        lines.append("$ python bench/ranking.py " + " ".join(shlex.quote(x) for x in sys.argv[1:]))
        lines.append("")
    lines.append(f"ground truth: {truth.relative_to(ROOT) if truth.is_relative_to(ROOT) else truth} "
                 f"({common['n_archs']} architectures, mean stand-alone test accuracy over seeds)")
    if skip:
        lines.append(f"not run: {', '.join(sorted(skip))} (see the README's ranking results)")
    lines.append(f"{'estimator':<58} {'kendall':>8} {'spearman':>9} {'top-25%':>8} {'s/cand':>8}")
    for label, m in sorted(rows.items(), key=lambda kv: -kv[1]["kendall_tau"]):
        lines.append(f"{label:<58} {m['kendall_tau']:>8.3f} {m['spearman_rho']:>9.3f} {m['top25_overlap']:>8.2f} "
                     f"{m['seconds_per_candidate']:>8.2f}")
    lines.append(f"{'noise ceiling (seed 0 vs seed 1 of the truth)':<58} {nc['kendall_tau']:>8.3f} "
                 f"{nc['spearman_rho']:>9.3f} {nc['top25_overlap']:>8.2f}")
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    if not a.no_write_benchmarks:
        meta = json.loads(truth.with_suffix(".json").read_text())["settings"]
        data = meta.get("data", {}).get("name", "?")
        entry = {"truth": f"{truth.name}, {data}", "n_archs": common["n_archs"], "noise_ceiling": nc["kendall_tau"],
                 "estimators": {}}
        from nas.rank.truth import make_space

        for label, m in rows.items():  # the plain (option-less) row of an estimator is what a run matches
            key = m["estimator"] if not m["options"] and not m["space_options"] else label
            sopts = m["space_options"]
            if m["estimator"] == "supernet":  # the supernet size it had, so other sizes do not match
                st = make_space(meta.get("space", "darts"), {**meta.get("space_options", {}), **sopts}).settings()
                sopts = {k: v for k, v in st.items() if k.startswith("supernet_")}
            entry["estimators"][key] = {"kendall_tau": round(m["kendall_tau"], 4),
                                        "spearman_rho": round(m["spearman_rho"], 4),
                                        "top25_overlap": round(m["top25_overlap"], 4),
                                        "options": m["options"], "space_options": sopts, "epochs": m["epochs"]}
        allb = json.loads(BENCHMARKS.read_text()) if BENCHMARKS.exists() else {}
        allb[meta.get("space", "darts")] = entry
        BENCHMARKS.write_text(json.dumps(allb, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
