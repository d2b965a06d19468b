"""Export the deployable model of a checkpoint to ONNX and check it at once against PyTorch.

    python -m platform.export --checkpoint runs/NAME/checkpoint_.../ --format onnx -o model.onnx
                              [--height 128 --width 128] [--image val.jpg] [--opset 17]

The model is ``model.for_inference()`` (no auxiliary heads) in pure PyTorch operators (the deformable
attention samples with ``grid_sample``: no custom kernel). Input ``images`` float32 ``[batch, 3, H, W]``
RGB in [0, 1]; outputs ``boxes`` (xyxy pixels of the input), ``scores``, ``labels``
(:mod:`platform.deploy.onnx`). The batch is dynamic, the size fixed: ``--height`` / ``--width``
(default: the config's ``data.augment.eval_scale`` square). Right after exporting, onnxruntime (CPU)
and PyTorch run the same input (``--image``, resized, or a drawn test pattern), at batch 1 and 2, and the
command prints what :func:`platform.deploy.onnx.check_onnx` compares, none of it rank by rank (near-tied
scores may rank otherwise in the two runtimes): the two-stage scores of every encoder position, whether
onnxruntime's two-stage selection is a top-k of PyTorch's scores, every query's logits and box (PyTorch on
onnxruntime's selection) and the detections paired by label, score and box. It fails (exit 1) beyond
4e-4 (logits) / 1e-4 (scores) / 0.05 px, or when a detection has no partner (but at the top-k cut). ``--checkpoint`` also takes a deployable file (``Predictor.save``, the MLflow
model's ``deployable.pt``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from codetr.data import read_image_rgb
from platform.deploy.onnx import DEFAULT_OPSET, check_onnx, check_other_size, export_onnx, input_batch, test_pattern
from platform.deploy.predictors import load_predictor

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m platform.export", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder, checkpoint.pt or deployable file")
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default: %(default)s)")
    parser.add_argument("-o", "--output", required=True, help="the file to write, e.g. model.onnx")
    parser.add_argument("--height", type=int, default=None, help="input height (default: data.augment.eval_scale)")
    parser.add_argument("--width", type=int, default=None, help="input width (default: data.augment.eval_scale)")
    parser.add_argument("--image", default=None, help="image file for the parity check (default: a test pattern)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (>= 16 for grid_sample; default 17)")
    return parser.parse_args(argv)


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
    try:
        image = read_image_rgb(args.image) if args.image else test_pattern(height, width)
    except Exception as e:   # BadImageError names the file
        print(f"--image: {e}", file=sys.stderr)
        return EXIT_USAGE
    start = time.time()
    try:
        path = export_onnx(predictor, args.output, height, width, args.opset or DEFAULT_OPSET)
    except ValueError as e:
        print(f"export: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"[export] {path}: {path.stat().st_size / 1e6:.1f} MB, ONNX opset {args.opset or DEFAULT_OPSET}, "
          f"{predictor.num_classes} classes, exported in {time.time() - start:.1f} s")

    ok = True
    source = args.image or "a drawn test pattern"
    for batch in (1, 2):
        report = check_onnx(path, predictor, input_batch(image, height, width, batch))
        ok = ok and report.ok
        print(f"[export] onnxruntime vs PyTorch, batch {batch} ({source}): {report.summary()}  "
              f"{'OK' if report.ok else 'MISMATCH'}")
    other = check_other_size(path, height, width)
    print(f"[export] supports: batch dynamic (checked 1 and 2); height x width fixed at {height}x{width} "
          f"({height + 32}x{width + 32} -> {'runs (unexpected)' if other == 'ran' else 'refused: ' + other})")
    print("[export] input 'images' float32 [batch, 3, H, W] RGB in [0, 1]; outputs 'boxes' [batch, K, 4] xyxy "
          "pixels, 'scores' [batch, K], 'labels' [batch, K] int64; class names in the metadata 'label_names'")
    if not ok:
        print("[export] the ONNX model does not match PyTorch: not fit for use", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK



if __name__ == "__main__":
    sys.exit(main())
