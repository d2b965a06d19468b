"""benchmarks/deploy_cost.py --smoke: both tiny query heads, PyTorch and onnxruntime rows, FLOPs that add up."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "deploy_cost.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("deploy_cost", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_smoke_prints_both_heads_on_both_backends():
    text = _load_script().main(["--smoke"])
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in text.splitlines()
            if line.startswith("| tiny")]
    assert [(r[0], r[4]) for r in rows] == [("tiny Co-Deformable-DETR", "PyTorch eager"),
                                             ("tiny Co-Deformable-DETR", "onnxruntime CPU"),
                                             ("tiny Co-DINO", "PyTorch eager"), ("tiny Co-DINO", "onnxruntime CPU")]
    for r in rows:
        assert r[1] == "64x64" and float(r[5]) > 0 and float(r[6]) > 0
        total, sampling = r[3].replace("(", "").replace(")", "").split()
        assert float(total) > float(sampling) > 0


def test_the_sampling_formula_counts_every_deformable_attention_call():
    module = _load_script()
    from codetr import build_model, load_config

    cfg = load_config(REPO / "experiments" / "codetr_tiny.yaml", [])
    model = build_model(cfg, num_classes=5).for_inference().eval()
    image = torch.rand(3, 64, 96)
    m = cfg.model
    with torch.no_grad():
        feats, _ = model.neck(model.backbone(image[None]), None)
    keys = sum(f.shape[2] * f.shape[3] for f in feats)
    per_query = 10 * m.num_levels * m.num_points * m.embed_dims
    expected = per_query * (keys * m.num_encoder_layers + m.num_queries * m.num_decoder_layers)
    assert module.sampling_flops(model, image) == expected
