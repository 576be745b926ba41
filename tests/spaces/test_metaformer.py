"""The metaformer space: published presets, exact part costs, round trips, supernet."""
import random

import pytest
import torch
from torch import nn

import space
import space.metaformer_blocks
from nas import flops
from space import metaformer as M
from space.registry import Registry

STYLES = ("van", "swiftformer", "biformer")


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# modules.md [M]: params / fvcore MACs of the official code at 224x224
PUBLISHED = {"van_b0": (4.106e6, 0.868e9), "swiftformer_xs": (3.475e6, 0.605e9),
             "biformer_t": (13.143e6, 2.228e9)}
# the official READMEs' tables (rounded to 0.1M and 0.1G): VAN-Classification, SwiftFormer, BiFormer
README = {"van_b1": (13.9e6, 2.5e9), "van_b2": (26.6e6, 5.0e9), "van_b3": (44.8e6, 9.0e9),
          "swiftformer_s": (6.1e6, 1.0e9), "swiftformer_l1": (12.1e6, 1.6e9), "swiftformer_l3": (28.5e6, 4.0e9),
          "biformer_s": (25.5e6, 4.5e9), "biformer_b": (56.8e6, 9.8e9)}


@pytest.mark.parametrize("name", PUBLISHED)
def test_presets_reproduce_published_figures_and_parts_add_up(name):
    arch = space.preset(name)
    net = space.build(arch)
    params, macs = PUBLISHED[name]
    assert abs(n_params(net) / params - 1) < 0.01
    with torch.no_grad():
        fca = flops.analysis(net.eval(), torch.zeros(1, 3, 224, 224))
        total = int(fca.total())
    assert not fca.unsupported_ops(), dict(fca.unsupported_ops())
    assert abs(total / macs - 1) < 0.03
    assert flops.PartCounter().total(space.parts(arch)) == total


@pytest.mark.parametrize("name", README)
def test_larger_presets_match_the_readme_tables(name):
    """Params within 1% and fvcore multiply-adds within 3% of the rounded README figures."""
    arch = space.preset(name)
    params, macs = README[name]
    assert abs(n_params(space.build(arch)) / params - 1) < 0.01
    assert abs(flops.PartCounter().total(space.parts(arch)) / macs - 1) < 0.03


def test_swiftformer_count_includes_the_distillation_head():
    # modules.md: 3.475M with the distillation head, 3.254M without it
    arch = M.SWIFTFORMER_XS
    assert arch.dist_head == 1
    without = M.build(M.replace(arch, dist_head=0))
    assert abs(n_params(without) / 3.254e6 - 1) < 0.01
    assert n_params(M.build(arch)) - n_params(without) == 220 * 1000 + 1000


def test_biformer_preset_uses_published_routing():
    kws = [dict(s.mixer_kw) for s in M.BIFORMER_T.stages]
    assert kws == [{"n_win": 7, "topk": 1}, {"n_win": 7, "topk": 4}, {"n_win": 7, "topk": 16}, {"n_win": 7, "topk": -2}]
    blocks = [m for m in M.build(M.BIFORMER_T).modules() if isinstance(m, M.TokenSub)]
    assert type(blocks[-1].mixer).__name__ == "AttentionLePE"
    assert type(blocks[0].mixer).__name__ == "BiLevelRoutingAttention"


def test_bra_keywords_adapt_to_resolution():
    assert M.bra_kw((56, 56), 1) == (("n_win", 7), ("topk", 1))
    assert M.bra_kw((32, 32), 16) == (("n_win", 4), ("topk", 5))  # 16 regions: 16 * 16/49 -> 5
    assert M.bra_kw((4, 4), 1) == (("n_win", 4), ("topk", 1))
    assert M.bra_kw((13, 13), 4) == (("n_win", 1), ("topk", 1))
    assert M.adapted_stem_stride((224, 224)) == 4 and M.adapted_stem_stride((32, 32)) == 1
    assert M.adapted_stem_stride((64, 64)) == 2


