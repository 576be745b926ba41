"""Drawing fronts (the data comes from ``nas.pareto``): accuracy against FLOPs, and latency."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from .budget import Constraint, human

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
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
