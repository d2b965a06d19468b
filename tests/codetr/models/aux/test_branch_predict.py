"""Each auxiliary branch's own test-time detections: the official post-processing recovers a head's exact
outputs (AP 1.0 when a head's maps encode the ground truth), and the detector's one-pass predict_all."""
import pytest
import torch
from pycocotools.coco import COCO

from codetr import build_model, load_config
from codetr.box_ops import box_iou
from codetr.evaluation import CocoEvaluator
from codetr.evaluation.suite import EvaluationSuite
from codetr.models.aux import ATSSHead, FasterRCNNHead, FCOSHead, RetinaNetHead
from codetr.models.aux.anchors import grid_points
from codetr.models.aux.predict import class_nms, level_topk
from codetr.models.detector import EvalOutputs
from tests.codetr.helpers import C, IMAGE_SIZES, NUM_CLASSES, PADDED_HW, pyramid

TARGETS = [
    {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [80.0, 20.0, 150.0, 120.0], [30.0, 80.0, 46.0, 96.0]]),
     "labels": torch.tensor([1, 3, 4])},
    {"boxes": torch.tensor([[5.0, 5.0, 90.0, 60.0]]), "labels": torch.tensor([0])},
]
BIG = 12.0


def _coco_gt(targets, sizes) -> COCO:
    data = {"images": [], "annotations": [], "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(NUM_CLASSES)]}
    for i, (t, (h, w)) in enumerate(zip(targets, sizes)):
        data["images"].append({"id": i + 1, "height": h, "width": w, "file_name": f"{i}.png"})
        for box, label in zip(t["boxes"].tolist(), t["labels"].tolist()):
            x1, y1, x2, y2 = box
            data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": i + 1, "category_id": label + 1,
                                        "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    return coco


def _branch_ap(detections, name="atss"):
    """The detections through the evaluation suite as branch ``name`` (the query head gets the same)."""
    coco = _coco_gt(TARGETS, IMAGE_SIZES)
    suite = EvaluationSuite(lambda: CocoEvaluator(coco, list(range(1, NUM_CLASSES + 1))), branches=[name])
    targets = [{**t, "image_id": i + 1, "size": s, "orig_size": s} for i, (t, s) in enumerate(zip(TARGETS, IMAGE_SIZES))]
    outputs = EvalOutputs({"query": detections, name: detections}, [], torch.zeros(0), torch.zeros(0),
                          IMAGE_SIZES, PADDED_HW)
    suite.update_outputs(outputs, targets)
    metrics = suite.summarize()
    assert metrics["coco/AP"] == metrics[f"branch/{name}/coco/AP"]
    assert not any(k.startswith(f"branch/{name}/coco/AP/") for k in metrics)   # no per-class APs per branch
    return metrics[f"branch/{name}/coco/AP"]


def _to_maps(flat_levels, sizes, per_location):
    """Per level [H*W*A, n] -> [B=1 image stacked later] map [A*n, H, W]."""
    return [f.reshape(h, w, -1).permute(2, 0, 1) for f, (h, w) in zip(flat_levels, sizes)]


def _anchor_outputs(head, anchors, sizes, coder, with_centerness):
    """Per image: at each gt's best-IoU anchor a confident logit of its class and the deltas of the gt box."""
    a = anchors[0].shape[0] // (sizes[0][0] * sizes[0][1])
    cls_maps, reg_maps, ctr_maps = [[] for _ in sizes], [[] for _ in sizes], [[] for _ in sizes]
    for t in TARGETS:
        cls = [torch.full((x.shape[0], NUM_CLASSES), -BIG) for x in anchors]
        reg = [torch.zeros(x.shape[0], 4) for x in anchors]
        ctr = [torch.full((x.shape[0], 1), -BIG) for x in anchors]
        all_anchors = torch.cat(anchors)
        offsets = torch.tensor([0] + [x.shape[0] for x in anchors]).cumsum(0)
        for box, label in zip(t["boxes"], t["labels"]):
            best = int(box_iou(box[None], all_anchors)[0].argmax())
            level = int((offsets[1:] > best).nonzero()[0])
            idx = best - int(offsets[level])
            cls[level][idx, label] = BIG
            reg[level][idx] = coder.encode(anchors[level][idx], box)
            ctr[level][idx] = BIG
        for store, flat in ((cls_maps, cls), (reg_maps, reg), (ctr_maps, ctr)):
            for level, m in enumerate(_to_maps(flat, sizes, a)):
                store[level].append(m)
    out = [[torch.stack(x) for x in cls_maps], [torch.stack(x) for x in reg_maps]]
    if with_centerness:
        out.append([torch.stack(x) for x in ctr_maps])
    return tuple(out)


def _featmap_sizes(head):
    return [tuple(f.shape[-2:]) for f in pyramid(1)[:len(head.strides)]]


@pytest.mark.parametrize("head_cls", [ATSSHead, RetinaNetHead])
def test_anchor_branch_on_its_own_ground_truth_gives_ap_one(head_cls):
    head = head_cls(C, NUM_CLASSES)
    sizes = _featmap_sizes(head)
    anchors = head.anchor_generator.grid_anchors(sizes)
    outputs = _anchor_outputs(head, anchors, sizes, head.coder, with_centerness=head_cls is ATSSHead)
    detections = head.detections(outputs, sizes, IMAGE_SIZES)
    assert _branch_ap(detections) == pytest.approx(1.0)
    assert all(len(d["boxes"]) <= 100 for d in detections)


def test_fcos_branch_on_its_own_ground_truth_gives_ap_one():
    head = FCOSHead(C, NUM_CLASSES)
    sizes = _featmap_sizes(head)
    points = grid_points(sizes, head.strides)
    cls_maps, dist_maps, ctr_maps = [[] for _ in sizes], [[] for _ in sizes], [[] for _ in sizes]
    for t in TARGETS:
        cls = [torch.full((p.shape[0], NUM_CLASSES), -BIG) for p in points]
        dist = [torch.zeros(p.shape[0], 4) for p in points]
        ctr = [torch.full((p.shape[0], 1), -BIG) for p in points]
        for box, label in zip(t["boxes"], t["labels"]):
            centre = (box[:2] + box[2:]) / 2
            idx = int((points[0] - centre).norm(dim=1).argmin())
            cls[0][idx, label] = BIG
            dist[0][idx] = torch.cat([points[0][idx] - box[:2], box[2:] - points[0][idx]])
            ctr[0][idx] = BIG
        for store, flat in ((cls_maps, cls), (dist_maps, dist), (ctr_maps, ctr)):
            for level, m in enumerate(_to_maps(flat, sizes, 1)):
                store[level].append(m)
    outputs = tuple([torch.stack(x) for x in maps] for maps in (cls_maps, dist_maps, ctr_maps))
    assert _branch_ap(head.detections(outputs, sizes, IMAGE_SIZES), "fcos") == pytest.approx(1.0)


def test_faster_rcnn_branch_on_its_own_ground_truth_gives_ap_one():
    head = FasterRCNNHead(C, NUM_CLASSES)
    proposals, logits, deltas = [], [], []
    s = 6
    for t in TARGETS:
        n = len(t["boxes"])
        # the gt boxes as proposals, then background proposals
        props = torch.cat([t["boxes"], torch.tensor([[0.0, 0.0, 8.0, 8.0]] * (s - n - 1))])
        logit = torch.full((s, NUM_CLASSES + 1), -BIG)
        logit[torch.arange(n), t["labels"]] = BIG
        logit[n:, NUM_CLASSES] = BIG
        proposals.append(props)
        logits.append(logit)
        deltas.append(torch.zeros(s, 4 * NUM_CLASSES))
    detections = head.roi_detections(proposals, torch.stack(logits), torch.stack(deltas), IMAGE_SIZES)
    assert _branch_ap(detections, "faster_rcnn") == pytest.approx(1.0)


def test_a_wrong_class_or_box_lowers_the_branch_ap():
    """The hand case above is not vacuous: the same path with one box moved scores below 1."""
    good = [{"boxes": t["boxes"].clone(), "scores": torch.linspace(0.9, 0.5, len(t["boxes"])),
             "labels": t["labels"].clone()} for t in TARGETS]
    good[0]["boxes"][0] += 30.0
    assert _branch_ap(good) < 0.9


def test_class_nms_and_topk_follow_the_official_filters():
    scores = torch.tensor([[0.9, 0.0], [0.8, 0.7], [0.0, 0.0]])
    value, loc, label = level_topk(scores, 0.0, 2)
    assert value.tolist() == pytest.approx([0.9, 0.8]) and loc.tolist() == [0, 1] and label.tolist() == [0, 0]
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 0, 10, 10], [1.0, 0, 10, 10]])
    out = class_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 0, 1]), iou=0.6, max_per_img=100)
    assert out["labels"].tolist() == [0, 1]     # same class suppressed, another class kept


