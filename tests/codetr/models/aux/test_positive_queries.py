"""Customized positive queries: slot count, negative padding, masked padding, losses (hand cases)."""
import torch
import torch.nn.functional as F

from codetr import build_model, load_config
from codetr.config.schema import ModelConfig
from codetr.models.aux.positives import Candidates, candidates_from_lists, num_query_slots, select_positive_queries
from codetr.models.criterion import QueryCriterion

K = 4  # classes; label K = background


def _cands(counts, n=40, feats=True):
    """Candidates of B images: image i has counts[i] positives (labels 0..K-1) at its first indices;
    candidate j's box is [j, 2j, j + 10, 2j + 20] (pixels), target [0, 0, 50, 40]."""
    b = len(counts)
    labels = torch.full((b, n), K, dtype=torch.long)
    for i, c in enumerate(counts):
        labels[i, :c] = torch.arange(c) % K
    j = torch.arange(n, dtype=torch.float32)
    boxes = torch.stack([j, 2 * j, j + 10, 2 * j + 20], -1)                       # [n, 4] shared
    targets = torch.tensor([0.0, 0.0, 50.0, 40.0]).expand(b, n, 4)
    f = torch.arange(b * n * 3, dtype=torch.float32).reshape(b, n, 3) if feats else None
    return Candidates(boxes, labels, targets, f)


def test_slot_count_rule():
    assert num_query_slots([3, 12], max_pos=300) == 12
    assert num_query_slots([3, 5], max_pos=300) == 9           # at least 9
    assert num_query_slots([0, 0], max_pos=300) == 9
    assert num_query_slots([400, 2], max_pos=300) == 300       # capped
    assert num_query_slots([20], max_pos=5) == 9               # the minimum wins over a small cap


def test_negative_padding_fills_every_slot_with_background_negatives():
    torch.manual_seed(0)
    cands = _cands([3, 12])
    q = select_positive_queries(cands, K, [(100, 50), (200, 100)], max_pos=300)
    assert q.boxes_cxcywh_norm.shape == (2, 12, 4) and q.feats.shape == (2, 12, 3)
    assert q.positive.sum(1).tolist() == [3, 12]
    assert q.in_loss.all() and q.attended.all()                 # every slot: loss and attention
    assert (q.labels[0, :3] == torch.tensor([0, 1, 2])).all() and (q.labels[0, 3:] == K).all()
    # padding slots are real negatives of the same head: distinct, from beyond the positives
    neg_idx = (q.feats[0, 3:, 0] / 3).long()                    # feature row n holds 3n..3n+2
    assert len(set(neg_idx.tolist())) == 9 and (neg_idx >= 3).all()
    # boxes / image size, xyxy -> cxcywh; not clipped (candidate 39 reaches y = 98 > 50 in image 0)
    j = neg_idx[0].float()
    expected = torch.tensor([(2 * j + 10) / 2 / 50, (4 * j + 20) / 2 / 100, 10 / 50, 20 / 100])
    torch.testing.assert_close(q.boxes_cxcywh_norm[0, 3], expected)
    torch.testing.assert_close(q.targets_cxcywh_norm[1, 0], torch.tensor([25 / 100, 20 / 200, 50 / 100, 40 / 200]))
    big = select_positive_queries(_cands([40]), K, [(50, 50)], max_pos=300)
    assert (big.boxes_cxcywh_norm[0, :, 1] + big.boxes_cxcywh_norm[0, :, 3] / 2 > 1).any()


def test_more_positives_than_slots_draws_a_subset_deterministically():
    cands = _cands([30, 2])
    torch.manual_seed(3)
    q1 = select_positive_queries(cands, K, [(100, 100)] * 2, max_pos=10)
    torch.manual_seed(3)
    q2 = select_positive_queries(cands, K, [(100, 100)] * 2, max_pos=10)
    assert torch.equal(q1.feats, q2.feats)
    rows = (q1.feats[0, :, 0] / 3).long()
    assert q1.positive[0].all() and len(set(rows.tolist())) == 10 and (rows < 30).all()
    assert q1.positive[1].sum() == 2 and (q1.labels[1, 2:] == K).all()


def test_batch_without_positives_still_gets_nine_negative_slots():
    q = select_positive_queries(_cands([0, 0]), K, [(64, 64)] * 2, max_pos=300)
    assert q.labels.shape == (2, 9) and (q.labels == K).all() and not q.positive.any() and q.in_loss.all()


