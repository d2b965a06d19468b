"""``model.msda_impl``: which implementation runs, the plain path in exported / traced graphs, the
setting reaching every attention module of a built model."""
import io

import onnx
import pytest
import torch

import codetr.ops.ms_deform_attn_dispatch as dispatch
from codetr import build_model, load_config
from codetr.models.deformable_attention import MultiScaleDeformableAttention
from codetr.ops import resolve_msda_impl

SHAPES = [(4, 5), (2, 3)]


def _attention(impl: str) -> MultiScaleDeformableAttention:
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(embed_dims=8, num_heads=2, num_levels=len(SHAPES), num_points=2,
                                         msda_impl=impl).double()
    # non-uniform weights and offsets so that every point matters
    torch.nn.init.normal_(attn.attention_weights.weight)
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.5)
    return attn


def _attention_inputs():
    g = torch.Generator().manual_seed(1)
    num_keys = sum(h * w for h, w in SHAPES)
    query = torch.randn(2, 3, 8, generator=g, dtype=torch.float64)
    reference = torch.rand(2, 3, len(SHAPES), 2, generator=g, dtype=torch.float64)
    value = torch.randn(2, num_keys, 8, generator=g, dtype=torch.float64)
    return query, reference, value


def test_auto_is_pytorch_on_the_cpu_and_explicit_choices_are_kept():
    cpu = torch.zeros(1)
    assert resolve_msda_impl("auto", cpu) == "pytorch"
    assert resolve_msda_impl("pytorch", cpu) == "pytorch"
    assert resolve_msda_impl("triton", cpu) == "triton"
    with pytest.raises(ValueError, match=r"model\.msda_impl: 'cuda' is not one of \['auto', 'pytorch', 'triton'\]"):
        resolve_msda_impl("cuda", cpu)


def test_without_triton_auto_falls_back_and_triton_is_an_error_naming_the_key(monkeypatch):
    monkeypatch.setattr(dispatch, "TRITON_IMPORT_ERROR", "ModuleNotFoundError: No module named 'triton'")
    assert resolve_msda_impl("auto", torch.zeros(1)) == "pytorch"
    with pytest.raises(RuntimeError, match=r"model\.msda_impl: triton needs the triton package.*No module named"):
        resolve_msda_impl("triton", torch.zeros(1))


def test_the_module_gives_the_same_output_and_gradients_with_either_implementation():
    """Triton (interpreter) and PyTorch inside the attention module, float64: same output, same
    parameter gradients (the sampling op's three input gradients flow into offsets, weights, value)."""
    query, reference, value = _attention_inputs()
    results = []
    for impl in ("pytorch", "triton"):
        attn = _attention(impl)
        out = attn(query, reference, value, SHAPES, None)
        out.pow(2).sum().backward()
        results.append((out.detach(), {n: p.grad for n, p in attn.named_parameters()}))
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=1e-12, atol=1e-12)
    for name, grad in grads_a.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name}: {m}")


def test_onnx_export_and_tracing_take_the_plain_path_even_when_triton_is_asked_for():
    attn = _attention("triton").float().eval()
    query, reference, value = (t.float() for t in _attention_inputs())

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, query, reference, value):
            return self.attn(query, reference, value, SHAPES, None)

    model = Wrapper().eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, (query, reference, value))
        assert "grid_sampler" in str(traced.inlined_graph)
        buffer = io.BytesIO()
        torch.onnx.export(model, (query, reference, value), buffer, dynamo=False, opset_version=17)
    graph = onnx.load_from_string(buffer.getvalue()).graph
    assert "GridSample" in {node.op_type for node in graph.node}


def test_the_config_key_reaches_every_deformable_attention_of_the_model():
    cfg = load_config("experiments/codetr_tiny.yaml", ["model.num_classes=5", "model.msda_impl=triton"])
    model = build_model(cfg)
    impls = [m.msda_impl for m in model.modules() if isinstance(m, MultiScaleDeformableAttention)]
    assert impls == ["triton"] * (cfg.model.num_encoder_layers + cfg.model.num_decoder_layers)
    assert load_config("experiments/codetr_tiny.yaml").model.msda_impl == "auto"
