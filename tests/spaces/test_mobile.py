"""The mobile space: presets' published figures, parts that add up exactly, arch data round
trips, decode/encode, the attention chain along a stage, and the supernet at 32x32.

Test-only registry entries (a conv variant with a deploy form, a plain and a chained
attention, a fusion) are added by the ``fakes`` fixture and removed afterwards, so random
archs exercise every plug-in path without depending on other modules' files."""
import contextlib
import json
import random
from dataclasses import replace

import pytest
import torch
from torch import nn

import space
from nas import flops
from space.arch import ArchBase, ArchError
from space.mobile_supernet import SuperBlock, supernet_strides
from space.mobile import (MOBILENET_V2, MOBILENEXT, Block, MobileArch, MobileSpace, build, parts,
                          plan)
from space.ops.genet import GENetHead, genet_loss
from space.registry import ATTENTIONS, DW_CONVS, FUSIONS

SMALL = dict(input_size=(3, 32, 32), num_classes=10)


# -- test-only registry entries ----------------------------------------------------------------

class TwoBranchDW(nn.Module):
    """k x k depthwise plus a 1x1 depthwise branch; deploy() folds them into one conv."""

    def __init__(self, C, kernel_size, stride, **kw):
        super().__init__()
        self.k = nn.Conv2d(C, C, kernel_size, stride, kernel_size // 2, groups=C, bias=False)
        self.one = nn.Conv2d(C, C, 1, stride, 0, groups=C, bias=False)

    def forward(self, x):
        return self.k(x) + self.one(x)

    def deploy(self):
        conv = nn.Conv2d(self.k.in_channels, self.k.out_channels, self.k.kernel_size, self.k.stride,
                         self.k.padding, groups=self.k.groups, bias=False)
        c = self.k.kernel_size[0] // 2
        conv.weight.data.copy_(self.k.weight.detach())
        conv.weight.data[:, :, c, c] += self.one.weight.detach()[:, :, 0, 0]
        return conv


class Gate(nn.Module):
    def __init__(self, C, **kw):
        super().__init__()
        self.fc = nn.Conv2d(C, C, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


class ChainGate(nn.Module):
    """A gate mixing in its chain predecessor's gate (DCANet-like); records what it found."""

    network_state_key = "test_chain"

    def __init__(self, C, **kw):
        super().__init__()
        self.fc = nn.Conv2d(C, C, 1)
        self.mix = nn.Conv2d(C, C, 1, groups=C)
        self.state, self.seen_prev = None, []

    def use_network_state(self, state):
        self.state = state

    def example_state(self, x):
        return x.new_zeros(x.shape[0], x.shape[1], 1, 1)

    def forward(self, x):
        g = self.fc(x.mean((2, 3), keepdim=True))
        prev = None if self.state is None else self.state.get(self.network_state_key)
        self.seen_prev.append(prev is not None)
        if prev is not None:
            g = g + self.mix(prev)
        if self.state is not None:
            self.state[self.network_state_key] = g
        return x * torch.sigmoid(g)


class WeightedSum(nn.Module):
    def __init__(self, C, **kw):
        super().__init__()
        self.w = nn.Conv2d(C, C, 1)

    def forward(self, x, y):
        return x + self.w(y)


FAKES = [(DW_CONVS, "test_rep_dw", TwoBranchDW, {}), (ATTENTIONS, "test_gate", Gate, {}),
         (ATTENTIONS, "test_chain", ChainGate, {"state": "test_chain"}), (FUSIONS, "test_wsum", WeightedSum, {})]


@contextlib.contextmanager
def registered():
    for reg, name, fn, meta in FAKES:
        reg.register(name, fn, **meta)
    try:
        yield
    finally:
        for reg, name, _, _ in FAKES:
            for table in (reg._fns, reg._tags, reg._meta):
                table.pop(name, None)


@pytest.fixture
def fakes():
    with registered():
        yield


def _space(base="mobilenetv2", **kw):
    """A space offering exactly the plain and the test-only plug-ins (stable as registry grow)."""
    opts = dict(convs=["plain", "test_rep_dw"], attentions=["none", "test_gate", "test_chain"],
                fusions=["sum", "test_wsum"])
    return MobileSpace(base=base, **{**opts, **SMALL, **kw})


# -- presets ---------------------------------------------------------------------------------------

def _figures(arch):
    net = build(arch).eval()
    with torch.no_grad():
        by_op = flops.analysis(net, (torch.zeros(1, 3, 224, 224),)).by_operator()
    return net, by_op, sum(by_op.values())


def test_mobilenet_v2_preset_is_torchvision_exactly_and_its_parts_add_up():
    net, _, total = _figures(space.preset("mobilenet_v2"))
    assert flops.params(net) == 3_504_872
    assert total == 314_193_216
    assert flops.PartCounter().total(parts(MOBILENET_V2)) == total


def test_mobilenext_preset_matches_the_official_code_and_its_parts_add_up():
    net, by_op, total = _figures(space.preset("mobilenext"))
    assert flops.params(net) == pytest.approx(3.535e6, rel=0.01)  # [M]: 3,535,416
    assert by_op["conv"] + by_op["linear"] == pytest.approx(311e6, rel=0.03)
    assert total == pytest.approx(327.5e6, rel=0.03)
    assert flops.PartCounter().total(parts(MOBILENEXT)) == total


# (params, conv + linear MACs) at 224: MobileNetV2 from TF-slim's mobilenet_v2 README table
# (MACs exact; TF counts params 1% lower than torchvision's 3,504,872 at x1.0 already);
# MobileNeXt measured on the official mnext.py MXNet(width_mult) [M] (params, fvcore total)
MOBILENET_V2_WIDTHS = {"035": (1.66e6, 59e6), "050": (1.95e6, 97e6), "075": (2.61e6, 209e6), "140": (6.06e6, 582e6)}
MOBILENEXT_WIDTHS = {"035": (1_913_976, 81_323_656), "050": (2_152_304, 111_530_784),
                     "075": (2_766_168, 220_325_680), "140": (6_126_168, 611_212_056)}


@pytest.mark.parametrize("mult", MOBILENET_V2_WIDTHS)
def test_mobilenet_v2_width_presets_match_the_published_table(mult):
    arch = space.preset(f"mobilenet_v2_{mult}")
    net, by_op, total = _figures(arch)
    params, macs = MOBILENET_V2_WIDTHS[mult]
    assert flops.params(net) == pytest.approx(params, rel=0.015)
    assert round((by_op["conv"] + by_op["linear"]) / 1e6) == macs / 1e6
    assert flops.PartCounter().total(parts(arch)) == total
    assert arch.stem == {"035": 16, "050": 16, "075": 24, "140": 48}[mult]  # the stem scales too


@pytest.mark.parametrize("mult", MOBILENEXT_WIDTHS)
def test_mobilenext_width_presets_are_the_official_code(mult):
    arch = space.preset(f"mobilenext_{mult}")
    net, _, total = _figures(arch)
    assert (flops.params(net), total) == MOBILENEXT_WIDTHS[mult]
    assert flops.PartCounter().total(parts(arch)) == total
    assert arch.stages[-1].width == (1280 if mult != "140" else 1792)  # the wide end is never narrowed


def test_base_width_scales_the_whole_base_and_stays_off_the_default_settings():
    from space.mobile import MOBILENET_V2 as V2, width_multiplied

    sp = MobileSpace(base_width=140)
    assert sp.settings()["base_width"] == 140 and "base_width" not in MobileSpace().settings()
    arch = sp.sample(random.Random(0))
    wide = width_multiplied(V2, 1.4)
    assert arch.stem == wide.stem == 48 and arch.stages[0] == wide.stages[0]
    assert arch.head_channels == 1792
    assert sp.decode(sp.encode(arch)) == arch
    assert {p.key for p in parts(arch)} <= {p.key for p in sp.all_parts()}


# -- parts -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("base", ["mobilenetv2", "mobilenext"])
def test_parts_add_up_exactly_on_random_archs_and_all_parts_holds_them(fakes, base):
    sp = _space(base, heads=["plain", "genet"])
    known = {p.key for p in sp.all_parts()}
    counter, rng = flops.PartCounter(), random.Random(3)
    for _ in range(3):
        arch = sp.sample(rng)
        ps = parts(arch)
        assert counter.total(ps) == flops.count(build(arch), [(1, *arch.input_size)])
        assert {p.key for p in ps} <= known


def test_distinct_parts_stay_modest_for_the_default_choices():
    for base in ("mobilenetv2", "mobilenext"):
        sp = MobileSpace(base=base, convs=["plain"], attentions=["none"], fusions=["sum"])
        n = sum(1 for _ in sp.all_parts())
        # conv parts scale with the number of conv variants, attention parts with attentions
        assert 100 < n <= 1000, n


# -- arch data -------------------------------------------------------------------------------------

def test_json_round_trip(fakes):
    sp, rng = _space(), random.Random(0)
    for arch in [MOBILENET_V2, MOBILENEXT] + [sp.sample(rng) for _ in range(5)]:
        text = arch.to_json()
        assert MobileArch.from_json(text) == arch
        assert ArchBase.from_dict(json.loads(text)) == arch
        assert MobileArch.from_json(text).arch_hash == arch.arch_hash


def test_decode_encode_and_canonical_choices(fakes):
    for base, own, other in (("mobilenetv2", MOBILENET_V2, MOBILENEXT), ("mobilenext", MOBILENEXT, MOBILENET_V2)):
        sp = MobileSpace(base=base, convs=["plain", "test_rep_dw"])
        assert sp.decode(sp.encode(own)) == own
        with pytest.raises(ValueError):
            sp.encode(other)
    sp, rng = _space(), random.Random(1)
    assert sp.choices() == _space().choices()
    assert MobileSpace(**{k: v for k, v in json.loads(json.dumps(sp.settings())).items()
                          if k != "space"}).choices() == sp.choices()
    for _ in range(10):
        params = {k: rng.choice(v) for k, v in sp.choices().items()}
        arch = sp.decode(params)
        assert sp.decode(sp.encode(arch)) == arch
        assert len(arch.stages[3].blocks) == params["s3_depth"]
        assert arch.stages[3].width == MobileSpace.width(64, params["s3_width"])
        for p in plan(arch).blocks:
            if not p.residual:
                assert p.block.fusion == "sum"  # an unused fusion choice is canonical
            if p.form == "pw":
                assert (p.block.kernel, p.block.conv) == (3, "plain")


def test_validate_explains_bad_archs():
    with pytest.raises(ArchError, match="did you mean plain"):
        replace(MOBILENET_V2, stages=(replace(MOBILENET_V2.stages[0], blocks=(Block(conv="plane"),)),)).validate()
    with pytest.raises(ArchError, match="groups"):
        replace(MOBILENET_V2, head="genet", head_groups=3).validate()
    with pytest.raises(ArchError, match="one group"):
        replace(MOBILENET_V2, head_groups=2).validate()
    with pytest.raises(ArchError, match="block type"):
        replace(MOBILENET_V2, stages=(replace(MOBILENET_V2.stages[0], blocks=(Block(type="mb"),)),)).validate()


# -- the network -----------------------------------------------------------------------------------

def test_attention_chain_runs_along_a_stage_and_restarts_on_width_changes(fakes):
    ir = [Block("ir", 3, 6, attention="test_chain"), Block("ir", 3, 3, attention="test_chain"),
          Block("ir", 3, 3, attention="test_chain")]
    sg = Block("sg", 3, 6, attention="test_chain")
    st = list(MOBILENET_V2.stages)
    st[2] = replace(st[2], blocks=tuple(ir))  # hidden widths 24*6=144, 32*3=96, 96
    st[3] = replace(st[3], blocks=(sg,) * 4)  # every sandglass attention runs at 64
    arch = replace(MOBILENET_V2, stages=tuple(st), **SMALL)
    flags = [(p.att_prev, p.restart) for p in plan(arch).blocks if p.state_key]
    assert flags == [(False, False), (False, True), (True, False)] + [(False, False)] + [(True, False)] * 3
    net = build(arch).eval()
    with torch.no_grad():
        net(torch.randn(1, 3, 32, 32))
        net(torch.randn(1, 3, 32, 32))  # the state is cleared between forwards
    gates = [m for m in net.modules() if isinstance(m, ChainGate)]
    assert [g.seen_prev for g in gates] == [[prev, prev] for prev, _ in flags]
    keys = [p.key for p in parts(arch) if p.kind == "attention:test_chain"]
    assert [k.endswith("prev=1)") for k in keys] == [prev for prev, _ in flags]


def test_genet_head_in_the_space(fakes):
    sp = _space()
    params = {k: v[0] for k, v in sp.choices().items()}
    arch = sp.decode({**params, "head": "genet"})
    assert (arch.head, arch.head_groups) == ("genet", 4)
    net = build(arch, deploy=False).train()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    assert net(x).shape == (2, 10)
    assert isinstance(net.head, GENetHead) and genet_loss(net, y) is not None


def test_random_archs_train_with_finite_gradients(fakes):
    sp, rng = _space(), random.Random(5)
    for _ in range(2):
        net = build(sp.sample(rng), deploy=False).train()
        net(torch.randn(2, 3, 32, 32)).logsumexp(-1).mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
        assert net.stem[0].weight.grad.abs().sum() > 0


# -- supernet --------------------------------------------------------------------------------------

def test_supernet_stride_schedule():
    strides = [2, 1, 2, 2, 2, 1, 2, 1]  # MobileNetV2: stem, then the stages
    assert supernet_strides(strides, (32, 32), 4) == [1, 1, 1, 2, 2, 1, 2, 1]  # ends at 4x4
    assert supernet_strides(strides, (64, 64), 4) == [1, 1, 2, 2, 2, 1, 2, 1]
    assert supernet_strides(strides, (224, 224), 4) == strides


@pytest.mark.parametrize("base", ["mobilenetv2", "mobilenext"])
def test_supernet_forward_backward_for_random_archs(fakes, base):
    sp = _space(base, heads=["plain", "genet"])
    net = sp.supernet(10, (3, 32, 32))
    deployed = MOBILENET_V2 if base == "mobilenetv2" else MOBILENEXT
    for slots, st in zip(net.stages, deployed.stages):  # narrower than the deployed network
        assert all(isinstance(s, SuperBlock) and s.cout < st.width for s in slots)
    seen = []
    net.head.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape[2:])))
    rng = random.Random(2)
    for _ in range(2):
        net.set_active(sp.sample(rng))
        net.zero_grad()
        out = net.train()(torch.randn(2, 3, 32, 32))
        assert out.shape == (2, 10)
        out.logsumexp(-1).mean().backward()
        assert net.stem[0].weight.grad.abs().sum() > 0
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    assert set(seen) == {(4, 4)}


def test_every_registered_conv_variant_builds_at_every_kernel():
    """Real variants, including fixed-kernel ones (deconv is 3x3 only): decode maps the kernel."""
    sp = MobileSpace(base="mobilenetv2", convs=DW_CONVS.names(), attentions=["none"], fusions=["sum"], **SMALL)
    counter, rng = flops.PartCounter(), random.Random(5)
    keys = {p.key for p in sp.all_parts()}
    for _ in range(3):
        arch = sp.sample(rng)
        ps = parts(arch)
        assert {p.key for p in ps} <= keys
        assert counter.total(ps) == flops.count(build(arch), [(1, *arch.input_size)])
    net = sp.supernet(10, (3, 32, 32))
    for _ in range(3):
        net.set_active(sp.sample(rng))
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
