"""Co-DETR with K = 0 (Deformable-DETR): losses, eval outputs, padding, backbone weights."""
import pytest
import torch

from codetr import build_model, load_config

SMALL = ["model.num_classes=4", "model.aux_heads=[]", "model.num_queries=15", "model.embed_dims=32",
         "model.num_heads=4", "model.ffn_dims=64", "model.num_encoder_layers=1", "model.num_decoder_layers=2"]


def _model(*extra):
    torch.manual_seed(0)
    return build_model(load_config("experiments/codetr_tiny.yaml", SMALL + list(extra)))


def _targets():
    return [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [20.0, 10.0, 60.0, 30.0]]), "labels": torch.tensor([1, 3])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]


def test_train_losses_named_finite_and_backpropagate():
    model = _model()
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    weighted, unweighted = model(images, _targets(), return_unweighted=True)
    assert set(weighted) == set(unweighted)
    expected = {f"query/{p}{t}" for p in ("", "d0.", "enc.") for t in ("loss_cls", "loss_bbox", "loss_giou")}
    assert set(weighted) == expected
    for name, value in weighted.items():
        assert value.dim() == 0 and torch.isfinite(value)
        assert torch.allclose(value, unweighted[name] * model.loss_weight(name))
    assert model.loss_weight("query/loss_bbox") == 5.0 and model.loss_weight("query/d0.loss_giou") == 2.0
    sum(weighted.values()).backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert all(g is not None for g in grads)


def test_no_boxes_anywhere_gives_zero_box_terms():
    model = _model()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    losses = model([torch.rand(3, 64, 64), torch.rand(3, 48, 64)], empty)
    for name, value in losses.items():
        assert torch.isfinite(value)
        if "bbox" in name or "giou" in name:
            assert value.item() == 0.0
        else:
            assert value.item() > 0  # every query is a negative
    sum(losses.values()).backward()


def test_eval_outputs_torchvision_format():
    model = _model("model.num_detections=20").eval()
    out = model([torch.rand(3, 50, 70), torch.rand(3, 64, 64)])
    assert len(out) == 2
    for det, (h, w) in zip(out, [(50, 70), (64, 64)]):
        assert det["boxes"].shape == (20, 4) and det["scores"].shape == (20,) and det["labels"].dtype == torch.int64
        assert (det["boxes"][:, 0::2] <= w).all() and (det["boxes"][:, 1::2] <= h).all() and (det["boxes"] >= 0).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
        assert ((det["labels"] >= 0) & (det["labels"] < 4)).all()


def test_neck_group_norm_is_plain_by_default_and_masked_as_an_option():
    """Official: GroupNorm(32) statistics over the whole padded map, convs without bias. The
    ``masked_group_norm`` option takes them over the image part only."""
    torch.manual_seed(0)
    c3 = [torch.randn(2, c, 16, 20) for c in (128, 256, 512)]
    c3 = [c3[0], torch.randn(2, 256, 8, 10), torch.randn(2, 512, 4, 5)]
    mask = torch.zeros(2, 128, 160, dtype=torch.bool)
    mask[1, 64:, :] = True
    mask[1, :, 96:] = True
    plain = _model().neck
    assert all(conv.bias is None for conv in [*plain.lateral, plain.extra])
    with torch.no_grad():
        outs, masks = plain(c3, mask)
        expected = torch.nn.functional.group_norm(plain.lateral[0](c3[0]), 32, plain.lateral_norm[0].weight,
                                                  plain.lateral_norm[0].bias, eps=plain.lateral_norm[0].eps)
        torch.testing.assert_close(outs[0], expected)
        masked = _model("model.neck_norm=masked_group_norm").neck
        masked.load_state_dict(plain.state_dict())
        m_outs, _ = masked(c3, mask)
    torch.testing.assert_close(m_outs[0][0], outs[0][0])              # unpadded image: the same
    valid = ~masks[0][1]
    x = masked.lateral[0](c3[0])[1][:, valid]                           # [C, n valid]
    xg = x.reshape(32, -1)
    norm = ((xg - xg.mean(1, keepdim=True)) / (xg.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt()).reshape(x.shape)
    w, b = masked.lateral_norm[0].weight[:, None], masked.lateral_norm[0].bias[:, None]
    torch.testing.assert_close(m_outs[0][1][:, valid], norm * w + b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(m_outs[0][1][:, valid], outs[0][1][:, valid], atol=1e-3)


def test_padded_in_batch_equals_alone():
    """With the masked GroupNorm option everything after the backbone is padding-aware (valid ratios,
    positional encoding, proposals): fed the same backbone maps zero-padded, the query head gives the
    same outputs. The CNN backbone itself sees the padding near the image border (as in the reference),
    so end to end only this part is exact."""
    model = _model("model.neck_norm=masked_group_norm").eval()
    g = torch.Generator().manual_seed(1)
    small, large = torch.rand(3, 64, 96, generator=g), torch.rand(3, 128, 128, generator=g)
    with torch.no_grad():
        batch, mask, _ = model.preprocess([small])
        c_alone = model.backbone(batch)
        big_batch, big_mask, _ = model.preprocess([small, large])
        c_batched = [torch.zeros_like(c) for c in model.backbone(big_batch)]
        for a, b in zip(c_alone, c_batched):
            b[0, :, :a.shape[2], :a.shape[3]] = a[0]
        out_alone = model.query_head(*model.neck(c_alone, mask))
        out_batched = model.query_head(*model.neck(c_batched, big_mask))
    torch.testing.assert_close(out_batched.logits[:, :1], out_alone.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out_batched.boxes_cxcywh_norm[:, :1], out_alone.boxes_cxcywh_norm, atol=1e-5, rtol=1e-4)



def test_pretrained_weights_missing_names_the_path(tmp_path):
    cfg = load_config("experiments/codetr_tiny.yaml",
                      SMALL + ["model.backbone.pretrained=true", f"model.backbone.weights_path={tmp_path}/r18.pth"])
    with pytest.raises(FileNotFoundError, match="r18.pth"):
        build_model(cfg)


def test_num_classes_conflict_and_missing():
    cfg = load_config("experiments/codetr_tiny.yaml", SMALL)
    with pytest.raises(ValueError, match="num_classes"):
        build_model(cfg, num_classes=7)
    cfg.model.num_classes = None
    with pytest.raises(ValueError, match="num_classes"):
        build_model(cfg)
    assert build_model(cfg, num_classes=7).num_classes == 7


def test_two_stage_selection_never_picks_invalid_positions_and_otherwise_is_the_plain_topk():
    from codetr.models.query_heads.deformable_detr import select_valid_topk

    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.5], [0.3, 0.2, 0.8, 0.7, 0.6]])
    invalid = torch.tensor([[False, False, False, False, False], [False, False, True, False, False]])
    idx = select_valid_topk(scores, invalid, 3)
    assert idx[1].tolist() == [3, 4, 0]                              # 0.8 is invalid: skipped
    assert torch.equal(idx[0], scores[0:1].topk(3, dim=1).indices[0])  # nothing invalid picked: the plain top-k
