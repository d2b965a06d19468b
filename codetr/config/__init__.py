"""Typed configs: ``load_config(path, overrides)`` -> :class:`Config`."""
from __future__ import annotations

from pathlib import Path

from codetr.config.loader import (ConfigError, apply_overrides, flatten, from_dict, has_key,
                                  read_config_dict, to_dict)
from codetr.config.schema import Config, ModelConfig


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config (with ``_base_`` inheritance), apply ``a.b=value`` overrides, validate.

    ``path=None`` gives the built-in defaults (the R50 recipe) plus the overrides.
    """
    data = read_config_dict(path) if path is not None else {}
    data = apply_overrides(data, list(overrides))
    return from_dict(Config, data)


def config_from_dict(data: dict) -> Config:
    """Validate a plain dict (e.g. ``to_dict(cfg)`` read back from a checkpoint) into a Config."""
    return from_dict(Config, data)


__all__ = ["Config", "ConfigError", "ModelConfig", "load_config", "config_from_dict", "to_dict",
           "flatten", "has_key"]
