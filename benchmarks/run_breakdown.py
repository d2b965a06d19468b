"""Where a real ``python -m platform.train`` run's time goes: start-up, iterations by phase, evaluation,
checkpoints, and the CPU seconds of every process of the run, grouped by what it is.

    python benchmarks/run_breakdown.py                         # the default run, shortened to 100 iterations
    python benchmarks/run_breakdown.py --iters 60 --variant "dashboard=platform.ray_dashboard=true"
    python benchmarks/run_breakdown.py --smoke                 # a few iterations (the test suite runs this)

Each variant is one ``python -m platform.train`` run of the default config (the given overrides on
top of ``train.max_iters=N``, one evaluation at the end) against its own MLflow sqlite store. While it
runs, the benchmark samples the run's process tree every second and keeps each process's last CPU
reading, grouped by the process title (training workers, GCS, raylet, dashboard, dashboard agents,
runtime-env agent, log monitor, idle Ray workers, driver). After it ends, it reads the run's metrics
back from MLflow: the driver's steps (``run/time/*``), the iteration phases (``time/*``, means over the
log windows after the first), ``time/eval_s`` / ``time/checkpoint_s`` and the throughput. The
compute-bound rate is measured first, in a process of its own: the same model and batch size on the
same images, one thread, training steps back to back; times the number of workers (one core each),
it is what the run would reach if the cores only ran the model. Variants go side by side, in one run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# process title markers -> group (first match wins); anything else under the driver is "ray other"
TITLE_GROUPS = (("RayTrainWorker", "train workers"), ("ImplicitFunc", "train workers"),
                ("TrainController", "Ray Train actors"), ("PlacementGroupCleaner", "Ray Train actors"),
                ("SynchronizationActor", "Ray Train actors"), ("DatasetManager", "Ray Train actors"),
                ("AutoscalingCoordinator", "Ray Train actors"), ("PreemptionWatcher", "Ray Train actors"),
                ("gcs_server", "GCS"), ("raylet", "raylet"),
                ("DashboardAgent", "dashboard agent"), ("dashboard/agent", "dashboard agent"),
                ("ray-dashboard-", "dashboard"), ("dashboard.py", "dashboard"),
                ("RuntimeEnvAgent", "runtime-env agent"), ("runtime_env/agent", "runtime-env agent"),
                ("log_monitor", "log monitor"), ("autoscaler", "autoscaler monitor"),
                ("ray::IDLE", "idle Ray workers"), ("default_worker.py", "idle Ray workers"))


def _title(process: psutil.Process) -> str:
    return " ".join(process.cmdline()[:3]) or process.name()


def _group(title: str, pid: int, root: int, parents: dict[int, tuple[int, str]]) -> str:
    if pid == root:
        return "driver"
    p = pid
    while p in parents and p != root:   # a worker's descendants (data loaders) count as the worker
        for marker, group in TITLE_GROUPS[:2]:
            if marker in parents[p][1]:
                return group
        p = parents[p][0]
    for marker, group in TITLE_GROUPS:
        if marker in title:
            return group
    return "ray other"


class TreeSampler(threading.Thread):
    """The CPU seconds of a process and its descendants, sampled every ``interval`` s (last reading kept)."""

    def __init__(self, pid: int, interval: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.last: dict[tuple[int, float], tuple[str, float]] = {}
        self.parents: dict[int, tuple[int, str]] = {}
        self.stop = threading.Event()

    def sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for process in processes:
            try:
                with process.oneshot():
                    t = process.cpu_times()
                    title = _title(process)
                    self.parents[process.pid] = (process.ppid(), title)
                    self.last[(process.pid, process.create_time())] = (title, t.user + t.system)
            except psutil.Error:
                continue

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)

    def groups(self, by_title: bool = False) -> dict[str, float]:
        out: dict[str, float] = {}
        for (pid, _), (title, cpu) in self.last.items():
            group = _group(title, pid, self.pid, self.parents)
            key = f"{group}: {title[:90]}" if by_title else group
            out[key] = out.get(key, 0.0) + cpu
        return out


def compute_bound(iters: int, overrides: list[str], data_root: str) -> float:
    """Images/s of one core running only training steps of the run's model and batch (own process)."""
    code = f"""
import sys, time, torch
sys.path.insert(0, {str(REPO)!r})
torch.set_num_threads(1)
from codetr.config import load_config
from codetr.data.build import build_dataset, collate_fn
from codetr.engine.loop import train_step
from codetr.engine.optim import build_optimizer
from codetr.models import build_model
from platform.core.config_files import resolve_config_path
cfg = load_config(resolve_config_path("codetr_tiny"), {overrides + [f"data.synthetic.root={data_root}"]!r})
torch.manual_seed(0)
ds = build_dataset(cfg, "train")
model = build_model(cfg, num_classes=ds.num_classes).train()
opt = build_optimizer(model, cfg.train)
loader = torch.utils.data.DataLoader(ds, batch_size=cfg.data.batch_size, shuffle=True, collate_fn=collate_fn)
batches = []
for b in loader:
    batches.append(b)
    if len(batches) == {iters} + 2:
        break
for images, targets in batches[:2]:
    train_step(model, images, targets, opt, clip_grad_norm=cfg.train.clip_grad_norm)
start = time.process_time()
for images, targets in batches[2:]:
    train_step(model, images, targets, opt, clip_grad_norm=cfg.train.clip_grad_norm)
print(cfg.data.batch_size * {iters} / (time.process_time() - start))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return float(out.stdout.strip().splitlines()[-1])


def run_variant(name: str, overrides: list[str], iters: int, workdir: Path) -> dict[str, float | str]:
    from mlflow.tracking import MlflowClient

    folder = workdir / name
    folder.mkdir(parents=True)
    uri = f"sqlite:///{folder}/mlflow.db"
    log_every = max(2, iters // 10)
    args = [sys.executable, "-m", "platform.train", f"train.max_iters={iters}", f"train.log_every={log_every}",
            "train.eval_every=0", f"platform.storage_path={folder}/runs", f"platform.run_name={name}",
            f"data.synthetic.root={workdir}/data", "platform.log_model=false", *overrides]
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    env.pop("RAY_ADDRESS", None)
    began = time.perf_counter()
    with open(folder / "run.log", "w") as log:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        code = proc.wait()
        sampler.stop.set()
        sampler.join()
    wall = time.perf_counter() - began
    if code != 0:
        raise RuntimeError(f"{name}: exit {code}\n{(folder / 'run.log').read_text()[-3000:]}")
    client = MlflowClient(uri)
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    row: dict[str, float | str] = {"wall_s": wall}
    metrics = run.data.metrics
    for key, value in metrics.items():
        if key.startswith("run/time/"):
            row[key] = value
    for key in ("time/data_s", "time/forward_s", "time/backward_s", "time/optimizer_s", "time/log_s",
                "train/iter_time", "train/images_per_s"):
        history = [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
        if len(history) > 1:
            history = history[1:]   # the first window holds the warm-up
        if history:
            row[key] = statistics.mean(history)
    for key in ("time/eval_s", "time/checkpoint_s", "coco/AP"):
        if key in metrics:
            row[key] = metrics[key]
    for group, seconds in sampler.groups().items():
        row[f"cpu/{group}"] = seconds
    if os.environ.get("RUN_BREAKDOWN_TITLES"):
        for title, seconds in sorted(sampler.groups(by_title=True).items(), key=lambda kv: -kv[1])[:25]:
            print(f"  {name}  {seconds:7.2f} s  {title}")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=100, help="training iterations per run")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=override[,override...]: a run with these overrides (repeatable); "
                             "default: the default run only")
    parser.add_argument("--smoke", action="store_true", help="4 iterations on a small dataset (seconds)")
    args = parser.parse_args(argv)
    base = ["data.synthetic.num_train=64", "data.synthetic.num_val=8"] if args.smoke else []
    iters = 4 if args.smoke else args.iters
    variants = [("default", base)]
    for spec in args.variant:
        name, _, overrides = spec.partition("=")
        variants.append((name, base + [o for o in overrides.split(",") if o]))
    with tempfile.TemporaryDirectory(prefix="run_breakdown_") as tmp:
        workdir = Path(tmp)
        rows = {name: run_variant(name, overrides, iters, workdir) for name, overrides in variants}
        rate = compute_bound(2 if args.smoke else 20, base, str(workdir / "data"))
    keys = sorted({k for row in rows.values() for k in row}, key=lambda k: (k.split("/")[0], k))
    names = list(rows)
    print(f"\nplatform.train, {iters} iterations per run (CPU: {os.cpu_count()} cores)\n")
    print("| quantity | " + " | ".join(names) + " |")
    print("| --- | " + " | ".join("---" for _ in names) + " |")
    for key in keys:
        cells = [f"{rows[n][key]:.3f}" if isinstance(rows[n].get(key), float) else "" for n in names]
        print(f"| {key} | " + " | ".join(cells) + " |")
    workers = 2
    print(f"| compute-bound images/s (1 core x {workers}) | " + " | ".join(f"{rate * workers:.2f}" for _ in names) + " |")
    print("| images/s / compute-bound | " + " | ".join(
        f"{float(rows[n].get('train/images_per_s', 0.0)) / (rate * workers):.2f}" for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
