"""A checkpoint write that fails (the disk full, a folder that cannot exist) leaves the previous checkpoint
as it was, leaves no temporary file, and raises CheckpointWriteError naming the path and the cause.

"Disk full" is a real failed write(2): the process's file-size limit (RLIMIT_FSIZE) is lowered below the
checkpoint's size for the duration of the write (Python ignores SIGXFSZ, so the write fails with EFBIG,
as it fails with ENOSPC on a full disk: an OSError from the file, which torch.save hides in its own
RuntimeError).
"""
from __future__ import annotations

import pickle
import resource

import pytest
import torch

from codetr.engine.checkpoint import load_checkpoint, save_checkpoint
from codetr.errors import CheckpointWriteError


def _state(n: int) -> dict:
    return {"model": {"w": torch.arange(n, dtype=torch.float32)}, "epoch": n}


def test_a_write_that_runs_out_of_space_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(path, _state(10))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, hard))     # the next checkpoint is 400 kB
    try:
        with pytest.raises(CheckpointWriteError) as info:
            save_checkpoint(path, _state(100_000))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    error = info.value
    assert error.path == str(path) and error.cause == "File too large (errno 27)"
    assert str(error).startswith(f"checkpoint {path} could not be written: File too large (errno 27)")
    assert isinstance(error, OSError)
    assert load_checkpoint(path)["epoch"] == 10                   # the previous one, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]   # no temporary file left
    copy = pickle.loads(pickle.dumps(error))                        # crosses Ray whole
    assert (type(copy), copy.path, copy.cause) == (CheckpointWriteError, error.path, error.cause)


def test_a_folder_that_cannot_be_made_names_the_path(tmp_path):
    (tmp_path / "runs").write_text("a file where the storage folder should be")
    path = tmp_path / "runs" / "r" / "checkpoint.pt"
    with pytest.raises(CheckpointWriteError) as info:
        save_checkpoint(path, _state(3))
    assert info.value.path == str(path) and "Not a directory" in info.value.cause
