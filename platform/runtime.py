"""Shared driver plumbing: config files, absolute paths, the Ray runtime env, Ray start-up, the trainer."""
from __future__ import annotations

import argparse
import datetime
import os
import re
from pathlib import Path
from typing import Any

from codetr.config import Config, ConfigError, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO_ROOT / "experiments"
DEFAULT_CONFIG = "codetr_tiny"

# Not uploaded with the working dir to Ray workers (gitignore patterns; .gitignore is honoured too).
# Folders anchored at the root: an unanchored "data/" also dropped the package codetr/data, which the
# workers then imported from wherever the project happened to be installed (or not at all on other nodes).
UPLOAD_EXCLUDES = [".git/", ".venv/", "/venv/", "/data/", "/runs/", "/outputs/", "/mlruns/", "/mlartifacts/", "mlflow.db",
                   "*.db", "*.pt", "*.pth", ".pytest_cache/", "__pycache__/"]


def resolve_config_path(name: str) -> Path:
    """A YAML path, or a bare name of ``experiments/`` (``codetr_tiny`` -> experiments/codetr_tiny.yaml)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (EXPERIMENTS / name, EXPERIMENTS / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config file not found: {name} (nor in {EXPERIMENTS})")


def add_config_arguments(parser: argparse.ArgumentParser, default: str | None = DEFAULT_CONFIG) -> None:
    parser.add_argument("--config", default=default,
                        help="experiment YAML, or a name in experiments/ (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.max_iters=20 model.lambda1=0.5")


def _absolute(path: str, base: Path) -> str:
    if not path or "://" in path or Path(path).is_absolute():
        return path
    return str((base / path).resolve())


def absolutize_paths(cfg: Config, base: str | Path | None = None) -> Config:
    """Make the config's file paths absolute against ``base`` (default: the working directory).

    Ray workers run in a copy of the repository elsewhere, so relative paths would point into it.
    URIs (``s3://...``) are left alone.
    """
    base = Path(base or os.getcwd())
    data = cfg.data
    data.synthetic.root = _absolute(data.synthetic.root, base)
    for split in (data.train, data.val):
        split.ann_file = _absolute(split.ann_file, base)
        split.img_dir = _absolute(split.img_dir, base)
    if cfg.model.init_from:
        cfg.model.init_from = _absolute(cfg.model.init_from, base)
    if cfg.model.backbone.weights_path:
        cfg.model.backbone.weights_path = _absolute(cfg.model.backbone.weights_path, base)
    cfg.platform.storage_path = _absolute(cfg.platform.storage_path, base)
    return cfg


def load_run_config(config: str, overrides: list[str]) -> Config:
    """Load ``config`` (path or experiments/ name) with overrides and make its paths absolute."""
    return absolutize_paths(load_config(resolve_config_path(config), overrides))


def default_run_name(cfg: Config) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{cfg.platform.experiment_name}-{stamp}"


def check_run_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
        raise ConfigError(f"platform.run_name: {name!r} must be letters, digits, '_', '.', '-' "
                          "(it names a folder and an MLflow run)")
    return name


def runtime_env(extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Ray runtime env: the repository as working_dir (workers import ``platform`` and ``codetr`` from it)."""
    # no Ray Train print patch: it echoes every print of a worker a second time through logging
    env_vars = {"PYTHONUNBUFFERED": "1", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    env_vars.update(extra_env or {})
    return {"working_dir": str(REPO_ROOT), "excludes": UPLOAD_EXCLUDES, "env_vars": env_vars}


def _job_runtime_env() -> dict:
    """The runtime env of the Ray job this process is the entrypoint of ({} outside a job)."""
    import json

    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    return job.get("runtime_env", job) or {}


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def keep_local_ray_on_loopback() -> None:
    """A local Ray cluster (no ``RAY_ADDRESS``) listens on 127.0.0.1 only, not on every interface.

    Ray reads this switch once, when it is imported (its single-machine mode, the default on macOS
    and Windows: node address 127.0.0.1, every server bound to it). Call before anything imports
    ray; joining a cluster (``RAY_ADDRESS``) is left as it is.
    """
    import sys

    if not os.environ.get("RAY_ADDRESS") and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ENV, "0")


def init_ray(cfg: Config, extra_env: dict[str, str] | None = None) -> str:
    """Join the cluster of ``RAY_ADDRESS`` (e.g. under ``ray job submit``), else start a local one.

    Returns a short description of what it did.
    """
    import ray

    from platform import console

    if ray.is_initialized():
        return "Ray already initialised"
    console.configure_driver()
    address = os.environ.get("RAY_ADDRESS")
    # joining a cluster: every process of the job gets its address (Ray Train's PlacementGroupCleaner
    # otherwise looks the cluster up by scanning the machine and can find another one there)
    env = runtime_env({**({"RAY_ADDRESS": address} if address else {}), **console.ray_env_vars(),
                       **(extra_env or {})})
    quiet = console.ray_init_options()   # Ray's INFO chatter hidden unless --verbose (platform.console)
    job_env = _job_runtime_env()
    if address and job_env.get("working_dir"):
        # under `ray job submit --working-dir`: the job already ships the repository, and Ray refuses
        # a second working_dir from ray.init ("Failed to merge the Job's runtime env"): add env vars only
        job_vars = job_env.get("env_vars") or {}
        env_vars = {k: v for k, v in env["env_vars"].items() if k not in job_vars}
        ray.init(address=address, runtime_env={"env_vars": env_vars}, log_to_driver=True, **quiet)
        return f"joined the Ray cluster at {address} as a Ray job (code from the job's working_dir)"
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=True, **quiet)
        return f"joined the Ray cluster at {address}"
    # A new local cluster (address="local": never attach to one some `ray start` left running here),
    # with enough logical CPUs for the requested workers even on a small machine
    need = cfg.platform.num_workers * cfg.platform.cpus_per_worker
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, need), runtime_env=env, log_to_driver=True,
             **quiet)
    where = "127.0.0.1 only" if ray.util.get_node_ip_address() == "127.0.0.1" else ray.util.get_node_ip_address()
    return f"started a local Ray cluster ({max(os.cpu_count() or 1, need)} CPUs, listening on {where})"


