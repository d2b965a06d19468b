"""Compile the fused deformable-attention kernels for a GPU architecture without a GPU, print a JSON report.

    TRITON_INTERPRET=0 python tests/codetr/ops/compile_kernels.py 90

Run by tests/codetr/ops/test_ms_deform_attn_triton.py in its own process (that test session runs Triton's
interpreter, which cannot compile). For each case: the 16-byte vector loads / atomics in the PTX and
ptxas's register and spill counts of the forward and the backward kernel.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from codetr.ops.ms_deform_attn_triton import (BLOCK_Q_BACKWARD, BLOCK_Q_FORWARD, NUM_WARPS,  # noqa: E402
                                              _backward_kernel, _forward_kernel)

# (value dtype, location / weight dtype, levels, heads, head_dim): R50 fp32, R50 under bf16 autocast
CASES = [("fp32", "fp32", 4, 8, 32), ("bf16", "fp32", 5, 8, 32)]
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


def _compile(fn, signature: dict, constexprs: dict, arch: int):
    aligned = {(i,): [["tt.divisibility", 16]] for i, kind in enumerate(signature.values()) if kind.startswith("*")}
    signature = {**signature, **{name: "constexpr" for name in constexprs}}
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=aligned),
                          target=GPUTarget("cuda", arch, 32), options={"num_warps": NUM_WARPS})


def _report(kernel, arch: int) -> dict:
    ptx = kernel.asm["ptx"]
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    suffix = "a" if arch >= 90 else ""
    info = subprocess.run([str(PTXAS), "-v", f"--gpu-name=sm_{arch}{suffix}", f.name, "-o", os.devnull],
                          capture_output=True, text=True, check=True).stderr
    os.unlink(f.name)
    return {"registers": int(re.search(r"Used (\d+) registers", info).group(1)),
            "spill_bytes": int(re.search(r"(\d+) bytes spill stores", info).group(1)),
            "vector_loads": len(re.findall(r"ld\.global(?:\.\w+)*\.v4", ptx)),
            "atomics": len(re.findall(r"\b(?:atom|red)\.global", ptx))}


def main(arch: int) -> None:
    out = []
    for value_t, point_t, levels, heads, head_dim in CASES:
        acc = tl.float32
        constexprs = dict(NUM_HEADS=heads, HEAD_DIM=head_dim, NUM_LEVELS=levels, NUM_POINTS=4,
                          BLOCK_D=triton.next_power_of_2(head_dim), ACC=acc)
        common = {"value_ptr": f"*{value_t}", "shapes_ptr": "*i32", "starts_ptr": "*i32",
                  "loc_ptr": f"*{point_t}", "weight_ptr": f"*{point_t}"}
        forward = _compile(_forward_kernel, {**common, "out_ptr": f"*{value_t}", "num_keys": "i32",
                                             "num_queries": "i32"},
                           {**constexprs, "BLOCK_Q": BLOCK_Q_FORWARD}, arch)
        backward = _compile(_backward_kernel, {**common, "grad_out_ptr": f"*{value_t}", "grad_value_ptr": "*fp32",
                                               "grad_loc_ptr": f"*{point_t}", "grad_weight_ptr": f"*{point_t}",
                                               "num_keys": "i32", "num_queries": "i32"},
                            {**constexprs, "BLOCK_Q": BLOCK_Q_BACKWARD}, arch)
        out.append({"case": f"{value_t} value, {point_t} points, {levels} levels", "arch": arch,
                    "forward": _report(forward, arch), "backward": _report(backward, arch)})
    print(json.dumps(out))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 90)
