"""cross_attn_fusion against a reference written from the official CrossMHAFusion structure."""
import math

import pytest
import torch
from torch import nn

import space
from nas import flops
from space.ops.cross_attention import CrossAttentionFusion, default_heads, sine_position


def official_sine(x, num_pos_feats, temperature=10000.0):
    """locformer's PositionEmbeddingSine(num_pos_feats), normalize=False, rewritten in torch."""
    ones = torch.ones_like(x[:, 0])
    y_embed = ones.cumsum(1, dtype=torch.float32)
    x_embed = ones.cumsum(2, dtype=torch.float32)
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32)
    dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
    pos_x = x_embed[..., None] / dim_t
    pos_y = y_embed[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class OfficialLike(nn.Module):
    """The backbone's fusion step: proj+GN of the sketch, sine encodings, CrossMHAFusion with
    nn.MultiheadAttention (sequence-first), FFN, norm3; returns the fused map only."""

    def __init__(self, C, C_y, n_heads, d_ffn):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(C_y, C, 1), nn.GroupNorm(math.gcd(32, C), C))
        self.attn = nn.MultiheadAttention(C, n_heads, dropout=0.4)
        self.linear1, self.linear2 = nn.Linear(C, d_ffn), nn.Linear(d_ffn, C)
        self.norm3 = nn.LayerNorm(C)

    def forward(self, x, sketch):
        b, d, h, w = x.shape
        sk = self.proj(sketch)
        pos = official_sine(x, d // 2).flatten(2).permute(0, 2, 1)
        pos_sk = official_sine(sk, d // 2).flatten(2).permute(0, 2, 1)
        tokens = x.flatten(2).permute(0, 2, 1)
        tokens_sk = sk.flatten(2).permute(0, 2, 1)
        q, k = tokens + pos, tokens_sk + pos_sk
        a, _ = self.attn(q.transpose(0, 1), k.transpose(0, 1), tokens_sk.transpose(0, 1))
        a = a.transpose(0, 1)
        out = self.norm3(tokens + self.linear2(torch.relu(self.linear1(a))))
        return out.permute(0, 2, 1).reshape(b, d, h, w)


def load_from(ours: CrossAttentionFusion, ref: OfficialLike):
    with torch.no_grad():
        ours.proj_y.load_state_dict(ref.proj.state_dict())
        for lin, w, bias in zip((ours.q, ours.k, ours.v), ref.attn.in_proj_weight.chunk(3),
                                ref.attn.in_proj_bias.chunk(3)):
            lin.weight.copy_(w)
            lin.bias.copy_(bias)
        ours.out.load_state_dict(ref.attn.out_proj.state_dict())
        ours.ffn[0].load_state_dict(ref.linear1.state_dict())
        ours.ffn[3].load_state_dict(ref.linear2.state_dict())
        ours.norm.load_state_dict(ref.norm3.state_dict())


@pytest.mark.parametrize("C,C_y,heads,d_ffn,hw,hw_y", [
    (16, 24, 2, 64, (6, 5), (3, 3)),   # y coarser, other width
    (32, 32, 8, 1024, (4, 4), (7, 7)),  # official heads/d_ffn; y finer than x
])
def test_matches_official_structure(C, C_y, heads, d_ffn, hw, hw_y):
    ref = OfficialLike(C, C_y, heads, d_ffn).eval()
    for p in ref.parameters():  # MHA zero-inits its biases: randomise everything
        nn.init.normal_(p, 0, 0.3)
    ours = CrossAttentionFusion(C, C_y=C_y, n_heads=heads, d_ffn=d_ffn).eval()
    load_from(ours, ref)
    x, y = torch.randn(2, C, *hw), torch.randn(2, C_y, *hw_y)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, y), ref(x, y), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


def test_sine_encoding_values():
    x = torch.zeros(1, 8, 3, 4)
    pos = sine_position(x)
    torch.testing.assert_close(pos, official_sine(x, 4), rtol=0, atol=1e-6)
    # unnormalised: positions start at 1; channel 0 = sin(y), 1 = cos(y), C/2 = sin(x)
    assert pos[0, 0, 2, 0].item() == pytest.approx(math.sin(3))
    assert pos[0, 1, 2, 0].item() == pytest.approx(math.cos(3))
    assert pos[0, 4, 0, 3].item() == pytest.approx(math.sin(4))
    assert pos[0, 2, 1, 0].item() == pytest.approx(math.sin(2 / 10000 ** 0.5))


def test_other_resolution_and_width_shapes_and_gradients():
    m = space.FUSIONS["cross_attn_fusion"](16, C_y=40).train()
    x = torch.randn(2, 16, 9, 7, requires_grad=True)
    y = torch.randn(2, 40, 4, 3, requires_grad=True)
    out = m(x, y)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    assert y.grad.abs().sum() > 0


def test_attention_reaches_residual_only_through_ffn():
    m = CrossAttentionFusion(16, C_y=8).eval()
    with torch.no_grad():
        m.ffn[3].weight.zero_()
        m.ffn[3].bias.zero_()
    x = torch.randn(1, 16, 5, 5)
    a, b = m(x, torch.randn(1, 8, 3, 3)), m(x, torch.randn(1, 8, 6, 6))
    tokens = x.flatten(2).transpose(1, 2)
    expected = m.norm(tokens).transpose(1, 2).reshape_as(x)
    torch.testing.assert_close(a, expected)
    torch.testing.assert_close(b, expected)


def test_defaults_for_small_widths():
    assert [default_heads(c) for c in (8, 12, 16, 24, 32, 64, 96, 192, 384, 768)] == \
        [1, 1, 2, 2, 4, 8, 8, 8, 8, 8]  # the official 8 heads at every official width
    m = CrossAttentionFusion(16)
    assert m.n_heads == 2 and m.ffn[0].out_features == 64
    C, C_y, F = 16, 16, 64
    expected = (C_y * C + C + 2 * C) + 4 * (C * C + C) + (C * F + F + F * C + C) + 2 * C
    assert sum(p.numel() for p in m.parameters()) == expected
    with pytest.raises(ValueError):
        CrossAttentionFusion(16, n_heads=3)


@pytest.mark.parametrize("C,C_y,hw,hw_y", [(16, 24, (6, 5), (3, 3)), (32, 32, (4, 4), (7, 7))])
def test_flops_hand_formula(C, C_y, hw, hw_y):
    m = CrossAttentionFusion(C, C_y=C_y).eval()
    L, S, F = hw[0] * hw[1], hw_y[0] * hw_y[1], 4 * C
    with torch.no_grad():
        ops = flops.analysis(m, (torch.zeros(1, C, *hw), torch.zeros(1, C_y, *hw_y))).by_operator()
    # attention: q k^T and attn v over every head, L*S*(head_dim + head_dim) each
    assert ops["scaled_dot_product_attention"] == m.n_heads * L * S * 2 * (C // m.n_heads)
    assert ops["scaled_dot_product_attention"] == 2 * L * S * C
    assert ops["linear"] == 2 * L * C * C + 2 * S * C * C + 2 * L * C * F  # q, out; k, v; FFN
    assert ops["conv"] == S * C_y * C
    assert ops["layer_norm"] == 5 * L * C and ops["group_norm"] == 5 * S * C
    assert set(ops) == {"scaled_dot_product_attention", "linear", "conv", "layer_norm", "group_norm"}