def test_masked_padding_variant():
    q = select_positive_queries(_cands([3, 12]), K, [(100, 50), (200, 100)], max_pos=300, padding="masked")
    assert q.positive.sum(1).tolist() == [3, 12]
    assert torch.equal(q.in_loss, q.positive) and torch.equal(q.attended, q.positive)
    assert (q.boxes_cxcywh_norm[0, 3:] == 0).all() and (q.labels[0, 3:] == K).all() and (q.feats[0, 3:] == 0).all()


def test_candidates_from_lists_never_draws_the_list_padding():
    c = candidates_from_lists([torch.tensor([[0.0, 0, 10, 10]] * 2), torch.zeros(0, 4)],
                              [torch.tensor([1, K]), torch.zeros(0, dtype=torch.long)],
                              [torch.tensor([[0.0, 0, 20, 20]] * 2), torch.zeros(0, 4)])
    assert c.labels.tolist() == [[1, K], [-1, -1]]
    q = select_positive_queries(c, K, [(20, 20)] * 2, max_pos=300)
    assert q.in_loss.tolist()[0][:2] == [True, True] and not q.in_loss[0, 2:].any() and not q.in_loss[1].any()


def test_anchors_per_location_picks_the_location_feature():
    labels = torch.full((1, 6), K)
    labels[0, 5] = 2                                            # anchor 5 = location 1 (3 anchors per location)
    c = Candidates(torch.zeros(6, 4), labels, torch.zeros(1, 6, 4), torch.arange(3.0).reshape(1, 3, 1),
                   anchors_per_location=3)
    q = select_positive_queries(c, K, [(10, 10)], max_pos=300)
    assert q.feats[0, 0, 0] == 1.0


def test_positive_losses_against_the_direct_formula():
    """Classification: focal over every slot (negatives as background) / number of positives;
    L1 and GIoU over the positives only / number of positives."""
    torch.manual_seed(0)
    cfg = ModelConfig()
    crit = QueryCriterion(cfg, K)
    q = select_positive_queries(_cands([3, 1]), K, [(100, 50), (200, 100)], max_pos=300)
    logits = torch.randn(1, 2, 9, K, dtype=torch.float32)
    boxes = torch.rand(1, 2, 9, 4, dtype=torch.float32) * 0.5 + 0.25
    scales = torch.tensor([[50.0, 100, 50, 100], [100, 200, 100, 200]], dtype=torch.float32)
    losses = crit.positive_losses("atss", logits, boxes, q, scales)
    onehot = F.one_hot(q.labels, K + 1)[..., :K].float()
    p = logits[0].sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits[0], onehot, reduction="none")
    pt = p * onehot + (1 - p) * (1 - onehot)
    focal = ce * (1 - pt) ** 2 * (0.25 * onehot + 0.75 * (1 - onehot))
    torch.testing.assert_close(losses["atss/pos.loss_cls"], focal.sum() / 4)
    pos = q.positive
    l1 = (boxes[0][pos] - q.targets_cxcywh_norm[pos].float()).abs().sum() / 4
    torch.testing.assert_close(losses["atss/pos.loss_bbox"], l1)
    # no positive at all: classification over the 9 negatives / 1, zero box losses
    q0 = select_positive_queries(_cands([0, 0]), K, [(100, 50), (200, 100)], max_pos=300)
    l0 = crit.positive_losses("atss", logits, boxes, q0, scales)
    assert l0["atss/pos.loss_cls"] > 0 and l0["atss/pos.loss_bbox"] == 0 and l0["atss/pos.loss_giou"] == 0


def test_detector_batch_without_boxes_trains_the_positive_queries_on_negatives():
    small = ["model.num_classes=4", "model.num_queries=12", "model.embed_dims=32", "model.num_heads=4",
             "model.ffn_dims=64", "model.num_encoder_layers=1", "model.num_decoder_layers=2",
             "model.aux.faster_rcnn.fc_dims=64", "model.aux_heads=[atss, faster_rcnn]"]
    torch.manual_seed(0)
    model = build_model(load_config("experiments/codetr_tiny.yaml", small))
    images = [torch.rand(3, 96, 112), torch.rand(3, 80, 96)]
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    losses = model(images, empty)
    for head in ("atss", "faster_rcnn"):
        assert losses[f"{head}/pos.loss_cls"] > 0 and losses[f"{head}/pos.d0.loss_cls"] > 0
        assert losses[f"{head}/pos.loss_bbox"] == 0 and losses[f"{head}/pos.loss_giou"] == 0
