"""Detect objects in images, folders, globs and videos with a trained model: drawn images / videos and JSON.

    python -m platform.predict --checkpoint runs/NAME/checkpoint_.../ [--backend torch|onnx]
                               [--out outputs/predict] [--score-thr 0.3] INPUT [INPUT ...]

INPUT: an image file, a video file (.mp4, .avi, .mov, .mkv, .webm, ...), a folder (searched
recursively for both) or a glob pattern (quote it; ``**`` recurses). ``--checkpoint``: a training
checkpoint, a deployable file or an exported ``.onnx`` model (then the backend is onnx).
``--backend onnx`` with a checkpoint exports it first (``<out>/model.onnx``). Writes:

- ``<out>/images/<name>.png``: each image with its detections (boxes, class names, scores);
- ``<out>/detections.json``: ``[{"image", "image_id", "width", "height", "detections": [{"box_xyxy":
  [x1, y1, x2, y2] in pixels of the file, "score", "label", "category"}]}]``;
- ``<out>/coco_results.json``: the same as COCO results (``image_id`` as in detections.json,
  ``category_id`` the class index, ``bbox`` xywh);
- per video ``<out>/videos/<name>.mp4`` (annotated) and ``<out>/videos/<name>.json`` (per frame:
  ``frame``, ``time_s``, ``detections``).

Uses the deployable model (no auxiliary heads) with the checkpoint's evaluation resize. An input
that cannot be read (missing, not an image, empty or broken video) is named on stderr and skipped;
the exit status is 1 when any was skipped, 0 otherwise, 2 for a bad command line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from codetr.data import read_image_rgb
from platform.core.visualize import draw_detections, save_png
from platform.deploy.onnx import export_onnx, min_input_side
from platform.deploy.predict import (BadVideoError, OnnxBackend, TorchBackend, VideoWriter, coco_results,
                                     collect_inputs, detection_records, set_threads, video_frames)
from platform.deploy.predictors import load_predictor

EXIT_OK, EXIT_SKIPPED, EXIT_USAGE = 0, 1, 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m platform.predict", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder, checkpoint.pt, deployable file or .onnx")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image / video files, folders, glob patterns")
    parser.add_argument("--backend", choices=["torch", "onnx"], default=None,
                        help="torch (default) or onnx (onnxruntime; default for an .onnx model)")
    parser.add_argument("--out", default="outputs/predict", help="output folder (default: %(default)s)")
    parser.add_argument("--score-thr", "--score-threshold", dest="score_threshold", type=float, default=0.3,
                        help="keep and draw detections scoring at least this (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch backend device (default: %(default)s)")
    parser.add_argument("--no-draw", action="store_true", help="write only the JSON files")
    return parser.parse_args(argv)


def build_backend(args: argparse.Namespace, out_dir: Path):
    if args.checkpoint.endswith(".onnx"):
        if args.backend == "torch":
            raise ValueError(f"--backend torch: {args.checkpoint} is an ONNX model (use --backend onnx)")
        return OnnxBackend(args.checkpoint)
    predictor = load_predictor(args.checkpoint)
    if args.backend == "onnx":
        scale = predictor.cfg.data.augment.eval_scale
        side = max(scale, min_input_side(predictor.model.cfg))
        return OnnxBackend(export_onnx(predictor, out_dir / "model.onnx", side, side))
    predictor.model.to(args.device)
    predictor.device = predictor.model.pixel_mean.device
    return TorchBackend(predictor)


class Progress:
    """``[=====     ] 12/40 name`` on stderr (one line per item when stderr is not a terminal)."""

    def __init__(self, total: int):
        self.total, self.done, self.tty = total, 0, sys.stderr.isatty()

    def step(self, label: str) -> None:
        self.done += 1
        filled = int(20 * self.done / max(self.total, 1))
        line = f"[{'=' * filled}{' ' * (20 - filled)}] {self.done}/{self.total} {label}"
        print(("\r" + line[:120].ljust(120)) if self.tty else line, end="" if self.tty else "\n",
              file=sys.stderr, flush=True)
        if self.tty and self.done == self.total:
            print(file=sys.stderr)


def unique_name(path: Path, used: set[str]) -> str:
    name, i = path.stem, 2
    while name in used:
        name, i = f"{path.stem}_{i}", i + 1
    used.add(name)
    return name


def predict_video(backend, path: Path, out_dir: Path, name: str, threshold: float, draw: bool) -> int:
    """Detect on every frame of ``path``; returns the frame count. Raises BadVideoError naming the file."""
    frames, info = video_frames(path)
    writer = VideoWriter(out_dir / f"{name}.mp4", info["fps"], info["width"], info["height"]) if draw else None
    records = []
    try:
        for index, time_s, array in frames:
            image = torch.from_numpy(array).permute(2, 0, 1).contiguous()
            det = backend.detect(image, threshold)
            records.append({"frame": index, "time_s": round(time_s, 4),
                            "detections": detection_records(det, backend.category_names)})
            if writer is not None:
                writer.write(draw_detections(image.float() / 255, det["boxes"], det["labels"], det["scores"],
                                             backend.category_names, score_threshold=threshold, min_side=0))
    finally:
        if writer is not None and records:
            writer.close()
    if not records:
        (out_dir / f"{name}.mp4").unlink(missing_ok=True)
        raise BadVideoError(f"{path}: no frame decoded (zero-length video)")
    with open(out_dir / f"{name}.json", "w") as f:
        json.dump({"video": str(path), "fps": float(info["fps"]), "width": info["width"], "height": info["height"],
                   "frames": records}, f)
    return len(records)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads()
    images, videos, notes = collect_inputs(args.inputs)
    for note in notes:
        print(f"skipped: {note}", file=sys.stderr)
    if not images and not videos:
        print("error: no image or video among the inputs", file=sys.stderr)
        return EXIT_USAGE
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        backend = build_backend(args, out_dir)
    except Exception as e:   # missing file, not a checkpoint, an ONNX model without metadata
        print(f"--checkpoint: cannot load a model from {args.checkpoint}: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_USAGE
    skipped = len(notes)
    videos_done = 0
    records, results, used = [], [], set()
    progress = Progress(len(images) + len(videos))
    start = time.time()
    for path in images:
        try:
            raw = read_image_rgb(path)                       # [3, H, W] uint8; BadImageError names the file
        except Exception as e:
            print(f"\nskipped: {e}", file=sys.stderr)
            skipped += 1
            progress.step(f"{path} (skipped)")
            continue
        det = backend.detect(raw, args.score_threshold)
        image_id = len(records)
        records.append({"image": str(path), "image_id": image_id, "width": int(raw.shape[2]),
                        "height": int(raw.shape[1]), "detections": detection_records(det, backend.category_names)})
        results += coco_results(det, image_id)
        if not args.no_draw:
            drawn = draw_detections(raw.float() / 255, det["boxes"], det["labels"], det["scores"],
                                    backend.category_names, score_threshold=args.score_threshold, min_side=0)
            save_png(drawn, out_dir / "images" / f"{unique_name(path, used)}.png")
        progress.step(f"{path}: {len(det['scores'])} detection(s)")
    video_dir = out_dir / "videos"
    for path in videos:
        video_dir.mkdir(exist_ok=True)
        try:
            count = predict_video(backend, path, video_dir, unique_name(path, used), args.score_threshold,
                                  not args.no_draw)
            videos_done += 1
            progress.step(f"{path}: {count} frame(s)")
        except BadVideoError as e:
            print(f"\nskipped: {e}", file=sys.stderr)
            skipped += 1
            progress.step(f"{path} (skipped)")
    with open(out_dir / "detections.json", "w") as f:
        json.dump(records, f, indent=1)
    with open(out_dir / "coco_results.json", "w") as f:
        json.dump(results, f)
    print(f"{len(records)} image(s), {videos_done} video(s) with the {backend.name} backend "
          f"in {time.time() - start:.1f} s; {skipped} input(s) skipped. Detections: {out_dir / 'detections.json'}, "
          f"{out_dir / 'coco_results.json'}")
    return EXIT_SKIPPED if skipped else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
