"""DARTS space: the published DARTS-V1/V2 figures, the ops' DARTS semantics, exact fast counts."""
import random

import pytest
import torch

import space
from nas import flops
from space.darts import DARTS_V1, DARTS_V2, Cell, DartsArch, DartsSpace
from space.ops.common import FactorizedReduce

DARTS_OPS = ["none", "skip_connect", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3", "sep_conv_5x5",
             "dil_conv_3x3", "dil_conv_5x5"]


def test_darts_v2_published_params_and_macs():
    net = space.build(DARTS_V2)
    assert flops.params(net) == 3_349_342  # DARTS README: 3.3M; official code: 3.349M (aux excluded)
    fca = flops.analysis(net.eval(), torch.zeros(1, 3, 32, 32))
    by_op = fca.by_operator()
    assert round((by_op["conv"] + by_op["linear"]) / 1e6) == 528  # [M] conv+linear MACs at 32x32
    assert not fca.unsupported_ops()


def test_darts_v2_imagenet_network_matches_the_paper():
    """DARTS' NetworkImageNet (C=48, 14 cells, 224x224): paper 4.7M params, 574M multiply-adds.
    fvcore counts 539M (conv + linear); the paper's counter is not published, so 7% is allowed."""
    arch = space.preset("darts_v2_imagenet")
    net = space.build(arch).eval()
    assert abs(flops.params(net) / 4.7e6 - 1) < 0.01
    macs = flops.count(net, [(1, 3, 224, 224)])
    assert abs(macs / 574e6 - 1) < 0.07
    assert flops.PartCounter().total(space.parts(arch)) == macs
    assert net(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)
    # the stems leave 28x28 (input 1) and 56x56 (input 0, through a FactorizedReduce) to the first cell
    assert isinstance(net.cells[0].preprocess0, FactorizedReduce)


def test_imagenet_stem_is_a_setting_and_old_archs_keep_their_json():
    sp = DartsSpace(stem="imagenet", channels=48, cells=14, input_size=(3, 224, 224), num_classes=1000)
    assert sp.settings()["stem"] == "imagenet" and "stem" not in DartsSpace().settings()
    arch = sp.sample(random.Random(0))
    assert arch.stem == "imagenet" and DartsArch.from_json(arch.to_json()) == arch
    assert {p.key for p in space.parts(arch)} <= {p.key for p in sp.all_parts()}
    assert "stem" not in DARTS_V2.to_dict()  # written only where it differs from the default
    with pytest.raises(space.ArchError, match="stem must be"):
        DartsArch(normal=DARTS_V2.normal, reduce=DARTS_V2.reduce, stem="bogus").validate()


def test_darts_v1_params():
    assert round(flops.params(space.build(DARTS_V1)) / 1e3) == 3_169  # [M] 3.169M


@pytest.mark.parametrize("name,expected", [("sep_conv_3x3", 864), ("sep_conv_5x5", 1376), ("dil_conv_3x3", 432),
                                           ("dil_conv_5x5", 688), ("max_pool_3x3", 0), ("avg_pool_3x3", 0),
                                           ("skip_connect", 0), ("none", 0)])
def test_darts_op_params_at_c16(name, expected):
    assert flops.params(space.OPS[name](16, 16, 1)) == expected  # modules.md section 19 [M]


def test_skip_connect_reduces_with_factorized_reduce():
    op = space.OPS["skip_connect"](16, 16, 2)
    assert flops.params(op) == 288  # two 1x1 convs 16->8 and BN(16)
    x = torch.randn(2, 16, 8, 8)
    assert op(x).shape == (2, 16, 4, 4)
    assert isinstance(space.OPS["skip_connect"](16, 16, 1), torch.nn.Identity)


def test_sep_conv_is_applied_twice_with_stride_on_first():
    op = space.OPS["sep_conv_3x3"](8, 8, 2)
    dw = [m for m in op.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 8]
    assert [m.stride for m in dw] == [(2, 2), (1, 1)]


def test_none_is_zero_and_free():
    op = space.OPS["none"](8, 8, 2)
    out = op(torch.randn(1, 8, 9, 9))
    assert out.shape == (1, 8, 5, 5) and not out.any()
    assert flops.count(op, [(1, 8, 9, 9)]) == 0


