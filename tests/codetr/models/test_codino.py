"""Co-DINO: denoising queries (hand cases), Quality Focal Loss, training with K in {0, 1, 2},
the deployed model against a K = 0 DINO, an overfit, soft-NMS."""
import contextlib
import io

import pytest
import torch

from codetr import build_model, load_config
from codetr.box_ops import box_cxcywh_to_xyxy
from codetr.models.query_heads.denoising import (build_denoising_queries, denoising_targets, dn_attention_mask,
                                     num_dn_groups)
from codetr.models.losses import quality_focal_loss_sum
from codetr.models.soft_nms import soft_nms
from tests.codetr.helpers import coco_ap, overfit, shape_images

DINO = ["model.query_head=dino", "model.num_levels=5", "model.backbone.out_indices=[0,1,2,3]",
        "model.with_coord_feat=false", "model.loss.cls=1.0", "train.lr_mult_keys=[backbone]"]
SMALL = DINO + ["model.num_classes=4", "model.num_queries=12", "model.embed_dims=32", "model.num_heads=4",
                "model.ffn_dims=64", "model.num_encoder_layers=1", "model.num_decoder_layers=2",
                "model.aux.faster_rcnn.fc_dims=64", "model.dn.num_queries=12"]


def _model(heads: str, *extra):
    torch.manual_seed(0)
    return build_model(load_config("experiments/codetr_tiny.yaml", SMALL + [f"model.aux_heads={heads}", *extra]))


def _data():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 112, generator=g), torch.rand(3, 80, 96, generator=g)]
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 50.0, 60.0], [40.0, 30.0, 100.0, 90.0]]), "labels": torch.tensor([0, 2])},
               {"boxes": torch.tensor([[10.0, 12.0, 40.0, 44.0]]), "labels": torch.tensor([3])}]
    return images, targets


# ----------------------------------------------------------------------------- denoising queries

def test_group_count_and_layout():
    assert num_dn_groups(max_gts=3, num_dn_queries=100) == 33
    assert num_dn_groups(max_gts=150, num_dn_queries=100) == 1
    assert num_dn_groups(max_gts=0, num_dn_queries=100) == 1
    emb = torch.nn.Embedding(5, 8)
    labels = [torch.tensor([0, 1, 2]), torch.tensor([4])]
    boxes = [torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.3, 0.1, 0.1], [0.7, 0.6, 0.3, 0.2]]),
             torch.tensor([[0.4, 0.5, 0.6, 0.6]])]
    torch.manual_seed(0)
    dn = build_denoising_queries(labels, boxes, emb, num_classes=5, num_queries=7, num_dn_queries=10)
    assert dn.num_groups == 3 and dn.group_size == 6 and dn.pad_size == 18          # 10 // 3 groups of 2 x 3 slots
    assert dn.content.shape == (2, 18, 8) and dn.boxes_unact.shape == (2, 18, 4)
    # image 1 has one gt: slots 0 (positive) and 3 (negative) of each group, the rest empty
    used = (dn.content[1].abs().sum(-1) > 0).nonzero().flatten().tolist()
    assert used == [0, 3, 6, 9, 12, 15]
    assert (dn.boxes_unact[1, [1, 2, 4, 5]] == 0).all()
    b, s, lab, tgt = denoising_targets(labels, boxes, dn)
    assert b.tolist() == [0, 0, 0] * 3 + [1] * 3
    assert s.tolist() == [0, 1, 2, 6, 7, 8, 12, 13, 14, 0, 6, 12]
    assert lab.tolist() == [0, 1, 2] * 3 + [4] * 3 and torch.equal(tgt[-1], boxes[1][0])


