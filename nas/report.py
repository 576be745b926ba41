"""``python -m nas.report RUN_DIR [RUN_DIR ...]``: which modules pay off where, over runs.

Each run's ablation pairs (``module_pairs.csv``: a candidate using the module against the same
candidate with its plain counterpart, scored by the run's estimator) are pooled per module and
column (budget by default; ``--by space``, ``device``, ``seed`` or ``estimator``), so runs of
several seeds at one budget add up their pairs.  A cell's verdict comes from the bootstrap
interval of the mean paired change, with the rule of a single run (``nas.verdicts``).  Scores
are in each estimator's own units, so only runs of one estimator are pooled.

``summarise`` computes, ``plot_report`` draws; ``report.csv`` and ``report.png`` go to ``--out``.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from .results import atomic
from .verdicts import PAIR_COLUMNS, bootstrap_mean, verdict

BY = ("budget", "space", "device", "seed", "estimator")
COLUMNS = ["role", "module", "plain", "column", "runs", "pairs", "d_score", "d_score_lo", "d_score_hi",
           "d_mflops", "verdict"]


class ReportError(ValueError):
    """A run folder the report cannot use, said in one line."""


def _column(cfg: Dict, by: str) -> str:
    c = cfg.get("config", {})
    if by == "device":
        d = cfg.get("device", {})
        est = str(d.get("estimation_device", "cpu"))
        return est if est.startswith("cuda") else str(d.get("cpu", "cpu"))
    return str({"budget": c.get("budget"), "space": c.get("space"), "seed": c.get("seed"),
                "estimator": c.get("estimator")}[by])


def collect(runs: Sequence[Path], by: str = "budget") -> pd.DataFrame:
    """Every ablation pair of ``runs``, with the run and its column."""
    frames, estimators = [], set()
    for run in runs:
        run = Path(run)
        try:
            cfg = json.loads((run / "config.json").read_text())
            pairs = pd.read_csv(run / "module_pairs.csv")
        except FileNotFoundError as e:
            raise ReportError(f"{run} is not a finished run folder (no {Path(e.filename).name})") from None
        except (ValueError, pd.errors.ParserError):
            raise ReportError(f"{run}: config.json or module_pairs.csv is not readable") from None
        if not set(PAIR_COLUMNS) <= set(pairs.columns):
            raise ReportError(f"{run}/module_pairs.csv lacks columns {sorted(set(PAIR_COLUMNS) - set(pairs.columns))}")
        estimators.add(cfg.get("config", {}).get("estimator"))
        frames.append(pairs.assign(run=str(run), column=_column(cfg, by),
                                   estimator=str(cfg.get("config", {}).get("estimator"))))
    if len(estimators) > 1 and by != "estimator":
        raise ReportError(f"the runs use different estimators ({', '.join(sorted(map(str, estimators)))}): their "
                          f"scores are in different units; report them apart, or --by estimator")
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PAIR_COLUMNS + ["run", "column"])


def summarise(pairs: pd.DataFrame, columns: Optional[List[str]] = None, seed: int = 0) -> pd.DataFrame:
    """One row per (module, column): the pooled pairs' mean change, its interval and verdict."""
    rows = []
    for (role, module, plain, col), g in pairs.groupby(["role", "module", "plain", "column"], sort=False):
        mean, lo, hi = bootstrap_mean(g.d_score.to_numpy(float), seed=seed)
        rows.append({"role": role, "module": module, "plain": plain, "column": col, "runs": g.run.nunique(),
                     "pairs": len(g), "d_score": mean, "d_score_lo": lo, "d_score_hi": hi,
                     "d_mflops": float(g.d_mflops.mean()), "verdict": verdict(lo, hi, len(g))})
    out = pd.DataFrame(rows, columns=COLUMNS)
    order = columns or sorted(out.column.unique(), key=_budget_key)
    out["column"] = pd.Categorical(out.column, order, ordered=True)
    return out.sort_values(["role", "module", "column"]).reset_index(drop=True)


