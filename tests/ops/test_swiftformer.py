"""SwiftFormer's efficient additive attention against the paper's equations, written per sample."""
import torch
import torch.nn.functional as F

import space
from nas import flops
from space.ops.swiftformer import ConvEncoder, EfficientAdditiveAttention, LocalRepresentation


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def _reference(m: EfficientAdditiveAttention, tokens: torch.Tensor) -> torch.Tensor:
    """Eqs. of the paper, one sample at a time, with explicit sums over tokens."""
    outs = []
    D = tokens.shape[-1]
    for x in tokens:  # (N, D)
        q = x @ m.to_query.weight.T + m.to_query.bias
        k = x @ m.to_key.weight.T + m.to_key.bias
        q = q / q.norm(dim=1, keepdim=True)
        k = k / k.norm(dim=1, keepdim=True)
        a = (q @ m.w_g[:, 0]) / D ** 0.5  # (N,)
        a = a / a.norm()
        g = sum(a[n] * q[n] for n in range(x.shape[0]))  # (D,)
        y = (g[None] * k) @ m.Proj.weight.T + m.Proj.bias + q
        outs.append(y @ m.final.weight.T + m.final.bias)
    return torch.stack(outs)


def test_matches_paper_equations_on_maps():
    m = space.TOKEN_MIXERS["additive_attention"](24).eval()
    x = torch.randn(2, 24, 5, 7)
    tokens = x.flatten(2).transpose(1, 2)
    ref = _reference(m, tokens).transpose(1, 2).reshape(2, 24, 5, 7)
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


def test_params_formula_and_published_width():
    for D in (16, 220):
        assert n_params(space.TOKEN_MIXERS["additive_attention"](D)) == 4 * D * D + 5 * D
    assert n_params(space.TOKEN_MIXERS["additive_attention"](220)) == 194_700


def test_cost_is_linear_in_tokens():
    m = space.TOKEN_MIXERS["additive_attention"](32)
    f1 = flops.count(m, [(1, 32, 8, 8)])
    f2 = flops.count(m, [(1, 32, 8, 16)])
    assert abs(f2 / f1 - 2.0) < 0.01
    # the projections dominate: 4 linears of D x D per token, and q @ w_g
    fca = flops.analysis(m.eval(), torch.zeros(1, 32, 8, 8)).by_operator()
    assert fca["linear"] == 4 * 64 * 32 * 32
    assert fca["matmul"] == 64 * 32


def test_alpha_is_normalised_over_tokens_not_channels():
    # scaling one token's input changes the global query G for every token: a token-level
    # normalisation couples tokens, a channel-level one would not
    m = space.TOKEN_MIXERS["additive_attention"](8).eval()
    x = torch.randn(1, 8, 2, 2)
    y = x.clone()
    y[..., 0, 0] *= 3.0
    assert not torch.allclose(m(x)[..., 1, 1], m(y)[..., 1, 1])


def test_swiftformer_blocks_params_and_identity_scale():
    D, r = 48, 4
    enc = ConvEncoder(D, r)
    assert n_params(enc) == (9 * D + D) + 2 * D + (D * r * D + r * D) + (r * D * D + D) + D
    loc = LocalRepresentation(D)
    assert n_params(loc) == (9 * D + D) + 2 * D + 2 * (D * D + D) + D
    assert torch.equal(enc.layer_scale, torch.ones(D, 1, 1))  # official: ones, not 1e-5
    x = torch.randn(2, D, 6, 6)
    enc.eval()
    y = enc.pwconv2(F.gelu(enc.pwconv1(enc.norm(enc.dwconv(x)))))
    torch.testing.assert_close(enc(x), x + y)
