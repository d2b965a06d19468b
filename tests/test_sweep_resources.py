"""A Tune-stopped trial's placement group is removed by the sweep driver (real local Ray cluster)."""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

ray = pytest.importorskip("ray")

from platform.sweep_resources import (PLACEMENT_GROUP_KEY, ReleaseStoppedTrials,  # noqa: E402
                                      placement_group_state)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _trial(trial_id: str, pg_hex: str, finished: bool):
    """What the callback reads of a Tune trial: its id and last result."""
    return SimpleNamespace(trial_id=trial_id, last_result={PLACEMENT_GROUP_KEY: pg_hex, "finished": finished})


def test_stopped_trials_group_is_removed_after_the_delay_finished_ones_are_left(local_ray):
    from ray.util.placement_group import placement_group

    stopped_pg, finished_pg = placement_group([{"CPU": 1}]), placement_group([{"CPU": 1}])
    ray.get([stopped_pg.ready(), finished_pg.ready()])
    assert ray.available_resources().get("CPU", 0) == 0
    stopped = _trial("t_stopped", stopped_pg.id.hex(), finished=False)
    finished = _trial("t_finished", finished_pg.id.hex(), finished=True)
    callback = ReleaseStoppedTrials(delay_s=0.5)
    for trial in (stopped, finished):
        callback.on_trial_result(0, [], trial, trial.last_result)
        callback.on_trial_complete(0, [], trial)
    callback.on_step_begin(0, [])       # before the delay: the trial process may still be exiting
    assert placement_group_state(stopped_pg.id.hex()) == "CREATED"
    time.sleep(0.6)
    callback.on_step_begin(1, [])
    assert placement_group_state(stopped_pg.id.hex()) == "REMOVED"
    assert placement_group_state(finished_pg.id.hex()) == "CREATED"   # a finished run removes its own
    assert callback.released == ["t_stopped"] and not callback.pending
    deadline = time.time() + 10
    while ray.available_resources().get("CPU", 0) < 1 and time.time() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) == 1
    callback.on_trial_complete(2, [], stopped)      # a second stop of the same group is harmless
    callback.on_experiment_end([])
    assert placement_group_state(stopped_pg.id.hex()) == "REMOVED"
