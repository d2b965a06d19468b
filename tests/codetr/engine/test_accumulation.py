"""Gradient accumulation (``train.accumulate_steps``) is the larger batch, one optimizer step at a time.

The equivalence test runs the real tiny models (both query heads, K = 2: ATSS + Faster R-CNN) in
float64 under torch.distributed (gloo, 2 spawned processes, DDP): 2 workers x 1 image x 2
micro-batches train to the same parameters, losses and gradient norms as 2 workers x 2 images x 1
step on the same images, with the recipe's AdamW, clipping and a warm-up that changes the lr at
every step. Each worker's two micro-batches hold the same image, so that every batch-level rule of
the official algorithm (positive-query slots = the batch's largest positive count, Faster R-CNN's
per-batch candidate truncation, the denoising groups from the batch's largest box count) gives each
image what it gets in the 2-image batch, while the workers hold different images (a missing
all-reduce would show). The settings below make the random draws irrelevant (the two runs draw in
different orders): exhaustive RPN / RoI sampling, no positive-query subsets or negative padding, no
denoising noise. The backbone's BatchNorm is frozen, as in the official recipes: trainable BatchNorm
normalises over each micro-batch, a different batch by design.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import traceback

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from codetr import build_model
from codetr.config import load_config
from codetr.engine import LoopHooks, TrainLoop, build_lr_scheduler, build_optimizer
from codetr.engine.loop import accumulated_step, optimizer_steps_per_epoch, train_step
from tests.codetr.helpers import ToyDetector

CONFIGS = {"deformable_detr": "experiments/codetr_tiny.yaml", "dino": "experiments/codino_tiny.yaml"}
STEPS = 3
NUM_CLASSES = 3
EQUIVALENCE = [
    "model.backbone.norm=frozen_bn", "model.num_encoder_layers=1",
    "model.aux.faster_rcnn.rpn_batch_size=1024", "model.aux.faster_rcnn.roi_batch_size=1024",
    "model.aux.faster_rcnn.rpn_post_nms_top_n=100", "model.max_pos_queries=1000",
    "model.pos_query_padding=masked", "model.dn.label_noise=0.0", "model.dn.box_noise=0.0",
    "train.epochs=1", f"train.warmup_iters={STEPS}", "train.log_every=1", "train.eval_every=0",
]


def _image_and_target(step: int, rank: int) -> tuple[torch.Tensor, dict]:
    g = torch.Generator().manual_seed(100 * step + rank)
    image = torch.rand(3, 64, 64, generator=g, dtype=torch.float64)
    boxes = [[4.0, 6.0, 30.0, 40.0], [28.0, 10.0, 60.0, 34.0], [10.0, 36.0, 50.0, 62.0]][: 2 + rank]
    target = {"boxes": torch.tensor(boxes, dtype=torch.float64), "labels": torch.tensor([0, 2, 1][: 2 + rank]),
              "image_id": 10 * step + rank}
    return image, target


def _loader(rank: int, images_per_batch: int, accumulate_steps: int) -> list:
    """Per step this rank's image, as one batch of ``images_per_batch`` copies or K batches of one copy."""
    out = []
    for step in range(STEPS):
        image, target = _image_and_target(step, rank)
        for _ in range(accumulate_steps):
            out.append(([image] * images_per_batch, [target] * images_per_batch))
    return out


