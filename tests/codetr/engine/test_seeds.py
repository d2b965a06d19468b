"""``train.seed`` decides a run: the model's initialisation, the training order and the augmentation.

Same seed and config: bitwise the same trained weights (CPU, one thread, as a sweep trial trains);
another seed: another initialisation, order, augmentation and result. The platform's worker seeds
the same way (``seed_everything(train.seed + rank)``, the group sampler with ``train.seed``); the
sweep end-to-end test checks it through real sweep trials.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from codetr import build_model
from codetr.config import load_config
from codetr.data import build_dataset, collate_fn
from codetr.data.build import group_sampler
from codetr.engine import LoopHooks, TrainLoop, build_lr_scheduler, build_optimizer, seed_everything

TINY = ["data.synthetic.num_train=8", "data.synthetic.num_val=2", "data.synthetic.image_size=64",
        "data.augment.scales=[56, 64]", "data.augment.max_size=80", "data.augment.crop_prob=0.5",
        "data.augment.crop_resize_scales=[48, 56]", "data.augment.crop_size=[32, 48]",
        "data.batch_size=2", "model.num_queries=10", "model.aux_heads=[atss]", "train.epochs=2",
        "train.lr_steps=[2]", "train.warmup_iters=0", "train.log_every=100"]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("seed_data")
    return load_config("experiments/codetr_tiny.yaml", [*TINY, f"data.synthetic.root={root}"])


def _train(cfg, seed: int, iters: int = 2) -> tuple[dict, list[int]]:
    """What a one-worker run does up to ``iters`` steps: returns the weights and the first epoch's order."""
    torch.set_num_threads(1)
    seed_everything(seed)
    train_ds = build_dataset(cfg, "train")
    sampler = group_sampler(train_ds, cfg.data.batch_size, seed=seed)
    order = list(sampler)
    loader = DataLoader(train_ds, batch_size=cfg.data.batch_size, sampler=sampler, drop_last=True,
                        collate_fn=collate_fn)
    model = build_model(cfg, num_classes=train_ds.num_classes)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_lr_scheduler(optimizer, cfg.train, len(loader))
    cfg.train.max_iters = iters
    TrainLoop(model, optimizer, scheduler, loader, cfg, device=torch.device("cpu"), iters_per_epoch=len(loader),
              hooks=LoopHooks()).run()
    return {k: v.clone() for k, v in model.state_dict().items()}, order


def test_same_seed_same_weights_bitwise_other_seed_other_run(cfg):
    first, order = _train(cfg, 0)
    again, order_again = _train(cfg, 0)
    other, other_order = _train(cfg, 1)
    assert order == order_again and order != other_order
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_the_seed_sets_initialisation_and_augmentation(cfg):
    dataset = build_dataset(cfg, "train")

    def weights(seed):
        seed_everything(seed)
        return build_model(cfg, num_classes=5).state_dict()

    def augmented(seed):
        seed_everything(seed)
        image, target = dataset[0]                   # random scale and crop from the global RNG
        return image, target["boxes"]

    w0, w0_again, w1 = weights(0), weights(0), weights(1)
    assert all(torch.equal(w0[k], w0_again[k]) for k in w0)
    assert not all(torch.equal(w0[k], w1[k]) for k in w0)
    (img0, boxes0), (img0_again, boxes0_again) = augmented(0), augmented(0)
    assert torch.equal(img0, img0_again) and torch.equal(boxes0, boxes0_again)
    assert len({tuple(augmented(s)[0].shape) for s in range(8)}) > 1    # other seeds, other scales / crops
