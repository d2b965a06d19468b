"""MLflow logging that survives the tracking server going away: bounded retries and a local spool.

Rank 0 of the workers logs through :class:`SpoolingRunLogger`. While the tracking store answers,
each call goes straight to it. When a call fails for a reason that may pass (connection refused,
timeout, a 5xx answer, a locked sqlite file), the call is written to a *spool* instead, a folder
on local disk: ``journal.jsonl`` (one line per call, in order) plus the files it uploads
(checkpoints are hard-linked, not copied). From then on every call joins the spool, so order is
kept, and at most once per retry interval (5 s, doubling to 60 s) the logger replays the spool;
when the replay gets through, logging goes direct again. Training never waits for the store
beyond one short request (``MLFLOW_HTTP_REQUEST_TIMEOUT`` 10 s, no HTTP retries in the worker).

Nothing is lost: if the store never comes back, the spool stays on disk (the driver adds the
run's end status to it and names it in the summary); ``python -m platform.runs upload SPOOL``
replays it later. Nothing is duplicated: the journal records how many entries were applied
(``applied``), and a metric entry replayed twice is harmless because every key has at most one
value per step (:class:`StepFilter`, applied on replay too).

Errors that retrying cannot fix (a 4xx answer: an invalid value, a deleted run) are raised.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from platform.tracking.mlflow_runs import MAX_METRICS_PER_BATCH, RunLogger, log_params, param_value

JOURNAL, APPLIED, FILES = "journal.jsonl", "applied", "files"
FIRST_RETRY_S, MAX_RETRY_S = 5.0, 60.0
WORKER_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def spool_dir(storage_path: str, run_name: str, run_id: str) -> Path:
    """Where a run's spool lives: in its Ray storage folder when that is a local path, else in /tmp."""
    if "://" in storage_path:
        return Path(tempfile.gettempdir()) / "codetr_mlflow_spool" / run_id
    return Path(storage_path) / run_name / "mlflow_spool" / run_id


def upload_command(folder: str | Path, tracking_uri: str) -> str:
    return f"python -m platform.runs upload {folder} --tracking-uri {tracking_uri}"


SQLITE_SERVER_HINT = "mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000"


def is_transient(error: BaseException) -> bool:
    """True for failures that may pass (the store is unreachable or busy), False for a real bad request."""
    if isinstance(error, MlflowException):
        status = error.get_http_status_code()
        text = str(error)
        return status >= 500 or "API request to" in text or "database is locked" in text
    return isinstance(error, (OSError, TimeoutError)) or type(error).__name__ in ("OperationalError", "ConnectionError")


