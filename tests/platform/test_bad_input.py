"""Bad input, systematically: every malformed annotation file, image, config and sweep file gets either the
correct handling or ONE named error (a ``CodetrError``: one line, naming the file / key / id and what is
wrong, picklable so that it reaches the driver whole from a Ray worker). Real files on disk throughout.
"""
from __future__ import annotations

import copy
import json
import logging
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from codetr.config import ConfigError, load_config
from codetr.data import BadImageError, CocoDetection, MissingImagesError, load_coco_annotations, read_image_rgb
from codetr.errors import CodetrError
from platform.sweep.spec import parse_sweep
from tests.datasets import coco_dict, write_dataset

REPO = Path(__file__).resolve().parents[2]


def _named(error: BaseException, *fragments: str) -> None:
    """The contract of a named error: its type, one line, the fragments, and it survives pickling."""
    assert isinstance(error, CodetrError), type(error)
    text = str(error)
    assert "\n" not in text.strip() or isinstance(error, MissingImagesError), text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == text


# ----------------------------------------------------------------------------- annotation files

def _edit(fn):
    data = coco_dict()
    fn(data)
    return data


def _set(path, value):
    def fn(data):
        node = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    return fn


def _pop(path):
    def fn(data):
        node = data
        for part in path[:-1]:
            node = node[part]
        node.pop(path[-1])
    return fn


ANNOTATION_ERRORS = [
    ("missing annotations", _pop(["annotations"]), "missing top-level field 'annotations'"),
    ("mistyped key", lambda d: d.update(annotation=d.pop("annotations")), "missing top-level field 'annotations'"),
    ("images not a list", _set(["images"], {"a": 1}), "top-level field 'images' must be a list"),
    ("image without file_name", _pop(["images", 0, "file_name"]), "image id 11 has no 'file_name' field"),
    ("width as text", _set(["images", 0, "width"], "80"), "image id 11: field 'width' must be int, got '80'"),
    ("negative height", _set(["images", 1, "height"], -64), "image id 5: field 'height' must be > 0, got -64"),
    ("NaN width", _set(["images", 1, "width"], float("nan")), "image id 5: field 'width' must be int, got nan"),
    ("duplicate image id", _set(["images", 1, "id"], 11), "duplicate image id 11"),
    ("duplicate annotation id", _set(["annotations", 1, "id"], 100), "duplicate annotation id 100"),
    ("unknown category", _set(["annotations", 0, "category_id"], 999),
     "annotation id 100: category_id 999 is not in 'categories'"),
    ("unknown image", _set(["annotations", 0, "image_id"], 999), "annotation id 100: image_id 999 is not in 'images'"),
    ("NaN in a box", _set(["annotations", 0, "bbox"], [10, float("nan"), 20, 15]),
     "annotation id 100: field 'bbox' must be finite numbers"),
    ("box of 3 numbers", _set(["annotations", 0, "bbox"], [10, 10, 20]), "annotation id 100: field 'bbox' must be [x, y, w, h]"),
    ("iscrowd 2", _set(["annotations", 0, "iscrowd"], 2), "annotation id 100: field 'iscrowd' must be 0 or 1"),
    ("area as text", _set(["annotations", 0, "area"], "big"), "annotation id 100: field 'area' must be number"),
    ("duplicate category", _set(["categories", 1, "id"], 7), "duplicate category id 7"),
    ("no categories", _set(["categories"], []), "'categories' is empty"),
    ("category id as text", _set(["categories", 0, "id"], "7"), "categories[0]: field 'id' must be int"),
]


@pytest.mark.parametrize("case, edit, message", ANNOTATION_ERRORS, ids=[c[0] for c in ANNOTATION_ERRORS])
def test_malformed_annotation_file_is_one_named_error(tmp_path, case, edit, message):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(_edit(edit)))
    with pytest.raises(CodetrError) as info:
        load_coco_annotations(path)
    _named(info.value, str(path), message)


@pytest.mark.parametrize("content, message", [("{not json", "not valid JSON"), ("[1, 2]", "top level must be a JSON object")])
def test_an_annotation_file_that_is_not_a_coco_object(tmp_path, content, message):
    path = tmp_path / "ann.json"
    path.write_text(content)
    with pytest.raises(CodetrError) as info:
        load_coco_annotations(path)
    _named(info.value, str(path), message)


def test_boxes_outside_or_negative_are_clipped_or_dropped_by_annotation_id(tmp_path, caplog):
    data = coco_dict()
    data["annotations"][0]["bbox"] = [10, 10, -20, 15]            # negative width: dropped
    data["annotations"][1]["bbox"] = [500, 500, 10, 10]           # wholly outside its 80x60 image: dropped
    ann_file, img_dir = write_dataset(tmp_path, data)
    with caplog.at_level(logging.WARNING, logger="codetr.data.coco"):
        ds = CocoDetection(ann_file, img_dir)
    assert ds.num_degenerate_boxes == 3                            # + the dataset's own zero-width box (105)
    assert "annotation id 100, 101, 105" in caplog.text and str(ann_file) in caplog.text
    sticking_out = ds.coco.anns[104]["bbox"]                       # [70, 50, 40, 40] in a 96x72 image
    assert sticking_out == [70, 50, 26, 22]


