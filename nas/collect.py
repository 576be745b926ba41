"""``python -m nas.collect --storage URL --study NAME --out DIR``: the run folder of a study that
workers share (trials.csv, the front, best.json, the plots, module verdicts, baselines, the
exported model), written from the study alone, at any time, also while its workers run.

The settings come from the study (its first worker's config.json); the supernet is the one the
study's workers share, loaded from the study's database.  ``--data`` points at the data where it
lies elsewhere on this machine (it must be the same data: the study refuses other sizes).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import warnings
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nas.collect", description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", required=True, help="the study's storage URL, as the workers were given it")
    p.add_argument("--study", required=True, help="the study's name")
    p.add_argument("--out", required=True, help="run folder to write (a former collection of this study is replaced)")
    p.add_argument("--data", default=None, help="the data, where it lies elsewhere than the workers' path")
    p.add_argument("--export", default=None, metavar="FORMATS", help="model export formats ('none' skips; "
                   "default: the study's)")
    p.add_argument("--verdict-pairs", type=int, default=None, help="module verdict pairs (default: the study's)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*ExperimentalWarning.*")
    from .data import DataError
    from .drivers.study import study_config
    from .export import FORMATS
    from .interrupt import stop_on_request
    from .run import RunError, SearchConfig, run

    try:
        stored = study_config(args.storage, args.study)["config"]
        known = {f.name for f in dataclasses.fields(SearchConfig)}
        cfg = SearchConfig(**{k: v for k, v in stored.items() if k in known})
        over = dict(storage=args.storage, study=args.study, out=args.out, resume=False, progress=not args.quiet,
                    verify=0, rank_check=0)
        if args.data:
            over["data"] = args.data
        if args.verdict_pairs is not None:
            over["verdict_pairs"] = args.verdict_pairs
        if args.export is not None:
            fmts = [] if args.export == "none" else [f for f in args.export.split(",") if f]
            bad = [f for f in fmts if f not in FORMATS]
            if bad:
                raise ValueError(f"--export: unknown format {', '.join(bad)} (known: {', '.join(FORMATS)}, none)")
            over["export"] = fmts
        with stop_on_request():
            summary = run(dataclasses.replace(cfg, **over), collect=True)
    except (RunError, DataError, ValueError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{p.prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a database that went away mid-read, and the like: one line
        first = (str(e).strip().splitlines() or [""])[0][:200]
        print(f"{p.prog}: error: {type(e).__name__}: {first}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"collected {summary['trials']} trials of study {args.study!r} into {summary['folder']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
