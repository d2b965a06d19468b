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
(:class:`platform.train.hosts.TuneTrialHost`: ``ray.tune.report`` instead of
``ray.train.report``); as a sweep trial (``make_loop_config(..., sweep_trial=True)``) it draws the
loss-curve plot once, at the end, instead of after every evaluation.

MLflow: the run is created by the driver and logged into by id (``mlflow_run_id``); with no
id the worker's rank 0 creates the run itself and ends it (FINISHED, FAILED or KILLED).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from typing import Any

import ray
import torch
from torch.utils.data import DataLoader, DistributedSampler

from codetr import build_model
from codetr.config import Config, config_from_dict
from codetr.data import build_dataset, collate_fn
from codetr.data.build import group_sampler
from codetr.engine import (LoopHooks, TrainLoop, build_lr_scheduler, build_optimizer, load_checkpoint, lr_scaling,
                           optimizer_steps_per_epoch, restore_rng_state, seed_everything)
from codetr.engine.dist import all_gather_objects
from codetr.engine.init_from import apply_init_from
from codetr.evaluation import build_evaluator
from platform.core import console
from platform.core.checkpoints import load_with_fallback
from platform.tracking import mlflow_runs
from platform.tracking.spool import WORKER_HTTP_ENV, SpoolingRunLogger, spool_dir
from platform.tracking.system_metrics import start_monitor, stop_monitor
from platform.train.hosts import RayTrainHost
from platform.train.reporter import PROGRESS_PREFIX, Reporter, record_restart, say, train_report

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



def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker entry point; ``config`` comes from :func:`make_loop_config`."""
    run_worker(config, RayTrainHost())


def run_worker(config: dict[str, Any], host) -> None:
    """Train one worker's share of a run: ``host`` (:mod:`platform.train.hosts`) says where the run gets
    its rank, device, checkpoint and reports; ``config`` comes from :func:`make_loop_config`."""
    console.configure_worker()   # Ray Train's per-report lines hidden unless --verbose
    cfg = config_from_dict(config["config"])
    torch.set_num_threads(cfg.platform.cpus_per_worker)
    seed_everything(cfg.train.seed + host.rank)
    run_name = cfg.platform.run_name or host.experiment_name
    logger, owns_run = _open_logger(config, cfg, host, run_name)
    run_id = logger.run_id if logger is not None else config.get("mlflow_run_id")
    status, reporter, monitor = "FAILED", None, None
    try:
        data = WorkerData.build(cfg, host)
        start = _build_and_restore(cfg, config, host, data, logger, run_name)
        num_nodes = len(set(all_gather_objects(ray.get_runtime_context().get_node_id())))
        if logger is not None:   # where the workers run (a multi-node check people can see in MLflow)
            logger.log_params({"derived.num_nodes": num_nodes})
        monitor = start_monitor(config["tracking_uri"], run_id, cfg.platform.system_metrics_interval,
                                local_rank=host.local_rank, node_rank=host.node_rank, num_nodes=num_nodes)
        reporter = Reporter(cfg, logger, host, list(data.train_ds.category_names), run_name,
                            sweep_trial=bool(config.get("sweep_trial")))
        loop = _make_loop(cfg, data, start, reporter, run_id, host.world_size)
        if host.rank == 0:
            say(f"{PROGRESS_PREFIX} {run_name}  {host.world_size} worker(s) on {num_nodes} node(s), {start.device}, "
                f"{len(data.train_ds)} train / {len(data.val_ds)} val images, {data.iters_per_epoch} iterations per "
                f"epoch, {loop.total_iters} in all")
        _run_or_report_final(loop, host, start.state, run_name)
        if logger is not None and logger.flush(wait_s=FINAL_FLUSH_S):
            say(f"[platform] MLflow still unreachable: {logger.spool.pending()} call(s) stay in {logger.spool.folder}")
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if monitor is not None:
            stop_monitor(monitor)
        if reporter is not None:
            shutil.rmtree(reporter.scratch, ignore_errors=True)
        if owns_run and logger is not None:
            mlflow_runs.end_run(config["tracking_uri"], run_id, status)


def _open_logger(config: dict[str, Any], cfg: Config, host, run_name: str) -> tuple[SpoolingRunLogger | None, bool]:
    """Rank 0 owns the MLflow logging: ``(logger, owns_run)``. It creates the run only when the caller did
    not (``owns_run``: then it also ends it); other ranks get None."""
    if host.rank != 0:
        return None, False
    tracking_uri, run_id, owns_run = config["tracking_uri"], config.get("mlflow_run_id"), False
    if run_id is None:
        run_id, _ = mlflow_runs.start_run(tracking_uri, config.get("experiment_name") or cfg.platform.experiment_name,
                                          run_name)
        owns_run = True
    # an unreachable tracking server must not stall training: short requests, the rest spooled
    os.environ.update(WORKER_HTTP_ENV)
    logger = SpoolingRunLogger(tracking_uri, run_id, spool_dir(cfg.platform.storage_path, run_name, run_id),
                               resumed=True)
    return logger, owns_run


@dataclass
class WorkerData:
    """The worker's datasets and loaders (its shard of the training set, its share of the validation set)."""
    train_ds: Any
    val_ds: Any
    train_loader: Any
    val_loader: Any
    iters_per_epoch: int          # optimizer steps (train.accumulate_steps batches each)

    @classmethod
    def build(cls, cfg: Config, host) -> "WorkerData":
        train_ds = build_dataset(cfg, "train")
        val_ds = build_dataset(cfg, "val")
        train_loader, val_loader = _build_loaders(cfg, train_ds, val_ds, collate_fn, host)
        iters_per_epoch = optimizer_steps_per_epoch(len(train_loader), cfg.train.accumulate_steps)
        if iters_per_epoch == 0:
            raise ValueError(f"the training set ({len(train_ds)} images) gives no full batch of "
                             f"{cfg.data.batch_size} per worker with {host.world_size} workers for an optimizer "
                             f"step of {cfg.train.accumulate_steps} batch(es) (train.accumulate_steps)")
        return cls(train_ds, val_ds, train_loader, val_loader, iters_per_epoch)


