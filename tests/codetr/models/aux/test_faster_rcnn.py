"""Faster R-CNN auxiliary head: RPN + RoI head losses, proposals, RoI level mapping, positives."""
import torch

from codetr.config.aux_schema import FasterRCNNConfig
from codetr.config.schema import ModelConfig
from codetr.models.aux import FasterRCNNHead, build_aux_head
from codetr.models.aux.roi_head import map_roi_levels
from tests.codetr.helpers import C, IMAGE_SIZES, NUM_CLASSES, check_losses_and_positives, pyramid, targets_with_empty_image

KEYS = ["rpn.loss_cls", "rpn.loss_bbox", "roi.loss_cls", "roi.loss_bbox"]


def small_cfg() -> FasterRCNNConfig:
    return FasterRCNNConfig(fc_dims=64)


def test_faster_rcnn_forward_train_losses_backward_and_positives():
    torch.manual_seed(0)
    head = FasterRCNNHead(C, NUM_CLASSES, small_cfg())
    feats = pyramid()
    targets = targets_with_empty_image()
    losses, pos = head.forward_train(feats, targets, IMAGE_SIZES)
    check_losses_and_positives(losses, pos, feats, targets, IMAGE_SIZES, KEYS)
    assert head.loss_weights == {"rpn.loss_cls": 1.0, "rpn.loss_bbox": 1.0, "roi.loss_cls": 1.0,
                                 "roi.loss_bbox": 10.0}
    # the ground truth is added as proposals: every gt is among the positives (with target = itself)
    m = pos.labels[0] < NUM_CLASSES
    m &= pos.labels[0] >= 0
    same = (pos.boxes_xyxy[0][m] - pos.targets_xyxy[0][m]).abs().sum(-1) < 1e-4
    assert same.sum() >= 3
    assert pos.feats.shape == (2, pos.labels.shape[1], C) and pos.feats.requires_grad
    # both images keep the same number of candidates (the reference's per-batch truncation)
    counts = (pos.labels >= 0).sum(1)
    assert counts[0] == counts[1] > 0
    assert head.roi_head.fc1.weight.grad is not None and head.rpn.rpn_cls.weight.grad is not None


def test_faster_rcnn_whole_batch_without_boxes():
    head = build_aux_head("faster_rcnn", ModelConfig(embed_dims=C, aux=ModelConfig().aux), NUM_CLASSES)
    head.roi_head = type(head.roi_head)(C, NUM_CLASSES, small_cfg())
    feats = pyramid()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    losses, pos = head.forward_train(feats, empty, IMAGE_SIZES)
    assert losses["rpn.loss_bbox"] == 0 and losses["roi.loss_bbox"] == 0
    assert losses["rpn.loss_cls"] > 0 and losses["roi.loss_cls"] > 0
    sum(losses.values()).backward()
    assert head.rpn.rpn_reg.weight.grad is not None and head.roi_head.fc_reg.weight.grad is not None
    assert ((pos.labels == NUM_CLASSES) | (pos.labels == -1)).all() and (pos.labels == NUM_CLASSES).any()


def test_rpn_sampling_counts_and_proposals():
    torch.manual_seed(0)
    head = FasterRCNNHead(C, NUM_CLASSES, small_cfg())
    feats = pyramid(requires_grad=False)
    sizes = [tuple(f.shape[-2:]) for f in feats]
    gen = head.rpn.anchor_generator
    anchors = torch.cat(gen.grid_anchors(sizes))
    valid = torch.cat(gen.valid_flags(sizes, IMAGE_SIZES), dim=1)
    gt = [t["boxes"] for t in targets_with_empty_image()]
    pos, neg, tgt = head.rpn.assign(anchors, valid, gt)
    assert (pos.sum(1) + neg.sum(1)).tolist() == [256, 256]
    assert pos[0].sum() <= 128 and pos[0].sum() >= 3 and pos[1].sum() == 0
    assert not (pos | neg)[~valid].any()           # nothing sampled in the padding
    props = head.rpn.proposals(head.rpn(feats), gen.grid_anchors(sizes), IMAGE_SIZES)
    for p, (h, w) in zip(props, IMAGE_SIZES):
        assert 0 < p.shape[0] <= 1000
        assert (p[:, 0] >= 0).all() and (p[:, 2] <= w).all() and (p[:, 3] <= h).all()
        assert (p[:, 2] > p[:, 0]).all() and (p[:, 3] > p[:, 1]).all()


def test_roi_sampling_and_level_mapping():
    torch.manual_seed(0)
    head = FasterRCNNHead(C, NUM_CLASSES, small_cfg())
    # level mapping: sqrt(area) < 224 -> 0, [224, 448) -> 1, [448, 896) -> 2, >= 896 -> 3
    rois = torch.tensor([[0, 0, 100, 100], [0, 0, 224, 224], [0, 0, 500, 500], [0, 0, 2000, 2000.0]])
    assert map_roi_levels(rois, 4, 112.0).tolist() == [0, 1, 2, 3]
    gt = torch.tensor([[0.0, 0.0, 50.0, 50.0]])
    props = torch.cat([torch.tensor([[0.0, 0.0, 50.0, 45.0]]),               # IoU 0.9 -> positive
                       torch.tensor([[200.0, 200.0, 260.0, 260.0]]).repeat(1000, 1)])   # negatives
    rois, valid, labels, targets, pos = head.roi_head.sample([props], [gt], [torch.tensor([3])])
    assert rois.shape == (1, 512, 4) and valid.all()
    assert pos.sum() == 2                             # the gt itself and the good proposal
    assert labels[pos].tolist() == [3, 3] and (labels[~pos] == NUM_CLASSES).all()
    torch.testing.assert_close(targets[pos], gt.expand(2, 4))


def test_roi_head_survives_no_proposals():
    from codetr.models.aux.roi_head import RoIHead
    head = RoIHead(C, NUM_CLASSES, FasterRCNNConfig(fc_dims=16))
    feats = [f.detach().requires_grad_() for f in pyramid()[:4]]
    rois, valid, labels, tgt, pos = head.sample([torch.zeros(0, 4)] * 2, [torch.zeros(0, 4)] * 2,
                                                [torch.zeros(0, dtype=torch.long)] * 2)
    roi_feats = head.roi_features(feats, rois)
    losses = head.loss(*head(roi_feats), rois, valid, labels, tgt, pos)
    assert all(torch.isfinite(v) and v == 0 for v in losses.values())
    sum(losses.values()).backward()
