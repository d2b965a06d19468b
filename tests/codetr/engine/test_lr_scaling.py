"""``train.scale_lr`` against ``train.reference_batch``: the effective batch, the lr used and the start-up note."""
from __future__ import annotations

import math

import pytest

from codetr.config import ConfigError, load_config
from codetr.engine import build_optimizer, lr_scaling
from tests.codetr.helpers import ToyDetector


def _train(*overrides: str):
    return load_config(None, ["train.lr=2e-4", "train.reference_batch=16", *overrides]).train


def test_linear_and_sqrt_rules_scale_by_the_effective_batch():
    one_gpu = lr_scaling(_train("train.scale_lr=linear"), world_size=1, batch_size=2)
    assert one_gpu.effective_batch == 2 and one_gpu.lr == pytest.approx(2e-4 / 8)
    sqrt = lr_scaling(_train("train.scale_lr=sqrt"), world_size=1, batch_size=2)
    assert sqrt.lr == pytest.approx(2e-4 / math.sqrt(8))
    # accumulation counts: 2 workers x 2 images x 4 steps = the recipe's 16, nothing scaled
    same = lr_scaling(_train("train.scale_lr=linear", "train.accumulate_steps=4"), world_size=2, batch_size=2)
    assert same.effective_batch == 16 and same.lr == 2e-4 and not same.differs and same.note() == ""


def test_none_keeps_the_lr_and_the_note_says_what_would_match():
    scaling = lr_scaling(_train(), world_size=2, batch_size=2)
    assert scaling.lr == 2e-4 and scaling.differs
    assert scaling.note() == ("effective batch 4 (2 worker(s) x 2 image(s) x 1 accumulation step(s)) differs from the "
                              "recipe's 16: lr kept at 0.0002 (train.scale_lr=none; linear or sqrt scales it; "
                              "train.accumulate_steps=4 gives the recipe's batch)")
    linear = lr_scaling(_train("train.scale_lr=linear"), world_size=2, batch_size=2)
    assert linear.note().endswith(": lr 0.0002 -> 5e-05 (train.scale_lr=linear: x 0.25)")


def test_no_reference_batch_means_no_note_and_scale_lr_needs_one():
    scaling = lr_scaling(load_config(None).train, world_size=3, batch_size=5)
    assert scaling.effective_batch == 15 and not scaling.differs and scaling.note() == ""
    with pytest.raises(ConfigError, match=r"train\.scale_lr.*train\.reference_batch"):
        load_config(None, ["train.scale_lr=linear"])
    with pytest.raises(ConfigError, match=r"train\.accumulate_steps"):
        load_config(None, ["train.accumulate_steps=0"])


def test_optimizer_groups_get_the_scaled_lr():
    cfg = _train("train.scale_lr=linear", "train.lr_mult_value=0.1")
    optimizer = build_optimizer(ToyDetector(), cfg, lr=lr_scaling(cfg, world_size=1, batch_size=4).lr)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["base"] == pytest.approx(5e-5) and lrs["lr_mult"] == pytest.approx(5e-6)


def test_the_official_recipes_name_their_batch():
    for name in ("codetr_r50_coco", "codino_r50_coco", "codetr_swin_t_coco", "codetr_swin_l_coco"):
        cfg = load_config(f"experiments/{name}.yaml")
        assert cfg.train.reference_batch == 16
        assert cfg.platform.num_workers * cfg.data.batch_size * cfg.train.accumulate_steps == 16
