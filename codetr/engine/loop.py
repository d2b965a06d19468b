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
    train/iter_cpu_time         CPU seconds of this process per iteration (the wall time it would take
                                on a core of its own: on a shared machine, iter_time / iter_cpu_time
                                shows the contention)
    coco/*                      the evaluator's metrics

Losses are averaged over the last ``train.log_every`` iterations of rank 0; the values are
accumulated on the device and read back once per window (no per-iteration host sync).
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from codetr.engine.checkpoint import CHECKPOINT_FILE, capture_rng_state, save_checkpoint, unwrap_model
from codetr.engine.dist import all_gather_objects, get_rank, get_world_size
from codetr.engine.evaluate import EvalSample, evaluate
from codetr.engine.nonfinite import DIVERGED_HINT, NonFiniteGuard
from codetr.engine.precision import autocast_context
from codetr.errors import NonFiniteCostError

BEST_METRIC = "coco/AP"


@dataclass
class StepOutput:
    loss: torch.Tensor                  # scalar objective (detached)
    weighted: dict[str, torch.Tensor]   # named weighted terms (detached scalars)
    unweighted: dict[str, torch.Tensor]
    grad_norm: torch.Tensor             # total norm before clipping
    applied: bool = True                # False: the update was skipped (non-finite loss or gradient)


def train_step(model: nn.Module, images: list[torch.Tensor], targets: list[dict], optimizer: torch.optim.Optimizer,
               *, clip_grad_norm: float, amp: bool = False,
               allow_step: Callable[[torch.Tensor, dict, torch.Tensor], bool] | None = None) -> StepOutput:
    """One optimisation step: forward, backward, grad-norm clipping (``clip_grad_norm`` 0: none), step.

    ``model(images, targets, return_unweighted=True)`` must return two dicts of scalar tensors
    (weighted and unweighted named losses); their weighted sum is the objective.
    ``allow_step(loss, weighted, grad_norm)``, when given, runs before ``optimizer.step()``: False
    skips the update (see :mod:`codetr.engine.nonfinite`).
    """
    device = images[0].device
    with autocast_context(device, amp):
        weighted, unweighted = model(images, targets, return_unweighted=True)
    loss = torch.stack([v.float() for v in weighted.values()]).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    max_norm = clip_grad_norm if clip_grad_norm > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.zeros((), device=device)
    applied = allow_step is None or allow_step(loss.detach(), weighted, grad_norm.detach())
    if applied:
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
    return StepOutput(loss.detach(), {k: v.detach() for k, v in weighted.items()},
                      {k: v.detach() for k, v in unweighted.items()}, grad_norm.detach(), applied)


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
        train_loader: yields ``(images, targets)`` (lists); ``set_epoch(epoch)`` is called on its
            sampler when it has one (distributed shuffling).
        cfg: the full :class:`codetr.config.Config`; the loop reads ``cfg.train`` and stores
            the whole config in checkpoints.
        iters_per_epoch: ``len(train_loader)``.
        val_loader, make_evaluator: evaluation data and a factory of fresh evaluators
            (``update(predictions, targets)``, ``synchronize()``, ``summarize()``).
        checkpoint_extra: extra entries of every checkpoint (num_classes, category_names, ...).
        start_epoch, start_iteration, best_value: where a resumed run continues.
        num_samples: validation predictions kept for the host (drawn images) at the final evaluation.
        image_names: image id -> file name (named by a non-finite-loss error).
        skipped_steps: steps already skipped for a non-finite loss (a resumed run's count).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, train_loader: Iterable, cfg: Any, *,
                 device: torch.device, iters_per_epoch: int, val_loader: Iterable | None = None,
                 make_evaluator: Callable[[], Any] | None = None, hooks: LoopHooks | None = None,
                 checkpoint_extra: dict[str, Any] | None = None, start_epoch: int = 0, start_iteration: int = 0,
                 best_value: float | None = None, num_samples: int = 0, scratch_dir: str | Path | None = None,
                 image_names: Callable[[int], str] | None = None, skipped_steps: int = 0):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train_loader, self.val_loader, self.make_evaluator = train_loader, val_loader, make_evaluator
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
        self.guard = NonFiniteGuard(self.tcfg.on_nonfinite, self.tcfg.max_skipped_steps, image_names, skipped_steps)

    # ------------------------------------------------------------------ training

    def run(self) -> dict[str, float]:
        """Train to the end of the schedule; returns the last metrics (rank 0: train/* and coco/*)."""
        if self.iteration >= self.total_iters:
            return self.last_metrics
        window = LossWindow()
        window_start, window_cpu_start = time.perf_counter(), time.process_time()
        recent_iter_time: float | None = None
        while self.iteration < self.total_iters:
            self._set_epoch(self.epoch)
            self.model.train()
            for images, targets in self.train_loader:
                images, targets = _to_device(images, targets, self.device)
                out = self._step(images, targets)
                self.scheduler.step()
                if out.applied:
                    window.add(out, len(images))
                self.iteration += 1
                done = self.iteration >= self.total_iters
                if self.iteration % self.tcfg.log_every == 0 or done:
                    steps, images_seen = window.steps, window.images
                    metrics = window.flush()
                    elapsed = time.perf_counter() - window_start
                    recent_iter_time = elapsed / max(steps, 1)
                    metrics.update(self._lr_metrics())
                    metrics["train/iter_time"] = recent_iter_time
                    metrics["train/iter_cpu_time"] = (time.process_time() - window_cpu_start) / max(steps, 1)
                    metrics["train/images_per_s"] = images_seen * self.world_size / max(elapsed, 1e-9)
                    metrics["train/epoch"] = self.iteration / self.iters_per_epoch
                    metrics["train/skipped_steps"] = float(self.guard.skipped)
                    self.last_metrics.update(metrics)
                    if self.rank == 0 and self.hooks.on_log:
                        eta = (self.total_iters - self.iteration) * recent_iter_time
                        self.hooks.on_log(LogRecord(self.iteration, self.total_iters, self.epoch, self.num_epochs,
                                                    metrics, eta))
                    window_start, window_cpu_start = time.perf_counter(), time.process_time()
                if done:
                    break
            self.epoch += 1
            self._end_epoch(finished=self.iteration >= self.total_iters)
            window_start, window_cpu_start = time.perf_counter(), time.process_time()
        return self.last_metrics

    def _step(self, images: list[torch.Tensor], targets: list[dict]) -> StepOutput:
        """:func:`train_step` behind the non-finite guard (iteration numbers in errors are 1-based)."""
        number = self.iteration + 1
        try:
            return train_step(self.model, images, targets, self.optimizer, clip_grad_norm=self.tcfg.clip_grad_norm,
                              amp=self.tcfg.amp,
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
            metrics, samples = self.evaluate(num_samples=self.num_samples if finished else 0)
            report.evaluated = True
            report.eval_summary = self.last_eval_summary
            report.samples = samples
            self.last_metrics.update(metrics)
            value = metrics.get(BEST_METRIC)
            if self.rank == 0 and value is not None and (self.best_value is None or value > self.best_value):
                self.best_value = value
                report.is_best = True
        report.metrics = dict(self.last_metrics)
        if checkpoint_now:
            report.checkpoint_dir = self.save()
        try:
            if self.hooks.on_epoch_end:
                self.hooks.on_epoch_end(report)
        finally:
            if report.checkpoint_dir is not None:
                shutil.rmtree(report.checkpoint_dir, ignore_errors=True)

    def evaluate(self, num_samples: int = 0) -> tuple[dict[str, float], list[EvalSample]]:
        """COCO metrics of the current model on ``val_loader`` (rank 0; ``{}`` elsewhere)."""
        evaluator = self.make_evaluator()
        out = evaluate(self.model, self.val_loader, evaluator, self.device, amp=self.tcfg.amp,
                       num_samples=num_samples)
        self.last_eval_summary = str(getattr(evaluator, "summary_text", "") or "")
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
            "best": None if self.best_value is None else {"metric": BEST_METRIC, "value": self.best_value},
            "skipped_steps": self.guard.skipped,
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
