"""Do a run's module verdicts agree with training?  Its ablation pairs, trained stand-alone.

    python bench/verdict_training.py --run results/examples/darts-cifar10_subset-300MFLOPs
        [--which pays-off] [--per-module 1] [--seeds 2] [--epochs 3] [--shard 0/1] [--out FILE]

A run's ``modules.csv`` gives each module a verdict from its estimator's scores of paired
candidates (``module_pairs.csv``: a candidate, and the same candidate with every use of the module
replaced by its plain counterpart).  This script trains both sides of the best-scored
``--per-module`` pairs of every module whose verdict is ``--which`` (``pays-off``,
``costs-accuracy`` or ``all``) as the ground truth trains (reduced copy, ``--epochs`` epochs, lr
0.05, one thread, seeds 0..``--seeds``-1) on the run's data, and prints per pair the score's change
beside the change in trained test accuracy (mean over seeds); then in how many pairs the two
agree in sign, and the verdict rule applied to the accuracy changes (95% bootstrap interval).
Trainings are appended to ``<out>.csv`` as they finish, so a cut run resumes; ``--shard i/n``
trains every n-th pending training, so n one-thread processes share the work.  The report is
written by whichever process finds nothing left to train.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _report import command, emit  # noqa: E402

import space  # noqa: E402
from nas.data import Splits, load_dataset  # noqa: E402
from nas.rank.truth import train_copy  # noqa: E402
from nas.verdicts import bootstrap_mean, verdict  # noqa: E402


class Trained:
    """Test accuracies of finished trainings by (architecture hash, seed, epochs), one CSV row each,
    appended as they finish (one write per row, so processes can share the file)."""

    HEADER = "arch_hash,seed,epochs,test_acc\n"

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "x") as f:  # exclusive: one header, whichever process comes first
                f.write(self.HEADER)
        except FileExistsError:
            pass

    def load(self) -> Dict[Tuple[str, int, int], float]:
        with open(self.path, newline="") as f:
            return {(r["arch_hash"], int(r["seed"]), int(r["epochs"])): float(r["test_acc"])
                    for r in csv.DictReader(f) if r.get("test_acc")}

    def add(self, key: Tuple[str, int, int], acc: float) -> None:
        with open(self.path, "a") as f:
            f.write(f"{key[0]},{key[1]},{key[2]},{acc!r}\n")


def train_pending(trained: Trained, archs: Sequence, seeds: int, epochs: int, train: Callable,
                  shard: Tuple[int, int] = (0, 1)) -> int:
    """Train this shard's share of what ``trained`` lacks; returns how many trainings remain
    unfinished (other shards' included)."""
    done = trained.load()
    todo = list(dict.fromkeys((a.arch_hash, s) for a in archs for s in range(seeds)))
    todo = [k for k in todo if (k[0], k[1], epochs) not in done]
    by_hash = {a.arch_hash: a for a in archs}
    for h, seed in todo[shard[0]::shard[1]]:
        acc = train(by_hash[h], seed)
        trained.add((h, seed, epochs), acc)
        print(f"{h} seed {seed}: test {acc:.3f}", file=sys.stderr)
    done = trained.load()
    return sum((h, s, epochs) not in done for h, s in todo)


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def pair_report(pairs: Sequence[Dict], accs: Dict[Tuple[str, int, int], float], seeds: int, epochs: int,
                verdicts: Dict[str, str]) -> List[str]:
    """Per pair: the score's change and the trained accuracy's (with minus without); per module and
    in all: sign agreement and the verdict rule on the accuracy changes."""
    lines = [f"{'module':<14} {'trial':>5} {'d_score':>8} {'acc with':>8} {'without':>8} {'d_acc':>7} {'agree':>5}  per seed"]
    by_module: Dict[str, List[float]] = {}
    agree = 0
    for p in pairs:
        w = [accs[(p["with"].arch_hash, s, epochs)] for s in range(seeds)]
        wo = [accs[(p["without"].arch_hash, s, epochs)] for s in range(seeds)]
        d = statistics.mean(w) - statistics.mean(wo)
        same = _sign(d) == _sign(p["d_score"])  # as --verify counts: a zero change agrees only with zero
        agree += same
        by_module.setdefault(p["module"], []).append(d)
        lines.append(f"{p['module']:<14} {p['trial']:>5} {p['d_score']:>8.3f} {statistics.mean(w):>8.3f} "
                     f"{statistics.mean(wo):>8.3f} {d:>+7.3f} {'yes' if same else 'no':>5}  "
                     + " ".join(f"{x - y:+.3f}" for x, y in zip(w, wo)))
    lines.append("")
    for module, ds in by_module.items():
        mean, lo, hi = bootstrap_mean(ds)
        lines.append(f"{module}: the run's estimator says {verdicts.get(module, '?')}; training says "
                     f"{verdict(lo, hi, len(ds))} (d_acc {mean:+.3f}, 95% {lo:+.3f}..{hi:+.3f}, {len(ds)} pairs)")
    every = [d for ds in by_module.values() for d in ds]
    if len(by_module) > 1:
        mean, lo, hi = bootstrap_mean(every)
        lines.append(f"all pairs: training moved the way the score did in {agree} of {len(every)}; mean d_acc "
                     f"{mean:+.3f} (95% {lo:+.3f}..{hi:+.3f})")
    return lines


def _run_pairs(run: Path, which: str, per_module: int):
    cfg = json.loads((run / "config.json").read_text())
    c = cfg["config"]
    sp = space.SPACES[c["space"]](**{k: v for k, v in cfg["space"].items() if k != "space"})
    with open(run / "modules.csv", newline="") as f:
        mods = list(csv.DictReader(f))
    verdicts = {m["module"]: m["verdict"] for m in mods}
    keep = {m for m, v in verdicts.items() if which == "all" or v == which.replace("-", " ")}
    trials = {}
    with open(run / "trials.jsonl") as f:
        for line in f:
            t = json.loads(line)
            trials[t["trial"]] = t
    with open(run / "module_pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    pairs = []
    for p in rows:  # best-scored first within a module
        if p["module"] in keep and sum(q["module"] == p["module"] for q in pairs) < per_module:
            arch = sp.decode(trials[int(p["trial"])]["choices"])
            pairs.append({"module": p["module"], "trial": int(p["trial"]), "d_score": float(p["d_score"]),
                          "with": arch, "without": sp.without(arch, p["role"], p["module"])})
    return pairs, verdicts, c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "results/examples/darts-cifar10_subset-300MFLOPs"))
    ap.add_argument("--which", default="pays-off", choices=["pays-off", "costs-accuracy", "all"])
    ap.add_argument("--per-module", type=int, default=1)
    ap.add_argument("--data", default=None, help="default: the run's data")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--shard", default="0/1", help="i/n: train every n-th pending training, from the i-th")
    ap.add_argument("--out", default=str(ROOT / "results/benchmarks/verdict_training_darts_300MFLOPs"))
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # as the ground truth; n shards use n cores
    i, n = (int(x) for x in a.shard.split("/"))
    run = Path(a.run)
    pairs, verdicts, c = _run_pairs(run, a.which, a.per_module)
    ds = load_dataset(a.data or c["data"], seed=0)
    splits = Splits.make(ds, 64, 0.2, 0, 1)
    trained = Trained(Path(a.out + ".csv"))
    archs = [x for p in pairs for x in (p["with"], p["without"])]
    left = train_pending(trained, archs, a.seeds, a.epochs, shard=(i, n), train=lambda arch, seed: train_copy(
        arch, None, splits, a.epochs, 0.05, seed, ds.input_size, ds.num_classes)["test_acc"])
    if left:
        print(f"{left} trainings of other shards still running; the last to finish writes the report", file=sys.stderr)
        return 0
    rel = run.resolve().relative_to(ROOT) if run.resolve().is_relative_to(ROOT) else run
    lines = [command(), "", f"run: {rel} (budget {c['budget']}, estimator {c['estimator']}); data: {ds.name}; "
             f"verdicts: {a.which}, the best-scored {a.per_module} pair(s) of each module; trained: reduced copy, "
             f"{a.epochs} epochs, seeds 0..{a.seeds - 1}, test accuracy ({len(ds.y_test)} images)", ""]
    emit(lines + pair_report(pairs, trained.load(), a.seeds, a.epochs, verdicts), a.out + ".txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
