"""Official checkpoints in and out: every official name maps, loads strictly, round-trips exactly."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from codetr import build_model, load_config
from codetr.convert import (ConversionError, UnsafeCheckpointError, config_for_official, from_official,
                            infer_overrides, load_untrusted, to_official)
from codetr.engine import load_checkpoint

KEYS = Path(__file__).resolve().parents[2] / "data" / "official_co_deformable_detr_r50_keys.txt"
DINO_KEYS = Path(__file__).resolve().parents[2] / "data" / "official_co_dino_5scale_r50_keys.txt"
ROOT = Path(__file__).resolve().parents[3]


def official_r50_state_dict(seed: int = 0, keys: Path = KEYS) -> dict[str, torch.Tensor]:
    """Random tensors with exactly the names and shapes of an official R50 1x model's state dict."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for line in keys.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, shape = line.split(" ", 1)
        shape = [int(x) for x in shape.strip("[]").split(",") if x.strip()]
        sd[name] = torch.tensor(0) if name.endswith("num_batches_tracked") else torch.randn(shape, generator=g)
    return sd


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The official R50 names through the real CLI: (official state dict, output path, CLI output)."""
    tmp = tmp_path_factory.mktemp("convert")
    official = official_r50_state_dict()
    src = tmp / "official.pth"
    torch.save({"state_dict": official, "meta": {"CLASSES": tuple(f"class {i}" for i in range(80))}}, src)
    out = tmp / "converted.pt"
    r = subprocess.run([sys.executable, "-m", "platform.convert_checkpoint", str(src), "-o", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return official, out, r.stdout


def test_official_r50_names_convert_and_load_strictly(converted):
    official, out, stdout = converted
    state = load_checkpoint(out)
    n_counters = sum(k.endswith("num_batches_tracked") for k in official)
    assert len(state["model"]) == len(official) - n_counters == 623
    assert "unexpected                           0" in stdout and f"ignored                              {n_counters}" in stdout
    assert state["category_names"][3] == "class 3" and state["num_classes"] == 80
    cfg = load_config("experiments/codetr_r50_coco.yaml", ["model.backbone.pretrained=false"])
    model = build_model(cfg)
    model.load_state_dict(state["model"], strict=True)
    # values by name: a few tensors that are renamed along the way
    sd = model.state_dict()
    pairs = {"backbone.conv1.weight": "backbone.stem.0.weight",
             "neck.convs.1.gn.bias": "neck.lateral_norm.1.bias",
             "query_head.transformer.decoder.layers.2.attentions.0.attn.in_proj_weight":
                 "query_head.decoder.layers.2.self_attn.in_proj_weight",
             "query_head.transformer.encoder.layers.5.ffns.0.layers.1.weight": "query_head.encoder.layers.5.ffn.layers.3.weight",
             "query_head.cls_branches.6.weight": "query_head.enc_cls_branch.weight",
             "query_head.reg_branches.6.4.bias": "query_head.enc_reg_branch.layers.2.bias",
             "query_head.transformer.head_pos_embed.weight": "query_head.head_pos_embed.weight",
             "roi_head.0.bbox_head.shared_fcs.1.weight": "aux_heads.0.roi_head.fc2.weight",
             "bbox_head.0.cls_convs.0.gn.weight": "aux_heads.1.cls_convs.0.1.weight",
             "bbox_head.0.scales.4.scale": "aux_heads.1.scales.4.scale"}
    for o, p in pairs.items():
        assert torch.equal(official[o], sd[p]), (o, p)
    # every official floating tensor sits somewhere in the model, unchanged
    assert sum(t.numel() for t in official.values() if t.is_floating_point()) == sum(
        t.numel() for t in sd.values() if t.is_floating_point())


def test_round_trip_project_official_project_is_identity(converted, tmp_path):
    _, out, _ = converted
    back = tmp_path / "official_again.pth"
    r = subprocess.run([sys.executable, "-m", "platform.convert_checkpoint", "--to-official", str(out), "-o", str(back)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    ck = load_untrusted(back)
    official = official_r50_state_dict()
    assert set(ck["state_dict"]) == set(official)                 # the counters come back too (as 0)
    assert all(torch.equal(ck["state_dict"][k], v) for k, v in official.items())
    assert ck["meta"]["CLASSES"][0] == "class 0"
    cfg = load_config("experiments/codetr_r50_coco.yaml", ["model.backbone.pretrained=false"])
    project = load_checkpoint(out)["model"]
    again, _ = from_official(ck["state_dict"], cfg, project)
    assert all(torch.equal(again[k], v) for k, v in project.items())


def test_other_head_order_permutes_the_per_head_tensors():
    """A config with ATSS first: per-head modules and head_pos_embed rows follow the project's order,
    and the way back restores the official order."""
    official = official_r50_state_dict(1)
    overrides = ["model.backbone.pretrained=false", "model.aux_heads=[atss, faster_rcnn]"]
    cfg, inferred = config_for_official(official, "experiments/codetr_r50_coco.yaml", overrides)
    assert cfg.model.aux_heads == ["atss", "faster_rcnn"] and inferred["model.backbone.depth"] == 50
    model_sd = build_model(cfg).state_dict()
    sd, report = from_official(official, cfg, model_sd)
    emb = official["query_head.transformer.head_pos_embed.weight"]
    assert torch.equal(sd["query_head.head_pos_embed.weight"], emb[[1, 0]]) and len(report.transformed) == 1
    assert torch.equal(sd["query_head.aux_pos_trans.0.weight"], official["query_head.transformer.aux_pos_trans.1.weight"])
    assert torch.equal(sd["aux_heads.0.atss_cls.bias"], official["bbox_head.0.atss_cls.bias"])
    back, _ = to_official(sd, cfg)
    assert all(torch.equal(back[k], v) for k, v in official.items() if not k.endswith("num_batches_tracked"))


def test_unexpected_and_unsafe_inputs_fail_loudly(tmp_path):
    official = official_r50_state_dict()
    cfg = load_config("experiments/codetr_r50_coco.yaml", ["model.backbone.pretrained=false"])
    official["query_head.transformer.something_new.weight"] = torch.zeros(2)
    with pytest.raises(ConversionError, match="something_new"):
        from_official(official, cfg, {})
    del official["query_head.transformer.something_new.weight"]
    official["bbox_head.1.atss_cls.weight"] = torch.zeros(2)
    with pytest.raises(ConversionError, match="bbox_head.1"):
        infer_overrides(official)

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    bad = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "meta": {"payload": Evil()}}, bad)
    with pytest.raises(UnsafeCheckpointError, match="builtins.print"):
        load_untrusted(bad)
    r = subprocess.run([sys.executable, "-m", "platform.convert_checkpoint", str(bad), "-o", str(tmp_path / "x.pt")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "refusing to unpickle" in r.stderr and "this must never run" not in r.stdout


def test_official_codino_names_convert_load_and_round_trip():
    """The official Co-DINO 5-scale R50 names: read off as a DINO head on C2-C5, every tensor mapped."""
    official = official_r50_state_dict(2, DINO_KEYS)
    cfg, inferred = config_for_official(official, "experiments/codino_r50_coco.yaml", ["model.backbone.pretrained=false"])
    assert inferred["model.query_head"] == "dino" and inferred["model.num_queries"] == 900
    assert cfg.model.backbone.out_indices == [0, 1, 2, 3] and cfg.model.num_levels == 5
    assert cfg.model.with_coord_feat is False
    model = build_model(cfg)
    sd, report = from_official(official, cfg, model.state_dict())
    model.load_state_dict(sd, strict=True)
    n_counters = sum(k.endswith("num_batches_tracked") for k in official)
    assert len(report.mapped) == len(official) - n_counters and len(report.ignored) == n_counters
    assert torch.equal(sd["query_head.query_embedding.weight"], official["query_head.transformer.query_embed.weight"])
    assert torch.equal(sd["query_head.decoder.ref_point_head.layers.1.weight"],
                       official["query_head.transformer.decoder.ref_point_head.2.weight"])
    assert torch.equal(sd["neck.lateral.3.weight"], official["neck.convs.3.conv.weight"])
    back, _ = to_official(sd, cfg)
    assert set(back) == set(official) and all(torch.equal(back[k], v) for k, v in official.items())
