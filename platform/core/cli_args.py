"""Command-line arguments that several commands share."""
from __future__ import annotations

import argparse

from platform.core.config_files import DEFAULT_CONFIG


def add_config_arguments(parser: argparse.ArgumentParser, default: str | None = DEFAULT_CONFIG) -> None:
    """``--config NAME_OR_PATH`` and the ``key=value`` overrides (``platform.train``, ``platform.evaluate``)."""
    parser.add_argument("--config", default=default,
                        help="experiment YAML, or a name in experiments/ (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.max_iters=20 model.lambda1=0.5")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--register NAME`` and ``--verbose`` (shared with ``platform.sweep``)."""
    parser.add_argument("--register", metavar="NAME",
                        help="register the run's deployable MLflow model in the Model Registry under NAME")
    parser.add_argument("--verbose", action="store_true",
                        help="print full tracebacks of errors, and Ray's and MLflow's INFO lines (hidden by "
                             "default: platform/core/console.py)")
