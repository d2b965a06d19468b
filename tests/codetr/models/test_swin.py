"""Swin backbone: output levels, odd sizes, the official shift rule, weights files, the detector on top.

Numerical parity with the official SwinTransformerV1 was checked outside the test suite (docs/parity.md,
"Swin backbones"); here: behaviour against torchvision's own Swin where the two architectures agree.
"""
import pytest
import torch
from torchvision.models.swin_transformer import SwinTransformer, shifted_window_attention

from codetr import build_model, load_config
from codetr.config import ConfigError
from codetr.config.schema import BackboneConfig, SwinArch
from codetr.convert.backbone_names import relative_position_index
from codetr.models.backbones import ResNetBackbone, build_backbone
from codetr.models.backbones.swin import SwinBackbone, WindowAttention, shift_mask
from codetr.models.backbones.swin_weights import load_swin_weights, resize_bias_table

TINY = SwinArch(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7, drop_path_rate=0.0)
SWIN_T = ["model.backbone.type=swin", "model.backbone.swin_size=t", "model.backbone.pretrained=false"]
SMALL = ["model.num_classes=4", "model.num_queries=12", "model.embed_dims=32", "model.num_heads=4",
         "model.ffn_dims=64", "model.num_encoder_layers=1", "model.num_decoder_layers=2",
         "model.aux.faster_rcnn.fc_dims=64", "model.max_pos_queries=20"]


@pytest.mark.parametrize("out_indices", [[1, 2, 3], [0, 1, 2, 3]])
def test_swin_t_levels_have_the_strides_and_channels_of_their_stages(out_indices):
    torch.manual_seed(0)
    cfg = BackboneConfig(type="swin", swin_size="t", pretrained=False, out_indices=out_indices)
    backbone = build_backbone(cfg).eval()
    assert backbone.out_strides == [4 * 2 ** i for i in out_indices]
    assert backbone.out_channels == [96 * 2 ** i for i in out_indices]
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 96 * 2 ** i, 64 // 4 // 2 ** i, 96 // 4 // 2 ** i) for i in out_indices]
    # one LayerNorm per output stage, named for the stage
    assert sorted(backbone.out_norms) == [str(i) for i in out_indices]


def test_odd_sizes_round_up_at_every_stage_and_batching_changes_nothing():
    torch.manual_seed(0)
    backbone = SwinBackbone(TINY, [0, 1, 2, 3]).eval()
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(1, 3, 67, 101, generator=g), torch.randn(1, 3, 67, 101, generator=g)
    with torch.no_grad():
        single = backbone(a)
        batch = backbone(torch.cat([a, b]))
    # 67 x 101 -> patches 17 x 26 (padded to multiples of 4), then ceil halves: 9 x 13, 5 x 7, 3 x 4
    assert [tuple(o.shape[-2:]) for o in single] == [(17, 26), (9, 13), (5, 7), (3, 4)]
    for s, bt in zip(single, batch):
        assert torch.allclose(s[0], bt[0], atol=1e-5)
    # the padding is zeros after the image: a 68 x 104 image with the same pixels and zero padding
    padded = torch.zeros(1, 3, 68, 104)
    padded[..., :67, :101] = a
    with torch.no_grad():
        assert torch.allclose(backbone(padded)[0], single[0], atol=1e-5)


def _attention(shift: int, window: int = 4) -> WindowAttention:
    torch.manual_seed(0)
    attn = WindowAttention(8, [window, window], [shift, shift], num_heads=2)
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
    return attn.eval()


def _torchvision(attn: WindowAttention, x: torch.Tensor) -> torch.Tensor:
    return shifted_window_attention(x, attn.qkv.weight, attn.proj.weight, attn.get_relative_position_bias(),
                                    attn.window_size, attn.num_heads, attn.shift_size, qkv_bias=attn.qkv.bias,
                                    proj_bias=attn.proj.bias, training=False)


def test_window_attention_is_torchvisions_where_it_shifts_and_shifts_where_torchvision_does_not():
    x = torch.randn(2, 10, 9, 8)                  # padded to 12 x 12: 3 x 3 windows of 4
    for shift in (0, 2):
        attn = _attention(shift)
        with torch.no_grad():
            assert torch.allclose(attn(x), _torchvision(attn, x), atol=1e-6)
    # a 3 x 4 map fits in one 4 x 4 window: torchvision skips the shift, the official backbone rolls and masks
    small = torch.randn(1, 3, 4, 8)
    attn = _attention(2)
    with torch.no_grad():
        ours, theirs = attn(small), _torchvision(attn, small)
        no_shift = _torchvision(_attention(0), small)
    assert torch.allclose(theirs, no_shift, atol=1e-6) and not torch.allclose(ours, theirs, atol=1e-3)


