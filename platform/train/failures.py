"""Why a run failed, in one line; and what a failed resume must not change.

Ray Train hands the driver a ``WorkerGroupError`` (one exception per failed worker, each wrapping the
worker's own exception with its traceback) or a ``ControllerError`` (e.g. the workers could not be
placed in time). :func:`describe_failure` digs out the root cause and says it on one line: a
:class:`codetr.errors.CodetrError` (bad config, annotation, image, checkpoint, non-finite loss) by
its message, a dead worker process by its rank, a placement timeout by the resources it misses.
The full traceback goes to a file next to the run's checkpoints (and to the terminal with
``--verbose``).
"""
from __future__ import annotations

import datetime
import traceback
from pathlib import Path

import ray

from codetr.errors import CodetrError

# Ray Train: how long each attempt to place the worker group waits, and how many attempts a run
# gets, together bound the wait for capacity (platform.resource_wait_s).
START_ATTEMPTS = 3
WORKER_GROUP_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


def first_line(error: BaseException, limit: int = 500) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else ""
    return (line[:limit] + " ...") if len(line) > limit else line


def worker_errors(error: BaseException) -> dict[int, BaseException]:
    """Rank -> the worker's own exception, for a Ray Train ``WorkerGroupError`` ({} otherwise)."""
    failures = getattr(error, "worker_failures", None) or {}
    return {rank: getattr(e, "_base_exc", e) for rank, e in failures.items()}


def root_cause(error: BaseException) -> tuple[BaseException, int | None]:
    """``(exception, rank)``: a named error from any worker first, else the lowest rank's error."""
    found = worker_errors(error)
    if found:
        named = [(r, e) for r, e in sorted(found.items()) if isinstance(e, CodetrError)]
        rank, cause = named[0] if named else sorted(found.items())[0]
        return cause, rank
    controller = getattr(error, "controller_failure", None)
    if controller is not None:
        return controller, None
    return error, None


def needed_resources(num_workers: int, resources_per_worker: dict[str, float]) -> str:
    per_worker = ", ".join(f"{k}: {v:g}" for k, v in resources_per_worker.items())
    return f"{num_workers} worker(s) x {{{per_worker}}}"


def cluster_capacity() -> str:
    """What the connected Ray cluster has: total and free resources, alive nodes."""
    try:
        total, free = ray.cluster_resources(), ray.available_resources()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    except Exception as e:   # the cluster itself is gone
        return f"the cluster cannot be asked ({first_line(e)})"
    shown = ", ".join(f"{k} {free.get(k, 0):g} free of {total[k]:g}" for k in sorted(total)
                      if k in ("CPU", "GPU") or k.startswith("accelerator"))
    return f"the cluster has {shown or 'no CPU / GPU'} on {nodes} alive node(s)"


def describe_failure(error: BaseException, *, num_workers: int, resources_per_worker: dict[str, float],
                     resource_wait_s: float) -> str:
    """One line for a person: what failed and where."""
    cause, rank = root_cause(error)
    name = type(cause).__name__
    if name in ("WorkerGroupStartupTimeoutError", "WorkerGroupStartupFailedError"):
        return (f"no capacity for {needed_resources(num_workers, resources_per_worker)} within "
                f"platform.resource_wait_s={resource_wait_s:g} s: {cluster_capacity()}")
    where = f" (worker rank {rank})" if rank is not None else ""
    if isinstance(cause, CodetrError):
        return f"{name}{where}: {first_line(cause, 2000)}"
    if name in ("ActorDiedError", "RayActorError", "ActorUnavailableError", "NodeDiedError"):
        return f"worker rank {rank} died ({name}: {first_line(cause, 300)})" if rank is not None else \
            f"{name}: {first_line(cause, 300)}"
    return f"{name}{where}: {first_line(cause)}"


def write_traceback(error: BaseException, folder: str | Path) -> Path | None:
    """The full traceback (the driver's and each worker's) as ``folder/error-<time>.txt``; None if unwritable."""
    parts = ["".join(traceback.format_exception(error))]
    for rank, failure in sorted((getattr(error, "worker_failures", None) or {}).items()):
        parts.append(f"\n--- worker rank {rank} ---\n{getattr(failure, '_traceback_str', None) or failure}\n")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        path = Path(folder) / f"error-{stamp}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(parts))
        return path
    except OSError:
        return None


def previous_end_state(client, run_id: str) -> tuple[str, int | None]:
    """``(status, end_time)`` of an existing MLflow run, before a resume reopens it."""
    info = client.get_run(run_id).info
    return info.status, info.end_time


def restore_end_state(client, run_id: str, status: str, end_time: int | None, error_line: str) -> str:
    """After a resume that failed without training a step: put back the run's recorded end state.

    A run that had ended (FINISHED / FAILED / KILLED) keeps it; one that was RUNNING (its driver was
    lost) becomes FAILED, since nothing drives it any more. The failure is kept as a tag. Returns
    the status the run now has."""
    client.set_tag(run_id, "platform.failed_resume", error_line[:5000])
    restored = status if status in ("FINISHED", "FAILED", "KILLED") else "FAILED"
    client.set_terminated(run_id, status=restored, end_time=end_time if restored == status else None)
    return restored
