"""Where a short sweep trial's time goes: the fraction of trial time spent training.

    python benchmarks/sweep_trial_time.py                        # this checkout, ~6 min on 2 idle cores
    python benchmarks/sweep_trial_time.py --repo /tmp/before     # another checkout (e.g. `git archive` of main)
    python benchmarks/sweep_trial_time.py --analyze sqlite:////tmp/x/mlflow.db NAME   # an existing sweep

Runs a small tiny sweep (``experiments/sweep_tiny.yaml``'s short-trial settings, 4 trials: K = 0 / 2 x
30 / 50 queries, 2 epochs, no early stopping, 2 trials at a time) with the checkout's own code and
reads its MLflow runs back. For every trial:

- training: the time inside the training loop (data loading, forward, backward, step), the sum over
  the logged ``train/iter_time`` windows of window mean x window length. ``train.log_every`` here
  divides the epoch (65 iterations; checked), so the windows tile the epochs exactly and no training
  second is lost or counted twice; evaluation, checkpoints and reporting happen between windows.
- trial: the child run's wall time in MLflow (its creation by the trial to its end state);
- slot: the sweep's wall time x trials at a time / trials (everything, Ray and Tune included).

The two fractions (training / trial and training / slot) read the same metrics on any version of
the platform, so a checkout from before a change and one after are measured alike.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ITERS_PER_EPOCH = 65          # 256 images / batch 4, the aspect-ratio groups padded to whole batches
LOG_EVERY = 13                # divides the epoch: the logging windows tile it
SWEEP_ARGS = ["experiments/sweep_tiny.yaml", "scheduler.type=none", "max_concurrent_trials=2",
              "search_space={model.aux_heads: {grid: [[], [atss, faster_rcnn]]}, "
              "model.num_queries: {grid: [30, 50]}}",
              "train.epochs=2", "train.lr_steps=[2]", f"train.log_every={LOG_EVERY}", "platform.log_model=false"]


def run_sweep(repo: Path, workdir: Path, name: str) -> str:
    """Run the benchmark sweep in ``repo`` (its own code); returns the tracking URI."""
    uri = f"sqlite:///{workdir}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env["MLFLOW_TRACKING_URI"] = uri
    cmd = [sys.executable, "-m", "platform.sweep", *SWEEP_ARGS, f"name={name}", f"storage_path={workdir}/runs",
           f"data.synthetic.root={workdir}/data"]
    start = time.time()
    with open(workdir / f"{name}.log", "w") as log:
        code = subprocess.run(cmd, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    print(f"{repo}: sweep {name} exited {code} after {time.time() - start:.0f} s (log {workdir}/{name}.log)",
          flush=True)
    if code != 0:
        raise SystemExit(code)
    return uri


def training_seconds(client, run_id: str) -> float:
    """Sum of window mean x window length over the run's ``train/iter_time`` history."""
    history = sorted(client.get_metric_history(run_id, "train/iter_time"), key=lambda m: m.step)
    steps = {m.step for m in history}
    ends = {int(m.step) for m in client.get_metric_history(run_id, "train/epochs_done")}
    if not ends <= steps:   # an epoch ended inside a window: its time before the epoch's end is lost
        raise ValueError(f"train.log_every does not divide the epoch: epochs end at {sorted(ends)}, "
                         f"windows at {sorted(steps)}")
    total, previous = 0.0, 0
    for m in history:
        total += m.value * (m.step - previous)
        previous = m.step
    return total


def analyze(uri: str, name: str, concurrency: int = 2) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    parents = [r for e in client.search_experiments() for r in
               client.search_runs([e.experiment_id], filter_string=f"tags.`platform.run_name` = '{name}'")]
    parent = next(r for r in parents if "sweep.name" in r.data.tags)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    rows = []
    for child in children:
        train = training_seconds(client, child.info.run_id)
        wall = (child.info.end_time - child.info.start_time) / 1000.0
        rows.append((child.info.run_name, train, wall))
    sweep_wall = (parent.info.end_time - parent.info.start_time) / 1000.0
    train_total = sum(r[1] for r in rows)
    out = {"trials": len(rows), "sweep_wall_s": sweep_wall, "train_s": train_total,
           "trial_s": sum(r[2] for r in rows), "slot_s": sweep_wall * concurrency,
           "per_trial": rows}
    out["train_over_trial"] = train_total / out["trial_s"]
    out["train_over_slot"] = train_total / out["slot_s"]
    out["median_overhead_s"] = statistics.median(w - t for _, t, w in rows)
    return out


def print_result(label: str, r: dict) -> None:
    print(f"\n{label}: {r['trials']} trials, sweep wall {r['sweep_wall_s']:.0f} s")
    for trial, train, wall in sorted(r["per_trial"]):
        print(f"  {trial:50s} training {train:6.1f} s of {wall:6.1f} s ({100 * train / wall:4.1f} %)")
    print(f"  training / trial time: {100 * r['train_over_trial']:.1f} %  (median overhead "
          f"{r['median_overhead_s']:.1f} s per trial)")
    print(f"  training / slot time (sweep wall x 2 / trials): {100 * r['train_over_slot']:.1f} %", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", action="append", type=Path,
                        help="checkout(s) to measure, in turn (default: this one)")
    parser.add_argument("--analyze", nargs=2, metavar=("TRACKING_URI", "SWEEP_NAME"),
                        help="only read an existing sweep")
    args = parser.parse_args(argv)
    if args.analyze:
        print_result(args.analyze[1], analyze(*args.analyze))
        return 0
    results = []
    for i, repo in enumerate(args.repo or [REPO]):
        workdir = Path(tempfile.mkdtemp(prefix=f"sweep_trial_time{i}_"))
        name = f"trial_time_{i}"
        uri = run_sweep(repo.resolve(), workdir, name)
        results.append((str(repo), analyze(uri, name)))
    for label, r in results:
        print_result(label, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
