"""The Ray cluster of a command: join ``RAY_ADDRESS`` (or the cluster of a ``ray job submit``) or start a
local one, with the repository as the runtime env's working dir (workers import ``platform`` and ``codetr``
from it; other nodes get the code this way too)."""
from __future__ import annotations

import json
import os
from typing import Any

import ray

from codetr.config import Config
from platform.core import console
from platform.core.config_files import REPO_ROOT

# Not uploaded with the working dir to Ray workers (gitignore patterns; .gitignore is honoured too).
# Folders anchored at the root: an unanchored "data/" also dropped the package codetr/data, which the
# workers then imported from wherever the project happened to be installed (or not at all on other nodes).
UPLOAD_EXCLUDES = [".git/", ".venv/", "/venv/", "/data/", "/runs/", "/outputs/", "/mlruns/", "/mlartifacts/", "mlflow.db",
                   "*.db", "*.pt", "*.pth", ".pytest_cache/", "__pycache__/"]


def runtime_env(extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Ray runtime env: the repository as working_dir (workers import ``platform`` and ``codetr`` from it)."""
    # no Ray Train print patch: it echoes every print of a worker a second time through logging
    env_vars = {"PYTHONUNBUFFERED": "1", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    env_vars.update(extra_env or {})
    return {"working_dir": str(REPO_ROOT), "excludes": UPLOAD_EXCLUDES, "env_vars": env_vars}


def _job_runtime_env() -> dict:
    """The runtime env of the Ray job this process is the entrypoint of ({} outside a job)."""
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    return job.get("runtime_env", job) or {}


def init_ray(cfg: Config, extra_env: dict[str, str] | None = None) -> str:
    """Join the cluster of ``RAY_ADDRESS`` (e.g. under ``ray job submit``), else start a local one.

    Returns a short description of what it did.
    """
    if ray.is_initialized():
        return "Ray already initialised"
    console.configure_driver()
    address = os.environ.get("RAY_ADDRESS")
    # joining a cluster: every process of the job gets its address (Ray Train's PlacementGroupCleaner
    # otherwise looks the cluster up by scanning the machine and can find another one there)
    env = runtime_env({**({"RAY_ADDRESS": address} if address else {}), **console.ray_env_vars(),
                       **(extra_env or {})})
    quiet = console.ray_init_options()   # Ray's INFO chatter hidden unless --verbose (platform.core.console)
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
    # no dashboard unless asked for (platform.ray_dashboard): on a laptop its processes take CPU from the
    # model (benchmarks/run_breakdown.py); MLflow is the run's UI
    if not cfg.platform.ray_dashboard:
        env["worker_process_setup_hook"] = console.SETUP_HOOK   # the cleaner's warnings (platform.core.console)
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, need), runtime_env=env, log_to_driver=True,
             include_dashboard=cfg.platform.ray_dashboard, **quiet)
    where = "127.0.0.1 only" if ray.util.get_node_ip_address() == "127.0.0.1" else ray.util.get_node_ip_address()
    return f"started a local Ray cluster ({max(os.cpu_count() or 1, need)} CPUs, listening on {where})"
