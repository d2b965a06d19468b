import pytest

from codetr import load_config
from codetr.config import ConfigError, flatten, has_key, to_dict
from codetr.config.schema import Config


def test_experiment_configs_load():
    r50 = load_config("experiments/codetr_r50_coco.yaml")
    assert r50.model.backbone.depth == 50 and r50.model.num_queries == 300
    assert r50.train.lr == 2e-4 and r50.train.clip_grad_norm == 0.1 and r50.train.lr_steps == [11]
    tiny = load_config("experiments/codetr_tiny.yaml")
    assert tiny.data.dataset == "synthetic" and tiny.model.backbone.pretrained is False


def test_overrides_parse_yaml_values():
    cfg = load_config("experiments/codetr_tiny.yaml",
                      ["model.lambda1=0.5", "model.aux_heads=[atss, atss]", "train.lr=1e-3", "model.num_queries=7"])
    assert cfg.model.lambda1 == 0.5 and cfg.model.aux_heads == ["atss", "atss"]
    assert cfg.train.lr == 1e-3 and cfg.model.num_queries == 7


def test_unknown_key_names_itself_and_the_closest_valid_key():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.num_querys=10"])
    msg = str(e.value)
    assert "model.num_querys" in msg and "num_queries" in msg and "did you mean" in msg
    assert "embed_dims" in msg  # lists the valid keys


def test_wrong_type_and_range_name_the_key():
    with pytest.raises(ConfigError, match=r"model\.num_queries: expected an integer"):
        load_config(None, ["model.num_queries=many"])
    with pytest.raises(ConfigError, match=r"model\.lambda2: must be >= 0"):
        load_config(None, ["model.lambda2=-1"])
    with pytest.raises(ConfigError, match=r"model\.aux_heads\[1\]: unknown auxiliary head 'yolo'"):
        load_config(None, ["model.aux_heads=[atss, yolo]"])
    with pytest.raises(ConfigError, match=r"model\.backbone\.depth"):
        load_config(None, ["model.backbone.depth=42"])
    with pytest.raises(ConfigError, match=r"model\.msda_impl: 'cuda' is not one of \['auto', 'pytorch', 'triton'\]"):
        load_config(None, ["model.msda_impl=cuda"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["model.lambda1"])


def test_base_inheritance_and_round_trip(tmp_path):
    (tmp_path / "base.yaml").write_text("model:\n  num_queries: 11\n  lambda1: 0.25\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nmodel:\n  lambda1: 2.0\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.model.num_queries == 11 and cfg.model.lambda1 == 2.0
    flat = flatten(to_dict(cfg))
    assert flat["model.num_queries"] == 11 and flat["model.backbone.depth"] == 50
    assert has_key(Config, "model.aux.atss.topk") and not has_key(Config, "model.nope")
    (tmp_path / "loop.yaml").write_text("_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "loop.yaml")


def test_a_path_of_a_dataset_that_is_not_selected_is_an_error():
    with pytest.raises(ConfigError, match=r"data.train.ann_file.*data.dataset"):
        load_config("experiments/codetr_tiny.yaml", ["data.train.ann_file=my/instances_train.json"])
    with pytest.raises(ConfigError, match=r"data.val.img_dir.*data.dataset=coco"):
        load_config(None, ["data.dataset=synthetic", "data.val.img_dir=images/val"])
    cfg = load_config("experiments/codetr_tiny.yaml", ["data.dataset=coco", "data.train.ann_file=a.json",
                                                       "data.train.img_dir=a", "data.val.ann_file=b.json",
                                                       "data.val.img_dir=b"])
    assert cfg.data.train.ann_file == "a.json"


def test_official_run_settings_are_the_defaults():
    r50 = load_config("experiments/codetr_r50_coco.yaml")
    assert r50.train.amp == "none" and r50.data.eval_batch_size == 1 and r50.data.group_by_aspect_ratio
    m = r50.model
    assert m.with_coord_feat and m.pos_query_padding == "negatives" and m.neck_norm == "group_norm"
    assert m.max_pos_queries == 300 and m.aux_heads == ["faster_rcnn", "atss"] and m.init_from is None
