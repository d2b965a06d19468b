"""End to end: `python -m platform.train` as a subprocess on a real local Ray cluster, the real
Co-DETR (tiny config, K=2) and a real MLflow store; resume, Ctrl-C, the CLIs, and two Ray nodes.

Small images and a handful of iterations keep each run to about a minute on 2 CPU cores.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from codetr.engine import load_checkpoint

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow

SMALL = ["data.augment.scales=[128]", "data.augment.max_size=128", "data.augment.crop_prob=0",
         "data.augment.eval_scale=128", "data.augment.eval_max_size=128",
         "data.synthetic.num_train=32", "data.synthetic.num_val=8", "data.batch_size=4",
         "train.log_every=2", "platform.num_val_images=2",
         "platform.log_model=false"]   # the MLflow model of a run: tests/platform/tracking/test_mlflow_native_e2e.py


def _env(workdir: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir}/mlflow.db"
    env.update(extra)
    return env


def _train_args(workdir: Path, run_name: str, *more: str) -> list[str]:
    return [sys.executable, "-m", "platform.train", *SMALL, f"data.synthetic.root={workdir}/data",
            f"platform.storage_path={workdir}/runs", f"platform.run_name={run_name}", *more]


def _train(workdir: Path, run_name: str, *more: str, env: dict | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(_train_args(workdir, run_name, *more), cwd=REPO, env=env or _env(workdir),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    return proc


def _runs(workdir: Path, run_name: str):
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("codetr_tiny")
    return client, client.search_runs([experiment.experiment_id],
                                      filter_string=f"tags.`platform.run_name` = '{run_name}'")


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for info in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, info.path) if info.is_dir else [info.path]
    return out


def _checkpoints(workdir: Path, run_name: str) -> list[tuple[int, Path]]:
    folders = [d for d in (workdir / "runs" / run_name).glob("checkpoint_*") if d.is_dir()]
    found = [(load_checkpoint(d)["iteration"], d) for d in folders]
    return sorted(found)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One default-style run: 2 CPU workers, 4 iterations (one epoch), evaluation, checkpoint."""
    workdir = tmp_path_factory.mktemp("e2e")
    proc = _train(workdir, "e2e", "train.max_iters=4")
    return workdir, proc


def test_train_leaves_a_complete_mlflow_run(trained):
    workdir, proc = trained
    client, runs = _runs(workdir, "e2e")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["derived.K"] == "2" and params["derived.heads"] == "query,atss,faster_rcnn"
    assert params["derived.world_size"] == "2" and params["derived.num_queries"] == params["model.num_queries"]
    assert params["derived.lambda1"] == params["model.lambda1"] and "derived.lambda2" in params
    assert params["platform.num_workers"] == "2" and params["train.max_iters"] == "4"
    metrics = run.data.metrics
    for key in ("train/loss", "train/query/loss_cls", "train/query/d0.loss_bbox", "train/atss/loss_cls",
                "train/atss/pos.loss_cls", "train/faster_rcnn/rpn.loss_cls", "train/query/total",
                "train/atss/total", "train/faster_rcnn/total", "train_unweighted/atss/loss_cls", "train/lr",
                "train/grad_norm", "train/iter_time", "train/images_per_s", "coco/AP", "coco/AP50",
                "time/data_s", "time/forward_s", "time/backward_s", "time/optimizer_s", "time/eval_s",
                "time/checkpoint_s"):
        assert key in metrics, key
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == [2, 4]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "coco/AP")] == [4]
    artifacts = _artifacts(client, run.info.run_id)
    for path in ("config.yaml", "checkpoints/last.pt", "checkpoints/best.pt", "plots/loss_curves.png"):
        assert path in artifacts, artifacts
    assert len([a for a in artifacts if a.startswith("val_images/")]) == 2
    assert "eval/coco_summary_iter0000004.txt" in artifacts
    # the summary a person reads at the end
    assert "Run e2e: FINISHED" in proc.stdout and f"MLflow run id: {run.info.run_id}" in proc.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in proc.stdout and "Final COCO metrics: AP" in proc.stdout
    assert "iter 2/4" in proc.stdout + proc.stderr and "img/s" in proc.stdout + proc.stderr
    # the checkpoint in Ray storage holds the full training state
    (iteration, folder), = _checkpoints(workdir, "e2e")
    state = load_checkpoint(folder)
    assert iteration == 4 and state["epoch"] == 1 and len(state["rng_states"]) == 2
    assert {"model", "optimizer", "scheduler", "config", "num_classes", "category_names"} <= set(state)
    assert state["config"]["platform"]["run_name"] == "e2e"


