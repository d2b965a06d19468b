"""``model.freeze``: the named parts keep their weights (and BatchNorm statistics), the rest trains."""
from __future__ import annotations

import pytest
import torch

from codetr import build_model
from codetr.config import ConfigError, load_config
from codetr.config.schema import FREEZE_PARTS
from codetr.engine import build_optimizer, train_step

SMALL = ["model.num_classes=3", "model.num_queries=12", "model.embed_dims=32", "model.num_heads=4",
         "model.ffn_dims=64", "model.num_encoder_layers=1", "model.num_decoder_layers=2",
         "model.aux.faster_rcnn.fc_dims=64", "model.aux_heads=[atss]"]
SWIN = ["model.backbone.type=swin", "model.backbone.pretrained=false", "model.backbone.depths=[1, 1, 1, 1]",
        "model.backbone.embed_dim=32", "model.backbone.num_heads=[1, 2, 4, 8]", "model.backbone.window_size=4"]


def _frozen_names(overrides: list[str]) -> set[str]:
    model = build_model(load_config("experiments/codetr_tiny.yaml", SMALL + overrides))
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def test_unknown_part_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"model\.freeze\[1\]: unknown part 'encoders'; valid parts: backbone, "
                                          r"backbone\.stem, .*aux_heads"):
        load_config(None, ["model.freeze=[neck, encoders]"])


@pytest.mark.parametrize("part, prefixes", [
    ("backbone", ("backbone.",)),
    ("backbone.stem", ("backbone.stem.",)),
    ("backbone.stage2", ("backbone.layer2.",)),
    ("neck", ("neck.",)),
    ("encoder", ("query_head.encoder.", "query_head.level_embeds")),
    ("decoder", ("query_head.decoder.",)),
    ("query_head", ("query_head.",)),
    ("aux_heads", ("aux_heads.",)),
])
def test_each_part_freezes_exactly_its_parameters(part, prefixes):
    model = build_model(load_config("experiments/codetr_tiny.yaml", SMALL))
    expected = {n for n, _ in model.named_parameters() if n.startswith(prefixes)}
    assert expected and _frozen_names([f"model.freeze=[{part}]"]) == expected


def test_swin_stem_and_stage():
    frozen = _frozen_names(SWIN + ["model.freeze=[backbone.stem, backbone.stage2]"])
    assert frozen and all(n.startswith(("backbone.patch_embed.", "backbone.stages.1.", "backbone.out_norms.1."))
                          for n in frozen)
    assert any(n.startswith("backbone.out_norms.1.") for n in frozen)
    assert any(n.startswith("backbone.stages.1.downsample.") for n in frozen)


def test_every_part_is_known_to_the_schema():
    for part in FREEZE_PARTS:
        assert _frozen_names([f"model.freeze=[{part}]"])


def test_frozen_parts_stay_fixed_while_the_rest_trains():
    """norm=bn (trainable BatchNorm): a frozen backbone keeps its weights and its running statistics; the
    optimizer holds none of the frozen parameters."""
    cfg = load_config("experiments/codetr_tiny.yaml", SMALL + ["model.freeze=[backbone, encoder]",
                                                               "model.backbone.norm=bn", "train.lr=1e-2"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert not model.backbone.training and not model.query_head.encoder.training and model.query_head.decoder.training
    optimizer = build_optimizer(model, cfg.train)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert not any(id(p) in in_optimizer for n, p in model.named_parameters() if n in frozen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])} for _ in range(2)]
    train_step(model, images, targets, optimizer, clip_grad_norm=0.1)
    after = model.state_dict()
    for name, value in before.items():
        if name.startswith(("backbone.", "query_head.encoder.", "query_head.level_embeds")):
            assert torch.equal(after[name], value), name            # weights and BatchNorm statistics
    assert not torch.equal(after["query_head.decoder.layers.0.cross_attn.value_proj.weight"],
                           before["query_head.decoder.layers.0.cross_attn.value_proj.weight"])
    assert not torch.equal(after["neck.lateral.0.weight"], before["neck.lateral.0.weight"])
