"""What a run records in MLflow besides its metrics: the data it trains on, its params and config at the
start, the deployable model at the end. Shared by a single run (:mod:`platform.train.session`) and a
sweep's trials (:mod:`platform.sweep.trial`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from codetr.config import Config, flatten, to_dict
from codetr.data import build_dataset
from codetr.engine.optim import lr_scaling
from codetr.errors import CodetrError
from platform.tracking import mlflow_runs
from platform.tracking.datasets import DatasetInfo, describe, log_datasets
from platform.tracking.model_logging import LoggedDetector, log_deployable_model


@dataclass
class RunData:
    """The run's data as the driver sees it: ``num_classes`` and ``train_images`` (None when the data is
    not readable on the driver) and the MLflow dataset descriptions of both splits."""
    num_classes: int | None
    train_images: int | None
    datasets: list[DatasetInfo] = field(default_factory=list)

    @property
    def val_dataset(self) -> DatasetInfo | None:
        return next((d for d in self.datasets if d.split == "val"), None)


def describe_data(cfg: Config) -> RunData:
    """Build the training and validation sets once on the driver: generates the synthetic set (before
    workers race for it) and gives the number of classes. When the data is not readable here (it lives
    only on the worker nodes) the config's ``model.num_classes`` stands in and the workers load it.
    A readable but bad annotation file raises its :class:`codetr.errors.CodetrError`."""
    try:
        train = build_dataset(cfg, "train")
        val = build_dataset(cfg, "val")
    except CodetrError:   # a readable but bad annotation file, images missing with on_bad_image=error
        raise
    except (FileNotFoundError, OSError) as e:
        print(f"[platform] note: the dataset is not readable on the driver ({e}); the workers will load it",
              flush=True)
        return RunData(cfg.model.num_classes, None, [])
    return RunData(train.num_classes, len(train), [describe(cfg, "train", train), describe(cfg, "val", val)])


def derived_params(cfg, *, world_size: int, num_classes: int | None, train_images: int | None) -> dict:
    """Values worth comparing across runs that the config does not spell out (the effective batch and the
    learning rate actually used: :func:`codetr.engine.optim.lr_scaling`)."""
    heads = ["query", *cfg.model.aux_heads]
    scaling = lr_scaling(cfg.train, world_size=world_size, batch_size=cfg.data.batch_size)
    out = {
        "derived.K": len(cfg.model.aux_heads),
        "derived.heads": ",".join(heads),
        "derived.lambda1": cfg.model.lambda1,
        "derived.lambda2": cfg.model.lambda2,
        "derived.num_queries": cfg.model.num_queries,
        "derived.world_size": world_size,
        "derived.global_batch_size": world_size * cfg.data.batch_size,
        "derived.num_classes": num_classes,
        "derived.effective_batch": scaling.effective_batch,
        "derived.lr": scaling.lr,
    }
    if train_images:
        per_worker = train_images // world_size
        out["derived.iters_per_epoch"] = per_worker // cfg.data.batch_size // cfg.train.accumulate_steps
    return out


def log_run_inputs(tracking_uri: str, run_id: str, cfg: Config, data: RunData, *, log_config: bool = True) -> None:
    """A run's params (the flattened config and :func:`derived_params`), its ``config.yaml`` (unless
    ``log_config`` is False: a reopened run has it already) and its dataset inputs."""
    cfg_dict = to_dict(cfg)
    params = flatten(cfg_dict)
    params.update(derived_params(cfg, world_size=cfg.platform.num_workers, num_classes=data.num_classes,
                                 train_images=data.train_images))
    mlflow_runs.log_params(tracking_uri, run_id, params)
    if log_config:
        mlflow_runs.RunLogger(tracking_uri, run_id).log_text(yaml.safe_dump(cfg_dict, sort_keys=False), "config.yaml")
    log_datasets(tracking_uri, run_id, data.datasets)


def log_checkpoint_model(tracking_uri: str, run_id: str, checkpoint, register: str | None, data: RunData, *,
                         output_run_ids: tuple[str, ...] = (), label: str = "[platform]") -> LoggedDetector:
    """Log (and with ``register`` register) the deployable model of a Ray Train ``checkpoint`` into run
    ``run_id``; prints what it did."""
    print(f"{label} logging the deployable model of {checkpoint.path} to MLflow", flush=True)
    with checkpoint.as_directory() as folder:
        model = log_deployable_model(tracking_uri, run_id, folder, register=register, val_dataset=data.val_dataset,
                                     checkpoint_uri=checkpoint.path, output_run_ids=output_run_ids)
    print(f"{label} MLflow model {model.model_uri}"
          + (f", registered as {model.registered_uri}" if model.registered_uri else ""), flush=True)
    return model
