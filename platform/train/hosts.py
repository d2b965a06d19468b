"""Where a training run's workers get their rank, device, checkpoint and report: Ray Train, or a Tune trial.

The per-worker function (:func:`platform.train.worker.train_loop_per_worker`) talks to its host through
one of these:

- :class:`RayTrainHost`: a worker of a Ray Train ``TorchTrainer`` (``platform.train``, and sweep
  trials with several workers or ``trial_runner: ray_train``): ranks, DDP, the data loaders'
  distributed samplers and checkpoints persisted by Ray Train, ``ray.train.report``.
- :class:`TuneTrialHost`: a single-worker sweep trial that trains inside its Tune trial's own
  process (``trial_runner: auto``). No Train controller, no worker actor, no placement group and no
  process group per trial: the trial process is reused by the next trial (``reuse_actors``), its
  imports warm; the trial's CPUs / GPUs are reserved by Tune. Results and checkpoints go to Tune
  (``ray.tune.report``); a resumed trial gets its latest checkpoint from ``ray.tune.get_checkpoint``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import ray.tune
import torch
from ray.util import get_current_placement_group


class RayTrainHost:
    """One worker of a Ray Train run."""

    inline = False

    def __init__(self) -> None:
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.local_rank, self.node_rank = context.get_local_rank(), context.get_node_rank()
        self.experiment_name = context.get_experiment_name()

    def prepare_loader(self, loader, *, add_dist_sampler: bool):
        return ray.train.torch.prepare_data_loader(loader, add_dist_sampler=add_dist_sampler, move_to_device=False)

    def prepare_model(self, model, *, find_unused_parameters: bool):
        return ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={"find_unused_parameters": find_unused_parameters,
                                             # gradients live in DDP's buckets: no copy in and out per step
                                             "gradient_as_bucket_view": True})

    def device(self):
        return ray.train.torch.get_device()

    def checkpoint(self):
        """This run's latest ``ray.train.Checkpoint`` (None on a fresh start)."""
        return ray.train.get_checkpoint()

    def placement_group_id(self) -> str | None:
        """The hex id of the workers' placement group (a sweep releases the group of a trial it stops)."""
        group = get_current_placement_group()
        return None if group is None else group.id.hex()

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """``ray.train.report`` (a barrier on every worker), with rank 0's checkpoint folder when written."""
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


class TuneTrialHost:
    """A one-worker run in the Tune trial's own process (rank 0 of 1)."""

    inline = True
    rank, world_size, local_rank, node_rank = 0, 1, 0, 0

    def __init__(self, use_gpu: bool = False) -> None:
        self.experiment_name = ray.tune.get_context().get_trial_name()
        self.use_gpu = use_gpu

    def prepare_loader(self, loader, *, add_dist_sampler: bool):
        return loader

    def prepare_model(self, model, *, find_unused_parameters: bool):
        return model.to(self.device())

    def device(self):
        # Ray sets CUDA_VISIBLE_DEVICES of the trial process to the GPU(s) Tune reserved for it
        return torch.device("cuda", 0) if self.use_gpu and torch.cuda.is_available() else torch.device("cpu")

    def checkpoint(self):
        return ray.tune.get_checkpoint()

    def placement_group_id(self) -> str | None:
        return None   # Tune's own trial resources: Tune frees them when the trial ends

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """``ray.tune.report``: Tune persists the checkpoint into the trial's folder. When Tune has
        stopped the trial (its scheduler), this call ends the trial's thread (SystemExit)."""
        checkpoint = ray.tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.tune.report(metrics, checkpoint=checkpoint)
