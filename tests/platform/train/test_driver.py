"""Driver-side pieces without Ray: config paths, MLflow run bookkeeping, progress lines, drawings."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from codetr.config import ConfigError, load_config
from codetr.engine import LogRecord
from platform.tracking import mlflow_runs as tracking
from platform.core.config_docs import rows as config_rows
from platform.core.config_files import REPO_ROOT, absolutize_paths, check_run_name, load_run_config, resolve_config_path
from platform.core.ray_cluster import UPLOAD_EXCLUDES, runtime_env
from platform.train.records import derived_params
from platform.train.summary import resume_command
from platform.core.visualize import draw_detections, plot_loss_curves
from platform.train.reporter import progress_line


def test_config_names_resolve_to_experiments():
    assert resolve_config_path("codetr_tiny") == REPO_ROOT / "experiments" / "codetr_tiny.yaml"
    assert resolve_config_path("codetr_r50_coco.yaml").name == "codetr_r50_coco.yaml"
    with pytest.raises(ConfigError, match="not found"):
        resolve_config_path("no_such_experiment")


def test_paths_become_absolute_but_uris_stay(tmp_path):
    cfg = load_config(REPO_ROOT / "experiments" / "codetr_r50_coco.yaml",
                      ["platform.storage_path=s3://bucket/runs"])
    absolutize_paths(cfg, base=tmp_path)
    assert cfg.data.train.ann_file == str(tmp_path / "data/coco/annotations/instances_train2017.json")
    assert Path(cfg.data.synthetic.root).is_absolute()
    assert cfg.platform.storage_path == "s3://bucket/runs"


def test_run_names_are_checked():
    assert check_run_name("tiny-k2_lr.1") == "tiny-k2_lr.1"
    with pytest.raises(ConfigError, match="run_name"):
        check_run_name("../escape")


def test_runtime_env_uploads_the_repo_without_data():
    env = runtime_env()
    assert env["working_dir"] == str(REPO_ROOT)
    for pattern in ("/data/", "/runs/", "/mlruns/", "mlflow.db", ".venv/"):
        assert pattern in UPLOAD_EXCLUDES
    from ray._private.runtime_env.packaging import _get_excludes

    excluded = _get_excludes(REPO_ROOT, UPLOAD_EXCLUDES)
    assert excluded(REPO_ROOT / "data" / "synthetic" / "x.jpg") and excluded(REPO_ROOT / "runs" / "r" / "checkpoint.pt")
    # the packages themselves travel whole, codetr/data and platform/runs.py included
    assert not excluded(REPO_ROOT / "codetr" / "data" / "coco.py") and not excluded(REPO_ROOT / "platform" / "runs.py")


def test_derived_params_name_heads_and_world():
    cfg = load_run_config("codetr_tiny", ["model.aux_heads=[atss,faster_rcnn]", "model.lambda1=0.5"])
    params = derived_params(cfg, world_size=2, num_classes=5, train_images=1000)
    assert params["derived.K"] == 2
    assert params["derived.heads"] == "query,atss,faster_rcnn"
    assert params["derived.lambda1"] == 0.5
    assert params["derived.world_size"] == 2
    assert params["derived.iters_per_epoch"] == 1000 // 2 // cfg.data.batch_size
    assert params["derived.effective_batch"] == 2 * cfg.data.batch_size and params["derived.lr"] == cfg.train.lr


def test_derived_params_give_the_effective_batch_and_the_lr_used():
    cfg = load_run_config("codetr_tiny", ["data.batch_size=2", "train.accumulate_steps=2", "train.scale_lr=linear",
                                          "train.reference_batch=16", "train.lr=2e-4"])
    params = derived_params(cfg, world_size=2, num_classes=5, train_images=1000)
    assert params["derived.effective_batch"] == 8
    assert params["derived.lr"] == pytest.approx(1e-4)
    assert params["derived.iters_per_epoch"] == 1000 // 2 // 2 // 2


def test_tracking_uri_default_is_absolute_sqlite(clean_env, tmp_path):
    assert tracking.resolve_tracking_uri(cwd=tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking.resolve_tracking_uri("sqlite:///x.db", cwd=tmp_path) == f"sqlite:///{tmp_path}/x.db"
    assert tracking.resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert tracking.ui_command("sqlite:////a/mlflow.db") == "mlflow ui --backend-store-uri sqlite:////a/mlflow.db"


def test_same_run_name_reopens_the_mlflow_run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id, resumed = tracking.start_run(uri, "exp", "run-a", {"k": "v"})
    assert not resumed
    tracking.log_params(uri, run_id, {"train.lr": 0.1, "model.aux_heads": ["atss", "faster_rcnn"]})
    tracking.RunLogger(uri, run_id).log_metrics({"train/loss": 1.0}, step=3)
    tracking.end_run(uri, run_id, "KILLED")
    again, resumed = tracking.start_run(uri, "exp", "run-a")
    assert (again, resumed) == (run_id, True)
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "RUNNING"
    tracking.log_params(uri, run_id, {"train.lr": 0.2, "train.epochs": 3})   # existing keys are kept
    params = client.get_run(run_id).data.params
    assert params["train.lr"] == "0.1" and params["train.epochs"] == "3"
    assert params["model.aux_heads"] == "atss,faster_rcnn"
    other, resumed = tracking.start_run(uri, "exp", "run-a", resume=False)
    assert other != run_id and not resumed


def test_progress_line_reads_well():
    record = LogRecord(iteration=120, total_iters=744, epoch=2, num_epochs=12,
                       metrics={"train/loss": 4.321, "train/images_per_s": 12.5, "train/lr": 4e-4}, eta_s=490)
    line = progress_line("tiny", record)
    assert "epoch 3/12" in line and "iter 120/744 (16%)" in line and "loss 4.3210" in line
    assert "12.5 img/s" in line and "ETA 0:08:10" in line


def test_drawings_and_plot():
    image = torch.rand(3, 64, 80)
    drawn = draw_detections(image, torch.tensor([[4.0, 4.0, 30.0, 40.0], [1, 1, 2, 2]]), torch.tensor([0, 1]),
                            torch.tensor([0.9, 0.1]), ["a", "b"], true_boxes_xyxy=torch.tensor([[5.0, 5, 30, 40]]),
                            true_labels=torch.tensor([0]))
    assert drawn.dtype == torch.uint8 and drawn.shape[0] == 3 and max(drawn.shape[1:]) == 512
    fig = plot_loss_curves({"train/loss": [(1, 3.0), (2, 2.0)], "train/atss/total": [(1, 1.0), (2, 0.5)],
                            "coco/AP": [(2, 0.1)]})
    assert len(fig.axes) == 2


def test_readme_starts_with_the_two_commands_and_the_docs_list_every_config_key():
    readme = (REPO_ROOT / "README.md").read_text()
    train_at = readme.index("python -m platform.train\n")
    test_at = readme.index("python -m pytest -q\n")
    second_section = readme.index("\n## ", readme.index("\n## ") + 1)   # the end of the first section
    assert train_at < test_at < second_section and readme.count("\n", 0, test_at) < 30
    reference = (REPO_ROOT / "docs" / "configuration.md").read_text()
    missing = [key for key, _, _ in config_rows() if f"`{key}`" not in reference]
    assert not missing, f"docs/configuration.md is stale (python -m platform.config_reference): {missing}"
    assert "docs/configuration.md" in readme   # the README says where the reference is


def test_resume_command_pins_the_run_name():
    assert resume_command(["--config", "codetr_tiny", "train.epochs=3", "platform.run_name=old"], "new") == \
        "python -m platform.train --config codetr_tiny train.epochs=3 platform.run_name=new"


def test_fit_interruptibly_returns_and_reraises():
    from platform.train.trainer import fit_interruptibly

    class Trainer:
        def __init__(self, outcome):
            self.outcome = outcome

        def fit(self):
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            return self.outcome

    assert fit_interruptibly(Trainer("result")) == "result"
    with pytest.raises(RuntimeError, match="worker died"):
        fit_interruptibly(Trainer(RuntimeError("worker died")))
