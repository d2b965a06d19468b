"""Cost of gradient accumulation at the same effective batch: ``train.accumulate_steps`` K = 1, 2, 4 with
``data.batch_size`` = E / K, one optimizer step over E images each (the tiny config, K = 2 auxiliary heads).

    python benchmarks/accumulation_cost.py                      # E = 4 images of 128 x 128, 6 timed steps
    python benchmarks/accumulation_cost.py --effective 8 --size 160 --steps 4

Every variant runs in its own process (``--worker``) on one thread, so its peak RSS is its own:
"step MB" is the growth of the process's high-water mark over the training steps, from the built
model and optimizer on (activations of one micro-batch, gradients and the optimizer state; only the
activations shrink with a smaller micro-batch). Step time = median over the
``--steps`` timed optimizer steps after ``--warmup`` steps, as process CPU time (``time.process_time``:
what other users of a shared machine do not inflate) and wall time. All variants see the same images
(random, seeded, the same size: no padding differences) with random boxes. Ratios are against K = 1
in the same run. Run from the repository root.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0      # Linux: KiB


def _images(count: int, size: int, num_classes: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, size, size, generator=g) for _ in range(count)]
    targets = []
    for i in range(count):
        n = 2 + i % 3
        wh = torch.rand(n, 2, generator=g) * size * 0.4 + 8
        xy = torch.rand(n, 2, generator=g) * (size - wh)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, num_classes, (n,), generator=g)})
    return images, targets


def worker(args: argparse.Namespace) -> None:
    import torch

    from codetr import build_model
    from codetr.config import load_config
    from codetr.engine import accumulated_step, build_optimizer

    torch.set_num_threads(1)
    k = args.worker
    batch = args.effective // k
    cfg = load_config("experiments/codetr_tiny.yaml", ["model.num_classes=4", f"train.accumulate_steps={k}"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = build_optimizer(model, cfg.train)
    images, targets = _images(args.effective, args.size, 4)
    micro = [(images[i:i + batch], targets[i:i + batch]) for i in range(0, args.effective, batch)]
    before = _max_rss_mb()
    for _ in range(args.warmup):
        accumulated_step(model, micro, optimizer, clip_grad_norm=cfg.train.clip_grad_norm)
    cpu, wall = [], []
    for _ in range(args.steps):
        c, w = time.process_time(), time.perf_counter()
        accumulated_step(model, micro, optimizer, clip_grad_norm=cfg.train.clip_grad_norm)
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    print(json.dumps({"k": k, "batch": batch, "cpu": statistics.median(cpu), "wall": statistics.median(wall),
                      "peak_mb": _max_rss_mb(), "step_mb": _max_rss_mb() - before}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--effective", type=int, default=4, help="images per optimizer step")
    parser.add_argument("--size", type=int, default=128, help="square image side")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--ks", default="1,2,4", help="accumulation steps to compare (divisors of --effective)")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args)
        return 0
    rows = []
    for k in (int(x) for x in args.ks.split(",")):
        if args.effective % k:
            parser.error(f"--effective {args.effective} is not a multiple of K = {k}")
        out = subprocess.run([sys.executable, __file__, "--worker", str(k), "--effective", str(args.effective),
                              "--size", str(args.size), "--steps", str(args.steps), "--warmup", str(args.warmup)],
                             cwd=REPO, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(f"effective batch {args.effective} images of {args.size} x {args.size}, tiny config (ATSS + Faster R-CNN), "
          f"1 thread, median of {args.steps} optimizer steps")
    print(f"{'K':>3} {'batch':>5} {'CPU s/step':>10} {'x K=1':>6} {'wall s/step':>11} {'x K=1':>6} "
          f"{'step MB':>8} {'x K=1':>6} {'peak MB':>8}")
    for r in rows:
        print(f"{r['k']:>3} {r['batch']:>5} {r['cpu']:>10.3f} {r['cpu'] / base['cpu']:>6.2f} {r['wall']:>11.3f} "
              f"{r['wall'] / base['wall']:>6.2f} {r['step_mb']:>8.0f} {r['step_mb'] / max(base['step_mb'], 1e-9):>6.2f} "
              f"{r['peak_mb']:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
