"""Detections on what users have: image files, folders (recursively), globs and videos, by PyTorch or onnxruntime.

- :func:`collect_inputs`: the command line's paths, folders and glob patterns -> image and video files,
  and a note for each argument that names nothing;
- :class:`TorchBackend` / :class:`OnnxBackend`: ``detect(image uint8 [3, H, W])`` -> detections in pixels
  of that image (the model's evaluation resize first, boxes scaled back); the ONNX one reads the class
  names, the resize and the post-processing (Co-DINO's soft-NMS) from the model's metadata;
- :func:`detect_video`: decode a video with PyAV, detect on every frame, write the annotated video and
  yield the per-frame detections.
"""
from __future__ import annotations

import glob
import json
import os
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import av
import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

from codetr.data import build_eval_transforms
from platform.deploy.postprocess import postprocess

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}

DETECTIONS = ["boxes", "scores", "labels"]   # the graph's detections (its other outputs serve the export check)


def collect_inputs(arguments: list[str]) -> tuple[list[Path], list[Path], list[str]]:
    """Each argument a file, a folder (searched recursively for image and video files) or a glob pattern
    (``**`` recursive) -> (image files, video files, notes on the arguments that name nothing), in order,
    each file once."""
    files: list[Path] = []
    notes: list[str] = []
    for arg in arguments:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
            if not found:
                notes.append(f"{arg}: a folder with no image or video file")
            files += found
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(arg):
            found = sorted(Path(p) for p in glob.glob(arg, recursive=True) if Path(p).is_file())
            if not found:
                notes.append(f"{arg}: the pattern matches no file")
            files += found
        else:
            notes.append(f"{arg}: no such file or folder")
    unique = list(dict.fromkeys(files))
    videos = [p for p in unique if p.suffix.lower() in VIDEO_SUFFIXES]
    images = [p for p in unique if p.suffix.lower() not in VIDEO_SUFFIXES]
    return images, videos, notes


def scale_back(det: dict, resized: Tensor, height: int, width: int) -> dict:
    """Boxes of the resized image -> pixels of the ``height`` x ``width`` image."""
    scale = torch.tensor([width / resized.shape[2], height / resized.shape[1]] * 2)
    return {"boxes": det["boxes"] * scale, "scores": det["scores"], "labels": det["labels"]}


class TorchBackend:
    """The PyTorch deployable model (a :class:`codetr.inference.Predictor`)."""

    name = "torch"

    def __init__(self, predictor):
        self.predictor = predictor
        self.category_names = predictor.category_names

    def detect(self, image: Tensor, score_threshold: float) -> dict:
        det = self.predictor.detect(image, score_threshold)
        return {k: det[k] for k in ("boxes", "scores", "labels")}


class OnnxBackend:
    """An exported ONNX model in onnxruntime (CPU, or CUDA when its provider is there) with its metadata's
    resize, class names and post-processing."""

    name = "onnx"

    def __init__(self, path: str | Path):
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(path), providers=providers)
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = [k for k in ("label_names", "resize", "postprocess") if k not in meta]
        if missing:
            raise ValueError(f"{path}: no {', '.join(missing)} in the ONNX metadata (export it with "
                             f"python -m platform.export)")
        self.category_names = json.loads(meta["label_names"])
        resize = json.loads(meta["resize"])
        self.transform = build_eval_transforms(SimpleNamespace(eval_scale=resize["shorter_side"],
                                                               eval_max_size=resize["max_size"]))
        self.spec = json.loads(meta["postprocess"])

    def detect(self, image: Tensor, score_threshold: float) -> dict:
        height, width = int(image.shape[1]), int(image.shape[2])
        resized = self.transform(image)                                        # [3, h, w] float in [0, 1]
        outputs = self.session.run(DETECTIONS, {"images": resized[None].numpy()})
        det = {k: torch.from_numpy(v) for k, v in postprocess(*outputs, self.spec)[0].items()}
        keep = det["scores"] >= score_threshold
        return scale_back({k: v[keep] for k, v in det.items()}, resized, height, width)


def detection_records(det: dict, names: list[str]) -> list[dict]:
    return [{"box_xyxy": [round(float(v), 2) for v in box], "score": round(float(score), 4), "label": int(label),
             "category": names[int(label)] if 0 <= int(label) < len(names) else None}
            for box, score, label in zip(det["boxes"], det["scores"], det["labels"])]


def coco_results(det: dict, image_id: int) -> list[dict]:
    """COCO results entries (``bbox`` xywh pixels; ``category_id`` the model's class index)."""
    return [{"image_id": image_id, "category_id": int(label), "score": round(float(score), 5),
             "bbox": [round(float(box[0]), 2), round(float(box[1]), 2), round(float(box[2] - box[0]), 2),
                      round(float(box[3] - box[1]), 2)]}
            for box, score, label in zip(det["boxes"], det["scores"], det["labels"])]


class BadVideoError(ValueError):
    """A video that cannot be decoded or holds no frame; the message names the file."""


def video_frames(path: Path) -> tuple[Iterator[tuple[int, float, np.ndarray]], dict]:
    """Open ``path`` with PyAV: (iterator of (index, time s, RGB uint8 [H, W, 3]), {fps, width, height}).
    Raises :class:`BadVideoError` naming the file when it is empty, not a video or has no video stream."""
    if path.stat().st_size == 0:
        raise BadVideoError(f"{path}: the file is empty")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise BadVideoError(f"{path}: cannot open it as a video: {e}") from e
    if not container.streams.video:
        container.close()
        raise BadVideoError(f"{path}: no video stream")
    stream = container.streams.video[0]
    fps = stream.average_rate or stream.guessed_rate or Fraction(25)
    info = {"fps": fps, "width": stream.codec_context.width, "height": stream.codec_context.height}

    def frames():
        try:
            for i, frame in enumerate(container.decode(stream)):
                time_s = float(frame.pts * stream.time_base) if frame.pts is not None else i / float(fps)
                yield i, time_s, frame.to_ndarray(format="rgb24")
        except av.FFmpegError as e:
            raise BadVideoError(f"{path}: decoding failed: {e}") from e
        finally:
            container.close()

    return frames(), info


class VideoWriter:
    """An H.264 (or MPEG-4 Part 2 when there is no H.264 encoder) video of RGB uint8 [3, H, W] frames."""

    def __init__(self, path: Path, fps, width: int, height: int):
        self.container = av.open(str(path), mode="w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.stream = self.container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        self.stream.width, self.stream.height = width - width % 2, height - height % 2   # yuv420p: even sides
        self.stream.pix_fmt = "yuv420p"

    def write(self, frame_chw: Tensor) -> None:
        array = frame_chw.permute(1, 2, 0).contiguous().numpy()[: self.stream.height, : self.stream.width]
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def set_threads() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
