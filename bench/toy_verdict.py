"""Do module verdicts agree with training on a toy whose harmful op is known by construction?

    python bench/toy_verdict.py [--estimator tse] [--epochs 3] [--seeds 2] [--out FILE]

``tests/test_verdicts.py`` checks the verdict machinery on a toy DARTS space (3 cells of 8
channels, 16x16 digits; ops skip_connect, sep_conv_3x3, ``zz_harmful``: a sep conv whose output is
multiplied by zero, ``zz_neutral``: sep_conv_3x3 under another name) with MeCo and NASWOT, which
read the zeroing op as *costs accuracy*.  The default ``tse`` reads it as *pays off*.  This script
asks training: the same estimator's ablation pairs (the test's 24 random candidates, 5 pairs per
module), each architecture trained with and without the module as the ground truth trains
(reduced copy, ``--epochs`` on the digits' training split, ``--seeds`` seeds), and the verdict rule
applied to the paired change in test accuracy (``bench/verdict_training.py``'s report, which does
the same for a real run's pairs).  Trainings are appended to
``results/benchmarks/toy_verdict/trained.csv`` as they finish, so a cut run resumes.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import toys  # noqa: E402
from _report import command, emit  # noqa: E402
from nas.budget import parse_budget  # noqa: E402
from nas.costs import CostModel  # noqa: E402
from nas.data import Splits, load_digits_fallback  # noqa: E402
from nas.estimators import Context, make  # noqa: E402
from nas.problem import Objective, Problem  # noqa: E402
from nas.rank.truth import train_copy  # noqa: E402
from nas.verdicts import module_verdicts  # noqa: E402
from space.darts import DartsSpace  # noqa: E402
from verdict_training import Trained, pair_report, train_pending  # noqa: E402

CACHE = Path(__file__).resolve().parents[1] / "results" / "benchmarks" / "toy_verdict" / "trained.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--estimator", default="tse")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    ds = load_digits_fallback(0, size=16)
    splits = Splits.make(ds, 64, 0.2, 0, calib_batches=2)
    with toys.toy_ops():
        sp = DartsSpace(ops=toys.TOY_OPS, fusions=["sum"], channels=8, cells=3, input_size=(3, 16, 16))
        est = make(a.estimator, Context(sp, splits, ds.num_classes, ds.input_size, seed=0, progress=False))
        est.prepare()
        prob = Problem(sp, parse_budget("1GFLOPs"), CostModel(), est.score,
                       [Objective("score", True), Objective("flops", False)])
        rng = random.Random(0)
        recs = [prob.evaluate({k: rng.choice(v) for k, v in sp.choices().items()}, i) for i in range(24)]
        pairs: list = []
        df = module_verdicts(sp, recs, recs[:3], est.score, CostModel(), k=5, pairs=pairs).set_index("module")

        by_trial = {r.number: r for r in recs}
        pairs = [{"module": p["module"], "trial": p["trial"], "d_score": p["d_score"], "with": by_trial[p["trial"]].arch,
                  "without": sp.without(by_trial[p["trial"]].arch, p["role"], p["module"])} for p in pairs]
        trained = Trained(CACHE)
        train_pending(trained, [x for p in pairs for x in (p["with"], p["without"])], a.seeds, a.epochs,
                      lambda arch, seed: train_copy(arch, None, splits, a.epochs, 0.05, seed, ds.input_size,
                                                    ds.num_classes)["test_acc"])
        lines = [command(), "", f"toy DARTS space (3 cells x 8 ch, ops {', '.join(toys.TOY_OPS)}, sum) on 16x16 digits; "
                 f"scores: {a.estimator}; trained: reduced copy, {a.epochs} epochs, seeds 0..{a.seeds - 1}, "
                 f"test accuracy ({len(ds.y_test)} images)", ""]
        lines += pair_report(pairs, trained.load(), a.seeds, a.epochs, dict(df.verdict))
        lines += [""] + [f"{m}: {a.estimator}'s d_score {df.loc[m, 'd_score']:+.3f} (95% {df.loc[m, 'd_score_lo']:+.3f}.."
                         f"{df.loc[m, 'd_score_hi']:+.3f})" for m in ("zz_harmful", "zz_neutral")]
    emit(lines, a.out)


if __name__ == "__main__":
    main()
