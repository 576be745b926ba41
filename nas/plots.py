"""Drawing fronts (the data comes from ``nas.pareto``): accuracy against FLOPs, and latency."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from .budget import Constraint, human
from .results import atomic

AXES = {"flops": ("FLOPs (fvcore: 1 FLOP = 1 multiply-add)", 1.0), "latency_ms": ("latency (ms, lookup table)", 1.0),
        "params": ("parameters", 1.0)}


def plot_pareto(trials: pd.DataFrame, front: pd.DataFrame, constraints: Sequence[Constraint], path: Path,
                title: str, baselines: Optional[pd.DataFrame] = None, accuracy_label: str = "validation accuracy") -> Path:
    """One panel per cost axis present (FLOPs always; latency when measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_keys = ["flops"] + (["latency_ms"] if trials["latency_ms"].notna().any() else [])
    fig, axs = plt.subplots(1, len(axes_keys), figsize=(6.5 * len(axes_keys), 4.8), squeeze=False)
    done = trials[trials.state == "complete"]
    over = trials[trials.state == "over_budget"]
    limits = {"flops": "flops", "latency_ms": "latency", "params": "params"}
    for ax, key in zip(axs[0], axes_keys):
        label, _ = AXES[key]
        ax.scatter(done[key], done.score, s=14, c="0.65", label=f"within budget ({len(done)})", zorder=2)
        if key == "latency_ms" and "latency_low_ms" in done and done.latency_low_ms.notna().any():
            b = done[done.latency_low_ms.notna()]  # which candidates are within noise of a latency budget
            ax.errorbar(b[key], b.score, xerr=[b[key] - b.latency_low_ms, b.latency_high_ms - b[key]], fmt="none",
                        ecolor="0.8", elinewidth=0.8, zorder=1, label="90% latency interval (validated)")
        if len(over):
            y0 = done.score.min() if len(done) else 0.0
            ax.scatter(over[key], [y0] * len(over), marker="|", s=60, c="tab:red", alpha=0.5,
                       label=f"rejected over budget ({len(over)}), never trained", zorder=1)
        if len(front):
            f = front.sort_values(key)
            # a front chosen on other axes too (FLOPs, params) is no staircase here: no line then
            line = "-o" if f.score.is_monotonic_increasing else "o"
            what = "Pareto front" if line == "-o" else "Pareto-optimal over all objectives"
            ax.plot(f[key], f.score, line, c="tab:blue", ms=6, lw=1.5, label=f"{what} ({len(front)})", zorder=3)
        if baselines is not None and len(baselines):
            for _, b in baselines.iterrows():
                if pd.notna(b.get(key)) and pd.notna(b.get("score")):
                    ax.scatter([b[key]], [b.score], marker="*", s=140, c="tab:orange", zorder=4, edgecolors="k")
                    ax.annotate(b["name"], (b[key], b.score), textcoords="offset points", xytext=(5, 5), fontsize=8)
        for c in constraints:
            if limits.get(key) == c.kind:
                txt = f"budget {human(c.limit)}" if c.kind != "latency" else f"budget {c.limit:g} ms"
                ax.axvline(c.limit, ls="--", c="tab:red", lw=1)
                ax.annotate(txt, (c.limit, 1), xycoords=("data", "axes fraction"), xytext=(-4, -14),
                            textcoords="offset points", ha="right", color="tab:red", fontsize=9)
        ax.set_xlabel(label)
        ax.set_ylabel(accuracy_label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic(Path(path)) as tmp:
        fig.savefig(tmp, dpi=130)
    plt.close(fig)
    return path


VERDICT_COLORS = {"pays off": "#1b9e77", "costs accuracy": "#d95f02", "no measurable effect": "#7570b3",
                  "too few pairs": "#bbbbbb"}


def plot_modules(df: pd.DataFrame, path: Path, title: str, score_label: str = "score") -> None:
    """The module verdicts of ``nas.verdicts.module_verdicts``: per module the paired change in
    score (with - without) and its interval, coloured by verdict, with the front's enrichment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = df.sort_values("d_score", na_position="first").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8.5, 1.2 + 0.32 * max(1, len(d))))
    y = range(len(d))
    for i, r in d.iterrows():
        c = VERDICT_COLORS.get(r.verdict, "#bbbbbb")
        if r.pairs:
            ax.plot([r.d_score_lo, r.d_score_hi], [i, i], color=c, lw=2.5, solid_capstyle="butt")
            ax.plot([r.d_score], [i], "o", color=c, ms=5)
        ax.annotate(f"x{r.enrichment:.1f} on front, {r.pairs} pairs, {r.d_mflops:+.1f} MFLOPs"
                    if r.pairs else f"x{r.enrichment:.1f} on front, no pairs",
                    (1.01, i), xycoords=("axes fraction", "data"), va="center", fontsize=7)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(list(y), [f"{r.module} ({r.role} -> {r.plain})" for r in d.itertuples()], fontsize=8)
    ax.set_xlabel(f"change in {score_label} with the module instead of its plain counterpart (95% interval)")
    handles = [plt.Line2D([], [], color=c, lw=3, label=v) for v, c in VERDICT_COLORS.items()]
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    with atomic(Path(path)) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
