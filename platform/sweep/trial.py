"""One trial of a sweep, as Tune runs it: the trial's config from its sampled values, its MLflow child run,
and its training: the single-run ``TorchTrainer`` (:mod:`platform.train.trainer`) with a
``TuneReportCallback``, or (one worker, ``trial_runner: auto``) the same worker function inside the trial's
own process (:class:`platform.train.hosts.TuneTrialHost`)."""
from __future__ import annotations

import os
import socket
import threading
from typing import Any

import ray.tune
from mlflow.tracking import MlflowClient
from ray import tune
from ray.train._internal.session import get_session
from ray.tune.integration.ray_train import TuneReportCallback

from codetr.config import to_dict
from platform.sweep.naming import naming_values, trial_dirname, trial_identity, trial_label, trial_values
from platform.sweep.spec import trial_config
from platform.tracking.sweep_runs import (CONFIG_ID_TAG, CONFIG_LABEL_TAG, HOST_TAG, PID_TAG, SEED_TAG, end_child,
                                          open_child_run)
from platform.train.hosts import TuneTrialHost
from platform.train.records import RunData, log_run_inputs
from platform.train.trainer import build_trainer
from platform.train.worker import make_loop_config, run_worker

TRAIN_RUNS_DIR = "train_runs"     # under <storage>/<sweep name>/: the Ray Train folders of the trials



def run_trial(config: dict[str, Any], context: dict[str, Any]) -> None:
    """Tune driver function of one trial: the single-run TorchTrainer for this trial's config, or
    (``context["inline"]``) the same worker function in this process.

    ``config``: the sampled values by dotted key; ``context`` (from :func:`make_trial_context`): the
    base config dict, the swept keys, MLflow parent and tracking URI, the Train storage folder.
    """
    trial_id = ray.tune.get_context().get_trial_id()
    values = trial_values(config, context["keys"])
    config_id, _ = trial_identity(config)
    named = naming_values(config, context["keys"])
    cfg = trial_config(context["base"], named)   # the seed of a repeat is train.seed
    run_name = trial_dirname(trial_id, named)
    cfg.platform.run_name = run_name
    cfg.platform.storage_path = context["train_storage"]
    cfg.platform.experiment_name = context["experiment_name"]
    tracking_uri = context["tracking_uri"]

    # the trial's process (an inline trial trains in it): what `kill` or a lost node takes away
    identity_tags = {CONFIG_ID_TAG: config_id or trial_id, CONFIG_LABEL_TAG: trial_label(values),
                     SEED_TAG: str(cfg.train.seed), PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    run_id, resumed = open_child_run(tracking_uri, context["experiment_name"], context["parent_run_id"], trial_id,
                                     run_name, trial_label(named), values, context["sweep_name"],
                                     extra_tags={**context.get("source_tags", {}), **identity_tags,
                                                 "mlflow.runName": trial_label(named)})
    log_run_inputs(tracking_uri, run_id, cfg, context["data"], log_config=not resumed)
    print(f"[sweep] trial {trial_label(named)}: MLflow run {run_id} ({'resumed' if resumed else 'new'})", flush=True)

    loop_config = make_loop_config(to_dict(cfg), tracking_uri=tracking_uri, mlflow_run_id=run_id, sweep_trial=True)
    if context.get("inline"):
        # Tune stopping this trial (its scheduler) ends run_worker at its next report (SystemExit);
        # the driver's ChildRunStatusCallback then closes the child run
        run_worker(loop_config, TuneTrialHost(use_gpu=cfg.platform.use_gpu))
        end_child(MlflowClient(tracking_uri), run_id, "FINISHED", "finished")
        return
    fitted = threading.Event()
    _exit_when_stopped(fitted)
    build_trainer(cfg, loop_config, run_name, callbacks=[TuneReportCallback()], queue_for_capacity=True).fit()
    # Only a completed run is closed here: a trial that Tune stops (ASHA) or that fails is closed by
    # ChildRunStatusCallback in the sweep driver.
    end_child(MlflowClient(tracking_uri), run_id, "FINISHED", "finished")
    fitted.set()

def _exit_when_stopped(fitted: threading.Event) -> None:
    """When Tune stops this trial (ASHA) while its TorchTrainer still runs, end this process.

    Tune only signals the function's session and drops the trial actor later, so the trial's Train
    controller and workers would go on training, holding their CPUs / GPUs. Exiting the trial actor
    takes its Train controller and workers down with it at once; their placement group outlives
    them (Ray keeps it while the job runs) and is removed by the driver
    (:mod:`platform.sweep.resources`).
    """
    session = get_session()
    stop_event = getattr(session, "stop_event", None)
    if stop_event is None:
        return

    def watch() -> None:
        stop_event.wait()
        if not fitted.wait(timeout=2.0):
            print("[sweep] trial stopped by Tune: ending its Ray Train run", flush=True)
            os._exit(0)

    threading.Thread(target=watch, name="sweep-trial-stop-watch", daemon=True).start()


def make_trial_context(spec, base_dict: dict, *, tracking_uri: str, parent_run_id: str, data: RunData,
                       source_tags: dict[str, str] | None = None) -> dict[str, Any]:
    """What every trial needs from the driver (``data``: the number of classes, training images and the
    MLflow dataset descriptions; ``source_tags``: where the sweep came from, computed here because trials
    run in Ray's copy of the repository; ``inline``: trials train in their Tune trial's process,
    ``resources``: what each trial reserves)."""
    p = base_dict["platform"]
    resources = {"CPU": p["num_workers"] * p["cpus_per_worker"]}
    if p["use_gpu"]:
        resources["GPU"] = p["num_workers"] * p["gpus_per_worker"]
    return {"base": base_dict, "keys": spec.keys, "tracking_uri": tracking_uri, "parent_run_id": parent_run_id,
            "inline": spec.uses_inline_trials(), "resources": resources,
            "experiment_name": spec.experiment_name, "sweep_name": spec.name,
            "train_storage": f"{spec.storage_path.rstrip('/')}/{spec.name}/{TRAIN_RUNS_DIR}",
            "tune_storage": f"{spec.storage_path.rstrip('/')}/{spec.name}",
            "data": data, "source_tags": dict(source_tags or {})}


def trainable(context: dict[str, Any]):
    """The Tune trainable: :func:`run_trial` with the context bound.

    An inline trial reserves its worker's CPUs / GPUs itself. Otherwise the trial's Train workers
    reserve them (the Train controller is a 0-CPU actor) and the driver function only waits, with no
    CPU of its own: Tune refuses an all-zero request, so it asks for 1 byte of memory.
    """
    resources = context["resources"] if context.get("inline") else {"CPU": 0, "memory": 1}
    return tune.with_resources(tune.with_parameters(run_trial, context=context), resources)
