"""Module verdicts: a deliberately harmful op costs accuracy, a neutral one has no measurable effect;
every space can list an arch's modules and ablate one to its plain counterpart."""
import random

import numpy as np
import pytest

import space
import toys
from nas.budget import parse_budget
from nas.costs import CostModel
from nas.data import Splits, load_digits_fallback
from nas.estimators import Context, make
from nas.problem import Objective, Problem
from nas.verdicts import bootstrap_mean, module_verdicts, verdict
from space.darts import DartsSpace


@pytest.fixture
def toy_ops():
    with toys.toy_ops():
        yield


@pytest.mark.parametrize("estimator", ["zc:meco", "zc:naswot"])
def test_harmful_op_costs_accuracy_and_neutral_op_has_no_effect(toy_ops, estimator):
    ds = load_digits_fallback(0, size=16)
    splits = Splits.make(ds, 64, 0.2, 0, calib_batches=2)
    sp = DartsSpace(ops=toys.TOY_OPS, fusions=["sum"], channels=8, cells=3, input_size=(3, 16, 16))
    est = make(estimator, Context(sp, splits, ds.num_classes, ds.input_size, seed=0, progress=False))
    est.prepare()
    prob = Problem(sp, parse_budget("1GFLOPs"), CostModel(), est.score,
                   [Objective("score", True), Objective("flops", False)])
    rng = random.Random(0)
    recs = [prob.evaluate({k: rng.choice(v) for k, v in sp.choices().items()}, i) for i in range(24)]
    df = module_verdicts(sp, recs, recs[:3], est.score, CostModel(), k=5).set_index("module")
    assert df.loc["zz_harmful", "verdict"] == "costs accuracy", df
    assert df.loc["zz_neutral", "verdict"] == "no measurable effect", df
    assert df.loc["zz_neutral", "d_mflops"] == 0 and df.loc["zz_harmful", "plain"] == "sep_conv_3x3"
    assert set(df.index) == {"zz_harmful", "zz_neutral"}  # plain ops are the reference, not verdicts
    assert (df.pairs == 5).all() and (df.evaluated <= 24).all()


@pytest.mark.parametrize("name", space.SPACES.names())
def test_every_space_lists_modules_and_ablates_each(name):
    sp = space.SPACES[name]()
    rng = random.Random(3)
    for _ in range(3):
        arch = sp.sample(rng)
        for role, module in sp.modules(arch):
            plain = sp.without(arch, role, module)
            plain.validate()
            assert (role, module) not in sp.modules(plain)
            assert sp.plain(role, module) != module
            others = {k: v for k, v in sp.modules(arch).items() if k != (role, module)}
            assert {k: v for k, v in sp.modules(plain).items() if k in others} == others


def test_bootstrap_and_verdict_rules():
    mean, lo, hi = bootstrap_mean([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and 1.0 <= lo < mean < hi <= 4.0
    assert verdict(0.1, 2.0, 3) == "pays off" and verdict(-2.0, -0.1, 3) == "costs accuracy"
    assert verdict(-1.0, 1.0, 3) == "no measurable effect" and verdict(0.1, 2.0, 2) == "too few pairs"
    assert np.isnan(bootstrap_mean([])[0])


@pytest.mark.parametrize("name,budget", [("darts", "300MFLOPs"), ("mobile", "300MFLOPs"),
                                         pytest.param("metaformer", "500MFLOPs", marks=pytest.mark.slow),  # about 25 s
                                         ("darts", "1.5Mparams")])
def test_baselines_are_scaled_by_their_family_rule_to_fit_the_budget(name, budget):
    from nas import flops
    from nas.baselines import fit_to_budget, scaled_baselines

    sp = space.SPACES[name]()
    constraints = parse_budget(budget)
    df = scaled_baselines(sp, constraints, CostModel(), lambda a: 0.5)
    assert list(df.name.str.split(" ").str[0]) == list(sp.BASELINES) and (df.scale <= 1).all()
    for preset in sp.BASELINES:
        arch, factor, c = fit_to_budget(sp, sp.presets[preset], constraints, CostModel())
        net = space.build(arch)
        plain = {"flops": flops.count(net, [(1, *arch.input_size)]), "params": flops.params(net)}
        assert all(k.violation(plain[k.kind]) <= 0 for k in constraints)  # within budget under plain fvcore
        if factor < 1:  # and the largest step that does: one step wider would not fit
            wider = sp.scaled(sp.presets[preset], factor / 0.95)
            wc = CostModel()(wider)
            assert any(k.violation(wc[k.kind]) > 0 for k in constraints) or wider == arch
    if name == "darts" and budget == "300MFLOPs":
        v2 = df.set_index("name").filter(like="darts_v2", axis=0).iloc[0]
        assert 0.5 < v2.scale < 1 and v2.flops <= 300e6 and v2.score == 0.5
