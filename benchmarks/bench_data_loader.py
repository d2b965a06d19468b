"""Data-loader throughput: images per second with 0, 1 and 2 loader workers, training transforms on.

    python benchmarks/bench_data_loader.py                                   # tiny config
    python benchmarks/bench_data_loader.py --config experiments/codetr_tiny.yaml \\
        data.augment.scales=[128,160,192] data.augment.max_size=256         # key=value overrides

Times ``--batches`` batches after ``--warmup`` batches (which absorb worker start-up and the
first file reads), so the figure is the steady-state rate of decode + augmentation + collate
+ transfer from the worker processes; ``--repeats`` runs give the median and the best.
The synthetic set is generated first if needed (its generation time is printed).
Run from the repository root.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from codetr.config import load_config  # noqa: E402
from codetr.data import build_dataset, build_loader, split_files  # noqa: E402


def measure(dataset, *, batch_size: int, num_workers: int, batches: int, warmup: int) -> float:
    """Images per second over ``batches`` batches after ``warmup`` batches."""
    loader = build_loader(dataset, batch_size=batch_size, num_workers=num_workers, train=True, seed=0)
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    images = 0
    start = time.perf_counter()
    for _ in range(batches):
        try:
            batch_images, _ = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch_images, _ = next(iterator)
        images += len(batch_images)
    seconds = time.perf_counter() - start
    del iterator, loader
    return images / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "experiments" / "codetr_tiny.yaml"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="default: data.batch_size of the config")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args()

    torch.set_num_threads(1)        # as in a training process: loader workers are the parallelism
    cfg = load_config(args.config, args.overrides)
    start = time.perf_counter()
    split_files(cfg, "train")       # generates the synthetic set on first use
    prepared = time.perf_counter() - start
    dataset = build_dataset(cfg, "train")
    batch_size = args.batch_size or cfg.data.batch_size
    aug = cfg.data.augment
    print(f"dataset: {cfg.data.dataset}, {len(dataset)} train images (ready in {prepared:.1f} s); "
          f"scales {aug.scales[0]}..{aug.scales[-1]}, max {aug.max_size}, crop_prob {aug.crop_prob}; "
          f"batch {batch_size}; torch threads 1")
    print(f"| loader workers | images / s (median of {args.repeats}) | best |")
    print("|---:|---:|---:|")
    for num_workers in args.workers:
        rates = sorted(measure(dataset, batch_size=batch_size, num_workers=num_workers, batches=args.batches,
                               warmup=args.warmup) for _ in range(args.repeats))
        print(f"| {num_workers} | {rates[len(rates) // 2]:.1f} | {rates[-1]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
