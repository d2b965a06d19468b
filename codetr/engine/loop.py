"""The per-worker training loop: pure PyTorch, reporting through hooks the host passes in.

One call of :meth:`TrainLoop.run` trains from ``start_iteration`` to the end of the
schedule (``train.epochs`` x iterations per epoch, capped at ``train.max_iters``), evaluates
every ``train.eval_every`` epochs and at the end, and writes a checkpoint every
``train.checkpoint_every`` epochs and at the end. Under torch.distributed every rank runs
the same loop; only rank 0 sees evaluation metrics and writes checkpoints.

Metric names (the one place they are made):

    train/loss                  the objective: sum of the weighted loss terms
    train/<head>/<term>         each weighted term as the model names it, e.g. train/query/d0.loss_bbox
    train/<head>/total          per-head sum of its weighted terms (head = the part before the first "/")
    train_unweighted/<head>/<term>  the same terms before any weight
    train/lr, train/lr_mult     lr of the base group and of the lr-multiplied group
    train/grad_norm             total gradient norm before clipping
    train/iter_time             seconds per iteration;  train/images_per_s: all workers together
    train/skipped_steps         steps dropped so far for a non-finite loss (train.on_nonfinite=skip)
    train/loss_scale            train.amp=fp16: the dynamic loss scale at the end of the window
    train/overflow_steps        train.amp=fp16: steps skipped so far because their gradients overflowed
    train/iter_cpu_time         CPU seconds of this process per iteration (the wall time it would take
                                on a core of its own: on a shared machine, iter_time / iter_cpu_time
                                shows the contention)
    assign/<head>/pos_per_gt    an auxiliary head's positives per gt box; .../gt_without_pos: the share of
                                gt boxes with none; .../pos_queries_per_image: positive queries it feeds
                                the decoder; assign/query/matched_per_image: one-to-one matches per image
    coco/*                      the evaluator's metrics (branch/<head>/coco/*, diag/*: see codetr.evaluation.suite)

Losses are averaged over the last ``train.log_every`` iterations of rank 0; the values are
accumulated on the device and read back once per window (no per-iteration host sync).

Gradient accumulation (``train.accumulate_steps`` = K): an iteration is one optimizer step over K
consecutive batches of the loader (micro-batches). Each micro-batch's loss is normalised as an
official multi-GPU step normalises it (every count averaged over the workers, see
:mod:`codetr.models.losses`) and divided by K; the gradients add up, DDP all-reduces them once, on
the last micro-batch (``no_sync`` before), then clipping, the optimizer and the lr schedule act once.
Iterations, ``train.max_iters``, ``train.warmup_iters``, ``train.log_every`` and the lr steps count
optimizer steps (as the official iterations do); an epoch is ``len(loader) // K`` of them (a
remainder of fewer than K batches is not used). W workers x B images x K steps equal W x (B K)
images x 1 step when every micro-batch holds the same number of boxes and positives; otherwise a
box of a sparse micro-batch weighs a little more (the mmcv ``GradientCumulativeOptimizerHook``
convention: each count is only known inside its own forward pass). Trainable BatchNorm normalises
over each micro-batch, not over the effective batch (``model.backbone.norm: frozen_bn``, the
official setting, has no batch statistics).
"""
from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from codetr.engine.checkpoint import CHECKPOINT_FILE, capture_rng_state, save_checkpoint, unwrap_model
from codetr.engine.dist import all_gather_objects, get_rank, get_world_size
from codetr.engine.evaluate import EvalSample, evaluate
from codetr.engine.nonfinite import DIVERGED_HINT, NonFiniteGuard
from codetr.engine.phases import PhaseClock, no_clock
from codetr.engine.precision import autocast_context, make_grad_scaler
from codetr.errors import NonFiniteCostError
from codetr.models.precision import upcast

BEST_METRIC = "coco/AP"     # unless the evaluator names its own primary metric (LVIS: lvis/AP)


MicroBatch = tuple[list[torch.Tensor], list[dict]]   # (images, targets) of one loader batch


