"""``train.amp``: none (bitwise the float32 step as it was), bf16 and fp16 autocast (CPU autocast here), the
fp16 loss scaler that skips overflowing steps, and the parts of the model kept in full precision."""
from __future__ import annotations

import math

import pytest
import torch

from codetr import build_model
from codetr.config import ConfigError, load_config
from codetr.engine import (LoopHooks, TrainLoop, amp_mode, autocast_context, build_lr_scheduler, build_optimizer,
                           make_grad_scaler)
from codetr.models.query_heads.deformable_detr import QueryHead
from codetr.models.query_heads.dino import DINOQueryHead
from tests.codetr.helpers import ToyDetector

CONFIGS = {"deformable_detr": "experiments/codetr_tiny.yaml", "dino": "experiments/codino_tiny.yaml"}
SMALL = ["model.num_classes=3", "model.num_encoder_layers=1", "train.warmup_iters=0", "train.eval_every=0",
         "train.log_every=1", "train.epochs=1"]


def _batches(n: int, images: int = 2, size: int = 64, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        imgs = [torch.rand(3, size, size, generator=g) for _ in range(images)]
        targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [28.0, 10.0, 60.0, 34.0]]),
                    "labels": torch.tensor([(i + j) % 3, 2]), "image_id": 10 * i + j} for j in range(images)]
        out.append((imgs, targets))
    return out


def _loop(cfg, model, batches, logs=None, **kw) -> TrainLoop:
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_lr_scheduler(optimizer, cfg.train, len(batches))
    return TrainLoop(model, optimizer, scheduler, batches, cfg, device=torch.device("cpu"),
                     iters_per_epoch=len(batches), hooks=LoopHooks(on_log=logs.append if logs is not None else None),
                     **kw)


def test_amp_values_and_the_boolean_aliases():
    assert load_config(None, ["train.amp=true"]).train.amp == "bf16"
    assert load_config(None, ["train.amp=false"]).train.amp == "none"
    assert load_config(None, ["train.amp=fp16"]).train.amp == "fp16"
    assert load_config(None).train.amp == "none"
    with pytest.raises(ConfigError, match=r"train\.amp.*'none', 'bf16', 'fp16'"):
        load_config(None, ["train.amp=fp32"])
    assert (amp_mode(True), amp_mode(False), amp_mode("fp16")) == ("bf16", "none", "fp16")


def test_autocast_and_scaler_per_mode():
    cpu = torch.device("cpu")
    with autocast_context(cpu, "none"):
        assert not torch.is_autocast_enabled("cpu")
    for mode, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), (True, torch.bfloat16)):
        with autocast_context(cpu, mode):
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == dtype
    assert make_grad_scaler("none", cpu) is None and make_grad_scaler("bf16", cpu) is None
    assert make_grad_scaler("fp16", cpu).get_scale() == 512.0


def _previous_train_step(model, images, targets, optimizer, clip_grad_norm):
    """The float32 train step before train.amp had modes and accumulation (kept here as the reference)."""
    weighted, _ = model(images, targets, return_unweighted=True)
    loss = torch.stack([v.float() for v in weighted.values()]).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(params, clip_grad_norm if clip_grad_norm > 0 else math.inf)
    optimizer.step()


def test_none_is_bitwise_the_previous_float32_step():
    cfg = load_config(CONFIGS["deformable_detr"], [*SMALL, "train.amp=none", "train.clip_grad_norm=0.1"])
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=3)
    reference = build_model(cfg, num_classes=3)
    reference.load_state_dict(model.state_dict())
    batches = _batches(2)
    rng = torch.get_rng_state()
    _loop(cfg, model, batches).run()
    optimizer = build_optimizer(reference, cfg.train)
    scheduler = build_lr_scheduler(optimizer, cfg.train, len(batches))
    torch.set_rng_state(rng)      # the same random draws (Faster R-CNN sampling) as the loop's run
    reference.train()
    for images, targets in batches:
        _previous_train_step(reference, images, targets, optimizer, cfg.train.clip_grad_norm)
        scheduler.step()
    for (name, value), ref in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(value, ref), name


