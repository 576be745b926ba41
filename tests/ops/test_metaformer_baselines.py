"""Pool / depthwise token-mixer baselines and the MLP channel mixers."""
import torch
import torch.nn.functional as F

import space
from nas import flops


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_pool_mixer_averages_valid_neighbours_minus_input():
    m = space.TOKEN_MIXERS["pool_mixer"](4)
    x = torch.randn(1, 4, 5, 6)
    y = m(x)
    corner = x[..., :2, :2].mean((-1, -2)) - x[..., 0, 0]  # count_include_pad=False: 4 values
    inner = x[..., 1:4, 2:5].mean((-1, -2)) - x[..., 2, 3]
    torch.testing.assert_close(y[..., 0, 0], corner)
    torch.testing.assert_close(y[..., 2, 3], inner)
    assert n_params(m) == 0
    assert flops.count(m, [(1, 4, 5, 6)]) == 9 * 4 * 5 * 6  # k*k per output (nas/flops.py)


def test_dwconv_mixer_is_depthwise_7x7():
    m = space.TOKEN_MIXERS["dwconv_mixer"](16)
    assert n_params(m) == 16 * 49 + 16
    x = torch.randn(1, 16, 9, 9)
    torch.testing.assert_close(m(x), F.conv2d(x, m.weight, m.bias, padding=3, groups=16))
    assert n_params(space.TOKEN_MIXERS["dwconv_mixer"](16, kernel_size=3)) == 16 * 9 + 16


def test_mlp_params_and_structure():
    D, r = 32, 3
    m = space.CHANNEL_MIXERS["mlp"](D, r)
    assert n_params(m) == (D * r * D + r * D) + (r * D * D + D)
    x = torch.randn(2, D, 4, 4)
    ref = F.conv2d(F.gelu(F.conv2d(x, m.fc1.weight, m.fc1.bias)), m.fc2.weight, m.fc2.bias)
    torch.testing.assert_close(m(x), ref)
    dw = space.CHANNEL_MIXERS["mlp_dw"](D, 8)
    assert n_params(dw) == (D * 8 * D + 8 * D) + (9 * 8 * D + 8 * D) + (8 * D * D + D)
    assert flops.count(m, [(1, D, 4, 4)]) == 2 * 16 * D * r * D