def test_noise_bounds_positives_within_negatives_beyond():
    """Box noise: each corner moves by < (w/2, h/2) for positives and by [1, 2) x (w/2, h/2) for negatives
    (before clipping to the image); label noise flips about label_noise / 2 of the classes."""
    emb = torch.nn.Embedding(50, 4)
    n = 400
    g = torch.Generator().manual_seed(1)
    cxcy = 0.3 + 0.4 * torch.rand(n, 2, generator=g)
    wh = 0.02 + 0.08 * torch.rand(n, 2, generator=g)                               # small: no clipping
    boxes = torch.cat([cxcy, wh], 1)
    labels = torch.randint(0, 50, (n,), generator=g)
    torch.manual_seed(0)
    dn = build_denoising_queries([labels], [boxes], emb, num_classes=50, num_queries=5, num_dn_queries=n)
    assert dn.num_groups == 1
    noised = dn.boxes_unact[0].sigmoid()
    shift = (box_cxcywh_to_xyxy(noised) - box_cxcywh_to_xyxy(boxes).repeat(2, 1)).abs()
    half = wh.repeat(1, 2).repeat(2, 1) / 2
    rel = shift / half
    # a negative copy whose corners crossed (inward shifts > w) has a negative width, which the
    # inverse sigmoid clamps to 1e-3 (as the official): compare the copies that stayed boxes
    # (a positive copy that shrank below 1e-3 as well)
    ok = (noised[:, 2:] > 2e-3).all(-1)
    assert ok[:n].float().mean() > 0.95 and ok[n:].float().mean() > 0.4
    pos, neg = rel[:n][ok[:n]], rel[n:][ok[n:]]
    assert (pos < 1 + 1e-3).all() and (neg > 1 - 1e-3).all() and (neg < 2 + 1e-3).all()
    # the content is the label embedding of the (possibly redrawn) class: recover the classes
    dist = torch.cdist(dn.content[0], emb.weight)
    classes = dist.argmin(-1)
    flipped = (classes != labels.repeat(2)).float().mean()
    assert 0.15 < flipped < 0.35                                                   # ~ 0.25 x 49/50


def test_attention_mask_blocks():
    m = dn_attention_mask(num_groups=2, group_size=4, num_queries=3)
    assert m.shape == (11, 11)
    assert m[8:, :8].all() and not m[8:, 8:].any()                                  # matching: no dn
    assert not m[:4, :4].any() and m[:4, 4:8].all() and not m[:4, 8:].any()         # group 0: itself + matching
    assert not m[4:8, 4:8].any() and m[4:8, :4].all() and not m[4:8, 8:].any()


# ----------------------------------------------------------------------------- Quality Focal Loss

