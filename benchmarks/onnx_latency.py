"""CPU latency of the deployable model: onnxruntime against PyTorch, for the tiny and the R50 Co-DETR.

    python benchmarks/onnx_latency.py                                # tiny 128x128 + R50 480x640, ~10 min on 2 cores
    python benchmarks/onnx_latency.py --configs tiny --runs 5
    python benchmarks/onnx_latency.py --r50-size 800x1088 --threads 2      # default: 1 thread each

For each config: the model is built with random weights (seed 0; R50 with
``model.backbone.pretrained=false``, 80 classes), made deployable (``model.for_inference()``: no
auxiliary heads), exported by ``platform.deploy.onnx`` for the given input size, and run on one
image (batch 1) by both: PyTorch through the model's public forward under ``no_grad``
(``torch.set_num_threads(--threads)``) and an onnxruntime CPU session (``intra_op_num_threads`` =
``--threads``, all graph optimisations, no spin-waiting between runs). The two alternate run by run after ``--warmup`` runs each, so the
load of a shared machine falls on both alike; latency = median of ``--runs`` runs in wall time, and in
process CPU time (all threads: what other users of the machine do not inflate). Ratio = onnxruntime /
PyTorch (below 1: onnxruntime is faster). The parity columns are the largest absolute differences of
the two on that input. Run from the repository root.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CONFIGS = {
    "tiny": ("codetr_tiny.yaml", [], 5),
    "r50": ("codetr_r50_coco.yaml", ["model.backbone.pretrained=false"], 80),
}


def _size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def bench(name: str, size: tuple[int, int], threads: int, warmup: int, runs: int) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch

    from codetr import build_model, load_config
    from codetr.inference import Predictor
    from platform.deploy.onnx import export_onnx

    config, overrides, num_classes = CONFIGS[name]
    cfg = load_config(REPO / "experiments" / config, overrides)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=num_classes).for_inference()
    predictor = Predictor(model, cfg, [str(i) for i in range(num_classes)])
    height, width = size
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = export_onnx(predictor, Path(tmp) / f"{name}.onnx", height, width)
        export_s = time.perf_counter() - start
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no spin-waiting after a run: its threads would take the cores from the PyTorch run that follows
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(1))
        feed = {"images": image.numpy()}

        def run_torch():
            with torch.no_grad():
                return model([image[0]])[0]

        def run_ort():
            return session.run(["boxes", "scores", "labels"], feed)

        times = {"torch": [], "ort": []}
        cpu = {"torch": [], "ort": []}
        for i in range(warmup + runs):
            for key, fn in (("torch", run_torch), ("ort", run_ort)):
                w, c = time.perf_counter(), time.process_time()
                out = fn()
                if i >= warmup:
                    times[key].append(time.perf_counter() - w)
                    cpu[key].append(time.process_time() - c)
                if key == "torch":
                    ref = out
                else:
                    boxes_diff = float(np.abs(out[0][0] - ref["boxes"].numpy()).max())
                    scores_diff = float(np.abs(out[1][0] - ref["scores"].numpy()).max())
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {"name": name, "size": f"{height}x{width}", "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "export_s": export_s, "torch_ms": 1e3 * med["torch"], "ort_ms": 1e3 * med["ort"],
            "torch_cpu_ms": 1e3 * med_cpu["torch"], "ort_cpu_ms": 1e3 * med_cpu["ort"],
            "boxes_diff": boxes_diff, "scores_diff": scores_diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "r50"], choices=sorted(CONFIGS))
    parser.add_argument("--tiny-size", type=_size, default=(128, 128), help="HxW (default 128x128)")
    parser.add_argument("--r50-size", type=_size, default=(480, 640), help="HxW (default 480x640, a COCO image)")
    # one thread by default: on a shared machine a multi-threaded run waits in every parallel region for its
    # slowest thread, i.e. it measures the other users (seen here: the tiny model at 47 ms or 1.2 s per image)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    rows = [bench(name, args.tiny_size if name == "tiny" else args.r50_size, args.threads, args.warmup, args.runs)
            for name in args.configs]
    print(f"\nDeployable Co-DETR, batch 1, {args.threads} thread(s), median of {args.runs} runs "
          f"(torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)\n")
    print("| model | input | params | PyTorch ms | onnxruntime ms | ratio | PyTorch CPU ms | onnxruntime CPU ms "
          "| CPU ratio | max abs diff boxes (px) | scores | export s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['size']} | {r['params_m']:.1f} M | {r['torch_ms']:.1f} | {r['ort_ms']:.1f} | "
              f"{r['ort_ms'] / r['torch_ms']:.2f} | {r['torch_cpu_ms']:.1f} | {r['ort_cpu_ms']:.1f} | "
              f"{r['ort_cpu_ms'] / r['torch_cpu_ms']:.2f} | {r['boxes_diff']:.1e} | {r['scores_diff']:.1e} | "
              f"{r['export_s']:.0f} |")


if __name__ == "__main__":
    main()
