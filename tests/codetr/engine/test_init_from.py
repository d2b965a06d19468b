"""Fine-tuning from a checkpoint: weights only; class-specific rows carried over by class name."""
import pytest
import torch

from codetr import build_model, load_config
from codetr.engine import save_checkpoint
from codetr.engine.init_from import apply_init_from, class_layout

SMALL = ["model.num_queries=12", "model.embed_dims=32", "model.num_heads=4", "model.ffn_dims=64",
         "model.num_encoder_layers=1", "model.num_decoder_layers=2", "model.aux.faster_rcnn.fc_dims=64",
         "model.aux_heads=[atss, faster_rcnn]"]
OLD = ["rectangle", "ellipse", "triangle", "cross", "ring"]
NEW = ["ring", "dog", "rectangle"]          # two names carried over, one new


def _model(num_classes: int, seed: int):
    torch.manual_seed(seed)
    return build_model(load_config("experiments/codetr_tiny.yaml", SMALL + [f"model.num_classes={num_classes}"]))


@pytest.fixture()
def source(tmp_path):
    model = _model(5, seed=1)
    path = tmp_path / "source.pt"
    save_checkpoint(path, {"model": model.state_dict(), "num_classes": 5, "category_names": OLD, "epoch": 3,
                           "iteration": 300, "config": {}})
    return model.state_dict(), path


def test_same_classes_load_every_tensor(source):
    old, path = source
    model = _model(5, seed=2)
    report = apply_init_from(model, path, OLD)
    assert report.classes_same and not report.reinitialised and not report.kept_init and not report.ignored
    assert all(torch.equal(model.state_dict()[k], v) for k, v in old.items())


def test_other_classes_reinitialise_exactly_the_class_tensors_and_carry_matching_names(source):
    old, path = source
    model = _model(3, seed=2)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = apply_init_from(model, path, NEW)
    new = model.state_dict()
    class_tensors = {k for k in new if class_layout(k) is not None}
    assert class_tensors == {*(f"query_head.cls_branches.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")),
                             "query_head.enc_cls_branch.weight", "query_head.enc_cls_branch.bias",
                             "aux_heads.0.atss_cls.weight", "aux_heads.0.atss_cls.bias",
                             "aux_heads.1.roi_head.fc_cls.weight", "aux_heads.1.roi_head.fc_cls.bias",
                             "aux_heads.1.roi_head.fc_reg.weight", "aux_heads.1.roi_head.fc_reg.bias"}
    assert set(report.carried_over) == class_tensors and set(report.loaded) == set(new) - class_tensors
    assert report.matched_classes == ["ring", "rectangle"] and report.new_classes == ["dog"]
    for k in set(new) - class_tensors:
        assert torch.equal(new[k], old[k]), k
    # new class 0 = "ring" (old 4), new 2 = "rectangle" (old 0), new 1 = "dog": fresh
    w = "query_head.cls_branches.1.weight"
    assert torch.equal(new[w][0], old[w][4]) and torch.equal(new[w][2], old[w][0]) and torch.equal(new[w][1], fresh[w][1])
    reg = "aux_heads.1.roi_head.fc_reg.weight"
    assert torch.equal(new[reg][0:4], old[reg][16:20]) and torch.equal(new[reg][4:8], fresh[reg][4:8])
    cls = "aux_heads.1.roi_head.fc_cls.bias"
    assert new[cls].shape == (4,) and new[cls][-1] == old[cls][-1]      # background row carried
    enc = "query_head.enc_cls_branch.weight"
    assert torch.equal(new[enc][0], old[enc][4]) and torch.equal(new[enc][1], fresh[enc][1])


def test_deployed_checkpoint_leaves_the_aux_heads_initialised_and_wrong_shapes_fail(tmp_path, source):
    old, _ = source
    deployed = {k: v for k, v in old.items() if not k.startswith("aux_heads.")}
    path = tmp_path / "deployed.pt"
    save_checkpoint(path, {"model": deployed, "num_classes": 5, "category_names": OLD, "config": {}})
    model = _model(5, seed=2)
    report = apply_init_from(model, path, OLD)
    assert report.kept_init and all(k.startswith(("aux_heads.", "query_head.aux_pos", "query_head.pos_feats",
                                                  "query_head.head_pos", "query_head.downsample"))
                                    for k in report.kept_init)
    wide = dict(old)
    wide["query_head.level_embeds"] = torch.zeros(4, 64)
    save_checkpoint(path, {"model": wide, "num_classes": 5, "category_names": OLD, "config": {}})
    with pytest.raises(ValueError, match="level_embeds"):
        apply_init_from(_model(5, seed=2), path, OLD)


