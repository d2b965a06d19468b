"""Where a training iteration's wall time goes: waiting for data, forward, backward, optimizer.

The loop times each phase of every iteration with :class:`PhaseClock` and logs the window means
as ``time/<phase>_s`` next to ``train/iter_time``:

- ``time/data_s``: waiting for the loader's next batch (in-process loading: decoding and augmenting);
- ``time/forward_s``: the model's forward pass and losses (matching and assignment included);
- ``time/backward_s``: the backward pass; under DDP it includes the gradient all-reduce, which
  overlaps the backward computation bucket by bucket (the part not hidden is what it adds);
- ``time/optimizer_s``: gradient clipping, the non-finite guard and ``optimizer.step()``;
- ``time/log_s``: the loop's own logging hook (MLflow calls are spooled, so this stays small).

The epoch boundary adds ``time/eval_s`` and ``time/checkpoint_s`` (seconds of the last evaluation
and checkpoint write). Times are host wall-clock: on CUDA, kernels run asynchronously, so a phase
shows where the host waited (the synchronisation points), not where the GPU computed.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

PHASES = ("data", "forward", "backward", "optimizer", "log")


class PhaseClock:
    """Sums of wall-clock seconds per phase since the last :meth:`flush`."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[phase] = self.totals.get(phase, 0.0) + time.perf_counter() - start

    def flush(self, steps: int) -> dict[str, float]:
        """``time/<phase>_s``: seconds per iteration over the last ``steps`` iterations; then reset."""
        out = {f"time/{phase}_s": seconds / max(steps, 1) for phase, seconds in self.totals.items()}
        self.totals = {}
        return out


def no_clock(phase: str) -> contextlib.AbstractContextManager:
    """The clock of an untimed step."""
    return contextlib.nullcontext()
