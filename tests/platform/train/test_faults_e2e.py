"""The fault suite: real failures injected into real runs (``python -m platform.train`` on a real Ray
cluster of three nodes from ``ray.cluster_utils``, the real tiny Co-DETR, real MLflow stores).

Three runs of 3 short epochs (a checkpoint after each; 4 or 5 iterations per epoch, depending on the
aspect-ratio grouping of the batches), module-scoped, share the assertions below:

- ``reference``: logs to a real ``mlflow server`` that is SIGKILLed at iteration 2 and comes back
  only after the run: training goes on, the run finishes and saves its checkpoints, the summary
  names the spool; uploaded afterwards, every step arrives once. Its final weights are the
  uninterrupted reference (an MLflow outage cannot change training).
- ``chain``: one run through a series of faults: SIGKILL of a Ray Train worker in epoch 2
  (``max_failures=2``: restart from the checkpoint of epoch 1), removal of the node of a worker in
  epoch 3 and a new node a few seconds later (waits, then restarts from epoch 2's checkpoint),
  ``kill -9`` of the driver (the MLflow run stays RUNNING; ``platform.runs`` lists it), then the latest
  checkpoint is truncated and the same command run again: it names the broken file, falls back to
  epoch 1's checkpoint and finishes. Final weights bitwise equal to the reference; every metric step logged once.
- ``no_capacity``: the finished chain run resumed with 3 workers on 2 CPUs: fails within
  ``platform.resource_wait_s`` naming the missing resources, and leaves the run FINISHED.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

from codetr.engine import CHECKPOINT_FILE, load_checkpoint
from tests.platform.helpers import (REPO, Driver, ray_processes, train_args, wait_for_checkpoint, wait_for_step,
                                  wait_until_gone, worker_pid)
from tests.platform.helpers import MlflowServer

pytestmark = pytest.mark.slow
EPOCHS = ["train.epochs=3"]
PLAN: dict[str, int] = {}     # iterations per epoch ("ipe") and in all ("total"), read from the reference run


def _plan(driver: Driver) -> tuple[int, int]:
    line = driver.lines[driver.wait_for(r"iterations per epoch, \d+ in all")]
    ipe, total = map(int, re.search(r"(\d+) iterations per epoch, (\d+) in all", line).groups())
    PLAN.update(ipe=ipe, total=total)
    return ipe, total


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def cluster():
    """Head (no CPU: the drivers and Ray Train controllers live there) + two 1-CPU nodes, one worker each."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1), cluster.add_node(num_cpus=1)]
    cluster.wait_for_nodes()
    cluster.worker_nodes_list = nodes
    yield cluster
    cluster.shutdown()
    Path("/tmp/ray/ray_current_cluster").unlink(missing_ok=True)


def _env(cluster, tracking_uri: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    # --verbose: the suite finds the worker pids and the restarts in Ray Train's own INFO lines
    env.update(RAY_ADDRESS=cluster.address, MLFLOW_TRACKING_URI=tracking_uri, PLATFORM_VERBOSE="1")
    return env


def _run(uri: str, run_name: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("codetr_tiny")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`platform.run_name` = '{run_name}'")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return client, runs[0]


def _steps(client, run_id, key):
    return [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))]


def _final_weights(workdir: Path, run_name: str) -> dict:
    states = [load_checkpoint(d) for d in (workdir / "runs" / run_name).glob("checkpoint_*") if
              (d / CHECKPOINT_FILE).is_file()]
    final = [s for s in states if s["iteration"] == PLAN["total"]]
    assert len(final) == 1, sorted(s["iteration"] for s in states)
    return final[0]["model"]