def test_quality_focal_loss_against_the_direct_formula():
    torch.manual_seed(0)
    logits = torch.randn(6, 3, dtype=torch.float64)
    labels = torch.tensor([0, 3, 2, 3, 1, 0])                                       # 3 = background
    scores = torch.tensor([0.8, 0.0, 0.3, 0.0, 1.0, 0.05], dtype=torch.float64)
    p = logits.sigmoid()
    expected = 0.0
    for i in range(6):
        for c in range(3):
            if labels[i] == c:
                y = scores[i]
                expected += -(y * p[i, c].log() + (1 - y) * (1 - p[i, c]).log()) * (y - p[i, c]).abs() ** 2
            else:
                expected += -(1 - p[i, c]).log() * p[i, c] ** 2
    torch.testing.assert_close(quality_focal_loss_sum(logits, labels, scores, beta=2.0).double(), expected,
                               rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- the model

@pytest.mark.parametrize("heads", ["[]", "[atss]", "[atss, faster_rcnn]"])
def test_codino_trains_with_k_heads(heads):
    model = _model(heads)
    images, targets = _data()
    weighted, unweighted = model(images, targets, return_unweighted=True)
    assert {"query/dn.loss_cls", "query/dn.d0.loss_bbox", "query/enc.loss_giou", "query/loss_cls"} <= set(weighted)
    for key in model.aux_keys:
        assert {f"{key}/pos.loss_cls", f"{key}/pos.d0.loss_giou"} <= set(weighted)
    assert all(torch.isfinite(v) for v in weighted.values())
    assert model.loss_weight("query/dn.loss_cls") == 1.0 and model.loss_weight("query/dn.loss_bbox") == 5.0
    sum(weighted.values()).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused[:5]


def test_codino_without_boxes_keeps_every_parameter_in_the_graph():
    model = _model("[atss, faster_rcnn]")
    images, _ = _data()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    losses = model(images, empty)
    assert losses["query/dn.loss_bbox"] == 0 and losses["query/loss_cls"] > 0
    sum(losses.values()).backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def test_deployed_codino_is_a_k0_dino():
    model = _model("[atss, faster_rcnn]")
    images, targets = _data()
    sum(model(images, targets).values()).backward()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    deployed = model.for_inference()
    baseline = _model("[]").for_inference()
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(deployed) == n(baseline) < n(model)
    assert deployed.query_head.label_embedding is None                             # denoising dropped too
    baseline.load_state_dict(deployed.state_dict(), strict=True)
    with torch.no_grad():
        a, b = deployed.eval()(images), baseline.eval()(images)
    for x, y in zip(a, b):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(x[key], y[key])


def test_codino_exposes_its_encoder_memory_and_aux_pyramid_in_eval_mode():
    """The aux pyramid (the encoder memory as maps, plus one more level) comes out in eval mode too,
    the same as in train mode (dropout 0): stage-by-stage comparisons read it there. The deployable model
    has none."""
    model = _model("[atss]").eval()
    images, _ = _data()
    with torch.no_grad():
        batch, mask, _ = model.preprocess(images)
        feats, masks = model.neck(model.backbone(batch), mask)
        out_e = model.query_head(feats, masks)
        model.query_head.train()
        out_t = model.query_head(feats, masks)
        deployed = model.for_inference().eval()
        out_d = deployed.query_head(feats, masks)
    memory, shapes = out_t.ctx.memory, out_t.ctx.spatial_shapes
    assert out_e.enc_logits is None and out_e.ctx is None and len(out_e.pyramid) == len(shapes) + 1 == 6
    start = 0
    for level, (h, w) in zip(out_e.pyramid, shapes):
        assert level.shape == (2, 32, h, w)
        assert torch.equal(level.flatten(2).transpose(1, 2), memory[:, start:start + h * w])
        start += h * w
    assert out_e.pyramid[-1].shape[-2:] == ((shapes[-1][0] + 1) // 2, (shapes[-1][1] + 1) // 2)
    for a, b in zip(out_e.pyramid, out_t.pyramid):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert out_d.pyramid is None


def test_soft_nms_linear_decay_classwise():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 1, 0])
    keep, s = soft_nms(boxes, scores, labels, iou_threshold=0.5)
    assert keep.tolist() == [0, 2, 3, 1]
    torch.testing.assert_close(s, torch.tensor([0.9, 0.7, 0.6, 0.8 * (1 - 0.9)]))  # IoU(0, 1) = 0.9
    keep, _ = soft_nms(boxes, scores, labels, iou_threshold=0.95)
    assert keep.tolist() == [0, 1, 2, 3]


def test_overfit_codino_k2_finds_the_boxes():
    torch.manual_seed(0)
    fast = DINO + ["model.num_classes=3", "model.num_queries=20", "model.embed_dims=64", "model.ffn_dims=128",
                   "model.num_encoder_layers=1", "model.num_decoder_layers=2", "model.aux_heads=[atss, faster_rcnn]",
                   "model.aux.faster_rcnn.fc_dims=128", "model.aux.faster_rcnn.roi_batch_size=64",
                   "model.max_pos_queries=50", "model.dn.num_queries=20"]
    model = build_model(load_config("experiments/codetr_tiny.yaml", fast))
    images, targets = shape_images(3, 96)
    curve = overfit(model, images, targets, steps=150)
    with contextlib.redirect_stdout(io.StringIO()):
        ap50 = coco_ap(model.for_inference(), images, targets, num_classes=3, iou="ap50")
    assert ap50 >= 0.9, f"AP50 {ap50:.3f} after overfitting Co-DINO (losses {curve[0]:.2f} -> {curve[-1]:.2f})"


def test_codino_with_swin_t_trains_a_step_on_four_backbone_levels():
    """Swin-T under the DINO head: C2-C5 (strides 4-32) plus the extra level, as the official Co-DINO Swin."""
    model = _model("[atss, faster_rcnn]", "model.backbone.type=swin", "model.backbone.swin_size=t",
                   "model.backbone.pretrained=false")
    assert model.backbone.out_strides == [4, 8, 16, 32] and len(model.neck.lateral) == 4
    images, targets = _data()
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values()) and "query/dn.loss_cls" in losses
    sum(losses.values()).backward()
    assert model.backbone.stages[3].blocks[1].mlp[0].weight.grad.abs().sum() > 0