def test_images_named_but_missing_are_listed_or_skipped(tmp_path):
    ann_file, img_dir = write_dataset(tmp_path)
    (img_dir / "b.png").unlink()
    with pytest.raises(MissingImagesError) as info:
        CocoDetection(ann_file, img_dir, on_bad_image="error")
    _named(info.value, str(ann_file), str(img_dir / "b.png"))
    ds = CocoDetection(ann_file, img_dir, on_bad_image="skip")
    assert ds.missing_images == [str(img_dir / "b.png")] and 5 not in ds.image_ids


# ----------------------------------------------------------------------------- image files

def _png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit PNG (gray [H, W] or RGB [H, W, 3]) written by hand (Pillow cannot write 16-bit RGB)."""
    h, w = pixels.shape[:2]
    colour = 2 if pixels.ndim == 3 else 0
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (20, 30, 3)).astype(np.uint8)


def _jpeg_bytes(pixels, **kw):
    import io

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90, **kw)
    return out.getvalue()


def write_image(kind: str, path: Path) -> np.ndarray | None:
    """Write one kind of image file; returns the RGB pixels a correct decoder gives (None: an error)."""
    if kind == "zero-byte jpg":
        path.write_bytes(b"")
    elif kind == "truncated jpg":
        data = _jpeg_bytes(RNG.integers(0, 256, (200, 300, 3)).astype(np.uint8))
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated png":
        Image.fromarray(RNG.integers(0, 256, (200, 300, 3)).astype(np.uint8)).save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text named jpg":
        path.write_text("this is not an image\n")
    elif kind == "huge png header":
        _png16(path, np.zeros((1, 1), np.uint16))
        data = bytearray(path.read_bytes())
        data[16:24] = struct.pack(">II", 20000, 20000)          # 400 MP claimed: refused before decoding
        path.write_bytes(bytes(data))
    elif kind == "16-bit gray png":
        pixels = RNG.integers(0, 65536, (20, 30)).astype(np.uint16)
        _png16(path, pixels)
        gray = ((pixels.astype(np.int64) + 128) // 257).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    elif kind == "16-bit rgb png":
        pixels = RNG.integers(0, 65536, (20, 30, 3)).astype(np.uint16)
        _png16(path, pixels)
        return ((pixels.astype(np.int64) + 128) // 257).astype(np.uint8)
    elif kind == "palette png":
        Image.fromarray(RGB).convert("P").save(path)
        return np.asarray(Image.open(path).convert("RGB"))
    elif kind == "palette png with transparency":
        Image.fromarray(RGB).convert("P").save(path, transparency=0)
        return np.asarray(Image.open(path).convert("RGB"))
    elif kind == "cmyk jpg":
        Image.fromarray(RGB).convert("CMYK").save(path, quality=95)
        return np.asarray(Image.open(path).convert("RGB"))
    elif kind == "exif-rotated jpg":
        image = Image.fromarray(RGB)
        exif = image.getexif()
        exif[0x0112] = 6                                          # "rotate 90 CW to display"
        image.save(path, exif=exif, quality=95)
        return np.asarray(Image.open(path).convert("RGB"))        # as stored: Pillow does not rotate either
    elif kind == "large jpg":
        path.write_bytes(_jpeg_bytes(np.full((3000, 4000, 3), 90, np.uint8)))
        return np.full((3000, 4000, 3), 90, np.uint8)
    else:
        raise ValueError(kind)
    return None


IMAGE_CASES = [
    ("zero-byte jpg", "file is empty"),
    ("truncated jpg", "cannot decode: Image is incomplete or truncated"),
    ("truncated png", "cannot decode"),
    ("text named jpg", "cannot decode: Unsupported image file"),
    ("huge png header", "20000x20000 pixels (400 MP) is above the limit of 179 MP"),
    ("16-bit gray png", None), ("16-bit rgb png", None), ("palette png", None),
    ("palette png with transparency", None), ("cmyk jpg", None), ("exif-rotated jpg", None), ("large jpg", None),
]


@pytest.mark.parametrize("kind, message", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_image_files_decode_or_give_one_named_error(tmp_path, kind, message):
    path = tmp_path / ("img.png" if "png" in kind else "img.jpg")
    expected = write_image(kind, path)
    if message is not None:
        with pytest.raises(BadImageError) as info:
            read_image_rgb(path)
        _named(info.value, f"bad image {path}: ", message)
        assert "/__w/" not in str(info.value) and ".cpp" not in str(info.value)   # no codec source locations
        return
    image = read_image_rgb(path)
    assert image.dtype == torch.uint8 and image.shape == (3, *expected.shape[:2])   # EXIF: stored size, not rotated
    difference = (image.permute(1, 2, 0).numpy().astype(int) - expected.astype(int)).__abs__().max()
    assert difference <= (40 if kind == "cmyk jpg" else 0), difference          # CMYK: decoders differ slightly


def test_an_undecodable_image_in_a_dataset_names_file_and_id_or_is_skipped(tmp_path, caplog):
    ann_file, img_dir = write_dataset(tmp_path)
    (img_dir / "a.jpg").write_bytes(b"")
    strict = CocoDetection(ann_file, img_dir, on_bad_image="error")
    index = strict.image_ids.index(11)
    with pytest.raises(BadImageError) as info:
        strict[index]
    _named(info.value, str(img_dir / "a.jpg"), "file is empty (image id 11)")
    lenient = CocoDetection(ann_file, img_dir, on_bad_image="skip")
    with caplog.at_level(logging.WARNING, logger="codetr.data.coco"):
        _, target = lenient[lenient.image_ids.index(11)]
    assert target["image_id"] != 11 and lenient.num_skipped_images == 1
    assert "file is empty (image id 11); skipped" in caplog.text


def test_an_image_whose_size_differs_from_its_annotation_is_named(tmp_path):
    data = copy.deepcopy(coco_dict())
    data["images"][0]["width"] = 81
    ann_file, img_dir = write_dataset(tmp_path, data)
    ds = CocoDetection(ann_file, img_dir, on_bad_image="error")
    with pytest.raises(BadImageError) as info:
        ds.load_raw(ds.image_ids.index(11))
    _named(info.value, "a.jpg", "size 60x80 differs from the annotation file's 60x81 (image id 11)")


# ----------------------------------------------------------------------------- configs and sweep files

CONFIG_CASES = [
    ("invalid yaml", "model: [unclosed", [], "invalid YAML"),
    ("top-level list", "- 1\n- 2\n", [], "top level must be a mapping"),
    ("unknown key", "train:\n  lrr: 0.1\n", [], "unknown config key 'train.lrr' (did you mean 'lr'?)"),
    ("wrong type", "train:\n  epochs: many\n", [], "train.epochs: expected an integer, got 'many'"),
    ("out of range", "", ["train.lr=-1"], "train.lr: must be > 0"),
    ("not finite", "", ["train.lr=.inf"], "train.lr: expected a finite number, got inf"),
    ("bad override", "", ["train.lr"], "override 'train.lr' must look like key.sub=value"),
    ("unknown choice", "", ["train.on_nonfinite=maybe"], "train.on_nonfinite: 'maybe' is not one of ['error', 'skip']"),
    ("zero wait", "", ["platform.resource_wait_s=0"], "platform.resource_wait_s: must be > 0"),
    ("circular base", "_base_: self.yaml\n", [], "circular _base_ chain"),
]


@pytest.mark.parametrize("case, text, overrides, message", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_malformed_config_is_one_named_error(tmp_path, case, text, overrides, message):
    path = tmp_path / "self.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    _named(info.value, message)


SWEEP_CASES = [
    ("missing file", None, "sweep file not found"),
    ("invalid yaml", "search_space: {", "invalid YAML"),
    ("top-level list", "- 1\n", "top level must be a mapping"),
    ("no base", "search_space: {model.lambda1: {grid: [1.0]}}\n", "'base' (the config every trial starts from) is required"),
    ("unknown field", f"base: {REPO}/experiments/codetr_tiny.yaml\nsearchspace: {{}}\n", "unknown sweep field 'searchspace'"),
]


@pytest.mark.parametrize("case, text, message", SWEEP_CASES, ids=[c[0] for c in SWEEP_CASES])
def test_malformed_sweep_file_is_one_named_error(tmp_path, case, text, message):
    path = tmp_path / "sweep.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        parse_sweep(path)
    _named(info.value, message)


def test_the_driver_prints_a_bad_annotation_file_on_one_line(tmp_path):
    import os
    import subprocess
    import sys

    data = coco_dict()
    data["annotations"][0]["category_id"] = 999
    ann_file, img_dir = write_dataset(tmp_path, data)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    args = [sys.executable, "-m", "platform.train", "data.dataset=coco", f"data.train.ann_file={ann_file}",
            f"data.train.img_dir={img_dir}", f"data.val.ann_file={ann_file}", f"data.val.img_dir={img_dir}",
            f"platform.storage_path={tmp_path}/runs"]
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"data error: {ann_file}: annotation id 100: category_id 999 is not in 'categories'"]