@pytest.mark.parametrize("head_cls", [ATSSHead, FCOSHead, RetinaNetHead, FasterRCNNHead])
def test_predict_on_a_random_pyramid(head_cls):
    torch.manual_seed(0)
    head = head_cls(C, NUM_CLASSES).eval()
    detections = head.predict(pyramid(requires_grad=False), IMAGE_SIZES)
    assert len(detections) == 2
    for det, (h, w) in zip(detections, IMAGE_SIZES):
        n = det["boxes"].shape[0]
        assert 0 < n <= 100 and det["scores"].shape == (n,) and det["labels"].dtype == torch.int64
        assert (det["boxes"] >= 0).all() and (det["boxes"][:, 0::2] <= w).all() and (det["boxes"][:, 1::2] <= h).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()


def test_predict_all_one_pass_query_and_every_branch():
    cfg = load_config("experiments/codetr_tiny.yaml", ["model.num_classes=3", "model.embed_dims=32",
                                                       "model.aux_heads=[atss,faster_rcnn,atss]", "model.num_queries=10"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    images = [torch.rand(3, 64, 80), torch.rand(3, 48, 64)]
    out = model.predict_all(images, model.aux_keys)
    assert list(out.detections) == ["query", "atss", "faster_rcnn", "atss_2"]
    plain = model(images)
    for a, b in zip(plain, out.detections["query"]):
        torch.testing.assert_close(a["boxes"], b["boxes"])
    assert len(out.encoder_maps) == cfg.model.num_levels and out.logits.shape == (2, 10, 3)
    assert out.sizes == [(64, 80), (48, 64)] and out.padded_size[0] >= 64
    with pytest.raises(ValueError, match="retinanet"):
        model.predict_all(images, ["retinanet"])


@pytest.mark.parametrize("final", [False, True])
def test_the_error_analysis_runs_at_the_final_evaluation_only(final):
    coco = _coco_gt(TARGETS, IMAGE_SIZES)
    suite = EvaluationSuite(lambda: CocoEvaluator(coco, list(range(1, NUM_CLASSES + 1))), error_analysis=True)
    suite.final = final
    detections = [{"boxes": t["boxes"].clone(), "scores": torch.full((len(t["boxes"]),), 0.9),
                   "labels": (t["labels"] + 1) % NUM_CLASSES} for t in TARGETS]      # every box, the wrong class
    targets = [{**t, "image_id": i + 1, "size": s, "orig_size": s} for i, (t, s) in enumerate(zip(TARGETS, IMAGE_SIZES))]
    suite.update_outputs(EvalOutputs({"query": detections}, [], torch.zeros(0), torch.zeros(0), IMAGE_SIZES,
                                     PADDED_HW), targets)
    metrics = suite.summarize()
    assert metrics["coco/AP"] == 0.0
    if final:
        assert metrics["errors/count_cls"] == 4.0 and metrics["errors/dAP_cls"] == pytest.approx(1.0)
        assert suite.details["errors"].counts["tp"] == 0
    else:
        assert not [k for k in metrics if k.startswith("errors/")] and "errors" not in suite.details
