"""Assignment statistics: positives per gt box, gt boxes left without a positive, positive queries per image."""
import pytest
import torch

from codetr import build_model, load_config
from codetr.engine import LossWindow, accumulated_step
from codetr.models.aux.assign_stats import assignment_stats
from codetr.models.aux.positives import Candidates

K = 3


def test_counts_on_a_hand_made_assignment():
    gt = [torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30]]), torch.tensor([[5.0, 5, 15, 15]]), torch.zeros(0, 4)]
    labels = torch.tensor([[0, 0, 0, K, -1], [1, 1, K, K, K], [K, K, K, K, K]])
    targets = torch.zeros(3, 5, 4)
    targets[0, :3] = gt[0][0]                  # three positives serve gt 0 of image 0, none serves gt 1
    targets[0, 3] = gt[0][1]                   # a negative whose target equals gt 1: not counted
    targets[1, :2] = gt[1][0]
    stats = assignment_stats(Candidates(torch.zeros(5, 4), labels, targets), gt, K)
    assert stats["pos_per_gt"].item() == pytest.approx(5 / 3)
    assert stats["gt_without_pos"].item() == pytest.approx(1 / 3)
    empty = assignment_stats(Candidates(torch.zeros(5, 4), labels[2:], targets[2:]), gt[2:], K)
    assert empty["pos_per_gt"].item() == 0.0 and empty["gt_without_pos"].item() == 0.0


def test_a_training_step_logs_assign_metrics_for_every_head():
    cfg = load_config("experiments/codetr_tiny.yaml", ["model.num_classes=3", "model.embed_dims=32",
                                                       "model.aux_heads=[atss,faster_rcnn]", "model.num_queries=10"])
    torch.manual_seed(0)
    model = build_model(cfg)
    images = [torch.rand(3, 96, 96), torch.rand(3, 80, 96)]
    targets = [{"boxes": torch.tensor([[10.0, 10, 60, 60], [50, 20, 90, 70]]), "labels": torch.tensor([0, 2])},
               {"boxes": torch.tensor([[5.0, 5, 40, 50]]), "labels": torch.tensor([1])}]
    out = accumulated_step(model, [(images, targets)], torch.optim.SGD(model.parameters(), lr=0.0), clip_grad_norm=0)
    window = LossWindow()
    window.add(out, 2)
    metrics = window.flush()
    assert metrics["assign/query/matched_per_image"] == pytest.approx(1.5)
    for head in ("atss", "faster_rcnn"):
        assert metrics[f"assign/{head}/pos_per_gt"] >= 1.0          # ATSS: ~topk per level; RoIs: the gt itself
        assert 0.0 <= metrics[f"assign/{head}/gt_without_pos"] <= 1.0
        assert metrics[f"assign/{head}/pos_queries_per_image"] > 0
