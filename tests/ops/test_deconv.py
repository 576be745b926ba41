"""DEConv: the five difference kernels, their sum, re-parameterisation and parameter figures."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import space
from nas import flops
from space.ops import deploy
from space.ops.deconv import DEConv


def _official_kernels(m: DEConv) -> dict:
    """The branch kernels built by flat-index assignment as DEA-Net's ``get_weight`` does."""
    o, i = m.w_cd.shape[:2]
    w = m.w_cd.detach().flatten(2)
    cd = w.clone()
    cd[:, :, 4] = w[:, :, 4] - w.sum(2)
    hd = torch.zeros(o, i, 9)
    hd[:, :, [0, 3, 6]] = m.w_hd.detach()
    hd[:, :, [2, 5, 8]] = -m.w_hd.detach()
    vd = torch.zeros(o, i, 9)
    vd[:, :, [0, 1, 2]] = m.w_vd.detach()
    vd[:, :, [6, 7, 8]] = -m.w_vd.detach()
    w = m.w_ad.detach().flatten(2)
    ad = w - w[:, :, [3, 0, 1, 6, 4, 2, 7, 8, 5]]
    k = {"cd": cd, "hd": hd, "vd": vd, "ad": ad}
    k = {n: v.view(o, i, 3, 3) for n, v in k.items()}
    k["vanilla"] = m.w_vanilla.detach()
    return k


def test_kernels_match_official_index_assignment():
    m = DEConv(8, 12)
    mine, ref = m.kernels(), _official_kernels(m)
    for name in ref:
        torch.testing.assert_close(mine[name], ref[name], rtol=0, atol=1e-6)


def test_difference_kernels_sum_to_zero_and_have_their_zero_taps():
    k = DEConv(8, 8).kernels()
    for name in ("cd", "hd", "vd", "ad"):
        assert k[name].sum(dim=(2, 3)).abs().max().item() < 1e-6, name
    assert torch.count_nonzero(k["ad"][:, :, 1, 1]) == 0  # angular centre tap
    assert torch.count_nonzero(k["hd"][:, :, :, 1]) == 0  # horizontal: middle column
    assert torch.count_nonzero(k["vd"][:, :, 1, :]) == 0  # vertical: middle row
    assert k["vanilla"].sum(dim=(2, 3)).abs().min().item() > 0  # the only one that is not


@pytest.mark.parametrize("stride", [1, 2])
def test_five_branch_sum_equals_single_folded_conv(stride):
    m = DEConv(8, 12, stride)
    x = torch.randn(2, 8, 9, 9)
    ref = sum(F.conv2d(x, kern, getattr(m, f"b_{name}").detach(), stride, 1)
              for name, kern in _official_kernels(m).items())
    with torch.no_grad():
        assert (m(x) - ref).abs().max().item() < 1e-5


def test_central_difference_identity():
    # conv(x, w_cd) == conv(x, w) - x_centre * sum(w): DEA-Net's stated meaning of cd
    m = DEConv(8, 8)
    x = torch.randn(2, 8, 7, 7)
    w = m.w_cd.detach()
    lhs = F.conv2d(x, m.kernels()["cd"].detach(), padding=1)
    rhs = F.conv2d(x, w, padding=1) - F.conv2d(x, w.sum(dim=(2, 3), keepdim=True))
    assert (lhs - rhs).abs().max().item() < 1e-5


def test_constant_input_only_vanilla_and_biases_respond():
    m = DEConv(8, 8)
    c = 0.7
    with torch.no_grad():
        y = m(torch.full((1, 8, 7, 7), c))[:, :, 1:-1, 1:-1]  # interior: no zero padding read
        bias = m.b_cd + m.b_hd + m.b_vd + m.b_ad + m.b_vanilla
        expect = c * m.w_vanilla.sum(dim=(1, 2, 3)) + bias
    assert (y - expect.view(1, 8, 1, 1)).abs().max().item() < 1e-5


def test_params_train_vs_deployed():
    C = 64
    m = DEConv(C, C)
    assert flops.params(m) == 33 * C * C + 5 * C == 135_488
    assert flops.params(m.deploy()) == 9 * C * C + C == 36_928
    assert flops.params(DEConv(16, 24)) == 33 * 16 * 24 + 5 * 24


@pytest.mark.parametrize("stride", [1, 2])
def test_deploy_equals_train_form_and_counts_a_plain_conv(stride):
    cin, cout, h = 12, 24, 9
    op = space.OPS["deconv_3x3"](cin, cout, stride).eval()
    with torch.no_grad():
        op[1].b_vanilla.normal_()
        x = torch.randn(2, cin, h, h)
        dep = deploy(copy.deepcopy(op))
        assert type(dep[1]) is nn.Conv2d and dep[1].stride == (stride, stride)
        assert (dep(x) - op(x)).abs().max().item() < 1e-5
    ho = (h + stride - 1) // stride
    conv, bn = cout * ho * ho * cin * 9, 2 * cout * ho * ho
    assert flops.count(dep, [(1, cin, h, h)]) == conv + bn
    assert flops.count(op, [(1, cin, h, h)]) == conv + bn + cout * cin * 9  # + cd's weight sum


def test_depthwise_form_is_3x3_only():
    C = 16
    m = space.DW_CONVS["deconv"](C, 3, 2)
    x = torch.randn(2, C, 9, 9)
    folded = deploy(copy.deepcopy(m))
    assert folded.groups == C and tuple(folded.weight.shape) == (C, 1, 3, 3)
    with torch.no_grad():
        assert (folded(x) - m(x)).abs().max().item() < 1e-5
    assert flops.count(folded, [(2, C, 9, 9)]) == 2 * C * 5 * 5 * 9
    for k in (5, 7):
        with pytest.raises(ValueError, match="kernel_size=3"):
            space.DW_CONVS["deconv"](C, k, 1)
