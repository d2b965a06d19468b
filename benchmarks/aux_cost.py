"""Cost of the auxiliary heads on the CPU: training-step time and peak memory for K = 0, 1, 2, 4,
and inference time of ``model.for_inference()`` against a model built with ``aux_heads: []``.

    python benchmarks/aux_cost.py                            # tiny + R50 (384x480), ~10 min on 2 idle cores
    python benchmarks/aux_cost.py --configs tiny --steps 2   # short run
    python benchmarks/aux_cost.py --r50-size 384x480 --r50-steps 1

Every variant runs in its own process (``--worker``), so its peak RSS is its own: "peak" is the
process's high-water mark (interpreter, torch, model and data included), "step" the growth of
that mark during the training steps (activations, gradients, optimizer-free), i.e. what the
heads add on top of the model. The parent drives the workers round by round (one training
step of each variant per round) so that the load of a shared machine spreads over all
variants alike; the R50 workers run one after the other (``--r50-together`` to interleave
them as well, it needs ~4x the memory). Step time = median over the ``--steps`` timed steps
after ``--warmup`` steps (forward + backward of the summed weighted losses, no optimizer), as process CPU time
(``time.process_time``: what the other users of a shared machine do not inflate) and wall time.
Inputs are random images with random boxes (seeded); the R50 backbone is not pretrained.
Ratios are against K = 0 of the same config in the same run. Run from the repository root.
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

# K = number of auxiliary heads, in the order the paper adds them
HEAD_SETS = {0: [], 1: ["atss"], 2: ["atss", "faster_rcnn"], 4: ["atss", "faster_rcnn", "fcos", "retinanet"]}
PAPER_GPU_HOURS = {0: 70, 1: 86, 2: 120}          # Co-DETR paper, K = 0 / 1 / 2
# Cheaper Faster R-CNN settings for the tiny config only (see the module docstring of
# codetr/models/aux/faster_rcnn.py for the official values).
TINY_LITE = ["model.aux.faster_rcnn.fc_dims=256", "model.aux.faster_rcnn.roi_batch_size=128",
             "model.aux.faster_rcnn.rpn_post_nms_top_n=300"]


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0      # Linux: KiB


def _batch(batch: int, height: int, width: int, num_classes: int, seed: int = 0):
    """Random images [3, H, W] in [0, 1] and 3..12 random boxes_xyxy (pixels) per image."""
    import torch

    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, height, width, generator=g) for _ in range(batch)]
    targets = []
    for i in range(batch):
        n = 3 + (i * 5) % 10
        wh = torch.rand(n, 2, generator=g) * torch.tensor([width, height]) * 0.4 + 8
        xy = torch.rand(n, 2, generator=g) * (torch.tensor([width, height]) - wh)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1),
                        "labels": torch.randint(0, num_classes, (n,), generator=g)})
    return images, targets


def worker(spec: dict) -> None:
    """One variant in its own process: build, then answer the parent's commands on stdin.

    ``step`` -> one timed training step ({"t": seconds}); ``infer`` -> one timed forward in
    eval mode under no_grad; ``done`` -> {"peak_mb", "ready_mb"} and exit.
    """
    import torch

    from codetr import build_model, load_config

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    overrides = [f"model.aux_heads=[{', '.join(spec['heads'])}]"] + spec["overrides"]
    model = build_model(load_config(spec["config"], overrides))
    if spec["mode"] == "infer":
        model = (model.for_inference() if spec["for_inference"] else model).eval()
    else:
        model.train()
    num_classes = model.num_classes
    images, targets = _batch(spec["batch"], spec["height"], spec["width"], num_classes)
    ready_mb = _max_rss_mb()
    print(json.dumps({"ready_mb": ready_mb}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "done":
            print(json.dumps({"peak_mb": _max_rss_mb(), "ready_mb": ready_mb}), flush=True)
            return
        start, cpu_start = time.perf_counter(), time.process_time()
        if cmd == "step":
            losses = model(images, targets)
            sum(losses.values()).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(images)
        print(json.dumps({"t": time.perf_counter() - start, "cpu": time.process_time() - cpu_start}), flush=True)


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.times: list[float] = []
        self.cpu_times: list[float] = []

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.spec['name']} died (exit {self.proc.wait()})")
        return json.loads(line)

    def ready(self) -> None:
        self._read()

    def run(self, cmd: str, record: bool) -> None:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        out = self._read()
        if record:
            self.times.append(out["t"])
            self.cpu_times.append(out["cpu"])

    def finish(self) -> dict:
        self.proc.stdin.write("done\n")
        self.proc.stdin.flush()
        out = self._read()
        self.proc.wait()
        return out


def run_group(specs: list[dict], cmd: str, warmup: int, steps: int, together: bool) -> list[dict]:
    """Run ``specs`` (interleaved round by round if ``together``, else one after the other)."""
    results = []
    batches = [specs] if together else [[s] for s in specs]
    for batch in batches:
        workers = [Worker(s) for s in batch]
        for w in workers:
            w.ready()
        for r in range(warmup + steps):
            for w in workers:
                w.run(cmd, record=r >= warmup)
        for w in workers:
            mem = w.finish()
            results.append({**w.spec, "median_s": statistics.median(w.cpu_times),
                            "wall_s": statistics.median(w.times), **mem})
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="tiny,r50", help="comma list of tiny, r50")
    p.add_argument("--ks", default="0,1,2,4", help="comma list of K among 0, 1, 2, 4")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed training steps (tiny)")
    p.add_argument("--r50-steps", type=int, default=2, help="timed training steps (R50)")
    p.add_argument("--infer-steps", type=int, default=3, help="timed inference forwards")
    p.add_argument("--tiny-batch", type=int, default=8)
    p.add_argument("--tiny-size", default="160x160", help="HxW")
    p.add_argument("--r50-batch", type=int, default=2)
    p.add_argument("--r50-size", default="384x480", help="HxW")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--no-lite", action="store_true", help="skip the tiny K=2 row with the cheaper settings")
    p.add_argument("--r50-together", action="store_true", help="interleave the R50 workers (more memory)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return

    ks = [int(k) for k in args.ks.split(",")]
    if 0 not in ks:
        ks = [0] + ks
    configs = {
        "tiny": dict(config="experiments/codetr_tiny.yaml", overrides=["model.num_classes=5"],
                     batch=args.tiny_batch, size=args.tiny_size, steps=args.steps, together=True),
        "r50": dict(config="experiments/codetr_r50_coco.yaml", overrides=["model.backbone.pretrained=false"],
                    batch=args.r50_batch, size=args.r50_size, steps=args.r50_steps, together=args.r50_together),
    }
    train_rows, infer_rows = [], []
    start = time.perf_counter()
    for name in args.configs.split(","):
        c = configs[name]
        h, w = (int(v) for v in c["size"].split("x"))
        base = dict(config=c["config"], batch=c["batch"], height=h, width=w, threads=args.threads)
        specs = [dict(base, name=f"K={k}", k=k, heads=HEAD_SETS[k], overrides=c["overrides"], mode="train")
                 for k in ks]
        if name == "tiny" and not args.no_lite and 2 in ks:
            specs.append(dict(base, name="K=2 lite", k=2, heads=HEAD_SETS[2], overrides=c["overrides"] + TINY_LITE,
                              mode="train"))
        print(f"[{time.perf_counter() - start:5.0f} s] {name}: training steps of {', '.join(s['name'] for s in specs)}",
              file=sys.stderr, flush=True)
        rows = run_group(specs, "step", args.warmup, c["steps"], c["together"])
        train_rows += [dict(r, config=name) for r in rows]
        k_max = max(ks)
        infer = [dict(base, name=f"K={k_max}.for_inference()", heads=HEAD_SETS[k_max], overrides=c["overrides"],
                      mode="infer", for_inference=True),
                 dict(base, name="K=0 (aux_heads: [])", heads=[], overrides=c["overrides"], mode="infer",
                      for_inference=False)]
        print(f"[{time.perf_counter() - start:5.0f} s] {name}: inference", file=sys.stderr, flush=True)
        rows = run_group(infer, "infer", args.warmup, args.infer_steps, together=True)
        infer_rows += [dict(r, config=name) for r in rows]

    print(f"\nCPU, {args.threads} thread(s) per variant; ratios from process CPU time (robust to a shared "
          f"machine's load; wall = cpu when idle and 1 thread); training step = forward + backward, median of "
          f"{args.steps} (tiny) / {args.r50_steps} (R50) steps after {args.warmup} warm-up; "
          f"tiny {args.tiny_batch} x {args.tiny_size}, R50 {args.r50_batch} x {args.r50_size}")
    print(f"{'config':6s} {'variant':10s} {'heads':36s} {'wall s':>7s} {'cpu s':>7s} {'x K=0':>6s} {'paper':>6s} "
          f"{'peak MB':>8s} {'step MB':>8s} {'x K=0':>6s}")
    for name in dict.fromkeys(r["config"] for r in train_rows):
        rows = [r for r in train_rows if r["config"] == name]
        k0 = next(r for r in rows if r["k"] == 0)
        k0_step_mb = max(k0["peak_mb"] - k0["ready_mb"], 1e-9)
        for r in rows:
            paper = f"x{PAPER_GPU_HOURS[r['k']] / PAPER_GPU_HOURS[0]:.2f}" if r["k"] in PAPER_GPU_HOURS else "-"
            if r["name"].endswith("lite"):
                paper = "-"
            step_mb = r["peak_mb"] - r["ready_mb"]
            print(f"{name:6s} {r['name']:10s} {', '.join(r['heads']) or '-':36s} {r['wall_s']:7.2f} "
                  f"{r['median_s']:7.2f} "
                  f"{r['median_s'] / k0['median_s']:6.2f} {paper:>6s} {r['peak_mb']:8.0f} {step_mb:8.0f} "
                  f"{step_mb / k0_step_mb:6.2f}")
    if any(r["name"].endswith("lite") for r in train_rows):
        print("K=2 lite: " + " ".join(TINY_LITE))
    print("paper: 70 / 86 / 120 GPU-hours for K = 0 / 1 / 2 (x1.23 / x1.71)")
    print(f"\n{'config':6s} {'inference (eval, no_grad)':28s} {'wall s':>7s} {'cpu s':>7s} {'ratio':>6s}")
    for name in dict.fromkeys(r["config"] for r in infer_rows):
        rows = [r for r in infer_rows if r["config"] == name]
        ref = rows[-1]["median_s"]
        for r in rows:
            print(f"{name:6s} {r['name']:28s} {r['wall_s']:7.3f} {r['median_s']:7.3f} {r['median_s'] / ref:6.2f}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