def _count_allreduce(state: dict, bucket):
    state["calls"] += 1
    fut = dist.all_reduce(bucket.buffer().div_(dist.get_world_size()), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def _train(head: str, images_per_batch: int, accumulate_steps: int, rank: int) -> dict:
    cfg = load_config(CONFIGS[head], [*EQUIVALENCE, f"train.accumulate_steps={accumulate_steps}"])
    torch.manual_seed(0)
    model = DistributedDataParallel(build_model(cfg, num_classes=NUM_CLASSES).double())
    comm = {"calls": 0}
    model.register_comm_hook(comm, _count_allreduce)
    loader = _loader(rank, images_per_batch, accumulate_steps)
    steps = optimizer_steps_per_epoch(len(loader), accumulate_steps)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_lr_scheduler(optimizer, cfg.train, steps)
    logs: list = []
    loop = TrainLoop(model, optimizer, scheduler, loader, cfg, device=torch.device("cpu"), iters_per_epoch=steps,
                     hooks=LoopHooks(on_log=logs.append))
    loop.run()
    return {"params": {k: v.detach().clone() for k, v in model.module.named_parameters()},
            "metrics": [(r.iteration, r.metrics["train/loss"], r.metrics["train/grad_norm"], r.metrics["train/lr"])
                        for r in logs],
            "allreduce_calls": comm["calls"], "iterations": loop.iteration}


def _worker(rank: int, world_size: int, folder: str, queue) -> None:
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=world_size)
        out = {head: {"batch": _train(head, 2, 1, rank), "accumulate": _train(head, 1, 2, rank)} for head in CONFIGS}
        dist.destroy_process_group()
        torch.save(out, f"{folder}/rank{rank}.pt")    # tensors through a file: a queue would share them by fd
        queue.put((rank, "ok"))
    except Exception:   # report instead of hanging the test
        queue.put((rank, traceback.format_exc()))


def test_two_micro_batches_of_one_image_equal_one_batch_of_two(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, 2, str(tmp_path), queue)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            rank, status = queue.get(timeout=300)
            assert status == "ok", status
    finally:
        for p in procs:
            p.join(timeout=30)
    results = {rank: torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)}
    for head in CONFIGS:
        batch, accumulate = results[0][head]["batch"], results[0][head]["accumulate"]
        assert batch["iterations"] == accumulate["iterations"] == STEPS
        # one all-reduce of the gradients per optimizer step, not per micro-batch
        assert accumulate["allreduce_calls"] == batch["allreduce_calls"] > 0
        # the same loss (mean of the micro-batches), gradient norm and lr at every step
        for (it_b, loss_b, norm_b, lr_b), (it_a, loss_a, norm_a, lr_a) in zip(batch["metrics"], accumulate["metrics"]):
            assert it_b == it_a and lr_b == lr_a
            assert loss_a == pytest.approx(loss_b, rel=1e-10) and norm_a == pytest.approx(norm_b, rel=1e-10)
        assert len({lr for *_, lr in batch["metrics"]}) == STEPS      # the warm-up moved the lr every step
        for name, value in batch["params"].items():
            # float64 rounding (float32 rounding would be ~1e-7)
            torch.testing.assert_close(accumulate["params"][name], value, rtol=1e-8, atol=1e-10, msg=name)
            # the ranks hold the same parameters: the accumulated gradients were all-reduced
            assert torch.equal(accumulate["params"][name], results[1][head]["accumulate"]["params"][name]), name


# ----------------------------------------------------------------------------- single process


