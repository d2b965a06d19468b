"""ATSS auxiliary head: forward_train on a small pyramid, an empty image, a hand-checkable assignment."""
import torch

from codetr.config.aux_schema import ATSSConfig
from codetr.config.schema import ModelConfig
from codetr.models.aux import ATSSHead, build_aux_head
from tests.codetr.helpers import C, IMAGE_SIZES, NUM_CLASSES, check_losses_and_positives, pyramid, targets_with_empty_image


def test_atss_forward_train_losses_backward_and_positives():
    torch.manual_seed(0)
    head = ATSSHead(C, NUM_CLASSES)
    feats = pyramid()
    targets = targets_with_empty_image()
    losses, pos = head.forward_train(feats, targets, IMAGE_SIZES)
    check_losses_and_positives(losses, pos, feats, targets, IMAGE_SIZES,
                               ["loss_cls", "loss_bbox", "loss_centerness"])
    assert set(head.loss_weights) == set(losses)
    assert head.loss_weights == {"loss_cls": 1.0, "loss_bbox": 2.0, "loss_centerness": 1.0}
    assert pos.feats is not None and pos.feats.shape == (2, pos.labels.shape[1], C)
    assert all(s.scale.grad is not None for s in head.scales)


def test_atss_whole_batch_without_boxes_gives_zero_box_losses():
    head = ATSSHead(C, NUM_CLASSES)
    feats = pyramid()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    losses, pos = head.forward_train(feats, empty, IMAGE_SIZES)
    assert losses["loss_bbox"] == 0 and losses["loss_centerness"] == 0 and losses["loss_cls"] > 0
    assert losses["loss_bbox"].requires_grad
    sum(losses.values()).backward()
    assert head.atss_reg.weight.grad is not None
    assert (pos.labels == NUM_CLASSES).all()


def test_atss_init_prior_and_build():
    head = build_aux_head("atss", ModelConfig(embed_dims=C), NUM_CLASSES)
    assert isinstance(head, ATSSHead)
    torch.testing.assert_close(head.atss_cls.bias.sigmoid(), torch.full((NUM_CLASSES,), 0.01))
    assert head.atss_reg.weight.std() < 0.02


def test_atss_assignment_hand_case():
    # one 64x64 gt exactly on a stride-8 anchor (size 64, centred at (64, 64)):
    # the coinciding anchor (IoU 1) must be positive, anchors whose centre lies outside never are
    head = ATSSHead(C, NUM_CLASSES, ATSSConfig(topk=9))
    sizes = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    anchors = torch.cat(head.anchor_generator.grid_anchors(sizes))
    num_level = [h * w for h, w in sizes]
    valid = torch.ones(1, anchors.shape[0], dtype=torch.bool)
    gt = torch.tensor([[32.0, 32.0, 96.0, 96.0]])
    labels, targets, pos = head.assign(anchors, num_level, valid, [gt], [torch.tensor([2])])
    exact = ((anchors - gt).abs().sum(1) < 1e-4).nonzero().flatten()
    assert len(exact) == 1 and pos[0, exact[0]] and labels[0, exact[0]] == 2
    torch.testing.assert_close(targets[0, exact[0]], gt[0])
    ctr = (anchors[:, :2] + anchors[:, 2:]) / 2
    inside = ((ctr > 32.01) & (ctr < 95.99)).all(1)
    assert not (pos[0] & ~inside).any()
    assert (labels[0][~pos[0]] == NUM_CLASSES).all()
    # the positives are among the 9 nearest anchors of some level
    assert 1 <= pos.sum() <= 9 * 5


def test_atss_batched_equals_per_image():
    torch.manual_seed(0)
    head = ATSSHead(C, NUM_CLASSES)
    one = [f[:1].detach() for f in pyramid()]
    two = [torch.cat([f, f]) for f in one]
    target = targets_with_empty_image()[:1]
    size = IMAGE_SIZES[:1]
    with torch.no_grad():
        l1, p1 = head.forward_train(one, target, size)
        l2, p2 = head.forward_train(two, target * 2, size * 2)
    for k in l1:
        torch.testing.assert_close(l1[k], l2[k])
    assert (p2.labels < NUM_CLASSES).sum(1).tolist() == [(p1.labels < NUM_CLASSES).sum().item()] * 2



def test_atss_candidates_keep_anchors_unclipped_and_zero_the_invalid_ones():
    """Positive anchors cross the border as they are (the official positive queries are not clipped);
    anchors outside the image's valid area are zero boxes, as the reference's unmapped targets."""
    torch.manual_seed(0)
    head = ATSSHead(C, NUM_CLASSES)
    feats = pyramid(requires_grad=False)
    # a box in the corner of the second (padded) image: its stride-8 anchors (64 px) cross the border
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 40.0, 30.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[0.0, 0.0, 40.0, 30.0]]), "labels": torch.tensor([2])}]
    with torch.no_grad():
        _, cand = head.forward_train(feats, targets, IMAGE_SIZES)
    for i in range(2):
        boxes = cand.boxes_xyxy[i]
        pos = cand.labels[i] < NUM_CLASSES
        assert (boxes[pos, :2] < 0).any(), "expected positive anchors crossing the top-left border"
        sizes = [tuple(f.shape[-2:]) for f in feats]
        all_anchors = torch.cat(head.anchor_generator.grid_anchors(sizes))
        valid = torch.cat(head.anchor_generator.valid_flags(sizes, IMAGE_SIZES), dim=1)[i]
        assert torch.equal(boxes[valid], all_anchors[valid])
        assert (boxes[~valid] == 0).all() and (~valid).any() == (i == 1)
