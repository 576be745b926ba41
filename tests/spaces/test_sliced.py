"""Sliced: one module at several widths on the widest's leading channels."""
import pytest
import torch
from torch import nn

from space.sliced import Sliced


def _block(c):
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.GELU(), nn.Conv2d(c, 2 * c, 1),
                         nn.LayerNorm([2 * c, 5, 5]))


def test_narrow_path_equals_standalone_module_with_leading_weights():
    torch.manual_seed(0)
    s = Sliced(_block, [4, 6, 8])
    assert sum(p.numel() for p in s.parameters()) == sum(p.numel() for p in _block(8).parameters())
    assert set(s.state_dict()) == {f"full.{k}" for k in _block(8).state_dict()}
    s.set(6)
    x = torch.randn(2, 6, 5, 5)
    m = _block(6)
    m.load_state_dict(s.state_at())
    torch.testing.assert_close(s(x), m(x))
    # the weights are the widest's leading slices, and gradients reach them there only
    assert torch.equal(m[0].weight, s.full[0].weight[:6, :6])
    s(x).sum().backward()
    g = s.full[0].weight.grad
    assert g[:6, :6].abs().sum() > 0 and g[6:].abs().sum() == 0 and g[:, 6:].abs().sum() == 0


def test_training_updates_the_widest_batch_norm_statistics_in_place():
    s = Sliced(_block, [4, 8]).train()
    s.set(4)
    s(torch.randn(3, 4, 5, 5) + 5)
    bn = s.full[1]
    assert bn.running_mean[:4].abs().sum() > 0 and bn.running_mean[4:].abs().sum() == 0
    assert int(bn.num_batches_tracked) == 1


def test_unknown_size_and_non_prefix_module():
    s = Sliced(_block, [4, 8])
    with pytest.raises(KeyError, match="not one of"):
        s.set(5)
    odd = Sliced(lambda c: nn.Linear(4, 4) if c == 4 else nn.Sequential(nn.Linear(8, 8)), [4, 8])
    assert not odd.shared(4)  # other tensor names: own weights, still runs
    odd.set(4)
    assert odd(torch.randn(1, 4)).shape == (1, 4)
    with pytest.raises(ValueError, match="eagerly"):
        Sliced(lambda c: nn.Linear(4, 4) if c == 4 else nn.Sequential(nn.Linear(8, 8)), [4, 8], lazy=True).set(4)


def test_a_lazy_copy_leaves_the_random_stream_alone():
    s = Sliced(_block, [4, 6, 8], lazy=True)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    s.set(6)  # builds the 6-wide copy (its init would draw random numbers)
    assert torch.equal(torch.rand(3), expected)
    assert s.shared(4) and s.shared(6)
