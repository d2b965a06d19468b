"""Image files with torchvision.io: decoding JPEG / PNG to RGB uint8, writing JPEG.

Decoded: 8-bit and 16-bit PNG (gray, gray + alpha, RGB, RGBA, palette; 16 bits scaled to 8),
JPEG (gray, RGB, CMYK). EXIF orientation is not applied: pixels stay as stored, which is the
convention of COCO (its width / height and boxes refer to the stored pixels). An image larger
than :data:`MAX_IMAGE_PIXELS` is refused from its header, before any pixel is decoded.
"""
from __future__ import annotations

import contextlib
import re
import struct
import warnings
from pathlib import Path

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, encode_jpeg, read_file, write_file

from codetr.errors import CodetrError

# Pillow's decompression-bomb limit: a larger image is more likely an attack or a mistake than a photo
MAX_IMAGE_PIXELS = 178_956_970


@contextlib.contextmanager
def _quiet_codec_deprecation():
    """torchvision 0.29 deprecates its image codecs (for TorchCodec) and warns on every call; they
    are still the codecs this project uses (no extra dependency), so the notice is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                                category=DeprecationWarning)
        yield


class BadImageError(CodetrError, RuntimeError):
    """An image file is missing or cannot be decoded; ``path`` names the file."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"bad image {path}: {reason}")
        self.path = str(path)
        self.reason = reason


def header_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG or JPEG header without decoding; None for other formats."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 9 <= len(data):   # walk the JPEG segments to a start-of-frame marker
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:          # fill byte
            pos += 1
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        pos += 2 + length
    return None


def _codec_reason(error: Exception) -> str:
    """torchvision's message without its C++ source location (``decode_jpeg, /path/x.cpp:171, ...``)."""
    return re.sub(r"^\w+(\(\))?, \S+\.cpp:\d+, ", "", str(error)).strip()


def read_image_rgb(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Tensor:
    """Decode an image file to a ``[3, H, W]`` uint8 RGB tensor.

    Grayscale is replicated to 3 channels, alpha is dropped, palettes are applied, 16-bit
    samples are scaled to 8 bits (``round(v / 257)``). Raises :class:`BadImageError` naming the
    file when it is missing, empty, undecodable (truncated, not an image) or larger than
    ``max_pixels``.
    """
    path = Path(path)
    if not path.is_file():
        raise BadImageError(path, "file not found")
    if path.stat().st_size == 0:
        raise BadImageError(path, "file is empty")
    try:
        with _quiet_codec_deprecation():
            data = read_file(str(path))
    except (OSError, RuntimeError) as e:
        raise BadImageError(path, f"cannot read: {_codec_reason(e)}") from e
    if data.numel() == 0:
        raise BadImageError(path, "file is empty")
    size = header_size(data[:262144].numpy().tobytes())
    if size is not None and size[0] * size[1] > max_pixels:
        raise BadImageError(path, f"{size[0]}x{size[1]} pixels ({size[0] * size[1] / 1e6:.0f} MP) is above the "
                                  f"limit of {max_pixels / 1e6:.0f} MP (codetr.data.image_io.MAX_IMAGE_PIXELS)")
    try:
        with _quiet_codec_deprecation():
            image = decode_image(data, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as e:
        raise BadImageError(path, f"cannot decode: {_codec_reason(e)}") from e
    if image.dtype == torch.uint16:   # 16-bit PNG
        image = image.to(torch.int32).add_(128).div_(257, rounding_mode="floor").to(torch.uint8)
    if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        raise BadImageError(path, f"decoded to an unexpected tensor {tuple(image.shape)} {image.dtype}")
    return image


def write_jpeg(path: str | Path, image: Tensor, quality: int = 92) -> None:
    """Write a ``[3, H, W]`` uint8 RGB tensor as a JPEG file."""
    with _quiet_codec_deprecation():
        write_file(str(path), encode_jpeg(image, quality=quality))
