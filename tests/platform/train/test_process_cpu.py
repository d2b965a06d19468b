"""CPU seconds by process group: real child processes that burn CPU, named as Ray names its processes."""
from __future__ import annotations

import subprocess
import sys
import time

from platform.train.process_cpu import CpuSampler, breakdown_line, cpu_breakdown, snapshot

# burn s CPU seconds, say so, then stay alive a moment (a sampler reads the final figure)
BURN = ("import sys, time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"
        "print('done', flush=True)\ntime.sleep(1.0)\n")
# a training worker (its process title is Ray's) whose own child (a data loader) burns CPU too
WORKER = (f"import subprocess\nchild = subprocess.Popen([{sys.executable!r}, '-c', {BURN.format(s=0.3)!r}])\n"
          + BURN.format(s=0.3) + "child.wait()\n")


def _titled(title: str, code: str) -> subprocess.Popen:
    """A Python process whose command line starts with ``title`` (as Ray sets its workers' titles)."""
    return subprocess.Popen(["bash", "-c", f'exec -a "{title}" {sys.executable} -c "$0"', code],
                            stdout=subprocess.PIPE, text=True)


def _wait_done(proc: subprocess.Popen, lines: int = 1) -> None:
    for _ in range(lines):
        assert proc.stdout.readline().strip() == "done"


def test_workers_with_their_children_ray_processes_and_the_driver_are_told_apart():
    with CpuSampler(interval_s=0.05) as sampler:
        worker = _titled("ray::RayTrainWorker.run", WORKER)
        system = _titled("gcs_server", BURN.format(s=0.2))
        t = time.process_time()
        while time.process_time() - t < 0.15:   # the driver burns a little too
            pass
        _wait_done(worker, 2)                    # the worker's and its child's "done"
        _wait_done(system)
        time.sleep(0.3)                          # a few samples after the last burn
    worker.wait(timeout=60)
    system.wait(timeout=60)
    totals = sampler.breakdown()
    assert totals["train_workers"] >= 0.55, totals     # the worker's 0.3 s and its child's 0.3 s
    assert 0.18 <= totals["ray_system"] < 0.5, totals
    assert totals["driver"] >= 0.14, totals
    line = breakdown_line(totals, wall_s=2.0, cores=2)
    assert line.startswith("CPU ") and "training workers" in line and "Ray's own processes" in line


def test_a_process_started_between_snapshots_counts_from_its_start_and_ended_ones_are_not_negative():
    before = snapshot()
    proc = _titled("ray::ImplicitFunc.train", BURN.format(s=0.2))
    _wait_done(proc)
    during = snapshot()
    proc.wait(timeout=60)
    totals = cpu_breakdown(before, during)
    assert totals["train_workers"] >= 0.19, totals
    assert all(v >= 0 for v in cpu_breakdown(during, before).values())
