"""An ended trial's placement group is removed by the sweep driver (real local Ray cluster)."""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

ray = pytest.importorskip("ray")

from platform.sweep.resources import (PLACEMENT_GROUP_KEY, ReleaseTrialResources,  # noqa: E402
                                      placement_group_state)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _trial(trial_id: str, pg_hex: str, finished: bool):
    """What the callback reads of a Tune trial: its id and last result."""
    return SimpleNamespace(trial_id=trial_id, last_result={PLACEMENT_GROUP_KEY: pg_hex, "finished": finished})


def _cpus_free(n: int) -> bool:
    deadline = time.time() + 10
    while ray.available_resources().get("CPU", 0) < n and time.time() < deadline:
        time.sleep(0.1)
    return ray.available_resources().get("CPU", 0) == n


def test_every_ended_trials_group_is_removed_after_the_delay(local_ray):
    """Tune ends a trial's process (finished, stopped, failed) before its Train controller may have
    removed its group; the callback removes each one, once, after the delay."""
    from ray.util.placement_group import placement_group, remove_placement_group

    groups = {name: placement_group([{"CPU": 1}]) for name in ("stopped", "finished", "failed")}
    ray.get([g.ready() for g in groups.values()])
    assert _cpus_free(0)
    trials = {name: _trial(f"t_{name}", g.id.hex(), finished=name == "finished") for name, g in groups.items()}
    callback = ReleaseTrialResources(delay_s=0.5)
    for trial in trials.values():
        callback.on_trial_result(0, [], trial, trial.last_result)
    callback.on_trial_complete(0, [], trials["stopped"])
    callback.on_trial_complete(0, [], trials["finished"])
    callback.on_trial_error(0, [], trials["failed"])
    callback.on_step_begin(0, [])       # before the delay: the trial process may still be exiting
    assert all(placement_group_state(g.id.hex()) == "CREATED" for g in groups.values())
    remove_placement_group(groups["finished"])    # as when the Train controller got there first
    time.sleep(0.6)
    callback.on_step_begin(1, [])
    assert all(placement_group_state(g.id.hex()) == "REMOVED" for g in groups.values())
    assert sorted(callback.released) == ["t_failed", "t_stopped"] and not callback.pending
    assert _cpus_free(3)
    callback.on_trial_complete(2, [], trials["stopped"])      # a second end of the same trial is harmless
    callback.on_experiment_end([])
    assert not callback.pending


def test_groups_still_pending_are_removed_when_the_experiment_ends(local_ray):
    from ray.util.placement_group import placement_group

    group = placement_group([{"CPU": 1}])
    ray.get(group.ready())
    trial = _trial("t_last", group.id.hex(), finished=True)
    callback = ReleaseTrialResources(delay_s=60)
    callback.on_trial_result(0, [], trial, trial.last_result)
    callback.on_trial_complete(0, [], trial)
    callback.on_experiment_end([])
    assert placement_group_state(group.id.hex()) == "REMOVED" and _cpus_free(3)
