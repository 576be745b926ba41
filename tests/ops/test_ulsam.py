"""ULSAM: params 5C+3G, the batched form equals the official per-subspace loop, BN momentum."""
import pytest
import torch
import torch.nn.functional as F

import space
from nas import flops
from space.ops.ulsam import ULSAM


@pytest.mark.parametrize("C,G", [(64, 4), (32, 1), (48, 8), (16, 16)])
def test_params_5c_plus_3g(C, G):
    assert flops.params(ULSAM(C, G)) == 5 * C + 3 * G
    if (C, G) == (64, 4):
        assert flops.params(ULSAM(C, G)) == 332


def test_groups_adapt_by_gcd():
    assert ULSAM(12, 8).groups == 4
    assert ULSAM(10, 4).groups == 2
    assert ULSAM(16).groups == 4  # documented default
    assert flops.params(ULSAM(12, 8)) == 5 * 12 + 3 * 4


def _bn(x, bn, sl, training):
    """BatchNorm over the channels ``sl`` of ``bn`` (stats buffers are sliced views: updated in place)."""
    return F.batch_norm(x, bn.running_mean[sl], bn.running_var[sl], bn.weight[sl], bn.bias[sl],
                        training, bn.momentum, bn.eps)


def _official_loop(m: ULSAM, x, training):
    """The official SubSpace/ULSAM structure: chunk, per-subspace modules, concat."""
    G = m.groups
    c = x.shape[1] // G
    outs = []
    for g, xs in enumerate(torch.chunk(x, G, dim=1)):
        sl = slice(g * c, (g + 1) * c)
        a = F.conv2d(xs, m.conv_dws.weight[sl], m.conv_dws.bias[sl], groups=c)
        a = F.relu(_bn(a, m.bn_dws, sl, training))
        a = F.max_pool2d(a, 3, 1, 1)
        a = F.conv2d(a, m.conv_point.weight[g:g + 1], m.conv_point.bias[g:g + 1])
        a = F.relu(_bn(a, m.bn_point, slice(g, g + 1), training))
        b, n, h, w = a.shape
        a = torch.softmax(a.view(b, n, -1), dim=2).view(b, n, h, w).expand_as(xs)
        outs.append(a * xs + xs)
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("G", [1, 4, 8])
def test_batched_equals_official_per_subspace_loop(G):
    C = 16
    m = ULSAM(C, G)
    with torch.no_grad():  # non-trivial BN affine params and conv weights
        for bn in (m.bn_dws, m.bn_point):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, C, 9, 7)
    ref_model = ULSAM(C, G)
    ref_model.load_state_dict(m.state_dict())
    m.train()
    with torch.no_grad():
        out = m(x)
        ref = _official_loop(ref_model, x, training=True)
    torch.testing.assert_close(out, ref)
    # the running stats moved identically (per-subspace BNs == one BN over all channels)
    torch.testing.assert_close(m.bn_dws.running_mean, ref_model.bn_dws.running_mean)
    torch.testing.assert_close(m.bn_point.running_var, ref_model.bn_point.running_var)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), _official_loop(ref_model, x, training=False))


def test_bn_momentum_is_the_official_0_9_pytorch_semantics():
    m = ULSAM(8, 2).train()
    assert m.bn_dws.momentum == 0.9 and m.bn_point.momentum == 0.9
    x = torch.randn(4, 8, 6, 6)
    with torch.no_grad():
        m(x)
        batch_mean = m.conv_dws(x).mean(dim=(0, 2, 3))
    # PyTorch: running = (1 - momentum) * running + momentum * batch, running starts at 0
    torch.testing.assert_close(m.bn_dws.running_mean, 0.9 * batch_mean)


def test_attention_map_is_a_softmax_over_positions():
    m = ULSAM(8, 2).eval()
    x = torch.rand(2, 8, 5, 6) + 0.5  # positive, so (out - x) / x recovers the map
    with torch.no_grad():
        a = (m(x) - x) / x
    sums = a.sum(dim=(2, 3))
    torch.testing.assert_close(sums, torch.ones_like(sums), rtol=1e-4, atol=1e-4)
    # one map per subspace, shared by its channels
    torch.testing.assert_close(a[:, 0], a[:, 3], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(a[:, 4], a[:, 7], rtol=1e-4, atol=1e-6)


def test_fvcore_flops_hand_formula():
    C, G, H, W = 16, 4, 8, 8
    n = H * W
    expected = (C * n  # depthwise 1x1
                + 2 * C * n  # BN (fvcore, eval, affine: two per element)
                + 9 * C * n  # max pool 3x3 (project handle: k*k per output)
                + C * n  # grouped 1x1 C -> G: C/G taps for each of G outputs
                + 2 * G * n  # BN(G)
                + G * n  # softmax
                + C * n)  # a * x (the + x is free)
    assert flops.count(ULSAM(C, G), [(1, C, H, W)]) == expected


def test_registered_as_attention_and_ops():
    assert space.ATTENTIONS["ulsam"] is ULSAM
    assert {"ulsam", "ulsam_3x3"} <= set(space.OPS.names())
    assert space.OPS["ulsam_3x3"](8, 12, 2)(torch.randn(1, 8, 4, 4)).shape == (1, 12, 2, 2)
