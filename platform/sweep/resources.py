"""Give an ended trial's CPUs / GPUs back to the cluster.

A trial's Ray Train run reserves its workers' resources in a placement group that Train creates
from its controller actor. Tune ends a trial's process as soon as the trial is over (finished,
stopped by ASHA, failed), which takes the Train controller down, often before it has removed the
group itself; and Ray removes a placement group only once both its creating actor and its job are
gone, while the job (the sweep) goes on. Ray Train leaves that removal to a detached cleaner actor
that polls the state API; where that API cannot reach the cluster (a stale
``/tmp/ray/ray_current_cluster`` from an earlier ``ray start``, several Ray instances on one
machine) the cleaner dies and the next trials wait forever for CPUs that nobody uses.

So the workers report their placement group's id with every result (``PLACEMENT_GROUP_KEY``), and
:class:`ReleaseTrialResources` (a Tune callback in the sweep driver) removes the group of every
trial that ended, a few seconds after the end, once the trial process has exited (so its
controller cannot start a replacement group). A group already removed is left alone.
"""
from __future__ import annotations

import time

import ray
from ray.tune import Callback
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

PLACEMENT_GROUP_KEY = "placement_group_id"   # hex id, in the results the workers report
RELEASE_DELAY_S = 5.0


def placement_group_state(pg_hex: str) -> str | None:
    """``CREATED`` / ``PENDING`` / ``REMOVED`` / ... of a placement group by hex id (None: unknown)."""
    table = placement_group_table(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_hex))))
    return table.get("state") if table else None


def release_placement_group(pg_hex: str) -> bool:
    """Remove the placement group unless it is gone already. Returns whether it removed it."""
    if placement_group_state(pg_hex) in (None, "REMOVED"):
        return False
    remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_hex))))
    return True


class ReleaseTrialResources(Callback):
    """Tune callback: remove the placement group of each trial that ended (any reason)."""

    def __init__(self, delay_s: float = RELEASE_DELAY_S):
        self.delay_s = delay_s
        self.groups: dict[str, str] = {}            # trial id -> its Train run's placement group
        self.pending: list[tuple[float, str, str]] = []   # (when, trial id, placement group)
        self.released: list[str] = []               # trial ids whose group this callback removed

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        pg_hex = result.get(PLACEMENT_GROUP_KEY)
        if pg_hex:
            self.groups[trial.trial_id] = pg_hex

    def _ended(self, trial) -> None:
        pg_hex = self.groups.pop(trial.trial_id, None)
        if pg_hex:
            self.pending.append((time.monotonic() + self.delay_s, trial.trial_id, pg_hex))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._ended(trial)    # finished, or stopped by the scheduler

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._ended(trial)

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        now, waiting = time.monotonic(), []
        for due, trial_id, pg_hex in self.pending:
            if due > now:
                waiting.append((due, trial_id, pg_hex))
                continue
            try:
                if release_placement_group(pg_hex):
                    self.released.append(trial_id)
                    print(f"[sweep] released the resources of ended trial {trial_id} "
                          f"(placement group {pg_hex})", flush=True)
            except Exception as e:   # noqa: BLE001 - never let cleanup end the sweep
                print(f"[sweep] could not release placement group {pg_hex} of trial {trial_id}: {e}", flush=True)
        self.pending = waiting

    def on_experiment_end(self, trials: list, **info) -> None:
        for _, trial_id, pg_hex in self.pending:
            try:
                release_placement_group(pg_hex)
            except Exception:   # noqa: BLE001
                pass
        self.pending = []
