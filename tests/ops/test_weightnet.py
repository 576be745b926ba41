"""WeightNet (Ma et al., ECCV 2020): the batch-as-groups conv against a per-sample loop whose
kernels are generated from the official grouped-FC structure, parameter and FLOP formulas, the
depthwise variant, and ShuffleNetV2 + WeightNet(1x) rebuilt from the official network."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import space
from nas import flops
from space.ops.weightnet import GapReduce, WeightNet, WeightNetConv, WeightNetDW, gap_channels


def _grouped_fc(weight, a, groups):
    """A grouped 1x1 conv on a vector, group by group: out[j-th block] = W_j @ a[j-th block]."""
    out_ch, in_per_group = weight.shape[:2]
    w = weight.view(groups, out_ch // groups, in_per_group)
    return torch.einsum("jot,jt->jo", w, a.view(groups, in_per_group)).reshape(-1)


def _ref_kernel(m, g):
    """One sample's kernel from its pooled descriptor g (gap,), as the official fc1/fc2 do."""
    a = torch.sigmoid(m.wn_fc1.weight.flatten(1) @ g + m.wn_fc1.bias)
    return _grouped_fc(m.wn_fc2.weight, a, m.wn_fc2.groups)


def _ref_full(m, x, x_gap):
    return torch.cat([F.conv2d(x[b:b + 1], _ref_kernel(m, x_gap[b].flatten()).view(
        m.oup, m.inp, m.ksize, m.ksize), None, m.stride, m.pad) for b in range(x.shape[0])])


def _ref_dw(m, x, x_gap):
    return torch.cat([F.conv2d(x[b:b + 1], _ref_kernel(m, x_gap[b].flatten()).view(
        m.inp, 1, m.ksize, m.ksize), None, m.stride, m.pad, groups=m.inp)
        for b in range(x.shape[0])])


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("inp,oup,k,stride,M,G", [(16, 24, 3, 1, 2, 2), (12, 8, 3, 2, 2, 2),
                                                  (8, 16, 1, 1, 2, 2), (16, 8, 3, 1, 4, 2)])
