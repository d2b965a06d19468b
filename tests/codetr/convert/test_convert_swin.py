"""Official Co-Deformable-DETR Swin checkpoints: every name maps, loads strictly, round-trips; sizes are read off."""
from pathlib import Path

import pytest
import torch

from codetr import build_model
from codetr.convert import ConversionError, config_for_official, from_official, infer_overrides, to_official
from codetr.convert.backbone_names import infer_backbone, relative_position_index

KEYS = Path(__file__).resolve().parents[2] / "data" / "official_co_deformable_detr_swin_t_keys.txt"
NUM_INDEX_BUFFERS = 12   # one relative position index per Swin-T block (2 + 2 + 6 + 2)


def official_swin_t_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the names and shapes of the official Swin-T model's state dict; the
    relative position indices hold their fixed values (window 7)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for line in KEYS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, shape = line.split(" ", 1)
        shape = [int(x) for x in shape.strip("[]").split(",") if x.strip()]
        sd[name] = relative_position_index(7) if name.endswith("relative_position_index") else torch.randn(
            shape, generator=g)
    return sd


@pytest.fixture(scope="module")
def official_and_model():
    official = official_swin_t_state_dict()
    cfg, inferred = config_for_official(official, "experiments/codetr_r50_coco.yaml")
    return official, cfg, inferred, build_model(cfg)


def test_swin_t_size_is_read_off_the_checkpoint(official_and_model):
    _, cfg, inferred, model = official_and_model
    assert {k: v for k, v in inferred.items() if k.startswith("model.backbone.")} == {
        "model.backbone.type": "swin", "model.backbone.swin_size": "t", "model.backbone.embed_dim": 96,
        "model.backbone.depths": [2, 2, 6, 2], "model.backbone.num_heads": [3, 6, 12, 24],
        "model.backbone.window_size": 7, "model.backbone.out_indices": [1, 2, 3]}
    # the R50 base config's frozen_stages (ResNet's 1) does not carry over to the Swin
    assert cfg.model.backbone.frozen() == 0 and not cfg.model.backbone.pretrained
    assert model.backbone.out_channels == [192, 384, 768]


def test_official_swin_t_converts_loads_strictly_and_round_trips(official_and_model):
    official, cfg, _, model = official_and_model
    sd, report = from_official(official, cfg, model.state_dict())
    model.load_state_dict(sd, strict=True)
    assert len(report.ignored) == NUM_INDEX_BUFFERS and len(report.mapped) == len(official) - NUM_INDEX_BUFFERS
    assert all("relative position index" in why for _, why in report.ignored)
    pairs = {"backbone.patch_embed.proj.weight": "backbone.patch_embed.proj.weight",
             "backbone.layers.2.blocks.5.mlp.fc2.bias": "backbone.stages.2.blocks.5.mlp.3.bias",
             "backbone.layers.1.blocks.1.attn.relative_position_bias_table":
                 "backbone.stages.1.blocks.1.attn.relative_position_bias_table",
             "backbone.layers.0.downsample.reduction.weight": "backbone.stages.0.downsample.reduction.weight",
             "backbone.norm3.weight": "backbone.out_norms.3.weight",
             "neck.convs.0.conv.weight": "neck.lateral.0.weight"}
    model_sd = model.state_dict()
    for o, p in pairs.items():
        assert torch.equal(official[o], model_sd[p]), (o, p)
    # back to the official layout: the same names (the indices re-added), the same values
    back, back_report = to_official(sd, cfg)
    assert set(back) == set(official) and all(torch.equal(back[k], v) for k, v in official.items())
    assert len(back_report.added) == NUM_INDEX_BUFFERS
    again, _ = from_official(back, cfg, model_sd)
    assert all(torch.equal(again[k], v) for k, v in sd.items())


def test_a_foreign_relative_position_index_is_an_error(official_and_model):
    official, cfg, _, model = official_and_model
    bad = dict(official)
    bad["backbone.layers.3.blocks.1.attn.relative_position_index"] = relative_position_index(7).flip(0)
    with pytest.raises(ConversionError, match="layers.3.blocks.1.attn.relative_position_index"):
        from_official(bad, cfg, model.state_dict())
    del bad["backbone.layers.3.blocks.1.attn.relative_position_index"]
    bad["backbone.layers.3.blocks.2.norm1.weight"] = torch.zeros(768)   # a block Swin-T does not have
    with pytest.raises(ConversionError, match="layers.3.blocks.2"):
        from_official(bad, cfg, model.state_dict())


def _swin_shapes(embed: int, depths: list[int], heads: list[int], window: int, out_indices: list[int],
                 neck_inputs: int) -> dict[str, torch.Tensor]:
    """The tensors :func:`infer_backbone` reads, as zero-stride views (no memory)."""
    def z(*shape):
        return torch.zeros(()).expand(*shape)
    sd = {"backbone.patch_embed.proj.weight": z(embed, 3, 4, 4)}
    for i, depth in enumerate(depths):
        dim = embed * 2 ** i
        for j in range(depth):
            sd[f"backbone.layers.{i}.blocks.{j}.norm1.weight"] = z(dim)
            sd[f"backbone.layers.{i}.blocks.{j}.attn.relative_position_bias_table"] = z((2 * window - 1) ** 2, heads[i])
            sd[f"backbone.layers.{i}.blocks.{j}.mlp.fc1.weight"] = z(4 * dim, dim)
    sd.update({f"backbone.norm{i}.weight": z(embed * 2 ** i) for i in out_indices})
    sd.update({f"neck.convs.{k}.conv.weight": z(256, 8, 1, 1) for k in range(neck_inputs)})
    return sd


def test_swin_l_window_12_and_four_outputs_are_read_off():
    out = infer_backbone(_swin_shapes(192, [2, 2, 18, 2], [6, 12, 24, 48], 12, [0, 1, 2, 3], 4))
    assert out["model.backbone.swin_size"] == "l" and out["model.backbone.window_size"] == 12
    assert out["model.backbone.out_indices"] == [0, 1, 2, 3]
    custom = infer_backbone(_swin_shapes(64, [2, 2, 4, 2], [2, 4, 8, 16], 5, [1, 2, 3], 3))
    assert "model.backbone.swin_size" not in custom and custom["model.backbone.depths"] == [2, 2, 4, 2]
    with pytest.raises(ValueError, match="output norms"):
        infer_backbone(_swin_shapes(96, [2, 2, 6, 2], [3, 6, 12, 24], 7, [1, 2, 3], 4))
    official = official_swin_t_state_dict()
    official["backbone.layers.0.blocks.0.attn.relative_position_bias_table"] = torch.zeros(50, 3)
    with pytest.raises(ConversionError, match="not \\(2 window - 1\\)\\^2"):
        infer_overrides(official)
