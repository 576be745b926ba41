"""PyConv: levels by resolution, channel split, group adaptation, params/FLOPs, PyConvResNet-50."""
import copy

import pytest
import torch
from torch import nn

import space
from nas import flops
from space.ops.pyconv import PyConv2d, levels_for_resolution, pyconv


def _pyconv_of(op: nn.Module) -> PyConv2d:
    return next(m for m in op.modules() if isinstance(m, PyConv2d))


@pytest.mark.parametrize("h,stride,levels", [
    (112, 2, 4), (56, 1, 4), (56, 2, 3), (28, 1, 3), (28, 2, 2), (14, 1, 2), (14, 2, 1), (7, 1, 1),
    (32, 1, 4), (32, 2, 3), (16, 1, 3), (8, 1, 2), (4, 1, 1), (9, 1, 2), (33, 2, 3)])
def test_levels_follow_pyconvresnet_stages_by_output_resolution(h, stride, levels):
    assert levels_for_resolution(h, stride) == levels
    op = space.OPS["pyconv_3x3"](64, 64, stride, resolution=h)
    assert len(_pyconv_of(op).levels) == levels


def test_levels_keyword_wins_and_default_is_full_pyramid():
    assert len(_pyconv_of(space.OPS["pyconv_3x3"](64, 64, 1, levels=2, resolution=56)).levels) == 2
    p = _pyconv_of(space.OPS["pyconv_3x3"](64, 64, 1))
    assert [c.kernel_size[0] for c in p.levels] == [3, 5, 7, 9]
    assert [c.groups for c in p.levels] == [1, 4, 8, 16]
    with pytest.raises(ValueError):
        pyconv(64, 64, 5)


@pytest.mark.parametrize("levels,split", [(4, [16, 16, 16, 16]), (3, [16, 16, 32]),
                                          (2, [32, 32]), (1, [64])])
def test_output_split_and_each_level_owns_its_slice(levels, split):
    p = pyconv(64, 64, levels)
    assert [c.out_channels for c in p.levels] == split
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        full = p(x)
        bounds = [0] + torch.tensor(split).cumsum(0).tolist()
        for j in range(levels):
            q = copy.deepcopy(p)
            for i, c in enumerate(q.levels):  # silence every level but j
                if i != j:
                    c.weight.zero_()
            y = q(x)
            lo, hi = bounds[j], bounds[j + 1]
            assert torch.equal(y[:, lo:hi], full[:, lo:hi])
            assert torch.count_nonzero(y) == torch.count_nonzero(y[:, lo:hi]) > 0


def test_params_hand_formula():
    # out_i * (C_in / g_i) * k_i^2 per level
    C = 64
    assert sum(q.numel() for q in pyconv(C, C, 4).parameters()) == \
        16 * (64 * 9 + 16 * 25 + 8 * 49 + 4 * 81) == 27_072
    assert sum(q.numel() for q in pyconv(C, C, 3).parameters()) == \
        16 * 64 * 9 + 16 * 16 * 25 + 32 * 8 * 49 == 28_160
    assert sum(q.numel() for q in pyconv(C, C, 2).parameters()) == 32 * 64 * 9 + 32 * 16 * 25
    op = space.OPS["pyconv_3x3"](C, C, 1, levels=4)
    assert flops.params(op) == 27_072 + 2 * C  # + BN


def test_groups_adapt_by_gcd_and_odd_splits_give_the_remainder_to_the_last_level():
    p = pyconv(16, 16, 4)
    assert p.groups == [1, 4, 4, 4]  # out_i = 4 limits groups 8 and 16 to 4
    p = pyconv(12, 12, 4)  # out_i = 3: only groups 1 fit
    assert p.groups == [1, 1, 1, 1]
    p = pyconv(24, 20, 3)  # split 5, 5, 10
    assert [c.out_channels for c in p.levels] == [5, 5, 10] and p.groups == [1, 1, 2]
    assert p(torch.randn(1, 24, 6, 6)).shape == (1, 20, 6, 6)


@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_padding_is_dilation_correct(dilation):
    p = PyConv2d(16, [4, 4, 4, 4], [3, 5, 7, 9], [1, 4, 4, 4], stride=1, dilation=dilation)
    assert p(torch.randn(1, 16, 20, 20)).shape == (1, 16, 20, 20)
    assert [c.padding[0] for c in p.levels] == [dilation * k for k in (1, 2, 3, 4)]


@pytest.mark.parametrize("stride", [1, 2])
def test_op_flops_hand_formula(stride):
    C, h = 64, 9
    ho = (h + stride - 1) // stride
    op = space.OPS["pyconv_3x3"](C, C, stride, levels=3)
    conv = ho * ho * (16 * 64 * 9 + 16 * 16 * 25 + 32 * 8 * 49)
    assert flops.count(op, [(1, C, h, h)]) == conv + 2 * C * ho * ho


# -- PyConvResNet-50, built from this PyConv as the official models/pyconvresnet.py does ------

class _Bottleneck(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int, levels: int):
        super().__init__()
        cout = planes * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(),
            pyconv(planes, planes, levels, stride), nn.BatchNorm2d(planes), nn.ReLU(),
            nn.Conv2d(planes, cout, 1, bias=False), nn.BatchNorm2d(cout))
        short = [nn.MaxPool2d(3, stride, 1)] if stride != 1 else []  # official shortcut
        if cin != cout:
            short += [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.shortcut = nn.Sequential(*short)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


def pyconvresnet50(num_classes: int = 1000) -> nn.Module:
    """No stem max-pool; stride 2 in the first block of every stage; levels 4/3/2/1."""
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
        for b in range(blocks):
            layers.append(_Bottleneck(cin, planes, 2 if b == 0 else 1, 4 - stage))
            cin = planes * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def test_pyconvresnet50_params():
    n = flops.params(pyconvresnet50())
    assert n == 24_847_720  # modules.md [M]: 24.848M
    assert abs(n - 24.848e6) / 24.848e6 < 0.01


@pytest.mark.slow  # one 224x224 forward of PyConvResNet-50 takes 6-12 s on the 2-core CPU
def test_pyconvresnet50_flops():
    fca = flops.analysis(pyconvresnet50().eval(), torch.zeros(1, 3, 224, 224))
    by_op = fca.by_operator()
    assert not fca.unsupported_ops()
    # modules.md [M] is plain fvcore (max-pool uncounted); nas.flops adds 9/output for it
    plain = fca.total() - by_op["max_pool2d"]
    assert abs(plain - 3.844e9) / 3.844e9 < 0.03
    assert abs(by_op["conv"] - 3.818e9) / 3.818e9 < 0.01
