"""End to end: one real `python -m platform.train --register` run (a real local Ray cluster, the tiny
Co-DETR, a real sqlite MLflow store) read back as an MLflow user sees it, its registered model served by a
real `mlflow models serve` process on 127.0.0.1 and asked over HTTP, and the default console. (--verbose
and a failure's traceback under the quiet console: tests/platform/train/test_e2e.py.)
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from codetr.evaluation.agreement import detection_agreement
from codetr.inference import decode_image
from platform.tracking.model_logging import serving_request

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow
REGISTERED = "codetr-e2e"
SMALL = ["data.augment.scales=[128]", "data.augment.max_size=128", "data.augment.crop_prob=0",
         "data.augment.eval_scale=128", "data.augment.eval_max_size=128", "data.synthetic.num_train=32",
         "data.synthetic.num_val=8", "data.batch_size=4", "train.log_every=2", "platform.num_val_images=1"]
# Ray's and MLflow's chatter that the default console hides (platform/core/console.py)
CHATTER = ["Reporting training result", "Checkpoint successfully created", "Token authentication is enabled",
           "is now ignored by default", "Started a local Ray instance", "Creating initial MLflow database tables",
           "Setting up process group", "Wrapping provided model", "Attempting to start training worker group",
           "Failed to query Ray Train Controller actor state"]   # once a second without the dashboard, before the filter


def _env(workdir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PLATFORM_VERBOSE")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir}/mlflow.db"
    return env


def _train(workdir: Path, run_name: str, *more: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "platform.train", *SMALL, f"data.synthetic.root={workdir}/data",
            f"platform.storage_path={workdir}/runs", f"platform.run_name={run_name}", *more]
    return subprocess.run(args, cwd=REPO, env=_env(workdir), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """4 iterations on 2 CPU workers, system metrics every second, the model registered."""
    workdir = tmp_path_factory.mktemp("native")
    # the run's artifacts (checkpoints, the model) under the test's folder, not ./mlruns of the repository
    MlflowClient(f"sqlite:///{workdir}/mlflow.db").create_experiment("codetr_tiny",
                                                                      artifact_location=str(workdir / "artifacts"))
    proc = _train(workdir, "native", "train.max_iters=4", "platform.system_metrics_interval=1",
                  "--register", REGISTERED)
    assert proc.returncode == 0, f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("codetr_tiny")
    (mlflow_run,) = client.search_runs([experiment.experiment_id], filter_string="tags.`platform.run_name` = 'native'")
    return {"workdir": workdir, "proc": proc, "client": client, "experiment": experiment, "run": mlflow_run}


def test_console_shows_the_platform_and_hides_ray_chatter(run):
    out = run["proc"].stdout + run["proc"].stderr
    for line in ("[platform] run native", "[train] native  epoch 1/1  iter 2/4", "eval after epoch 1 (iter 4)",
                 "Run native: FINISHED", f"registered as models:/{REGISTERED}/1", "mlflow models serve -m",
                 "?workflowType=machine_learning"):
        assert line in out, line
    shown = [c for c in CHATTER if c in out]
    assert not shown, f"{shown}\n{out[-6000:]}"


def test_the_run_says_where_it_came_from(run):
    assert run["experiment"].tags["mlflow.experimentKind"] == "custom_model_development"
    tags = run["run"].data.tags
    assert tags["mlflow.source.name"] == "python -m platform.train" and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.runName"] == "native" and tags["mlflow.user"]
    assert tags["platform.command"].startswith("python -m platform.train ") and "--register codetr-e2e" in tags[
        "platform.command"]
    assert tags["platform.config_file"] == "codetr_tiny"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode == 0:
        assert tags["mlflow.source.git.commit"] == head.stdout.strip()
        assert tags["platform.git.dirty"] in ("true", "false")


def test_the_run_has_its_datasets_and_system_metrics(run):
    inputs = run["run"].inputs.dataset_inputs
    assert sorted((i.dataset.name, i.tags[0].value) for i in inputs) == [
        ("synthetic-shapes-train", "training"), ("synthetic-shapes-val", "validation")]
    assert {json.loads(i.dataset.profile)["num_images"] for i in inputs} == {32, 8}
    metrics = run["run"].data.metrics
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
                "system/disk_usage_percentage", "system/network_receive_megabytes"):
        assert key in metrics, sorted(metrics)
    history = run["client"].get_metric_history(run["run"].info.run_id, "system/system_memory_usage_megabytes")
    assert len(history) >= 2 and all(m.value > 0 for m in history)


def test_the_run_delivers_a_registered_model_linked_to_its_coco_metrics(run):
    client, run_id = run["client"], run["run"].info.run_id
    (output,) = run["run"].outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert model.source_run_id == run_id and "READY" in str(model.status)
    assert output.step == 4 and model.tags["platform.iteration"] == "4"
    linked = {m.key: m for m in model.metrics}
    assert linked["coco/AP"].value == run["run"].data.metrics["coco/AP"]
    assert linked["coco/AP"].dataset_name == "synthetic-shapes-val"
    assert client.get_model_version(REGISTERED, "1").source == f"models:/{output.model_id}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_registered_model_serves_detections_over_http(run):
    workdir = run["workdir"]
    image_file = sorted((workdir / "data").rglob("val/*.jpg"))[0]
    image = image_file.read_bytes()
    port = _free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", f"models:/{REGISTERED}/1",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    # the server runs `uvicorn` from PATH: this environment's, as in an activated venv
    env = dict(_env(workdir), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    log = open(workdir / "serve.log", "w")
    server = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.time() < deadline, (workdir / "serve.log").read_text()[-4000:]
            time.sleep(1)
        status, answer = _post(f"http://127.0.0.1:{port}/invocations", serving_request([image], score_threshold=0.0))
        assert status == 200, answer
        (prediction,) = answer["predictions"]
        assert set(prediction) == {"boxes", "scores", "labels", "label_names"}
        height, width = decode_image(image).shape[1:]
        boxes = np.asarray(prediction["boxes"])
        assert boxes.shape == (100, 4)                 # top-100 of 30 queries x 5 classes, threshold 0
        assert (boxes >= 0).all() and (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all()
        assert prediction["scores"] == sorted(prediction["scores"], reverse=True)
        classes = ["rectangle", "ellipse", "triangle", "cross", "ring"]
        assert prediction["label_names"] == [classes[i] for i in prediction["labels"]]
        # the same answer as the registered model loaded in this process
        mlflow.set_tracking_uri(_env(workdir)["MLFLOW_TRACKING_URI"])
        local = mlflow.pyfunc.load_model(f"models:/{REGISTERED}/1").predict(pd.DataFrame({"image": [image]}),
                                                                              params={"score_threshold": 0.0})
        # paired by label, score and box (another process may round otherwise: near-tied scores can swap)
        agreement = detection_agreement(prediction, local.iloc[0].to_dict(), score_tol=1e-4)
        assert agreement.ok(score_tol=1e-4, box_tol=1e-3), agreement.summary()
        # a request without an image column is refused with a message that names it
        status, answer = _post(f"http://127.0.0.1:{port}/invocations",
                               {"dataframe_split": {"columns": ["picture"], "data": [["eA=="]]}})
        assert status >= 400 and "image" in json.dumps(answer), answer
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)   # the server and its uvicorn worker
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        log.close()
