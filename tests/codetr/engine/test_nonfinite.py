"""A non-finite loss, gradient or prediction: a named error (iteration, terms, images) or a skipped step.

The real tiny Co-DETR at ``train.lr=1e6`` used to stop with scipy's "matrix contains invalid numeric
entries" from inside the Hungarian matcher; now it stops with NonFiniteLossError naming the batch.
"""
from __future__ import annotations

import pickle

import pytest
import torch
from torch.utils.data import DataLoader

from codetr.config import load_config
from codetr.engine import TrainLoop, build_lr_scheduler, build_optimizer
from codetr.errors import NonFiniteLossError
from tests.codetr.helpers import ToyDetector


class PoisonedToy(ToyDetector):
    """The toy detector whose ``query/loss_bbox`` is NaN at the forward passes listed in ``nan_at`` (1-based)."""

    def __init__(self, nan_at: set[int]):
        super().__init__()
        self.nan_at, self.calls = nan_at, 0

    def forward(self, images, targets=None, return_unweighted=False):
        out = super().forward(images, targets, return_unweighted=True)
        if not self.training:
            return out
        self.calls += 1
        weighted, unweighted = out
        if self.calls in self.nan_at:
            weighted = {**weighted, "query/loss_bbox": weighted["query/loss_bbox"] * float("nan")}
        return (weighted, unweighted) if return_unweighted else weighted


def _batches(n_iters: int, batch: int = 2):
    g = torch.Generator().manual_seed(0)
    out = []
    for it in range(n_iters):
        images = [torch.rand(3, 16, 16, generator=g) for _ in range(batch)]
        targets = [{"boxes": torch.tensor([[0.2, 0.2, 0.6, 0.6]]), "labels": torch.tensor([k % 3]),
                    "image_id": 100 * (it + 1) + k} for k in range(batch)]
        out.append((images, targets))
    return out


def _loop(model, overrides, n_iters=6, logs=None):
    cfg = load_config("experiments/codetr_tiny.yaml", ["train.warmup_iters=0", "train.log_every=1",
                                                         f"train.max_iters={n_iters}", *overrides])
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_lr_scheduler(optimizer, cfg.train, n_iters)
    from codetr.engine import LoopHooks

    hooks = LoopHooks(on_log=(lambda r: logs.append(r.metrics)) if logs is not None else None)
    return TrainLoop(model, optimizer, scheduler, _batches(n_iters), cfg, device=torch.device("cpu"),
                     iters_per_epoch=n_iters, hooks=hooks, image_names=lambda i: f"img_{i}.jpg")


def test_error_names_iteration_terms_and_images_and_leaves_the_weights_untouched():
    model = PoisonedToy(nan_at={3})
    loop = _loop(model, [])
    before = {}

    def snapshot(_record):
        before.clear()
        before.update({k: v.clone() for k, v in model.state_dict().items()})

    loop.hooks.on_log = snapshot      # weights after iteration 2, the last good step
    with pytest.raises(NonFiniteLossError) as info:
        loop.run()
    error = info.value
    assert error.iteration == 3 and loop.iteration == 2
    assert list(error.terms) == ["query/loss_bbox"] and error.image_ids == [300, 301]
    assert error.file_names == ["img_300.jpg", "img_301.jpg"]
    assert "iteration 3" in str(error) and "query/loss_bbox=nan" in str(error) and "img_300.jpg" in str(error)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # the NaN step changed nothing
    again = pickle.loads(pickle.dumps(error))    # it travels whole from a Ray worker to the driver
    assert type(again) is NonFiniteLossError and again.iteration == 3 and str(again) == str(error)


def test_skip_drops_the_step_counts_it_and_stops_past_the_maximum():
    logs: list[dict] = []
    model = PoisonedToy(nan_at={2, 4})
    loop = _loop(model, ["train.on_nonfinite=skip", "train.max_skipped_steps=2"], logs=logs)
    loop.run()
    assert loop.iteration == 6 and loop.guard.skipped == 2
    assert [m["train/skipped_steps"] for m in logs] == [0, 1, 1, 2, 2, 2]
    assert all(torch.isfinite(torch.tensor(m["train/loss"])) for m in logs if "train/loss" in m)
    assert "train/loss" not in logs[1]              # the window of the skipped step logs no loss
    assert loop.state_dict()["skipped_steps"] == 2  # a resumed run keeps counting

    with pytest.raises(NonFiniteLossError, match="iteration 4.*1 step\\(s\\) already skipped"):
        _loop(PoisonedToy(nan_at={2, 4}), ["train.on_nonfinite=skip", "train.max_skipped_steps=1"]).run()


def test_skipped_steps_leave_the_same_weights_as_no_step():
    """A skipped step is no step: the result equals training on the other batches only."""
    torch.manual_seed(0)
    skipped = PoisonedToy(nan_at={2})
    torch.manual_seed(0)
    reference = PoisonedToy(nan_at=set())
    loop = _loop(skipped, ["train.on_nonfinite=skip"], n_iters=3)
    loop.run()
    ref_loop = _loop(reference, [], n_iters=3)
    ref_loop.train_loader = [b for i, b in enumerate(_batches(3)) if i != 1]
    ref_loop.total_iters = 2
    ref_loop.run()
    # AdamW state counts differ (2 steps each) but parameters agree exactly: same updates, same order,
    # the lr schedule is constant here (no warm-up, no step within 3 iterations)
    assert all(torch.equal(a, b) for a, b in zip(skipped.parameters(), reference.parameters()))


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    return load_config("experiments/codetr_tiny.yaml", [
        "train.lr=1e6", "train.warmup_iters=0", "train.max_iters=6", "train.log_every=1",
        f"data.synthetic.root={root}", "data.synthetic.num_train=8", "data.synthetic.num_val=2",
        "data.augment.scales=[64]", "data.augment.max_size=64", "data.augment.crop_prob=0"])


def test_real_model_at_huge_lr_stops_with_a_named_error_not_a_scipy_one(tiny_cfg):
    from codetr import build_model
    from codetr.data import build_dataset, collate_fn

    torch.manual_seed(0)
    dataset = build_dataset(tiny_cfg, "train")
    loader = DataLoader(dataset, batch_size=2, shuffle=False, collate_fn=collate_fn, drop_last=True)
    model = build_model(tiny_cfg, num_classes=dataset.num_classes)
    optimizer = build_optimizer(model, tiny_cfg.train)
    loop = TrainLoop(model, optimizer, build_lr_scheduler(optimizer, tiny_cfg.train, len(loader)), loader, tiny_cfg,
                     device=torch.device("cpu"), iters_per_epoch=len(loader),
                     image_names=lambda i: dataset.coco.imgs[i]["file_name"])
    with pytest.raises(NonFiniteLossError) as info:
        loop.run()
    error = info.value
    assert 2 <= error.iteration <= 6 and error.what in ("loss", "gradient", "predictions")
    names = {dataset.coco.imgs[i]["file_name"] for i in error.image_ids}
    assert error.file_names and set(error.file_names) == names
    assert "lower train.lr" in str(error) or error.terms
    assert all(torch.isfinite(p).all() for p in model.parameters())   # no NaN ever reached the weights