def test_run_logs_branch_aps_assignment_statistics_and_diagnostics(trained):
    """Every auxiliary head's own AP beside the query head's, the assignment counts and the encoder diagnostic
    (docs/diagnostics.md), one step per evaluation, in the real MLflow store."""
    workdir, proc = trained
    client, (run,) = _runs(workdir, "e2e")
    metrics = run.data.metrics
    for head in ("atss", "faster_rcnn"):
        for stat in ("AP", "AP50", "AP75", "AR100"):
            assert 0.0 <= metrics[f"branch/{head}/coco/{stat}"] <= 1.0, (head, stat)
        assert [m.step for m in client.get_metric_history(run.info.run_id, f"branch/{head}/coco/AP")] == [4]
        assert metrics[f"assign/{head}/pos_per_gt"] > 0
        assert 0.0 <= metrics[f"assign/{head}/gt_without_pos"] <= 1.0
        assert metrics[f"assign/{head}/pos_queries_per_image"] > 0
        assert f"{head}/coco/AP" in proc.stdout    # the eval line prints each branch's AP
    assert not [k for k in metrics if k.startswith("branch/") and k.count("/") > 3]   # no per-class APs per branch
    assert metrics["assign/query/matched_per_image"] > 0
    assert 0.0 <= metrics["diag/encoder_iof_iob_auc"] <= 1.0 and 0.0 <= metrics["diag/decoder_iof_iob_auc"] <= 1.0
    assert [m.step for m in client.get_metric_history(run.info.run_id, "diag/encoder_iof_iob_auc")] == [4]
    assert "diag/instability" not in metrics      # one evaluation: nothing to compare with yet
    artifacts = _artifacts(client, run.info.run_id)
    assert "diagnostics/encoder_iof_iob_iter0000004.png" in artifacts
    assert "diagnostics/decoder_iof_iob_iter0000004.png" in artifacts
    # the final evaluation's error analysis
    for kind in ("cls", "loc", "both", "dupl", "bkg", "missed"):
        assert -1.0 <= metrics[f"errors/dAP_{kind}"] <= 1.0 and metrics[f"errors/count_{kind}"] >= 0
    for name in ("error_breakdown.png", "pr_curves.png", "confusion_matrix.png", "ap_by_size_and_class.png"):
        assert f"errors/{name}" in artifacts, name


