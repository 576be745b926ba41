"""AdaptFormer's AdaptMLP: LoRA init is identity-preserving, the adapter reads the residual."""
import torch
import torch.nn.functional as F

import space
from space.ops.adaptformer import Adapter, AdaptMLP


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_adapter_params_formula():
    for d, r in ((768, 64), (32, 64), (48, 8)):
        assert n_params(Adapter(d, r)) == 2 * d * r + r + d
    # modules.md: ViT-B, 12 blocks, bottleneck 64 -> 1,189,632 adapter parameters
    assert 12 * n_params(Adapter(768, 64)) == 1_189_632
    m = space.CHANNEL_MIXERS["adapt_mlp"](32, 4.0)
    assert n_params(m) == n_params(space.CHANNEL_MIXERS["mlp"](32, 4.0)) + 2 * 32 * 64 + 64 + 32


def test_lora_init_outputs_exactly_zero_even_in_training():
    m = space.CHANNEL_MIXERS["adapt_mlp"](16, 2.0).train()
    x, r = torch.randn(2, 16, 5, 5), torch.randn(2, 16, 5, 5)
    assert torch.equal(m.side(r), torch.zeros_like(r))
    assert torch.equal(m(x, r), m.mlp(x))
    assert torch.equal(m.adapter.up_proj.weight, torch.zeros_like(m.adapter.up_proj.weight))
    assert torch.equal(m.adapter.down_proj.bias, torch.zeros(64))


def test_adapter_reads_the_residual_stream():
    m = AdaptMLP(16, 2.0, base="mlp_dw").eval()
    torch.nn.init.normal_(m.adapter.up_proj.weight)
    torch.nn.init.normal_(m.adapter.up_proj.bias)
    x, r = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    a = m.adapter
    side = F.conv2d(F.relu(F.conv2d(r, a.down_proj.weight, a.down_proj.bias)), a.up_proj.weight, a.up_proj.bias)
    torch.testing.assert_close(m(x, residual=r), m.mlp(x) + 0.1 * side)
    torch.testing.assert_close(m(x), m.mlp(x) + m.side(x))


def test_dropout_only_in_training():
    m = AdaptMLP(16, 2.0)
    torch.nn.init.normal_(m.adapter.up_proj.weight)
    x = torch.randn(2, 16, 6, 6)
    m.train()
    assert not torch.equal(m.side(x), m.side(x))
    m.eval()
    assert torch.equal(m.side(x), m.side(x))
