"""The per-worker training function of Ray Train (also what the sweep's Tune trials run).

    TorchTrainer(train_loop_per_worker, train_loop_config=make_loop_config(cfg, ...), ...)

Every worker builds the datasets and the model, wraps them with
``ray.train.torch.prepare_data_loader`` / ``prepare_model`` (DistributedSampler, DDP), restores
a checkpoint (``ray.train.get_checkpoint()`` of this run first, else an explicit
``resume_from`` path) and hands the rest to :class:`codetr.engine.TrainLoop`. The loop reports
back through hooks: every ``train.log_every`` iterations rank 0 logs the train/* metrics to
MLflow and prints a progress line; after every epoch all ranks call ``ray.train.report``
(with a checkpoint folder from rank 0 when one was written), and rank 0 logs coco/* metrics,
the best / last checkpoints, the loss-curve plot and drawn validation images.

A single-worker sweep trial runs the same function inside its Tune trial's process
(:class:`platform.train_session.TuneTrialSession`: ``ray.tune.report`` instead of
``ray.train.report``); as a sweep trial (``make_loop_config(..., sweep_trial=True)``) it draws the
loss-curve plot once, at the end, instead of after every evaluation.

MLflow: the run is created by the driver and logged into by id (``mlflow_run_id``); with no
id the worker's rank 0 creates the run itself and ends it (FINISHED, FAILED or KILLED).
"""
from __future__ import annotations

import datetime
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

PROGRESS_PREFIX = "[train]"
FINAL_FLUSH_S = 0.0    # at the end rank 0 tries its spool once more; the driver tries again after it


def make_loop_config(cfg_dict: dict, *, tracking_uri: str, mlflow_run_id: str | None = None,
                     experiment_name: str | None = None, resume_from: str | None = None,
                     sweep_trial: bool = False) -> dict:
    """The ``train_loop_config`` of :func:`train_loop_per_worker` (plain, picklable values).

    ``cfg_dict`` is ``to_dict(cfg)`` with paths already absolute (workers run elsewhere);
    ``sweep_trial``: the loss-curve plot only at the end (the sweep's summary compares the trials).
    """
    return {"config": cfg_dict, "tracking_uri": tracking_uri, "mlflow_run_id": mlflow_run_id,
            "experiment_name": experiment_name, "resume_from": resume_from, "sweep_trial": sweep_trial}


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


def _build_loaders(cfg, train_ds, val_ds, collate_fn, session):
    """Training and validation loaders; the training order depends on ``train.seed`` (and the epoch)."""
    from torch.utils.data import DataLoader, DistributedSampler

    from codetr.data.build import group_sampler

    workers, rank, world_size = cfg.data.num_workers, session.rank, session.world_size
    if cfg.data.group_by_aspect_ratio:
        # batches of one orientation, sharded over the workers by the sampler itself (official GroupSampler)
        sampler = group_sampler(train_ds, cfg.data.batch_size, seed=cfg.train.seed, num_replicas=world_size,
                                rank=rank)
    elif world_size > 1:   # Ray's own DistributedSampler would shuffle with seed 0 whatever train.seed says
        sampler = DistributedSampler(train_ds, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.train.seed)
    else:                  # the global RNG, seeded with train.seed (and checkpointed with the run)
        sampler = None
    train_loader = DataLoader(train_ds, batch_size=cfg.data.batch_size, sampler=sampler, shuffle=sampler is None,
                              drop_last=True, num_workers=workers, collate_fn=collate_fn)
    train_loader = session.prepare_loader(train_loader, add_dist_sampler=False)
    val_loader = DataLoader(val_ds, batch_size=cfg.data.eval_batch_size, shuffle=False, drop_last=False,
                            num_workers=workers, collate_fn=collate_fn)
    # DistributedSampler per worker; batches are moved to the device by the loop
    val_loader = session.prepare_loader(val_loader, add_dist_sampler=True)
    return train_loader, val_loader


def _init_from(model, cfg, category_names: list[str], rank: int, run_name: str, logger) -> None:
    """Fine-tuning start: ``model.init_from``'s weights (every rank), reported by rank 0."""
    import json

    from codetr.engine.init_from import apply_init_from

    report = apply_init_from(model, cfg.model.init_from, category_names)
    if rank == 0:
        say(f"{PROGRESS_PREFIX} {run_name}  {report.summary()}")
        if report.new_classes:
            say(f"{PROGRESS_PREFIX} {run_name}  classes not in the checkpoint (their class rows start fresh): "
                f"{', '.join(report.new_classes)}")
        if logger is not None:
            logger.log_text(json.dumps(report.as_dict(), indent=1), "init_from/report.json")
            logger.set_tags({"platform.init_from": str(cfg.model.init_from)})


