"""``python -m nas.rank truth|evaluate``: build a ranking ground truth, and measure estimators on it."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import List, Optional

from ..cli import OneLineParser, _kv


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m nas.rank", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=OneLineParser)
    t = sub.add_parser("truth", help="train random in-budget architectures stand-alone (resumable)")
    t.add_argument("--space", default="darts")
    t.add_argument("--budget", default="300MFLOPs", help="deployed-network budget (fvcore: 1 FLOP = 1 multiply-add)")
    t.add_argument("--data", default=None, help="as search.py --data (default $NAS_DATA, cached CIFAR-10, digits)")
    t.add_argument("--archs", type=int, default=24)
    t.add_argument("--seeds", type=int, default=2)
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=0.05)
    t.add_argument("--sample-seed", type=int, default=0)
    t.add_argument("--pool", type=int, default=400, help="random draws the FLOP-spread selection picks from")
    t.add_argument("--train-opt", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="arch fields of the trained copy (darts default: channels=8 cells=5)")
    t.add_argument("--space-opt", type=_kv, action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--jobs", type=int, default=1, help="trainings at once, one process each")
    t.add_argument("--threads", type=int, default=0, help="torch threads per job (default cores/jobs)")
    t.add_argument("--out", required=True, help="CSV to write or resume")
    t.add_argument("--quiet", action="store_true")

    e = sub.add_parser("evaluate", help="score a ground truth's architectures with estimators and report")
    e.add_argument("truth", help="ground truth CSV (from `truth`)")
    e.add_argument("--estimator", action="append", default=[], metavar="NAME",
                   help="estimator (repeatable; 'all' = every registered one); zc:params and zc:flops "
                        "are always reported beside it")
    e.add_argument("--estimator-opt", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="options of the (single) estimator, e.g. sampling=fair epochs=6")
    e.add_argument("--space-opt", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="space settings for the estimators only, e.g. supernet_channels=8 supernet_cells=5")
    e.add_argument("--data", default=None, help="default: the data the truth was trained on")
    e.add_argument("--epochs", type=int, default=6, help="supernet epochs (as search.py --epochs)")
    e.add_argument("--seed", type=int, default=0, help="estimator seed")
    e.add_argument("--threads", type=int, default=0)
    e.add_argument("--out", default=None, help="folder for report, plot and score cache "
                   "(default: beside the truth, <truth>_ranking/)")
    e.add_argument("--pending", action="store_true", help="also score the architectures the truth's settings "
                   "select but it does not hold yet (run beside a `truth` still training; later reports reuse them)")
    e.add_argument("--quiet", action="store_true")
    return p


def _evaluate(a) -> int:
    import json

    import torch

    from ..data import Splits, load_dataset
    from ..estimators import ESTIMATORS, Context, make
    from .evaluate import BASELINES, ScoreCache, evaluate, format_report, load_truth, plot_ranking
    from .truth import TruthError, make_space

    if a.threads:
        torch.set_num_threads(a.threads)
    path = Path(a.truth)
    meta_path = path.with_suffix(".json")
    full = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta = full.get("settings", {})
    names = a.estimator or ["supernet"]
    if names == ["all"]:
        names = ESTIMATORS.names()
    for n in names:
        ESTIMATORS.get(n)  # unknown names fail before any work
    truth = load_truth(path)
    if a.estimator_opt and len(names) != 1:
        raise TruthError("--estimator-opt goes with exactly one --estimator")
    d = meta.get("data") or {}
    data = a.data or ("digits" if d.get("name") == "digits" else d.get("source"))
    ds = load_dataset(data, seed=meta.get("split_seed", 0))
    sp = make_space(meta.get("space", "darts"), {**meta.get("space_options", {}), **dict(a.space_opt)})
    splits = Splits.make(ds, meta.get("batch_size", 64), meta.get("val_fraction", 0.2), meta.get("split_seed", 0), 4)
    out = Path(a.out) if a.out else path.with_name(path.stem + "_ranking")
    out.mkdir(parents=True, exist_ok=True)
    opts = list(a.estimator_opt) + list(a.space_opt)
    label = {n: (n if n != names[0] or not opts else n + "[" + ",".join(f"{k}={v}" for k, v in opts) + "]")
             for n in dict.fromkeys(names + list(BASELINES))}
    ests = {}
    for n in label:
        slug = label[n].replace(":", "-").replace("[", "_").replace("]", "").replace(",", "_").replace("=", "")
        ctx = Context(sp, splits, ds.num_classes, ds.input_size, seed=a.seed, progress=not a.quiet,
                      folder=out / "checkpoints" / slug, epochs=a.epochs)
        ctx.folder.mkdir(parents=True, exist_ok=True)
        try:
            ests[n] = make(n, ctx, **(dict(a.estimator_opt) if n == names[0] else {}))
        except (TypeError, ValueError) as err:
            raise TruthError(str(err)) from None
    pending = []
    if a.pending:
        if not full.get("archs"):
            raise TruthError(f"--pending needs the truth's settings file {meta_path}")
        from .truth import select_archs
        base = make_space(meta.get("space", "darts"), meta.get("space_options", {}))  # the truth's own
        pending = [c["arch"] for c in select_archs(base, meta["budget"], full["archs"], meta["sample_seed"],
                                                   meta["pool"])]
    res = evaluate(truth, ests, ScoreCache(out / "scores.csv"), progress=not a.quiet, pending=pending)
    res["estimators"] = {label[k]: v for k, v in res["estimators"].items()}
    print(format_report(res, str(path)))
    tag = "_".join(label[n].replace(":", "-").replace("[", "_").replace("]", "").replace(",", "_").replace("=", "")
                   for n in names)[:120]
    (out / f"report_{tag}.json").write_text(json.dumps({"truth": str(path), **res}, indent=2) + "\n")
    plot_ranking(res, truth, out / f"ranking_{tag}.png", title=f"{sp.name} space, {len(truth)} architectures")
    print(f"report and scatter plot: {out}/report_{tag}.json, ranking_{tag}.png")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = _parser()
    a = p.parse_args(argv)
    from ..budget import BudgetError
    from ..data import DataError
    from space.registry import UnknownName
    from .truth import TruthConfig, TruthError, run_truth

    command = "python -m nas.rank " + " ".join(shlex.quote(x) for x in argv)
    try:
        if a.cmd == "truth":
            if a.archs < 2 or a.seeds < 1 or a.epochs < 1 or a.jobs < 1:
                raise TruthError("--archs >= 2, --seeds >= 1, --epochs >= 1 and --jobs >= 1 are required")
            cfg = TruthConfig(space=a.space, budget=a.budget, data=a.data, archs=a.archs, seeds=a.seeds,
                              epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, sample_seed=a.sample_seed,
                              pool=a.pool, train_overrides=dict(a.train_opt), space_options=dict(a.space_opt))
            out = run_truth(cfg, Path(a.out), jobs=a.jobs, threads=a.threads, command=command,
                            progress=not a.quiet)
            print(f"ground truth: {out}")
            return 0
        return _evaluate(a)
    except (TruthError, BudgetError, DataError, UnknownName, ValueError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{p.prog}: interrupted; finished rows are kept, run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
