"""Co-DETR's collaborative hybrid assignment: K auxiliary heads, positive queries, weights, inference parity."""
import pytest
import torch

from codetr import build_model, load_config

SMALL = ["model.num_classes=4", "model.num_queries=12", "model.embed_dims=32", "model.num_heads=4",
         "model.ffn_dims=64", "model.num_encoder_layers=1", "model.num_decoder_layers=2",
         "model.aux.faster_rcnn.fc_dims=64", "model.max_pos_queries=20"]


def _model(heads: str, *extra):
    torch.manual_seed(0)
    return build_model(load_config("experiments/codetr_tiny.yaml", SMALL + [f"model.aux_heads={heads}", *extra]))


def _data():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 112, generator=g), torch.rand(3, 80, 96, generator=g)]
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 50.0, 60.0], [40.0, 30.0, 100.0, 90.0]]), "labels": torch.tensor([0, 2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    return images, targets


@pytest.mark.parametrize("heads", ["[]", "[atss]", "[atss, faster_rcnn]", "[atss, faster_rcnn, fcos, retinanet]"])
def test_k_heads_train(heads):
    model = _model(heads)
    images, targets = _data()
    weighted, unweighted = model(images, targets, return_unweighted=True)
    prefixes = {name.split("/")[0] for name in weighted}
    expected = {"query", *model.aux_keys}
    assert prefixes == expected
    for key in model.aux_keys:
        assert {f"{key}/pos.loss_cls", f"{key}/pos.loss_bbox", f"{key}/pos.loss_giou", f"{key}/pos.d0.loss_cls"} <= set(weighted)
    assert all(torch.isfinite(v) for v in weighted.values())
    sum(weighted.values()).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters without gradient (DDP would need find_unused_parameters): {unused[:5]}"


def test_loss_weights_follow_lambda_scheme():
    model = _model("[atss, faster_rcnn]", "model.lambda1=0.5", "model.lambda2=3.0")
    n_dec = 2
    assert model.loss_weight("atss/loss_bbox") == model.aux_heads[0].loss_weights["loss_bbox"] * 3.0 * n_dec
    assert model.loss_weight("faster_rcnn/roi.loss_bbox") == model.aux_heads[1].loss_weights["roi.loss_bbox"] * 3.0 * n_dec
    assert model.loss_weight("atss/pos.loss_bbox") == 5.0 * 0.5
    assert model.loss_weight("faster_rcnn/pos.d0.loss_giou") == 2.0 * 0.5
    assert model.loss_weight("query/enc.loss_cls") == 2.0
    images, targets = _data()
    weighted, unweighted = model(images, targets, return_unweighted=True)
    for name in weighted:
        assert torch.allclose(weighted[name], unweighted[name] * model.loss_weight(name))


def test_repeated_heads_get_distinct_names():
    model = _model("[atss, atss]")
    assert model.aux_keys == ["atss", "atss_2"]
    images, targets = _data()
    losses = model(images, targets)
    assert "atss_2/loss_cls" in losses and "atss_2/pos.loss_cls" in losses


def test_positive_query_padding_is_masked():
    """Real positive queries do not see the padding: changing padded boxes leaves their outputs unchanged."""
    model = _model("[atss]").eval()
    images, _ = _data()
    batch, mask, _ = model.preprocess(images)
    feats, masks = model.neck(model.backbone(batch), mask)
    model.train()
    with torch.no_grad():
        out = model.query_head(feats, masks)
        boxes = torch.rand(2, 5, 4) * 0.5 + 0.25
        valid = torch.tensor([[True, True, True, False, False], [True, False, False, False, False]])
        logits1, boxes1 = model.query_head.forward_positive(out.ctx, boxes, valid, 0)
        other = boxes.clone()
        other[~valid] = torch.rand(int((~valid).sum()), 4) * 0.5 + 0.25
        logits2, boxes2 = model.query_head.forward_positive(out.ctx, other, valid, 0)
    torch.testing.assert_close(logits1[:, valid], logits2[:, valid])
    torch.testing.assert_close(boxes1[:, valid], boxes2[:, valid])
    assert not torch.allclose(boxes1[:, ~valid], boxes2[:, ~valid])


def test_for_inference_costs_exactly_a_k0_model():
    model = _model("[atss, faster_rcnn]")
    images, targets = _data()
    sum(model(images, targets).values()).backward()  # make sure the shared weights are not at init
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    deployed = model.for_inference()
    baseline = _model("[]")
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(deployed) == n(baseline) < n(model)
    baseline.load_state_dict(deployed.state_dict(), strict=True)  # same parameter names and shapes
    baseline.eval()

    def forbid(*_):
        raise AssertionError("an auxiliary head ran in eval mode")

    for head in model.aux_heads:
        head.register_forward_pre_hook(forbid)
    model.eval()
    with torch.no_grad():
        full, dep, base = model(images), deployed(images), baseline(images)
    for a, b, c in zip(full, dep, base):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(a[key], b[key])
            torch.testing.assert_close(b[key], c[key])


def test_batch_without_any_positive_keeps_every_parameter_in_the_graph():
    """DDP runs without find_unused_parameters: a batch with no boxes at all must still give every
    parameter a (zero) gradient, also with the coordinate-feature branch."""
    model = _model("[atss, faster_rcnn]", "model.with_coord_feat=true")
    images, _ = _data()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    losses = model(images, empty)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused[:5]


def test_keys_reported_unused_do_not_change_the_model_or_its_losses():
    """``Config.unused_keys`` (a sweep runs such combinations once) must be truly inert: with K = 0,
    lambda1 / lambda2 / the aux heads' settings leave parameters and losses unchanged."""
    cfg = load_config("experiments/codetr_tiny.yaml", SMALL + ["model.aux_heads=[]"])
    assert cfg.is_unused("model.lambda1") and cfg.is_unused("model.lambda2")
    assert cfg.is_unused("model.aux.atss.topk") and not cfg.is_unused("model.num_queries")
    images, targets = _data()
    totals = []
    for extra in ([], ["model.lambda1=0.25", "model.lambda2=4.0", "model.aux.atss.topk=3",
                       "model.aux.faster_rcnn.fc_dims=32", "model.max_pos_queries=5"]):
        model = _model("[]", *extra)
        totals.append((sum(p.numel() for p in model.parameters()), float(sum(model(images, targets).values()).detach())))
    assert totals[0] == totals[1]
    with_heads = load_config("experiments/codetr_tiny.yaml", SMALL + ["model.aux_heads=[atss]"])
    assert with_heads.is_unused("model.aux.faster_rcnn.fc_dims") and not with_heads.is_unused("model.aux.atss.topk")
    assert not with_heads.is_unused("model.lambda1") and not with_heads.is_unused("model.lambda2")