def test_analyze_cli_on_a_run_id(trained, tmp_path):
    workdir, _ = trained
    client, (run,) = _runs(workdir, "e2e")
    out = tmp_path / "analysis"
    proc = subprocess.run([sys.executable, "-m", "platform.analyze", run.info.run_id, "--out", str(out), "--log"],
                          cwd=REPO, env=_env(workdir), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "dAP50" in proc.stdout and "missed" in proc.stdout
    summary = json.loads((out / "error_analysis.json").read_text())
    assert summary["iteration"] == 4 and "errors/dAP_bkg" in summary["metrics"]
    assert sorted(p.name for p in out.glob("*.png")) == ["ap_by_size_and_class.png", "confusion_matrix.png",
                                                         "error_breakdown.png", "pr_curves.png"]
    assert "errors/error_analysis.json" in _artifacts(client, run.info.run_id)
    proc = subprocess.run([sys.executable, "-m", "platform.analyze", "no-such-run"], cwd=REPO, env=_env(workdir),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "neither a checkpoint path nor an MLflow run id" in proc.stderr


def test_same_run_name_resumes_from_the_latest_checkpoint(trained):
    workdir, _ = trained
    proc = _train(workdir, "e2e", "train.max_iters=6")
    assert "resumed from ray:" in proc.stdout + proc.stderr
    assert "at epoch 1, iteration 4" in proc.stdout + proc.stderr
    client, runs = _runs(workdir, "e2e")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"          # the same MLflow run continues
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")]
    assert steps == [2, 4, 6]
    assert [i for i, _ in _checkpoints(workdir, "e2e")] == [4, 6]


def test_explicit_resume_path_starts_a_new_run_from_it(trained):
    workdir, _ = trained
    iteration, folder = _checkpoints(workdir, "e2e")[0]
    proc = _train(workdir, "e2e-fork", f"train.max_iters={iteration + 1}", "--resume", str(folder), "--verbose")
    assert f"iteration {iteration}" in proc.stdout + proc.stderr
    # --verbose: Ray's own lines, hidden by default (tests/platform/tracking/test_mlflow_native_e2e.py), are back
    for line in ("Started a local Ray instance", "Attempting to start training worker group", "Reporting training result"):
        assert line in proc.stdout + proc.stderr, line
    client, runs = _runs(workdir, "e2e-fork")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["platform.resumed_from"] == str(folder)
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")]
    assert steps == [iteration + 1]


def test_evaluate_and_predict_clis(trained, tmp_path):
    workdir, _ = trained
    _, folder = _checkpoints(workdir, "e2e")[-1]
    out_json = tmp_path / "metrics.json"
    proc = subprocess.run([sys.executable, "-m", "platform.evaluate", "--checkpoint", str(folder),
                           "--json", str(out_json), "--mlflow", "--branch", "all"], cwd=REPO, env=_env(workdir),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "coco/AP " in proc.stdout and "Logged to MLflow run" in proc.stdout
    metrics = json.loads(out_json.read_text())["metrics"]
    assert 0.0 <= metrics["coco/AP"] <= 1.0
    assert 0.0 <= metrics["branch/atss/coco/AP"] <= 1.0 and 0.0 <= metrics["branch/faster_rcnn/coco/AP"] <= 1.0
    proc = subprocess.run([sys.executable, "-m", "platform.evaluate", "--checkpoint", str(folder), "--branch", "fcos"],
                          cwd=REPO, env=_env(workdir), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "atss, faster_rcnn" in proc.stderr

    images = sorted((workdir / "data").rglob("*.jpg"))[:2] or sorted((workdir / "data").rglob("*.png"))[:2]
    assert images
    out_dir = tmp_path / "pred"
    proc = subprocess.run([sys.executable, "-m", "platform.predict", "--checkpoint", str(folder), "--out",
                           str(out_dir), "--score-threshold", "0.0", *map(str, images)], cwd=REPO,
                          env=_env(workdir), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = json.loads((out_dir / "detections.json").read_text())
    assert [r["image"] for r in records] == [str(p) for p in images]
    assert records[0]["detections"] and set(records[0]["detections"][0]) == {"box_xyxy", "score", "label",
                                                                               "category"}
    assert len(list((out_dir / "images").glob("*.png"))) == 2
    assert len(json.loads((out_dir / "coco_results.json").read_text())) >= 2


def test_ctrl_c_ends_the_mlflow_run_killed(tmp_path):
    args = _train_args(tmp_path, "interrupted", "train.epochs=100", "train.max_iters=400")  # long enough to interrupt
    # its own process group, like a command in a terminal: Ctrl-C signals the whole group
    # and SIGINT at its default disposition, as in a terminal: a shell without job control (CI scripts,
    # `cmd &`) starts children with SIGINT ignored, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen(args, cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    deadline = time.time() + 480
    try:
        for line in proc.stdout:
            lines.append(line)
            if "[train] interrupted  epoch" in line or time.time() > deadline:
                break
        assert any("[train] interrupted  epoch" in line for line in lines), "".join(lines[-50:])
        os.killpg(proc.pid, signal.SIGINT)   # what Ctrl-C sends
        rest, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, rest[-4000:]
    assert "Run interrupted: KILLED" in rest
    # interrupted before its first checkpoint: the summary offers no resume command, it says why
    assert "No checkpoint was written: running the same command again starts over" in rest
    assert "Continue from" not in rest
    _, runs = _runs(tmp_path, "interrupted")
    assert len(runs) == 1 and runs[0].info.status == "KILLED"


def test_two_node_cluster_trains_checkpoints_and_logs_one_run(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        env = _env(tmp_path, RAY_ADDRESS=cluster.address)
        proc = _train(tmp_path, "two-nodes", "train.max_iters=2", "platform.placement_strategy=STRICT_SPREAD",
                      env=env)
    finally:
        cluster.shutdown()
    assert "joined the Ray cluster" in proc.stdout
    client, runs = _runs(tmp_path, "two-nodes")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["derived.num_nodes"] == "2"
    assert "coco/AP" in runs[0].data.metrics
    assert "checkpoints/last.pt" in _artifacts(client, runs[0].info.run_id)
    assert [i for i, _ in _checkpoints(tmp_path, "two-nodes")] == [2]


def test_a_failing_worker_ends_the_run_failed(tmp_path):
    # 32 images, 2 workers, batches of 64: no full batch, the workers raise (the aspect-ratio grouping
    # sampler pads its groups to whole batches, so it is off here)
    proc = subprocess.run(_train_args(tmp_path, "broken", "data.batch_size=64", "data.group_by_aspect_ratio=false"),
                          cwd=REPO, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "gives no full batch" in proc.stdout + proc.stderr
    assert "Traceback (most recent call last)" in proc.stdout + proc.stderr   # the quiet console keeps it
    assert "Run broken: FAILED" in proc.stdout
    # one line naming the worker's error; the traceback in a file; no resume offered without a checkpoint
    assert "[platform] training failed: ValueError (worker rank " in proc.stderr
    assert "Full traceback: " in proc.stdout and "No checkpoint was written" in proc.stdout
    assert "Continue from the latest checkpoint" not in proc.stdout
    _, runs = _runs(tmp_path, "broken")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_runs_the_same_command(tmp_path):
    from ray.cluster_utils import Cluster

    port = _free_port()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": True,
                                                            "dashboard_host": "127.0.0.1", "dashboard_port": port})
    try:
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        entrypoint = [sys.executable, *_train_args(tmp_path, "as-a-job", "train.max_iters=2")[1:]]
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
        submit = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{port}",
                  "--working-dir", ".", "--runtime-env-json", json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": uri}}),
                  "--", *entrypoint]
        deadline = time.time() + 300   # the job agent comes up after the head node (minutes on a busy machine)
        while True:
            proc = subprocess.run(submit, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
            if "No available agent" not in proc.stdout + proc.stderr or time.time() > deadline:
                break
            time.sleep(5)
    finally:
        cluster.shutdown()
    out = proc.stdout + proc.stderr
    assert "No available agent" not in out, "the Ray job agent of the test cluster did not come up within 5 minutes"
    assert proc.returncode == 0, out[-6000:]
    assert "as a Ray job" in out and "Run as-a-job: FINISHED" in out
    _, runs = _runs(tmp_path, "as-a-job")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and "coco/AP" in runs[0].data.metrics
    assert [i for i, _ in _checkpoints(tmp_path, "as-a-job")] == [2]