@pytest.mark.parametrize("name", PUBLISHED)
def test_presets_round_trip_and_encode_in_their_style(name):
    arch = space.preset(name)
    assert M.MetaformerArch.from_json(arch.to_json()) == arch
    assert space.ArchBase.from_json(arch.to_json()) == arch  # found by its "space" field
    style = {"van_b0": "van", "swiftformer_xs": "swiftformer", "biformer_t": "biformer"}[name]
    sp = space.get_space("metaformer", style=style)
    assert sp.decode(sp.encode(arch)) == arch
    other = space.get_space("metaformer", style="biformer" if style != "biformer" else "van")
    with pytest.raises(ValueError):
        other.encode(arch)


@pytest.mark.parametrize("style", STYLES)
def test_random_archs_parts_are_exact_and_round_trip(style):
    sp = space.get_space("metaformer", style=style, input_size=(3, 64, 64), num_classes=10)
    rng = random.Random(1)
    known = {p.key for p in sp.all_parts()}
    assert len(known) <= 1500
    counter = flops.PartCounter()
    for _ in range(2):
        arch = sp.sample(rng)
        assert M.MetaformerArch.from_json(arch.to_json()) == arch
        assert sp.decode(sp.encode(arch)) == arch
        net = space.build(arch).eval()
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 10)
        assert counter.total(space.parts(arch)) == flops.count(net, [(1, 3, 64, 64)])
        assert {p.key for p in space.parts(arch)} <= known


def test_default_space_is_small_enough_for_a_latency_table():
    for style in STYLES:
        assert len(list(space.get_space("metaformer", style=style).all_parts())) <= 1500


@pytest.mark.parametrize("style", STYLES)
def test_supernet_forward_backward_on_random_archs_at_32(style):
    sp = space.get_space("metaformer", style=style)
    net = sp.supernet(10, (3, 32, 32))
    rng = random.Random(2)
    for _ in range(2):
        arch = sp.sample(rng)
        net.set_active(arch)
        net.train()
        out = net(torch.randn(2, 3, 32, 32))
        assert out.shape == (2, 10)
        out.pow(2).mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    # the last stage stays at 4x4 (stem stride 1 at 32x32)
    seen = []
    net.stages[-1][0].register_forward_hook(lambda m, i, o: seen.append(o.shape[-2:]))
    net.eval()(torch.randn(1, 3, 32, 32))
    assert seen == [torch.Size([4, 4])]


def test_supernet_depth_and_path_follow_the_arch():
    sp = space.get_space("metaformer", style="swiftformer")
    net = sp.supernet(10, (3, 32, 32))
    arch = sp.decode({**{k: v[0] for k, v in sp.choices().items()}, "s3_depth": 4})
    net.set_active(arch)
    modes = [p.mode for p in net.stages[2]]
    assert modes == ["conv"] * 3 + ["mixer"] + ["skip"] * (len(modes) - 4)


def _block_pair(style_norm, ls):
    torch.manual_seed(0)
    a = M.ChannelSub(16, "mlp", 4.0, style_norm, ls)
    b = M.ChannelSub(16, "adapt_mlp", 4.0, style_norm, ls)
    b.norm.load_state_dict(a.norm.state_dict())
    b.mixer.mlp.load_state_dict(a.mixer.state_dict())
    if ls:
        b.layer_scale.data.copy_(a.layer_scale.data)
    return a, b


@pytest.mark.parametrize("norm,ls", [("bn", 1e-2), ("ln", 0.0), ("bn", 1e-5)])
def test_adapt_mlp_at_init_leaves_its_block_unchanged_exactly(norm, ls):
    a, b = _block_pair(norm, ls)
    x = torch.randn(2, 16, 6, 6)
    for mode in (True, False):
        a.train(mode), b.train(mode)
        assert torch.equal(a(x), b(x))


def test_adapter_reads_block_input_not_normed_input():
    a, b = _block_pair("bn", 1e-2)
    nn.init.normal_(b.mixer.adapter.up_proj.weight)
    b.eval()
    x = torch.randn(2, 16, 5, 5)
    expected = x + (b.layer_scale * b.mixer.mlp(b.norm(x)) + b.mixer.adapter(x))
    torch.testing.assert_close(b(x), expected)


