"""``python -m platform.runs``, the driver's summary and failure lines, without Ray.

Real MLflow store (sqlite), real processes: a driver that is "gone" is a process that ran and exited.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from codetr.engine import CHECKPOINT_FILE, save_checkpoint
from codetr.data import BadImageError
from codetr.errors import NonFiniteLossError
from platform import runs
from platform.tracking.driver_tags import (DRIVER_HOST, DRIVER_PID, DRIVER_STARTED, END_REASON, RESUME_COMMAND,
                                          driver_state, driver_tags)
from platform.train.failures import describe_failure, restore_end_state
from platform.train.summary import print_summary
from platform.tracking.mlflow_runs import RUN_NAME_TAG


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/m.db"
    MlflowClient(uri).create_experiment("codetr_tiny")
    return uri


def _gone_pid_tags() -> dict[str, str]:
    """Driver tags of a real process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "import os, psutil; print(psutil.Process().create_time())"],
                            stdout=subprocess.PIPE, text=True)
    started = proc.communicate()[0].strip()
    tags = driver_tags()
    tags.update({DRIVER_PID: str(proc.pid), DRIVER_STARTED: started})
    return tags


def _run(store, name, tags, storage=None, status=None):
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("codetr_tiny").experiment_id
    run = client.create_run(experiment, run_name=name, tags={RUN_NAME_TAG: name, **tags,
                                                            RESUME_COMMAND: f"python -m platform.train "
                                                                                 f"platform.run_name={name}"})
    if storage:
        client.log_param(run.info.run_id, "platform.storage_path", str(storage))
    if status:
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_driver_state_tells_alive_from_gone_and_reused_pids():
    assert driver_state(driver_tags()) == "alive"
    assert driver_state(_gone_pid_tags()) == "gone"
    reused = {**driver_tags(), DRIVER_STARTED: "12.0"}      # this pid, but another process's start
    assert driver_state(reused) == "gone"
    assert driver_state({**driver_tags(), DRIVER_HOST: "elsewhere"}) == "unknown"
    assert driver_state({}) == "unknown"


def test_list_shows_orphans_with_their_checkpoint_and_resume_command_and_close_fails_them(store, tmp_path, capsys):
    save_checkpoint(tmp_path / "runs" / "orphan" / "checkpoint_2026-01-01_00-00-00.000000" / CHECKPOINT_FILE,
                    {"iteration": 4})
    orphan = _run(store, "orphan", _gone_pid_tags(), storage=tmp_path / "runs")
    alive = _run(store, "alive", driver_tags())
    _run(store, "done", _gone_pid_tags(), status="FINISHED")
    assert runs.main(["--tracking-uri", store, "list"]) == 0
    out = capsys.readouterr().out
    assert "orphan" in out and orphan in out and "driver: gone" in out
    assert "checkpoint_2026-01-01_00-00-00.000000" in out and "resume: python -m platform.train platform.run_name=orphan" in out
    assert alive not in out and "done" not in out

    assert runs.main(["close", "alive", "--tracking-uri", store]) == 1          # a live driver is left alone
    assert runs.main(["close", "orphan", "--tracking-uri", store]) == 0
    run = MlflowClient(store).get_run(orphan)
    assert run.info.status == "FAILED" and "driver gone: pid" in run.data.tags[END_REASON]
    assert MlflowClient(store).get_run(alive).info.status == "RUNNING"
    capsys.readouterr()
    runs.main(["--tracking-uri", store, "list"])
    assert orphan not in capsys.readouterr().out


def test_resume_offers_the_command_and_says_when_there_is_no_checkpoint(store, tmp_path, capsys):
    _run(store, "nockpt", _gone_pid_tags(), storage=tmp_path / "empty")
    runs.main(["--tracking-uri", store, "resume", "nockpt"])
    assert "no checkpoint yet: this starts the run over" in capsys.readouterr().out


def test_a_failed_resume_puts_back_the_recorded_end(store):
    finished = _run(store, "was-finished", {}, status="FINISHED")
    client = MlflowClient(store)
    end_time = client.get_run(finished).info.end_time
    client.update_run(finished, status="RUNNING")                       # what start_run does on resume
    assert restore_end_state(client, finished, "FINISHED", end_time, "CheckpointError: ...") == "FINISHED"
    run = client.get_run(finished)
    assert run.info.status == "FINISHED" and run.info.end_time == end_time
    assert run.data.tags["platform.failed_resume"] == "CheckpointError: ..."
    orphan = _run(store, "was-running", {})
    assert restore_end_state(client, orphan, "RUNNING", None, "x") == "FAILED"


class FakeWorkerFailure(Exception):
    """What Ray Train puts in ``WorkerGroupError.worker_failures``: the worker's error with its traceback."""

    def __init__(self, base, text):
        super().__init__(text)
        self._base_exc, self._traceback_str = base, text


class FakeWorkerGroupError(Exception):
    def __init__(self, failures):
        super().__init__("Training failed due to worker errors:\n" + "\n".join(map(str, failures.values())))
        self.worker_failures = failures


def test_failure_line_names_the_named_error_of_any_rank():
    nonfinite = NonFiniteLossError(7, {"query/loss_bbox": float("nan")}, [3, 4], ["a.jpg", "b.jpg"])
    error = FakeWorkerGroupError({0: FakeWorkerFailure(RuntimeError("gloo: connection reset"), "tb0"),
                                  1: FakeWorkerFailure(nonfinite, "tb1")})
    line = describe_failure(error, num_workers=2, resources_per_worker={"CPU": 1}, resource_wait_s=60)
    assert line.startswith("NonFiniteLossError (worker rank 1): non-finite loss at iteration 7")
    assert "a.jpg" in line and "\n" not in line
    bad = FakeWorkerGroupError({0: FakeWorkerFailure(BadImageError("/d/x.jpg", "file is empty (image id 9)"), "tb")})
    assert describe_failure(bad, num_workers=1, resources_per_worker={"CPU": 1}, resource_wait_s=60) == \
        "BadImageError (worker rank 0): bad image /d/x.jpg: file is empty (image id 9)"


def test_summary_names_the_checkpoint_and_offers_resume_only_with_one(store, tmp_path, capsys):
    run_id = _run(store, "summ", {})
    print_summary("FAILED", "summ", store, run_id, 60.0, None, ["train.lr=1e6"], error="NonFiniteLossError: ...")
    out = capsys.readouterr().out
    assert "Error: NonFiniteLossError: ..." in out and "No checkpoint was written" in out
    assert "Continue from" not in out
    print_summary("FAILED", "summ", store, run_id, 60.0, str(tmp_path / "ckpt"), ["train.lr=1e6"],
                  traceback_file="/x/error.txt", error="boom")
    out = capsys.readouterr().out
    assert f"Latest checkpoint: {tmp_path / 'ckpt'}" in out and "Full traceback: /x/error.txt" in out
    assert "Continue from the latest checkpoint: python -m platform.train train.lr=1e6 platform.run_name=summ" in out
    print_summary("FINISHED", "summ", "http://127.0.0.1:9", run_id, 60.0, str(tmp_path / "ckpt"), [],
                  spool=str(tmp_path / "spool"))
    out = capsys.readouterr().out
    assert f"python -m platform.runs upload {tmp_path / 'spool'} --tracking-uri http://127.0.0.1:9" in out