# ----------------------------------------------------------------------------- query count, feature levels


def _built(overrides: list[str], seed: int, config: str = "experiments/codetr_tiny.yaml"):
    torch.manual_seed(seed)
    return build_model(load_config(config, SMALL + ["model.num_classes=5", *overrides]))


FIVE_LEVELS = ["model.num_levels=5", "model.backbone.out_indices=[0, 1, 2, 3]"]


def _save(tmp_path, model, name="source.pt"):
    path = tmp_path / name
    save_checkpoint(path, {"model": model.state_dict(), "num_classes": 5, "category_names": OLD, "config": {}})
    return path


@pytest.mark.parametrize("new_queries", [20, 5])
def test_another_query_count_copies_the_first_queries(tmp_path, new_queries):
    old = _built([], seed=1).state_dict()                                        # 12 queries
    model = _built([f"model.num_queries={new_queries}"], seed=2)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = apply_init_from(model, _save(tmp_path, _built([], seed=1)), OLD)
    q = "query_head.query_embedding.weight"
    new = model.state_dict()[q]
    count = min(12, new_queries)
    assert new.shape[0] == new_queries and torch.equal(new[:count], old[q][:count])
    assert torch.equal(new[count:], fresh[q][count:])
    assert report.queries == [12, new_queries] and q in report.remapped
    assert f"queries 12 -> {new_queries}" in report.summary()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in old.items() if k != q)


@pytest.mark.parametrize("config", ["experiments/codetr_tiny.yaml", "experiments/codino_tiny.yaml"])
def test_four_to_five_feature_levels_match_by_stride(tmp_path, config):
    source = _built([], seed=1, config=config)                                    # strides 8-64
    old = source.state_dict()
    model = _built(FIVE_LEVELS, seed=2, config=config)                           # strides 4-64
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = apply_init_from(model, _save(tmp_path, source), OLD)
    new = model.state_dict()
    assert report.levels == [4, 5] and "feature levels 4 -> 5" in report.summary()
    # level embeddings: new level 0 (stride 4) fresh, levels 1-4 = old 0-3
    assert torch.equal(new["query_head.level_embeds"][1:], old["query_head.level_embeds"])
    assert torch.equal(new["query_head.level_embeds"][0], fresh["query_head.level_embeds"][0])
    # every deformable attention: [heads, levels, points, 2] rows of the same stride copied
    offsets = "query_head.encoder.layers.0.self_attn.sampling_offsets.weight"
    heads, points = 4, 4
    new_rows = new[offsets].view(heads, 5, points * 2, -1)
    old_rows = old[offsets].view(heads, 4, points * 2, -1)
    assert torch.equal(new_rows[:, 1:], old_rows)
    assert torch.equal(new_rows[:, 0], fresh[offsets].view(heads, 5, points * 2, -1)[:, 0])
    weights = "query_head.decoder.layers.1.cross_attn.attention_weights.bias"
    assert torch.equal(new[weights].view(heads, 5, points)[:, 1:], old[weights].view(heads, 4, points))
    # the neck's C3-C5 convolutions move one index up; C2 (stride 4) starts fresh
    for i in range(3):
        assert torch.equal(new[f"neck.lateral.{i + 1}.weight"], old[f"neck.lateral.{i}.weight"])
    assert "neck.lateral.0.weight" in report.kept_init and torch.equal(new["neck.lateral.0.weight"],
                                                                       fresh["neck.lateral.0.weight"])
    # ATSS's per-level scales: strides 8-128 are its old levels 0-4
    assert torch.equal(new["aux_heads.0.scales.5.scale"], old["aux_heads.0.scales.4.scale"])
    assert "aux_heads.0.scales.0.scale" in report.kept_init
    assert not report.ignored

    back = _built([], seed=3, config=config)                                      # and 5 -> 4 levels
    report = apply_init_from(back, _save(tmp_path, model, "five.pt"), OLD)
    assert report.levels == [5, 4]
    assert torch.equal(back.state_dict()["query_head.level_embeds"], new["query_head.level_embeds"][1:])
    assert torch.equal(back.state_dict()["neck.lateral.0.weight"], new["neck.lateral.1.weight"])
    assert set(report.ignored) == {"neck.lateral.0.weight", "neck.lateral_norm.0.weight", "neck.lateral_norm.0.bias",
                                   "aux_heads.0.scales.0.scale"}


