"""The loop's phase clock: every iteration's wall time is split into data / forward / backward /
optimizer / log, and the phases add up to the iteration time."""
from __future__ import annotations

import time

import pytest
import torch

from codetr.engine.loop import accumulated_step
from codetr.engine.phases import PhaseClock


def test_phase_clock_sums_per_phase_and_resets():
    clock = PhaseClock()
    for _ in range(2):
        with clock("data"):
            time.sleep(0.01)
    with clock("forward"):
        pass
    out = clock.flush(steps=2)
    assert set(out) == {"time/data_s", "time/forward_s"}
    assert 0.009 <= out["time/data_s"] < 0.5 and out["time/forward_s"] < out["time/data_s"]
    assert clock.flush(steps=1) == {}


class _Sleepy(torch.nn.Module):
    """A model whose forward takes 20 ms and whose backward takes 40 ms (a hook on its output)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, images, targets, return_unweighted=False):
        time.sleep(0.02)
        out = self.w * images[0].sum()
        out.register_hook(lambda g: time.sleep(0.04) or g)
        return {"loss": out}, {"loss": out}


def test_accumulated_step_times_forward_backward_and_optimizer_apart():
    model = _Sleepy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    clock = PhaseClock()
    began = time.perf_counter()
    accumulated_step(model, [([torch.ones(2)], [{}])] * 2, optimizer, clip_grad_norm=0.1, clock=clock)
    total = time.perf_counter() - began
    out = clock.flush(steps=1)
    assert set(out) == {"time/forward_s", "time/backward_s", "time/optimizer_s"}
    assert out["time/forward_s"] == pytest.approx(0.04, abs=0.03)     # two micro-batches of 20 ms
    assert out["time/backward_s"] == pytest.approx(0.08, abs=0.04)    # two of 40 ms
    assert sum(out.values()) <= total
