"""CPU cost of one training step of the tiny models: K = 0 against K = 2 auxiliary heads, and Co-DINO.

    python benchmarks/step_cost.py                   # 3 warm-up + 10 timed steps of each variant, 1 thread
    python benchmarks/step_cost.py --profile         # then the torch.profiler and cProfile top rows of K = 2
    python benchmarks/step_cost.py --smoke           # 1 step, tiny images: the code path only (in the tests)

Variants (``experiments/codetr_tiny.yaml`` and ``experiments/codino_tiny.yaml``, 5 classes as the synthetic
set): ``K=0`` (``model.aux_heads=[]``), ``K=2`` (the config's ``[atss, faster_rcnn]``), ``codino K=2``.
Each is built with seed 0 and its own AdamW (``train`` settings of the config) and steps with
:func:`codetr.engine.loop.train_step` (forward, backward, gradient clipping, optimizer step) on one fixed
random batch (seeded; 1 to 4 boxes of 20-60 % of the image side per image, as the synthetic set). All
variants live in this one process and step round by round (one step of each per round), so that the load of
a shared machine falls on all alike. Step cost = median over the timed steps of the process CPU time
(``time.process_time``: what other users of the machine do not inflate; with 1 thread it is the wall time of
an idle core), wall time alongside. Run from the repository root.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from codetr import build_model, load_config  # noqa: E402
from codetr.engine.loop import train_step  # noqa: E402
from codetr.engine.optim import build_optimizer  # noqa: E402

NUM_CLASSES = 5     # the synthetic set's shapes
VARIANTS = {        # name -> (config, overrides)
    "K=0": ("experiments/codetr_tiny.yaml", ["model.aux_heads=[]"]),
    "K=2": ("experiments/codetr_tiny.yaml", []),
    "codino K=2": ("experiments/codino_tiny.yaml", []),
}


def random_batch(batch: int, height: int, width: int, num_classes: int = NUM_CLASSES, seed: int = 0):
    """Images [3, H, W] in [0, 1] and 1..4 boxes_xyxy (pixels, 20-60 % of the side) per image."""
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([width, height], dtype=torch.float32)
    images, targets = [], []
    for i in range(batch):
        images.append(torch.rand(3, height, width, generator=g))
        n = 1 + i % 4
        wh = (0.2 + 0.4 * torch.rand(n, 2, generator=g)) * size
        xy = torch.rand(n, 2, generator=g) * (size - wh)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1),
                        "labels": torch.randint(0, num_classes, (n,), generator=g)})
    return images, targets


class Variant:
    """One model with its optimizer; :meth:`step` runs one timed training step."""

    def __init__(self, name: str, config: str, overrides: list[str]) -> None:
        self.name = name
        cfg = load_config(REPO / config, overrides)
        torch.manual_seed(0)
        self.model = build_model(cfg, num_classes=NUM_CLASSES).train()
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.clip = cfg.train.clip_grad_norm
        self.aux_heads = list(cfg.model.aux_heads)
        self.cpu: list[float] = []
        self.wall: list[float] = []

    def step(self, images, targets, record: bool = True) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        out = train_step(self.model, images, targets, self.optimizer, clip_grad_norm=self.clip)
        if not torch.isfinite(out.loss):
            raise RuntimeError(f"{self.name}: non-finite loss {out.loss.item()}")
        if record:
            self.cpu.append(time.process_time() - cpu)
            self.wall.append(time.perf_counter() - wall)


def measure(variants: list[Variant], images, targets, warmup: int, steps: int) -> None:
    for r in range(warmup + steps):
        for v in variants:
            v.step(images, targets, record=r >= warmup)


def table(variants: list[Variant]) -> str:
    """A Markdown table: CPU-s and wall-s per step (medians), and the CPU ratio against K = 0."""
    by_name = {v.name: v for v in variants}
    ref = statistics.median(by_name["K=0"].cpu)
    lines = ["| variant | aux heads | CPU s / step | wall s / step | CPU x K=0 |", "|---|---|---|---|---|"]
    for v in variants:
        cpu = statistics.median(v.cpu)
        lines.append(f"| {v.name} | {', '.join(v.aux_heads) or '-'} | {cpu:.3f} | {statistics.median(v.wall):.3f} "
                     f"| {cpu / ref:.2f} |")
    return "\n".join(lines)


def profile(variant: Variant, images, targets, rows: int) -> str:
    """torch.profiler (self CPU time) and cProfile (own time, then cumulative) top rows of one step."""
    out = io.StringIO()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        variant.step(images, targets, record=False)
    out.write(f"\ntorch.profiler, one {variant.name} step, by self CPU time:\n")
    out.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    pr = cProfile.Profile()
    pr.enable()
    variant.step(images, targets, record=False)
    pr.disable()
    for key in ("tottime", "cumulative"):
        out.write(f"\ncProfile, one {variant.name} step, by {key}:\n")
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats(key).print_stats(rows)
        out.write("\n".join(line for line in s.getvalue().splitlines() if line.strip()) + "\n")
    return out.getvalue()


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", default="128x176", help="HxW of every image")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--profile", action="store_true", help="print the top rows of a K=2 step's profiles")
    p.add_argument("--profile-rows", type=int, default=30)
    p.add_argument("--smoke", action="store_true", help="1 step of batch 1 at 64x64, no warm-up (the code path)")
    args = p.parse_args(argv)
    if args.smoke:
        args.warmup, args.steps, args.batch, args.size, args.profile_rows = 0, 1, 1, "64x64", 5
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or "K=0" not in names:
        p.error(f"--variants: unknown {unknown} or no K=0; choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    images, targets = random_batch(args.batch, h, w)
    variants = [Variant(n, *VARIANTS[n]) for n in names]
    start = time.perf_counter()
    measure(variants, images, targets, args.warmup, args.steps)
    report = (f"Training step (train_step: forward, backward, clip, AdamW), {args.threads} thread(s), batch "
              f"{args.batch} x {h}x{w}, median of {args.steps} steps after {args.warmup} warm-up, torch "
              f"{torch.__version__}\n\n{table(variants)}\n")
    if "K=2" in names:
        by_name = {v.name: v for v in variants}
        ratio = statistics.median(by_name["K=2"].cpu) / statistics.median(by_name["K=0"].cpu)
        report += f"\nK=2 / K=0 CPU ratio: {ratio:.2f}\n"
        if args.profile:
            report += profile(by_name["K=2"], images, targets, args.profile_rows)
    report += f"\ntotal {time.perf_counter() - start:.0f} s\n"
    print(report)
    return report


if __name__ == "__main__":
    main()
