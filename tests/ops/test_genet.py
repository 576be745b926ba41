"""GENet head: member isolation, the cost of G members vs one head (hand formulas), the
averaged prediction and the Group Averaging loss against per-member references."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas import flops
from space.ops.genet import HEADS, ClassifierHead, GENetHead, genet_loss


def _slices(head: GENetHead, g: int):
    """Every parameter slice owned by member g: (name, tensor slice of the gradient)."""
    G, K = head.groups, head.num_classes
    C = head.classifiers.in_channels
    c = slice(g * C // G, (g + 1) * C // G)
    out = [("branch.conv", head.branch[0].weight.grad[c]), ("branch.bn.w", head.branch[1].weight.grad[c]),
           ("branch.bn.b", head.branch[1].bias.grad[c]),
           ("cls.w", head.classifiers.weight.grad[g * K:(g + 1) * K]),
           ("cls.b", head.classifiers.bias.grad[g * K:(g + 1) * K])]
    for i, layer in enumerate(head.late):
        out += [(f"late{i}.conv", layer[0].weight.grad[c]), (f"late{i}.bn", layer[1].weight.grad[c])]
    return out


@pytest.mark.parametrize("depth", [0, 2])
def test_a_members_loss_sends_no_gradient_to_other_members(depth):
    G, K = 4, 5
    base = nn.Conv2d(3, 16, 3, padding=1)
    head = GENetHead(16, K, mid_channels=32, groups=G, depth=depth)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, K, (6,))
    for i in range(G):
        base.zero_grad(set_to_none=False)
        head.zero_grad(set_to_none=False)
        head(base(x))
        F.cross_entropy(head.group_logits[:, i], y).backward()
        for j in range(G):
            for name, grad in _slices(head, j):
                if j == i:
                    assert grad.abs().sum() > 0, f"member {i} gets no gradient in {name}"
                else:
                    assert torch.count_nonzero(grad) == 0, f"member {i}'s loss reaches member {j}'s {name}"
        assert base.weight.grad.abs().sum() > 0  # the shared base learns from every member


@pytest.mark.parametrize("C_in,mid,depth", [(64, 256, 0), (512, 0, 0), (64, 256, 1)])
def test_cost_of_g_members_matches_a_single_head_of_the_same_width(C_in, mid, depth):
    K, G, hw = 10, 4, 5
    genet, single = GENetHead(C_in, K, mid, G, depth).eval(), ClassifierHead(C_in, K, mid).eval()
    C = mid or C_in
    p_single = (C_in * mid + 2 * mid if mid else 0) + C * K + K
    assert flops.params(single) == p_single
    late_p = depth * (C * C // G + 2 * C)
    assert flops.params(genet) == p_single + late_p + (G - 1) * K  # one bias per member
    shape = [(1, C_in, hw, hw)]
    f_single = flops.count(single, shape)
    late_f = depth * (C * C // G + 2 * C) * hw * hw  # grouped 1x1 conv + BN (fvcore: 2 per element)
    assert flops.count(genet, shape) == f_single + late_f + 2 * G * K  # + log_softmax and logsumexp
    if depth == 0:  # "retaining the same computation as a single ConvNet"
        assert flops.count(genet, shape) == pytest.approx(f_single, rel=0.01)
        assert flops.params(genet) == pytest.approx(p_single, rel=0.01)


def test_members_are_separate_linear_classifiers_and_predictions_are_averaged():
    G, K, C = 3, 7, 12
    head = GENetHead(C, K, mid_channels=0, groups=G, dropout=0.0)  # training mode keeps member logits
    x = torch.randn(4, C, 6, 6)
    with torch.no_grad():
        out = head(x)
        pooled = x.mean((2, 3))
        w, b = head.classifiers.weight[:, :, 0, 0], head.classifiers.bias
        probs = []
        for g in range(G):  # member g: a linear classifier on its own C/G pooled channels
            lin = nn.Linear(C // G, K)
            lin.weight.copy_(w[g * K:(g + 1) * K])
            lin.bias.copy_(b[g * K:(g + 1) * K])
            z = lin(pooled[:, g * C // G:(g + 1) * C // G])
            torch.testing.assert_close(head.group_logits[:, g], z)
            probs.append(z.softmax(-1))
    avg = torch.stack(probs).mean(0)
    torch.testing.assert_close(out.exp(), avg)
    torch.testing.assert_close(out.softmax(-1), avg)  # a valid logit vector for the averaged prediction


def test_group_averaging_loss_is_the_mean_of_member_losses():
    G, K = 4, 6
    head = GENetHead(16, K, 32, G)
    net = nn.Sequential(nn.Conv2d(3, 16, 1), head)
    x, y = torch.randn(5, 3, 4, 4), torch.randint(0, K, (5,))
    assert genet_loss(net, y) is None  # no forward yet
    net(x)
    ref = sum(F.cross_entropy(head.group_logits[:, g], y) for g in range(G)) / G
    torch.testing.assert_close(genet_loss(net, y), ref)
    torch.testing.assert_close(head.group_losses(y).mean(), ref)


def test_stable_for_confident_members():
    head = GENetHead(8, 3, 0, 2).eval()
    with torch.no_grad():
        head.classifiers.weight.mul_(1e4)
        out = head(torch.randn(2, 8, 3, 3))
    assert torch.isfinite(out).all()


def test_heads_registry_and_width_check():
    assert {"plain", "genet"} <= set(HEADS.names())
    assert isinstance(HEADS["genet"](32, 10, 64, groups=4), GENetHead)
    with pytest.raises(ValueError, match="divisible"):
        GENetHead(32, 10, 30, groups=4)


def test_task_loss_hook_uses_member_losses_once():
    import torch.nn.functional as F

    from space.ops import task_loss
    from space.ops.genet import GENetHead

    head = GENetHead(16, 5, groups=4, dropout=0.0)  # no dropout, so two forwards agree
    x, y = torch.randn(3, 16, 4, 4), torch.randint(0, 5, (3,))
    net = torch.nn.Sequential(head)
    out = net(x)
    expected = head.loss(y)
    out = net(x)
    assert torch.allclose(task_loss(net, out, y), expected)
    # consumed: without a new forward the plain cross-entropy applies
    assert torch.allclose(task_loss(net, out, y), F.cross_entropy(out, y))


def test_genet_head_is_an_alias_offered_once():
    # issue 4 names the head `genet_head`; archs and spaces keep the registered `genet`
    assert "genet_head" in HEADS and HEADS["genet_head"] is HEADS["genet"]
    assert HEADS.names().count("genet") == 1 and "genet_head" not in HEADS.names()
    assert HEADS.check(["plain", "genet_head"]) == ["plain", "genet"]
    assert HEADS.meta("genet_head") == HEADS.meta("genet")
    from space import SPACES
    assert SPACES["mobile"](heads=["plain", "genet_head"]).heads == ["plain", "genet"]


def test_an_eval_forward_leaves_no_member_logits_behind():
    # scoring a candidate in eval mode, then training a step where this head is off the path,
    # must not hand that step stale logits of another batch size
    from space.ops import task_loss
    head = GENetHead(16, 5, groups=4)
    net = torch.nn.Sequential(head)
    net.eval()(torch.randn(7, 16, 4, 4))
    assert head.group_logits is None
    out, y = torch.randn(3, 5), torch.randint(0, 5, (3,))
    assert torch.allclose(task_loss(net.train(), out, y), F.cross_entropy(out, y))