def test_shift_mask_separates_the_regions_of_a_rolled_map():
    # 4 x 4 map, window 2, shift 1: after the roll, the last row / column came from the other side
    mask = shift_mask((4, 4), (2, 2), (1, 1), torch.device("cpu"), torch.float32)
    assert mask.shape == (4, 4, 4)
    assert (mask[0] == 0).all()                   # top-left window: one region
    # bottom-right window (tokens (2,2) (2,3) (3,2) (3,3)): four regions, only the diagonal attends
    assert torch.equal(mask[3] == 0, torch.eye(4, dtype=torch.bool))
    # top-right window: columns 2 and 3 are different regions
    assert torch.equal(mask[1] == 0, torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]]).bool())
    assert set(mask.unique().tolist()) == {0.0, -100.0}


def test_relative_position_index_is_torchvisions_and_not_saved():
    attn = WindowAttention(8, [7, 7], [0, 0], num_heads=2)
    assert torch.equal(attn.relative_position_index.view(49, 49), relative_position_index(7))
    assert "relative_position_index" not in attn.state_dict()


def test_resnet_out_indices_give_c2_to_c5():
    cfg = BackboneConfig(depth=18, pretrained=False, norm="bn", out_indices=[0, 1, 2, 3])
    backbone = ResNetBackbone(cfg).eval()
    assert backbone.out_channels == [64, 128, 256, 512] and backbone.out_strides == [4, 8, 16, 32]
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape[1:]) for o in outs] == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    default = ResNetBackbone(BackboneConfig(depth=18, pretrained=False, norm="bn"))
    assert default.out_channels == [128, 256, 512] and default.out_strides == [8, 16, 32]


# ------------------------------------------------------------------------------------ weights files

def _torchvision_swin() -> SwinTransformer:
    torch.manual_seed(1)
    net = SwinTransformer(patch_size=[4, 4], embed_dim=TINY.embed_dim, depths=list(TINY.depths),
                          num_heads=list(TINY.num_heads), window_size=[7, 7], stochastic_depth_prob=0.0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net.eval()


def test_torchvision_weights_file_loads_and_computes_torchvisions_features(tmp_path):
    net = _torchvision_swin()
    path = tmp_path / "swin_tiny_tv.pth"
    torch.save(net.state_dict(), path)
    cfg = BackboneConfig(type="swin", embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], weights_path=str(path),
                         drop_path_rate=0.0)
    backbone = build_backbone(cfg).eval()
    assert torch.equal(backbone.stages[2].blocks[1].mlp[3].weight, net.features[5][1].mlp[3].weight)
    assert torch.equal(backbone.stages[0].downsample.reduction.weight, net.features[2].reduction.weight)
    assert torch.equal(backbone.patch_embed.norm.bias, net.features[0][2].bias)
    # 256 x 256: every stage's map (64, 32, 16, 8) is larger than the window, where torchvision's
    # attention is the official one: the stages compute torchvision's features exactly
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        ours, theirs = backbone.patch_embed(x), net.features[0](x)
        for i, stage in enumerate(backbone.stages):
            ours, theirs = stage(ours), net.features[2 * i + 1](theirs)
            assert torch.allclose(ours, theirs, atol=1e-5), i
            if stage.downsample is not None:
                ours, theirs = stage.downsample(ours), net.features[2 * i + 2](theirs)


