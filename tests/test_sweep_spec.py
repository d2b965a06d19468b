"""The sweep file: validation before Ray starts (errors name the field or key), trial names, the summary table."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from codetr.config import ConfigError
from platform.sweep import trial_dirname, trial_label
from platform.sweep_spec import parse_sweep
from platform.sweep_summary import TrialRow, table, to_csv, to_markdown

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "experiments" / "sweep_tiny.yaml"


def _write(tmp_path: Path, **fields) -> Path:
    data = {"base": str(REPO / "experiments" / "codetr_tiny.yaml"),
            "search_space": {"model.lambda1": {"grid": [0.5, 1.0]}}}
    data.update(fields)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_sweep_files_validate():
    tiny = parse_sweep(TINY)
    assert tiny.keys == ["model.aux_heads", "model.lambda1", "model.lambda2", "model.num_queries"]
    assert [len(v) for v in tiny.search_space["model.aux_heads"].values] == [0, 1, 2]
    assert tiny.num_grid_points() == 24 and tiny.scheduler["type"] == "asha"
    assert tiny.base_config().platform.num_workers == 1 and not tiny.base_config().platform.use_gpu
    paper = parse_sweep(REPO / "experiments" / "sweep.yaml")
    assert paper.search_space["model.lambda1"].values == [0.25, 0.5, 1.0, 2.0]
    assert paper.search_space["model.lambda2"].values == [1.0, 2.0, 3.0, 4.0]
    assert paper.search_space["model.num_queries"].values == [300, 900]
    assert paper.num_grid_points() == 96 and paper.base_config().platform.use_gpu


def test_defaults_metric_and_mode(tmp_path):
    spec = parse_sweep(_write(tmp_path))
    assert (spec.metric, spec.mode, spec.num_samples, spec.scheduler) == ("coco/AP", "max", 1, {"type": "none"})
    assert Path(spec.storage_path).is_absolute()


@pytest.mark.parametrize("fields, message", [
    ({"search_space": {"model.lamda1": {"grid": [1.0]}}}, "'model.lamda1' is not a config key (did you mean 'model.lambda1'?)"),
    ({"search_space": {"model.lambda1": {"grid": [-1.0]}}}, "search_space.model.lambda1: value -1.0 gives an invalid config"),
    ({"search_space": {"model.aux_heads": {"grid": [["atss", "yolo"]]}}}, "search_space.model.aux_heads"),
    ({"search_space": {"train.lr": {"loguniform": [0, 1e-3]}}}, "train.lr.loguniform: low must be > 0"),
    ({"search_space": {"train.lr": {"uniform": [1e-3, 1e-4]}}}, "low must be < high"),
    ({"search_space": {"model.num_queries": {"randint": [10, 10]}}}, "low must be < high"),
    ({"search_space": {"train.lr": {"normal": [0, 1]}}}, "unknown domain 'normal'"),
    ({"search_space": {}}, "search_space"),
    ({"mode": "maximum"}, "mode: must be 'max' or 'min'"),
    ({"num_samples": 0}, "num_samples: must be an integer >= 1"),
    ({"scheduler": {"type": "hyperband"}}, "scheduler.type: 'hyperband'"),
    ({"scheduler": {"type": "asha", "reduction_factor": 1}}, "scheduler.reduction_factor: must be > 1"),
    ({"scheduler": {"type": "asha", "grace_period": 5, "max_epochs": 2}}, "scheduler.grace_period (5)"),
    ({"scheduler": {"type": "asha", "grace": 1}}, "unknown ASHA field 'grace'"),
    ({"resources": {"workers": 2}}, "resources: unknown field 'workers'"),
    ({"search_alg": "bayes"}, "search_alg: 'bayes'"),
    ({"overrides": {"model.lamda2": 1.0}}, "overrides: 'model.lamda2' is not a config key"),
    ({"metrics": "coco/AP"}, "unknown sweep field 'metrics' (did you mean 'metric'?)"),
    ({"base": "no_such_config.yaml"}, "base: config file 'no_such_config.yaml' not found"),
    ({"name": "bad name/1"}, "platform.run_name"),
])
def test_invalid_sweep_files_name_the_problem(tmp_path, fields, message):
    with pytest.raises(ConfigError) as info:
        parse_sweep(_write(tmp_path, **fields))
    assert message in str(info.value)


def test_command_line_overrides_go_to_the_sweep_or_the_base_config(tmp_path):
    spec = parse_sweep(_write(tmp_path), ["num_samples=3", "scheduler.type=none", "train.max_iters=7",
                                          "search_space.model.num_queries={choice: [10, 20]}"])
    assert spec.num_samples == 3 and spec.scheduler == {"type": "none"}
    assert spec.base_config().train.max_iters == 7
    assert spec.search_space["model.num_queries"].kind == "choice"
    with pytest.raises(ConfigError, match="'model.lamda1' is neither a sweep field"):
        parse_sweep(_write(tmp_path), ["model.lamda1=2"])


def test_resources_set_the_trial_platform(tmp_path):
    cfg = parse_sweep(_write(tmp_path, resources={"num_workers": 2, "cpus_per_worker": 3, "gpus_per_worker": 1})).base_config()
    assert (cfg.platform.num_workers, cfg.platform.cpus_per_worker, cfg.platform.use_gpu) == (2, 3, True)


def test_trial_names_show_the_hyper_parameters():
    values = {"model.aux_heads": ["atss", "faster_rcnn"], "model.lambda1": 0.5, "model.num_queries": 30}
    assert trial_label(values) == "K=2[atss+faster_rcnn] lambda1=0.5 num_queries=30"
    assert trial_label({"model.aux_heads": []}) == "K=0[]"
    name = trial_dirname("ab12_00003", values)
    assert name == "ab12_00003_K2-atss.faster_rcnn_lambda1-0.5_num_queries-30"
    assert trial_dirname("x_1", {"model.aux_heads": []}) == "x_1_K0-none"


def test_summary_table_is_sorted_as_given_and_formats_values():
    rows = [TrialRow("K=2[atss+faster_rcnn]", "r2", "FINISHED", "finished", {"model.aux_heads": ["atss", "faster_rcnn"]},
                     0.25, 0.3, 4, 32, {"coco/AP50": 0.5}, [(1, 0.1)]),
            TrialRow("K=0[]", "r0", "KILLED", "stopped_early", {"model.aux_heads": []}, None, None, 1, 8, {}, [])]
    header, body = table(rows, ["model.aux_heads"], "coco/AP")
    assert header[:5] == ["rank", "trial", "model.aux_heads", "coco/AP", "best coco/AP"]
    assert body[0][:5] == ["1", "K=2[atss+faster_rcnn]", "[atss, faster_rcnn]", "0.2500", "0.3000"]
    assert body[1][2:4] == ["[]", ""]
    assert to_csv(header, body).splitlines()[1].startswith("1,K=2[atss+faster_rcnn],\"[atss, faster_rcnn]\",0.2500")
    assert to_markdown(header, body).count("\n") == 4