@pytest.fixture(scope="module")
def reference(workdir, cluster):
    """An uninterrupted run whose tracking server dies at iteration 3 and returns after the run."""
    server = MlflowServer(workdir / "mlflow-server").start()
    try:
        driver = Driver(train_args(workdir, "reference", *EPOCHS), _env(cluster, server.uri))
        _, total = _plan(driver)
        driver.wait_for(rf"\[train\] reference  epoch 1/3  iter 2/{total} ")
        server.stop()
        code = driver.finish()
        out = driver.output
        server.start()
        upload = re.search(r"Upload them once the server is back: (python -m platform\.runs upload .+)", out)
        command = upload.group(1).split() if upload else []          # python -m platform.runs upload ...
        uploaded = subprocess.run([sys.executable, *command[1:]], cwd=REPO, env=_env(cluster, server.uri), capture_output=True, text=True,
                                  timeout=300) if upload else None
        later = re.search(r"then log it: (python -m platform\.runs log-model .+)", out)
        logged = subprocess.run([sys.executable, *later.group(1).split()[1:]], cwd=REPO, env=_env(cluster, server.uri),
                                capture_output=True, text=True, timeout=300) if later else None
        client, run = _run(server.uri, "reference")
        yield {"code": code, "out": out, "upload": uploaded, "logged": logged, "client": client, "run": run,
               "weights": _final_weights(workdir, "reference")}
    finally:
        server.stop()


def test_tracking_server_loss_the_run_finishes_and_its_spool_uploads_every_step_once(reference):
    out = reference["out"]
    assert reference["code"] == 0, out[-6000:]
    assert "MLflow unreachable" in out and "training goes on, logging to the spool" in out
    assert "Run reference: FINISHED" in out and "Latest checkpoint:" in out
    assert "MLflow was unreachable: its calls wait in the spool" in out
    assert reference["upload"] is not None and reference["upload"].returncode == 0, reference["upload"]
    client, run = reference["client"], reference["run"]
    assert run.info.status == "FINISHED"
    assert _steps(client, run.info.run_id, "train/loss") == list(range(1, PLAN["total"] + 1))
    assert _steps(client, run.info.run_id, "coco/AP") == [PLAN["total"]]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert "checkpoints/last.pt" in artifacts
    # the deployable model, which the run could not log while the server was away, logged afterwards
    assert "MLflow unreachable: the model is not logged" in out
    assert reference["logged"] is not None and reference["logged"].returncode == 0, reference["logged"]
    (output,) = client.get_run(run.info.run_id).outputs.model_outputs
    assert output.step == PLAN["total"]


