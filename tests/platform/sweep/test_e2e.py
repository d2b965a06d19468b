"""End to end: real Ray Tune sweeps of the tiny Co-DETR on a real `ray start --head` cluster, submitted
with `ray job submit` (token authentication on), compared in a real MLflow store.

One head node (2 CPUs) serves the module. Trials are a few iterations on 8 small images.

- a 3-trial sweep over the batch size, submitted as a Ray job, with ASHA ranking by ``iteration``
  (higher is better): at the first rung the batch-size-8 trial has done the fewest iterations,
  so ASHA stops it, deterministically, whatever the (untrained) detector's AP;
- an interrupted sweep (SIGINT to the driver after a trial's first epoch), then ``--resume``.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow

SMALL = ["data.augment.scales=[96]", "data.augment.max_size=96", "data.augment.crop_prob=0",
         "data.augment.eval_scale=96", "data.augment.eval_max_size=96", "data.synthetic.num_train=8",
         "data.synthetic.num_val=2", "data.num_workers=0", "train.log_every=1", "platform.num_val_images=1",
         "model.num_queries=20", "train.epochs=2", "train.lr_steps=[2]", "scheduler.max_epochs=2",
         "scheduler.reduction_factor=2", "platform.log_model=false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for info in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, info.path) if info.is_dir else [info.path]
    return out


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A `ray start --head --block` cluster of our own (own ports, own token); stopped by its pid."""
    workdir = tmp_path_factory.mktemp("sweep")
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(PATH=f"{venv_bin}:{env.get('PATH', '')}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex)
    port, dashboard = _free_port(), _free_port()
    ports = {f"--{name}": str(_free_port()) for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                          "metrics-export-port", "runtime-env-agent-port",
                                                          "ray-client-server-port")}
    cmd = [f"{venv_bin}/ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
           "--disable-usage-stats", *(f"{k}={v}" for k, v in ports.items())]
    log = open(workdir / "ray_head.log", "w")
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 180
    while True:
        ready = subprocess.run([f"{venv_bin}/ray", "job", "list", "--address", address], env=env,
                               capture_output=True, text=True)
        if ready.returncode == 0:
            break
        if proc.poll() is not None or time.time() > deadline:
            proc.terminate()
            pytest.fail(f"ray start --head did not come up:\n{(workdir / 'ray_head.log').read_text()[-4000:]}")
        time.sleep(3)
    yield {"workdir": workdir, "env": env, "job_address": address, "gcs_address": f"127.0.0.1:{port}"}
    proc.send_signal(signal.SIGTERM)     # `ray start --block` stops the processes it started
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    # `ray start` records its address here and leaves it behind: later address look-ups on this
    # machine (ray.init(), the state API) would try this dead cluster
    current = Path("/tmp/ray/ray_current_cluster")
    if current.is_file() and current.read_text().strip().endswith(f":{port}"):
        current.unlink()


def _sweep_args(workdir: Path, name: str, *more: str) -> list[str]:
    return ["experiments/sweep_tiny.yaml", f"name={name}", f"storage_path={workdir}/runs",
            f"data.synthetic.root={workdir}/data", *SMALL, *more]


def _parent_and_children(tracking_uri: str, name: str):
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("codetr_tiny_sweep")
    parents = client.search_runs([experiment.experiment_id], filter_string=f"tags.`platform.run_name` = '{name}'")
    assert len(parents) == 1, [p.info.run_name for p in parents]
    parent = parents[0]
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return client, parent, children


