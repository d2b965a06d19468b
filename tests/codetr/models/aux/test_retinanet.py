"""RetinaNet auxiliary head: forward_train, empty images, a hand-checkable assignment, GIoU variant."""
import torch

from codetr.config.aux_schema import RetinaNetConfig
from codetr.config.schema import ModelConfig
from codetr.models.aux import RetinaNetHead, build_aux_head
from tests.codetr.helpers import C, IMAGE_SIZES, NUM_CLASSES, check_losses_and_positives, pyramid, targets_with_empty_image


def test_retinanet_forward_train_losses_backward_and_positives():
    torch.manual_seed(0)
    head = build_aux_head("retinanet", ModelConfig(embed_dims=C), NUM_CLASSES)
    assert isinstance(head, RetinaNetHead) and head.anchor_generator.num_base_anchors == 9
    feats = pyramid()
    targets = targets_with_empty_image()
    losses, pos = head.forward_train(feats, targets, IMAGE_SIZES)
    check_losses_and_positives(losses, pos, feats, targets, IMAGE_SIZES, ["loss_cls", "loss_bbox"])
    assert head.loss_weights == {"loss_cls": 1.0, "loss_bbox": 1.0}
    assert pos.anchors_per_location == 9 and pos.feats.shape == (2, pos.labels.shape[1] // 9, C)


def test_retinanet_giou_variant_and_empty_batch():
    head = RetinaNetHead(C, NUM_CLASSES, RetinaNetConfig(bbox_loss="giou"))
    feats = pyramid()
    losses, _ = head.forward_train(feats, targets_with_empty_image(), IMAGE_SIZES)
    assert torch.isfinite(losses["loss_bbox"]) and losses["loss_bbox"] > 0
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    losses, pos = head.forward_train(pyramid(), empty, IMAGE_SIZES)
    assert losses["loss_bbox"] == 0 and losses["loss_bbox"].requires_grad and losses["loss_cls"] > 0
    sum(losses.values()).backward()
    assert (pos.labels == NUM_CLASSES).all()


def test_retinanet_assignment_hand_case():
    head = RetinaNetHead(C, NUM_CLASSES)
    sizes = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    anchors = torch.cat(head.anchor_generator.grid_anchors(sizes))
    valid = torch.ones(1, anchors.shape[0], dtype=torch.bool)
    # a gt equal to one anchor: that anchor is positive (IoU 1), anchors with IoU in [0.4, 0.5) ignored
    gt = anchors[100:101].clone()
    labels, targets, pos, weights = head.assign(anchors, valid, [gt], [torch.tensor([4])])
    assert pos[0, 100] and labels[0, 100] == 4
    from codetr.box_ops import box_iou
    iou = box_iou(anchors, gt)[:, 0]
    assert torch.equal(pos[0], iou >= 0.5)
    assert torch.equal(weights[0] & ~pos[0], iou < 0.4)
