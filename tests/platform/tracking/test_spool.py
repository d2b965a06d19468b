"""Logging through a tracking-server outage: the spool keeps calls in order and replays them once.

Real MLflow stores: a sqlite file, and a real ``mlflow server`` on 127.0.0.1 that the slow test
kills (SIGKILL) in the middle of logging and starts again on the same port and store.
"""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from platform.tracking.spool import Spool, SpoolingRunLogger, end_run_or_spool, is_transient
from tests.platform.helpers import MlflowServer, free_port


class Clock:
    """A settable monotonic clock: the logger's retry interval passes when the test says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (creating its schema takes seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/m.db"
    MlflowClient(uri).create_experiment("spool")
    return uri


@pytest.fixture(autouse=True)
def no_http_retries(monkeypatch):
    """MLflow's default HTTP retries wait minutes for a dead server; the worker logger sets the same."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def _new_run(uri: str) -> str:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("spool") or client.get_experiment(client.create_experiment("spool"))
    return client.create_run(experiment.experiment_id).info.run_id


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_an_unreachable_server_is_transient_a_bad_request_is_not(store):
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(Exception) as info:
        MlflowClient(dead).get_run("0" * 32)
    assert is_transient(info.value)
    uri = store
    run_id = _new_run(uri)
    with pytest.raises(Exception) as info:
        MlflowClient(uri).log_metric(run_id, "x", float("nan"), step=-5, timestamp=-1)   # invalid step / timestamp
    assert not is_transient(info.value)


def test_logger_spools_while_the_store_is_away_and_replays_in_order_once(tmp_path, store):
    """The mechanism without a server: the store's URI points nowhere, then at the real store."""
    uri = store
    run_id = _new_run(uri)
    clock = Clock()
    logger = SpoolingRunLogger(uri, run_id, tmp_path / "spool", clock=clock)
    logger.log_metrics({"train/loss": 3.0}, step=1)
    real_client = logger.client
    logger.client = MlflowClient(f"http://127.0.0.1:{free_port()}")        # the store goes away
    logger.log_metrics({"train/loss": 2.0}, step=2)
    assert logger.spooling
    logger.log_text("hello", "notes/a.txt")
    (tmp_path / "ckpt.pt").write_bytes(b"weights")
    logger.log_file_as(tmp_path / "ckpt.pt", "checkpoints", "last.pt")
    logger.set_tags({"platform.restarts": "1"})
    logger.log_metrics({"train/loss": 1.5, "coco/AP": 0.1}, step=3)
    assert Spool(tmp_path / "spool").pending() == 5
    logger.client = real_client                                             # it comes back
    logger.log_metrics({"train/loss": 1.0}, step=4)                        # before the retry time: spooled
    assert Spool(tmp_path / "spool").pending() == 6
    clock.now += 5.0
    logger.log_metrics({"train/loss": 0.5}, step=5)                        # replays, then logs direct
    assert not logger.spooling and Spool(tmp_path / "spool").pending() == 0
    assert _steps(real_client, run_id, "train/loss") == [1, 2, 3, 4, 5]
    run = real_client.get_run(run_id)
    assert run.data.tags["platform.restarts"] == "1" and run.data.metrics["coco/AP"] == 0.1
    artifacts = {a.path for a in real_client.list_artifacts(run_id, "checkpoints")}
    assert artifacts == {"checkpoints/last.pt"}
    # a replay cut short (entries applied, the count not yet written) replays them again: no duplicates
    spool = Spool(tmp_path / "spool")
    spool._set_applied(0)
    spool.replay(MlflowClient(uri))
    assert _steps(real_client, run_id, "train/loss") == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_a_locked_sqlite_store_is_spooled_and_named_with_the_server_that_takes_many_writers(tmp_path, store, capsys):
    """Another writer holds the sqlite file (an exclusive transaction of a real sqlite3 connection) for
    longer than MLflow's sqlite busy timeout (20 s: the test waits that long): the logger's write spools,
    says why and names ``mlflow server``; once the writer is done the spool replays."""
    import sqlite3

    uri = store
    path = uri.removeprefix("sqlite:///")
    run_id = _new_run(uri)
    clock = Clock()
    logger = SpoolingRunLogger(uri, run_id, tmp_path / "spool", clock=clock)
    logger.log_metrics({"train/loss": 3.0}, step=1)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")                   # another process writing the store
    try:
        logger.log_metrics({"train/loss": 2.0}, step=2)
    finally:
        other.execute("COMMIT")
        other.close()
    assert logger.spooling
    out = capsys.readouterr().out
    assert "database is locked" in out and "mlflow server --backend-store-uri sqlite:///mlflow.db" in out, out
    clock.now += 5.0
    logger.log_metrics({"train/loss": 1.0}, step=3)
    assert not logger.spooling and _steps(MlflowClient(uri), run_id, "train/loss") == [1, 2, 3]


def test_a_restarted_attempt_does_not_log_a_step_twice(tmp_path, store):
    uri = store
    run_id = _new_run(uri)
    first = SpoolingRunLogger(uri, run_id, tmp_path / "spool")
    for step in (2, 4, 6):
        first.log_metrics({"train/loss": float(step)}, step=step)
    first.log_metrics({"coco/AP": 0.2}, step=4)
    again = SpoolingRunLogger(uri, run_id, tmp_path / "spool", resumed=True)   # restarted from iteration 4
    for step in (6, 8):
        again.log_metrics({"train/loss": -1.0, "coco/AP": 0.3}, step=step)
    client = MlflowClient(uri)
    assert [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)] \
        == [(2, 2.0), (4, 4.0), (6, 6.0), (8, -1.0)]
    assert _steps(client, run_id, "coco/AP") == [4, 6, 8]


def test_the_end_of_a_run_waits_in_the_spool_behind_its_metrics(tmp_path, store):
    uri = store
    run_id = _new_run(uri)
    dead = f"http://127.0.0.1:{free_port()}"
    logger = SpoolingRunLogger(dead, run_id, tmp_path / "spool")
    logger.log_metrics({"train/loss": 1.0}, step=1)
    assert end_run_or_spool(dead, run_id, "FINISHED", tmp_path / "spool") is False
    entries = Spool(tmp_path / "spool").entries()
    assert [e["op"] for e in entries] == ["metrics", "terminate"]
    assert MlflowClient(uri).get_run(run_id).info.status == "RUNNING"
    Spool(tmp_path / "spool").replay(MlflowClient(uri))
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["train/loss"] == 1.0


@pytest.mark.slow
def test_a_real_server_killed_and_restarted_loses_nothing(tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    try:
        run_id = _new_run(server.uri)
        clock = Clock()
        logger = SpoolingRunLogger(server.uri, run_id, tmp_path / "spool", clock=clock)
        logger.log_metrics({"train/loss": 4.0}, step=1)
        server.stop()                                               # SIGKILL, mid-run
        for step in (2, 3):
            logger.log_metrics({"train/loss": 4.0 - step}, step=step)
        logger.log_text("eval table", "eval/summary.txt")
        assert logger.spooling and Spool(tmp_path / "spool").pending() == 3
        server.start()                                              # same store, same port
        clock.now += 5.0
        logger.log_metrics({"train/loss": 0.0}, step=4)
        assert not logger.spooling
        client = MlflowClient(server.uri)
        assert _steps(client, run_id, "train/loss") == [1, 2, 3, 4]
        assert [a.path for a in client.list_artifacts(run_id, "eval")] == ["eval/summary.txt"]
    finally:
        server.stop()