def test_whole_network_with_adapters_equals_it_without_at_init():
    base = M.replace(M.VAN_B0, input_size=(3, 32, 32), num_classes=10,
                     stages=tuple(M.replace(s, channel_mixer="mlp") for s in M.VAN_B0.stages))
    adapted = M.replace(base, stages=tuple(M.replace(s, channel_mixer="adapt_mlp") for s in base.stages))
    net_a, net_b = M.build(base).eval(), M.build(adapted).eval()
    missing, unexpected = net_b.load_state_dict(
        {k.replace("mixer.", "mixer.mlp.", 1) if ".mixer.fc" in k or ".mixer.dwconv" in k else k: v
         for k, v in net_a.state_dict().items()}, strict=False)
    assert all("adapter" in k for k in missing) and not unexpected
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(net_a(x), net_b(x))


def test_validation_explains_bad_archs():
    def first(**kw):
        return M.replace(M.VAN_B0, stages=(M.replace(M.VAN_B0.stages[0], **kw),) + M.VAN_B0.stages[1:])

    with pytest.raises(space.ArchError, match="token mixer"):
        first(token_mixer="lka2").validate()
    with pytest.raises(space.ArchError, match="conv_blocks"):
        first(conv_blocks=4).validate()
    with pytest.raises(space.ArchError, match="unknown field"):
        M.MetaformerArch.from_json(M.VAN_B0.to_json().replace('"stem":', '"stemm":'))
    with pytest.raises(space.ArchError, match="4 stages"):
        M.replace(M.VAN_B0, stages=M.VAN_B0.stages[:3]).validate()
    with pytest.raises(space.ArchError, match="neck"):
        M.replace(M.VAN_B0, neck="nope").validate()


class _ToyNeck(nn.Module):
    """A stand-in neck (a 1x1 conv on the finest map, the others passed through, so output
    widths differ) to exercise the plumbing independently of the registered necks."""

    def __init__(self, channels, width):
        super().__init__()
        self.conv = nn.Conv2d(channels[0], width, 1)
        self.out_channels = [width, *channels[1:]]

    def forward(self, xs):
        return [self.conv(xs[0]), *xs[1:]]


def test_neck_plumbing_parts_exact_and_supernet(monkeypatch):
    reg = Registry("neck", "toy")
    reg.register("toy_neck", _ToyNeck, inputs=3)
    monkeypatch.setattr(space.metaformer_blocks, "neck_registry", lambda: reg)
    sp = space.get_space("metaformer", style="van", necks=["none", "toy_neck"], neck_width=32,
                         input_size=(3, 64, 64), num_classes=10)
    arch = sp.decode({**{k: v[0] for k, v in sp.choices().items()}, "neck": "toy_neck"})
    net = space.build(arch)
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert flops.PartCounter().total(space.parts(arch)) == flops.count(net, [(1, 3, 64, 64)])
    assert {p.key for p in space.parts(arch)} <= {p.key for p in sp.all_parts()}
    sup = sp.supernet(10, (3, 32, 32))
    sup.set_active(arch)
    sup(torch.randn(2, 3, 32, 32)).sum().backward()


@pytest.mark.parametrize("neck", ["fpt_neck", "cfnet_transition"])
def test_registered_necks(neck):
    if neck not in M.available_necks():
        pytest.skip(f"{neck} not registered (macro work)")
    if neck == "fpt_neck":
        assert space.get_space("metaformer").choices()["neck"] == ["none", "fpt_neck"]
    sp = space.get_space("metaformer", input_size=(3, 64, 64), num_classes=10, necks=["none", neck],
                         neck_width=32, supernet_neck_width=16)
    arch = sp.decode({**{k: v[0] for k, v in sp.choices().items()}, "neck": neck})
    net = space.build(arch).eval()  # FPT's RT needs batch > 1 in training (official BN)
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert flops.PartCounter().total(space.parts(arch)) == flops.count(net, [(1, 3, 64, 64)])
    keys = {p.key for p in sp.all_parts()}
    assert {p.key for p in space.parts(arch)} <= keys and len(keys) <= 1500
    sup = sp.supernet(10, (3, 32, 32))
    sup.set_active(arch)
    sup(torch.randn(2, 3, 32, 32)).sum().backward()  # FPT's RT needs batch > 1 in training


def _width_pair(sp, stage=2):
    """Two archs of ``sp`` that differ only in one stage's width."""
    base = {k: v[0] for k, v in sp.choices().items()}
    ws = sp.choices()[f"s{stage}_width"]
    return sp.decode({**base, f"s{stage}_width": ws[0]}), sp.decode({**base, f"s{stage}_width": ws[-1]})


