"""The one-shot GPU check: everything a GPU owner needs to know the first time one is available, as one table.

    python benchmarks/gpu_check.py [--out table.md]          # one GPU, under 8 minutes
    python benchmarks/gpu_check.py --smoke [--smoke-train]   # the same code paths on the CPU in seconds

Three sections, each in its own process (a crash, a CUDA error or a hang of one leaves the others
running) under one time budget (``--budget``, 420 s by default; a section out of time ends with a
"time budget" row, the rows it finished are kept):

(a) attention: the multi-scale deformable attention, forward + backward, the PyTorch path
    (``grid_sample``) against the fused Triton kernels, at R50 shapes of a batch of 2 images padded
    to 800 x 1333 (256 channels, 8 heads, 4 points): the encoder (every token a query; 4 levels,
    strides 8-64, as Co-Deformable-DETR; 5 levels, strides 4-64, as Co-DINO) and the decoder (300 /
    900 queries), fp32 and bf16 (autocast: value bf16, locations and weights fp32). Time = median of
    the timed iterations; peak = the most memory allocated during one forward + backward beyond its
    inputs; diff = largest |Triton - PyTorch| over the output and the three gradients, relative to
    the largest |PyTorch| value.
(b) steps: training steps (forward, backward, clipping, AdamW) of Co-Deformable-DETR R50
    (experiments/codetr_r50_coco.yaml) and Co-DINO R50 (experiments/codino_r50_coco.yaml) with random
    weights, batch 2 (800 x 1333 and 800 x 1066, random boxes), fp32 and bf16 (``train.amp``), K = 0
    (``model.aux_heads=[]``) and K = 2 (the configs' heads); deformable attention ``auto`` (Triton on
    CUDA), then the K = 2 rows again with ``model.msda_impl=pytorch`` while time is left. Seconds per
    iteration = median of the timed steps after the warm-up; peak = torch.cuda.max_memory_allocated
    over all steps (model, optimizer state, activations).
(c) train: ``python -m platform.train`` of Co-Deformable-DETR R50 on the synthetic data, one GPU
    worker, 50 iterations of 2 images (shorter side 800, longer at most 1333), evaluation and a
    checkpoint at the end; wall time of the whole command (Ray and MLflow start-up, data generation,
    model build included) and the run's own images/s (its last progress line).

``--smoke``: tiny shapes and models, 2 iterations, on the CPU when there is no GPU; the Triton rows run
in Triton's interpreter (``TRITON_INTERPRET=1``, set here before triton is imported); section (c)
only validates its config unless ``--smoke-train`` (a platform.train run takes ~1 min on a CPU).
Run from the repository root.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# --smoke without a GPU: Triton's interpreter for the fused kernels. It must be chosen before triton
# is first imported (codetr.ops imports it), hence before the codetr imports below.
if "--smoke" in sys.argv and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from codetr import build_model, load_config  # noqa: E402
from codetr.engine import build_optimizer, train_step  # noqa: E402
from codetr.ops import ms_deform_attn_dispatch as msda  # noqa: E402

SECTIONS = ("attention", "steps", "train")
CONFIGS = {"Co-Deformable-DETR R50": "experiments/codetr_r50_coco.yaml",
           "Co-DINO R50": "experiments/codino_r50_coco.yaml"}
ROW_PREFIX = "ROW "
DEFAULT_BUDGET_S = 420.0          # under 8 minutes with start-up, the last section's stop and the table
ATTENTION_CAP_S = 100.0           # at most this long for section (a)
TRAIN_RESERVE_S = 170.0           # kept for section (c) while (b) runs
TRAIN_ITERS = 50

# Section (b) in --smoke: the same configs, shrunk (a frozen ResNet-18, 32 channels, one layer each, few queries)
SMOKE_MODEL = ["model.backbone.depth=18", "model.backbone.frozen_stages=4", "model.embed_dims=32",
               "model.num_heads=2", "model.ffn_dims=64", "model.num_encoder_layers=1", "model.num_decoder_layers=1",
               "model.num_queries=20", "model.max_pos_queries=10", "model.dn.num_queries=10",
               "model.aux.faster_rcnn.fc_dims=64", "model.aux.faster_rcnn.roi_batch_size=32",
               "model.aux.faster_rcnn.rpn_post_nms_top_n=50"]


@dataclass
class Row:
    section: str
    case: str
    variant: str = ""
    time: str = ""
    rate: str = ""
    peak_mb: str = ""
    ratio: str = ""
    note: str = ""


def emit(row: Row) -> None:
    """A section process hands a finished row to the driver (one JSON line on stdout)."""
    print(ROW_PREFIX + json.dumps(asdict(row)), flush=True)


def error_note(error: BaseException) -> str:
    traceback.print_exc(file=sys.stderr)
    text = " ".join(str(error).split())
    return f"error: {type(error).__name__}: {text[:200]}"


# ----------------------------------------------------------------------------- shared


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(dev: torch.device) -> float:
    """Reset the peak counter; returns the memory allocated now (MiB; 0 on the CPU)."""
    if dev.type != "cuda":
        return 0.0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated() / 2**20


def peak_mb(dev: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None


def fmt_mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def level_shapes(height: int, width: int, num_levels: int) -> list[tuple[int, int]]:
    """(h, w) per level of a padded image: strides 8-64 (4 levels) or 4-64 (5 levels), halving and rounding up."""
    shapes, h, w = [], height, width
    for stride in (2, 4, 8, 16, 32, 64):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        if stride >= 2 ** (7 - num_levels):
            shapes.append((h, w))
    return shapes


# ----------------------------------------------------------------------------- (a) attention


def attention_inputs(shapes, num_queries, bs, heads, head_dim, points, dtype, dev, seed=0):
    """value, locations (around uniform reference points, some outside), weights, output gradient."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    num_keys = sum(h * w for h, w in shapes)
    levels = len(shapes)
    value = torch.randn(bs, num_keys, heads, head_dim, generator=g).to(dev, dtype).requires_grad_()
    ref = torch.rand(bs, num_queries, 1, 1, 1, 2, generator=g)
    offsets = torch.randn(bs, num_queries, heads, levels, points, 2, generator=g) * 0.03
    loc = (ref + offsets).to(dev).requires_grad_()
    logits = torch.randn(bs, num_queries, heads, levels * points, generator=g)
    weights = logits.softmax(-1).view(bs, num_queries, heads, levels, points).to(dev).requires_grad_()
    grad_out = torch.randn(bs, num_queries, heads * head_dim, generator=g).to(dev)
    return value, loc, weights, grad_out


