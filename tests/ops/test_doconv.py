"""DO-Conv: folding, the paper's feature composition, init identity, parameter and FLOP figures."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import space
from nas import flops
from space.ops import deploy
from space.ops.doconv import DOConv2d


def _randomise_D(m: DOConv2d) -> None:
    with torch.no_grad():
        m.D.normal_(0, 0.3)


def _feature_composition(m: DOConv2d, x: torch.Tensor) -> torch.Tensor:
    """The paper's other order: D acts depthwise on each input channel's k*k patch (giving
    D_mul features per channel), then W is an ordinary (grouped) conv over those features."""
    k, g, dm = m.kernel_size, m.groups, m.D_mul
    n, cin = x.shape[:2]
    patches = F.unfold(x, k, dilation=m.dilation, padding=m.padding, stride=m.stride)
    patches = patches.view(n, cin, k * k, -1)
    feats = torch.einsum("nimL,ims->nisL", patches, m.D + m.d_diag)  # (n, C_in, D_mul, L)
    feats = feats.reshape(n, g, cin // g * dm, -1)
    W = m.W.reshape(g, m.out_channels // g, cin // g * dm)
    out = torch.einsum("gok,ngkL->ngoL", W, feats).reshape(n, m.out_channels, -1)
    ho = (x.shape[2] + 2 * m.padding - k) // m.stride + 1
    return out.view(n, m.out_channels, ho, -1)


@pytest.mark.parametrize("layout", ["official", "paper"])
@pytest.mark.parametrize("groups", [1, 4, 16])
def test_fold_matches_unfolded_with_random_D(groups, layout):
    m = DOConv2d(16, 16, 3, stride=1, padding=1, groups=groups, bias=True, group_layout=layout)
    _randomise_D(m)
    x = torch.randn(2, 16, 9, 9)
    folded = m.deploy()
    assert type(folded) is nn.Conv2d and folded.groups == groups
    diff = (folded(x) - m(x)).abs().max().item()
    assert diff < 1e-5


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("groups", [1, 4, 16])
def test_paper_layout_equals_feature_composition(groups, stride):
    m = DOConv2d(16, 32, 3, stride=stride, padding=1, groups=groups, bias=False,
                 group_layout="paper")
    _randomise_D(m)
    x = torch.randn(2, 16, 9, 9)
    assert (m(x) - _feature_composition(m, x)).abs().max().item() < 1e-5


def test_official_layout_uses_D_row_o_mod_g_and_agrees_with_paper_for_g1_and_depthwise():
    torch.manual_seed(1)
    for cin, cout, g, same in ((16, 32, 1, True), (16, 16, 16, True), (16, 32, 4, False)):
        a = DOConv2d(cin, cout, 3, groups=g, group_layout="official")
        _randomise_D(a)
        b = copy.deepcopy(a)
        b.group_layout = "paper"
        # official reshape: W (out, in/g, s) viewed as (out/g, in, s) pairs output o and
        # in-group channel i with D row (o % g) * in/g + i
        o, i = torch.meshgrid(torch.arange(cout), torch.arange(cin // g), indexing="ij")
        rows = (o % g) * (cin // g) + i
        ref = torch.einsum("oims,ois->oim", (a.D + a.d_diag)[rows], a.W)
        torch.testing.assert_close(a.folded_weight(), ref.view(cout, cin // g, 3, 3))
        assert torch.allclose(a.folded_weight(), b.folded_weight()) == same


def test_at_init_DoW_equals_W_and_D_is_zero():
    m = DOConv2d(16, 32, 3, padding=1)
    assert torch.count_nonzero(m.D) == 0
    assert torch.equal(m.folded_weight(), m.W.view(32, 16, 3, 3))


def test_D_mul_above_k2_tiles_identity_and_below_raises():
    m = DOConv2d(8, 8, 3, D_mul=20)
    assert m.d_diag.shape == (8, 9, 20)
    expect = m.W[..., :9] + m.W[..., 9:18]  # two identity tiles, then 2 zero columns
    torch.testing.assert_close(m.folded_weight(), expect.view(8, 8, 3, 3))
    with pytest.raises(ValueError, match="D_mul"):
        DOConv2d(8, 8, 3, D_mul=4)


def test_d_diag_is_a_buffer_and_D_trains():
    m = DOConv2d(8, 8, 3, padding=1)
    assert "d_diag" in dict(m.named_buffers()) and "d_diag" not in dict(m.named_parameters())
    m(torch.randn(2, 8, 6, 6)).pow(2).sum().backward()
    assert m.D.grad is not None and m.D.grad.abs().sum() > 0


def test_params_trainable_with_d_diag_and_folded():
    m = DOConv2d(16, 32, 3, padding=1, bias=True)
    trainable = flops.params(m)
    with_diag = trainable + m.d_diag.numel()  # what the official module's parameters() holds
    folded = flops.params(m.deploy())
    # W 32*16*9 + D 16*9*9 + bias 32 ; + d_diag 16*9*9 ; folded 32*16*9 + 32
    assert (trainable, with_diag, folded) == (5936, 7232, 4640)
    assert trainable == 32 * 16 * 9 + 16 * 9 * 9 + 32


@pytest.mark.parametrize("stride", [1, 2])
def test_op_flops_before_and_after_deploy(stride):
    cin, cout, h = 16, 32, 9
    op = space.OPS["do_conv_3x3"](cin, cout, stride).eval()
    ho = (h + stride - 1) // stride
    conv = cout * ho * ho * cin * 9
    bn = 2 * cout * ho * ho  # fvcore: eval-mode affine BN = 2 per element
    einsum = cin * 9 * 9 * cout  # weight-side composition, once per forward
    assert flops.count(op, [(1, cin, h, h)]) == conv + bn + einsum
    dep = deploy(copy.deepcopy(op))
    assert type(dep[1]) is nn.Conv2d
    assert flops.count(dep, [(1, cin, h, h)]) == conv + bn


@pytest.mark.parametrize("k,stride", [(3, 1), (5, 2), (7, 2)])
def test_depthwise_flops_hand_formula_plain_and_do_dconv(k, stride):
    C, h, n = 16, 11, 2
    ho = (h + stride - 1) // stride
    expect = n * C * ho * ho * k * k
    plain = space.DW_CONVS["plain"](C, k, stride)
    assert flops.count(plain, [(n, C, h, h)]) == expect
    do = space.DW_CONVS["do_conv"](C, k, stride)
    _randomise_D(do)
    x = torch.randn(n, C, h, h)
    folded = deploy(copy.deepcopy(do))
    assert folded.groups == C and tuple(folded.weight.shape) == (C, 1, k, k)
    assert (folded(x) - do(x)).abs().max().item() < 1e-5
    assert flops.count(folded, [(n, C, h, h)]) == expect
    assert flops.count(do, [(n, C, h, h)]) == expect + C * (k * k) ** 2  # + einsum