def test_sweep_as_a_ray_job_with_asha(head):
    workdir, env = head["workdir"], head["env"]
    tracking_uri = f"sqlite:///{workdir}/mlflow.db"
    runtime_env = json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": tracking_uri}})
    args = _sweep_args(workdir, "asha", "metric=iteration", "max_concurrent_trials=2",
                       "search_space={data.batch_size: {grid: [2, 4, 8]}}", "platform.log_model=true",
                       "--register", "sweep-asha")
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", head["job_address"],
           "--working-dir", ".", "--runtime-env-json", runtime_env, "--", "python", "-m", "platform.sweep", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout[-8000:] + proc.stderr[-4000:]
    assert proc.returncode == 0 and "succeeded" in proc.stdout, output

    client, parent, children = _parent_and_children(tracking_uri, "asha")
    assert parent.info.status == "FINISHED", output
    assert len(children) == 3
    by_batch = {json.loads(c.data.tags["sweep.values"])["data.batch_size"]: c for c in children}
    assert sorted(by_batch) == [2, 4, 8]
    for batch, child in by_batch.items():
        assert child.info.status != "RUNNING"
        assert child.info.run_name == f"batch_size={batch}"
        # the params, metrics and artifacts of a single run
        assert child.data.params["data.batch_size"] == str(batch)
        assert child.data.params["derived.K"] == "2" and "model.lambda1" in child.data.params
        assert "coco/AP" in child.data.metrics and "train/loss" in child.data.metrics
        assert "config.yaml" in _artifacts(client, child.info.run_id)
    stopped = by_batch[8]
    assert (stopped.info.status, stopped.data.tags["sweep.end"]) == ("KILLED", "stopped_early"), output
    assert by_batch[2].info.status == "FINISHED" and by_batch[2].data.tags["sweep.end"] == "finished"
    assert by_batch[2].data.metrics["train/epochs_done"] == 2

    artifacts = _artifacts(client, parent.info.run_id)
    for path in ("summary/results.csv", "summary/results.md", "summary/best_config.yaml", "sweep.yaml",
                 "plots/iteration_vs_data.batch_size.png", "plots/coco_AP_over_epochs.png"):
        assert path in artifacts, artifacts
    table = client.download_artifacts(parent.info.run_id, "summary/results.csv", str(workdir))
    lines = Path(table).read_text().splitlines()
    assert lines[0].startswith("rank,trial,data.batch_size,iteration")
    assert [line.split(",")[2] for line in lines[1:]] == ["2", "4", "8"]   # sorted by iteration, best first
    best = client.download_artifacts(parent.info.run_id, "summary/best_config.yaml", str(workdir))
    import yaml
    assert yaml.safe_load(Path(best).read_text())["data"]["batch_size"] == 2
    assert parent.data.tags["sweep.best_run_id"] == by_batch[2].info.run_id

    # where the runs came from (a Ray job: no git checkout in the job's copy of the repository)
    for run in (client.get_run(r.info.run_id) for r in (parent, *children)):
        assert run.data.tags["mlflow.source.name"] == "python -m platform.sweep", run.data.tags
        assert run.data.tags["mlflow.source.type"] == "JOB" and run.data.tags["mlflow.user"]
        assert run.data.tags["platform.command"].startswith("python -m platform.sweep experiments/sweep_tiny.yaml")
        assert sorted(i.dataset.name for i in run.inputs.dataset_inputs) == ["synthetic-shapes-train",
                                                                            "synthetic-shapes-val"]
    assert by_batch[4].data.tags["mlflow.runName"] == "batch_size=4" and parent.data.tags["mlflow.runName"] == "asha"
    # the best trial's model: logged from its child run, an output of the parent too, registered
    version = client.get_model_version("sweep-asha", "1")
    model = client.get_logged_model(version.source.removeprefix("models:/"))
    assert model.source_run_id == by_batch[2].info.run_id
    assert [o.model_id for o in client.get_run(parent.info.run_id).outputs.model_outputs] == [model.model_id]
    assert "registered as models:/sweep-asha/1" in proc.stdout, output


