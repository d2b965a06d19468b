"""The pure-PyTorch engine: parameter groups, lr schedule, checkpoints, train step, the loop."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from codetr.config import load_config
from codetr.engine import (CHECKPOINT_FILE, LoopHooks, LossWindow, TrainLoop, build_lr_scheduler, build_optimizer,
                           build_param_groups, capture_rng_state, load_checkpoint, lr_factor, restore_rng_state,
                           save_checkpoint, train_step)
from codetr.engine.loop import StepOutput
from tests.codetr.helpers import ToyDetector


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, 16, 16, generator=g) for _ in range(n)]
    targets = [{"boxes": torch.tensor([[0.2, 0.2, 0.6, 0.6]]), "labels": torch.tensor([i % 3])} for i in range(n)]
    return images, targets


class FakeEvaluator:
    def __init__(self):
        self.images = 0

    def update(self, predictions, targets):
        assert len(predictions) == len(targets)
        self.images += len(predictions)

    def synchronize(self):
        pass

    def summarize(self):
        print("COCOEVAL TABLE")
        self.summary_text = "COCOEVAL TABLE"
        return {"coco/AP": 0.1 * self.images, "coco/AP50": 0.5}


@pytest.fixture
def cfg():
    return load_config("experiments/codetr_tiny.yaml",
                       ["train.lr_mult_value=0.1", "train.log_every=2", "train.epochs=3", "train.eval_every=2",
                        "train.lr_steps=[2]", "train.warmup_iters=2"])


def test_param_groups_apply_lr_multiplier_by_name():
    model = ToyDetector()
    groups = build_param_groups(model, lr=1e-3, weight_decay=1e-4, mult_keys=["backbone", "sampling_offsets"],
                                mult_value=0.1)
    by_name = {g["name"]: g for g in groups}
    assert by_name["lr_mult"]["lr"] == pytest.approx(1e-4)
    assert by_name["base"]["lr"] == pytest.approx(1e-3)
    mult_ids = {id(p) for p in by_name["lr_mult"]["params"]}
    assert mult_ids == {id(p) for n, p in model.named_parameters() if "backbone" in n or "sampling_offsets" in n}
    assert len(by_name["base"]["params"]) == 2   # head weight + bias


def test_frozen_parameters_are_left_out():
    model = ToyDetector()
    model.backbone.weight.requires_grad_(False)
    groups = build_param_groups(model, 1e-3, 0.0, ["backbone"], 0.1)
    assert all(p is not model.backbone.weight for g in groups for p in g["params"])


def test_lr_factor_warmup_then_steps():
    kw = dict(warmup_iters=10, warmup_ratio=0.001, step_iters=[100, 150], gamma=0.1)
    assert lr_factor(0, **kw) == pytest.approx(0.001)
    assert lr_factor(5, **kw) == pytest.approx(0.001 + 0.999 * 0.5)
    assert lr_factor(10, **kw) == pytest.approx(1.0)
    assert lr_factor(99, **kw) == pytest.approx(1.0)
    assert lr_factor(100, **kw) == pytest.approx(0.1)
    assert lr_factor(150, **kw) == pytest.approx(0.01)


def test_scheduler_steps_at_epoch_boundaries(cfg):
    model = ToyDetector()
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_lr_scheduler(optimizer, cfg.train, iters_per_epoch=5)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(cfg.train.lr * cfg.train.warmup_ratio)
    assert lrs[2] == pytest.approx(cfg.train.lr)
    assert lrs[9] == pytest.approx(cfg.train.lr)
    assert lrs[10] == pytest.approx(cfg.train.lr * cfg.train.lr_gamma)   # lr_steps=[2] x 5 iterations


def test_checkpoint_roundtrip_and_rng(tmp_path):
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    state = capture_rng_state()
    expected = (torch.rand(3), random.random(), np.random.rand())
    path = save_checkpoint(tmp_path / "c" / CHECKPOINT_FILE, {"iteration": 7, "rng_states": [state]})
    assert not [p for p in path.parent.iterdir() if p.name != CHECKPOINT_FILE]   # no temp files left
    loaded = load_checkpoint(path.parent)
    assert loaded["iteration"] == 7
    restore_rng_state(loaded["rng_states"][0])
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / CHECKPOINT_FILE, {"iteration": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"iteration": 2, "bad": Unpicklable()})
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]


def test_load_rejects_foreign_files(tmp_path):
    torch.save({"model": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a codetr-checkpoint"):
        load_checkpoint(tmp_path / "x.pt")


def test_train_step_learns_and_clips(cfg):
    torch.manual_seed(0)
    model = ToyDetector()
    optimizer = build_optimizer(model, cfg.train)
    for group in optimizer.param_groups:
        group["lr"] = 1e-2
    images, targets = _batch()
    first = train_step(model, images, targets, optimizer, clip_grad_norm=1.0)
    for _ in range(30):
        last = train_step(model, images, targets, optimizer, clip_grad_norm=1.0)
    assert last.loss < first.loss
    assert first.loss == pytest.approx(sum(first.weighted.values()).item(), rel=1e-6)
    assert set(first.unweighted) == set(first.weighted)


def test_loss_window_names_and_head_totals():
    window = LossWindow()
    for scale in (1.0, 3.0):
        weighted = {"query/loss_cls": torch.tensor(1.0 * scale), "query/d0.loss_bbox": torch.tensor(2.0 * scale),
                    "atss/pos.loss_cls": torch.tensor(4.0 * scale)}
        out = StepOutput(torch.tensor(7.0 * scale), weighted, {k: v / 2 for k, v in weighted.items()},
                         torch.tensor(0.5))
        window.add(out, num_images=2)
    metrics = window.flush()
    assert metrics["train/loss"] == pytest.approx(14.0)
    assert metrics["train/query/loss_cls"] == pytest.approx(2.0)
    assert metrics["train/atss/pos.loss_cls"] == pytest.approx(8.0)
    assert metrics["train/query/total"] == pytest.approx(6.0)
    assert metrics["train/atss/total"] == pytest.approx(8.0)
    assert metrics["train_unweighted/query/d0.loss_bbox"] == pytest.approx(2.0)
    assert metrics["train/grad_norm"] == pytest.approx(0.5)
    assert window.flush() == {}


def _loop(cfg, tmp_path, reports, logs, **kw):
    torch.manual_seed(0)
    model = ToyDetector()
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_lr_scheduler(optimizer, cfg.train, iters_per_epoch=3)
    batches = [_batch(2, seed=i) for i in range(3)]
    loop = TrainLoop(model, optimizer, scheduler, batches, cfg, device=torch.device("cpu"), iters_per_epoch=3,
                     val_loader=[_batch(2, seed=9)], make_evaluator=FakeEvaluator,
                     hooks=LoopHooks(on_log=logs.append, on_epoch_end=reports.append),
                     checkpoint_extra={"num_classes": 3}, scratch_dir=tmp_path, num_samples=1, **kw)
    return loop, model, optimizer, scheduler


def test_train_loop_schedule_hooks_and_checkpoints(cfg, tmp_path, capsys):
    reports, logs, saved = [], [], []

    def keep(report):
        reports.append(report)
        if report.checkpoint_dir:
            saved.append(load_checkpoint(report.checkpoint_dir))

    loop, *_ = _loop(cfg, tmp_path, [], logs)
    loop.hooks.on_epoch_end = keep
    metrics = loop.run()
    assert [r.epoch for r in reports] == [1, 2, 3]
    assert [r.iteration for r in reports] == [3, 6, 9]
    assert [r.evaluated for r in reports] == [False, True, True]   # eval_every=2, and at the end
    assert reports[-1].finished and len(reports[-1].samples) == 1
    assert reports[-1].eval_summary == "COCOEVAL TABLE" and "COCOEVAL" not in capsys.readouterr().out
    assert reports[1].is_best and not reports[2].is_best            # same fake AP both times
    assert [s["iteration"] for s in saved] == [3, 6, 9]
    assert saved[-1]["num_classes"] == 3 and saved[-1]["config"]["train"]["epochs"] == 3
    assert saved[-1]["best"]["value"] == pytest.approx(0.2)
    assert [r.iteration for r in logs] == [2, 4, 6, 8, 9]         # every log_every=2, plus the last
    assert "train/query/total" in metrics and "coco/AP" in metrics and "train/lr" in metrics
    # where the iterations' time went, per window (the log hook's own time shows from the second window)
    assert {"time/data_s", "time/forward_s", "time/backward_s", "time/optimizer_s"} <= set(logs[0].metrics)
    assert "time/log_s" in logs[1].metrics and all(v >= 0 for v in logs[1].metrics.values() if v is not None)
    assert sum(logs[0].metrics[f"time/{p}_s"] for p in ("data", "forward", "backward", "optimizer")) \
        <= logs[0].metrics["train/iter_time"] * 1.05 + 1e-3
    assert "time/eval_s" in reports[1].metrics and "time/checkpoint_s" in reports[0].metrics
    assert not list(tmp_path.iterdir())                            # scratch checkpoints cleaned up


def test_train_loop_resume_matches_uninterrupted_run(cfg, tmp_path):
    full, *_ = _loop(cfg, tmp_path, [], [])
    full.run()
    reference = {k: v.clone() for k, v in full.model.state_dict().items()}

    stopped_cfg = load_config("experiments/codetr_tiny.yaml",
                              ["train.lr_mult_value=0.1", "train.log_every=2", "train.epochs=3", "train.eval_every=2",
                               "train.lr_steps=[2]", "train.warmup_iters=2", "train.max_iters=6"])
    saved = []
    first, *_ = _loop(stopped_cfg, tmp_path, [], [])
    first.hooks.on_epoch_end = lambda r: r.checkpoint_dir and saved.append(load_checkpoint(r.checkpoint_dir))
    first.run()
    ckpt = saved[-1]
    assert ckpt["iteration"] == 6

    resumed, model, optimizer, scheduler = _loop(cfg, tmp_path, [], [], start_epoch=ckpt["epoch"],
                                                 start_iteration=ckpt["iteration"])
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    resumed.run()
    assert resumed.iteration == 9
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, reference[k])
