"""``python search.py --budget 300MFLOPs``: search, export the architectures found, plot the front."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings
from typing import Any, Dict, List, Optional

EPILOG = """\
budgets: 300MFLOPs, 0.3GFLOPs, 300MMACs (the same: fvcore counts one multiply-add as one FLOP),
2.5Mparams, 5ms (needs a latency table); join several with commas: 300MFLOPs,5ms.
The budget applies to the deployed network (e.g. DARTS: 20 cells of 16 channels by default) at batch 1.

outputs (in --out): config.json, trials.csv, pareto.csv, archs/<trial>.json, best.json,
pareto.png, baselines.csv, summary.json, study.db, supernet.pt  (see results/README.md)

examples:
  python search.py --budget 300MFLOPs
  python search.py --budget 300MFLOPs --data ../shared/data/cifar10_subset.npz --trials 200
  python search.py --budget 200MFLOPs --ops sep_conv_3x3,lka,do_conv_3x3 --sampler tpe
  python -m nas.train results/<run>/best.json --data cifar10 --epochs 50
"""


class OneLineParser(argparse.ArgumentParser):
    """argparse prints the usage block before an error; a bad value deserves one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _csv(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _kv(text: str) -> tuple:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    k, v = text.split("=", 1)
    for conv in (int, float):
        try:
            return k.strip(), conv(v)
        except ValueError:
            pass
    if "," in v:
        return k.strip(), [int(x) if x.strip().lstrip("-").isdigit() else x.strip() for x in v.split(",")]
    return k.strip(), v.strip()


def _formats(text: str) -> List[str]:
    from .export import FORMATS  # the light module: no torch before the Ctrl-C handler is set

    names = [] if text.strip() == "none" else _csv(text)
    bad = [n for n in names if n not in FORMATS]
    if bad or (not names and text.strip() != "none"):
        raise argparse.ArgumentTypeError(f"unknown format {', '.join(bad) or repr(text)}; known: "
                                         f"{', '.join(FORMATS)}, or none")
    return names


def _budget(text: str) -> str:
    from .budget import BudgetError, parse_budget

    try:
        parse_budget(text)
    except BudgetError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    prog = "search.py" if os.path.basename(sys.argv[0]) == "search.py" else "nas-search"
    p = OneLineParser(prog=prog, description="Search a space of published vision modules under a compute budget.",
                      epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", required=True, type=_budget,
                   help="limit on the deployed network: 300MFLOPs (fvcore: 1 FLOP = 1 multiply-add), "
                        "300MMACs, 2.5Mparams, 5ms; comma-join several")
    p.add_argument("--space", default="darts", help="search space: darts (default), mobile, metaformer (see --list)")
    p.add_argument("--driver", default="optuna", help="search backend: optuna (default), random, ray (Ray Tune, "
                   "pip extra plugnas[ray]) or nni (NNI 3.0, pip extra plugnas[nni])")
    p.add_argument("--sampler", default=None, choices=["nsga2", "tpe", "random", "evolution"],
                   help="proposal algorithm: nsga2 (default of optuna and ray; multi-objective with constraints; "
                        "nni: regularized evolution), tpe, random (ray, nni; the random driver's only one), "
                        "evolution (nni)")
    p.add_argument("--driver-opt", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="driver settings, e.g. ray: address=HOST:PORT concurrency=8 cpus_per_trial=2; "
                        "nni: strategy=tpe mutation_prob=0.1 (repeatable)")
    p.add_argument("--trials", type=int, default=64, help="candidates to propose (default 64); over-budget ones "
                   "are rejected in milliseconds, before any training or evaluation")
    p.add_argument("--estimator", default=None,
                   help="what ranks candidates (default: the best measured, see the README's ranking results): "
                        "tse (summed training loss of a 16-step stand-alone training), "
                        "supernet (SPOS), train (stand-alone, successive halving), zc:vote, "
                        "zc:synflow, zc:naswot, zc:grad_norm, zc:snip, zc:zen, zc:zico, zc:meco, zc:params, zc:flops "
                        "(see --list and the README's ranking results)")
    p.add_argument("--estimator-opt", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="estimator settings, e.g. tse: steps=32 resolution=0; supernet: sampling=fair; "
                        "train: min_epochs=1 max_epochs=3 eta=3")
    p.add_argument("--rank-check", type=int, default=0, metavar="K",
                   help="after the search, train the top-K and K random candidates stand-alone briefly and "
                        "report the estimator's Kendall tau on this data (default off)")
    p.add_argument("--rank-check-epochs", type=int, default=1, help="epochs per rank-check training (default 1)")
    p.add_argument("--verdict-pairs", type=int, default=3,
                   help="module verdicts (modules.csv): the best candidates per module ablated to its plain "
                        "counterpart and scored again (default 3; 0 lists usage only)")
    p.add_argument("--trial-timeout", type=float, default=0.0, metavar="SECONDS",
                   help="a candidate whose scoring takes longer is a failed trial and the search goes on "
                        "(default 0: no limit; optuna and random drivers)")
    p.add_argument("--export", type=_formats, default=None, metavar="FORMATS",
                   help="best.json's network written to <run>/export/ in these formats, each checked, with a model "
                        "card (default py,torchscript,pt2,onnx; 'none' skips; see python -m nas.export)")
    p.add_argument("--verify", type=int, default=0, metavar="K",
                   help="train the K ablation pairs of the best candidates stand-alone briefly (reduced copies, "
                        "--rank-check-epochs) and report whether training moves the way the verdicts' scores do "
                        "(verify.csv; default off)")
    p.add_argument("--epochs", type=int, default=6, help="supernet training epochs (default 6)")
    p.add_argument("--data", default=None,
                   help="CIFAR-10 batches folder (downloaded if missing), 'cifar10' (cache folder), an .npz with "
                        "x_train,y_train,x_test,y_test, or an image folder; default: $NAS_DATA, else cached "
                        "CIFAR-10, else scikit-learn's bundled digits (offline fallback)")
    p.add_argument("--out", default=None, help="run folder (default results/<timestamp>-<space>-<budget>)")
    p.add_argument("--seed", type=int, default=0, help="seed for split, supernet and sampler: same seed, same trials")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: SQLite file study.db in the run folder), e.g. "
                        "postgresql://user@host/db: a study that any number of workers running the same command "
                        "share (one trains the supernet, --trials counts the study's trials; see nas.collect)")
    p.add_argument("--study", default=None, help="study name in --storage (default: the run folder's name)")
    p.add_argument("--ops", type=_csv, default=None, help="comma-separated candidate ops (default: the space's explicit default list)")
    p.add_argument("--fusions", type=_csv, default=None, help="comma-separated combine ops (default: the space's explicit default list)")
    p.add_argument("--space-opt", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="other space settings, e.g. channels=16 cells=8 supernet_channels=8 (repeatable)")
    p.add_argument("--latency-lut", default=None, help="latency lookup table (default: the shipped one for this "
                   "machine, if any); needed for ms budgets")
    p.add_argument("--force-lut", action="store_true", help="use a latency table measured on another device")
    p.add_argument("--latency-every", type=float, default=None, metavar="SECONDS",
                   help="re-time the latency anchors between trials when their timing is older (default 600; 0: "
                        "at start only); each trial records the scale it was judged with (trials.csv latency_scale)")
    p.add_argument("--population", type=int, default=None, help="NSGA-II population (default trials/4 in 8..50)")
    p.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                   help="do not propose the space's baseline presets (darts: DARTS-V2, V1) as the first trials")
    p.add_argument("--batch-size", type=int, default=64, help="supernet training batch (default 64)")
    p.add_argument("--lr", type=float, default=0.05, help="supernet learning rate (default 0.05, cosine)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="auto", help="supernet training and scoring: auto (cuda if available), "
                   "cpu, cuda, cuda:1 ...; costs are counted on the CPU")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    p.add_argument("--list", action="store_true", help="list spaces, ops, fusions and presets, then exit")
    return p