@pytest.mark.parametrize("style", STYLES)
def test_supernet_represents_widths_and_a_path_is_its_standalone_network(style):
    sp = space.get_space("metaformer", style=style)
    torch.manual_seed(0)
    sup = sp.supernet(10, (3, 32, 32))
    narrow, wide = _width_pair(sp)
    x = torch.randn(3, 3, 32, 32)
    sup.train()
    for a in (narrow, wide):  # a training step moves the shared weights and BN statistics
        sup.set_active(a)
        sup(x).pow(2).mean().backward()
    sup.eval()
    outs = []
    for a in (narrow, wide):
        sup.set_active(a)
        with torch.no_grad():
            outs.append(sup(x))
        sub = sup.subnet(a).eval()  # the stand-alone network at that width, inherited weights
        assert [s.width for s in sup.subnet_arch(a).stages] == sup.widths_of(a)
        with torch.no_grad():
            torch.testing.assert_close(sub(x), outs[-1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(outs[0], outs[1]), "widths that differ must score differently"
    assert sup.widths_of(narrow)[1] < sup.widths_of(wide)[1]


def test_supernet_widths_differ_in_supernet_estimator_scores():
    from nas.data import Splits, load_digits_fallback
    from nas.estimators import Context, make

    ds = load_digits_fallback(0, size=16)
    splits = Splits.make(ds, 32, 0.2, 0, calib_batches=2)
    splits.train.limit, splits.val.limit = 3, 2
    sp = space.get_space("metaformer", input_size=(3, 16, 16), num_classes=ds.num_classes,
                         token_mixers=["pool_mixer"], channel_mixers=["mlp"], necks=["none"])
    est = make("supernet", Context(sp, splits, ds.num_classes, ds.input_size, seed=0, progress=False), epochs=1)
    est.prepare()
    narrow, wide = _width_pair(sp, stage=4)
    scores = [est.score(a) for a in (narrow, wide)]
    logits = []
    for a in (narrow, wide):
        est.net.set_active(a)
        est.net.eval()
        with torch.no_grad():
            logits.append(est.net(torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))))
    assert not torch.allclose(logits[0], logits[1])
    assert all(0 <= s <= 1 for s in scores)


def test_width_map_is_proportional_and_refuses_collisions():
    from space.metaformer_supernet import width_map

    assert width_map([32, 48, 64], 16) == {32: 8, 48: 12, 64: 16}
    with pytest.raises(ValueError, match="too narrow"):
        width_map([60, 62, 64], 8)


def test_stochastic_depth_rises_over_blocks_and_follows_the_recipes():
    net = M.build(M.VAN_B0, deploy=False)
    net.set_drop_path(0.1)
    subs = [m for m in net.modules() if isinstance(m, (M.TokenSub, M.ChannelSub))]
    rates = [m.drop_prob for m in subs]
    assert rates[0] == rates[1] == 0.0 and rates[-1] == rates[-2] == pytest.approx(0.1)
    assert len(set(rates)) == sum(s.depth for s in M.VAN_B0.stages)  # one rate per block
    assert rates == sorted(rates)
    assert [M.recipe_drop_path(p) for p in (M.VAN_B0, M.VAN_B3, M.SWIFTFORMER_L1, M.BIFORMER_S)] == [0.1, 0.2, 0.0, 0.15]
    sw = M.build(M.SWIFTFORMER_XS, deploy=False)
    sw.set_drop_path(0.2)
    convs = [m for m in sw.modules() if isinstance(m, M.ConvEncoder)]
    assert convs[0].drop_prob == 0.0 and 0 < convs[-1].drop_prob < 0.2


def test_stochastic_depth_drops_whole_branches_in_training_only():
    torch.manual_seed(0)
    sub = M.TokenSub(8, "dwconv_mixer", {}, "none", 0.0)
    x = torch.randn(64, 8, 4, 4)
    sub.drop_prob = 0.5
    sub.train()
    kept = (sub(x) - x).flatten(1).abs().sum(1) > 0
    assert 10 < int(kept.sum()) < 54  # about half the samples keep their branch
    sub.eval()
    torch.testing.assert_close(sub(x), x + sub.mixer(x))