def test_codino_label_embedding_follows_the_class_names(tmp_path):
    source = _built([], seed=1, config="experiments/codino_tiny.yaml")
    torch.manual_seed(2)
    model = build_model(load_config("experiments/codino_tiny.yaml", SMALL + ["model.num_classes=3"]))
    apply_init_from(model, _save(tmp_path, source), NEW)
    old, new = source.state_dict()["query_head.label_embedding.weight"], model.state_dict()["query_head.label_embedding.weight"]
    assert torch.equal(new[0], old[4]) and torch.equal(new[2], old[0])           # ring, rectangle


def test_an_official_file_is_refused_with_the_command_that_converts_it(tmp_path):
    path = tmp_path / "co_dino_5scale_r50_1x_coco.pth"
    torch.save({"state_dict": {"query_head.query_embedding.weight": torch.zeros(2, 2)}, "meta": {"CLASSES": ("a",)}},
               path)
    with pytest.raises(ValueError, match=r"official.*python -m platform\.convert_checkpoint .*co_dino_5scale"):
        apply_init_from(_built([], seed=2), path, OLD)


def test_a_converted_official_checkpoint_starts_another_config(tmp_path):
    """What the fine-tuning recipe does: an official Co-DINO (5 levels, 80 classes) through the converter,
    then init_from into a 4-level model with 3 classes and fewer queries."""
    from codetr.convert import class_names, config_for_official, from_official, to_official

    cfg = load_config("experiments/codino_tiny.yaml", SMALL + FIVE_LEVELS + ["model.num_classes=80",
                                                                            "model.num_queries=30"])
    torch.manual_seed(1)
    official_model = build_model(cfg)
    official_sd, _ = to_official(official_model.state_dict(), cfg)              # an official file's state_dict
    converted_cfg, _ = config_for_official(official_sd, "experiments/codino_tiny.yaml", SMALL)
    converted = build_model(converted_cfg)
    state_dict, report = from_official(official_sd, converted_cfg, converted.state_dict())
    names, _ = class_names({}, converted_cfg.model.num_classes)
    path = tmp_path / "converted.pt"
    save_checkpoint(path, {"model": state_dict, "num_classes": 80, "category_names": names, "config": {}})
    target = build_model(load_config("experiments/codino_tiny.yaml", SMALL + ["model.num_classes=3"]))
    init = apply_init_from(target, path, ["person", "dog", "my_widget"])
    assert init.levels == [5, 4] and init.queries == [30, 12]
    assert init.matched_classes == ["person", "dog"] and init.new_classes == ["my_widget"]
    assert not init.kept_init


def test_codino_two_stage_scorer_has_no_class_agnostic_channel(tmp_path):
    """Deformable-DETR's scorer ranks by channel 0 whatever the classes (carried); Co-DINO's has real classes."""
    source = _built([], seed=1, config="experiments/codino_tiny.yaml")
    torch.manual_seed(2)
    model = build_model(load_config("experiments/codino_tiny.yaml", SMALL + ["model.num_classes=2"]))
    fresh = model.state_dict()["query_head.enc_cls_branch.weight"].clone()
    report = apply_init_from(model, _save(tmp_path, source), ["dog", "cat"])
    assert torch.equal(model.state_dict()["query_head.enc_cls_branch.weight"], fresh)
    assert "query_head.enc_cls_branch.weight" in report.reinitialised
    assert "keep only their class-agnostic rows" in report.summary()           # the RoI background rows