def _list() -> None:
    import space

    print("spaces:  ", ", ".join(space.SPACES.names()))
    for reg in (space.OPS, space.FUSIONS, space.ATTENTIONS, space.TOKEN_MIXERS, space.CHANNEL_MIXERS, space.DW_CONVS):
        print(f"{reg.kind + 's:':<17}", ", ".join(reg.names()))
    print("presets: ", ", ".join(n for s in space.SPACES.names() for n in space.SPACES[s].presets))
    from .estimators import ESTIMATORS

    print("estimators:", ", ".join(ESTIMATORS.names()))


def main(argv: Optional[List[str]] = None) -> int:
    if "--list" in (argv if argv is not None else sys.argv[1:]):
        _list()
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    from .interrupt import stop_on_request

    try:
        with stop_on_request():  # Ctrl-C: stop at the next safe point, writing what is done
            return _search(parser, args)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the run began
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


def _search(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s: %(message)s")
    if args.debug:  # our own debug lines (failed trials' tracebacks), not every library's
        for name in ("matplotlib", "PIL", "fvcore", "optuna", "urllib3", "filelock"):
            logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*ExperimentalWarning.*")
    from .run import RunError, SearchConfig, run  # heavy imports after argument checks
    from .data import DataError
    from space.registry import UnknownName

    cfg = SearchConfig(budget=args.budget, space=args.space, ops=args.ops, fusions=args.fusions,
                       space_options=dict(args.space_opt), driver=args.driver, sampler=args.sampler,
                       driver_options=dict(args.driver_opt),
                       population=args.population, warm_start=args.warm_start, trials=args.trials, epochs=args.epochs,
                       estimator=args.estimator or SearchConfig.estimator, estimator_options=dict(args.estimator_opt),
                       rank_check=args.rank_check, rank_check_epochs=args.rank_check_epochs, verdict_pairs=args.verdict_pairs,
                       verify=args.verify,
                       batch_size=args.batch_size, lr=args.lr, data=args.data, out=args.out, seed=args.seed,
                       storage=args.storage, study=args.study, latency_lut=args.latency_lut, force_lut=args.force_lut,
                       threads=args.threads, device=args.device, resume=args.resume, progress=not args.quiet,
                       trial_timeout=args.trial_timeout,
                       **({} if args.export is None else {"export": args.export}),
                       **({} if args.latency_every is None else {"latency_every": args.latency_every}))
    try:
        summary = run(cfg)
    except (RunError, DataError, UnknownName) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # never a bare traceback for users; --debug shows it
        if args.debug:
            traceback.print_exc()
        print(f"{parser.prog}: error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
    _report(summary)
    return 130 if summary.get("interrupted") else 0


def _report(s: Dict[str, Any]) -> None:
    from .budget import human

    print(f"\n{s['trials']} trials: {s['within_budget']} within budget, {s['over_budget']} rejected over budget, "
          f"{s['failed']} failed; {len(s['front'])} on the Pareto front")
    b = s.get("best_summary")
    if b:
        lat = f", {b['latency_ms']:.2f} ms" if b.get("latency_ms") is not None else ""
        if b.get("latency_low_ms") is not None:
            lat += f" (90%: {b['latency_low_ms']:.1f}-{b['latency_high_ms']:.1f} ms)"
        test = f", test {b['test_acc_inherited']:.3f}" if b.get("test_acc_inherited") is not None else ""
        what = (f"val {b['val_acc']:.3f}{test} (inherited supernet weights)" if b["estimator"] == "supernet" else
                f"val {b['val_acc']:.3f}" if b.get("val_acc") is not None else f"{b['estimator']} score {b['score']:.4g}")
        print(f"best within budget: trial {b['trial']}: {what}, "
              f"{human(b['flops'])}FLOPs (multiply-adds), {human(b['params'])} params{lat}")
    elif s["failed"] and s["failed"] == s["trials"] - s["over_budget"]:
        print(f"every evaluated trial failed, e.g. {s.get('first_failure', '?')} (see trials.csv's message; "
              f"--debug shows the tracebacks)")
    else:
        print("no architecture within budget was found: raise --budget or --trials")
    from .rank.check import check_line

    print(f"ranking: {s['trust']}")
    if s.get("rank_check") is not None or s["phases"].get("rank_check_s") is not None:
        print(check_line(s.get("rank_check")))
    v = s.get("verify")
    if v:
        print(f"verify: trained stand-alone ({v['epochs']} epoch(s)), the accuracy moved the way the score did in "
              f"{v['agree']} of {v['k']} ablation pairs ({v['file']})")
    for w in s.get("warnings", []):
        print(f"note: {w}")
    ph = s["phases"]
    extra = f", rank check {ph['rank_check_s']:.0f}s" if "rank_check_s" in ph else ""
    if s.get("exported"):
        ok = [f for f, good in s["exported"].items() if good]
        bad = [f for f, good in s["exported"].items() if not good]
        print(f"model export of best.json: {', '.join(ok) or 'no format'} written and checked"
              + (f"; {', '.join(bad)} failed (why: export/card.md)" if bad else "") + f": {s['folder']}/export/")
        extra += f", model export {ph['model_export_s']:.0f}s"
    print(f"time: estimator {ph['estimator_prepare_s']:.0f}s, search {ph['search_s']:.0f}s, "
          f"export {ph['export_s']:.0f}s{extra}")
    print(f"results: {s['folder']}")


if __name__ == "__main__":
    sys.exit(main())