def test_interrupted_sweep_resumes(head):
    workdir = head["workdir"]
    tracking_uri = f"sqlite:///{workdir}/mlflow.db"
    env = dict(head["env"], RAY_ADDRESS=head["gcs_address"], MLFLOW_TRACKING_URI=tracking_uri)
    args = _sweep_args(workdir, "resume", "data.batch_size=4", "max_concurrent_trials=1", "scheduler.type=none",
                       "train.checkpoint_every=1",
                       "search_space={model.lambda1: {grid: [0.5, 1.0]}}")
    cmd = [sys.executable, "-m", "platform.sweep", *args]
    # create the store's schema now: the polling below must not race the sweep to create it
    MlflowClient(tracking_uri).search_experiments()
    log = workdir / "resume_first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        client = None
        deadline = time.time() + 600
        checkpointed = set()
        while time.time() < deadline and proc.poll() is None:   # interrupt once a running trial has a checkpoint
            time.sleep(0.5)
            try:
                client, parent, children = _parent_and_children(tracking_uri, "resume")
            except Exception:
                continue
            # a checkpoint Tune registered (the driver names it in the child run) of a trial still running:
            # `train/epochs_done` is logged before the checkpoint reaches the driver, and with one trial at a
            # time the first may be done while the second has none yet; either restarts from scratch
            checkpointed = {c.info.run_id for c in children
                            if c.info.status == "RUNNING" and c.data.tags.get("sweep.checkpoint")}
            if checkpointed:
                break
        assert proc.poll() is None, f"the sweep ended before it could be interrupted:\n{log.read_text()[-6000:]}"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=300) == 130, log.read_text()[-6000:]

    client, parent, children = _parent_and_children(tracking_uri, "resume")
    assert parent.info.status == "KILLED"
    assert children and all(c.info.status != "RUNNING" for c in children)
    interrupted = {c.info.run_id for c in children if c.data.tags.get("sweep.end") == "interrupted"}
    assert interrupted, [(c.info.status, c.data.tags.get("sweep.end")) for c in children]

    proc = subprocess.run([*cmd, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout[-8000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, output
    client, parent_after, children_after = _parent_and_children(tracking_uri, "resume")
    assert parent_after.info.run_id == parent.info.run_id and parent_after.info.status == "FINISHED"
    assert len(children_after) == 2
    assert {c.info.status for c in children_after} == {"FINISHED"}, output
    # a trial interrupted after its last epoch's checkpoint still reports its end on resume
    assert {c.data.tags["sweep.end"] for c in children_after} == {"finished"}, output
    for child in children_after:
        assert child.data.metrics["train/epochs_done"] == 2
        if child.info.run_id in interrupted & checkpointed:   # the same MLflow run, continued from its checkpoint
            assert child.data.tags.get("platform.resumed_from", "").startswith("ray:"), child.data.tags
    assert checkpointed & interrupted, (checkpointed, interrupted)


def test_failing_trial_ends_failed_and_the_sweep_goes_on(head):
    """A config that validates but cannot train (a batch larger than the 8-image training set, without
    the aspect-ratio grouping that would pad it) fails in its Ray Train worker: that child run ends
    FAILED with the error noted, the other trial finishes. The trials run on Ray Train
    (``trial_runner=ray_train``; the other sweeps here train inline, in their Tune trial's process)."""
    workdir = head["workdir"]
    tracking_uri = f"sqlite:///{workdir}/mlflow.db"
    env = dict(head["env"], RAY_ADDRESS=head["gcs_address"], MLFLOW_TRACKING_URI=tracking_uri)
    args = _sweep_args(workdir, "failing", "scheduler.type=none", "train.epochs=1", "train.lr_steps=[1]",
                       "search_space={data.batch_size: {grid: [4, 16]}}", "data.group_by_aspect_ratio=false",
                       "trial_runner=ray_train",
                       "max_failures=0")   # no second attempt: the retries are tests/platform/sweep/test_faults.py's
    proc = subprocess.run([sys.executable, "-m", "platform.sweep", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    output = proc.stdout[-8000:] + proc.stderr[-4000:]
    assert proc.returncode == 1, output   # an incomplete sweep (tests/platform/sweep/test_faults.py)
    assert "1 of 2 trial(s) failed" in proc.stdout, output
    client, parent, children = _parent_and_children(tracking_uri, "failing")
    assert parent.info.status == "FAILED" and parent.data.tags["sweep.incomplete"] == "true"
    by_batch = {json.loads(c.data.tags["sweep.values"])["data.batch_size"]: c for c in children}
    assert (by_batch[4].info.status, by_batch[4].data.tags["sweep.end"]) == ("FINISHED", "finished")
    failed = by_batch[16]
    assert (failed.info.status, failed.data.tags["sweep.end"]) == ("FAILED", "failed"), output
    assert failed.data.tags["sweep.end_note"].startswith("ValueError: the training set (8 images) gives no full "
                                                         "batch of 16"), failed.data.tags["sweep.end_note"]
    assert "error/error.txt" in _artifacts(client, failed.info.run_id)
    table = client.download_artifacts(parent.info.run_id, "summary/results.csv", str(workdir))
    header, *rows = [r.split(",") for r in Path(table).read_text().splitlines()]
    end = [name.strip() for name in header].index("end")   # branch and diag/* columns may follow
    assert [r[2] for r in rows] == ["4", "16"] and rows[1][end] == "failed", header


def test_repeated_sweep_statistics_and_report(head):
    """2 seeds x 3 configurations (K = 0, K = 1, and K = 0 again with no drawn validation image, which
    must not change training), ranked by train/loss: the same seed gives bitwise the same losses, the
    summary's intervals and paired differences are the ones computed here from the child runs, and
    ``platform.report`` sets the K rows beside the paper's."""
    from scipy import stats as scipy_stats

    workdir = head["workdir"]
    tracking_uri = f"sqlite:///{workdir}/mlflow.db"
    env = dict(head["env"], RAY_ADDRESS=head["gcs_address"], MLFLOW_TRACKING_URI=tracking_uri)
    configurations = ("configurations=[{model.aux_heads: []}, {model.aux_heads: [atss]}, "
                      "{model.aux_heads: [], platform.num_val_images: 0}]")
    args = _sweep_args(workdir, "repeats", "search_space=null", configurations, "seeds=[0, 1]",
                       "baseline={model.aux_heads: [], platform.num_val_images: 1}", "scheduler.type=none",
                       "metric=train/loss", "mode=min")
    proc = subprocess.run([sys.executable, "-m", "platform.sweep", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    output = proc.stdout[-8000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, output
    client, parent, children = _parent_and_children(tracking_uri, "repeats")
    assert len(children) == 6 and {c.info.status for c in children} == {"FINISHED"}, output
    by = {(c.data.tags["sweep.config_id"], int(c.data.tags["sweep.seed"])): c for c in children}
    assert sorted(by) == [(f"c{i}", s) for i in (1, 2, 3) for s in (0, 1)]
    for (config_id, seed), child in by.items():
        assert child.data.params["train.seed"] == str(seed)
        assert child.info.run_name.endswith(f"seed={seed}")
        assert child.data.tags["sweep.config"] == {"c1": "K=0[] num_val_images=1", "c2": "K=1[atss] num_val_images=1",
                                                   "c3": "K=0[] num_val_images=0"}[config_id]

    def losses(config_id, seed):
        history = client.get_metric_history(by[(config_id, seed)].info.run_id, "train/loss")
        return [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)]

    # same seed, same config (up to what it draws after training): bitwise the same run, whichever
    # process of the reused trial actors ran it; another seed: another run
    for seed in (0, 1):
        assert losses("c1", seed) == losses("c3", seed) and len(losses("c1", seed)) >= 4
    assert losses("c1", 0) != losses("c1", 1)

    final = {key: child.data.metrics["train/loss"] for key, child in by.items()}

    def t_ci(values):
        mean, sd = sum(values) / len(values), scipy_stats.tstd(values)
        half = scipy_stats.t.ppf(0.975, len(values) - 1) * sd / len(values) ** 0.5
        return mean, mean - half, mean + half

    table = client.download_artifacts(parent.info.run_id, "summary/configurations.csv", str(workdir))
    import csv
    rows = {r["config"].split()[0]: r for r in csv.DictReader(open(table))}
    for config_id in ("c1", "c2", "c3"):
        mean, low, high = t_ci([final[(config_id, 0)], final[(config_id, 1)]])
        assert float(rows[config_id]["mean train/loss"]) == pytest.approx(mean, abs=1e-4)
        assert rows[config_id]["95% CI"] == f"[{low:.4f}, {high:.4f}]"
        assert parent.data.metrics[f"stats/{config_id}/mean"] == pytest.approx(mean, rel=1e-9)
    assert rows["c1"]["config"] == "c1 (baseline)"
    diff_mean, diff_low, diff_high = t_ci([final[("c2", s)] - final[("c1", s)] for s in (0, 1)])
    assert float(rows["c2"]["diff vs c1 (paired)"]) == pytest.approx(diff_mean, abs=1e-4)
    assert rows["c2"]["95% CI of diff"] == f"[{diff_low:.4f}, {diff_high:.4f}]"
    assert rows["c2"]["excludes 0"] == ("yes" if diff_low > 0 or diff_high < 0 else "no")
    assert rows["c3"]["diff vs c1 (paired)"] == "0.0000" and rows["c3"]["excludes 0"] == "no"
    artifacts = _artifacts(client, parent.info.run_id)
    for path in ("summary/results.md", "summary/key_effects.csv", "plots/differences_vs_baseline.png",
                 "plots/train_loss_vs_model.aux_heads.png", "plots/coco_AP_over_epochs.png"):
        assert path in artifacts, artifacts
    results = Path(client.download_artifacts(parent.info.run_id, "summary/results.md", str(workdir))).read_text()
    assert results.startswith("### Configurations over seeds [0, 1]") and "### Trials" in results

    out = workdir / "report_repeats"
    proc = subprocess.run([sys.executable, "-m", "platform.report", "repeats", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = (out / "report.md").read_text()
    assert "## K auxiliary heads" in report and (out / "paper_vs_toy.png").is_file()
    k1 = next(line for line in report.splitlines() if line.startswith("| K=1 (ATSS) | 48.7 | +1.6 | c2 | 2 |"))
    # mode min: a lower loss is the paper's direction (a higher AP)
    assert ("| agrees |" in k1) == (diff_mean < 0) and ("yes (CI excludes 0)" in k1) == (diff_low > 0 or diff_high < 0)
    assert "report/report.md" in _artifacts(client, parent.info.run_id)
    missing = subprocess.run([sys.executable, "-m", "platform.report", "no_such_sweep"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no sweep named 'no_such_sweep'" in missing.stderr
