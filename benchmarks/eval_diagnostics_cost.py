"""Cost of the evaluation diagnostics per evaluation: the tiny config's validation set (100 images, 128 px)
evaluated with the query head only, + every auxiliary branch's own AP (``eval.branches``), + the encoder /
matching diagnostics (``eval.diagnostics``), + the final evaluation's error analysis (``eval.error_analysis``).

    python benchmarks/eval_diagnostics_cost.py                        # an untrained tiny model, 3 rounds
    python benchmarks/eval_diagnostics_cost.py --checkpoint runs/NAME/checkpoint_000002 --rounds 3

The variants run round by round in one process (one evaluation of each per round, so the load of a shared
machine spreads over all of them alike); the table shows the median wall and process CPU seconds per
evaluation and the ratio to the query head alone. The branch test settings score a fixed number of
candidates whatever the weights (score threshold 0), so an untrained model costs what a trained one does
within a few per cent. Run from the repository root.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

VARIANTS = {"query head only": dict(branches=False, diagnostics=False, errors=False),
            "+ branches": dict(branches=True, diagnostics=False, errors=False),
            "+ diagnostics": dict(branches=False, diagnostics=True, errors=False),
            "+ branches + diagnostics (default)": dict(branches=True, diagnostics=True, errors=False),
            "+ all + error analysis (final)": dict(branches=True, diagnostics=True, errors=True)}


def main() -> None:
    import torch
    from torch.utils.data import DataLoader

    from codetr import build_model, load_config
    from codetr.data import build_dataset, collate_fn
    from codetr.engine import evaluate
    from codetr.evaluation.diagnostics import MatchHistory
    from codetr.evaluation.suite import build_suite
    from platform.core.checkpoints import model_from_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--config", default="experiments/codetr_tiny.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-root", default=None, help="data.synthetic.root (default: the config's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = [f"data.synthetic.root={args.data_root}"] if args.data_root else []
    if args.checkpoint:
        model, cfg, _ = model_from_checkpoint(args.checkpoint, None, overrides)
    else:
        cfg = load_config(args.config, overrides)
    val = build_dataset(cfg, "val")
    if not args.checkpoint:
        torch.manual_seed(0)
        model = build_model(cfg, num_classes=val.num_classes)
    loader = DataLoader(val, batch_size=cfg.data.eval_batch_size, collate_fn=collate_fn)
    history = MatchHistory()
    wall: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, v in VARIANTS.items():
            cfg.eval.branches, cfg.eval.diagnostics, cfg.eval.error_analysis = v["branches"], v["diagnostics"], v["errors"]
            suite = build_suite(val, cfg, model.aux_keys, history)
            suite.final = True
            t, c = time.perf_counter(), time.process_time()
            evaluate(model, loader, suite, torch.device("cpu"))
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    base_wall, base_cpu = statistics.median(wall["query head only"]), statistics.median(cpu["query head only"])
    print(f"{len(val)} validation images, {model.aux_keys} heads, {args.threads} thread(s), median of {args.rounds}")
    print(f"{'variant':<38} {'wall s':>8} {'cpu s':>8} {'wall x':>7} {'cpu x':>7}")
    for name in VARIANTS:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"{name:<38} {w:>8.2f} {c:>8.2f} {w / base_wall:>7.2f} {c / base_cpu:>7.2f}")


if __name__ == "__main__":
    main()