class Spool:
    """The journal of calls not yet made, in order, with the files they upload."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def entries(self) -> list[dict]:
        path = self.folder / JOURNAL
        if not path.is_file():
            return []
        lines = path.read_text().splitlines()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:   # a line cut short by a crash: the last one, never applied
                break
        return out

    def applied(self) -> int:
        path = self.folder / APPLIED
        return int(path.read_text() or 0) if path.is_file() else 0

    def pending(self) -> int:
        return max(len(self.entries()) - self.applied(), 0)

    def _set_applied(self, count: int) -> None:
        tmp = self.folder / f".{APPLIED}.tmp"
        tmp.write_text(str(count))
        os.replace(tmp, self.folder / APPLIED)

    def file_slot(self) -> Path:
        """A fresh folder for the files of the next entry."""
        slot = self.folder / FILES / f"{len(self.entries()):06d}"
        slot.mkdir(parents=True, exist_ok=True)
        return slot

    def append(self, entry: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / JOURNAL, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def replay(self, client: MlflowClient, steps: "StepFilter | None" = None) -> int:
        """Apply the pending entries in order; returns how many. Stops at the first failure (raises)."""
        entries, done = self.entries(), self.applied()
        steps = steps or StepFilter(client)
        for i in range(done, len(entries)):
            apply_entry(client, entries[i], self.folder, steps)
            self._set_applied(i + 1)
        return len(entries) - done


class StepFilter:
    """A metric key has at most one value per step: steps a key already has are not logged again.

    After a restart from a checkpoint the iterations since that checkpoint run again; their
    metrics were logged by the previous attempt, and on CPU they are bitwise the same values, so
    they are skipped, not logged twice. The latest step per key is read from the store the first
    time a key is seen (only for runs that may already have metrics: ``check_store``).
    """

    def __init__(self, client: MlflowClient, check_store: bool = True):
        self.client, self.check_store = client, check_store
        self.latest: dict[tuple[str, str], int] = {}

    def _latest(self, run_id: str, key: str) -> int:
        if (run_id, key) not in self.latest:
            history = self.client.get_metric_history(run_id, key) if self.check_store else []
            self.latest[(run_id, key)] = max((m.step for m in history), default=-1)
        return self.latest[(run_id, key)]

    def new(self, run_id: str, metrics: list[Metric]) -> list[Metric]:
        """The metrics whose step is past the latest step of their key (call :meth:`logged` once they are)."""
        return [m for m in metrics if m.step > self._latest(run_id, m.key)]

    def logged(self, run_id: str, metrics: list[Metric]) -> None:
        for m in metrics:
            self.latest[(run_id, m.key)] = max(m.step, self.latest.get((run_id, m.key), -1))


def log_new_metrics(client: MlflowClient, run_id: str, metrics: list[Metric], steps: StepFilter) -> None:
    """Log the metrics :class:`StepFilter` lets through, in batches."""
    new = steps.new(run_id, metrics)
    for i in range(0, len(new), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=new[i: i + MAX_METRICS_PER_BATCH])
    steps.logged(run_id, new)


def apply_entry(client: MlflowClient, entry: dict, folder: Path, steps: StepFilter) -> None:
    """Make the MLflow call a journal entry stands for."""
    run_id, kind = entry["run_id"], entry["op"]
    if kind == "metrics":
        log_new_metrics(client, run_id, [Metric(k, v, ts, step) for k, v, ts, step in entry["metrics"]], steps)
    elif kind == "params":
        existing = client.get_run(run_id).data.params
        params = [Param(k, v) for k, v in entry["params"].items() if k not in existing]
        if params:
            client.log_batch(run_id, params=params)
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in entry["tags"].items()])
    elif kind == "artifact":
        client.log_artifact(run_id, str(folder / entry["file"]), entry.get("artifact_path"))
    elif kind == "artifacts":
        client.log_artifacts(run_id, str(folder / entry["dir"]), entry.get("artifact_path"))
    elif kind == "terminate":
        client.set_terminated(run_id, status=entry["status"], end_time=entry.get("end_time"))
    else:
        raise ValueError(f"{folder / JOURNAL}: unknown entry {kind!r}")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class SpoolingRunLogger(RunLogger):
    """:class:`platform.tracking.mlflow_runs.RunLogger` that spools what the store cannot take (module docstring).

    ``resumed``: the run may already hold metrics (a restart or a resumed run): :class:`StepFilter`
    then reads each key's latest step once before logging it.
    """

    def __init__(self, tracking_uri: str, run_id: str, folder: str | Path, resumed: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(tracking_uri, run_id)
        self.spool = Spool(folder)
        self.steps = StepFilter(self.client, check_store=resumed)
        self.clock = clock
        self.retry_at = 0.0
        self.retry_s = FIRST_RETRY_S
        self.spooling = self.spool.pending() > 0   # a previous attempt's spool: replay it first

    # -------------------------------------------------------------- the one path of every call

    def _call(self, direct: Callable[[], None], entry: Callable[[], dict]) -> None:
        if self.spooling and self.clock() >= self.retry_at:
            self._try_replay()
        if not self.spooling:
            try:
                direct()
                return
            except Exception as e:
                if not is_transient(e):
                    raise
                self._start_spooling(e)
        self.spool.append(entry())

    def _try_replay(self) -> None:
        try:
            count = self.spool.replay(self.client, self.steps)
        except Exception as e:
            if not is_transient(e):
                raise
            self.retry_at = self.clock() + self.retry_s
            self.retry_s = min(self.retry_s * 2, MAX_RETRY_S)
            return
        self.spooling, self.retry_s = False, FIRST_RETRY_S
        _say(f"[platform] MLflow is back: {count} spooled call(s) uploaded from {self.spool.folder}")

    def _start_spooling(self, error: BaseException) -> None:
        first_line = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        _say(f"[platform] MLflow unreachable ({first_line}); training goes on, logging to the spool "
             f"{self.spool.folder}, retrying every {FIRST_RETRY_S:.0f}-{MAX_RETRY_S:.0f} s")
        if "database is locked" in str(error):   # a sqlite file takes one writer at a time
            _say(f"[platform] the sqlite store is busy with another writer: for many runs at once, serve it with "
                 f"an MLflow server (`{SQLITE_SERVER_HINT}`) and set MLFLOW_TRACKING_URI=http://127.0.0.1:5000")
        self.spooling = True
        self.retry_at = self.clock() + self.retry_s

    def flush(self, wait_s: float = 0.0, poll_s: float = 2.0) -> int:
        """Try to empty the spool, for up to ``wait_s`` seconds; returns the entries still pending."""
        deadline = self.clock() + wait_s
        while self.spooling:
            self.retry_at = 0.0
            self._try_replay()
            if not self.spooling or self.clock() + poll_s > deadline:
                break
            time.sleep(poll_s)
        return self.spool.pending()

    # -------------------------------------------------------------- RunLogger's calls

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]

        self._call(lambda: log_new_metrics(self.client, self.run_id, items, self.steps), lambda: {"op": "metrics", "run_id": self.run_id,
                                    "metrics": [[m.key, m.value, m.timestamp, m.step] for m in items]})

    def set_tags(self, tags: dict[str, str]) -> None:
        tags = {k: str(v) for k, v in tags.items()}
        self._call(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()]),
                   lambda: {"op": "tags", "run_id": self.run_id, "tags": tags})

    def log_params(self, params: dict[str, Any]) -> None:
        values = {k: param_value(v) for k, v in params.items()}
        self._call(lambda: log_params(self.tracking_uri, self.run_id, values),
                   lambda: {"op": "params", "run_id": self.run_id, "params": values})

    def _spool_file(self, source: Path, name: str, artifact_path: str | None) -> dict:
        slot = self.spool.file_slot()
        target = slot / name
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        return {"op": "artifact", "run_id": self.run_id, "file": str(target.relative_to(self.spool.folder)),
                "artifact_path": artifact_path}

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call(lambda: RunLogger.log_artifact(self, path, artifact_path),
                   lambda: self._spool_file(Path(path), Path(path).name, artifact_path))

    def log_file_as(self, path: str | Path, artifact_path: str, name: str) -> None:
        self._call(lambda: RunLogger.log_file_as(self, path, artifact_path, name),
                   lambda: self._spool_file(Path(path), name, artifact_path))

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        def entry():
            slot = self.spool.file_slot()
            shutil.copytree(folder, slot / "dir")
            return {"op": "artifacts", "run_id": self.run_id, "dir": str((slot / "dir").relative_to(self.spool.folder)),
                    "artifact_path": artifact_path}

        self._call(lambda: RunLogger.log_artifacts(self, folder, artifact_path), entry)

    def _artifact_file_entry(self, artifact_file: str, write: Callable[[Path], None]) -> dict:
        slot = self.spool.file_slot()
        parent, _, name = artifact_file.rpartition("/")
        write(slot / name)
        return {"op": "artifact", "run_id": self.run_id, "file": str((slot / name).relative_to(self.spool.folder)),
                "artifact_path": parent or None}

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call(lambda: RunLogger.log_text(self, text, artifact_file),
                   lambda: self._artifact_file_entry(artifact_file, lambda p: p.write_text(text)))

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self._call(lambda: RunLogger.log_figure(self, figure, artifact_file),
                   lambda: self._artifact_file_entry(artifact_file, lambda p: figure.savefig(p)))

    # reads: while spooling the store is away; the loss-curve plot then waits for the next epoch
    def metric_history(self, keys: Iterable[str]) -> dict[str, list[tuple[int, float]]]:
        if self.spooling:
            return {}
        try:
            return super().metric_history(keys)
        except Exception as e:
            if not is_transient(e):
                raise
            return {}

    def metric_keys(self) -> list[str]:
        if self.spooling:
            return []
        try:
            return super().metric_keys()
        except Exception as e:
            if not is_transient(e):
                raise
            return []


def end_run_or_spool(tracking_uri: str, run_id: str, status: str, folder: str | Path) -> bool:
    """End the run ``status``; when the store is unreachable, or calls are still spooled, append the
    end to the spool instead (after them). Returns True when the store has it now."""
    spool = Spool(folder)
    end_time = int(time.time() * 1000)
    if spool.pending() == 0:
        try:
            MlflowClient(tracking_uri).set_terminated(run_id, status=status, end_time=end_time)
            return True
        except Exception as e:
            if not is_transient(e):
                raise
    else:   # try once to upload what the workers left, then end the run after it
        try:
            spool.replay(MlflowClient(tracking_uri))
            MlflowClient(tracking_uri).set_terminated(run_id, status=status, end_time=end_time)
            return True
        except Exception as e:
            if not is_transient(e):
                raise
    spool.append({"op": "terminate", "run_id": run_id, "status": status, "end_time": end_time})
    return False
