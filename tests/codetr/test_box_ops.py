import torch
import torchvision.ops as tvops

from codetr.box_ops import (box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, elementwise_generalized_box_iou,
                            generalized_box_iou, inverse_sigmoid)


def _boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 50
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 30 + 1
    return torch.cat([xy, xy + wh], 1)


def test_conversions_round_trip_and_match_torchvision():
    b = _boxes(7, 0)
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(b)), b)
    torch.testing.assert_close(box_xyxy_to_cxcywh(b), tvops.box_convert(b, "xyxy", "cxcywh"))


def test_iou_and_giou_match_torchvision():
    a, b = _boxes(6, 1), _boxes(5, 2)
    torch.testing.assert_close(box_iou(a, b), tvops.box_iou(a, b))
    torch.testing.assert_close(generalized_box_iou(a, b), tvops.generalized_box_iou(a, b))
    torch.testing.assert_close(elementwise_generalized_box_iou(a[:5], b), torch.diagonal(tvops.generalized_box_iou(a[:5], b)))


def test_hand_case_and_inverse_sigmoid():
    a = torch.tensor([[0.0, 0, 2, 2]])
    b = torch.tensor([[1.0, 1, 3, 3]])
    assert abs(box_iou(a, b).item() - 1 / 7) < 1e-6
    # enclosing box 9, union 7 -> giou = 1/7 - 2/9
    assert abs(generalized_box_iou(a, b).item() - (1 / 7 - 2 / 9)) < 1e-6
    x = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(inverse_sigmoid(x).sigmoid(), x)
