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
