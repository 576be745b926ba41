"""The counting convention's handles, checked against hand formulas."""
import torch
import torch.nn.functional as F
from torch import nn

from nas import flops


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def n(fn, *shapes):
    fca = flops.analysis(Fn(fn).eval(), tuple(torch.randn(*s) for s in shapes))
    total = fca.total()
    assert not fca.unsupported_ops()
    return total


def test_sdpa_counts_both_matmuls():
    assert n(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), (2, 4, 10, 8), (2, 4, 6, 8), (2, 4, 6, 5)) \
        == 2 * 4 * 10 * 6 * (8 + 5)


def test_einsum_is_exact():
    assert n(lambda a, b: torch.einsum("ims,ois->oim", a, b), (7, 9, 9), (13, 7, 9)) == 7 * 9 * 9 * 13


def test_elementwise_multiplies_count_adds_do_not():
    assert n(lambda a, b: a * b, (1, 3, 5, 5), (1, 3, 5, 5)) == 75
    assert n(lambda a, b: a + b, (1, 3, 5, 5), (1, 3, 5, 5)) == 0
    assert n(lambda a: torch.sigmoid(a) * 2.0, (1, 3, 5, 5)) == 75


def test_pools_reductions_softmax_topk():
    assert n(lambda x: F.max_pool2d(x, 3, 2, 1), (1, 2, 8, 8)) == 2 * 4 * 4 * 9
    assert n(lambda x: F.avg_pool2d(x, 3, 1, 1), (1, 2, 8, 8)) == 2 * 8 * 8 * 9
    assert n(lambda x: F.adaptive_max_pool2d(x, 1), (1, 2, 8, 8)) == 128
    assert n(lambda x: x.mean(dim=1, keepdim=True), (1, 4, 3, 3)) == 36
    assert n(lambda x: x.softmax(-1), (2, 5, 7)) == 70
    assert n(lambda x: x.topk(2, dim=-1).values, (3, 10)) == 30


def test_depthwise_conv_hand_formula():
    m = nn.Conv2d(8, 8, 5, 2, 2, groups=8, bias=False)
    assert flops.count(m, [(1, 8, 15, 15)]) == 8 * 8 * 8 * 25


def test_count_is_eval_mode_and_restores_training():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    c = flops.count(m, [(1, 3, 6, 6)])
    assert c == 4 * 4 * 4 * 27 + 2 * 4 * 4 * 4 and m.training
