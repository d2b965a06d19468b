"""The evaluation diagnostics on hand-made cases whose answers are known."""
import functools

import numpy as np
import pytest
import torch

from codetr.evaluation.diagnostics import (EncoderDiscriminability, MatchHistory, MatchingInstability,
                                           changed_matches, curve_area, discriminability_map, foreground_mask,
                                           iof_iob)
from codetr.models.detector import EvalOutputs
from codetr.models.matcher import hungarian_match


def test_score_map_equal_to_the_foreground_gives_iof_one_and_iob_zero():
    fg = foreground_mask(torch.tensor([[2.0, 3.0, 10.0, 9.0], [12.0, 0.0, 16.0, 4.0]]), (12, 16))
    assert fg.sum() == 8 * 6 + 4 * 4
    iof, iob = iof_iob(fg.float(), fg)
    below = np.linspace(0, 1, 101) < 1.0
    assert (iof[below] == 1.0).all() and (iob[below] == 0.0).all()
    assert curve_area(iof, iob) == pytest.approx(1.0)


def test_inverted_and_flat_maps():
    fg = foreground_mask(torch.tensor([[0.0, 0.0, 8.0, 8.0]]), (16, 16))
    iof, iob = iof_iob((~fg).float(), fg)
    assert curve_area(iof, iob) == pytest.approx(0.0)
    iof, iob = iof_iob(torch.full((16, 16), 0.7), fg)
    assert curve_area(iof, iob) == pytest.approx(0.5)


def test_discriminability_map_normalises_each_level_and_ignores_padding():
    # level 0: 8x8 map of a 64x64 padded batch; the image is the top-left 32x32 (4x4 cells)
    level0 = torch.zeros(3, 8, 8)
    level0[:, :2, :2] = 1.0          # high norm inside the image
    level0[:, 6:, 6:] = 100.0        # padding: must not set the maximum
    level1 = torch.ones(3, 4, 4)     # flat
    d = discriminability_map([level0, level1], (32, 32), (64, 64), (4, 4))
    assert d.shape == (4, 4)
    assert d.max() == pytest.approx(1.0)
    assert d[0, 0] > d[3, 3]                       # the object corner stands out
    assert d[3, 3] == pytest.approx(0.5)           # 0 on level 0, 1 on the flat level, averaged


def _outputs(logits, boxes, image_size=(40, 40)):
    return EvalOutputs({"query": []}, [torch.ones(1, 4, 5, 5)], logits, boxes, [image_size], image_size)


def test_encoder_discriminability_accumulates_the_subset_only():
    diag = EncoderDiscriminability([7])
    maps = torch.zeros(1, 4, 5, 5)
    maps[0, :, :2, :2] = 1.0
    outputs = EvalOutputs({"query": []}, [maps], torch.zeros(1, 3, 2), torch.zeros(1, 3, 4), [(40, 40)], (40, 40))
    diag.update(outputs, [{"image_id": 9, "boxes": torch.tensor([[0.0, 0, 16, 16]]), "labels": torch.tensor([0])}])
    assert diag.summarize() == {}
    diag.update(outputs, [{"image_id": 7, "boxes": torch.tensor([[0.0, 0, 16, 16]]), "labels": torch.tensor([0])}])
    diag.synchronize()
    area = diag.summarize()["diag/encoder_iof_iob_auc"]
    assert 0.9 < area <= 1.0
    thresholds, iof, iob = diag.curve
    assert len(thresholds) == len(iof) == len(iob) == 101


MATCHER = functools.partial(hungarian_match, cls_weight=2.0, bbox_weight=5.0, giou_weight=2.0)


def _target(boxes):
    return {"image_id": 1, "boxes": torch.tensor(boxes), "labels": torch.zeros(len(boxes), dtype=torch.long)}


def test_unchanged_matching_gives_instability_zero_and_a_swap_counts():
    history = MatchHistory()
    target = _target([[0.0, 0, 20, 20], [20.0, 20, 40, 40]])
    logits = torch.zeros(1, 3, 2)
    near = torch.tensor([[[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5], [0.5, 0.5, 0.1, 0.1]]])

    def run(boxes):
        diag = MatchingInstability([1], MATCHER, history)
        diag.update(_outputs(logits, boxes), [target])
        diag.synchronize()
        return diag.summarize()

    assert run(near) == {}                                   # nothing to compare with at the first evaluation
    assert run(near) == {"diag/instability": 0.0}            # the same matching
    swapped = near[:, [1, 0, 2]]
    assert run(swapped) == {"diag/instability": 2.0}         # queries 0 and 1 changed their gt
    moved = near[:, [2, 0, 1]]       # from (gt1, gt0, none): query 0 loses its gt, query 1 keeps gt0, query 2 takes gt1
    assert run(moved) == {"diag/instability": 2.0}


def test_changed_matches_counts_slots():
    assert changed_matches(np.array([0, -1, 1]), np.array([0, -1, 1])) == 0
    assert changed_matches(np.array([0, -1, 1]), np.array([1, -1, 0])) == 2
    with pytest.raises(ValueError, match="3 and 2 queries"):
        changed_matches(np.array([0, -1, 1]), np.array([0, 1]))


def _suite_worker(rank, world_size, init_file, queue):
    import traceback

    import torch.distributed as dist

    from codetr.evaluation.suite import EvaluationSuite

    class NoScores:     # the query evaluator's part is covered by test_distributed.py
        primary_metric = "coco/AP"

        def update(self, *_):
            pass

        def synchronize(self):
            pass

        def summarize(self):
            return {"coco/AP": 0.5} if dist.get_rank() == 0 else {}

    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
        history = MatchHistory()
        for round_ in range(2):
            diags = [EncoderDiscriminability([1, 2]), MatchingInstability([1, 2], MATCHER, history)]
            suite = EvaluationSuite(NoScores, diagnostics=diags)
            maps = torch.zeros(1, 4, 5, 5)
            maps[0, :, :2, :2] = 1.0
            boxes = torch.tensor([[[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5], [0.5, 0.5, 0.1, 0.1]]])
            outputs = EvalOutputs({"query": []}, [maps], torch.zeros(1, 3, 2), boxes, [(40, 40)], (40, 40))
            suite.update_outputs(outputs, [{**_target([[0.0, 0, 16, 16]]), "image_id": rank + 1}])
            suite.synchronize()                       # every rank: the collectives
            metrics = suite.summarize() if rank == 0 else {}   # rank 0 alone: no collective may remain
        queue.put((rank, {**metrics, "matched_images": sorted(history.previous)}))
        dist.destroy_process_group()
    except Exception:
        queue.put((rank, traceback.format_exc()))


def test_suite_gathers_the_subset_over_ranks_and_rank_0_summarizes_alone(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_suite_worker, args=(r, 2, str(tmp_path / "init"), queue)) for r in range(2)]
    for p in procs:
        p.start()
    reports = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert isinstance(reports[0], dict), reports[0]
    assert reports[0]["coco/AP"] == 0.5 and reports[0]["diag/instability"] == 0.0   # both images, unchanged
    assert 0.9 < reports[0]["diag/encoder_iof_iob_auc"] <= 1.0
    assert reports[0]["matched_images"] == [1, 2]          # each rank's image, gathered
    assert reports[1] == {"matched_images": []}                # other ranks neither score nor keep matchings