@dataclass
class StepOutput:
    loss: torch.Tensor                  # scalar objective (detached), mean over the micro-batches
    weighted: dict[str, torch.Tensor]   # named weighted terms (detached scalars), mean over the micro-batches
    unweighted: dict[str, torch.Tensor]
    grad_norm: torch.Tensor             # total norm before clipping (unscaled under fp16)
    applied: bool = True                # False: the update was skipped (non-finite loss or gradient, fp16 overflow)
    overflow: bool = False              # train.amp=fp16: skipped because the scaled gradients overflowed
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # the model's train_stats (assign/*), mean over micro-batches


def optimizer_steps_per_epoch(num_batches: int, accumulate_steps: int) -> int:
    """Iterations (optimizer steps) in an epoch of ``num_batches`` loader batches: ``num_batches // K``."""
    return num_batches // accumulate_steps


def train_step(model: nn.Module, images: list[torch.Tensor], targets: list[dict], optimizer: torch.optim.Optimizer,
               *, clip_grad_norm: float, amp: str | bool = "none", scaler: torch.amp.GradScaler | None = None,
               allow_step: Callable[[torch.Tensor, dict, torch.Tensor], bool] | None = None) -> StepOutput:
    """One optimisation step on one batch: :func:`accumulated_step` with a single micro-batch."""
    return accumulated_step(model, [(images, targets)], optimizer, clip_grad_norm=clip_grad_norm, amp=amp,
                            scaler=scaler, allow_step=allow_step)


def accumulated_step(model: nn.Module, micro_batches: list[MicroBatch], optimizer: torch.optim.Optimizer, *,
                     clip_grad_norm: float, amp: str | bool = "none", scaler: torch.amp.GradScaler | None = None,
                     allow_step: Callable[[torch.Tensor, dict, torch.Tensor], bool] | None = None,
                     device: torch.device | None = None, clock: Callable = no_clock) -> StepOutput:
    """One optimisation step over K micro-batches: forward and backward of each (loss / K), then
    grad-norm clipping (``clip_grad_norm`` 0: none) and one ``optimizer.step()``.

    ``model(images, targets, return_unweighted=True)`` must return two dicts of scalar tensors
    (weighted and unweighted named losses); their weighted sum is the objective. A DDP model
    synchronises its gradients on the last micro-batch only. ``device``: where each micro-batch is
    moved just before its forward pass (None: where it is). ``scaler`` (fp16): the loss is scaled
    for the backward pass and the gradients unscaled before clipping; a step with inf / nan
    gradients is skipped (``overflow``) and the scale lowered. ``allow_step(loss, weighted,
    grad_norm)``, when given, runs before ``optimizer.step()``: False skips the update (see
    :mod:`codetr.engine.nonfinite`); under fp16 it sees the loss only (overflowing gradients are the
    scaler's to handle). ``clock(phase)``: a context manager timing the forward / backward / optimizer
    phases (:class:`codetr.engine.phases.PhaseClock`).
    """
    k = len(micro_batches)
    if k == 0:
        raise ValueError("accumulated_step needs at least one micro-batch")
    ddp = isinstance(model, DistributedDataParallel)
    optimizer.zero_grad(set_to_none=True)
    loss_sum: torch.Tensor | None = None
    weighted_sum: dict[str, torch.Tensor] = {}
    unweighted_sum: dict[str, torch.Tensor] = {}
    stats_sum: dict[str, torch.Tensor] = {}
    for i, (images, targets) in enumerate(micro_batches):
        if device is not None:
            images, targets = _to_device(images, targets, device)
        sync = not ddp or i == k - 1
        with contextlib.nullcontext() if sync else model.no_sync():
            with clock("forward"), autocast_context(images[0].device, amp):
                weighted, unweighted = model(images, targets, return_unweighted=True)
            loss = torch.stack([upcast(v) for v in weighted.values()]).sum()
            objective = loss / k if k > 1 else loss
            with clock("backward"):
                (scaler.scale(objective) if scaler is not None else objective).backward()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        # statistics the model kept of this forward pass (CoDETR.train_stats: the assignment counts)
        stats = getattr(unwrap_model(model), "train_stats", None) or {}
        for sums, terms in ((weighted_sum, weighted), (unweighted_sum, unweighted), (stats_sum, stats)):
            for name, value in terms.items():
                sums[name] = value.detach() if name not in sums else sums[name] + value.detach()
    if k > 1:
        loss_sum = loss_sum / k
        weighted_sum = {name: v / k for name, v in weighted_sum.items()}
        unweighted_sum = {name: v / k for name, v in unweighted_sum.items()}
        stats_sum = {name: v / k for name, v in stats_sum.items()}
    with clock("optimizer"):
        out = _apply_step(optimizer, loss_sum, weighted_sum, unweighted_sum, clip_grad_norm=clip_grad_norm,
                          scaler=scaler, allow_step=allow_step)
    out.stats = stats_sum
    return out


