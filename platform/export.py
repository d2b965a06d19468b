"""Export the deployable model of a checkpoint to ONNX and check it at once against PyTorch.

    python -m platform.export --checkpoint runs/NAME/checkpoint_.../ --format onnx -o model.onnx
                              [--height 128 --width 128] [--sizes 128x128,96x160] [--image val.jpg]
                              [--opset 17] [--no-simplify]

The model is ``model.for_inference()`` (no auxiliary heads) in pure PyTorch operators (the deformable
attention samples with ``grid_sample``: no custom kernel), either query head. Input ``images`` float32
``[batch, 3, H, W]`` RGB in [0, 1]; outputs ``boxes`` (xyxy pixels of the input), ``scores``, ``labels``
(:mod:`platform.deploy.onnx`); batch, height and width are dynamic (``--height`` / ``--width``: the
example traced, default the config's ``data.augment.eval_scale`` square). A Co-DINO graph outputs the
soft-NMS candidates: ``postprocess.py`` (NumPy) is written next to the model and the metadata
``postprocess`` gives its parameters. The graph is simplified with onnxslim (``--no-simplify``: not),
kept only if it still matches PyTorch. Right after exporting, onnxruntime (CPU) and PyTorch run the
same input (``--image``, resized, or a drawn test pattern) at each of ``--sizes`` (default: the export
size, its transpose, a square and a size no multiple of 32) at batch 1 and 2, compared by
:func:`platform.deploy.onnx.check_onnx`, none of it rank by rank (near-tied scores may rank otherwise in
the two runtimes): the two-stage scores, the selection, every query's logits and box, and the detections
paired by label, score and box. The command prints, per size and batch, the largest box and score
differences over the pairs and the share paired, and fails (exit 1) beyond 0.05 px / 1e-4 or when a
detection has no partner (but at the top-k cut). ``--checkpoint`` also takes a deployable file
(``Predictor.save``, the MLflow model's ``deployable.pt``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from codetr.data import read_image_rgb
from platform.deploy.onnx import DEFAULT_OPSET, export_onnx, min_input_side, test_pattern
from platform.deploy.onnx_sizes import default_check_sizes, describe_io, parity_table, simplify
from platform.deploy.predictors import load_predictor

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m platform.export", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder, checkpoint.pt or deployable file")
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default: %(default)s)")
    parser.add_argument("-o", "--output", required=True, help="the file to write, e.g. model.onnx")
    parser.add_argument("--height", type=int, default=None, help="example height (default: data.augment.eval_scale)")
    parser.add_argument("--width", type=int, default=None, help="example width (default: data.augment.eval_scale)")
    parser.add_argument("--sizes", default=None, help="HxW,HxW,... sizes of the parity check (default: 4 shapes)")
    parser.add_argument("--image", default=None, help="image file for the parity check (default: a test pattern)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (>= 16 for grid_sample; default 17)")
    parser.add_argument("--no-simplify", action="store_true", help="keep the graph as exported (no onnxslim)")
    return parser.parse_args(argv)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"--sizes: {item!r} is not HxW (e.g. 128x96)")
        sizes.append((int(parts[0]), int(parts[1])))
    return sizes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        predictor = load_predictor(args.checkpoint)
    except Exception as e:   # missing file, not a checkpoint (pickle / zip errors), incompatible config
        print(f"--checkpoint: cannot load a model from {args.checkpoint}: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_USAGE
    scale = predictor.cfg.data.augment.eval_scale
    height, width = args.height or scale, args.width or scale
    low = min_input_side(predictor.model.cfg)
    if min(height, width) < low:
        print(f"--height / --width must be at least {low} pixels (at least 64, and {predictor.model.cfg.num_queries} "
              f"encoder positions for the two-stage top-k), got {height}x{width}", file=sys.stderr)
        return EXIT_USAGE
    try:
        sizes = parse_sizes(args.sizes) if args.sizes else default_check_sizes(height, width, low)
        small = [f"{h}x{w}" for h, w in sizes if min(h, w) < low]
        if small:
            raise ValueError(f"--sizes: {', '.join(small)} below the model's smallest side, {low} px")
        image = read_image_rgb(args.image) if args.image else test_pattern(height, width)
    except Exception as e:   # BadImageError names the file
        print(f"{e}" if str(e).startswith("--") else f"--image: {e}", file=sys.stderr)
        return EXIT_USAGE
    start = time.time()
    opset = args.opset or DEFAULT_OPSET
    try:
        path = export_onnx(predictor, args.output, height, width, opset)
    except ValueError as e:
        print(f"export: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"[export] {path}: {predictor.model.cfg.query_head} query head, {predictor.num_classes} classes, "
          f"traced at {height}x{width}, exported in {time.time() - start:.1f} s")
    exported = path.read_bytes()
    if not args.no_simplify:
        before, after = simplify(path)
        print(f"[export] onnxslim: {before} -> {after} nodes")
    print(f"[export] {path}: {path.stat().st_size / 1e6:.1f} MB")
    for line in describe_io(path):
        print(f"[export]   {line}")

    source = args.image or "a drawn test pattern"
    rows = parity_table(path, predictor, image, sizes)
    if not args.no_simplify and not all(r.ok for r in rows):
        print("[export] the simplified graph does not match PyTorch: keeping the graph as exported")
        path.write_bytes(exported)
        rows = parity_table(path, predictor, image, sizes)
    print(f"[export] onnxruntime vs PyTorch ({source}, resized), detections:")
    for r in rows:
        print(f"[export]   {r.height}x{r.width} batch {r.batch}: max abs diff boxes {r.boxes_max_abs_diff:.2e} px, "
              f"scores {r.scores_max_abs_diff:.2e}; paired {100 * r.labels_agree:.0f}%  "
              f"{'OK' if r.ok else 'MISMATCH'}")
    print(f"[export] supports: batch, height and width dynamic (checked {len(sizes)} sizes at batch 1 and 2); "
          f"sides of at least {low} px")
    if Path(path).with_name("postprocess.py").is_file() and predictor.model.cfg.eval_nms() == "soft":
        print(f"[export] post-processing: soft-NMS on the outputs, {path.with_name('postprocess.py')} "
              f"(NumPy; parameters in the metadata 'postprocess')")
    if not all(r.ok for r in rows):
        print("[export] the ONNX model does not match PyTorch: not fit for use", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
