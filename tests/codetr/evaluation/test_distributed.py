"""Distributed evaluation: each rank predicts its shard, rank 0 scores every image exactly once."""
from __future__ import annotations

import multiprocessing as mp
import traceback

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from codetr.config.data_schema import AugmentConfig
from codetr.data import CocoDetection, build_eval_transforms
from codetr.evaluation import CocoEvaluator, merge_per_image
from tests.datasets import IMAGE_IDS, write_dataset


def test_merge_keeps_each_image_once_from_the_lowest_rank():
    # 7 images on 3 ranks: a DistributedSampler pads to 9 by repeating the first two
    sampler_shards = [list(DistributedSampler(range(7), num_replicas=3, rank=r, shuffle=True, seed=1))
                      for r in range(3)]
    flat = [i for shard in sampler_shards for i in shard]
    assert len(flat) == 9 and len(set(flat)) == 7          # the padding really duplicates
    parts = [{i: f"rank{r}" for i in shard} for r, shard in enumerate(sampler_shards)]
    merged = merge_per_image(parts)
    assert list(merged) == list(range(7))
    for i, value in merged.items():
        assert value == f"rank{min(r for r, shard in enumerate(sampler_shards) if i in shard)}"


def _worker(rank: int, world_size: int, init_file: str, ann_file: str, img_dir: str, queue) -> None:
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
        dataset = CocoDetection(ann_file, img_dir, transforms=build_eval_transforms(AugmentConfig(eval_scale=64)))
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
        evaluator = CocoEvaluator(dataset)
        seen = []
        for index in sampler:
            _, target = dataset[index]
            seen.append(target["image_id"])
            n = len(target["labels"])
            prediction = {"boxes": target["boxes"], "scores": torch.ones(n), "labels": target["labels"]}
            evaluator.update([prediction], [target])
        evaluator.synchronize()
        metrics = evaluator.summarize()      # after synchronize: no collective, rank 0 scores
        queue.put((rank, seen, evaluator.image_ids, len(evaluator.results()), metrics))
        dist.destroy_process_group()
    except Exception:   # report instead of hanging the test
        queue.put((rank, "error", traceback.format_exc(), 0, {}))


@pytest.mark.parametrize("world_size", [3])
def test_gloo_gather_loses_and_duplicates_nothing(tmp_path, world_size):
    ann_file, img_dir = write_dataset(tmp_path)      # 4 images on 3 ranks: 2 padded duplicates
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, world_size, str(tmp_path / "init"), str(ann_file),
                                               str(img_dir), queue)) for r in range(world_size)]
    for p in procs:
        p.start()
    reports = {}
    for _ in procs:
        rank, seen, image_ids, num_results, metrics = queue.get(timeout=120)
        assert seen != "error", image_ids
        reports[rank] = (seen, image_ids, num_results, metrics)
    for p in procs:
        p.join(timeout=30)
    all_seen = [i for seen, *_ in reports.values() for i in seen]
    assert len(all_seen) == 6 and sorted(set(all_seen)) == sorted(IMAGE_IDS)
    for rank, (_, image_ids, num_results, metrics) in reports.items():
        assert image_ids == sorted(IMAGE_IDS)        # every rank holds the merged set after synchronize
        assert num_results == 5                      # 5 non-crowd, non-degenerate boxes, none twice
        if rank == 0:
            assert metrics["coco/AP"] == pytest.approx(1.0) and metrics["coco/AR100"] == pytest.approx(1.0)
        else:
            assert metrics == {}