@dataclass
class StartPoint:
    """The model ready to train, its optimizer and schedule, and where the run starts in its schedule."""
    model: Any
    optimizer: Any
    scheduler: Any
    device: torch.device
    state: dict | None          # the checkpoint resumed from (None: a fresh start)
    epoch: int = 0
    iteration: int = 0
    best_value: float | None = None


def _build_and_restore(cfg: Config, config: dict[str, Any], host, data: WorkerData, logger, run_name: str) -> StartPoint:
    """Build the model (with ``model.init_from``'s weights on a fresh start), wrap it for the host (DDP),
    build the optimizer and schedule, and restore all of it (and this rank's RNG) from the start checkpoint."""
    model = build_model(cfg, num_classes=data.train_ds.num_classes)
    fallbacks: list[str] = []
    state, source = _load_start_checkpoint(config.get("resume_from"), fallbacks.append, host)
    if host.rank == 0:
        for line in fallbacks:
            say(f"{PROGRESS_PREFIX} {run_name}  WARNING: {line}")
    if state is not None:
        model.load_state_dict(state["model"])
    elif cfg.model.init_from:
        _init_from(model, cfg, list(data.train_ds.category_names), host.rank, run_name, logger)
    model = host.prepare_model(model, find_unused_parameters=cfg.platform.find_unused_parameters)
    optimizer = build_optimizer(model, cfg.train, lr=lr_scaling(cfg.train, world_size=host.world_size,
                                                                 batch_size=cfg.data.batch_size).lr)
    scheduler = build_lr_scheduler(optimizer, cfg.train, data.iters_per_epoch)
    start = StartPoint(model, optimizer, scheduler, host.device(), state)
    if state is None:
        return start
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    start.epoch, start.iteration = state["epoch"], state["iteration"]
    start.best_value = (state.get("best") or {}).get("value")
    rng_states = state.get("rng_states") or []
    if len(rng_states) == host.world_size:
        restore_rng_state(rng_states[host.rank])
    else:   # a different world size: fresh, distinct streams per rank
        seed_everything(cfg.train.seed + host.rank + 1000 * start.iteration)
    if host.rank == 0:
        say(f"{PROGRESS_PREFIX} {run_name}  resumed from {source} at epoch {start.epoch}, iteration {start.iteration}")
        if logger is not None:
            logger.set_tags({"platform.resumed_from": source,
                             **({"platform.checkpoint_fallback": " | ".join(fallbacks)} if fallbacks else {})})
            if source.startswith("ray:"):
                record_restart(logger, start.iteration, source)
    return start


