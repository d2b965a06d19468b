"""The Ray Tune ``Tuner`` of a sweep: search space, scheduler (ASHA or FIFO), search algorithm, trial
names and folders, and the restore of an interrupted sweep."""
from __future__ import annotations

import functools
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from platform.core.console import is_verbose
from platform.sweep.naming import GRID_KEY, naming_values, trial_dirname, trial_label
from platform.sweep.trial import trainable


def _trial_name(keys: list[str], trial) -> str:
    return f"{trial_label(naming_values(trial.config, keys))} ({trial.trial_id})"


def _trial_dirname(keys: list[str], trial) -> str:
    return trial_dirname(trial.trial_id, naming_values(trial.config, keys))


def build_tune_config(spec):
    if spec.scheduler["type"] == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", max_t=spec.scheduler["max_epochs"],
                                  grace_period=spec.scheduler["grace_period"],
                                  reduction_factor=spec.scheduler["reduction_factor"])
    else:
        scheduler = FIFOScheduler()
    search_alg = None
    # imported only when asked for: optuna and hyperopt are optional packages
    if spec.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch()
    elif spec.search_alg == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        search_alg = HyperOptSearch()
    # inline trials: the next trial reuses an ended trial's process (its imports, its warm caches)
    return tune.TuneConfig(metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples,
                           max_concurrent_trials=spec.max_concurrent_trials, scheduler=scheduler,
                           search_alg=search_alg, trial_name_creator=functools.partial(_trial_name, spec.keys),
                           trial_dirname_creator=functools.partial(_trial_dirname, spec.keys),
                           reuse_actors=spec.uses_inline_trials())


def param_space(spec) -> dict[str, Any]:
    """The Tune search space: the grid as one grid_search over its distinct combinations
    (``SweepSpec.grid_points``), the other domains as they are."""
    space = {key: domain.to_tune() for key, domain in spec.search_space.items() if domain.kind != "grid"}
    if spec.grid_points():
        space[GRID_KEY] = tune.grid_search(spec.trial_points())
    return space


def build_tuner(spec, context: dict[str, Any], callbacks: list, resume: bool, num_to_keep: int = 2,
                retry_failed: bool = False):
    """A new sweep's ``Tuner``, or (``resume``) the restored one: unfinished trials continue from their
    latest checkpoints; ``retry_failed`` also resumes the trials that were given up (errored), from their
    latest checkpoints (from the start without one); finished trials are kept as they are."""
    path = f"{spec.storage_path.rstrip('/')}/{spec.name}"
    if resume:
        return tune.Tuner.restore(path, trainable=trainable(context), param_space=param_space(spec),
                                  resume_unfinished=True, resume_errored=retry_failed, restart_errored=False)
    # Tune's trial tables are the sweep's progress display: its default level, every result with --verbose
    # checkpoint_config: the checkpoints of inline trials, kept by Tune in their trial folders
    run_config = tune.RunConfig(name=spec.name, storage_path=spec.storage_path, callbacks=callbacks,
                                # a trial whose process, worker or node is lost restarts from its latest checkpoint
                                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                                verbose=2 if is_verbose() else 1,
                                checkpoint_config=tune.CheckpointConfig(num_to_keep=num_to_keep))
    return tune.Tuner(trainable(context), param_space=param_space(spec), tune_config=build_tune_config(spec),
                      run_config=run_config)
