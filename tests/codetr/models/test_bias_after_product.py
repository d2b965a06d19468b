"""The official model's rounding where it matters for a ranking: linears of sequence-first tensors viewed
batch-first (the encoder's layers after the first, the two-stage projection) round as product + bias."""
import torch
import torch.nn.functional as F

from codetr.models.deformable_attention import MultiScaleDeformableAttention, linear_bias_after_product


def test_product_then_bias_is_what_linear_computes_on_a_sequence_first_view():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    seq_first = torch.randn(700, 2, 64)                     # [num_keys, bs, d] as the official encoder holds it
    view = seq_first.permute(1, 0, 2)                       # what its attention's projections get
    official = F.linear(view, linear.weight, linear.bias)
    ours = linear_bias_after_product(linear, view.contiguous())
    assert torch.equal(ours, official)
    torch.testing.assert_close(ours, linear(view.contiguous()), rtol=1e-5, atol=1e-5)   # the same map


def test_attention_with_bias_after_product_is_the_same_function():
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(32, 4, 2, 2, msda_impl="pytorch")
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(0.05 * torch.randn_like(p))
    shapes = [(6, 8), (3, 4)]
    value = torch.randn(2, 60, 32)
    query = torch.randn(2, 60, 32)
    ref = torch.rand(2, 60, 2, 2)
    a = attn(query, ref, value, shapes, None)
    b = attn(query, ref, value, shapes, None, bias_after_product=True)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