def _load_start_checkpoint(resume_from: str | None, warn, session) -> tuple[dict | None, str | None]:
    """The checkpoint to start from: this run's latest readable one (Ray; an unreadable one is named
    and the previous one tried, see :mod:`platform.checkpoints`), else ``resume_from``, else none."""
    from codetr.engine import load_checkpoint
    from platform.checkpoints import load_with_fallback

    checkpoint = session.checkpoint()
    if checkpoint is not None:
        state, used = load_with_fallback(checkpoint, warn)
        return state, f"ray:{used.path}"
    if resume_from:
        return load_checkpoint(resume_from), resume_from
    return None, None


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
    out.update({k: v for k, v in metrics.items() if (k.startswith("coco/") and k.count("/") == 1) or k == "train/loss"})
    if placement_group_id is not None:   # a sweep releases the group of a trial it stops (platform.sweep_resources)
        out["placement_group_id"] = placement_group_id
    return out


class _Reporter:
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
            coco = {k: v for k, v in report.metrics.items() if k.startswith("coco/")}
            if report.evaluated and coco:
                line = "  ".join(f"{k.removeprefix('coco/')} {v:.4f}" for k, v in coco.items()
                                 if k in ("coco/AP", "coco/AP50", "coco/AP75"))
                say(f"{PROGRESS_PREFIX} {self.run_name}  eval after epoch {report.epoch} "
                    f"(iter {report.iteration}): {line}")
            if self.logger is not None:
                self._log_epoch(report, coco)
        self.session.report(train_report(report.epoch, report.iteration, report.finished, report.metrics,
                                         self.session.placement_group_id()), report.checkpoint_dir)

    def _log_epoch(self, report, coco: dict[str, float]) -> None:
        from codetr.engine import CHECKPOINT_FILE

        step = report.iteration
        if report.evaluated and coco:
            self.logger.log_metrics(coco, step=step)
        if report.eval_summary:
            self.logger.log_text(report.eval_summary, f"eval/coco_summary_iter{step:07d}.txt")
        self.logger.log_metrics({"train/epochs_done": report.epoch}, step=step)
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
        import matplotlib.pyplot as plt

        from platform.visualize import plot_loss_curves

        keys = [k for k in self.logger.metric_keys()
                if k == "train/loss" or k.endswith("/total") or k in ("coco/AP", "coco/AP50", "coco/AP75")]
        fig = plot_loss_curves(self.logger.metric_history(keys), title=self.run_name)
        try:
            self.logger.log_figure(fig, "plots/loss_curves.png")
        finally:
            plt.close(fig)

    def _log_samples(self, samples) -> None:
        from platform.visualize import draw_detections, save_png

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


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker entry point; ``config`` comes from :func:`make_loop_config`."""
    from platform.train_session import RayTrainSession

    run_worker(config, RayTrainSession())


def run_worker(config: dict[str, Any], session) -> None:
    """Train one worker's share of a run: ``session`` (:mod:`platform.train_session`) says where the
    run gets its rank, device, checkpoint and reports; ``config`` comes from :func:`make_loop_config`."""
    import ray

    from codetr import build_model
    from codetr.config import config_from_dict
    from codetr.data import build_dataset, collate_fn
    from codetr.engine import (LoopHooks, TrainLoop, build_lr_scheduler, build_optimizer, lr_scaling,
                               optimizer_steps_per_epoch, restore_rng_state, seed_everything)
    from codetr.engine.dist import all_gather_objects
    from platform import console, tracking
    from platform.spool import WORKER_HTTP_ENV, SpoolingRunLogger, spool_dir

    console.configure_worker()   # Ray Train's per-report lines hidden unless --verbose
    cfg = config_from_dict(config["config"])
    rank, world_size = session.rank, session.world_size
    torch.set_num_threads(cfg.platform.cpus_per_worker)
    seed_everything(cfg.train.seed + rank)
    run_name = cfg.platform.run_name or session.experiment_name

    # rank 0 owns the MLflow logging; it creates the run only when the caller did not
    logger, owns_run = None, False
    tracking_uri, run_id = config["tracking_uri"], config.get("mlflow_run_id")
    if rank == 0:
        if run_id is None:
            run_id, _ = tracking.start_run(tracking_uri, config.get("experiment_name") or cfg.platform.experiment_name,
                                           run_name)
            owns_run = True
        # an unreachable tracking server must not stall training: short requests, the rest spooled
        os.environ.update(WORKER_HTTP_ENV)
        logger = SpoolingRunLogger(tracking_uri, run_id, spool_dir(cfg.platform.storage_path, run_name, run_id),
                                   resumed=True)

    status, reporter, monitor = "FAILED", None, None
    try:
        train_ds = build_dataset(cfg, "train")
        val_ds = build_dataset(cfg, "val")
        train_loader, val_loader = _build_loaders(cfg, train_ds, val_ds, collate_fn, session)
        iters_per_epoch = optimizer_steps_per_epoch(len(train_loader), cfg.train.accumulate_steps)
        if iters_per_epoch == 0:
            raise ValueError(f"the training set ({len(train_ds)} images) gives no optimizer step of "
                             f"{cfg.train.accumulate_steps} full batch(es) of {cfg.data.batch_size} per worker with "
                             f"{world_size} workers")

        model = build_model(cfg, num_classes=train_ds.num_classes)
        fallbacks: list[str] = []
        state, source = _load_start_checkpoint(config.get("resume_from"), fallbacks.append, session)
        if rank == 0:
            for line in fallbacks:
                say(f"{PROGRESS_PREFIX} {run_name}  WARNING: {line}")
        if state is not None:
            model.load_state_dict(state["model"])
        elif cfg.model.init_from:
            _init_from(model, cfg, list(train_ds.category_names), rank, run_name, logger)
        model = session.prepare_model(model, find_unused_parameters=cfg.platform.find_unused_parameters)
        device = session.device()
        optimizer = build_optimizer(model, cfg.train, lr=lr_scaling(cfg.train, world_size=world_size,
                                                                     batch_size=cfg.data.batch_size).lr)
        scheduler = build_lr_scheduler(optimizer, cfg.train, iters_per_epoch)
        start_epoch = start_iteration = 0
        best_value = None
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start_epoch, start_iteration = state["epoch"], state["iteration"]
            best_value = (state.get("best") or {}).get("value")
            rng_states = state.get("rng_states") or []
            if len(rng_states) == world_size:
                restore_rng_state(rng_states[rank])
            else:   # a different world size: fresh, distinct streams per rank
                seed_everything(cfg.train.seed + rank + 1000 * start_iteration)
            if rank == 0:
                say(f"{PROGRESS_PREFIX} {run_name}  resumed from {source} at epoch {start_epoch}, "
                    f"iteration {start_iteration}")
                if logger is not None:
                    logger.set_tags({"platform.resumed_from": source,
                                     **({"platform.checkpoint_fallback": " | ".join(fallbacks)} if fallbacks else {})})
                    if source.startswith("ray:"):
                        record_restart(logger, start_iteration, source)

        from codetr.evaluation import CocoEvaluator

        # where the workers run (a multi-node check people can see in MLflow)
        num_nodes = len(set(all_gather_objects(ray.get_runtime_context().get_node_id())))
        if logger is not None:
            logger.log_params({"derived.num_nodes": num_nodes})
        from platform.system_metrics import start_monitor

        monitor = start_monitor(tracking_uri, run_id, cfg.platform.system_metrics_interval,
                                local_rank=session.local_rank, node_rank=session.node_rank,
                                num_nodes=num_nodes)

        reporter = _Reporter(cfg, logger, session, list(train_ds.category_names), run_name,
                             sweep_trial=bool(config.get("sweep_trial")))
        loop = TrainLoop(
            model, optimizer, scheduler, train_loader, cfg, device=device, iters_per_epoch=iters_per_epoch,
            val_loader=val_loader, make_evaluator=lambda: CocoEvaluator(val_ds),
            hooks=LoopHooks(on_log=reporter.on_log, on_epoch_end=reporter.on_epoch_end),
            checkpoint_extra={"num_classes": train_ds.num_classes,
                              "category_names": list(train_ds.category_names),
                              "mlflow_run_id": run_id, "world_size": world_size},
            start_epoch=start_epoch, start_iteration=start_iteration, best_value=best_value,
            num_samples=cfg.platform.num_val_images,
            image_names=lambda image_id: train_ds.coco.imgs[image_id]["file_name"],
            skipped_steps=(state or {}).get("skipped_steps", 0), scaler_state=(state or {}).get("scaler"),
            overflow_steps=(state or {}).get("overflow_steps", 0))
        if rank == 0:
            say(f"{PROGRESS_PREFIX} {run_name}  {world_size} worker(s) on {num_nodes} node(s), {device}, "
                f"{len(train_ds)} train / {len(val_ds)} val images, {iters_per_epoch} iterations per epoch, "
                f"{loop.total_iters} in all")
        if loop.iteration >= loop.total_iters:
            # resumed from the checkpoint of the last epoch (stopped before its result was taken):
            # nothing to train, but the caller (e.g. a Tune trial) still gets the final result
            if rank == 0:
                say(f"{PROGRESS_PREFIX} {run_name}  already at the end of its schedule: reporting its final result")
            session.report(train_report(loop.epoch, loop.iteration, True, state.get("metrics") or {},
                                        session.placement_group_id()), None)
        else:
            loop.run()
        if logger is not None and logger.flush(wait_s=FINAL_FLUSH_S):
            say(f"[platform] MLflow still unreachable: {logger.spool.pending()} call(s) stay in {logger.spool.folder}")
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if monitor is not None:
            from platform.system_metrics import stop_monitor

            stop_monitor(monitor)
        if reporter is not None:
            shutil.rmtree(reporter.scratch, ignore_errors=True)
        if owns_run and logger is not None:
            tracking.end_run(tracking_uri, run_id, status)
