"""Image files with torchvision.io: decoding JPEG / PNG (grayscale / RGBA / palette -> RGB uint8), writing JPEG."""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, encode_jpeg, read_file, write_file



@contextlib.contextmanager
def _quiet_codec_deprecation():
    """torchvision 0.29 deprecates its image codecs (for TorchCodec) and warns on every call; they
    are still the codecs this project uses (no extra dependency), so the notice is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                                category=DeprecationWarning)
        yield


class BadImageError(RuntimeError):
    """An image file is missing or cannot be decoded; ``path`` names the file."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"bad image {path}: {reason}")
        self.path = str(path)
        self.reason = reason


def read_image_rgb(path: str | Path) -> Tensor:
    """Decode an image file to a ``[3, H, W]`` uint8 RGB tensor.

    Grayscale is replicated to 3 channels, the alpha channel of RGBA is dropped.
    Raises :class:`BadImageError` naming the file when it is missing, empty or undecodable.
    """
    path = Path(path)
    if not path.is_file():
        raise BadImageError(path, "file not found")
    try:
        with _quiet_codec_deprecation():
            data = read_file(str(path))
    except (OSError, RuntimeError) as e:
        raise BadImageError(path, f"cannot read: {e}") from e
    if data.numel() == 0:
        raise BadImageError(path, "file is empty")
    try:
        with _quiet_codec_deprecation():
            image = decode_image(data, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as e:
        raise BadImageError(path, f"cannot decode: {e}") from e
    if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        raise BadImageError(path, f"decoded to an unexpected tensor {tuple(image.shape)} {image.dtype}")
    return image


def write_jpeg(path: str | Path, image: Tensor, quality: int = 92) -> None:
    """Write a ``[3, H, W]`` uint8 RGB tensor as a JPEG file."""
    with _quiet_codec_deprecation():
        write_file(str(path), encode_jpeg(image, quality=quality))