def _budget_key(text: str):
    from .budget import parse_budget

    try:
        return (0, tuple(c.limit for c in parse_budget(text)), text)
    except ValueError:
        return (1, (), text)


def plot_report(df: pd.DataFrame, path: Path, title: str = "", score_label: str = "score") -> None:
    """Modules down the side, columns across; a cell's colour is its verdict, its text the mean
    paired change with its interval, and a bar inside shows the interval against zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import VERDICT_COLORS

    mods = list(dict.fromkeys(f"{r.module} ({r.role} -> {r.plain})" for r in df.itertuples()))
    cols = [c for c in df.column.cat.categories if (df.column == c).any()]
    span = np.nanmax(np.abs(df[["d_score_lo", "d_score_hi"]].to_numpy(float))) if len(df) else 1.0
    span = span if span and math.isfinite(span) else 1.0
    fig, ax = plt.subplots(figsize=(2.2 + 2.6 * len(cols), 0.9 + 0.42 * len(mods)))
    for r in df.itertuples():
        i, j = mods.index(f"{r.module} ({r.role} -> {r.plain})"), cols.index(r.column)
        ax.add_patch(plt.Rectangle((j, i), 0.96, 0.92, color=VERDICT_COLORS.get(r.verdict, "#bbbbbb"), alpha=0.35))
        if r.pairs and math.isfinite(r.d_score_lo):  # the cell's own axis, zero in its middle
            lo, hi, zero = (j + 0.48 + 0.44 * v / span for v in (r.d_score_lo, r.d_score_hi, 0.0))
            ax.plot([lo, hi], [i + 0.68] * 2, color="k", lw=2)
            ax.plot([zero] * 2, [i + 0.58, i + 0.78], color="k", lw=0.6)
        ax.text(j + 0.48, i + 0.32, f"{r.d_score:+.3g} [{r.d_score_lo:+.2g}, {r.d_score_hi:+.2g}] n={r.pairs}"
                if r.pairs else "no pairs", ha="center", va="center", fontsize=6.5)
    ax.set_xlim(0, len(cols))
    ax.set_ylim(len(mods), 0)
    ax.set_xticks([j + 0.48 for j in range(len(cols))], cols, fontsize=8)
    ax.set_yticks([i + 0.46 for i in range(len(mods))], mods, fontsize=7)
    ax.tick_params(length=0)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.35, label=v) for v, c in VERDICT_COLORS.items()]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(title or f"paired change in {score_label} with the module instead of its plain counterpart "
                 f"(95% interval; bar: interval, tick: zero)", fontsize=8)
    with atomic(Path(path)) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    from .cli import OneLineParser

    p = OneLineParser(prog="python -m nas.report", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders (each with config.json and module_pairs.csv)")
    p.add_argument("--by", default="budget", choices=BY, help="what the columns are (default budget)")
    p.add_argument("--out", default=None, help="folder for report.csv and report.png (default: the first run's)")
    a = p.parse_args(argv)
    try:
        pairs = collect([Path(r) for r in a.runs], a.by)
    except ReportError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    if pairs.empty:
        print(f"{p.prog}: error: the runs hold no ablation pairs (were they run with --verdict-pairs 0?)",
              file=sys.stderr)
        return 2
    out = Path(a.out) if a.out else Path(a.runs[0])
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"{p.prog}: error: cannot write to --out {out}: {e.strerror}", file=sys.stderr)
        return 2
    df = summarise(pairs)
    with atomic(out / "report.csv") as tmp:
        df.to_csv(tmp, index=False)
    plot_report(df, out / "report.png", score_label=f"{' / '.join(sorted(pairs.estimator.unique()))} score")
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(df[["module", "plain", "column", "runs", "pairs", "d_score", "d_score_lo", "d_score_hi",
                  "verdict"]].to_string(index=False, float_format=lambda v: f"{v:+.4g}"))
    print(f"wrote {out / 'report.csv'} and {out / 'report.png'} ({pairs.run.nunique()} runs, {len(pairs)} pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
