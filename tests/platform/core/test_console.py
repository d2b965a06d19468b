"""The console's logging configuration (platform.core.console) on real loggers; the end-to-end view of a run's
console is in tests/platform/tracking/test_mlflow_native_e2e.py."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import ray

from platform.core import console


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    yield
    for name, _ in console.HARMLESS_WARNINGS:   # leave the process's loggers as they were
        logger = logging.getLogger(name)
        logger.filters = [f for f in logger.filters if not isinstance(f, console._DropMessages)]
    logging.getLogger("mlflow").setLevel(logging.NOTSET)


def _emitted(logger_name: str, message: str, level: int = logging.WARNING) -> bool:
    """Whether a record of ``logger_name`` reaches a handler attached to that logger."""
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        logger.log(level, message)
    finally:
        logger.removeHandler(handler)
    return bool(seen)


def test_known_harmless_warnings_are_dropped_and_nothing_else(quiet):
    token_logger, token_message = console.HARMLESS_WARNINGS[0]
    assert _emitted(token_logger, token_message + " cluster. Set RAY_AUTH_MODE=disabled to opt out.")
    console.configure_driver()
    console.configure_driver()   # idempotent: one filter per logger
    assert sum(isinstance(f, console._DropMessages) for f in logging.getLogger(token_logger).filters) == 1
    assert not _emitted(token_logger, token_message + " cluster. Set RAY_AUTH_MODE=disabled to opt out.")
    # the same logger's other warnings (token auth disabled: a real security note) still show
    assert _emitted(token_logger, "Token authentication is disabled for this Ray cluster.")
    worker_logger, git_message = console.HARMLESS_WARNINGS[1]
    assert not _emitted(worker_logger, git_message + " when packaging the working directory.")
    assert _emitted(worker_logger, "Failed to connect to the GCS")
    assert logging.getLogger("mlflow").getEffectiveLevel() == logging.WARNING
    assert console.ray_env_vars() == {"MLFLOW_LOGGING_LEVEL": "WARNING"}
    assert console.ray_init_options()["logging_config"].log_level == "WARNING"
    assert console.train_logging_config().log_level == "WARNING"


def test_the_per_report_logger_of_ray_train_is_quieted_in_workers(quiet):
    name = str(Path(ray.__file__).parent / console.RAY_TRAIN_FILE_LOGGERS[0])
    # the file really is where Ray Train names its logger after (a Ray upgrade that moves it fails here)
    import ray.train.v2._internal.execution.context as context   # noqa: F401  (creates the logger)
    assert Path(name).is_file() and name in logging.Logger.manager.loggerDict
    console.configure_worker()
    assert not logging.getLogger(name).isEnabledFor(logging.INFO)
    assert logging.getLogger(name).isEnabledFor(logging.WARNING)
    logging.getLogger(name).setLevel(logging.NOTSET)


def test_verbose_keeps_every_default(monkeypatch):
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    before = list(logging.getLogger(console.HARMLESS_WARNINGS[0][0]).filters)
    console.configure_driver()
    assert logging.getLogger(console.HARMLESS_WARNINGS[0][0]).filters == before
    assert console.ray_init_options() == {}
    assert console.ray_env_vars() == {console.VERBOSE_ENV: "1"}   # trials see it too
    assert console.train_logging_config().log_level == "INFO"
