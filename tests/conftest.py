"""Shared fixtures of the platform tests. Run the suite from the repository root as ``python -m pytest``."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Plain `pytest` imports the stdlib `platform` before the repository is on sys.path;
# `python -m pytest` from the root gets our package (which re-exports the stdlib API).
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The fused deformable attention's kernels run in Triton's interpreter in the tests (on the CPU:
# tests/codetr/ops/test_ms_deform_attn_triton.py). The interpreter must be chosen before triton is
# first imported (triton.language decorates its own helpers then), so here, before any test module
# imports codetr. TRITON_INTERPRET=0 in the shell keeps the compiled kernels: those tests then run on the GPU.
os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def clean_env(monkeypatch):
    """No Ray cluster address and no MLflow tracking URI leak in from the shell."""
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    return os.environ

