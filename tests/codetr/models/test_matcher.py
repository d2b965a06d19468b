import torch

from codetr.models.matcher import hungarian_match, match_cost

SCALE = torch.tensor([100.0, 100.0, 100.0, 100.0])


def _match(logits, boxes, labels, gt_boxes, **w):
    weights = dict(cls_weight=2.0, bbox_weight=5.0, giou_weight=2.0) | w
    return hungarian_match(logits, boxes, labels, gt_boxes, SCALE.expand(len(labels), 4), **weights)


def test_hand_case_boxes_decide():
    # 3 predictions, 2 ground truths; prediction 2 sits on gt 0, prediction 0 on gt 1; classes neutral
    boxes = torch.tensor([[[0.7, 0.7, 0.2, 0.2], [0.1, 0.9, 0.1, 0.1], [0.3, 0.3, 0.2, 0.2]]])
    logits = torch.zeros(1, 3, 2)
    gt = [torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])]
    (pred, tgt), = _match(logits, boxes, [torch.tensor([0, 1])], gt)
    assert dict(zip(pred.tolist(), tgt.tolist())) == {0: 1, 2: 0}


def test_hand_case_class_decides_between_identical_boxes():
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]]])
    logits = torch.tensor([[[5.0, -5.0], [-5.0, 5.0]]])  # query 0 says class 0, query 1 class 1
    gt = [torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]])]
    (pred, tgt), = _match(logits, boxes, [torch.tensor([1, 0])], gt)
    assert dict(zip(pred.tolist(), tgt.tolist())) == {0: 1, 1: 0}


def test_focal_class_cost_sign():
    # a confident correct prediction must cost less than a confident wrong one
    cost = match_cost(torch.tensor([[4.0, -4.0]]), torch.tensor([[0.5, 0.5, 0.1, 0.1]]), torch.tensor([0, 1]),
                      torch.tensor([[0.5, 0.5, 0.1, 0.1]] * 2), SCALE, 1.0, 0.0, 0.0)
    assert cost[0, 0] < 0 < cost[0, 1]


def test_batched_equals_per_image_and_empty_images():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 10, 4, generator=g)
    boxes = torch.rand(3, 10, 4, generator=g) * 0.5 + 0.25
    labels = [torch.tensor([0, 3, 1]), torch.zeros(0, dtype=torch.long), torch.tensor([2, 2, 0, 1, 3])]
    gts = [torch.rand(len(l), 4, generator=g) * 0.5 + 0.25 for l in labels]
    batched = _match(logits, boxes, labels, gts)
    for i in range(3):
        (p, t), = _match(logits[i:i + 1], boxes[i:i + 1], [labels[i]], [gts[i]])
        assert torch.equal(batched[i][0], p) and torch.equal(batched[i][1], t)
        assert len(p) == len(labels[i])
    none = _match(logits, boxes, [torch.zeros(0, dtype=torch.long)] * 3, [torch.zeros(0, 4)] * 3)
    assert all(len(p) == 0 for p, _ in none)
