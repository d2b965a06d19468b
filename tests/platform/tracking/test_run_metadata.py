"""What a run says about itself in MLflow, without Ray: the experiment kind, the source tags (real git
checkouts) and the dataset inputs (real COCO files, a real sqlite store)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from codetr.data import build_dataset
from platform.tracking import mlflow_runs as tracking
from platform.tracking.datasets import describe, file_digest, log_datasets
from platform.tracking.source import REPO_ROOT, git_state, source_tags
from platform.core.config_files import load_run_config
from tests.datasets import write_dataset


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory):
    """One sqlite store for the module (creating its schema takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


def test_created_and_reused_experiments_are_model_training_experiments(store_uri):
    uri = store_uri
    client = MlflowClient(uri)
    plain = client.create_experiment("made-elsewhere")           # an experiment the platform did not create
    assert "mlflow.experimentKind" not in client.get_experiment(plain).tags
    assert tracking.get_or_create_experiment(client, "made-elsewhere") == plain
    new = tracking.get_or_create_experiment(client, "new-one")
    for experiment_id in (plain, new):
        assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    client.delete_experiment(new)                                  # a deleted one comes back, tagged
    assert tracking.get_or_create_experiment(client, "new-one") == new
    assert client.get_experiment(new).lifecycle_stage == "active"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_git_state_reports_commit_branch_and_dirty_flag(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "first")
    state = git_state(repo)
    assert state["commit"] == _git(repo, "rev-parse", "HEAD") and state["branch"] == "main"
    assert state["dirty"] == "false" and "repo_url" not in state
    (repo / "untracked.txt").write_text("data")                    # untracked files do not make it dirty
    assert git_state(repo)["dirty"] == "false"
    (repo / "a.py").write_text("x = 2\n")
    assert git_state(repo)["dirty"] == "true"
    _git(repo, "remote", "add", "origin", "https://example.org/codetr.git")
    assert git_state(repo)["repo_url"] == "https://example.org/codetr.git"
    assert git_state(tmp_path / "nowhere") == {} and git_state(tmp_path) == {}


def test_source_tags_of_this_checkout(monkeypatch):
    for name in ("RAY_JOB_CONFIG_JSON_ENV_VAR", "RAY_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    tags = source_tags("platform.train", ["model.lambda1=0.5", "--register", "my model"],
                       config_file="experiments/codetr_tiny.yaml")
    assert tags["mlflow.source.name"] == "python -m platform.train"
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["platform.command"] == "python -m platform.train model.lambda1=0.5 --register 'my model'"
    assert tags["platform.config_file"] == "experiments/codetr_tiny.yaml"
    assert tags["mlflow.user"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    if head.returncode == 0:   # a git checkout (CI clones one)
        assert tags["mlflow.source.git.commit"] == head.stdout.strip()
        assert tags["platform.git.dirty"] in ("true", "false")
    monkeypatch.setenv("RAY_JOB_ID", "02000000")
    assert source_tags("platform.sweep", [])["mlflow.source.type"] == "JOB"


@pytest.fixture
def coco_config(tmp_path):
    ann_file, img_dir = write_dataset(tmp_path / "coco")
    overrides = ["data.dataset=coco", f"data.train.ann_file={ann_file}", f"data.train.img_dir={img_dir}",
                 f"data.val.ann_file={ann_file}", f"data.val.img_dir={img_dir}"]
    return load_run_config("codetr_tiny", overrides), ann_file


def test_coco_files_are_described_by_their_annotation_file(coco_config):
    cfg, ann_file = coco_config
    info = describe(cfg, "train", build_dataset(cfg, "train"))
    assert info.name == "instances" and info.source == str(ann_file)
    assert info.digest == file_digest(ann_file) and len(info.digest) == 16
    assert info.num_images == 4 and info.classes == ["cat", "dog", "toothbrush"]
    # the annotations of the indexed images, degenerate boxes dropped as the dataset drops them
    assert info.num_annotations == 6 and info.generator is None
    assert Path(info.example_file).is_file()
    ann_file.write_text(ann_file.read_text().replace('"toothbrush"', '"brush"'))
    assert file_digest(ann_file) != info.digest


def test_synthetic_sets_are_described_by_their_generator(tmp_path):
    small = [f"data.synthetic.root={tmp_path}/data", "data.synthetic.num_train=4", "data.synthetic.num_val=2",
             "data.synthetic.image_size=64"]
    cfg = load_run_config("codetr_tiny", small)
    train, val = describe(cfg, "train", build_dataset(cfg, "train")), describe(cfg, "val", build_dataset(cfg, "val"))
    assert (train.name, val.name) == ("synthetic-shapes-train", "synthetic-shapes-val")
    assert (train.num_images, val.num_images) == (4, 2) and train.digest != val.digest
    assert train.generator["seed"] == 0 and "root" not in train.generator
    elsewhere = load_run_config("codetr_tiny", [*small, f"data.synthetic.root={tmp_path}/other"])
    assert describe(elsewhere, "train", build_dataset(elsewhere, "train")).digest == train.digest
    reseeded = load_run_config("codetr_tiny", [*small, "data.synthetic.seed=1"])
    assert describe(reseeded, "train", build_dataset(reseeded, "train")).digest != train.digest
    with pytest.raises(ValueError, match="split"):
        describe(cfg, "test", None)


def test_datasets_become_run_inputs_once(coco_config, store_uri):
    cfg, ann_file = coco_config
    val_file = ann_file.with_name("instances_val.json")
    val_file.write_text(ann_file.read_text())
    cfg.data.val.ann_file = str(val_file)
    infos = [describe(cfg, "train", build_dataset(cfg, "train")), describe(cfg, "val", build_dataset(cfg, "val"))]
    uri = store_uri
    client = MlflowClient(uri)
    run_id, _ = tracking.start_run(uri, "exp", "with-data")
    log_datasets(uri, run_id, infos)
    log_datasets(uri, run_id, infos)    # a resumed run logs them again: nothing new
    inputs = client.get_run(run_id).inputs.dataset_inputs
    contexts = sorted((i.tags[0].value, i.dataset.name, i.dataset.digest) for i in inputs)
    assert contexts == [("training", "instances", infos[0].digest), ("validation", "instances_val", infos[1].digest)]
    # one file for both splits: one dataset (MLflow keeps one input per dataset and run), both contexts
    same, _ = tracking.start_run(uri, "exp", "same-file")
    log_datasets(uri, same, [infos[0], dataclasses.replace(infos[0], split="val")])
    (only,) = client.get_run(same).inputs.dataset_inputs
    assert only.tags[0].value == "training+validation"
    profile = json.loads(inputs[0].dataset.profile)
    assert profile["num_images"] == 4 and profile["classes"] == ["cat", "dog", "toothbrush"]
    assert json.loads(inputs[0].dataset.source) == {"uri": str(ann_file)}
    assert json.loads(inputs[0].dataset.schema)["mlflow_colspec"][0] == {"type": "binary", "name": "image",
                                                                          "required": True}


def test_printed_links_open_the_training_runs_view():
    # MLflow 3.17's UI decides GenAI / Model training per browser unless the link says which
    assert tracking.ui_url("sqlite:////a/mlflow.db", "3", "abc") == \
        "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert tracking.ui_url("http://10.0.0.1:5000/", "3") == \
        "http://10.0.0.1:5000/#/experiments/3?workflowType=machine_learning"