def test_batched_weightnet_equals_per_sample_loop(batch, inp, oup, k, stride, M, G):
    m = WeightNet(inp, oup, k, stride, M, G)
    x = torch.randn(batch, inp, 9, 9)
    x_gap = torch.randn(batch, gap_channels(inp), 1, 1)
    with torch.no_grad():
        y, ref = m(x, x_gap), _ref_full(m, x, x_gap)
    assert y.shape == ref.shape == (batch, oup, (9 + stride - 1) // stride, (9 + stride - 1) // stride)
    assert (y - ref).abs().max() < 1e-5


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("inp,k,stride", [(16, 3, 1), (24, 5, 2), (8, 7, 1)])
def test_batched_weightnet_dw_equals_per_sample_loop(batch, inp, k, stride):
    m = WeightNetDW(inp, k, stride)
    x = torch.randn(batch, inp, 9, 9)
    x_gap = torch.randn(batch, gap_channels(inp), 1, 1)
    with torch.no_grad():
        y, ref = m(x, x_gap), _ref_dw(m, x, x_gap)
    assert y.shape == ref.shape
    assert (y - ref).abs().max() < 1e-5


def _ref_x_gap(gr, x):
    return F.conv2d(x.mean((2, 3), keepdim=True), gr.reduce.weight, gr.reduce.bias)


@pytest.mark.parametrize("batch", [1, 2])
def test_edge_op_is_relu_weightnet_bn(batch):
    op = space.OPS["weightnet_3x3"](12, 16, 2).eval()
    op.bn.running_mean.uniform_(-0.5, 0.5)
    op.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(batch, 12, 9, 9)
    with torch.no_grad():
        xr = F.relu(x)
        ref = op.bn(_ref_full(op.conv, xr, _ref_x_gap(op.gap, xr)))
        assert (op(x) - ref).abs().max() < 1e-5


@pytest.mark.parametrize("batch", [1, 2])
def test_dw_variant_pools_its_own_input(batch):
    m = space.DW_CONVS["weightnet"](16, 5, 1)
    x = torch.randn(batch, 16, 7, 7)
    with torch.no_grad():
        assert (m(x) - _ref_dw(m.conv, x, _ref_x_gap(m.gap, x))).abs().max() < 1e-5


def _n(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("inp,oup,k,M,G", [(32, 48, 3, 2, 2), (512, 64, 1, 2, 2), (16, 8, 3, 4, 2),
                                           (16, 8, 3, 2, 1)])
def test_params_hand_formula(inp, oup, k, M, G):
    m = WeightNet(inp, oup, k, 1, M, G)
    gap = max(16, inp // 16)
    assert _n(m.wn_fc2) == (M // G) * oup * inp * k * k
    assert _n(m.wn_fc1) == gap * M * oup + M * oup
    if M == G:  # the generator holds as many weights as the static conv it replaces
        assert _n(m.wn_fc2) == nn.Conv2d(inp, oup, k, bias=False).weight.numel()
    op = WeightNetConv(inp, oup, 1, k, M, G)
    assert _n(op.gap) == inp * gap + gap
    assert _n(op) == inp * gap + gap + gap * M * oup + M * oup + (M // G) * oup * inp * k * k + 2 * oup


def test_dw_params_hand_formula():
    inp, k = 64, 5
    m = space.DW_CONVS["weightnet"](inp, k, 1)
    gap = 16
    assert _n(m.conv.wn_fc1) == gap * inp + inp  # fc1 -> (M/G)*inp
    assert _n(m.conv.wn_fc2) == inp * k * k      # groups=inp: one weight per kernel element
    assert _n(m) == inp * gap + gap + gap * inp + inp + inp * k * k
    assert gap_channels(512) == 32 and gap_channels(200) == 16


@pytest.mark.parametrize("stride", [1, 2])
def test_fvcore_counts_the_dynamic_conv_from_shapes(stride):
    c_in, c_out, h = 16, 24, 9
    ho = (h + stride - 1) // stride
    gap, M, G = 16, 2, 2
    op = space.OPS["weightnet_3x3"](c_in, c_out, stride)
    per_sample = (c_in * h * h                      # GAP (mean)
                  + c_in * gap                      # reduce
                  + gap * M * c_out                 # fc1
                  + (M // G) * c_out * c_in * 9     # fc2: a 1x1 conv on a 1x1 map
                  + c_out * c_in * 9 * ho * ho      # the per-sample conv
                  + 2 * c_out * ho * ho)            # BN (eval)
    assert flops.count(op, [(1, c_in, h, h)]) == per_sample
    assert flops.count(op, [(2, c_in, h, h)]) == 2 * per_sample  # groups=B: every sample counted
    with torch.no_grad():
        conv = flops.analysis(op.eval(), torch.zeros(2, c_in, h, h)).by_operator()["conv"]
    assert conv == 2 * (c_in * gap + gap * M * c_out + c_out * c_in * 9 + c_out * c_in * 9 * ho * ho)


def test_fvcore_counts_the_dw_variant():
    C, k, h = 32, 5, 8
    m = space.DW_CONVS["weightnet"](C, k, 2)
    assert flops.count(m, [(2, C, h, h)]) == 2 * (C * h * h + C * 16 + 16 * C + C * k * k
                                                  + C * k * k * 4 * 4)


@pytest.mark.parametrize("k,stride", [(3, 1), (5, 2), (7, 1)])
def test_dw_registry_entry_contract(k, stride):
    m = space.DW_CONVS["weightnet"](16, k, stride)
    x = torch.randn(2, 16, 9, 9, requires_grad=True)
    m.train()
    out = m(x)
    ho = (9 + stride - 1) // stride
    assert out.shape == (2, 16, ho, ho)
    out.pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    m.eval()
    x1 = torch.randn(1, 16, 9, 9)
    with torch.no_grad():
        y = m(x1)
        assert torch.equal(y, m(x1))
        fca = flops.analysis(m, x1)
        assert fca.total() > 0 and not fca.unsupported_ops()
        torch.testing.assert_close(torch.jit.trace(m, (x1,), check_trace=False)(x1), y)


def test_dw_even_kernel_is_refused():
    with pytest.raises(ValueError):
        space.DW_CONVS["weightnet"](16, 4, 1)


# ---- ShuffleNetV2 + WeightNet(1x), M=G=2, rebuilt from the official shufflenet_v2.py ------

class _Block(nn.Module):
    """The official block: one x_gap (reduce of the branch input) shared by every WeightNet."""

    def __init__(self, inp, oup, mid, stride):
        super().__init__()
        self.stride = stride
        self.gap = GapReduce(inp)
        self.branch = nn.ModuleList([WeightNet(inp, mid, 1, 1), nn.BatchNorm2d(mid),
                                     WeightNetDW(mid, 3, stride), nn.BatchNorm2d(mid),
                                     WeightNet(mid, oup - inp, 1, 1), nn.BatchNorm2d(oup - inp)])
        if stride == 2:
            self.proj = nn.ModuleList([WeightNetDW(inp, 3, 2), nn.BatchNorm2d(inp),
                                       WeightNet(inp, inp, 1, 1), nn.BatchNorm2d(inp)])

    def forward(self, x):
        if self.stride == 1:  # channel shuffle split: even channels pass, odd ones compute
            x_proj, x = x[:, 0::2], x[:, 1::2]
        else:
            x_proj = x
        g = self.gap(x)
        w1, b1, w2, b2, w3, b3 = self.branch
        x = F.relu(b3(w3(b2(w2(F.relu(b1(w1(x, g))), g)), g)))
        if self.stride == 2:
            p1, pb1, p2, pb2 = self.proj
            x_proj = F.relu(pb2(p2(pb1(p1(x_proj, g)), g)))
        return torch.cat([x_proj, x], 1)


def _shufflenet_v2_weightnet(widths):
    layers = [nn.Conv2d(3, widths[1], 3, 2, 1), nn.BatchNorm2d(widths[1]), nn.ReLU(),
              nn.MaxPool2d(3, 2, 1)]
    c = widths[1]
    for stage, repeats in enumerate([4, 8, 4]):
        out = widths[stage + 2]
        for i in range(repeats):
            layers.append(_Block(c, out, out // 2, 2) if i == 0 else _Block(c // 2, out, out // 2, 1))
            c = out
    layers += [nn.Conv2d(c, widths[-1], 1), nn.BatchNorm2d(widths[-1]), nn.ReLU(),
               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], 1000)]
    return nn.Sequential(*layers)


# official widths (reduced slightly "to make WeightNet's FLOPs comparable"); [M] params of
# modules.md (shape recount of the official code) and the README's FLOPs
SNET = {"0.5x": ([-1, 24, 48, 96, 192, 1024], 1.464, 41e6),
        "1.0x": ([-1, 24, 112, 224, 448, 1024], 2.436, 139e6),
        "1.5x": ([-1, 24, 176, 352, 704, 1024], 3.915, 301e6),
        "2.0x": ([-1, 24, 248, 496, 992, 1024], 6.198, 562e6)}


@pytest.mark.parametrize("size", list(SNET))
def test_shufflenet_v2_weightnet_params(size):
    widths, measured, _ = SNET[size]
    n = _n(_shufflenet_v2_weightnet(widths))
    assert round(n / 1e6, 3) == measured  # 2,435,832 at 1.0x


def test_shufflenet_block_shapes_and_shuffle_split():
    blk = _Block(24, 56, 28, 2)
    assert blk(torch.randn(2, 24, 8, 8)).shape == (2, 56, 4, 4)
    blk = _Block(28, 56, 28, 1)
    assert blk(torch.randn(1, 56, 5, 5)).shape == (1, 56, 5, 5)


@pytest.mark.slow
@pytest.mark.parametrize("size", list(SNET))
def test_shufflenet_v2_weightnet_flops(size):
    """README FLOPs are conv + linear MACs (incl. the weight generators): 40.7/138.5/301.1/561.4M."""
    widths, _, readme = SNET[size]
    m = _shufflenet_v2_weightnet(widths).eval()
    with torch.no_grad():
        by_op = flops.analysis(m, torch.zeros(1, 3, 224, 224)).by_operator()
    assert abs(by_op["conv"] + by_op["linear"] - readme) / readme < 0.03
