"""Broken checkpoints: named errors, weights-only loading, fallback to the previous checkpoint.

Real files: checkpoints written by ``save_checkpoint`` into a Ray-Train-style run folder, then
truncated, replaced by a foreign file, or made to carry code; real ``ray.train.Checkpoint`` objects.
"""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from codetr.engine import CHECKPOINT_FILE, capture_rng_state, load_checkpoint, save_checkpoint
from codetr.errors import CheckpointError
from platform.core.checkpoints import latest_checkpoint, load_with_fallback

NAMES = ["checkpoint_2026-01-01_10-00-00.000001", "checkpoint_2026-01-01_10-05-00.000001",
         "checkpoint_2026-01-01_10-10-00.000001"]


def _run_folder(tmp_path, iterations=(4, 8, 12)):
    run = tmp_path / "runs" / "r1"
    for name, iteration in zip(NAMES, iterations):
        save_checkpoint(run / name / CHECKPOINT_FILE, {"iteration": iteration, "model": {"w": torch.full((2,), 1.0 * iteration)},
                                                       "rng_states": [capture_rng_state()], "config": {"a": [1, None]}})
    return run


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class Evil:
    def __reduce__(self):
        return os.system, ("echo this ran",)


@pytest.mark.parametrize("damage, reason", [
    ("truncate", "truncated or corrupt"),
    ("empty", "truncated or corrupt"),
    ("text", "truncated or corrupt"),
    ("foreign", "not a codetr-checkpoint/1 checkpoint"),
    ("code", "refused: it holds objects other than tensors"),
])
def test_a_bad_checkpoint_file_is_named_with_what_is_wrong(tmp_path, damage, reason):
    path = tmp_path / "c" / CHECKPOINT_FILE
    save_checkpoint(path, {"iteration": 1})
    if damage == "truncate":
        _truncate(path)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":
        path.write_text("not a checkpoint")
    elif damage == "foreign":
        torch.save({"state_dict": {"w": torch.ones(1)}}, path)
    else:
        torch.save({"format": "codetr-checkpoint/1", "payload": Evil()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path.parent)
    assert info.value.path == str(path) and reason in str(info.value) and str(path) in str(info.value)
    assert "Traceback" not in str(info.value) and len(str(info.value).splitlines()) == 1
    assert pickle.loads(pickle.dumps(info.value)).path == str(path)


def test_checkpoints_from_before_the_numpy_rng_change_still_load(tmp_path):
    import random

    import numpy as np

    path = tmp_path / CHECKPOINT_FILE
    torch.save({"format": "codetr-checkpoint/1", "rng_states": [{"python": random.getstate(),
                "numpy": np.random.get_state(), "torch": torch.get_rng_state()}]}, path)
    assert load_checkpoint(path)["rng_states"][0]["numpy"][1].dtype == np.uint32


def test_latest_checkpoint_is_the_newest_folder_with_a_file(tmp_path):
    run = _run_folder(tmp_path)
    (run / "checkpoint_2099-01-01_00-00-00.000000").mkdir()       # an empty folder (a crashed upload)
    assert latest_checkpoint(str(tmp_path / "runs"), "r1") == str(run / NAMES[-1])
    assert latest_checkpoint(str(tmp_path / "runs"), "nothing-here") is None


def test_resume_falls_back_to_the_previous_readable_checkpoint(tmp_path):
    from ray.train import Checkpoint

    run = _run_folder(tmp_path)
    _truncate(run / NAMES[2] / CHECKPOINT_FILE)
    torch.save({"not": "ours"}, run / NAMES[1] / CHECKPOINT_FILE)
    warnings: list[str] = []
    state, used = load_with_fallback(Checkpoint(str(run / NAMES[2])), warnings.append)
    assert state["iteration"] == 4 and used.path.endswith(NAMES[0])
    assert len(warnings) == 2
    assert str(run / NAMES[2] / CHECKPOINT_FILE) in warnings[0] and "truncated" in warnings[0]
    assert str(run / NAMES[1] / CHECKPOINT_FILE) in warnings[1] and "not a codetr-checkpoint" in warnings[1]
    assert all("falling back to the previous checkpoint" in w for w in warnings)


def test_resume_with_no_readable_checkpoint_names_every_file_tried(tmp_path):
    from ray.train import Checkpoint

    run = _run_folder(tmp_path, iterations=(4, 8))
    for name in NAMES[:2]:
        _truncate(run / name / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match="no readable checkpoint to resume from \\(tried 2") as info:
        load_with_fallback(Checkpoint(str(run / NAMES[1])), lambda line: None)
    assert str(run / NAMES[0] / CHECKPOINT_FILE) in str(info.value)
