"""The Ray Train V2 ``TorchTrainer`` of a run, and fitting it so that Ctrl-C / SIGTERM reach the driver."""
from __future__ import annotations

import os
import threading

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from codetr.config import Config
from platform.core.console import train_logging_config
from platform.train.failures import WORKER_GROUP_START_TIMEOUT_ENV
from platform.train.rendezvous import RendezvousConfig
from platform.train.worker import train_loop_per_worker


def build_trainer(cfg: Config, loop_config: dict, run_name: str, callbacks: list | None = None,
                  queue_for_capacity: bool = False):
    """The Ray Train V2 ``TorchTrainer`` of a training run (``RunConfig.name`` = ``run_name``).

    Each (re)start of the workers waits at most ``platform.resource_wait_s`` for their resources,
    then the run fails (Ray Train's default: 60 s, then again, forever). ``queue_for_capacity``
    (a sweep's trials, which queue for each other's CPUs / GPUs) keeps Ray Train's retries. On a local
    cluster the workers' process group meets on 127.0.0.1 (:mod:`platform.train.rendezvous`).
    """
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
                        run_config=run_config, torch_config=RendezvousConfig(backend="nccl" if p.use_gpu else "gloo"))


def fit_interruptibly(trainer):
    """``trainer.fit()`` in a helper thread, so that Ctrl-C / SIGTERM reach this (main) thread.

    Ray Train installs its own SIGINT handler when ``fit`` runs in the main thread; it aborts the
    run but leaves no trace of *why* the run ended. Here a KeyboardInterrupt propagates to the
    caller, which records the MLflow run as KILLED and shuts Ray down (the controller and the
    workers belong to this driver and stop with it).
    """
    outcome: dict = {}

    def target():
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:   # re-raised in the main thread
            outcome["error"] = e

    thread = threading.Thread(target=target, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.5)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
