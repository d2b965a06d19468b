"""Detect objects in image files with a trained checkpoint: drawn images and a JSON of detections.

    python -m platform.predict --checkpoint runs/NAME/checkpoint_.../ [--out outputs/predict]
                               [--score-threshold 0.3] IMAGE [IMAGE ...]

Writes ``<out>/<image stem>.png`` (the image with the detected boxes, class names and scores)
and ``<out>/detections.json``: ``[{"image", "width", "height", "detections": [{"box_xyxy":
[x1, y1, x2, y2] in pixels of the file, "score", "label", "category"}]}]``. Uses the deployable
model (``model.for_inference()``: no auxiliary heads) and the checkpoint's eval resize.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from platform.core.visualize import draw_detections, save_png
from platform.deploy.predict import predict_images


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m platform.predict", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder or checkpoint.pt")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG / PNG)")
    parser.add_argument("--out", default="outputs/predict", help="output folder (default: %(default)s)")
    parser.add_argument("--score-threshold", type=float, default=0.3, help="draw and keep detections above this")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        print(f"error: no such image(s): {', '.join(missing)}", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for path, raw, det, names in predict_images(args.checkpoint, args.images, args.score_threshold, args.device):
        drawn = draw_detections(raw.float() / 255, det["boxes"], det["labels"], det["scores"], names,
                                score_threshold=args.score_threshold, min_side=0)
        target = save_png(drawn, out_dir / f"{Path(path).stem}.png")
        detections = [{"box_xyxy": [round(float(v), 2) for v in box], "score": round(float(score), 4),
                       "label": int(label), "category": names[int(label)] if int(label) < len(names) else None}
                      for box, score, label in zip(det["boxes"], det["scores"], det["labels"])]
        records.append({"image": str(path), "width": int(raw.shape[2]), "height": int(raw.shape[1]),
                        "detections": detections})
        print(f"{path}: {len(detections)} detection(s) -> {target}")
    with open(out_dir / "detections.json", "w") as f:
        json.dump(records, f, indent=1)
    print(f"Detections: {out_dir / 'detections.json'}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
