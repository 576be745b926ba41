"""Every registered estimator through one contract; proxies against broken networks; halving."""
import dataclasses
import math
import random

import pytest
import torch

import space
from nas.data import Splits, load_digits_fallback
from nas.estimators import ESTIMATORS, Context, make, reduced_arch
from nas.estimators.train import promote, rungs, successive_halving
from space.darts import DARTS_V2, Cell, DartsSpace

OPS = ["skip_connect", "max_pool_3x3", "sep_conv_3x3", "dil_conv_3x3"]
FAST = {"supernet": {"epochs": 1}, "train": {"min_epochs": 1, "max_epochs": 2, "eta": 2},
        "zc:vote": {"reference": 4},  # 4 reference architectures, not 32: the contract, not the quality
        "tse": {"steps": 3}}


@pytest.fixture(scope="module")
def ctx():
    ds = load_digits_fallback(0, size=16)
    splits = Splits.make(ds, 32, 0.2, 0, calib_batches=2)
    splits.train.limit = 3  # a few batches per epoch: the contract, not the quality
    splits.val.limit = 1
    sp = DartsSpace(ops=OPS, fusions=["sum"], channels=8, cells=3, input_size=(3, 16, 16),
                    supernet_channels=4, supernet_cells=2)
    return Context(sp, splits, ds.num_classes, ds.input_size, seed=1, progress=False)


def _archs(sp, n=3):
    rng = random.Random(0)
    return [sp.sample(rng) for _ in range(n)]


@pytest.mark.parametrize("name", ESTIMATORS.names())
def test_estimator_contract(ctx, name):
    """Finite scores; the same seed gives the same scores; another seed changes a stochastic one."""
    archs = _archs(ctx.space)
    runs = []
    for _ in range(2):
        est = make(name, ctx, **FAST.get(name, {}))
        est.prepare()
        runs.append([est.score(a) for a in archs])
    assert all(isinstance(s, float) and math.isfinite(s) for s in runs[0])
    assert runs[0] == runs[1]
    d = est.describe()
    assert d["estimator"] == name and isinstance(d["is_accuracy"], bool)
    if est.is_accuracy:
        assert all(0 <= s <= 1 for s in runs[0])
    many = make(name, ctx, **FAST.get(name, {}))
    many.prepare()
    assert [math.isfinite(s) for s in many.score_many(archs)] == [True] * len(archs)


def test_unknown_estimator_option_is_refused(ctx):
    with pytest.raises(ValueError, match="takes no option"):
        make("zc:synflow", ctx, bogus=1)


def _broken(arch):
    """Every edge ``none``: no signal reaches the classifier from the cells."""
    dead = lambda c: Cell(edges=tuple(("none", i) for _, i in c.edges), combine=c.combine, concat=c.concat)
    return dataclasses.replace(arch, normal=dead(arch.normal), reduce=dead(arch.reduce))


@pytest.mark.parametrize("name", [n for n in ESTIMATORS.names() if n.startswith("zc:")])
def test_proxy_scores_a_broken_network_below_a_sound_one(ctx, name):
    """Zero-cost proxies measure trainability/expressivity (synflow, NASWOT, Zen, ZiCo, MeCo) or
    gradient signal (grad_norm, SNIP): a network whose cells pass nothing has none of either, and
    no parameters or multiply-adds in its cells."""
    sound = dataclasses.replace(DARTS_V2, channels=8, cells=3, input_size=(3, 16, 16))
    est = make(name, ctx)
    assert est.score(_broken(sound)) < est.score(sound)


def test_tse_scores_a_broken_network_below_a_sound_one(ctx):
    """A network whose cells pass nothing can only learn the class prior: its training loss stays
    near log(10) while a sound network's falls (Ru et al.'s premise: faster training, better)."""
    sound = dataclasses.replace(DARTS_V2, channels=8, cells=3, input_size=(3, 16, 16))
    est = make("tse", ctx, steps=6)
    assert est.score(_broken(sound)) < est.score(sound)


def test_tse_is_minus_the_summed_last_losses_of_one_training(ctx):
    """The score sums the last ``window`` share of the losses (TSE-E; window=1: all of them);
    fewer steps score a prefix of the same training (bench/tse_steps.py reads every prefix off
    one run); the losses wrap past an epoch (3 batches here); the stream is not the run seed's own
    (a ground truth trains seed 0 with the same recipe)."""
    from nas.estimators.tse import SEED_OFFSET

    arch = _archs(ctx.space, 1)[0]
    losses = make("tse", ctx).trainer(arch).losses(5)
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses)
    parts = make("tse", ctx).trainer(arch)
    assert parts.losses(2) + parts.losses(3) == pytest.approx(losses, rel=1e-6)  # calls go on, not restart
    for k, window, last in ((2, 1, 2), (5, 1, 5), (5, 0.5, 3), (4, 0.5, 2), (5, 0.2, 1), (5, 0.01, 1)):
        score = make("tse", ctx, steps=k, window=window).score(arch)
        assert score == pytest.approx(-sum(losses[k - last:k]), rel=1e-6)
    assert make("tse", ctx, steps=5).score(arch) == pytest.approx(-sum(losses[2:]), rel=1e-6)  # default: half
    from nas.train import Trainer

    tr = make("tse", ctx).trainer(arch)
    assert tr.batches.seed == ctx.splits.train.fresh(ctx.seed + SEED_OFFSET).seed
    plain = Trainer(reduced_arch(arch, ctx.input_size, ctx.num_classes), ctx.splits.train, 3, seed=ctx.seed)
    assert plain.losses(2) != losses[:2]


