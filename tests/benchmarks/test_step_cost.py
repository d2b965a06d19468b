"""benchmarks/step_cost.py --smoke: one training step of each variant, the table and the K = 2 profile rows."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location("step_cost", REPO / "benchmarks" / "step_cost.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_smoke_prints_every_variant_the_ratio_and_the_profile_rows():
    step_cost = _load_script()
    report = step_cost.main(["--smoke", "--profile"])
    rows = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("| variant")]
    assert [r.split(" | ")[0].strip("| ") for r in rows] == ["K=0", "K=2", "codino K=2"]
    for r in rows:
        cpu = float(r.split(" | ")[2])
        assert cpu > 0
    assert rows[0].endswith("| 1.00 |") and "| atss, faster_rcnn |" in rows[1]
    assert "K=2 / K=0 CPU ratio: " in report
    # the profiles of the K = 2 step: torch.profiler's op table and cProfile's rows
    assert "torch.profiler, one K=2 step" in report and "aten::" in report
    assert "cProfile, one K=2 step, by cumulative" in report and "train_step" in report


def test_random_batch_is_seeded_and_inside_the_images():
    step_cost = _load_script()
    images, targets = step_cost.random_batch(3, 64, 96)
    again, targets_again = step_cost.random_batch(3, 64, 96)
    assert all(a.equal(b) for a, b in zip(images, again))
    for t, u in zip(targets, targets_again):
        assert t["boxes"].equal(u["boxes"]) and t["labels"].equal(u["labels"])
        boxes = t["boxes"]
        assert ((boxes[:, 2:] > boxes[:, :2]).all() and (boxes[:, 0::2] <= 96).all()
                and (boxes[:, 1::2] <= 64).all() and (boxes >= 0).all())
    assert [len(t["labels"]) for t in targets] == [1, 2, 3]