def test_pools_match_darts_definitions():
    x = torch.randn(1, 4, 6, 6)
    avg = space.OPS["avg_pool_3x3"](4, 4, 1)
    torch.testing.assert_close(avg(x), torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
    mx = space.OPS["max_pool_3x3"](4, 4, 2)
    torch.testing.assert_close(mx(x), torch.nn.functional.max_pool2d(x, 3, 2, 1))


def test_factorized_reduce_reads_darts_pixels_on_even_sizes():
    from space.ops.common import FactorizedReduce

    fr = FactorizedReduce(4, 8).eval()
    x = torch.randn(1, 4, 8, 8)
    ref = torch.cat([fr.conv_1(torch.relu(x)), fr.conv_2(torch.relu(x)[:, :, 1:, 1:])], 1)  # DARTS' slicing
    torch.testing.assert_close(fr(x), fr.bn(ref))


@pytest.mark.parametrize("size", [2, 7, 8, 15])
@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
def test_factorized_reduce_trains_through_an_equal_form(size, fmt):
    from space.ops.common import FactorizedReduce, official_forms

    torch.manual_seed(0)
    fr = FactorizedReduce(6, 10).train()
    x = torch.randn(3, 6, size, size + 1).contiguous(memory_format=fmt)

    def run(official):
        fr.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        with official_forms(official):
            y = fr(xi)
        y.backward(torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape).sin())
        return [y, xi.grad, fr.conv_1.weight.grad, fr.conv_2.weight.grad]

    got, want = run(False), run(True)
    assert got[0].shape == want[0].shape == (3, 10, (size + 1) // 2, (size + 2) // 2)
    for a, b in zip(got, want):
        # float rounding only: a weight's gradient sums over every pixel in another order
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.detach().abs().max()))


def random_arch(rng, ops=None, fusions=None, **kw):
    sp = DartsSpace(ops=ops, fusions=fusions, **kw)
    return sp.sample(rng)


@pytest.mark.parametrize("seed", range(4))
def test_fast_count_equals_fvcore_whole_network(seed):
    rng = random.Random(seed)
    arch = random_arch(rng, channels=8 + 4 * seed, cells=5 + seed, input_size=(3, 16 + 3 * seed, 16 + 3 * seed))
    pc = flops.PartCounter()
    net = space.build(arch)
    assert pc.total(space.parts(arch)) == flops.count(net, [(1, *arch.input_size)])
    assert pc.params(space.parts(arch)) == flops.params(net)


def test_fast_count_exact_for_darts_v2_and_cached():
    pc = flops.PartCounter()
    assert pc.total(space.parts(DARTS_V2)) == flops.count(space.build(DARTS_V2), [(1, 3, 32, 32)])
    traced = pc.traced
    pc.total(space.parts(DARTS_V2))
    assert pc.traced == traced  # second candidate reuses every cached part


def test_space_choices_decode_encode_round_trip():
    sp = DartsSpace(ops=DARTS_OPS[1:])
    rng = random.Random(1)
    for _ in range(10):
        params = {k: rng.choice(v) for k, v in sp.choices().items()}
        arch = sp.decode(params)
        assert sp.encode(arch) == params
        assert DartsArch.from_json(arch.to_json()) == arch
    # DARTS-V2 lies in the space (edges normalised to ascending inputs)
    assert sp.decode(sp.encode(DARTS_V2)).arch_hash != ""


def test_supernet_runs_any_sampled_path_and_trains():
    sp = DartsSpace(supernet_channels=8, supernet_cells=3)
    net = sp.supernet(10, (3, 16, 16))
    rng = random.Random(0)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    for _ in range(3):
        arch = sp.sample(rng)
        net.set_active(arch)
        out = net(x)
        assert out.shape == (4, 10)
        torch.nn.functional.cross_entropy(out, y).backward()


def test_invalid_arch_is_rejected_clearly():
    bad = Cell(edges=(("sep_conv_3x3", 0), ("sep_conv_3x3", 5)) * 4)
    with pytest.raises(space.ArchError, match="reads state 5"):
        DartsArch(normal=bad, reduce=DARTS_V2.reduce).validate()
    unknown = Cell(edges=(("sep_conv3x3", 0), ("sep_conv_3x3", 1)) * 4)
    with pytest.raises(space.ArchError, match="did you mean sep_conv_3x3"):
        DartsArch(normal=unknown, reduce=DARTS_V2.reduce).validate()
