"""Config files of a run: a name in ``experiments/`` or a path, overrides, absolute paths, run names."""
from __future__ import annotations

import datetime
import os
import re
from pathlib import Path

from codetr.config import Config, ConfigError, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO_ROOT / "experiments"
DEFAULT_CONFIG = "codetr_tiny"


def resolve_config_path(name: str) -> Path:
    """A YAML path, or a bare name of ``experiments/`` (``codetr_tiny`` -> experiments/codetr_tiny.yaml)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (EXPERIMENTS / name, EXPERIMENTS / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config file not found: {name} (nor in {EXPERIMENTS})")


def _absolute(path: str, base: Path) -> str:
    if not path or "://" in path or Path(path).is_absolute():
        return path
    return str((base / path).resolve())


def absolutize_paths(cfg: Config, base: str | Path | None = None) -> Config:
    """Make the config's file paths absolute against ``base`` (default: the working directory).

    Ray workers run in a copy of the repository elsewhere, so relative paths would point into it.
    URIs (``s3://...``) are left alone.
    """
    base = Path(base or os.getcwd())
    data = cfg.data
    data.synthetic.root = _absolute(data.synthetic.root, base)
    for split in (data.train, data.val):
        split.ann_file = _absolute(split.ann_file, base)
        split.img_dir = _absolute(split.img_dir, base)
    if cfg.model.init_from:
        cfg.model.init_from = _absolute(cfg.model.init_from, base)
    if cfg.model.backbone.weights_path:
        cfg.model.backbone.weights_path = _absolute(cfg.model.backbone.weights_path, base)
    cfg.platform.storage_path = _absolute(cfg.platform.storage_path, base)
    return cfg


def load_run_config(config: str, overrides: list[str]) -> Config:
    """Load ``config`` (path or experiments/ name) with overrides and make its paths absolute."""
    return absolutize_paths(load_config(resolve_config_path(config), overrides))


def default_run_name(cfg: Config) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{cfg.platform.experiment_name}-{stamp}"


def check_run_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
        raise ConfigError(f"platform.run_name: {name!r} must be letters, digits, '_', '.', '-' "
                          "(it names a folder and an MLflow run)")
    return name