def attention_step(impl: str, shapes, inputs, bf16: bool) -> list[torch.Tensor]:
    """One forward + backward; returns [output, d value, d locations, d weights] (detached)."""
    value, loc, weights, grad_out = inputs
    for t in (value, loc, weights):
        t.grad = None
    with torch.autocast(value.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = msda.ms_deform_attn(value, shapes, loc, weights, impl=impl)
    out.backward(grad_out.to(out.dtype))
    return [out.detach(), value.grad, loc.grad, weights.grad]


def run_attention(args: argparse.Namespace, deadline: float) -> None:
    dev = device()
    if args.smoke:   # Triton's interpreter runs every program in numpy: a handful of programs only
        height, width, bs, heads, head_dim, points, warmup, iters = 16, 24, 2, 1, 4, 1, 0, 1
        decoder_queries = {4: 3, 5: 3}
    else:
        height, width, bs, heads, head_dim, points, warmup, iters = 800, 1333, 2, 8, 32, 4, 3, 10
        decoder_queries = {4: 300, 5: 900}
    triton_reason = None
    if msda.TRITON_IMPORT_ERROR is not None:
        triton_reason = f"skipped: triton does not import ({msda.TRITON_IMPORT_ERROR})"
    elif dev.type != "cuda" and not msda.INTERPRETED:
        triton_reason = "skipped: no CUDA device and TRITON_INTERPRET is not 1 (the kernels need one or the other)"
    cases = []
    for levels in (4, 5):
        shapes = level_shapes(height, width, levels)
        tokens = sum(h * w for h, w in shapes)
        model = "Co-Deformable-DETR" if levels == 4 else "Co-DINO"
        cases.append((f"encoder, {levels} levels ({model}), {tokens} queries", shapes, tokens))
        cases.append((f"decoder, {levels} levels, {decoder_queries[levels]} queries", shapes, decoder_queries[levels]))
    for name, shapes, num_queries in cases:
        for bf16 in (False, True):
            case = f"{name}, {'bf16' if bf16 else 'fp32'}"
            if time.time() > deadline:
                emit(Row("a", case, note="skipped: time budget"))
                continue
            results = {}
            for impl in ("pytorch", "triton"):
                if impl == "triton" and triton_reason:
                    emit(Row("a", case, impl, note=triton_reason))
                    continue
                try:
                    inputs = attention_inputs(shapes, num_queries, bs, heads, head_dim, points,
                                              torch.bfloat16 if bf16 else torch.float32, dev)
                    for _ in range(warmup):
                        attention_step(impl, shapes, inputs, bf16)
                    times, peaks = [], []
                    for _ in range(iters):
                        base = reset_peak(dev)
                        start = time.perf_counter()
                        tensors = attention_step(impl, shapes, inputs, bf16)
                        sync(dev)
                        times.append(time.perf_counter() - start)
                        peak = peak_mb(dev)
                        peaks.append(None if peak is None else peak - base)
                    results[impl] = (statistics.median(times), peaks[-1], tensors)
                except Exception as e:  # noqa: BLE001 - one failed measurement is a row, the rest still runs
                    emit(Row("a", case, impl, note=error_note(e)))
            for impl, (seconds, peak, tensors) in results.items():
                ratio, note = "", ""
                if impl == "triton" and "pytorch" in results:
                    base_s, base_peak, ref = results["pytorch"]
                    ratio = f"x{base_s / seconds:.2f} speed"
                    if peak and base_peak:
                        ratio += f", x{peak / base_peak:.2f} memory"
                    diff = max(float((t.float() - r.float()).abs().max() / r.float().abs().max().clamp_min(1e-30))
                               for t, r in zip(tensors, ref))
                    note = f"diff {diff:.1e}" + (" (interpreter)" if msda.INTERPRETED else "")
                emit(Row("a", case, impl, f"{seconds * 1e3:.2f} ms", "", fmt_mb(peak), ratio, note))


# ----------------------------------------------------------------------------- (b) steps


def random_batch(sizes: list[tuple[int, int]], num_classes: int, dev: torch.device, seed: int = 0):
    """Images [3, H, W] in [0, 1] and 4..12 random boxes_xyxy (pixels) with labels per image."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for i, (h, w) in enumerate(sizes):
        images.append(torch.rand(3, h, w, generator=g).to(dev))
        n = 4 + (5 * i) % 9
        wh = torch.rand(n, 2, generator=g) * torch.tensor([w, h]) * 0.4 + 8
        xy = torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) - wh)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(dev),
                        "labels": torch.randint(0, num_classes, (n,), generator=g).to(dev)})
    return images, targets


def step_variants(smoke: bool) -> list[tuple[str, str, list[str], bool]]:
    """(model, variant, overrides, amp) in the order they run: the auto rows first, then PyTorch-path ones
    (K = 2; with ``smoke`` only the first model's: on the CPU auto is the PyTorch path already)."""
    out = []
    for impl in ("auto", "pytorch"):
        for model in CONFIGS:
            for amp in (False, True):
                for k in (0, 2):
                    if impl == "pytorch" and (k == 0 or (smoke and model != next(iter(CONFIGS)))):
                        continue
                    overrides = ["model.backbone.pretrained=false", f"model.msda_impl={impl}"]
                    overrides += ["model.aux_heads=[]"] if k == 0 else []
                    overrides += SMOKE_MODEL if smoke else []
                    out.append((model, f"K={k} {'bf16' if amp else 'fp32'} msda={impl}", overrides, amp))
    return out


def run_steps(args: argparse.Namespace, deadline: float) -> None:
    dev = device()
    # smoke: 128 px keeps every level above 1 x 1 (CPU bf16 backward of a stride-2 conv on a 1 x 1 map
    # can give non-finite gradients in torch 2.14)
    sizes = [(128, 160), (128, 128)] if args.smoke else [(800, 1333), (800, 1066)]
    warmup, steps = (0, 2) if args.smoke else (2, 5)
    seconds: dict[tuple[str, str], float] = {}
    last_cost = 15.0 if not args.smoke else 1.0
    for model_name, variant, overrides, amp in step_variants(args.smoke):
        case = f"{model_name} train step, batch 2 ({sizes[0][0]}x{sizes[0][1]}, {sizes[1][0]}x{sizes[1][1]})"
        if time.time() + last_cost > deadline:
            emit(Row("b", case, variant, note="skipped: time budget"))
            continue
        began = time.time()
        model = optimizer = None
        try:
            cfg = load_config(CONFIGS[model_name], overrides)
            torch.manual_seed(0)
            model = build_model(cfg).to(dev).train()
            optimizer = build_optimizer(model, cfg.train)
            images, targets = random_batch(sizes, model.num_classes, dev)
            impl = msda.resolve_msda_impl(cfg.model.msda_impl, images[0])
            reset_peak(dev)
            times = []
            for i in range(warmup + steps):
                sync(dev)
                start = time.perf_counter()
                train_step(model, images, targets, optimizer, clip_grad_norm=cfg.train.clip_grad_norm, amp=amp)
                sync(dev)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
            per_iter = statistics.median(times)
            seconds[(model_name, variant)] = per_iter
            ratio = ""
            k0 = variant.replace("K=2", "K=0")
            triton_variant = variant.replace("msda=pytorch", "msda=auto")
            if variant.startswith("K=2") and (model_name, k0) in seconds and "msda=auto" in variant:
                ratio = f"x{per_iter / seconds[(model_name, k0)]:.2f} time vs K=0"
            elif "msda=pytorch" in variant and (model_name, triton_variant) in seconds:
                ratio = f"x{per_iter / seconds[(model_name, triton_variant)]:.2f} time vs msda=auto"
            note = f"attention: {impl}" + ("; CPU autocast (slow, checks the code path)" if amp and dev.type != "cuda" else "")
            emit(Row("b", case, variant, f"{per_iter:.3f} s/it", f"{len(images) / per_iter:.2f}",
                     fmt_mb(peak_mb(dev)), ratio, note))
        except Exception as e:  # noqa: BLE001 - one failed variant is a row, the rest still runs
            emit(Row("b", case, variant, note=error_note(e)))
        finally:
            del model, optimizer
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        last_cost = max(last_cost, (time.time() - began) * 1.2)


# ----------------------------------------------------------------------------- (c) train


def train_command(smoke: bool, workdir: Path) -> tuple[str, list[str]]:
    """The config and overrides of section (c): the full run, or with ``smoke`` the tiny one on the CPU."""
    common = [f"data.synthetic.root={workdir}/data", f"platform.storage_path={workdir}/runs",
              "platform.run_name=gpu_check", "platform.num_workers=1", "platform.max_failures=0",
              "platform.log_model=false", "platform.log_checkpoints=false", "platform.num_val_images=0",
              "data.dataset=synthetic", "data.augment.crop_prob=0", "data.batch_size=2", "train.eval_every=0",
              "train.checkpoint_every=0"]
    if smoke:
        size = 64
        return "experiments/codetr_tiny.yaml", common + [
            "platform.use_gpu=false", f"data.synthetic.image_size={size}", "data.synthetic.num_train=4",
            "data.synthetic.num_val=1", f"data.augment.scales=[{size}]", f"data.augment.max_size={size}",
            f"data.augment.eval_scale={size}", f"data.augment.eval_max_size={size}", "train.epochs=1",
            "train.max_iters=2", "train.log_every=1"]
    # 20 images drawn once (1333 px, ~0.3 s each), 5 epochs of 10 iterations
    coco_paths = [f"data.{split}.{key}=''" for split in ("train", "val") for key in ("ann_file", "img_dir")]
    return CONFIGS["Co-Deformable-DETR R50"], common + coco_paths + [
        "platform.use_gpu=true", "model.backbone.pretrained=false", "model.num_classes=null",
        "data.synthetic.image_size=1333", "data.synthetic.num_train=20", "data.synthetic.num_val=2",
        "data.augment.scales=[800]", "data.augment.max_size=1333", "data.augment.eval_scale=800",
        "data.augment.eval_max_size=1333", "data.num_workers=2", "train.epochs=5",
        f"train.max_iters={TRAIN_ITERS}", "train.log_every=10"]


def run_train(args: argparse.Namespace, deadline: float) -> list[Row]:
    """Section (c), from the driver: ``python -m platform.train`` as a subprocess under the deadline."""
    tiny = args.smoke and args.smoke_train
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        config, overrides = train_command(tiny, Path(tmp))
        iters = 2 if tiny else TRAIN_ITERS
        case = f"platform.train {Path(config).stem}, 1 worker, {iters} iterations of 2 images"
        try:
            load_config(config, overrides)       # a stale key fails here, before Ray starts
        except Exception as e:  # noqa: BLE001
            return [Row("c", case, note=error_note(e))]
        if args.smoke and not tiny:
            return [Row("c", case, note="skipped in --smoke (a platform.train run takes ~1 min on a CPU; "
                                        "--smoke-train runs it); the config and overrides of the full run validate")]
        if time.time() + 30 > deadline:
            return [Row("c", case, note="skipped: time budget")]
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        command = [sys.executable, "-m", "platform.train", "--config", config, *overrides]
        print(f"[gpu_check] {' '.join(command)}", file=sys.stderr, flush=True)
        start = time.time()
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=max(deadline - time.time(), 1.0))
        except subprocess.TimeoutExpired:
            stop_group(proc)
            output, _ = proc.communicate()
            return [Row("c", case, time=f"{time.time() - start:.0f} s",
                        note=f"timed out (time budget); last line: {last_line(output)}")]
        wall = time.time() - start
    rates = re.findall(r"([0-9.]+) img/s", output)
    if proc.returncode != 0 or "FINISHED" not in output:
        return [Row("c", case, time=f"{wall:.0f} s",
                    note=f"error: exit {proc.returncode}; last line: {last_line(output)}")]
    return [Row("c", case, "msda=auto", f"{wall:.0f} s wall", rates[-1] if rates else "-", "-", "",
                f"whole command (Ray, MLflow, data, build, eval, checkpoint): {iters * 2 / wall:.2f} img/s")]


def last_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1][-200:] if lines else "(no output)"


