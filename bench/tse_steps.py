"""How many training steps does the ``tse`` estimator need, and does the summed training loss
rank better than the validation accuracy reached with the same steps?

    python bench/tse_steps.py [--truth T.csv ...] [--steps 64] [--opt resolution=0] [--jobs 2] [--out FILE]

Every architecture of the given ground truths is trained as ``tse`` trains it (its reduced copy,
seed stream, learning rate and schedule) for ``--steps`` minibatches.  Each step's training loss,
and the validation accuracy after 8, 16, 32 and 64 steps, go to a JSONL file beside the output,
one line per architecture as it finishes, so a run cut short resumes where it stopped.  The
table gives Kendall tau against each truth (its mean stand-alone test accuracy over seeds) of
TSE after k steps (what ``--estimator-opt steps=k`` scores: minus the sum of the last ``window``
share of the first k losses), of the plain TSE (all k losses summed: ``window=1``) and of the
validation accuracy after k steps, beside parameter count and the truth's
seed-to-seed ceiling.  Truths that share architectures (the 6-epoch one) reuse their trainings.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _report import command, emit  # noqa: E402  (bench/ is this script's folder)
from nas.cli import _kv  # noqa: E402
from nas.estimators.tse import WINDOW, tse_score  # noqa: E402
from nas.rank.evaluate import load_truth, noise_ceiling, ranking_metrics  # noqa: E402

TRUTHS = ["truth_darts_cifar10_subset.csv", "truth_darts_cifar10_subset_s1.csv", "truth_darts_cifar10_subset_e6.csv",
          "truth_darts_cifar10_subset_s2.csv"]
CHECKS = (8, 16, 32, 64)
_W: Dict[str, Any] = {}


def _init(data: str, meta: Dict[str, Any], opts: Dict[str, Any]) -> None:
    import torch

    import space
    from nas.data import Splits, load_dataset
    from nas.estimators import Context, make

    torch.set_num_threads(1)  # one training per core: jobs, not threads, use the machine
    ds = load_dataset(data, seed=meta.get("split_seed", 0))
    splits = Splits.make(ds, meta.get("batch_size", 64), meta.get("val_fraction", 0.2), meta.get("split_seed", 0), 4)
    sp = space.SPACES[meta.get("space", "darts")]()
    _W["est"] = make("tse", Context(sp, splits, ds.num_classes, ds.input_size, seed=0, progress=False), **opts)
    est = _W["est"]  # the copy is trained, so judged, at the estimator's resolution
    _W["val"] = est.at_resolution(splits.val, stats=est.batches())


def _train(arch_json: str, steps: int) -> Dict[str, Any]:
    import space

    t0 = time.time()
    tr = _W["est"].trainer(space.ArchBase.from_json(arch_json))
    losses: List[float] = []
    val: Dict[str, float] = {}
    for k in sorted({c for c in CHECKS if c <= steps} | {steps}):
        losses += tr.losses(k - len(losses))
        if k in CHECKS:
            val[str(k)] = tr.accuracy(_W["val"])
    return {"losses": losses, "val": val, "seconds": round(time.time() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--truth", action="append", default=None, help="ground truth CSV (repeatable)")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--opt", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                    help="tse options other than steps (e.g. resolution=0: the data's)")
    ap.add_argument("--jobs", type=int, default=2, help="trainings at once, one thread each")
    ap.add_argument("--out", default=None, help="write the table here (the JSONL of trainings goes beside it)")
    a = ap.parse_args()
    truths = [Path(t) for t in (a.truth or [ROOT / "results/benchmarks/ranking" / n for n in TRUTHS])]
    meta = json.loads(truths[0].with_suffix(".json").read_text())["settings"]
    data = meta["data"]["source"]
    frames = {t: load_truth(t) for t in truths}
    cache = Path(a.out).with_suffix(".jsonl") if a.out else Path("tse_steps.jsonl")
    done: Dict[str, Dict[str, Any]] = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            if len(r["losses"]) >= a.steps:
                done[r["arch_hash"]] = r
    todo = {h: arch for df in frames.values() for h, arch in zip(df.arch_hash, df.arch) if h not in done}
    if todo:
        from tqdm.auto import tqdm

        with ProcessPoolExecutor(a.jobs, mp_context=mp.get_context("spawn"), initializer=_init,
                                 initargs=(data, meta, dict(a.opt))) as pool, open(cache, "a") as f, \
                tqdm(total=len(todo), desc="tse trainings", unit="arch") as bar:
            futs = {pool.submit(_train, arch, a.steps): h for h, arch in todo.items()}
            for fut in as_completed(futs):
                r = {"arch_hash": futs[fut], **fut.result()}
                f.write(json.dumps(r) + "\n")
                f.flush()
                done[r["arch_hash"]] = r
                bar.update(1)
    ks = [k for k in CHECKS if k <= a.steps]
    window = float(dict(a.opt).get("window", WINDOW))

    def tau(scores, df) -> str:
        return f"{ranking_metrics(scores, df.truth)['kendall_tau']:>8.2f}"

    lines = [command(), "",
             f"each architecture's reduced copy trained as `tse` trains it ({a.steps} steps of batch "
             f"{meta.get('batch_size', 64)}, one thread, options {dict(a.opt) or 'the defaults (16x16)'}); "
             f"Kendall tau against each truth's mean test accuracy",
             f"tse k: minus the summed training loss of the last {window:g} share of the first k steps; "
             f"all k: of all k (window=1, the plain TSE); val k: validation accuracy after k steps",
             "", f"{'truth':<38}{'n':>4}{'ceiling':>8}{'params':>8}"
             + "".join(f"{name + ' ' + str(k):>8}" for name in ("tse", "all", "val") for k in ks)]
    for t, df in frames.items():
        recs = [done[h] for h in df.arch_hash]
        row = f"{t.name:<38}{len(df):>4}{noise_ceiling(df)['kendall_tau']:>8.2f}"
        row += tau(df.params, df)
        row += "".join(tau([tse_score(r["losses"][:k], w) for r in recs], df) for w in (window, 1) for k in ks)
        row += "".join(tau([r["val"][str(k)] for r in recs], df) for k in ks)
        lines.append(row)
    secs = sorted(r["seconds"] for r in done.values())
    lines += ["", f"seconds per {a.steps}-step training with its {len(ks)} validation passes, one thread: "
                  f"median {secs[len(secs) // 2]:.0f} (range {secs[0]:.0f}-{secs[-1]:.0f})"]
    emit(lines, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
