"""Training-step cost per query head and backbone, side by side in one run (CPU).

    python benchmarks/head_backbone_cost.py                       # 4 variants, 384x480, batch 2, 3 steps
    python benchmarks/head_backbone_cost.py --size 256x320 --steps 2 --variants deformable_detr/resnet50,dino/resnet50

Variants = {Co-Deformable-DETR, Co-DINO} x {ResNet-50, Swin-T} with the official R50 recipes
(``codetr_r50_coco.yaml``, ``codino_r50_coco.yaml``: K = 2, 300 / 900 queries, 4 / 5 levels; Swin-T
as ``codetr_swin_t_coco.yaml``), no pretrained weights. All models live in this process and are
stepped round by round (one training step of each variant per round: forward + backward of the
summed weighted losses, no optimizer), so a shared machine's load spreads over all alike. Step time
= median over the timed rounds after one warm-up round, as process CPU seconds (what other users
of the machine do not inflate) and wall seconds; ratios against the first variant. Also prints the
parameter counts in training and deployed (``for_inference()``), and for the R50 variants the
official model's count from its key list (tests/data). Run from the repository root.
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

CONFIGS = {"deformable_detr": "experiments/codetr_r50_coco.yaml", "dino": "experiments/codino_r50_coco.yaml"}
SWIN_T = ["model.backbone.type=swin", "model.backbone.swin_size=t"]
OFFICIAL_KEYS = {("deformable_detr", "resnet50"): "tests/data/official_co_deformable_detr_r50_keys.txt",
                 ("dino", "resnet50"): "tests/data/official_co_dino_5scale_r50_keys.txt",
                 ("deformable_detr", "swin_t"): "tests/data/official_co_deformable_detr_swin_t_keys.txt"}


def official_params(path: Path) -> int | None:
    """Number of values of the floating-point tensors in an official key list (``name [shape]`` lines)."""
    if not path.is_file():
        return None
    total = 0
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#") or "num_batches_tracked" in line or "relative_position_index" in line:
            continue
        dims = [int(x) for x in line.split(" ", 1)[1].strip("[]").split(",") if x.strip()]
        n = 1
        for d in dims:
            n *= d
        total += n
    return total


def batch(n: int, height: int, width: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, height, width, generator=g) for _ in range(n)]
    targets = []
    for i in range(n):
        k = 4 + 3 * i
        wh = torch.rand(k, 2, generator=g) * torch.tensor([width, height]) * 0.4 + 16
        xy = torch.rand(k, 2, generator=g) * (torch.tensor([width, height]) - wh)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, 80, (k,), generator=g)})
    return images, targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="384x480", help="image HxW (default %(default)s)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed rounds (after one warm-up round)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="deformable_detr/resnet50,dino/resnet50,deformable_detr/swin_t,dino/swin_t")
    args = parser.parse_args(argv)
    import torch

    from codetr import build_model, load_config

    torch.set_num_threads(args.threads)
    h, w = (int(x) for x in args.size.split("x"))
    images, targets = batch(args.batch, h, w)
    variants = [tuple(v.split("/")) for v in args.variants.split(",")]
    models = {}
    for head, backbone in variants:
        overrides = ["model.backbone.pretrained=false"] + (SWIN_T if backbone == "swin_t" else [])
        torch.manual_seed(0)
        models[(head, backbone)] = build_model(load_config(CONFIGS[head], overrides)).train()
    cpu: dict[tuple, list[float]] = {v: [] for v in variants}
    wall: dict[tuple, list[float]] = {v: [] for v in variants}
    for rnd in range(args.steps + 1):
        for v in variants:
            model = models[v]
            model.zero_grad(set_to_none=True)
            t0, c0 = time.perf_counter(), time.process_time()
            sum(model(images, targets).values()).backward()
            if rnd > 0:
                cpu[v].append(time.process_time() - c0)
                wall[v].append(time.perf_counter() - t0)
        print(f"round {rnd} done", file=sys.stderr, flush=True)
    base = variants[0]
    base_cpu, base_wall = statistics.median(cpu[base]), statistics.median(wall[base])
    print(f"Training step (forward + backward), batch {args.batch} x {h}x{w}, {args.threads} threads, "
          f"median of {args.steps} rounds")
    print("weights = floating-point values of the state dict (parameters and BatchNorm statistics), as in a "
          "checkpoint; official = the same count of the official model's state dict")
    print("| query head | backbone | weights (train) | official weights | weights (deployed) | trainable params | "
          "CPU s / step | wall s / step | CPU ratio | wall ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def values(m) -> int:
        return sum(t.numel() for t in m.state_dict().values() if t.is_floating_point())

    for v in variants:
        model = models[v]
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        off = official_params(REPO / OFFICIAL_KEYS[v]) if v in OFFICIAL_KEYS else None
        c, wl = statistics.median(cpu[v]), statistics.median(wall[v])
        print(f"| {v[0]} | {v[1]} | {values(model) / 1e6:.3f} M | {'-' if off is None else f'{off / 1e6:.3f} M'} | "
              f"{values(model.for_inference()) / 1e6:.3f} M | {trainable / 1e6:.3f} M | {c:.2f} | {wl:.2f} | "
              f"{c / base_cpu:.2f} | {wl / base_wall:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