def build_trainer(cfg: Config, loop_config: dict, run_name: str, callbacks: list | None = None,
                  queue_for_capacity: bool = False):
    """The Ray Train V2 ``TorchTrainer`` of a training run (``RunConfig.name`` = ``run_name``).

    Each (re)start of the workers waits at most ``platform.resource_wait_s`` for their resources,
    then the run fails (Ray Train's default: 60 s, then again, forever). ``queue_for_capacity``
    (a sweep's trials, which queue for each other's CPUs / GPUs) keeps Ray Train's retries.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from platform.console import train_logging_config
    from platform.failures import WORKER_GROUP_START_TIMEOUT_ENV
    from platform.worker import train_loop_per_worker

    p = cfg.platform
    if not queue_for_capacity:   # read by Ray Train from the driver's environment
        os.environ[WORKER_GROUP_START_TIMEOUT_ENV] = str(p.resource_wait_s)
    resources = {"CPU": p.cpus_per_worker}
    if p.use_gpu:
        resources["GPU"] = p.gpus_per_worker
    scaling = ScalingConfig(num_workers=p.num_workers, use_gpu=p.use_gpu, resources_per_worker=resources,
                            placement_strategy=p.placement_strategy)
    run_config = RunConfig(
        name=run_name,
        storage_path=p.storage_path,
        failure_config=FailureConfig(max_failures=p.max_failures,
                                     controller_failure_limit=-1 if queue_for_capacity else 0),
        checkpoint_config=CheckpointConfig(num_to_keep=p.num_to_keep),
        callbacks=callbacks,
        logging_config=train_logging_config(),
    )
    return TorchTrainer(train_loop_per_worker, train_loop_config=loop_config, scaling_config=scaling,
                        run_config=run_config, torch_config=TorchConfig(backend="nccl" if p.use_gpu else "gloo"))


def model_from_checkpoint(path: str | Path, config: str | None = None, overrides: list[str] | None = None):
    """Rebuild the trained model of a checkpoint: ``(model in eval mode, cfg, checkpoint dict)``.

    The config is the checkpoint's own unless ``config`` names a file; ``overrides`` apply on top
    (e.g. ``data.val.ann_file=...`` to evaluate on another set).
    """
    from codetr import build_model
    from codetr.config import config_from_dict
    from codetr.config.loader import apply_overrides
    from codetr.engine import load_checkpoint

    state = load_checkpoint(path)
    if config:
        cfg = load_run_config(config, list(overrides or []))
    else:
        cfg = absolutize_paths(config_from_dict(apply_overrides(state["config"], list(overrides or []))))
    model = build_model(cfg, num_classes=state.get("num_classes"))
    model.load_state_dict(state["model"])
    return model.eval(), cfg, state
