"""The sweep file: validation before Ray starts (errors name the field or key), trial names, the summary table."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from codetr.config import ConfigError
from platform.sweep.naming import GRID_KEY, trial_dirname, trial_label, trial_values
from platform.sweep.spec import parse_sweep
from platform.analysis.rows import TrialRow, to_csv, to_markdown
from platform.analysis.summary import effects, table

REPO = Path(__file__).resolve().parents[3]
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
    assert tiny.num_grid_combinations() == 24 and tiny.num_grid_points() == 18 and tiny.scheduler["type"] == "asha"
    assert tiny.base_config().platform.num_workers == 1 and not tiny.base_config().platform.use_gpu
    paper = parse_sweep(REPO / "experiments" / "sweep.yaml")
    assert paper.search_space["model.lambda1"].values == [0.25, 0.5, 1.0, 2.0]
    assert paper.search_space["model.lambda2"].values == [1.0, 2.0, 3.0, 4.0]
    assert paper.search_space["model.num_queries"].values == [300, 900]
    assert paper.num_grid_combinations() == 96 and paper.num_grid_points() == 2 + 32 + 32
    assert paper.base_config().platform.use_gpu


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


def test_summary_table_shows_each_branch_ap_and_the_diagnostics():
    rows = [TrialRow("K=2", "r2", "FINISHED", "finished", {"model.aux_heads": ["atss", "faster_rcnn"]}, 0.25, 0.3, 4, 32,
                     {"branch/atss/coco/AP": 0.2, "branch/faster_rcnn/coco/AP": 0.1, "diag/encoder_iof_iob_auc": 0.7},
                     []),
            TrialRow("K=0", "r0", "FINISHED", "finished", {"model.aux_heads": []}, 0.2, 0.2, 4, 32,
                     {"diag/encoder_iof_iob_auc": 0.6}, [])]
    header, body = table(rows, ["model.aux_heads"], "coco/AP")
    assert header[-3:] == ["branch/atss/coco/AP", "branch/faster_rcnn/coco/AP", "diag/encoder_iof_iob_auc"]
    assert body[0][-3:] == ["0.2000", "0.1000", "0.7000"] and body[1][-3:] == ["", "", "0.6000"]


def test_grid_runs_combinations_that_differ_only_in_unused_keys_once(tmp_path):
    space = {"model.aux_heads": {"grid": [[], ["atss"], ["faster_rcnn"]]}, "model.lambda2": {"grid": [1.0, 2.0]},
             "model.aux.atss.topk": {"grid": [5, 9]}, "model.num_queries": {"grid": [10, 20]}}
    spec = parse_sweep(_write(tmp_path, search_space=space))
    points = spec.grid_points()
    assert spec.num_grid_combinations() == 24 and spec.num_grid_points() == len(points) == 2 + 8 + 4
    assert [p for p in points if p["model.aux_heads"] == []] == [
        {"model.aux_heads": [], "model.num_queries": 10}, {"model.aux_heads": [], "model.num_queries": 20}]
    assert all(set(p) == set(space) for p in points if p["model.aux_heads"] == ["atss"])
    assert all("model.aux.atss.topk" not in p and "model.lambda2" in p
               for p in points if p["model.aux_heads"] == ["faster_rcnn"])
    assert len({json.dumps(p, sort_keys=True) for p in points}) == len(points)


def test_trial_values_merge_the_grid_point_in_key_order():
    config = {"train.lr": 1e-4, GRID_KEY: {"model.aux_heads": [], "model.num_queries": 30}}
    keys = ["model.aux_heads", "model.lambda1", "model.num_queries", "train.lr"]
    values = trial_values(config, keys)
    assert list(values) == ["model.aux_heads", "model.num_queries", "train.lr"]
    assert trial_label(values) == "K=0[] num_queries=30 lr=0.0001"


def test_compare_epochs_are_the_asha_rungs(tmp_path):
    spec = parse_sweep(_write(tmp_path, scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 3,
                                                   "max_epochs": 9}))
    assert spec.compare_epochs() == [1, 3, 9]
    assert parse_sweep(_write(tmp_path, scheduler={"type": "none"})).compare_epochs() == []


def test_summary_columns_at_compare_epochs_and_effects():
    rows = [TrialRow("K=1 l1=0.5", "a", "FINISHED", "finished", {"model.aux_heads": ["atss"], "model.lambda1": 0.5},
                     0.30, 0.30, 3, 240, {}, [], history=[(1, 0.10), (2, 0.20), (3, 0.30)]),
            TrialRow("K=1 l1=1", "b", "KILLED", "stopped_early", {"model.aux_heads": ["atss"], "model.lambda1": 1.0},
                     0.06, 0.06, 1, 80, {}, [], history=[(1, 0.06)]),
            TrialRow("K=0", "c", "KILLED", "stopped_early", {"model.aux_heads": []}, 0.02, 0.02, 1, 80, {}, [],
                     history=[(1, 0.02)])]
    keys = ["model.aux_heads", "model.lambda1"]
    header, body = table(rows, keys, "coco/AP", [1, 3])
    assert header[6:8] == ["coco/AP @ epoch 1", "coco/AP @ epoch 3"]
    assert [r[6:8] for r in body] == [["0.1000", "0.3000"], ["0.0600", ""], ["0.0200", ""]]
    assert body[2][3] == "-"            # lambda1 had no effect without auxiliary heads
    header, body = effects(rows, keys, "coco/AP", 1)
    assert header[2:] == ["trials", "mean coco/AP @ epoch 1", "best coco/AP @ epoch 1"]
    assert body == [["model.aux_heads", "[]", "1", "0.0200", "0.0200"],
                    ["model.aux_heads", "[atss]", "2", "0.0800", "0.1000"],
                    ["model.lambda1", "0.5", "1", "0.1000", "0.1000"],
                    ["model.lambda1", "1", "1", "0.0600", "0.0600"],
                    ["model.lambda1", "-", "1", "0.0200", "0.0200"]]


def test_dry_run_lists_the_trials_without_starting_ray(capsys):
    from platform.sweep.cli import main

    assert main([str(TINY), "--dry-run"]) == 0
    out = capsys.readouterr().out
    listed = [m.group(2) for m in re.finditer(r"^\s+(c\d+)\. (.*)$", out, re.MULTILINE)]
    assert len(listed) == 18 and len(set(listed)) == 18
    assert listed[:2] == ["K=0[] num_queries=30", "K=0[] num_queries=50"]
    assert "K=2[atss+faster_rcnn] lambda1=0.5 lambda2=2 num_queries=50" in listed
    assert main([str(TINY), "--dry-run", "search_space.model.lamda1={grid: [1.0]}"]) == 2
    assert "'model.lamda1' is not a config key (did you mean 'model.lambda1'?)" in capsys.readouterr().err


HEADS_GRID = {"model.aux_heads": {"grid": [[], ["atss"]]}, "model.lambda1": {"grid": [0.5, 1.0]}}


def test_repeats_run_every_configuration_once_per_seed_seed_major(tmp_path):
    from platform.sweep.spec import CONFIG_ID_KEY, SEED_KEY

    spec = parse_sweep(_write(tmp_path, search_space=HEADS_GRID, seeds=[3, 7],
                              baseline={"model.aux_heads": []}))
    assert spec.seeds == [3, 7] and spec.num_trials() == 3 * 2
    assert spec.configurations() == [("c1", {"model.aux_heads": []}),
                                     ("c2", {"model.aux_heads": ["atss"], "model.lambda1": 0.5}),
                                     ("c3", {"model.aux_heads": ["atss"], "model.lambda1": 1.0})]
    points = spec.trial_points()
    assert [(p[CONFIG_ID_KEY], p[SEED_KEY]) for p in points] == [("c1", 3), ("c2", 3), ("c3", 3),
                                                                 ("c1", 7), ("c2", 7), ("c3", 7)]
    assert spec.baseline_id() == "c1"
    # the seed reaches the trial's config as train.seed; names show it
    from platform.sweep.naming import naming_values, trial_identity

    config = {GRID_KEY: points[4]}
    assert trial_identity(config) == ("c2", 7)
    assert trial_label(naming_values(config, spec.keys)) == "K=1[atss] lambda1=0.5 seed=7"
    assert parse_sweep(_write(tmp_path, search_space=HEADS_GRID, repeats=3)).seeds == [0, 1, 2]
    # the command line's seeds / repeats replace the file's
    assert parse_sweep(_write(tmp_path, search_space=HEADS_GRID, repeats=3), ["seeds=[5]"]).seeds == [5]
    assert parse_sweep(_write(tmp_path, search_space=HEADS_GRID, seeds=[1]), ["repeats=2"]).seeds == [0, 1]
    assert parse_sweep(_write(tmp_path, search_space=HEADS_GRID)).trial_points()[0] == {
        "model.aux_heads": [], CONFIG_ID_KEY: "c1"}


def test_a_baseline_key_without_effect_in_a_configuration_matches_it(tmp_path):
    spec = parse_sweep(_write(tmp_path, search_space=HEADS_GRID, repeats=2,
                              baseline={"model.aux_heads": [], "model.lambda1": 1.0}))
    assert spec.baseline_id() == "c1"
    nested = parse_sweep(_write(tmp_path, search_space=HEADS_GRID, repeats=2),
                         ["baseline.model.aux_heads=[atss]", "baseline.model.lambda1=1.0"])
    assert nested.baseline == {"model.aux_heads": ["atss"], "model.lambda1": 1.0} and nested.baseline_id() == "c3"


@pytest.mark.parametrize("fields, message", [
    ({"seeds": [0, 1], "repeats": 2}, "give 'seeds' (a list) or 'repeats' (a count), not both"),
    ({"seeds": []}, "seeds: must be a non-empty list of integers"),
    ({"seeds": [0, "1"]}, "seeds: must be a non-empty list of integers"),
    ({"seeds": [0, -1]}, "seeds: must be a non-empty list of integers"),
    ({"seeds": 3}, "seeds: must be a non-empty list of integers"),
    ({"seeds": [0, 1, 1]}, "seeds: [1] repeated"),
    ({"repeats": 0}, "repeats: must be an integer >= 1"),
    ({"repeats": 2, "scheduler": {"type": "asha"}}, "scheduler: asha cannot be combined with seeds / repeats"),
    ({"repeats": 2, "num_samples": 2}, "num_samples: must be 1 with seeds / repeats"),
    ({"repeats": 2, "search_space": {"train.lr": {"uniform": [1e-4, 1e-3]}}}, "train.lr is sampled: use grid"),
    ({"repeats": 2, "search_space": {"train.seed": {"grid": [0, 1]}}}, "search_space.train.seed: the seed is set"),
    ({"baseline": {"model.aux_head": []}}, "baseline: 'model.aux_head' is not a grid key of the search space "
                                           "(did you mean 'model.aux_heads'?)"),
    ({"baseline": {"model.aux_heads": ["fcos"]}}, 'baseline: {"model.aux_heads": ["fcos"]} matches no configuration'),
    ({"baseline": {"model.lambda1": 0.5}}, "matches 2 configurations (c1: "),
    ({"baseline": []}, "baseline: must map swept keys to values"),
    ({"trial_runner": "train"}, "trial_runner: 'train' is not one of ['auto', 'ray_train']"),
    ({"seed": [0, 1]}, "unknown sweep field 'seed' (did you mean 'seeds'?)"),
    ({"max_failures": -2}, "max_failures: must be an integer >= -1, got -2"),
    ({"max_failures": "2"}, "max_failures: must be an integer >= -1, got '2'"),
    ({"max_failure": 2}, "unknown sweep field 'max_failure' (did you mean 'max_failures'?)"),
])
def test_bad_repeats_and_baselines_name_the_problem(tmp_path, fields, message):
    fields = {"search_space": HEADS_GRID, **fields}
    with pytest.raises(ConfigError) as info:
        parse_sweep(_write(tmp_path, **fields))
    assert message in str(info.value)


def test_max_failures_defaults_to_one_restart_per_trial(tmp_path):
    assert parse_sweep(_write(tmp_path)).max_failures == 1
    assert parse_sweep(_write(tmp_path), ["max_failures=0"]).max_failures == 0
    assert parse_sweep(_write(tmp_path, max_failures=-1)).max_failures == -1


def test_single_worker_trials_run_inline_unless_asked_for_ray_train(tmp_path):
    assert parse_sweep(_write(tmp_path)).uses_inline_trials()
    assert not parse_sweep(_write(tmp_path, trial_runner="ray_train")).uses_inline_trials()
    assert not parse_sweep(_write(tmp_path, resources={"num_workers": 2})).uses_inline_trials()


def test_dry_run_names_the_baseline_and_the_seeds(capsys):
    from platform.sweep.cli import main

    assert main([str(REPO / "experiments" / "ablation_tiny.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "(baseline)" in out and "seed(s) [0, 1, 2]" in out


def test_configurations_list_the_runs_one_factor_at_a_time(tmp_path):
    spec = parse_sweep(_write(tmp_path, search_space=None, repeats=2, baseline={"model.aux_heads": []},
                              configurations=[{"model.aux_heads": []}, {"model.lambda1": 0.25},
                                              {"model.aux_heads": ["atss"], "model.lambda2": 1.0}]))
    assert spec.keys == ["model.aux_heads", "model.lambda1", "model.lambda2"]
    # keys a configuration does not name keep the base config's value (codetr_tiny: K = 2, 1.0, 2.0)
    assert [p for _, p in spec.configurations()] == [
        {"model.aux_heads": []},
        {"model.aux_heads": ["atss", "faster_rcnn"], "model.lambda1": 0.25, "model.lambda2": 2.0},
        {"model.aux_heads": ["atss"], "model.lambda1": 1.0, "model.lambda2": 1.0}]
    assert spec.num_grid_combinations() == 3 and spec.num_trials() == 6 and spec.baseline_id() == "c1"
    shipped = parse_sweep(REPO / "experiments" / "ablation_tiny.yaml")
    assert shipped.num_trials() == 15 and shipped.seeds == [0, 1, 2] and shipped.scheduler == {"type": "none"}


@pytest.mark.parametrize("configurations, message", [
    ([], "configurations: must be a non-empty list of mappings"),
    ([{"model.lamda1": 0.5}], "configurations[1]: 'model.lamda1' is not a config key (did you mean 'model.lambda1'?)"),
    ([{"model.lambda1": -1.0}], 'configurations[1] {"model.lambda1": -1.0} gives an invalid config'),
    ([{"model.aux_heads": []}, {"model.aux_heads": [], "model.lambda1": 0.5}], "2 listed but only 1 distinct runs"),
])
def test_bad_configurations_name_the_problem(tmp_path, configurations, message):
    with pytest.raises(ConfigError) as info:
        parse_sweep(_write(tmp_path, search_space=None, configurations=configurations))
    assert message in str(info.value)
    with pytest.raises(ConfigError, match="not both"):
        parse_sweep(_write(tmp_path, configurations=[{"model.lambda1": 0.5}]))