@pytest.mark.parametrize("head", list(CONFIGS))
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_builds_and_steps(head, amp):
    """Two steps under CPU autocast: finite losses, the parameters move; inside, the projections run in
    half precision while the query head's boxes and every loss stay float32.

    bf16 on 128 px images (fp16, slower on a CPU, on 64 px): torch's CPU bf16 convolution backward (oneDNN, torch 2.14) gives sporadic non-finite
    weight gradients for a stride-2 convolution of a 1 x 1 input (2 to 217 of 300 tries here; none
    with 2 x 2, with fp16, or with oneDNN off), which the query head's stride-128 downsample of a 64 px
    image is."""
    cfg = load_config(CONFIGS[head], [*SMALL, f"train.amp={amp}"])
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=3)
    before = {k: v.clone() for k, v in model.named_parameters()}
    seen = {}
    head_cls = DINOQueryHead if head == "dino" else QueryHead
    assert isinstance(model.query_head, head_cls)
    model.query_head.register_forward_hook(
        lambda m, args, out: seen.update(boxes=out.boxes_cxcywh_norm.dtype, enc=out.enc_boxes_cxcywh_norm.dtype))
    linear = next(m for m in model.query_head.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda m, args, out: seen.update(linear=out.dtype))
    logs = []
    loop = _loop(cfg, model, _batches(2, size=128 if amp == "bf16" else 64), logs)
    loop.run()
    assert seen["linear"] == (torch.bfloat16 if amp == "bf16" else torch.float16)
    assert seen["boxes"] == seen["enc"] == torch.float32
    assert loop.iteration == 2 and all(math.isfinite(r.metrics["train/loss"]) for r in logs)
    moved = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert len(moved) > 0.5 * len(before)
    assert all(torch.isfinite(v).all() for v in model.parameters())
    if amp == "fp16":
        assert logs[-1].metrics["train/loss_scale"] == 512.0 or logs[-1].metrics["train/overflow_steps"] > 0
        state = loop.state_dict()
        assert state["scaler"]["scale"] == loop.scaler.get_scale()
    else:
        assert "train/loss_scale" not in logs[-1].metrics


def test_fp16_skips_overflowing_steps_and_lowers_the_scale():
    """A loss scale so large that the scaled gradients overflow: the step is skipped (no error even with
    on_nonfinite=error: the loss itself is finite), the parameters stay, the scale halves; the next
    steps at a sane scale train, and a resumed loop gets the scaler's state back."""
    cfg = load_config("experiments/codetr_tiny.yaml", ["train.amp=fp16", "train.warmup_iters=0", "train.eval_every=0",
                                                       "train.log_every=1", "train.epochs=1",
                                                       "train.on_nonfinite=error"])
    torch.manual_seed(0)
    model = ToyDetector()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scaler_state = make_grad_scaler("fp16", torch.device("cpu")).state_dict()
    logs = []
    loop = _loop(cfg, model, _batches(1, images=2, size=16), logs, scaler_state={**scaler_state, "scale": 3.0e38})
    loop.run()
    assert loop.overflow_steps == 1 and loop.guard.skipped == 0
    assert logs[-1].metrics["train/overflow_steps"] == 1.0
    assert logs[-1].metrics["train/loss_scale"] == pytest.approx(1.5e38)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    state = loop.state_dict()
    assert state["overflow_steps"] == 1 and state["scaler"]["scale"] == pytest.approx(1.5e38)

    logs.clear()
    sane = _loop(cfg, model, _batches(3, images=2, size=16), logs, scaler_state=scaler_state,
                 overflow_steps=state["overflow_steps"])
    sane.run()
    assert sane.overflow_steps == 1 and logs[-1].metrics["train/loss_scale"] == 512.0
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