def stop_group(proc: subprocess.Popen) -> None:
    """Ctrl-C to the process group (platform.train stops its run), then SIGKILL after 20 s."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ----------------------------------------------------------------------------- driver


def run_section_process(args: argparse.Namespace, section: str, label: str, deadline: float) -> list[Row]:
    """Run a section in its own process; its rows, plus an error row if it failed or ran out of time."""
    command = [sys.executable, __file__, "--section", section, "--deadline", str(deadline)]
    command += ["--smoke"] if args.smoke else []
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    status = None
    try:
        out, err = proc.communicate(timeout=max(deadline - time.time(), 1.0) + 15)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        out, err = proc.communicate()
        status = "timed out (time budget); the rows above finished"
    rows = [Row(**json.loads(line[len(ROW_PREFIX):])) for line in out.splitlines() if line.startswith(ROW_PREFIX)]
    if status is None and proc.returncode != 0:
        status = f"error: the section's process exited {proc.returncode}: {last_line(err)}"
    if status:
        sys.stderr.write(err[-4000:])
        rows.append(Row(label, "(section)", note=status))
    return rows


def header(args: argparse.Namespace) -> list[str]:
    dev = device()
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "CPU (no CUDA device)"
    triton = "does not import" if msda.TRITON_IMPORT_ERROR else (
        "interpreter (TRITON_INTERPRET=1)" if msda.INTERPRETED else "compiled")
    try:
        version = metadata.version("triton")
    except metadata.PackageNotFoundError:
        version = "-"
    mode = "--smoke (tiny shapes)" if args.smoke else "full"
    return [f"GPU check, {mode}: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}, triton {version} "
            f"({triton}); budget {args.budget:.0f} s"]


def table(rows: list[Row]) -> str:
    cols = ["section", "case", "variant", "time", "images/s", "peak MB", "ratio", "note"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r.section, r.case, r.variant, r.time, r.rate, r.peak_mb, r.ratio, r.note]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes, 2 iterations; the CPU when no GPU")
    p.add_argument("--smoke-train", action="store_true", help="with --smoke: also run the tiny platform.train")
    p.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for all sections")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    p.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)     # a section's own process
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.section:
        if device().type == "cpu":   # --smoke: one thread, no OpenMP spinning against a shared machine's load
            torch.set_num_threads(1)
        {"attention": run_attention, "steps": run_steps}[args.section](args, args.deadline)
        return 0
    if not args.smoke and not torch.cuda.is_available():
        p.error("no CUDA device: the full check needs one GPU (--smoke runs the same code paths on the CPU)")

    start = time.time()
    end = start + args.budget
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        p.error(f"--sections: unknown {unknown}; choose from {list(SECTIONS)}")
    rows: list[Row] = []
    reserve = TRAIN_RESERVE_S if "train" in chosen and not (args.smoke and not args.smoke_train) else 0.0
    if "attention" in chosen:
        print("[gpu_check] (a) deformable attention ...", file=sys.stderr, flush=True)
        rows += run_section_process(args, "attention", "a", min(time.time() + ATTENTION_CAP_S, end - reserve))
    if "steps" in chosen:
        print("[gpu_check] (b) training steps ...", file=sys.stderr, flush=True)
        rows += run_section_process(args, "steps", "b", end - reserve)
    if "train" in chosen:
        print("[gpu_check] (c) platform.train ...", file=sys.stderr, flush=True)
        try:
            rows += run_train(args, end)
        except Exception as e:  # noqa: BLE001
            rows.append(Row("c", "(section)", note=error_note(e)))
    text = "\n".join(header(args) + ["", table(rows), "", f"total {time.time() - start:.0f} s"])
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
