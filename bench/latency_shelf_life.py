"""How far a table's networks have moved since they were timed: within this process and since the build.

    python bench/latency_shelf_life.py TABLE [--networks 24] [--rounds 40] [--group 12] [--out FILE]

Times the table's own calibration networks (``build.stored_networks``: their times in table
units are stored) again, twice, each pass in groups with the table's anchors
(``validate.anchor_networks``) whose speed converts the times into table units, as
``validate`` does.  Prints, side by side from one run:

* pass 2 / pass 1: the spread between two measurements of the same network minutes apart in
  one process (measurement noise);
* pass / stored: the spread between today and the day the table timed them (noise of both plus
  whatever changed in between);
* the correlation of the two passes' deviations from the stored times: near 0, the deviations
  are noise and averaging would remove them; near 1, each network *persistently* runs faster or
  slower relative to the anchors than when the table timed it, a shift that no drift rescaling
  by one factor can undo and that bounds how close any prediction from the table can be.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nas.latency import Predictor  # noqa: E402
from nas.latency.build import stored_networks, table_space  # noqa: E402
from nas.latency.predict import reference_calls  # noqa: E402
from nas.latency.validate import anchor_networks, time_anchored  # noqa: E402


def spread(r: np.ndarray) -> str:
    e = r - 1
    return (f"RMS {100 * np.sqrt(np.mean(e ** 2)):5.1f}%  sd {100 * np.std(e):5.1f}%  "
            f"within 5% {100 * np.mean(np.abs(e) <= .05):4.0f}%  within 10% {100 * np.mean(np.abs(e) <= .10):4.0f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table")
    ap.add_argument("--networks", type=int, default=24, help="stored networks to time (after the anchors)")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--group", type=int, default=12)
    ap.add_argument("--anchors", type=int, default=8)
    ap.add_argument("--out", help="also write the report here")
    a = ap.parse_args()

    p = Predictor.load(a.table)
    space = table_space(p.meta)
    archs, then = anchor_networks(p, space, a.anchors)
    stored = stored_networks(space, p.meta, p.table.entries())[a.anchors:a.anchors + a.networks]
    if len(stored) < 4:
        sys.exit(f"error: {a.table} holds too few timed networks beyond its {a.anchors} anchors")
    anchors = reference_calls(archs, p.device_type, p.batch)
    passes = []
    for k in range(2):
        now = []
        for g in range(0, len(stored), a.group):
            chunk = [arch for _, arch, _ in stored[g:g + a.group]]
            t, speeds, _ = time_anchored(p, space, chunk, anchors, then, a.rounds, 1000 * k + g)
            now += [x / v for x, v in zip(t, speeds)]
            print(f"pass {k + 1}: {g + len(chunk)}/{len(stored)} networks, speeds {min(speeds):.3f}-"
                  f"{max(speeds):.3f}", file=sys.stderr)
        passes.append(np.array(now))
    ms = np.array([t for _, _, t in stored])
    r1, r2 = passes[0] / ms, passes[1] / ms
    lines = [f"table {a.table} (networks timed {p.meta.get('refit', {}).get('date') or p.meta.get('date')}), "
             f"{len(stored)} of its networks ({ms.min():.0f}-{ms.max():.0f} ms), {a.anchors} anchors, "
             f"{a.rounds} rounds, groups of {a.group}",
             f"{'pass 2 / pass 1 (same process)':34s}{spread(passes[1] / passes[0])}",
             f"{'pass 1 / stored':34s}{spread(r1)}",
             f"{'pass 2 / stored':34s}{spread(r2)}",
             f"{'mean of passes / stored':34s}{spread((r1 + r2) / 2)}",
             f"correlation of the passes' deviations from stored: {np.corrcoef(r1, r2)[0, 1]:.2f}"]
    report = "\n".join(lines)
    print(report)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(f"$ python bench/latency_shelf_life.py {' '.join(sys.argv[1:])}\n\n{report}\n")


if __name__ == "__main__":
    main()
