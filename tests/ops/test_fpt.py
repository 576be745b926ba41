"""FPT: the three transformers against references written from the official forward code,
GT's zero init, the neck's shapes on non-adjacent levels (odd and even sizes), params, FLOPs."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas import flops
from space.ops.fpt import (NECKS, FPTNeck, GroundingTransformer, MixtureOfSoftmaxes,
                           RenderingTransformer, SelfTransformer, fpt_neck)


def randomise_bn(module):
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t in (m.weight, m.bias, m.running_mean):
                nn.init.normal_(t.data, 0, 0.5)
            m.running_var.data.uniform_(0.5, 2)


def official_st(st: SelfTransformer, x):
    """SELFTrans.forward + MixtureOfSoftMax.forward (n_head=1, even sizes: view h*w//4)."""
    b, c, h, w = x.shape
    m, d_k = st.attention.n_mix, c
    qt = st.qk(x).view(b, d_k, h * w)
    kt = st.qk(st.pool(x)).view(b, d_k, h * w // 4)
    vt = st.v(st.pool(x)).view(b, c, h * w // 4)
    d = d_k // m
    pi = torch.softmax(torch.matmul(st.attention.weight, qt.mean(2, True)), 1).view(b * m, 1, 1)
    q = qt.view(b * m, d, h * w).transpose(1, 2)
    attn = torch.softmax(torch.bmm(q, kt.view(b * m, d, -1)) / math.sqrt(d_k), 2)
    attn = (attn * pi).view(b, m, h * w, -1).sum(1)
    out = torch.bmm(attn, vt.transpose(1, 2)).transpose(1, 2).contiguous().view(b, c, h, w)
    return st.bn(st.proj(out)) + x


def official_gt(gt: GroundingTransformer, x_low, x_high):
    b = x_low.shape[0]
    g_x = gt.g(x_high).view(b, gt.inter, -1).permute(0, 2, 1)
    theta = gt.theta(x_low).view(b, gt.inter, -1).permute(0, 2, 1)
    phi = gt.phi(x_high).view(b, gt.inter, -1)
    f = torch.matmul(theta, phi)
    y = torch.matmul(f / f.size(-1), g_x).permute(0, 2, 1).contiguous()
    return gt.W_z(y.view(b, gt.inter, *x_low.shape[2:]))


def official_rt(rt: RenderingTransformer, x_high, x_low, levels):
    gp = nn.AvgPool2d(x_low.shape[2:])(x_low)
    gp = F.relu(rt.weight_bn(rt.weight_conv(gp)))
    mask = rt.query_bn(rt.query_conv(x_high))
    pre = 2 ** (levels - 1)  # our fix for non-adjacent pairs; levels=1 is the official code
    low = F.avg_pool2d(x_low, pre, pre, ceil_mode=True) if pre > 1 else x_low
    return F.relu(rt.down_bn(rt.down_conv(low)) + mask * gp)


@pytest.mark.parametrize("n_mix", [1, 2, 4])
def test_self_transformer_matches_official(n_mix):
    st = SelfTransformer(16, n_mix=n_mix).eval()
    if n_mix == 1:  # the official has no mixture weight at n_mix=1 (pi = 1)
        assert not hasattr(st.attention, "weight")
        st.attention.weight = nn.Parameter(torch.zeros(1, 16))  # softmax over one mix = 1
    randomise_bn(st)
    x = torch.randn(2, 16, 8, 6)
    with torch.no_grad():
        torch.testing.assert_close(st(x), official_st(st, x), rtol=1e-5, atol=1e-5)


def test_mixture_is_a_convex_mix_of_per_chunk_softmaxes():
    mos = MixtureOfSoftmaxes(8, 2).eval()
    q, k, v = torch.randn(1, 8, 5), torch.randn(1, 8, 3), torch.randn(1, 4, 3)
    pi = torch.softmax(mos.weight @ q.mean(2, keepdim=True), dim=1)[0, :, 0]
    ref = sum(pi[i] * torch.softmax(q[0, 4 * i:4 * i + 4].T @ k[0, 4 * i:4 * i + 4] / math.sqrt(8), -1)
              for i in range(2)) @ v[0].T
    torch.testing.assert_close(mos(q, k, v)[0], ref)


@pytest.mark.parametrize("hw", [(7, 9), (5, 5), (1, 3)])
def test_self_transformer_odd_sizes(hw):
    st = SelfTransformer(8).eval()
    x = torch.randn(1, 8, *hw)
    assert st(x).shape == x.shape
    keys = st.pool(x).shape[-2] * st.pool(x).shape[-1]
    assert keys == math.ceil(hw[0] / 2) * math.ceil(hw[1] / 2)


@pytest.mark.parametrize("train", [True, False])
def test_grounding_output_is_exactly_zero_at_init(train):
    gt = GroundingTransformer(16).train(train)
    fine, coarse = torch.randn(2, 16, 9, 8), torch.randn(2, 16, 3, 2)
    assert torch.equal(gt(fine, coarse), torch.zeros(2, 16, 9, 8))
    neck = FPTNeck([8, 8, 8, 8], 16).train(train)  # FPT_a re-initialises every conv; BN stays 0
    p = [torch.randn(2, 16, s, s) for s in (8, 4, 2, 1)]
    for key, g in neck.gt.items():
        i, j = map(int, key.split("_"))
        assert torch.equal(g(p[i], p[j]), torch.zeros_like(p[i]))


def test_grounding_matches_official_dot_mode():
    gt = GroundingTransformer(16).eval()
    randomise_bn(gt)  # leave zero init to see the product
    fine, coarse = torch.randn(2, 16, 6, 5), torch.randn(2, 16, 3, 3)
    with torch.no_grad():
        out = gt(fine, coarse)
        torch.testing.assert_close(out, official_gt(gt, fine, coarse), rtol=1e-5, atol=1e-5)
    assert out.abs().sum() > 0
    # 'dot' mode has no softmax: scaling theta scales the attention term linearly
    with torch.no_grad():
        bias = gt.W_z(torch.zeros(2, gt.inter, 6, 5))
        gt.theta.weight.mul_(2)
        gt.theta.bias.mul_(2)
        torch.testing.assert_close(gt(fine, coarse) - bias, 2 * (out - bias), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("levels,fine_hw,coarse_hw", [
    (1, (8, 6), (4, 3)), (1, (9, 7), (5, 4)),  # official adjacent pair, even and odd
    (2, (16, 12), (4, 3)), (2, (15, 9), (4, 3)), (3, (16, 16), (2, 2)), (3, (17, 9), (3, 2)),
])
def test_rendering_matches_official_and_fixes_non_adjacent(levels, fine_hw, coarse_hw):
    rt = RenderingTransformer(8, levels).eval()
    randomise_bn(rt)
    coarse, fine = torch.randn(2, 8, *coarse_hw), torch.randn(2, 8, *fine_hw)
    with torch.no_grad():
        out = rt(coarse, fine)
        assert out.shape == coarse.shape
        torch.testing.assert_close(out, official_rt(rt, coarse, fine, levels), rtol=1e-5, atol=1e-5)
    # every RT keeps the official parameters: conv1x1, conv3x3, str_conv3x3 and three BNs
    assert sum(p.numel() for p in rt.parameters()) == 8 * 8 * (1 + 9 + 9) + 3 * 2 * 8


def test_rendering_crops_a_round_down_pyramid_and_refuses_too_small_maps():
    rt = RenderingTransformer(8, 1).eval()
    coarse, fine = torch.randn(1, 8, 4, 4), torch.randn(1, 8, 9, 9)  # 9 -> 4 (floor)
    with torch.no_grad():
        out = rt(coarse, fine)
        down = rt.down_bn(rt.down_conv(fine))[:, :, :4, :4]
        att = rt.query_bn(rt.query_conv(coarse)) * F.relu(rt.weight_bn(rt.weight_conv(fine.mean((2, 3), True))))
        torch.testing.assert_close(out, F.relu(down + att))
        with pytest.raises(ValueError, match="too small"):
            rt(torch.randn(1, 8, 6, 6), fine)


# (heights, widths) of 4-level pyramids: even, odd rounded up (stride-2 3x3 convs), odd
# rounded down (kernel-2 patch merging), mixed
PYRAMIDS = [((16, 8, 4, 2), (12, 6, 3, 2)), ((15, 8, 4, 2), (9, 5, 3, 2)),
            ((9, 4, 2, 1), (11, 5, 2, 1)), ((7, 4, 2, 1), (10, 5, 2, 1))]


@pytest.mark.parametrize("hs,ws", PYRAMIDS, ids=lambda s: "-".join(map(str, s)))
def test_neck_shapes_on_non_adjacent_levels(hs, ws):
    chans = [8, 12, 16, 24]
    neck = NECKS["fpt_neck"](chans, 16).train()
    xs = [torch.randn(2, c, h, w) for c, h, w in zip(chans, hs, ws)]
    outs = neck(xs)
    assert [tuple(o.shape) for o in outs] == [(2, 16, h, w) for h, w in zip(hs, ws)]
    assert neck.out_channels == [16] * 4
    # the non-adjacent RTs (p5<-p3, p5<-p2, p4<-p2) ran and rendered at the coarse size
    p = [lat(x) for lat, x in zip(neck.lateral, xs)]
    for key in ("3_1", "3_0", "2_0"):
        i, j = map(int, key.split("_"))
        assert neck.rt[key](p[i], p[j]).shape == p[i].shape


def test_neck_concatenation_order_and_params():
    C, chans, n = 8, [4, 8, 12, 16], 4
    neck = FPTNeck(chans, C)
    assert sorted(neck.rt) == ["1_0", "2_0", "2_1", "3_0", "3_1", "3_2"]
    assert sorted(neck.gt) == ["0_1", "0_2", "0_3", "1_2", "1_3", "2_3"]
    assert all(f.in_channels == 5 * C for f in neck.fuse)  # ST + 3 cross + self = 5C
    lateral = sum(c * C + C for c in chans)
    st = 3 * C * C + 4 * C + 2 * C  # qk, v (bias), proj, BN, mixture weight (n_mix=2)
    gt = 3 * (C * C // 2 + C // 2) + (C // 2 * C + C) + 2 * C
    rt = 19 * C * C + 6 * C
    fuse = 9 * 5 * C * C + C
    pairs = n * (n - 1) // 2
    expected = lateral + n * (st + fuse) + pairs * (gt + rt)
    assert sum(p.numel() for p in neck.parameters()) == expected


def test_neck_gradients_reach_every_parameter():
    neck = FPTNeck([8, 8, 16, 16], 8).train()
    xs = [torch.randn(2, c, s, s) for c, s in zip([8, 8, 16, 16], (9, 5, 3, 2))]
    sum(o.square().mean() for o in neck(xs)).backward()
    for name, p in neck.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if ".gt." not in f".{name}" or ".W_z.1." in name:
            continue
        # behind W_z's zero BN, GT's convs get exactly zero gradient at init (as officially)
        assert torch.equal(p.grad, torch.zeros_like(p.grad)), name
    assert all(g.W_z[1].weight.grad.abs().sum() > 0 for g in neck.gt.values())


def test_neck_counts_traces_and_is_deterministic():
    neck = fpt_neck([8, 8, 16, 16], 8).eval()
    xs = [torch.randn(1, c, s, s) for c, s in zip([8, 8, 16, 16], (9, 5, 3, 2))]
    with torch.no_grad():
        a, b = neck(xs), neck(xs)
        assert all(torch.equal(u, v) for u, v in zip(a, b))
        fca = flops.analysis(neck, (xs,))
        assert fca.total() > 0 and not fca.unsupported_ops()
        traced = torch.jit.trace(neck, (xs,), check_trace=False, strict=False)
        for u, v in zip(traced(xs), a):
            torch.testing.assert_close(u, v)
    assert NECKS.meta("fpt_neck")["inputs"] == 4


def test_gt_flops_follow_the_official_matmul_order():
    gt = GroundingTransformer(16).eval()
    Nf, Nc, I = 6 * 5, 3 * 3, 8
    with torch.no_grad():
        ops = flops.analysis(gt, (torch.zeros(1, 16, 6, 5), torch.zeros(1, 16, 3, 3))).by_operator()
    assert ops["matmul"] == 2 * Nf * Nc * I  # (theta^T phi) then (f g), no reassociation
    assert ops["conv"] == Nf * 16 * I + 2 * Nc * 16 * I + Nf * I * 16


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_neck_norm_options(norm):
    neck = FPTNeck([8, 16], 12, norm=norm).eval()  # FPT_a's with_norm options; gn: gcd(32, 12)
    assert not any(isinstance(m, nn.Conv2d) and m.bias is not None
                   for m in list(neck.lateral.modules()) + list(neck.fuse.modules()))
    outs = neck([torch.randn(1, 8, 6, 6), torch.randn(1, 16, 3, 3)])
    assert [o.shape[-1] for o in outs] == [6, 3]
    with pytest.raises(ValueError):
        FPTNeck([8], 8, norm="ln")