@pytest.fixture(scope="module")
def chain(workdir, cluster, reference):
    uri = f"sqlite:///{workdir}/chain.db"
    env = _env(cluster, uri)
    args = train_args(workdir, "chain", *EPOCHS, "platform.max_failures=2", "platform.resource_wait_s=120")
    evidence = {}
    ipe, total = PLAN["ipe"], PLAN["total"]
    first = Driver(args, env)
    # 1. a worker process dies in the middle of epoch 2 (progress read from the store, see wait_for_step)
    at = first.wait_for(r"world_rank=1,")
    wait_for_checkpoint(workdir / "runs" / "chain", ipe)
    wait_for_step(uri, "chain", ipe + 2)
    victim = psutil.Process(worker_pid(first, rank=1))
    assert victim in ray_processes("RayTrainWorker")      # this test's own worker, never another process
    victim.kill()                                         # SIGKILL
    at = first.wait_for(rf"resumed from ray:.* at epoch 1, iteration {ipe}\b", start=at)
    # 2. a node goes away in epoch 3; a new one comes a few seconds after Ray Train asked for workers again
    wait_for_checkpoint(workdir / "runs" / "chain", 2 * ipe)
    wait_for_step(uri, "chain", 2 * ipe + 2)       # re-run steps are not logged again: past epoch 2's end
    cluster.remove_node(cluster.worker_nodes_list[1])
    removed_at = time.time()
    at = first.wait_for(r"Attempting to start training worker group", start=at)
    time.sleep(3)
    evidence["waited_s"] = time.time() - removed_at
    cluster.add_node(num_cpus=1)
    at = first.wait_for(rf"resumed from ray:.* at epoch 2, iteration {2 * ipe}\b", start=at)
    # 3. the driver is killed (kill -9) after that restart
    wait_for_step(uri, "chain", 2 * ipe + 3)       # past what ran before the node loss
    first.kill()
    evidence["first_out"] = first.output
    wait_until_gone("RayTrainWorker")
    client, run = _run(uri, "chain")
    evidence["status_after_kill"] = run.info.status
    listing = subprocess.run([sys.executable, "-m", "platform.runs", "list"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
    evidence["listing"] = listing.stdout + listing.stderr
    # 4. the latest checkpoint (epoch 2) is truncated, then the same command again
    newest = sorted(d for d in (workdir / "runs" / "chain").glob("checkpoint_*") if d.is_dir())[-1] / CHECKPOINT_FILE
    assert load_checkpoint(newest)["iteration"] == 2 * ipe
    newest.write_bytes(newest.read_bytes()[:1000])
    evidence["truncated"] = str(newest)
    second = Driver(args, env)
    evidence["code"] = second.finish()
    evidence["out"] = second.output
    evidence["client"], evidence["run"] = _run(uri, "chain")
    evidence["uri"] = uri
    return evidence


def test_worker_loss_restarts_from_the_checkpoint_in_the_same_run(chain):
    out = chain["first_out"]
    assert out.count("resumed from ray:") == 2                       # the worker loss, then the node loss
    assert f"[train] chain  epoch 2/3  iter {PLAN['ipe'] + 1}/{PLAN['total']} " in out


def test_node_loss_waits_for_a_new_node_and_resumes(chain):
    assert chain["waited_s"] >= 3
    assert "resumed from ray:" in chain["first_out"].split("Attempting to start training worker group")[-1]


def test_driver_loss_leaves_a_running_run_that_platform_runs_lists(chain):
    assert chain["status_after_kill"] == "RUNNING"
    listing = chain["listing"]
    assert "chain  run" in listing and "driver: gone" in listing
    assert "resume: python -m platform.train" in listing and "platform.run_name=chain" in listing


def test_same_command_resumes_past_a_truncated_checkpoint_and_finishes_the_run(chain):
    out = chain["out"]
    assert chain["code"] == 0, out[-6000:]
    assert f"checkpoint {chain['truncated']}: unreadable: truncated or corrupt" in out
    assert "falling back to the previous checkpoint" in out
    assert re.search(rf"resumed from ray:.* at epoch 1, iteration {PLAN['ipe']}\b", out)
    client, run = chain["client"], chain["run"]
    assert run.info.status == "FINISHED"
    assert run.data.tags["platform.restarts"] == "3"
    assert [m.value for m in sorted(client.get_metric_history(run.info.run_id, "platform/restart_from_iteration"),
                                    key=lambda m: m.step)] == [PLAN["ipe"], 2 * PLAN["ipe"], PLAN["ipe"]]


def test_every_metric_step_is_logged_once_across_all_restarts(chain):
    client, run = chain["client"], chain["run"]
    assert _steps(client, run.info.run_id, "train/loss") == list(range(1, PLAN["total"] + 1))
    assert _steps(client, run.info.run_id, "train/epochs_done") == [PLAN["ipe"], 2 * PLAN["ipe"], PLAN["total"]]


def test_final_weights_are_bitwise_equal_to_the_uninterrupted_run(chain, reference, workdir):
    faulty = _final_weights(workdir, "chain")
    assert faulty.keys() == reference["weights"].keys()
    assert all(torch.equal(faulty[k], reference["weights"][k]) for k in faulty)


@pytest.fixture(scope="module")
def no_capacity(workdir, cluster, chain):
    args = train_args(workdir, "chain", "train.epochs=4", "platform.num_workers=3", "platform.resource_wait_s=8")
    start = time.time()
    proc = subprocess.run(args, cwd=REPO, env=_env(cluster, chain["uri"]), capture_output=True, text=True,
                          timeout=600)
    return proc, time.time() - start


def test_no_capacity_fails_in_the_stated_time_naming_the_resources(no_capacity, chain):
    proc, elapsed = no_capacity
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-6000:]
    assert "no capacity for 3 worker(s) x {CPU: 1} within platform.resource_wait_s=8 s: the cluster has CPU 2 free of 2" \
        in out
    assert elapsed < 8 + 120
    assert "Latest checkpoint:" in out and "Continue from the latest checkpoint:" in out
    client, run = _run(chain["uri"], "chain")
    assert run.info.status == "FINISHED"                         # the failed resume left the run as it was
    assert "no capacity" in run.data.tags["platform.failed_resume"]
