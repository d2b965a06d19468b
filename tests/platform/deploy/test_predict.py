"""`python -m platform.predict` on real files: a folder of images (nested), a glob, a real MP4 written with
PyAV, broken inputs (a corrupt image, a zero-length video, a missing path), both backends."""
from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from torchvision.io import write_jpeg, write_png

from codetr import build_model
from codetr.inference import Predictor
from platform import predict
from platform.core.config_files import load_run_config
from platform.deploy.onnx import export_onnx
from platform.deploy.onnx import test_pattern as draw_pattern

NAMES = ["rectangle", "ellipse", "triangle", "cross", "ring"]
FRAMES = 6


def write_video(path, frames: list[np.ndarray], fps: int = 10) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    cfg = load_run_config("codetr_tiny", [])
    torch.manual_seed(0)
    model_file = Predictor(build_model(cfg, num_classes=len(NAMES)).for_inference(), cfg, NAMES).save(root / "model.pt")
    data = root / "data"
    (data / "nested").mkdir(parents=True)
    write_png(draw_pattern(96, 128), str(data / "a.png"))
    write_jpeg(draw_pattern(120, 90), str(data / "nested" / "b.jpg"))
    (data / "nested" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (data / "empty.mp4").write_bytes(b"")
    frames = [draw_pattern(64, 96).roll(8 * i, dims=2).permute(1, 2, 0).contiguous().numpy() for i in range(FRAMES)]
    write_video(data / "clip.mp4", frames)
    return root, model_file, data


def test_folders_globs_and_videos_with_bad_inputs_named_and_skipped(inputs, tmp_path, capsys):
    root, model_file, data = inputs
    out = tmp_path / "out"
    code = predict.main(["--checkpoint", str(model_file), str(data), str(data / "nested" / "*.jpg"),
                         str(data / "missing.png"), "--out", str(out), "--score-thr", "0.0"])
    err = capsys.readouterr().err
    assert code == 1, err                                     # something was skipped
    assert "broken.jpg" in err and "empty.mp4" in err and "missing.png: no such file or folder" in err
    assert "4/4" in err or "5/5" in err                       # the progress reached the end
    records = json.loads((out / "detections.json").read_text())
    assert sorted(r["image"].rsplit("/", 1)[-1] for r in records) == ["a.png", "b.jpg"]   # b.jpg once
    for r in records:
        assert r["detections"] and all(0 <= d["box_xyxy"][2] <= r["width"] for d in r["detections"])
        assert all(d["category"] in NAMES for d in r["detections"])
    results = json.loads((out / "coco_results.json").read_text())
    assert {e["image_id"] for e in results} == {0, 1} and all(len(e["bbox"]) == 4 and e["bbox"][2] >= 0 for e in results)
    assert len(results) == sum(len(r["detections"]) for r in records)
    assert (out / "images" / "a.png").is_file() and (out / "images" / "b.png").is_file()
    video = json.loads((out / "videos" / "clip.json").read_text())
    assert [f["frame"] for f in video["frames"]] == list(range(FRAMES)) and video["fps"] == 10.0
    assert all(f["detections"] for f in video["frames"])
    with av.open(str(out / "videos" / "clip.mp4")) as container:   # the annotated video decodes
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == FRAMES and decoded[0].shape == (64, 96, 3)
    assert not (out / "videos" / "empty.mp4").exists()


def test_the_onnx_backend_detects_what_the_torch_backend_detects(inputs, tmp_path):
    root, model_file, data = inputs
    onnx_path = export_onnx(Predictor.load(model_file), tmp_path / "model.onnx", 128, 128)
    runs = {}
    for backend, model in (("torch", model_file), ("onnx", onnx_path)):
        out = tmp_path / backend
        assert predict.main(["--checkpoint", str(model), str(data / "a.png"), str(data / "nested" / "b.jpg"),
                             "--out", str(out), "--score-thr", "0.0", "--no-draw"]) == 0
        runs[backend] = json.loads((out / "detections.json").read_text())
    for t, o in zip(runs["torch"], runs["onnx"]):
        assert len(t["detections"]) == 100
        assert [d["label"] for d in t["detections"]] == [d["label"] for d in o["detections"]]
        assert np.abs(np.array([d["box_xyxy"] for d in t["detections"]]) -
                      np.array([d["box_xyxy"] for d in o["detections"]])).max() <= 0.02
    assert predict.main(["--checkpoint", str(onnx_path), "--backend", "torch", str(data / "a.png"),
                         "--out", str(tmp_path / "x")]) == 2
    assert predict.main(["--checkpoint", str(model_file), str(tmp_path / "nothing-here"),
                         "--out", str(tmp_path / "y")]) == 2
