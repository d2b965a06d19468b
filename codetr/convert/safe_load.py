"""Loading checkpoint files that may come from anywhere, without running their code.

``torch.load(weights_only=True)`` unpickles tensors, containers and plain Python values only. An
mmcv / mmdetection checkpoint holds nothing else (``state_dict``, ``meta`` with strings, numbers,
the class names, an ``optimizer`` state), except sometimes NumPy scalars in ``meta``: those few
NumPy globals are allowed. Anything else is refused with the names of the globals it asks for, and
the caller can allow more by name, deliberately (``extra_globals``: ``"module.name"`` strings).
"""
from __future__ import annotations

import importlib
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _numpy_globals() -> list:
    out = [np.dtype, np.ndarray]
    for mod_name, attr in (("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                           ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")):
        try:
            out.append(getattr(importlib.import_module(mod_name), attr))
        except (ImportError, AttributeError):
            pass
    out += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return out


def _resolve(qualname: str):
    module, _, name = qualname.rpartition(".")
    if not module:
        raise ValueError(f"--allow-global needs module.name, got {qualname!r}")
    return getattr(importlib.import_module(module), name)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The file asks for Python objects beyond tensors and plain values."""

    def __init__(self, path: str, needed: Sequence[str] = (), detail: str = "") -> None:
        self.path, self.needed, self.detail = str(path), list(needed), detail
        super().__init__(path, tuple(needed), detail)

    def __str__(self) -> str:
        what = ", ".join(self.needed) if self.needed else self.detail
        return (f"{self.path}: refusing to unpickle objects beyond tensors and plain values ({what}). "
                f"If you trust this file, allow them by name (e.g. --allow-global {self.needed[0] if self.needed else 'module.name'}).")


def load_untrusted(path: str | Path, extra_globals: Sequence[str] = (), map_location: str = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with NumPy scalars and ``extra_globals`` allowed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    allowed = _numpy_globals() + [_resolve(q) for q in extra_globals]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # noqa: BLE001  (not a zip checkpoint: fall back to the message)
            needed = []
        known = {f"{g.__module__}.{g.__qualname__}" for g in allowed if hasattr(g, "__qualname__")}
        raise UnsafeCheckpointError(str(path), [n for n in needed if n not in known], str(e).splitlines()[0]) from e
    except RuntimeError as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({str(e).splitlines()[0]})") from e