def _apply_step(optimizer: torch.optim.Optimizer, loss_sum: torch.Tensor, weighted_sum: dict[str, torch.Tensor],
                unweighted_sum: dict[str, torch.Tensor], *, clip_grad_norm: float,
                scaler: torch.amp.GradScaler | None,
                allow_step: Callable[[torch.Tensor, dict, torch.Tensor], bool] | None) -> StepOutput:
    """Unscale (fp16), clip, ask ``allow_step`` and step the optimizer on the accumulated gradients."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    max_norm = clip_grad_norm if clip_grad_norm > 0 else math.inf
    grad_norm = (torch.nn.utils.clip_grad_norm_(params, max_norm) if params
                 else torch.zeros((), device=loss_sum.device))
    guard_norm = torch.zeros_like(grad_norm) if scaler is not None else grad_norm.detach()
    applied = allow_step is None or allow_step(loss_sum, weighted_sum, guard_norm)
    overflow = False
    if scaler is not None:
        overflow = applied and not bool(torch.isfinite(grad_norm))
        if applied:
            scaler.step(optimizer)          # skips the update itself when the gradients overflowed
        scaler.update()
        applied = applied and not overflow
    elif applied:
        optimizer.step()
    if not applied:
        optimizer.zero_grad(set_to_none=True)
    return StepOutput(loss_sum, weighted_sum, unweighted_sum, grad_norm.detach(), applied, overflow)


def head_of(loss_name: str) -> str:
    """``"atss/pos.loss_cls"`` -> ``"atss"`` (names without a "/" belong to head ``"query"``)."""
    return loss_name.split("/", 1)[0] if "/" in loss_name else "query"


class LossWindow:
    """Sums of the step outputs over a logging window, kept on the device until :meth:`flush`."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.images = 0

    def _add(self, name: str, value: torch.Tensor) -> None:
        value = value.float()
        self._sums[name] = self._sums[name] + value if name in self._sums else value.clone()

    def add(self, out: StepOutput, num_images: int) -> None:
        self._add("train/loss", out.loss)
        heads: dict[str, list[torch.Tensor]] = {}
        for name, value in out.weighted.items():
            full = name if "/" in name else f"query/{name}"
            self._add(f"train/{full}", value)
            heads.setdefault(head_of(name), []).append(value.float())
        for head, values in heads.items():
            self._add(f"train/{head}/total", torch.stack(values).sum())
        for name, value in out.unweighted.items():
            full = name if "/" in name else f"query/{name}"
            self._add(f"train_unweighted/{full}", value)
        self._add("train/grad_norm", out.grad_norm)
        for name, value in out.stats.items():    # assign/<head>/... under their own names
            self._add(name, value)
        self.steps += 1
        self.images += num_images

    def flush(self) -> dict[str, float]:
        """Window means as floats (one device->host copy), then reset."""
        if not self.steps:
            return {}
        names = list(self._sums)
        values = torch.stack([self._sums[n] for n in names]).div_(self.steps).tolist()
        self._sums.clear()
        self.steps = 0
        self.images = 0
        return dict(zip(names, values))


@dataclass
class LogRecord:
    """What the loop hands to ``hooks.on_log`` every ``train.log_every`` iterations (rank 0 only)."""
    iteration: int                 # completed iterations
    total_iters: int
    epoch: int                     # 0-based epoch being trained
    num_epochs: int
    metrics: dict[str, float]      # train/* metric names -> window means
    eta_s: float                   # estimated seconds of training left (excluding evaluation)


@dataclass
class EpochReport:
    """What the loop hands to ``hooks.on_epoch_end`` after every epoch, on every rank."""
    epoch: int                              # completed epochs
    iteration: int                          # completed iterations
    finished: bool                          # True after the last iteration of the schedule
    metrics: dict[str, float]               # latest train/* window, coco/* when evaluated (rank 0)
    evaluated: bool
    checkpoint_dir: Path | None = None      # rank 0: folder holding checkpoint.pt, when one was written
    is_best: bool = False                   # rank 0: this checkpoint has the best coco/AP so far
    samples: list[EvalSample] = field(default_factory=list)  # rank 0: a few validation predictions
    eval_summary: str = ""                  # rank 0: the evaluator's text summary (COCOeval's table)
    eval_details: dict[str, Any] = field(default_factory=dict)  # rank 0: the evaluator's data for figures


