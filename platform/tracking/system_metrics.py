"""MLflow's own system metrics for a training run, sampled on every node that trains.

The first worker of each node (local rank 0) runs MLflow's ``SystemMetricsMonitor`` thread while it
trains: every ``platform.system_metrics_interval`` seconds it samples the node's CPU utilisation,
memory, disk and network (psutil) and, where NVML sees GPUs (nvidia-ml-py), each GPU's utilisation
and memory, and logs them to the run as ``system/...`` (``system/node<k>/...`` when the run spans
several nodes). Steps continue across a resumed run. One sample costs about 6 ms of CPU with a sqlite store
(``benchmarks/system_metrics_cost.py``): 0.06 % of a core at the default 10 s, and no difference in the
training step time that the step-to-step noise would let one see.
"""
from __future__ import annotations

import threading

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor


def start_monitor(tracking_uri: str, run_id: str | None, interval_s: float, *, local_rank: int, node_rank: int,
                  num_nodes: int):
    """Start the monitor of this worker's node when this worker is its first (else None).

    Returns the monitor (call ``.finish()`` when training ends) or None (not the node's first
    worker, no run id, or ``interval_s`` <= 0)."""
    if run_id is None or interval_s <= 0 or local_rank != 0:
        return None

    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, samples_before_logging=1,
                                   resume_logging=True, node_id=f"node{node_rank}" if num_nodes > 1 else None,
                                   tracking_uri=tracking_uri)
    monitor.start()
    return monitor


def stop_monitor(monitor, timeout_s: float = 30.0) -> bool:
    """Stop ``monitor`` and flush its last metrics, waiting at most ``timeout_s`` (an unreachable tracking
    server must not hold the end of training). Returns whether it finished in time."""
    done = threading.Thread(target=monitor.finish, name="system-metrics-stop", daemon=True)
    done.start()
    done.join(timeout_s)
    return not done.is_alive()
