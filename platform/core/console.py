"""What a run prints: the platform's lines and errors by default, everything with ``--verbose``.

By default the console shows the platform's own lines (``[platform] ...`` on the driver, the
workers' ``[train] ...`` progress and evaluation lines, ``[sweep] ...``), the final summary, every
warning and error Ray or MLflow report through logging, and any traceback. Hidden, through logging
configuration and never by filtering the output stream:

- Ray Train's INFO lines (``Checkpoint successfully created at ...``, worker-group start-up, process
  group / DDP set-up): ``RunConfig(logging_config=ray.train.LoggingConfig(log_level="WARNING"))``, and
  ``Reporting training result N: TrainingReport(...)``, whose logger Ray Train names by its file path:
  that logger's level, set in each worker (:func:`configure_worker`);
- Ray's own INFO lines in the driver and in Ray's processes (local instance start-up, working-dir
  packaging): ``ray.init(logging_config=ray.LoggingConfig(log_level="WARNING"))``;
- known harmless warnings of the driver, by logger and message: token authentication being
  enabled on the local cluster this command starts (``authentication_token_setup``) and ``.git``,
  ``.venv``, ``venv`` or ``__pycache__`` being left out of the working-dir upload (the platform excludes
  them anyway);
- MLflow's INFO lines (store creation, model validation): ``MLFLOW_LOGGING_LEVEL=WARNING``;
- on a local cluster started without Ray's dashboard (the default, ``platform.ray_dashboard``), the
  warning Ray Train's placement-group cleaner logs every second because the state API lives in the
  dashboard (``Failed to query Ray Train Controller actor state``): a filter on its logger in every
  Ray process of the run (:func:`quiet_local_cluster`, the runtime env's ``worker_process_setup_hook``).
  The cleaner removes a dead controller's placement group on a long-lived cluster; a local cluster
  ends with the command that started it, and its placement groups with it. Always on ``--verbose``.

Ray Train still writes its own lines at every level to ``ray-train-sys-*.log`` in the session's
``logs/train`` folder (``/tmp/ray/session_latest/logs/train``). Not hidden: the C++
core's own lines, such as the ``E ... core_worker.cc`` line about Ray Train's ``PreemptionWatcher`` actor
at every start (only ``RAY_BACKEND_LOG_LEVEL`` reaches them, and setting it makes every Ray process
print a line saying so).

``--verbose`` (or ``PLATFORM_VERBOSE=1``) leaves every logger at Ray's and MLflow's defaults. The
choice travels to Ray's processes (Tune trials build their trainers there) as ``PLATFORM_VERBOSE``
in the runtime env.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

VERBOSE_ENV = "PLATFORM_VERBOSE"
QUIET_LEVEL = "WARNING"
# (logger, start of the message) of warnings known to be harmless for the platform's commands
HARMLESS_WARNINGS = [
    ("ray._private.authentication.authentication_token_setup", "Token authentication is enabled for this Ray"),
] + [("ray._private.worker", f"Directory {name!r} is now ignored by default")   # Ray's default excludes, which
     for name in (".git", ".venv", "venv", "__pycache__")]                      # the platform excludes too
# the same, in Ray's processes of a local cluster started without the dashboard (see the module's docstring)
LOCAL_CLUSTER_WARNINGS = [
    ("ray.train.v2._internal.execution.controller.placement_group_cleaner",
     "Failed to query Ray Train Controller actor state"),
]
SETUP_HOOK = "platform.core.console.quiet_local_cluster"
# Ray Train modules that name their logger by file path (outside ``ray.train``, so Train's own log level
# does not reach them): ``Reporting training result N: TrainingReport(...)`` comes from the first
RAY_TRAIN_FILE_LOGGERS = ["train/v2/_internal/execution/context.py"]


def set_verbose(verbose: bool) -> None:
    """Record the command's ``--verbose`` for this process and the Ray processes it starts."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").lower() in ("1", "true", "yes")


class _DropMessages(logging.Filter):
    """Drops the records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: list[str]):
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def _drop(warnings: list[tuple[str, str]]) -> None:
    by_logger: dict[str, list[str]] = {}
    for name, prefix in warnings:
        by_logger.setdefault(name, []).append(prefix)
    for name, prefixes in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(prefixes))


def quiet_local_cluster() -> None:
    """``worker_process_setup_hook`` of a local cluster without the dashboard: hide the warnings of
    :data:`LOCAL_CLUSTER_WARNINGS` in this Ray process unless verbose."""
    if not is_verbose():
        _drop(LOCAL_CLUSTER_WARNINGS)


def configure_driver() -> None:
    """Logging of this (driver) process, before Ray starts: hide the known harmless warnings and
    MLflow's INFO lines unless verbose. Idempotent."""
    if is_verbose():
        return
    _drop(HARMLESS_WARNINGS)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", QUIET_LEVEL)
    logging.getLogger("mlflow").setLevel(QUIET_LEVEL)


def configure_worker() -> None:
    """Logging of a Ray Train worker process (called first thing in the training function)."""
    if is_verbose():
        return
    import ray   # here, not at the top: evaluate / predict / report use this module without Ray

    root = Path(ray.__file__).parent
    for relative in RAY_TRAIN_FILE_LOGGERS:
        logging.getLogger(str(root / relative)).setLevel(QUIET_LEVEL)
    logging.getLogger("mlflow").setLevel(QUIET_LEVEL)


def ray_env_vars() -> dict[str, str]:
    """Environment of Ray's processes (runtime env ``env_vars``) for the console mode."""
    return {VERBOSE_ENV: "1"} if is_verbose() else {"MLFLOW_LOGGING_LEVEL": QUIET_LEVEL}


def ray_init_options() -> dict:
    """Extra ``ray.init`` arguments: Ray's loggers at WARNING in the driver and Ray's processes."""
    if is_verbose():
        return {}
    import ray   # here, not at the top: evaluate / predict / report use this module without Ray

    return {"logging_config": ray.LoggingConfig(log_level=QUIET_LEVEL)}


def train_logging_config():
    """``RunConfig.logging_config`` of a TorchTrainer: Ray Train's INFO lines hidden unless verbose."""
    from ray.train import LoggingConfig   # here, not at the top: see configure_worker

    return LoggingConfig(log_level="INFO" if is_verbose() else QUIET_LEVEL)