@dataclass
class LoopHooks:
    """Callbacks into the host (the platform). All optional; exceptions propagate."""
    on_log: Callable[[LogRecord], None] | None = None
    on_epoch_end: Callable[[EpochReport], None] | None = None


def _to_device(images: list[torch.Tensor], targets: list[dict], device: torch.device):
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
               for t in targets]
    return images, targets


class TrainLoop:
    """Trains ``model`` over ``train_loader`` with the schedule of ``cfg.train``.

    Args:
        model: the detector, possibly wrapped in DistributedDataParallel.
        optimizer, scheduler: see :mod:`codetr.engine.optim`; the scheduler steps every iteration.
        train_loader: yields ``(images, targets)`` (lists), ``train.accumulate_steps`` of them per
            iteration; ``set_epoch(epoch)`` is called on its sampler when it has one (distributed shuffling).
        cfg: the full :class:`codetr.config.Config`; the loop reads ``cfg.train`` and stores
            the whole config in checkpoints.
        iters_per_epoch: optimizer steps per epoch (see below).
        val_loader, make_evaluator: evaluation data and a factory of fresh evaluators
            (``update(predictions, targets)``, ``synchronize()``, ``summarize()``).
        checkpoint_extra: extra entries of every checkpoint (num_classes, category_names, ...).
        start_epoch, start_iteration, best_value: where a resumed run continues.
        num_samples: validation predictions kept for the host (drawn images) at the final evaluation.
        image_names: image id -> file name (named by a non-finite-loss error).
        skipped_steps: steps already skipped for a non-finite loss (a resumed run's count).
        scaler_state, overflow_steps: ``train.amp=fp16``: a resumed run's loss scaler state and count of
            overflowing steps (both in its checkpoint: ``"scaler"``, ``"overflow_steps"``).

    ``iters_per_epoch`` counts optimizer steps: :func:`optimizer_steps_per_epoch` of the loader's
    length and ``train.accumulate_steps`` (the lr schedule is built with the same number).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, train_loader: Iterable, cfg: Any, *,
                 device: torch.device, iters_per_epoch: int, val_loader: Iterable | None = None,
                 make_evaluator: Callable[[], Any] | None = None, hooks: LoopHooks | None = None,
                 checkpoint_extra: dict[str, Any] | None = None, start_epoch: int = 0, start_iteration: int = 0,
                 best_value: float | None = None, num_samples: int = 0, scratch_dir: str | Path | None = None,
                 image_names: Callable[[int], str] | None = None, skipped_steps: int = 0,
                 scaler_state: dict | None = None, overflow_steps: int = 0):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train_loader, self.val_loader, self.make_evaluator = train_loader, val_loader, make_evaluator
        self.best_metric = BEST_METRIC   # the evaluator's primary metric once it has run
        self.cfg, self.tcfg = cfg, cfg.train
        self.device = device
        self.iters_per_epoch = iters_per_epoch
        self.hooks = hooks or LoopHooks()
        self.checkpoint_extra = checkpoint_extra or {}
        self.epoch, self.iteration = start_epoch, start_iteration
        self.best_value = best_value
        self.num_samples = num_samples
        self.scratch_dir = Path(scratch_dir) if scratch_dir else Path(tempfile.gettempdir())
        self.rank, self.world_size = get_rank(), get_world_size()
        self.total_iters = iters_per_epoch * self.tcfg.epochs
        if self.tcfg.max_iters is not None:
            self.total_iters = min(self.total_iters, self.tcfg.max_iters)
        self.num_epochs = math.ceil(self.total_iters / iters_per_epoch) if iters_per_epoch else 0
        self.last_metrics: dict[str, float] = {}
        self.last_eval_summary = ""
        self.last_eval_details: dict[str, Any] = {}
        self.guard = NonFiniteGuard(self.tcfg.on_nonfinite, self.tcfg.max_skipped_steps, image_names, skipped_steps)
        self.accumulate_steps = self.tcfg.accumulate_steps
        num_batches = len(train_loader) if hasattr(train_loader, "__len__") else None
        if num_batches is not None and optimizer_steps_per_epoch(num_batches, self.accumulate_steps) != iters_per_epoch:
            raise ValueError(f"iters_per_epoch counts optimizer steps: {num_batches} batches // train.accumulate_steps "
                             f"{self.accumulate_steps} = {optimizer_steps_per_epoch(num_batches, self.accumulate_steps)}, "
                             f"got {iters_per_epoch} (codetr.engine.loop.optimizer_steps_per_epoch)")
        self.scaler = make_grad_scaler(self.tcfg.amp, device)
        if self.scaler is not None and scaler_state:
            self.scaler.load_state_dict(scaler_state)
        self.overflow_steps = overflow_steps
        self.clock = PhaseClock()

    # ------------------------------------------------------------------ training

    def run(self) -> dict[str, float]:
        """Train to the end of the schedule; returns the last metrics (rank 0: train/* and coco/*)."""
        if self.iteration >= self.total_iters:
            return self.last_metrics
        window = LossWindow()
        self.clock = PhaseClock()
        window_first_iter = self.iteration
        window_start, window_cpu_start = time.perf_counter(), time.process_time()
        recent_iter_time: float | None = None
        while self.iteration < self.total_iters:
            self._set_epoch(self.epoch)
            self.model.train()
            for micro_batches in self._optimizer_steps():
                out = self._step(micro_batches)
                with warnings.catch_warnings():
                    # a skipped first step (fp16 overflow, on_nonfinite=skip) never called optimizer.step():
                    # the schedule still moves on, on purpose
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
                    self.scheduler.step()
                if out.overflow:
                    self.overflow_steps += 1
                if out.applied:
                    window.add(out, sum(len(images) for images, _ in micro_batches))
                self.iteration += 1
                done = self.iteration >= self.total_iters
                if self.iteration % self.tcfg.log_every == 0 or done:
                    steps, images_seen = window.steps, window.images
                    metrics = window.flush()
                    elapsed = time.perf_counter() - window_start
                    recent_iter_time = elapsed / max(steps, 1)
                    metrics.update(self._lr_metrics())
                    metrics.update(self.clock.flush(self.iteration - window_first_iter))
                    window_first_iter = self.iteration
                    metrics["train/iter_time"] = recent_iter_time
                    metrics["train/iter_cpu_time"] = (time.process_time() - window_cpu_start) / max(steps, 1)
                    metrics["train/images_per_s"] = images_seen * self.world_size / max(elapsed, 1e-9)
                    metrics["train/epoch"] = self.iteration / self.iters_per_epoch
                    metrics["train/skipped_steps"] = float(self.guard.skipped)
                    if self.scaler is not None:
                        metrics["train/loss_scale"] = float(self.scaler.get_scale())
                        metrics["train/overflow_steps"] = float(self.overflow_steps)
                    self.last_metrics.update(metrics)
                    if self.rank == 0 and self.hooks.on_log:
                        eta = (self.total_iters - self.iteration) * recent_iter_time
                        with self.clock("log"):
                            self.hooks.on_log(LogRecord(self.iteration, self.total_iters, self.epoch, self.num_epochs,
                                                        metrics, eta))
                    window_start, window_cpu_start = time.perf_counter(), time.process_time()
                if done:
                    break
            self.epoch += 1
            self._end_epoch(finished=self.iteration >= self.total_iters)
            window_start, window_cpu_start = time.perf_counter(), time.process_time()
        return self.last_metrics

    def _optimizer_steps(self) -> Iterable[list[MicroBatch]]:
        """The loader's batches in groups of ``train.accumulate_steps``, ``iters_per_epoch`` groups."""
        group: list[MicroBatch] = []
        steps = 0
        batches = iter(self.train_loader)
        while True:
            with self.clock("data"):
                batch = next(batches, None)
            if batch is None:
                return
            group.append(batch)
            if len(group) == self.accumulate_steps:
                yield group
                group = []
                steps += 1
                if steps == self.iters_per_epoch:
                    return

    def _step(self, micro_batches: list[MicroBatch]) -> StepOutput:
        """:func:`accumulated_step` behind the non-finite guard (iteration numbers in errors are 1-based)."""
        number = self.iteration + 1
        targets = [t for _, batch_targets in micro_batches for t in batch_targets]
        try:
            return accumulated_step(self.model, micro_batches, self.optimizer, clip_grad_norm=self.tcfg.clip_grad_norm,
                                    amp=self.tcfg.amp, scaler=self.scaler, device=self.device, clock=self.clock,
                                    allow_step=lambda loss, weighted, grad_norm: self.guard.allow_step(
                                        number, loss, weighted, grad_norm, targets))
        except NonFiniteCostError as e:
            raise self.guard.error(number, {}, targets, what="predictions", hint=f"{e}; {DIVERGED_HINT}") from None

    def _set_epoch(self, epoch: int) -> None:
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def _lr_metrics(self) -> dict[str, float]:
        out = {}
        for group in self.optimizer.param_groups:
            name = group.get("name", "base")
            out["train/lr" if name == "base" else f"train/{name}"] = float(group["lr"])
        return out

    # ------------------------------------------------------------ epoch boundary

    def _end_epoch(self, finished: bool) -> None:
        evaluate_now = finished or (self.tcfg.eval_every > 0 and self.epoch % self.tcfg.eval_every == 0)
        checkpoint_now = finished or (self.tcfg.checkpoint_every > 0 and self.epoch % self.tcfg.checkpoint_every == 0)
        report = EpochReport(self.epoch, self.iteration, finished, {}, evaluated=False)
        if evaluate_now and self.val_loader is not None and self.make_evaluator is not None:
            began = time.perf_counter()
            metrics, samples = self.evaluate(num_samples=self.num_samples if finished else 0, final=finished)
            metrics = {**metrics, "time/eval_s": time.perf_counter() - began} if metrics else metrics
            report.evaluated = True
            report.eval_summary = self.last_eval_summary
            report.eval_details = self.last_eval_details
            report.samples = samples
            self.last_metrics.update(metrics)
            value = metrics.get(self.best_metric)
            if self.rank == 0 and value is not None and (self.best_value is None or value > self.best_value):
                self.best_value = value
                report.is_best = True
        report.metrics = dict(self.last_metrics)
        if checkpoint_now:
            began = time.perf_counter()
            report.checkpoint_dir = self.save()
            self.last_metrics["time/checkpoint_s"] = report.metrics["time/checkpoint_s"] = time.perf_counter() - began
        try:
            if self.hooks.on_epoch_end:
                self.hooks.on_epoch_end(report)
        finally:
            if report.checkpoint_dir is not None:
                shutil.rmtree(report.checkpoint_dir, ignore_errors=True)

    def evaluate(self, num_samples: int = 0, final: bool = False) -> tuple[dict[str, float], list[EvalSample]]:
        """COCO metrics of the current model on ``val_loader`` (rank 0; ``{}`` elsewhere). ``final``: the run's
        last evaluation (an evaluator with a ``final`` attribute, e.g. the suite's error analysis, is told)."""
        evaluator = self.make_evaluator()
        if hasattr(evaluator, "final"):
            evaluator.final = final
        self.best_metric = getattr(evaluator, "primary_metric", BEST_METRIC)
        out = evaluate(self.model, self.val_loader, evaluator, self.device, amp=self.tcfg.amp,
                       num_samples=num_samples, tta=self.cfg.eval)
        self.last_eval_summary = str(getattr(evaluator, "summary_text", "") or "")
        self.last_eval_details = dict(getattr(evaluator, "details", None) or {})
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds (call on every rank: RNG states are gathered)."""
        from codetr.config import to_dict

        rng_states = all_gather_objects(capture_rng_state())
        return {
            "model": unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "rng_states": rng_states,
            "config": to_dict(self.cfg),
            "metrics": dict(self.last_metrics),
            "best": None if self.best_value is None else {"metric": self.best_metric, "value": self.best_value},
            "skipped_steps": self.guard.skipped,
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "overflow_steps": self.overflow_steps,
            **self.checkpoint_extra,
        }

    def save(self) -> Path | None:
        """Write a checkpoint into a fresh scratch folder (rank 0; other ranks return None)."""
        state = self.state_dict()
        if self.rank != 0:
            return None
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"ckpt_it{self.iteration:07d}_", dir=self.scratch_dir))
        save_checkpoint(folder / CHECKPOINT_FILE, state)
        return folder