def _toy_batches(n: int, images: int, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        imgs = [torch.rand(3, 16, 16, generator=g) for _ in range(images)]
        targets = [{"boxes": torch.tensor([[0.2, 0.2, 0.6, 0.6]]), "labels": torch.tensor([(i + j) % 3])}
                   for j in range(images)]
        out.append((imgs, targets))
    return out


def test_accumulated_step_sums_gradients_divided_by_k():
    """Two micro-batches: the gradient is the mean of the two batches' gradients, the logged loss their mean."""
    torch.manual_seed(0)
    model = ToyDetector()
    batches = _toy_batches(2, images=2)
    expected = []
    for images, targets in batches:
        model.zero_grad()
        loss = sum(model(images, targets).values())
        loss.backward()
        expected.append((float(loss.detach()), [p.grad.clone() for p in model.parameters()]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    out = accumulated_step(model, batches, optimizer, clip_grad_norm=0.0)
    assert float(out.loss) == pytest.approx((expected[0][0] + expected[1][0]) / 2)
    for p, g0, g1 in zip(model.parameters(), expected[0][1], expected[1][1]):
        torch.testing.assert_close(p.grad, (g0 + g1) / 2)
    total = math.sqrt(sum(float(((g0 + g1) / 2).pow(2).sum()) for g0, g1 in zip(expected[0][1], expected[1][1])))
    assert float(out.grad_norm) == pytest.approx(total, rel=1e-5)


def test_one_micro_batch_is_train_step():
    torch.manual_seed(0)
    a, b = ToyDetector(), ToyDetector()
    b.load_state_dict(a.state_dict())
    (images, targets), = _toy_batches(1, images=3)
    opt_a, opt_b = torch.optim.AdamW(a.parameters(), lr=1e-2), torch.optim.AdamW(b.parameters(), lr=1e-2)
    train_step(a, images, targets, opt_a, clip_grad_norm=0.1)
    accumulated_step(b, [(images, targets)], opt_b, clip_grad_norm=0.1)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def _toy_loop(overrides: list[str], batches: list, logs: list | None = None, **kw) -> TrainLoop:
    cfg = load_config("experiments/codetr_tiny.yaml", ["train.warmup_iters=0", "train.eval_every=0", *overrides])
    torch.manual_seed(0)
    model = ToyDetector()
    optimizer = build_optimizer(model, cfg.train)
    steps = optimizer_steps_per_epoch(len(batches), cfg.train.accumulate_steps)
    scheduler = build_lr_scheduler(optimizer, cfg.train, steps)
    return TrainLoop(model, optimizer, scheduler, batches, cfg, device=torch.device("cpu"), iters_per_epoch=steps,
                     hooks=LoopHooks(on_log=logs.append if logs is not None else None), **kw)


def test_iterations_count_optimizer_steps():
    """7 batches, K = 2: 3 optimizer steps per epoch (the 7th batch unused), the lr steps at epoch 1 of
    optimizer steps, log_every and max_iters in optimizer steps, images per step = K x batch."""
    logs: list = []
    loop = _toy_loop(["train.accumulate_steps=2", "train.epochs=3", "train.lr_steps=[1]", "train.log_every=2",
                      "train.max_iters=5"], _toy_batches(7, images=2), logs)
    seen = []
    loop.model.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))
    loop.run()
    assert loop.iters_per_epoch == 3 and loop.total_iters == 5 and loop.iteration == 5
    assert len(seen) == 10                                        # 5 steps x 2 micro-batches of 2 images
    assert [r.iteration for r in logs] == [2, 4, 5]
    assert [r.epoch for r in logs] == [0, 1, 1]
    assert logs[0].metrics["train/lr"] == pytest.approx(loop.cfg.train.lr)
    assert logs[1].metrics["train/lr"] == pytest.approx(loop.cfg.train.lr * loop.cfg.train.lr_gamma)
    assert logs[0].metrics["train/epoch"] == pytest.approx(2 / 3)


def test_iters_per_epoch_must_count_optimizer_steps():
    cfg = load_config("experiments/codetr_tiny.yaml", ["train.accumulate_steps=2"])
    model = ToyDetector()
    optimizer = build_optimizer(model, cfg.train)
    with pytest.raises(ValueError, match="optimizer steps"):
        TrainLoop(model, optimizer, build_lr_scheduler(optimizer, cfg.train, 6), _toy_batches(6, 1), cfg,
                  device=torch.device("cpu"), iters_per_epoch=6)


def test_resume_with_accumulation_matches_the_uninterrupted_run():
    batches = _toy_batches(6, images=1)
    full = _toy_loop(["train.accumulate_steps=2", "train.epochs=3", "train.lr_steps=[2]"], batches)
    full.run()
    saved = []
    first = _toy_loop(["train.accumulate_steps=2", "train.epochs=3", "train.lr_steps=[2]", "train.max_iters=6"],
                      batches)
    first.hooks.on_epoch_end = lambda r: saved.append(first.state_dict()) if r.epoch == 2 else None
    first.run()
    ckpt = saved[-1]
    assert ckpt["iteration"] == 6 and ckpt["epoch"] == 2
    resumed = _toy_loop(["train.accumulate_steps=2", "train.epochs=3", "train.lr_steps=[2]"], batches,
                        start_epoch=ckpt["epoch"], start_iteration=ckpt["iteration"])
    resumed.model.load_state_dict(ckpt["model"])
    resumed.optimizer.load_state_dict(ckpt["optimizer"])
    resumed.scheduler.load_state_dict(ckpt["scheduler"])
    resumed.run()
    assert resumed.iteration == full.iteration == 9
    for name, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
