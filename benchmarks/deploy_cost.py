"""What a deployer asks first, for the deployed model of each query head: parameters, GFLOPs, latency and
images/s, PyTorch eager against onnxruntime, side by side in one run.

    python benchmarks/deploy_cost.py                        # tiny (128x128) and R50 (384x512), both heads
    python benchmarks/deploy_cost.py --configs tiny --runs 10
    python benchmarks/deploy_cost.py --smoke                # tiny at 64x64, 1 run: the code path (tests)

For each model: random weights (seed 0; R50 with ``model.backbone.pretrained=false``, 80 classes), made
deployable (``model.for_inference()``: no auxiliary heads), exported by ``platform.deploy.onnx`` (any
size; traced at the benchmark's size) and run on the same image by both:

- GFLOPs of one image (batch 1): ``torch.utils.flop_counter.FlopCounterMode`` over the eager forward
  (convolutions, matrix products, attention), plus the deformable attention's sampling, which it does
  not see (``grid_sample``), by formula: 10 FLOPs per query x level x point x channel (bilinear
  interpolation, 4 multiply-adds, and the attention weight, 1 multiply-add); 1 multiply-add = 2 FLOPs as
  FlopCounterMode counts. The R50 rows also give the K = 0 model (built with ``aux_heads: []``): the
  deployed Co-DETR is exactly a Deformable-DETR / DINO, same parameters and FLOPs.
- latency: median wall time of ``--runs`` batch-1 runs after ``--warmup``, PyTorch (the model's public
  forward under ``inference_mode``, with its post-processing: Co-DINO's soft-NMS) and onnxruntime CPU (the
  session plus :func:`platform.deploy.postprocess.postprocess`), alternating run by run so that the load
  of a shared machine falls on both alike; ``--threads`` each (default 1: a shared machine's other users
  inflate multi-threaded runs).
- images/s: ``--batch`` images per run (one forward of the batch), median of ``--runs``.

On CUDA (when present) the PyTorch rows also run in fp16 and bf16 autocast, and onnxruntime's CUDA
provider when installed. Run from the repository root.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from codetr import build_model, load_config  # noqa: E402
from codetr.inference import Predictor  # noqa: E402
from codetr.models.deformable_attention import MultiScaleDeformableAttention  # noqa: E402
from platform.deploy.onnx import export_onnx  # noqa: E402
from platform.deploy.postprocess import postprocess  # noqa: E402

R50 = ["model.backbone.pretrained=false"]
MODELS = {   # name -> (config, overrides, classes)
    "tiny Co-Deformable-DETR": ("codetr_tiny.yaml", [], 5),
    "tiny Co-DINO": ("codino_tiny.yaml", [], 5),
    "R50 Co-Deformable-DETR": ("codetr_r50_coco.yaml", R50, 80),
    "R50 Co-DINO": ("codino_r50_coco.yaml", R50, 80),
}


def size_arg(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def sampling_flops(model: torch.nn.Module, image: torch.Tensor) -> int:
    """The deformable attention's sampling FLOPs of one forward, by formula (see the module docstring)."""
    total = 0

    def hook(module, args, _output):
        nonlocal total
        query = args[0]                                            # [bs, num_queries, embed_dims]
        total += 10 * query.shape[0] * query.shape[1] * module.num_levels * module.num_points * module.embed_dims

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, MultiScaleDeformableAttention)]
    try:
        with torch.inference_mode():
            model([image])
    finally:
        for h in handles:
            h.remove()
    return total


def count_flops(model: torch.nn.Module, image: torch.Tensor) -> tuple[float, float]:
    """(GFLOPs FlopCounterMode sees, GFLOPs of the deformable sampling) of one image."""
    # FlopCounterMode's module tracker hooks tensors that require grad: views of parameters made under no_grad
    # have no grad function, so the (inference-only) parameters stop requiring grad
    model.requires_grad_(False)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model([image])
    return counter.get_total_flops() / 1e9, sampling_flops(model, image) / 1e9


def median_time(fn, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def session_of(path: Path, threads: int, provider: str = "CPUExecutionProvider") -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=[provider])