def _make_loop(cfg: Config, data: WorkerData, start: StartPoint, reporter: Reporter, run_id: str | None,
               world_size: int) -> TrainLoop:
    """The engine's :class:`codetr.engine.TrainLoop`, reporting through ``reporter``'s hooks."""
    return TrainLoop(
        start.model, start.optimizer, start.scheduler, data.train_loader, cfg, device=start.device,
        iters_per_epoch=data.iters_per_epoch, val_loader=data.val_loader,
        make_evaluator=lambda: build_evaluator(data.val_ds, cfg.data.lvis_max_dets),
        hooks=LoopHooks(on_log=reporter.on_log, on_epoch_end=reporter.on_epoch_end),
        checkpoint_extra={"num_classes": data.train_ds.num_classes,
                          "category_names": list(data.train_ds.category_names),
                          "mlflow_run_id": run_id, "world_size": world_size},
        start_epoch=start.epoch, start_iteration=start.iteration, best_value=start.best_value,
        num_samples=cfg.platform.num_val_images,
        image_names=lambda image_id: data.train_ds.coco.imgs[image_id]["file_name"],
        skipped_steps=(start.state or {}).get("skipped_steps", 0), scaler_state=(start.state or {}).get("scaler"),
        overflow_steps=(start.state or {}).get("overflow_steps", 0))


def _run_or_report_final(loop: TrainLoop, host, state: dict | None, run_name: str) -> None:
    """Run the loop; a run resumed from the checkpoint of its last epoch (stopped before its result was
    taken) has nothing to train, but the caller (e.g. a Tune trial) still gets its final result."""
    if loop.iteration < loop.total_iters:
        loop.run()
        return
    if host.rank == 0:
        say(f"{PROGRESS_PREFIX} {run_name}  already at the end of its schedule: reporting its final result")
    host.report(train_report(loop.epoch, loop.iteration, True, (state or {}).get("metrics") or {},
                             host.placement_group_id()), None)


def _build_loaders(cfg, train_ds, val_ds, collate_fn, host):
    """Training and validation loaders; the training order depends on ``train.seed`` (and the epoch)."""
    workers, rank, world_size = cfg.data.num_workers, host.rank, host.world_size
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
    train_loader = host.prepare_loader(train_loader, add_dist_sampler=False)
    val_loader = DataLoader(val_ds, batch_size=cfg.data.eval_batch_size, shuffle=False, drop_last=False,
                            num_workers=workers, collate_fn=collate_fn)
    # DistributedSampler per worker; batches are moved to the device by the loop
    val_loader = host.prepare_loader(val_loader, add_dist_sampler=True)
    return train_loader, val_loader


def _init_from(model, cfg, category_names: list[str], rank: int, run_name: str, logger) -> None:
    """Fine-tuning start: ``model.init_from``'s weights (every rank), reported by rank 0."""
    report = apply_init_from(model, cfg.model.init_from, category_names)
    if rank == 0:
        say(f"{PROGRESS_PREFIX} {run_name}  {report.summary()}")
        if report.new_classes:
            say(f"{PROGRESS_PREFIX} {run_name}  classes not in the checkpoint (their class rows start fresh): "
                f"{', '.join(report.new_classes)}")
        if logger is not None:
            logger.log_text(json.dumps(report.as_dict(), indent=1), "init_from/report.json")
            logger.set_tags({"platform.init_from": str(cfg.model.init_from)})


def _load_start_checkpoint(resume_from: str | None, warn, host) -> tuple[dict | None, str | None]:
    """The checkpoint to start from: this run's latest readable one (Ray; an unreadable one is named
    and the previous one tried, see :mod:`platform.core.checkpoints`), else ``resume_from``, else none."""
    checkpoint = host.checkpoint()
    if checkpoint is not None:
        state, used = load_with_fallback(checkpoint, warn)
        return state, f"ray:{used.path}"
    if resume_from:
        return load_checkpoint(resume_from), resume_from
    return None, None
