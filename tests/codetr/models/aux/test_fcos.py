"""FCOS auxiliary head: forward_train, empty images, positives as stride-sized boxes around points."""
import torch

from codetr.config.aux_schema import FCOSConfig
from codetr.config.schema import ModelConfig
from codetr.models.aux import FCOSHead, build_aux_head
from codetr.models.aux.anchors import grid_points
from tests.codetr.helpers import C, IMAGE_SIZES, NUM_CLASSES, check_losses_and_positives, pyramid, targets_with_empty_image


def test_fcos_forward_train_losses_backward_and_positives():
    torch.manual_seed(0)
    head = build_aux_head("fcos", ModelConfig(embed_dims=C), NUM_CLASSES)
    assert isinstance(head, FCOSHead)
    feats = pyramid()
    targets = targets_with_empty_image()
    losses, pos = head.forward_train(feats, targets, IMAGE_SIZES)
    check_losses_and_positives(losses, pos, feats, targets, IMAGE_SIZES,
                               ["loss_cls", "loss_bbox", "loss_centerness"])
    assert head.loss_weights == {"loss_cls": 1.0, "loss_bbox": 1.0, "loss_centerness": 1.0}
    # positive boxes are squares of one stride around points: 8 px wide at level 0 -> w = 8 / 160
    boxes = pos.boxes_xyxy[pos.labels[0] < NUM_CLASSES]
    widths = (boxes[:, 2] - boxes[:, 0]).round()
    assert set(widths.tolist()) <= {8.0, 16.0, 32.0, 64.0, 128.0}


def test_fcos_empty_batch_zero_box_losses():
    head = FCOSHead(C, NUM_CLASSES)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    losses, pos = head.forward_train(pyramid(), empty, IMAGE_SIZES)
    assert losses["loss_bbox"] == 0 and losses["loss_centerness"] == 0 and losses["loss_cls"] > 0
    assert losses["loss_bbox"].requires_grad
    sum(losses.values()).backward()
    assert head.conv_reg.weight.grad is not None and (pos.labels == NUM_CLASSES).all()


def test_fcos_assignment_hand_case():
    head = FCOSHead(C, NUM_CLASSES, FCOSConfig(center_sampling=True, center_sampling_radius=1.5))
    sizes = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    level_points = grid_points(sizes, head.strides)
    points = torch.cat(level_points)
    # a 40x40 gt centred on (100, 60): max distance 20 <= 64 -> only level 0, inside 12 px of the centre
    gt = torch.tensor([[80.0, 40.0, 120.0, 80.0]])
    labels, targets, pos = head.assign(points, [p.shape[0] for p in level_points], [gt], [torch.tensor([2])])
    pos_pts = points[pos[0]]
    assert pos[0, :320].sum() == pos[0].sum() > 0
    assert ((pos_pts - torch.tensor([100.0, 60.0])).abs() < 12).all()
    expected = ((points[:320] - torch.tensor([100.0, 60.0])).abs() < 12).all(1)
    assert torch.equal(pos[0, :320], expected)
    assert (labels[0][pos[0]] == 2).all()
