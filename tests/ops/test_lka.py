"""VAN's large kernel attention: params, fvcore FLOPs, the 21x21 decomposition, registrations."""
import pytest
import torch
import torch.nn.functional as F

import space
from nas import flops
from space.ops.common import FactorizedReduce, ReLUConvBN
from space.ops.lka import LKA, VANAttention


@pytest.mark.parametrize("C", [8, 32, 64])
def test_lka_params_are_c2_plus_77c(C):
    assert flops.params(LKA(C)) == C * C + 77 * C
    # the sub-block adds two 1x1 projections with bias
    assert flops.params(VANAttention(C)) == C * C + 77 * C + 2 * (C * C + C)


@pytest.mark.parametrize("C,H,W", [(16, 14, 14), (32, 9, 7)])
def test_lka_fvcore_flops_hand_formula(C, H, W):
    # dw 5x5 + dw 7x7 (dilated, same tap count) + 1x1 conv + the u * attn multiply
    expected = (25 * C + 49 * C + C * C + C) * H * W
    assert flops.count(LKA(C), [(1, C, H, W)]) == expected
    # the sub-block: two more 1x1 convs (GELU and the shortcut add are free)
    assert flops.count(VANAttention(C), [(1, C, H, W)]) == expected + 2 * C * C * H * W


def test_lka_is_a_23x23_depthwise_kernel_times_1x1_in_the_interior():
    """DW5x5 then DW7x7 dilation 3 equals one depthwise conv with the composed kernel away
    from the borders (where zero padding of the intermediate map differs)."""
    C, H = 4, 30
    m = LKA(C).double()
    for conv in (m.conv0, m.conv_spatial):
        torch.nn.init.zeros_(conv.bias)
    x = torch.randn(2, C, H, H, dtype=torch.float64)
    # compose: the 5x5 kernel convolved with the 7x7 kernel dilated by 3 (19x19) -> 23x23
    k2 = torch.zeros(C, 1, 19, 19, dtype=torch.float64)
    k2[:, :, ::3, ::3] = m.conv_spatial.weight
    k1 = m.conv0.weight
    big = torch.zeros(C, 1, 23, 23, dtype=torch.float64)
    for i in range(5):
        for j in range(5):
            big[:, :, i:i + 19, j:j + 19] += k1[:, :, i, j].view(C, 1, 1, 1) * k2
    attn = F.conv2d(F.conv2d(x, big, padding=11, groups=C), m.conv1.weight, m.conv1.bias)
    ref = x * attn
    with torch.no_grad():
        out = m(x)
    r = 11  # interior: the composed kernel never reaches the padded border
    torch.testing.assert_close(out[..., r:-r, r:-r], ref[..., r:-r, r:-r])
    assert not torch.allclose(out[..., :2, :2], ref[..., :2, :2])  # borders do differ


def test_van_attention_is_projection_lka_projection_plus_shortcut():
    m = VANAttention(16).eval()
    x = torch.randn(2, 16, 10, 10)
    with torch.no_grad():
        ref = m.proj_2(m.spatial_gating_unit(F.gelu(m.proj_1(x)))) + x
        torch.testing.assert_close(m(x), ref)
        torch.nn.init.zeros_(m.proj_2.weight)
        assert torch.equal(m(x), x)  # proj_2 bias is zero-initialised as VAN does


def test_van_init():
    m = VANAttention(64)
    assert all(float(c.bias.detach().abs().max()) == 0 for c in m.modules() if isinstance(c, torch.nn.Conv2d))
    std = float(m.proj_1.weight.detach().std())  # N(0, sqrt(2 / fan_out)), fan_out = 64
    assert abs(std - (2 / 64) ** 0.5) < 0.02


def test_registrations():
    assert space.ATTENTIONS["lka"] is LKA
    assert space.TOKEN_MIXERS["lka"] is VANAttention
    assert "lka_3x3" not in space.OPS  # documented choice in lka.py
    plain = space.OPS["lka"](16, 16, 1)
    assert len(plain) == 1 and isinstance(plain[0], VANAttention)  # no adaptation when shapes match
    red = space.OPS["lka"](16, 32, 2)
    assert isinstance(red[0], FactorizedReduce) and isinstance(red[1], VANAttention)
    wider = space.OPS["lka"](16, 32, 1)
    assert isinstance(wider[0], ReLUConvBN) and wider[1].proj_1.in_channels == 32
    assert space.OPS["lka"](8, 12, 2)(torch.randn(1, 8, 5, 5)).shape == (1, 12, 3, 3)
