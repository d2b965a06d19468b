"""Training checkpoints: one ``torch.save`` file, written atomically, with RNG states.

A checkpoint is a dict::

    {"format": "codetr-checkpoint/1", "model": state_dict, "optimizer": ..., "scheduler": ...,
     "epoch": completed epochs, "iteration": completed iterations, "rng_states": [per rank],
     "config": to_dict(cfg), "num_classes": int, "category_names": [...], "metrics": {...},
     "best": {"metric": name, "value": float} | None}

``save_checkpoint`` writes to a temporary file in the same folder and renames it over the
target, so a crash mid-write never leaves a truncated checkpoint behind; a write that fails (no space
left, a read-only folder) removes its temporary file, leaves the previous checkpoint as it was and
raises :class:`codetr.errors.CheckpointWriteError` naming the path and the cause.

``load_checkpoint`` unpickles with ``torch.load(weights_only=True)``: tensors, numbers, strings
and containers only, so a checkpoint from elsewhere cannot run code. NumPy's RNG state is stored
as a tensor; checkpoints written before that hold a NumPy array, allowed by name
(:data:`_NUMPY_GLOBALS`). Any file that is not a readable checkpoint of this format raises
:class:`codetr.errors.CheckpointError` naming it.
"""
from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from codetr.errors import CheckpointError, CheckpointWriteError, describe_os_error

CHECKPOINT_FORMAT = "codetr-checkpoint/1"
CHECKPOINT_FILE = "checkpoint.pt"


# what an older checkpoint's NumPy RNG state (an ndarray of uint32) needs to unpickle under weights_only
_NUMPY_GLOBALS = [np.ndarray, np.dtype, type(np.dtype(np.uint32)),
                  (getattr(np, "_core", None) or np.core).multiarray._reconstruct]


def capture_rng_state() -> dict[str, Any]:
    """The RNG states of Python, NumPy, torch CPU and (when present) CUDA (plain values and tensors)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else keys
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu() if isinstance(state["torch"], torch.Tensor) else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (or ``model`` itself)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically ``torch.save`` ``state`` (tagged with the checkpoint format) to ``path``."""
    path = Path(path)
    tmp, writer = None, None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            writer = _WriteErrors(f)
            torch.save({"format": CHECKPOINT_FORMAT, **state}, writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        # torch.save turns a failed write into its own RuntimeError ("unexpected pos ..."): the cause
        # is the OSError its writer saw
        cause = writer.error if writer is not None and writer.error is not None else e
        if isinstance(cause, OSError):
            raise CheckpointWriteError(str(path), describe_os_error(cause)) from e
        raise
    return path


class _WriteErrors:
    """A binary file for ``torch.save`` that keeps the first OSError of its writes (torch hides it)."""

    def __init__(self, file) -> None:
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.file.flush()


def resolve_checkpoint_file(path: str | Path) -> Path:
    """``path`` itself if it is a file, else ``path/checkpoint.pt`` (a Ray Train checkpoint folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (a file or a folder holding ``checkpoint.pt``)."""
    file = resolve_checkpoint_file(path)
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            state = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = [line.strip() for line in str(e).splitlines() if "global" in line.lower()]
        if found:   # weights_only refused a global: not a plain-data checkpoint
            raise CheckpointError(str(file), f"refused: it holds objects other than tensors and plain data "
                                             f"({found[0]})") from None
        detail = [line.strip() for line in str(e).splitlines() if line.strip()][-1:] or [type(e).__name__]
        raise CheckpointError(str(file), f"unreadable: truncated or corrupt ({detail[0][:200]})") from None
    except Exception as e:   # truncated zip, garbage bytes, an empty file: torch raises many kinds
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(str(file), f"unreadable: truncated or corrupt ({type(e).__name__}: {first})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format", "no 'format' entry") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(str(file), f"not a {CHECKPOINT_FORMAT} checkpoint (found {found})")
    return state
