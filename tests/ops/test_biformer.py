"""BiFormer's BRA against independent references: full attention, a per-region loop, figures."""
import pytest
import torch
import torch.nn.functional as F

import space
from nas import flops
from space.ops.biformer import AttentionLePE, BiLevelRoutingAttention


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def _projections(m, x):
    """q, k, v maps (B, H, W, c) of the zero-padded input, and the padded size."""
    n = m.n_win
    h, w = x.shape[-2:]
    xp = F.pad(x, (0, (-w) % n, 0, (-h) % n)).permute(0, 2, 3, 1)
    qkv = xp @ m.qkv.weight.T + m.qkv.bias
    return qkv.split([m.qk_dim, m.qk_dim, m.dim], dim=-1)


def _finish(m, out, v, h, w):
    """+ LePE of v, output linear, crop; out and v are (B, Hp, Wp, C)."""
    out = out + m.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    out = out @ m.wo.weight.T + m.wo.bias
    return out[:, :h, :w].permute(0, 3, 1, 2)


def _full_attention(m, x):
    """Every (padded) token attends to every token, BRA's weights and scale, no routing."""
    q, k, v = _projections(m, x)
    b, H, W, _ = q.shape
    heads = m.num_heads

    def split(t):
        return t.reshape(b, H * W, heads, -1).transpose(1, 2)

    a = torch.softmax(split(q) @ split(k).transpose(-1, -2) * m.scale, dim=-1)
    out = (a @ split(v)).transpose(1, 2).reshape(b, H, W, -1)
    return _finish(m, out, v, *x.shape[-2:])


def _region_loop(m, x):
    """BRA written region by region: mean-pooled routing, top-k, attention to those regions."""
    q, k, v = _projections(m, x)
    b, H, W, _ = q.shape
    n = m.n_win
    rh, rw = H // n, W // n
    out = torch.zeros(b, H, W, m.dim)
    regions = [(i, j) for i in range(n) for j in range(n)]

    def tokens(t, r):
        i, j = r
        return t[:, i * rh:(i + 1) * rh, j * rw:(j + 1) * rw].reshape(b, rh * rw, -1)

    for bi in range(b):
        qm = torch.stack([tokens(q, r)[bi].mean(0) for r in regions])
        km = torch.stack([tokens(k, r)[bi].mean(0) for r in regions])
        logits = qm @ km.T * m.scale
        for p, r in enumerate(regions):
            keep = torch.argsort(logits[p], descending=True)[:m.topk]
            ks = torch.cat([tokens(k, regions[s])[bi] for s in keep.tolist()])
            vs = torch.cat([tokens(v, regions[s])[bi] for s in keep.tolist()])
            qs = tokens(q, r)[bi]
            o = []
            for hd in range(m.num_heads):
                sl = slice(hd * m.qk_dim // m.num_heads, (hd + 1) * m.qk_dim // m.num_heads)
                sv = slice(hd * m.dim // m.num_heads, (hd + 1) * m.dim // m.num_heads)
                o.append(torch.softmax(qs[:, sl] @ ks[:, sl].T * m.scale, dim=-1) @ vs[:, sv])
            i, j = r
            out[bi, i * rh:(i + 1) * rh, j * rw:(j + 1) * rw] = torch.cat(o, 1).reshape(rh, rw, -1)
    return _finish(m, out, v, *x.shape[-2:])


@pytest.mark.parametrize("hw", [(12, 12), (11, 13)], ids=["divisible", "padded"])
def test_topk_all_regions_equals_full_attention(hw):
    m = BiLevelRoutingAttention(32, num_heads=2, n_win=3, topk=9).eval()
    x = torch.randn(2, 32, *hw)
    with torch.no_grad():
        assert (m(x) - _full_attention(m, x)).abs().max() < 1e-5


@pytest.mark.parametrize("topk", [1, 3])
def test_routing_matches_region_loop(topk):
    m = BiLevelRoutingAttention(16, num_heads=2, n_win=3, topk=topk).eval()
    x = torch.randn(2, 16, 9, 10)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _region_loop(m, x), rtol=1e-5, atol=1e-5)


def test_routing_carries_no_gradient():
    m = BiLevelRoutingAttention(16, num_heads=2, n_win=2, topk=1)
    q = torch.randn(1, 4, 9, 16, requires_grad=True)
    assert not m.route(q, q).requires_grad


def test_published_module_figures():
    # modules.md [M]: BRA(dim 64, 56x56, topk 1): 18,304 params, 82.2 MFLOPs (fvcore)
    m = space.TOKEN_MIXERS["bra"](64, topk=1)
    assert n_params(m) == 18_304
    f = flops.count(m, [(1, 64, 56, 56)])
    assert abs(f / 82.2e6 - 1) < 0.03
    N, C, T, P = 56 * 56, 64, 64, 49
    official = (N * C * 3 * C + N * C * C + N * C * 25  # qkv, wo, LePE 5x5
                + P * P * C + 2 * P * T * (1 * T) * C)  # routing logits, q k^T and a v
    ours = official + 2 * N * C + P * C + P * P  # region means, routing scale, topk (our table)
    assert f == ours


def test_full_attention_stage_matches_manual_attention():
    m = space.TOKEN_MIXERS["bra"](64, topk=-2).eval()
    assert isinstance(m, AttentionLePE) and m.num_heads == 8
    C = 64
    assert n_params(m) == 3 * C * C + (C * C + C) + (25 * C + C)
    x = torch.randn(2, C, 5, 6)
    t = x.flatten(2).transpose(1, 2)
    q, k, v = (t @ m.qkv.weight.T).chunk(3, dim=-1)

    def split(z):
        return z.reshape(2, 30, 8, 8).transpose(1, 2)

    a = torch.softmax(split(q) @ split(k).transpose(-1, -2) / 8 ** 0.5, dim=-1)
    o = (a @ split(v)).transpose(1, 2).reshape(2, 30, C) + m.lepe(x).flatten(2).transpose(1, 2)
    ref = (o @ m.proj.weight.T + m.proj.bias).transpose(1, 2).reshape(2, C, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


def test_heads_and_errors():
    assert BiLevelRoutingAttention(64).num_heads == 2  # head_dim 32, as BiFormer
    assert BiLevelRoutingAttention(100).num_heads == 2  # 100 // 32 = 3 does not divide: 2
    with pytest.raises(ValueError):
        BiLevelRoutingAttention(32, n_win=2, topk=5)
    with pytest.raises(ValueError):
        BiLevelRoutingAttention(32, n_win=2, auto_pad=False)(torch.randn(1, 32, 5, 5))
