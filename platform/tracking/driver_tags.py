"""Which process drives a run: tags that let a later command tell whether that driver still runs.

``python -m platform.train`` tags its MLflow run with the driver's host, pid and process start time. A
run is *orphaned* when it is RUNNING but that process no longer exists on this host (``kill -9``, a
crashed laptop); a driver on another host cannot be checked from here (``unknown``).
"""
from __future__ import annotations

import os
import socket

import psutil

DRIVER_HOST, DRIVER_PID, DRIVER_STARTED = "platform.driver_host", "platform.driver_pid", "platform.driver_started"

RESUME_COMMAND, END_REASON = "platform.resume_command", "platform.end_reason"



def driver_tags() -> dict[str, str]:
    """Tags that let :func:`driver_state` tell later whether this process still runs."""
    return {DRIVER_HOST: socket.gethostname(), DRIVER_PID: str(os.getpid()),
            DRIVER_STARTED: f"{psutil.Process().create_time():.2f}"}


def driver_state(tags: dict[str, str]) -> str:
    """``alive``, ``gone`` (checked on this host) or ``unknown`` (another host, or no driver tags)."""
    if DRIVER_PID not in tags or tags.get(DRIVER_HOST) != socket.gethostname():
        return "unknown"
    try:
        process = psutil.Process(int(tags[DRIVER_PID]))
        started = float(tags.get(DRIVER_STARTED, "nan"))
        # a reused pid belongs to a process started later
        return "alive" if abs(process.create_time() - started) < 1.0 else "gone"
    except (psutil.NoSuchProcess, ValueError):
        return "gone"
