"""benchmarks/gpu_check.py --smoke: every section's code path on the CPU (the fused kernels in Triton's
interpreter), one table; a failing or late section gives a row and the others still run."""
from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module     # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _rows(table: str) -> list[list[str]]:
    """The data rows of the Markdown table, as lists of cells."""
    lines = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| section")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]


def test_smoke_runs_every_section_and_prints_one_table(tmp_path):
    out = tmp_path / "table.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    table = out.read_text()
    assert table.strip() in proc.stdout and "interpreter (TRITON_INTERPRET=1)" in table
    rows = _rows(table)
    assert not [r for r in rows if "error" in r[-1]], table
    attention = [r for r in rows if r[0] == "a"]
    # 4 cases (encoder / decoder x 4 / 5 levels) x fp32 / bf16 x PyTorch / Triton
    assert len(attention) == 16 and {r[2] for r in attention} == {"pytorch", "triton"}
    for r in attention:
        assert r[3].endswith(" ms"), r
        if r[2] == "triton":
            # the kernels agree with the PyTorch path: fp32 to rounding, bf16 to one bf16 rounding of the output
            diff = float(re.search(r"diff (\S+)", r[-1]).group(1))
            assert diff < (1e-5 if "fp32" in r[1] else 1e-2), r
    steps = [r for r in rows if r[0] == "b"]
    # {Co-Deformable-DETR, Co-DINO} x {fp32, bf16} x {K=0, K=2}, then Co-Deformable-DETR K=2 with msda=pytorch
    assert len(steps) == 10 and all(r[3].endswith(" s/it") and float(r[4]) > 0 for r in steps), table
    assert {r[1].split(" train step")[0] for r in steps} == {"Co-Deformable-DETR R50", "Co-DINO R50"}
    assert sum("x" in r[6] and "vs K=0" in r[6] for r in steps) == 4
    (train,) = [r for r in rows if r[0] == "c"]
    assert "skipped in --smoke" in train[-1] and "validate" in train[-1]


def test_a_failing_or_late_section_is_a_row(tmp_path):
    gpu_check = _load_script()
    args = argparse.Namespace(smoke=True)
    rows = gpu_check.run_section_process(args, "no_such_section", "x", time.time() + 60)
    assert len(rows) == 1 and rows[0].section == "x" and "exited 2" in rows[0].note
    rows = gpu_check.run_section_process(args, "steps", "b", time.time() - 1)
    assert len(rows) == 10 and all(r.note == "skipped: time budget" for r in rows)
