"""Outcome: does the default search's best architecture train better than the hand-designed
baseline at the same budget?  Both trained stand-alone with one recipe, several seeds each.

    python bench/outcome.py [--run results/examples/darts-cifar10_subset-300MFLOPs] [--data PATH]
                            [--seeds 2] [--epochs 3] [--out results/benchmarks/outcome_darts_300MFLOPs]

Candidates: the run's ``best.json`` (the search's pick, by its estimator) and each of the space's
``BASELINES`` presets scaled to the run's budget by their family's rule (as ``baselines.csv``).
The recipe is the ground truth's (``nas.rank.truth``): the reduced copy (DARTS: 5 cells of 8
channels) trained ``--epochs`` epochs at the data's resolution, because the deployed networks
train at 16-25 images/s on 2 cores.  The reduced copy keeps the cells and drops the scale, so
this compares the searched cell with the hand-designed one at one size, not the networks at the
budget.  One row per finished training is appended to ``<out>.csv`` (a run cut short resumes);
the summary goes to ``<out>.txt``.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _report import command, emit  # noqa: E402  (bench/ is this script's folder)

import space  # noqa: E402
from nas.baselines import fit_to_budget  # noqa: E402
from nas.budget import parse_budget  # noqa: E402
from nas.costs import CostModel  # noqa: E402
from nas.data import Splits, load_dataset  # noqa: E402
from nas.rank.truth import train_copy  # noqa: E402

FIELDS = ["candidate", "seed", "arch_hash", "flops", "params", "val_acc", "test_acc", "seconds", "arch"]


def candidates(run: Path):
    cfg = json.loads((run / "config.json").read_text())
    c = cfg["config"]
    opts = {k: v for k, v in cfg["space"].items() if k != "space"}
    sp = space.SPACES[c["space"]](**opts)
    costs = CostModel()
    best = space.ArchBase.from_dict(json.loads((run / "best.json").read_text())["arch"])
    out = [("search best", best, costs(best))]
    for name in sp.BASELINES:
        found = fit_to_budget(sp, sp.presets[name], parse_budget(c["budget"]), costs)
        if found is not None:
            arch, factor, cost = found
            out.append((f"{name} x{factor:.2f}" if factor != 1 else name, arch, cost))
    return out, c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "results/examples/darts-cifar10_subset-300MFLOPs"))
    ap.add_argument("--data", default=None, help="default: the run's data")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "results/benchmarks/outcome_darts_300MFLOPs"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the ground truth used 1)")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    cands, c = candidates(Path(a.run))
    ds = load_dataset(a.data or c["data"], seed=0)
    splits = Splits.make(ds, 64, 0.2, 0, 1)
    rows_path, text_path = Path(a.out + ".csv"), Path(a.out + ".txt")
    done = []
    if rows_path.exists():
        with open(rows_path, newline="") as f:
            done = list(csv.DictReader(f))
    have = {(r["candidate"], int(r["seed"])) for r in done}
    for name, arch, cost in cands:
        for seed in range(a.seeds):
            if (name, seed) in have:
                continue
            res = train_copy(arch, None, splits, a.epochs, 0.05, seed, ds.input_size, ds.num_classes)
            row = {"candidate": name, "seed": seed, "arch_hash": arch.arch_hash, "flops": int(cost["flops"]),
                   "params": int(cost["params"]), "val_acc": res["val_acc"], "test_acc": res["test_acc"],
                   "seconds": res["seconds"], "arch": arch.to_json(indent=None)}
            new = not rows_path.exists()
            with open(rows_path, "a", newline="") as f:
                w = csv.DictWriter(f, FIELDS)
                if new:
                    w.writeheader()
                w.writerow(row)
            done.append({k: str(v) for k, v in row.items()})
            print(f"{name} seed {seed}: test {res['test_acc']:.3f} ({res['seconds']:.0f} s)", file=sys.stderr)
    lines = [command(), "",
             f"run: {Path(a.run).resolve().relative_to(ROOT) if Path(a.run).resolve().is_relative_to(ROOT) else a.run} (budget {c['budget']}, estimator {c['estimator']}); data: {ds.name}; recipe: the "
             f"ground truth's (reduced copy, {a.epochs} epochs, lr 0.05), seeds 0..{a.seeds - 1}", "",
             f"{'candidate':<22}{'deployed MFLOPs':>16}{'params':>10}{'test acc mean':>15}{'std':>7}  per seed"]
    for name, arch, cost in cands:
        accs = [float(r["test_acc"]) for r in done if r["candidate"] == name]
        if not accs:
            continue
        sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        lines.append(f"{name:<22}{cost['flops'] / 1e6:>16.1f}{cost['params'] / 1e6:>9.2f}M{statistics.mean(accs):>15.4f}"
                     f"{sd:>7.4f}  {' '.join(f'{v:.4f}' for v in accs)}")
    emit(lines, str(text_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
