"""What MLflow's system metrics cost a training run, measured two ways in one run.

    python benchmarks/system_metrics_cost.py                 # ~3 min
    python benchmarks/system_metrics_cost.py --samples 20 --rounds 2 --steps 10

1. Per sample: the work of one turn of MLflow's ``SystemMetricsMonitor`` loop (its own methods:
   collect CPU / memory / disk / network / GPU, the run-status read, aggregate, publish with the final
   flush spread over the samples) against a real sqlite store, in CPU seconds of the thread
   (``time.thread_time``: what it takes from the training process, whatever else the machine runs).
   The fraction of one core it costs at interval s is that time / s.
2. A/B on training: tiny Co-DETR training steps (forward + backward, 1 thread) with no monitor and with
   a monitor at 1 s and at 10 s (``platform.system_metrics_interval``), rounds interleaved, each step timed
   in process CPU time (all threads, the monitor's included) and wall time. The difference of the
   medians is the monitor's cost as the training process sees it; with the per-sample cost, it shows
   whether the interval's cost can be told apart from step-to-step noise.

Run from the repository root.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def per_sample_cost(uri: str, run_id: str, samples: int) -> tuple[float, list[str]]:
    """Median CPU seconds of one monitor turn, and the metric names it logs."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    from mlflow.tracking import MlflowClient

    monitor = SystemMetricsMonitor(run_id, sampling_interval=1, tracking_uri=uri)
    costs = []
    for _ in range(samples):
        start = time.thread_time()
        monitor.collect_metrics()
        MlflowClient(uri).get_run(run_id)          # the loop's status check
        monitor.publish_metrics(monitor.aggregate_metrics())
        costs.append(time.thread_time() - start)
    start = time.thread_time()
    monitor.mlflow_logger.flush()
    flush = (time.thread_time() - start) / samples
    names = sorted(MlflowClient(uri).get_run(run_id).data.metrics)
    return statistics.median(costs) + flush, names


def training_steps(interval: float | None, steps: int, model, images, targets, uri: str, run_id: str):
    """CPU and wall seconds of each of ``steps`` training steps, with a monitor at ``interval`` (or none)."""
    from platform.tracking.system_metrics import start_monitor

    monitor = start_monitor(uri, run_id, interval, local_rank=0, node_rank=0, num_nodes=1) if interval else None
    cpu, wall = [], []
    try:
        for _ in range(steps):
            c, w = time.process_time(), time.perf_counter()
            losses = model(images, targets)
            sum(losses.values()).backward()
            model.zero_grad(set_to_none=True)
            cpu.append(time.process_time() - c)
            wall.append(time.perf_counter() - w)
    finally:
        if monitor is not None:
            monitor.finish()
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=50, help="monitor turns timed (part 1)")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (part 2)")
    parser.add_argument("--steps", type=int, default=15, help="training steps per variant and round")
    # one thread: a multi-threaded step on a shared machine waits for its slowest thread (the other users)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import logging

    import torch

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from benchmarks.aux_cost import _batch
    from codetr import build_model, load_config
    from platform.tracking import mlflow_runs as tracking

    tmp = tempfile.mkdtemp(prefix="sysmetrics_")
    uri = f"sqlite:///{tmp}/mlflow.db"
    run_id, _ = tracking.start_run(uri, "system-metrics-cost", "per-sample")
    per_sample, names = per_sample_cost(uri, run_id, args.samples)
    print(f"logged: {', '.join(n.removeprefix('system/') for n in names)}")
    print(f"\n1. one monitor turn: {per_sample * 1e3:.2f} ms CPU (median of {args.samples}, sqlite store)")
    print("| interval | CPU per hour | share of one core |")
    print("|---|---|---|")
    for interval in (1, 10, 60):
        print(f"| {interval} s | {per_sample * 3600 / interval:.2f} s | {100 * per_sample / interval:.3f} % |")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(REPO / "experiments" / "codetr_tiny.yaml")
    model = build_model(cfg, num_classes=5).train()
    images, targets = _batch(2, 128, 128, 5)
    for _ in range(2):   # warm-up
        training_steps(None, 1, model, images, targets, uri, run_id)
    variants = {"none": None, "1 s": 1.0, "10 s": 10.0}
    cpu = {k: [] for k in variants}
    wall = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, interval in variants.items():
            ab_run, _ = tracking.start_run(uri, "system-metrics-cost", f"ab-{name}-{r}", resume=False)
            c, w = training_steps(interval, args.steps, model, images, targets, uri, ab_run)
            tracking.end_run(uri, ab_run, "FINISHED")
            cpu[name] += c
            wall[name] += w
    print(f"\n2. tiny Co-DETR training step (batch 2, 128x128, {args.threads} thread(s)), "
          f"{args.rounds} x {args.steps} steps per variant, interleaved; medians:")
    print("| monitor | CPU s / step | vs none | wall s / step | vs none |")
    print("|---|---|---|---|---|")
    base_cpu, base_wall = statistics.median(cpu["none"]), statistics.median(wall["none"])
    for name in variants:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        print(f"| {name} | {c:.3f} | {100 * (c / base_cpu - 1):+.1f} % | {w:.3f} | {100 * (w / base_wall - 1):+.1f} % |")
    spread = statistics.pstdev(cpu["none"]) / base_cpu
    print(f"\nstep-to-step spread without a monitor: {100 * spread:.1f} % (CPU time, std / median); "
          f"expected from part 1 (one turn per interval, {base_wall:.2f} s steps): "
          f"+{100 * per_sample * base_wall / 1.0 / base_cpu:.2f} % CPU per step at 1 s, "
          f"+{100 * per_sample * base_wall / 10.0 / base_cpu:.3f} % at 10 s")
    print(f"(machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
