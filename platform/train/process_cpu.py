"""Where a run's CPU time goes on this machine: the training workers, Ray's own processes, the driver.

A local run's Ray processes are the driver's descendants (``ray.init`` starts them): GCS, raylet, the
dashboard and its agents, the log monitor, idle worker processes, Ray Train's controller, and the
training workers (``ray::RayTrainWorker``; a sweep's inline trials: ``ray::ImplicitFunc``) with their
data-loader processes. :func:`snapshot` reads every one's CPU seconds; :func:`cpu_breakdown` groups the
difference between two snapshots. A process that ended between them is missed (a worker lost and
restarted; the training workers end with the fit), so :class:`CpuSampler` snapshots every few seconds
while the run trains and keeps each process's last reading: a lower bound by at most one interval. Joining a cluster (``RAY_ADDRESS``), only the driver
is on this machine's process tree.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import psutil

GROUPS = ("train_workers", "ray_system", "driver")
WORKER_MARKERS = ("RayTrainWorker", "ImplicitFunc")


@dataclass(frozen=True)
class ProcessCpu:
    pid: int
    started: float      # process creation time (a reused pid is another process)
    cpu_s: float        # user + system seconds so far
    group: str


def _is_worker(title: str) -> bool:
    return any(marker in title for marker in WORKER_MARKERS)


def snapshot(root_pid: int | None = None) -> dict[tuple[int, float], ProcessCpu]:
    """CPU seconds of ``root_pid`` (default: this process) and all its descendants, by (pid, start time).
    A training worker's descendants (its data-loader processes) are in its group."""
    root = psutil.Process(root_pid or os.getpid())
    seen: dict[int, tuple[float, float, int, str]] = {}   # pid -> (started, cpu_s, parent pid, title)
    for process in [root, *root.children(recursive=True)]:
        try:
            with process.oneshot():
                times = process.cpu_times()
                title = (process.cmdline()[:1] or [process.name()])[0]
                seen[process.pid] = (process.create_time(), times.user + times.system, process.ppid(), title)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue

    def group(pid: int) -> str:
        if pid == root.pid:
            return "driver"
        while pid in seen and pid != root.pid:
            if _is_worker(seen[pid][3]):
                return "train_workers"
            pid = seen[pid][2]
        return "ray_system"

    return {(pid, started): ProcessCpu(pid, started, cpu_s, group(pid))
            for pid, (started, cpu_s, _, _) in seen.items()}


def cpu_breakdown(before: dict[tuple[int, float], ProcessCpu],
                  after: dict[tuple[int, float], ProcessCpu]) -> dict[str, float]:
    """CPU seconds spent between two snapshots per group (``train_workers``, ``ray_system``, ``driver``);
    a process absent from ``before`` counts from its start. A process's group is the one it had last
    (an idle Ray worker process that became a training worker counts as a training worker)."""
    totals = {group: 0.0 for group in GROUPS}
    for key, now in after.items():
        then = before.get(key)
        totals[now.group] += max(now.cpu_s - (then.cpu_s if then else 0.0), 0.0)
    return totals


def breakdown_line(totals: dict[str, float], wall_s: float, cores: int | None = None) -> str:
    """``CPU 812 s of 2 cores x 500 s (81%): training workers 700 s (86%), Ray's processes 71 s, driver 41 s``."""
    cores = cores or os.cpu_count() or 1
    used = sum(totals.values())
    share = 100.0 * used / max(cores * wall_s, 1e-9)
    workers = 100.0 * totals["train_workers"] / max(used, 1e-9)
    return (f"CPU {used:.0f} s of {cores} core(s) x {wall_s:.0f} s ({share:.0f}%): training workers "
            f"{totals['train_workers']:.0f} s ({workers:.0f}%), Ray's own processes {totals['ray_system']:.0f} s, "
            f"driver {totals['driver']:.0f} s")


class CpuSampler:
    """Snapshots of this process tree every ``interval_s`` seconds in a background thread, merged: the
    latest reading of every process seen (``with CpuSampler() as s: ...; s.readings``)."""

    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self.readings: dict[tuple[int, float], ProcessCpu] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-cpu-sampler", daemon=True)

    def _sample(self) -> None:
        self.readings.update(snapshot())

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> "CpuSampler":
        self._sample()
        self.first = dict(self.readings)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def breakdown(self) -> dict[str, float]:
        """CPU seconds per group between entering and leaving (see :func:`cpu_breakdown`)."""
        return cpu_breakdown(self.first, self.readings)
