"""The checkpoints of a run in Ray Train storage: list them, find the latest, load the newest readable one;
the trained model of a checkpoint.

Ray Train keeps a run's checkpoints as ``<storage_path>/<run name>/checkpoint_<timestamp>/checkpoint.pt``
(local folder, shared mount or cloud URI: listed through pyarrow's file systems, as Ray does).
Timestamped names sort oldest to newest.

At a resume (Ray's restart after a worker failure, or the same ``platform.run_name`` again), the
latest checkpoint may be unreadable: a truncated copy, a file replaced by hand. Then every worker
names the file, falls back to the previous checkpoint and says so; all workers read the same
files, so they take the same decision. Only when none is readable does the resume fail, with a
:class:`codetr.errors.CheckpointError` naming each file tried.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pyarrow.fs

from codetr import build_model
from codetr.config import config_from_dict
from codetr.config.loader import apply_overrides
from codetr.engine import CHECKPOINT_FILE, load_checkpoint
from codetr.errors import CheckpointError
from platform.core.config_files import absolutize_paths, load_run_config

CHECKPOINT_PREFIX = "checkpoint_"


def run_storage(storage_path: str, run_name: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """``(file system, path of the run's folder on it)`` for a local path or a URI."""
    if "://" in storage_path:
        fs, base = pyarrow.fs.FileSystem.from_uri(storage_path)
    else:
        fs, base = pyarrow.fs.LocalFileSystem(), str(Path(storage_path).resolve())
    return fs, f"{base.rstrip('/')}/{run_name}"


def list_checkpoints(fs: pyarrow.fs.FileSystem, run_dir: str) -> list[str]:
    """Checkpoint folders of ``run_dir`` that hold a checkpoint file, newest first (paths on ``fs``)."""
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(run_dir, allow_not_found=True))
    except OSError:
        return []
    folders = sorted((i.path for i in infos if i.type == pyarrow.fs.FileType.Directory
                      and i.base_name.startswith(CHECKPOINT_PREFIX)), reverse=True)
    return [f for f in folders if fs.get_file_info(f"{f}/{CHECKPOINT_FILE}").type == pyarrow.fs.FileType.File]


def latest_checkpoint(storage_path: str, run_name: str) -> str | None:
    """The newest checkpoint folder of a run (a local path, or a URI for remote storage); None if none."""
    try:
        fs, run_dir = run_storage(storage_path, run_name)
    except (OSError, ValueError):
        return None
    found = list_checkpoints(fs, run_dir)
    if not found:
        return None
    if "://" in storage_path:
        scheme = storage_path.split("://", 1)[0]
        return f"{scheme}://{found[0]}"
    return found[0]


def _load(checkpoint) -> dict[str, Any]:
    """Load a ``ray.train.Checkpoint``; errors name the file where it lives, not a temporary copy."""
    try:
        with checkpoint.as_directory() as folder:
            return load_checkpoint(folder)
    except CheckpointError as e:
        raise CheckpointError(f"{checkpoint.path}/{CHECKPOINT_FILE}", e.reason) from None
    except FileNotFoundError:
        raise CheckpointError(f"{checkpoint.path}/{CHECKPOINT_FILE}", "missing") from None


def older_checkpoints(checkpoint) -> list:
    """The run's checkpoints older than ``checkpoint`` (a ``ray.train.Checkpoint``), newest first."""
    parent = checkpoint.path.rstrip("/").rsplit("/", 1)[0]
    name = checkpoint.path.rstrip("/").rsplit("/", 1)[-1]
    return [type(checkpoint)(path, filesystem=checkpoint.filesystem)   # the same class: Ray Train's or Tune's
            for path in list_checkpoints(checkpoint.filesystem, parent) if path.rsplit("/", 1)[-1] < name]


def load_with_fallback(checkpoint, warn: Callable[[str], None]) -> tuple[dict[str, Any], Any]:
    """Load ``checkpoint``, else the newest older one that loads. Returns ``(state, checkpoint used)``.

    ``warn`` receives one line per unreadable checkpoint. Raises CheckpointError when none loads.
    """
    tried = []
    for candidate in [checkpoint, *older_checkpoints(checkpoint)]:
        try:
            return _load(candidate), candidate
        except CheckpointError as e:
            tried.append(str(e))
            warn(f"{e}; falling back to the previous checkpoint")
    raise CheckpointError(f"{checkpoint.path}/{CHECKPOINT_FILE}",
                          f"no readable checkpoint to resume from (tried {len(tried)}: " + "; ".join(tried) + ")")


def model_from_checkpoint(path: str | Path, config: str | None = None, overrides: list[str] | None = None):
    """Rebuild the trained model of a checkpoint: ``(model in eval mode, cfg, checkpoint dict)``.

    The config is the checkpoint's own unless ``config`` names a file; ``overrides`` apply on top
    (e.g. ``data.val.ann_file=...`` to evaluate on another set).
    """
    state = load_checkpoint(path)
    if config:
        cfg = load_run_config(config, list(overrides or []))
    else:
        cfg = absolutize_paths(config_from_dict(apply_overrides(state["config"], list(overrides or []))))
    model = build_model(cfg, num_classes=state.get("num_classes"))
    model.load_state_dict(state["model"])
    return model.eval(), cfg, state