def _official_format(backbone: SwinBackbone) -> dict:
    """The backbone's tensors under the official / Microsoft classification names, with the extras
    such files hold (classifier, fixed buffers)."""
    sd = {}
    for name, t in backbone.state_dict().items():
        if name.startswith("out_norms."):
            continue
        name = name.replace("stages.", "layers.", 1).replace(".mlp.0.", ".mlp.fc1.").replace(".mlp.3.", ".mlp.fc2.")
        sd[name] = t.clone()
    sd["layers.0.blocks.0.attn.relative_position_index"] = relative_position_index(7)
    sd["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    sd["norm.weight"], sd["head.weight"] = torch.ones(128), torch.zeros(1000, 128)
    return sd


def test_official_format_weights_file_loads_every_tensor(tmp_path):
    torch.manual_seed(2)
    source = SwinBackbone(TINY)
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": _official_format(source)}, path)
    torch.manual_seed(3)
    target = SwinBackbone(TINY)
    assert load_swin_weights(target, path) == []
    src, dst = source.state_dict(), target.state_dict()
    assert all(torch.equal(src[k], dst[k]) for k in src if not k.startswith("out_norms."))
    assert all((dst[k] == v).all() for k, v in (("out_norms.3.weight", 1.0), ("out_norms.3.bias", 0.0)))


def test_window_7_file_into_a_window_12_model_resizes_the_bias_tables(tmp_path):
    torch.manual_seed(2)
    path = tmp_path / "w7.pth"
    torch.save({"model": _official_format(SwinBackbone(TINY))}, path)
    w12 = SwinBackbone(SwinArch(16, (2, 2, 2, 2), (1, 2, 2, 4), 12, 0.0))
    with pytest.warns(UserWarning, match="resized"):
        notes = load_swin_weights(w12, path)
    assert len(notes) == 8 and w12.stages[0].blocks[0].attn.relative_position_bias_table.shape == (23 * 23, 1)
    # bicubic over the offset grid: a table constant per head stays constant, same size is the identity
    table = torch.tensor([[1.0, -2.0]]).repeat(13 * 13, 1)
    assert torch.allclose(resize_bias_table(table, 23 * 23), table[:1].expand(23 * 23, 2), atol=1e-5)
    table = torch.randn(169, 3)
    assert torch.allclose(resize_bias_table(table, 169), table, atol=1e-6)


def test_bad_weights_files_fail_with_the_path(tmp_path):
    cfg = BackboneConfig(type="swin", embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4])
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match="nowhere.pth.*pretrained=false"):
        build_backbone(BackboneConfig(**{**cfg.__dict__, "weights_path": str(missing)}))
    resnet = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(2), "fc.weight": torch.zeros(2)}, resnet)
    with pytest.raises(ValueError, match="resnet.pth: not a Swin state dict"):
        build_backbone(BackboneConfig(**{**cfg.__dict__, "weights_path": str(resnet)}))
    other = tmp_path / "other_size.pth"
    torch.save({"model": _official_format(SwinBackbone(SwinArch(32, (2, 2, 2, 2), (1, 2, 2, 4), 7, 0.0)))}, other)
    with pytest.raises(ValueError, match="other_size.pth: weights of another Swin size"):
        build_backbone(BackboneConfig(**{**cfg.__dict__, "weights_path": str(other)}))
    with pytest.raises(FileNotFoundError, match="weights_path is not set.*swin_size l"):
        build_backbone(BackboneConfig(type="swin", swin_size="l"))


# ------------------------------------------------------------------------------------ config

def test_swin_config_presets_validation_and_unused_keys():
    cfg = load_config("experiments/codetr_swin_t_coco.yaml", ["model.backbone.pretrained=false"])
    assert cfg.model.backbone.swin_arch() == SwinArch(96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 0.2)
    assert cfg.train.weight_decay == 0.05 and cfg.model.backbone.frozen() == 0
    large = load_config("experiments/codetr_swin_l_coco.yaml").model.backbone
    assert large.swin_arch() == SwinArch(192, (2, 2, 18, 2), (6, 12, 24, 48), 12, 0.3)
    assert cfg.is_unused("model.backbone.depth") and not cfg.is_unused("model.backbone.window_size")
    r50 = load_config("experiments/codetr_r50_coco.yaml")
    assert r50.is_unused("model.backbone.window_size") and r50.model.backbone.frozen() == 1
    for bad, key in (("model.backbone.depths=[2, 2, 6]", "model.backbone.depths"),
                     ("model.backbone.num_heads=[5, 6, 12, 24]", "model.backbone.num_heads"),
                     ("model.backbone.out_indices=[0, 1, 2, 3]", "model.backbone.out_indices"),
                     ("model.backbone.out_indices=[3, 1]", "model.backbone.out_indices"),
                     ("model.backbone.type=vit", "model.backbone.type")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, ["model.backbone.type=swin", bad])


# ------------------------------------------------------------------------------------ the detector

def test_detector_with_swin_t_trains_a_step_and_keeps_frozen_stages_frozen():
    torch.manual_seed(0)
    cfg = load_config("experiments/codetr_tiny.yaml", SMALL + SWIN_T + ["model.backbone.frozen_stages=2"])
    model = build_model(cfg).train()
    assert model.backbone.out_channels == [192, 384, 768] and not model.backbone.patch_embed.training
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 112, generator=g), torch.rand(3, 83, 97, generator=g)]
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[20.0, 5.0, 90.0, 70.0]]), "labels": torch.tensor([3])}]
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    frozen = [model.backbone.patch_embed.proj.weight, model.backbone.stages[0].blocks[1].attn.qkv.weight]
    assert all(p.grad is None and not p.requires_grad for p in frozen)
    trained = [model.backbone.stages[1].blocks[0].attn.relative_position_bias_table,
               model.backbone.stages[2].blocks[5].norm2.weight,
               model.backbone.stages[3].blocks[1].mlp[0].weight, model.backbone.out_norms["1"].weight]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    model.eval()
    with torch.no_grad():
        dets = model(images)
    assert len(dets) == 2 and dets[0]["boxes"].shape[1] == 4