def bench(name: str, size: tuple[int, int], args) -> list[dict]:
    config, overrides, num_classes = MODELS[name]
    cfg = load_config(REPO / "experiments" / config, overrides)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=num_classes).for_inference().eval()
    predictor = Predictor(model, cfg, [str(i) for i in range(num_classes)])
    height, width = size
    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, height, width, generator=g)
    batch = torch.rand(args.batch, 3, height, width, generator=g)
    params = sum(p.numel() for p in model.parameters())
    gflops, sampling = count_flops(model, image)
    row = {"model": name, "size": f"{height}x{width}", "params_m": params / 1e6, "gflops": gflops + sampling,
           "sampling_gflops": sampling}
    if name.startswith("R50") and not args.smoke:
        k0_cfg = load_config(REPO / "experiments" / config, overrides + ["model.aux_heads=[]"])
        torch.manual_seed(0)
        k0 = build_model(k0_cfg, num_classes=num_classes).eval()
        k0_gflops, k0_sampling = count_flops(k0, image)
        row["k0_params_m"] = sum(p.numel() for p in k0.parameters()) / 1e6
        row["k0_gflops"] = k0_gflops + k0_sampling
        train = build_model(cfg, num_classes=num_classes)
        row["train_params_m"] = sum(p.numel() for p in train.parameters()) / 1e6
        del train
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = export_onnx(predictor, Path(tmp) / "model.onnx", height, width)
        row["export_s"] = time.perf_counter() - start
        spec = json.loads(session_of(path, 1).get_modelmeta().custom_metadata_map["postprocess"])
        backends = [("PyTorch eager", "cpu", None), ("onnxruntime CPU", "CPUExecutionProvider", None)]
        if torch.cuda.is_available():
            backends += [("PyTorch eager CUDA fp32", "cuda", None), ("PyTorch eager CUDA fp16", "cuda", torch.float16),
                         ("PyTorch eager CUDA bf16", "cuda", torch.bfloat16)]
            if "CUDAExecutionProvider" in ort.get_available_providers():
                backends.append(("onnxruntime CUDA", "CUDAExecutionProvider", None))
        for backend, device, dtype in backends:
            if backend.startswith("PyTorch"):
                model.to(device)
                one, many = image.to(device), [b.to(device) for b in batch]

                def run(images):
                    with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=dtype,
                                                                  enabled=dtype is not None):
                        out = model(images)
                    if device != "cpu":
                        torch.cuda.synchronize()
                    return out

                latency = median_time(lambda: run([one]), args.warmup, args.runs)
                throughput = median_time(lambda: run(many), min(args.warmup, 1), args.runs)
            else:
                session = session_of(path, args.threads, device)
                one, many = image[None].numpy(), batch.numpy()
                latency = median_time(lambda: postprocess(*session.run(["boxes", "scores", "labels"], {"images": one}), spec), args.warmup,
                                      args.runs)
                throughput = median_time(lambda: postprocess(*session.run(["boxes", "scores", "labels"], {"images": many}), spec),
                                         min(args.warmup, 1), args.runs)
            rows.append({**row, "backend": backend, "latency_ms": 1e3 * statistics.median(latency),
                         "images_per_s": args.batch / statistics.median(throughput)})
        model.to("cpu")
    return rows


def table(rows: list[dict], args) -> str:
    lines = [f"Deployed models (no auxiliary heads), {args.threads} thread(s), latency at batch 1 and images/s at "
             f"batch {args.batch}, median of {args.runs} runs (torch {torch.__version__}, onnxruntime "
             f"{ort.__version__}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)", "",
             "| model | input | params | GFLOPs (sampling) | backend | latency ms | images/s | vs PyTorch eager |",
             "|---|---|---|---|---|---|---|---|"]
    eager = {r["model"]: r["latency_ms"] for r in rows if r["backend"] == "PyTorch eager"}
    for r in rows:
        lines.append(f"| {r['model']} | {r['size']} | {r['params_m']:.2f} M | {r['gflops']:.3g} "
                     f"({r['sampling_gflops']:.3g}) | {r['backend']} | {r['latency_ms']:.1f} | {r['images_per_s']:.2f} | "
                     f"{r['latency_ms'] / eager[r['model']]:.2f}x |")
    k0 = {r["model"]: r for r in rows if "k0_gflops" in r}
    if k0:
        lines += ["", "| model | input | deployed params | deployed GFLOPs | K = 0 params | K = 0 GFLOPs | training "
                  "model params (K = 2) |", "|---|---|---|---|---|---|---|"]
        for r in k0.values():
            lines.append(f"| {r['model']} | {r['size']} | {r['params_m']:.2f} M | {r['gflops']:.1f} | "
                         f"{r['k0_params_m']:.2f} M | {r['k0_gflops']:.1f} | {r['train_params_m']:.2f} M |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "r50"], choices=["tiny", "r50"])
    parser.add_argument("--tiny-size", type=size_arg, default=(128, 128), help="HxW (default 128x128)")
    parser.add_argument("--r50-size", type=size_arg, default=(384, 512), help="HxW (default 384x512)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2, help="images per run of the images/s column")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny models at 64x64, 1 run, no warm-up")
    args = parser.parse_args(argv)
    if args.smoke:
        args.configs, args.tiny_size, args.runs, args.warmup = ["tiny"], (64, 64), 1, 0
    return args


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in MODELS:
        family = "tiny" if name.startswith("tiny") else "r50"
        if family in args.configs:
            rows += bench(name, args.tiny_size if family == "tiny" else args.r50_size, args)
    text = table(rows, args)
    print(text)
    return text


if __name__ == "__main__":
    main()