def test_tse_trains_at_its_resolution(ctx):
    """Below the data's size, the copy and its batches are area-downsampled (renormalised); at or
    above it (or 0) the data's own size is kept."""
    arch = _archs(ctx.space, 1)[0]
    small = make("tse", ctx, resolution=8)
    tr = small.trainer(arch)
    x, _ = next(iter(tr.batches))
    assert tuple(x.shape[-2:]) == (8, 8) and tr.net(x.contiguous(memory_format=torch.channels_last)).shape[-1] == 10
    assert abs(float(x.mean())) < 0.5 and 0.5 < float(x.std()) < 1.5
    for keep in (0, 16, 64):
        assert make("tse", ctx, resolution=keep).size == (16, 16)
    assert small.score(arch) != make("tse", ctx, resolution=0).score(arch)


def test_tse_refuses_bad_options(ctx):
    for bad in ({"steps": 0}, {"lr": 0}, {"epochs": 0}, {"window": 0}, {"window": 1.5}):
        with pytest.raises(ValueError, match="tse estimator"):
            make("tse", ctx, **bad)


def test_proxies_score_the_official_forms(ctx):
    """The equal fast training forms are for training speed: a proxy scores the official forms,
    or MeCo would miss the maps of submodules a fast form does not call (FactorizedReduce's
    conv_2: DARTS-V2 here has one after each reduction cell)."""
    from nas.estimators.zc import meco
    from space.ops.common import official_forms

    sound = dataclasses.replace(DARTS_V2, channels=8, cells=3, input_size=(3, 16, 16))
    est = make("zc:meco", ctx)
    x, y = est.batches[0]

    def direct(official):
        net = est.network(sound)
        torch.manual_seed(ctx.seed)
        with official_forms(official):
            return meco(net, x, y)

    assert direct(False) != direct(True)
    assert est.score(sound) == direct(True)


def test_successive_halving_keeps_the_best():
    quality = [0.31, 0.9, 0.42, 0.12, 0.77, 0.55, 0.6, 0.2, 0.05]
    calls = []

    def evaluate(i, rung):  # accuracy grows with training, order kept: the best must survive
        calls.append((i, rung))
        return quality[i] * (rung + 1) / 3

    scores = successive_halving(len(quality), evaluate, n_rungs=3, eta=3)
    best = max(range(len(quality)), key=quality.__getitem__)
    assert max(range(len(scores)), key=scores.__getitem__) == best
    assert (best, 2) in calls
    assert sum(1 for _, r in calls if r == 2) == 1  # 9 -> 3 -> 1
    assert sum(1 for _, r in calls if r == 1) == 3
    # survivors rank above every candidate stopped earlier
    stopped = [scores[i] for i in range(len(quality)) if (i, 1) not in calls]
    assert min(scores[i] for i in range(len(quality)) if (i, 1) in calls) > max(stopped)


def test_asha_promotes_only_the_top_share():
    seen = [0.2, 0.5]
    assert not promote(seen, 0.5, eta=3)  # fewer than eta seen: nobody goes on yet
    seen = [0.2, 0.5, 0.9]
    assert promote(seen, 0.9, eta=3) and not promote(seen, 0.5, eta=3)
    assert rungs(1, 9, 3) == [1, 3, 9] and rungs(1, 2, 3) == [1, 2] and rungs(2, 2, 3) == [2]
    with pytest.raises(ValueError):
        rungs(0, 3, 3)


def test_train_estimator_streams_with_asha(ctx):
    est = make("train", ctx, min_epochs=1, max_epochs=2, eta=2)
    scores = [est.score(a) for a in _archs(ctx.space, 4)]
    promoted = [s for s in scores if s >= 1]
    assert 0 < len(promoted) < 4  # some went on to the second rung, not all
    assert all(0 <= s < 2 for s in scores)


@pytest.mark.parametrize("name", space.OPS.names())
def test_op_is_the_same_in_channels_last(name):
    """Stand-alone training runs channels-last (bench/train_speed.py): every op must compute the
    same function in that memory format."""
    torch.manual_seed(0)
    C, hw = 8, (8, 8)
    op = space.base.make_op(name, C, C, 1, hw).eval()
    x = torch.randn(2, C, *hw)
    with torch.no_grad():
        a = op(x)
        b = op.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


class _Killed(Exception):
    pass


@pytest.mark.parametrize("sampling", ["uniform", "fair"])
def test_supernet_training_resumes_mid_training_exactly(ctx, tmp_path, sampling):
    """A kill after epoch 1 of 3 keeps that epoch (checkpointed atomically); the resumed training
    ends with the very weights of an uninterrupted one."""
    whole = make("supernet", dataclasses.replace(ctx, folder=None), epochs=3, sampling=sampling)
    whole.prepare()
    killed = make("supernet", dataclasses.replace(ctx, folder=tmp_path), epochs=3, sampling=sampling)
    save = killed._save

    def save_then_die(state):
        save(state)
        if state["epoch"] == 1:
            raise _Killed()

    killed._save = save_then_die
    with pytest.raises(_Killed):
        killed.prepare()
    assert torch.load(tmp_path / "supernet.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "supernet.pt.tmp").exists()
    resumed = make("supernet", dataclasses.replace(ctx, folder=tmp_path), epochs=3, sampling=sampling)
    resumed.prepare()
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for (k, a), b in zip(whole.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(a, b), k
