"""What a training worker reports while it trains: MLflow metrics and artifacts (rank 0), progress lines
(rank 0) and the per-epoch result every rank hands to Ray Train or Tune (the hooks of
:class:`codetr.engine.TrainLoop`)."""
from __future__ import annotations

import datetime
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from codetr.engine import CHECKPOINT_FILE
from codetr.errors import CheckpointWriteError, describe_os_error
from platform.core.visualize import close_figure, draw_detections, plot_loss_curves, save_png

PROGRESS_PREFIX = "[train]"
EVAL_PREFIXES = ("coco/", "lvis/")      # the evaluators' metrics (COCOeval; LVIS for data.format lvis)
HEADLINE_METRICS = ("coco/AP", "coco/AP50", "coco/AP75", "lvis/AP", "lvis/APr", "lvis/APc", "lvis/APf")


def say(line: str) -> None:
    """Print a progress line once (Ray Train's print patch would also echo ``print`` via logging)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def progress_line(run_name: str, record) -> str:
    """``[train] run  epoch 3/12  iter 120/744 (16%)  loss 4.3210  12.5 img/s  lr 4.0e-04  ETA 0:08:10``."""
    m = record.metrics
    pct = 100.0 * record.iteration / max(record.total_iters, 1)
    return (f"{PROGRESS_PREFIX} {run_name}  epoch {record.epoch + 1}/{record.num_epochs}  "
            f"iter {record.iteration}/{record.total_iters} ({pct:.0f}%)  loss {m.get('train/loss', float('nan')):.4f}  "
            f"{m.get('train/images_per_s', 0.0):.1f} img/s  lr {m.get('train/lr', 0.0):.1e}  "
            f"ETA {_format_eta(record.eta_s)}")


def record_restart(logger, iteration: int, source: str) -> int:
    """Count a restart from a checkpoint in the run: metric ``platform/restart_from_iteration`` gets one
    value per restart (step = the restart's number, value = the iteration it went back to), tag
    ``platform.restarts`` the count. Returns the count."""
    try:
        count = len(logger.client.get_metric_history(logger.run_id, "platform/restart_from_iteration")) + 1
    except Exception:   # the store is away: the count is unknown here (the tag still says where it went back to)
        count = 1
    logger.log_metrics({"platform/restart_from_iteration": iteration}, step=count)
    logger.set_tags({"platform.restarts": str(count), "platform.last_restart": f"iteration {iteration} from {source}"})
    return count


def train_report(epoch: int, iteration: int, finished: bool, metrics: dict[str, float],
                 placement_group_id: str | None = None) -> dict[str, Any]:
    """What ``ray.train.report`` gets after an epoch (Tune schedulers and Ray's result see it): the
    position, the headline metrics (not the per-class APs) and the workers' placement group."""
    out: dict[str, Any] = {"epoch": epoch, "iteration": iteration, "finished": finished}
    out.update({k: v for k, v in metrics.items()
                if (k.startswith(EVAL_PREFIXES) and k.count("/") == 1) or k == "train/loss"})
    if placement_group_id is not None:   # a sweep releases the group of a trial it stops (platform.sweep.resources)
        out["placement_group_id"] = placement_group_id
    return out


class Reporter:
    """The loop hooks of the platform: MLflow (rank 0), progress lines (rank 0), ray.train.report (all)."""

    def __init__(self, cfg, logger, session, category_names: list[str], run_name: str, sweep_trial: bool = False):
        self.cfg, self.logger, self.session, self.rank = cfg, logger, session, session.rank
        self.category_names = category_names
        self.run_name = run_name
        self.sweep_trial = sweep_trial
        self.scratch = Path(tempfile.mkdtemp(prefix="codetr_artifacts_"))

    def on_log(self, record) -> None:
        if self.logger is not None:
            self.logger.log_metrics(record.metrics, step=record.iteration)
        say(progress_line(self.run_name, record))

    def on_epoch_end(self, report) -> None:
        if self.rank == 0:
            coco = {k: v for k, v in report.metrics.items() if k.startswith(EVAL_PREFIXES)}
            if report.evaluated and coco:
                line = "  ".join(f"{k.removeprefix('coco/')} {v:.4f}" for k, v in coco.items() if k in HEADLINE_METRICS)
                say(f"{PROGRESS_PREFIX} {self.run_name}  eval after epoch {report.epoch} "
                    f"(iter {report.iteration}): {line}")
            if self.logger is not None:
                self._log_epoch(report, coco)
        try:
            self.session.report(train_report(report.epoch, report.iteration, report.finished, report.metrics,
                                             self.session.placement_group_id()), report.checkpoint_dir)
        except CheckpointWriteError:
            raise
        except OSError as e:
            if report.checkpoint_dir is None:
                raise
            # Ray could not persist the checkpoint into the run's storage (no space left, read-only): its
            # previous checkpoint stays the run's latest, where a resume continues
            raise CheckpointWriteError(f"{self.cfg.platform.storage_path}/{self.run_name}",
                                       describe_os_error(e)) from e

    def _log_epoch(self, report, coco: dict[str, float]) -> None:
        step = report.iteration
        if report.evaluated and coco:
            self.logger.log_metrics(coco, step=step)
        if report.eval_summary:
            self.logger.log_text(report.eval_summary, f"eval/coco_summary_iter{step:07d}.txt")
        costs = {k: report.metrics[k] for k, now in (("time/eval_s", report.evaluated),
                                                      ("time/checkpoint_s", report.checkpoint_dir is not None))
                 if now and k in report.metrics}
        self.logger.log_metrics({"train/epochs_done": report.epoch, **costs}, step=step)
        if report.checkpoint_dir is not None and self.cfg.platform.log_checkpoints:
            file = report.checkpoint_dir / CHECKPOINT_FILE
            if report.is_best:
                self.logger.log_file_as(file, "checkpoints", "best.pt")
            if report.finished:
                self.logger.log_file_as(file, "checkpoints", "last.pt")
        if report.finished or (report.evaluated and not self.sweep_trial):
            self._log_plot()
        if report.samples:
            self._log_samples(report.samples)

    def _log_plot(self) -> None:
        keys = [k for k in self.logger.metric_keys()
                if k == "train/loss" or k.endswith("/total") or k in ("coco/AP", "coco/AP50", "coco/AP75")]
        fig = plot_loss_curves(self.logger.metric_history(keys), title=self.run_name)
        try:
            self.logger.log_figure(fig, "plots/loss_curves.png")
        finally:
            close_figure(fig)

    def _log_samples(self, samples) -> None:
        folder = self.scratch / "val_images"
        for i, sample in enumerate(samples):
            pred, tgt = sample.prediction, sample.target
            drawn = draw_detections(sample.image, pred["boxes"], pred["labels"], pred.get("scores"),
                                    self.category_names, true_boxes_xyxy=tgt.get("boxes"),
                                    true_labels=tgt.get("labels"))
            image_id = tgt.get("image_id", i)
            image_id = int(image_id) if not isinstance(image_id, torch.Tensor) else int(image_id.item())
            save_png(drawn, folder / f"val_{i:02d}_image{image_id}.png")
        self.logger.log_artifacts(folder, "val_images")
