"""Shared by the platform tests: ``python -m platform.train`` under fault injection (its output as it
comes, its Ray worker processes) and a real ``mlflow server`` on 127.0.0.1 that a test starts, kills and
starts again."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]

# 16 images of 96 px, 2 workers x 2 images: 4 iterations per epoch, a checkpoint after each epoch,
# every iteration logged, one evaluation at the end (4 images)
TINY = ["data.augment.scales=[96]", "data.augment.max_size=96", "data.augment.crop_prob=0",
        "data.augment.eval_scale=96", "data.augment.eval_max_size=96", "data.synthetic.num_train=16",
        "data.synthetic.num_val=4", "data.batch_size=2", "train.log_every=1", "train.eval_every=0",
        "train.warmup_iters=4", "platform.num_val_images=1", "platform.log_checkpoints=true"]


def train_args(workdir: Path, run_name: str, *more: str) -> list[str]:
    return [sys.executable, "-m", "platform.train", *TINY, f"data.synthetic.root={workdir}/data",
            f"platform.storage_path={workdir}/runs", f"platform.run_name={run_name}", *more]


class Driver:
    """A driver process whose output lines are collected by a thread; :meth:`wait_for` a line."""

    def __init__(self, args: list[str], env: dict):
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 300, start: int = 0) -> int:
        """Index of the first line from ``start`` on that matches ``pattern`` (a regex)."""
        deadline = time.time() + timeout
        regex = re.compile(pattern)
        checked = start
        while time.time() < deadline:
            while checked < len(self.lines):
                if regex.search(self.lines[checked]):
                    return checked
                checked += 1
            if self.proc.poll() is not None and checked >= len(self.lines):
                self._reader.join(timeout=5)
                if checked >= len(self.lines):
                    break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} (exit {self.proc.poll()}):\n{self.output[-6000:]}")

    def finish(self, timeout: float = 600) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        """``kill -9`` of the driver process only (its Ray cluster lives on)."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=10)


def worker_pid(driver: Driver, rank: int, start: int = 0) -> int:
    """The pid of ``rank`` in the latest worker group the driver's output announced after line ``start``
    (Ray Train prints ``- (ip=..., pid=N) world_rank=R, ...`` when a group starts)."""
    pids = [int(m.group(1)) for line in driver.lines[start:]
            for m in [re.search(rf"pid=(\d+)\) world_rank={rank},", line)] if m]
    assert pids, f"no worker group announced after line {start}:\n{driver.output[-3000:]}"
    return pids[-1]


def _poll(check, timeout: float, failure: str, interval: float = 0.2) -> None:
    """Call ``check`` until it returns True; AssertionError ``failure`` after ``timeout`` s. A check that
    raises ``OSError`` / ``ValueError`` (a file or store not written yet) counts as False."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError):
            pass
        time.sleep(interval)
    raise AssertionError(failure)


def wait_for_step(tracking_uri: str, run_name: str, step: int, timeout: float = 300) -> None:
    """Until rank 0 has logged ``train/loss`` at ``step`` or later: the training's progress as it happens
    (read from the MLflow store the worker writes to; Ray forwards the workers' printed lines with a lag
    that can exceed a tiny epoch on a busy machine)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)

    def logged() -> bool:
        try:
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                      filter_string=f"tags.`platform.run_name` = '{run_name}'")
        except Exception:   # the store is being created (by the driver, concurrently)
            return False
        history = client.get_metric_history(runs[0].info.run_id, "train/loss") if runs else []
        return max((m.step for m in history), default=0) >= step

    _poll(logged, timeout, f"run {run_name} did not log train/loss at step {step} within {timeout} s")


def wait_for_checkpoint(run_folder: Path, iteration: int, timeout: float = 300) -> None:
    """Until Ray Train's controller has registered the checkpoint of ``iteration`` (its
    ``checkpoint_manager_snapshot.json`` in the run's folder lists it). A checkpoint a worker reported but
    the controller has not yet collected is not resumed from: a worker lost before that restarts the run
    from the previous one."""
    import json

    snapshot = Path(run_folder) / "checkpoint_manager_snapshot.json"

    def registered() -> bool:   # OSError / ValueError: not written yet, or being written
        results = json.loads(snapshot.read_text()).get("checkpoint_results", [])
        return any((r.get("metrics") or {}).get("iteration") == iteration for r in results)

    _poll(registered, timeout, f"no registered checkpoint of iteration {iteration} in {snapshot} within {timeout} s")


def ray_processes(kind: str) -> list[psutil.Process]:
    """This test process's Ray processes of one kind (``RayTrainWorker``, ``TrainController``): descendants
    only, never another session's."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            title = " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if title.startswith(f"ray::{kind}"):
            found.append(p)
    return found


def wait_until_gone(kind: str, timeout: float = 90) -> None:
    _poll(lambda: not ray_processes(kind), timeout, f"{kind} processes still alive after {timeout} s", interval=0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` with a sqlite store and an artifact folder under ``root``; one worker, no job
    runner (it starts in seconds on a busy 2-core machine)."""

    def __init__(self, root: Path, port: int | None = None):
        self.root, self.port = Path(root), port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        mlflow = str(Path(sys.executable).parent / "mlflow")
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        log = open(self.root / "server.log", "a")
        self.proc = subprocess.Popen(
            [mlflow, "server", "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db", "--artifacts-destination",
             str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"mlflow server did not answer on {self.uri} within {timeout} s")

    def stop(self) -> None:
        """Kill the server and its worker processes (SIGKILL: an outage, not a shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
