"""The deployable detector: images in, detections in the pixels of each image out.

    predictor = Predictor.from_checkpoint("runs/NAME/checkpoint_.../")   # a training checkpoint
    predictor.save("deployable.pt")                                      # only what inference needs
    predictor = Predictor.load("deployable.pt")
    predictor([jpeg_bytes, array_hwc_uint8, tensor_chw_uint8], score_threshold=0.3)
    # -> per image {"boxes": [k, 4] float32 xyxy in pixels of that image, "scores": [k],
    #               "labels": [k] int64 in [0, num_classes), "label_names": k class names}

The model is ``model.for_inference()`` (no auxiliary heads, no positive-query branch: a
Deformable-DETR); each image gets the config's evaluation resize (``data.augment.eval_scale`` /
``eval_max_size``) and its boxes are scaled back to the image as given. A deployable file is a
``torch.save`` dict (``weights_only`` loadable)::

    {"format": "codetr-deployable/1", "config": to_dict(cfg) with model.aux_heads = [],
     "num_classes": int, "category_names": [...], "model": state_dict of the deployable model}
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

DEPLOYABLE_FORMAT = "codetr-deployable/1"


def decode_image(data: bytes | bytearray | memoryview) -> Tensor:
    """Encoded image file bytes (JPEG, PNG, ...) -> ``[3, H, W]`` uint8 RGB (gray replicated, alpha dropped)."""
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as _decode

    raw = bytes(data)
    if not raw:
        raise ValueError("empty image bytes")
    try:
        with warnings.catch_warnings():   # torchvision 0.29's codec deprecation notice (see codetr.data.image_io)
            warnings.simplefilter("ignore", DeprecationWarning)
            return _decode(torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"cannot decode the image bytes ({len(raw)} bytes, starting {raw[:8]!r}): {e}") from e


def to_image_tensor(image: Any) -> Tensor:
    """One image as ``[3, H, W]`` uint8 RGB.

    Accepts encoded file bytes, a NumPy array ``[H, W, 3]`` (RGB; ``[H, W]`` gray and ``[H, W, 4]``
    RGBA also) of uint8, or a torch uint8 tensor ``[3, H, W]`` (the torchvision convention).
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"an image array must be uint8 (0-255), got {image.dtype}")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"an image array must be [H, W, 3] RGB (or [H, W] / [H, W, 4]), got {image.shape}")
        return torch.from_numpy(np.ascontiguousarray(image[:, :, :3])).permute(2, 0, 1).contiguous()
    if isinstance(image, Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"an image tensor must be uint8 [3, H, W], got {image.dtype} {tuple(image.shape)}")
        return image
    raise TypeError(f"an image must be encoded file bytes, a uint8 array [H, W, 3] or a uint8 tensor [3, H, W], "
                    f"got {type(image).__name__}")


class Predictor:
    """The deployable model with its evaluation resize and class names (see the module docstring)."""

    def __init__(self, model: nn.Module, cfg, category_names: Sequence[str], device: str | torch.device = "cpu"):
        from codetr.data import build_eval_transforms

        self.model = model.eval().to(device)
        self.cfg = cfg
        self.category_names = list(category_names)
        self.device = torch.device(device)
        self.transform = build_eval_transforms(cfg.data.augment)

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    # ------------------------------------------------------------------ building

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> "Predictor":
        """From a training checkpoint (folder or ``checkpoint.pt``): its model, made deployable."""
        from codetr.engine import load_checkpoint

        return cls.from_training_state(load_checkpoint(path), device)

    @classmethod
    def from_training_state(cls, state: dict[str, Any], device: str | torch.device = "cpu") -> "Predictor":
        """From a loaded training checkpoint dict (``codetr.engine.load_checkpoint``)."""
        from codetr import build_model
        from codetr.config import config_from_dict

        cfg = config_from_dict(state["config"])
        model = build_model(cfg, num_classes=state.get("num_classes"))
        model.load_state_dict(state["model"])
        names = list(state.get("category_names") or [str(i) for i in range(model.num_classes)])
        return cls(model.for_inference(), cfg, names, device)

    def deployable_state(self) -> dict[str, Any]:
        from codetr.config import to_dict

        config = to_dict(self.cfg)
        config["model"]["aux_heads"] = []
        return {"format": DEPLOYABLE_FORMAT, "config": config, "num_classes": self.num_classes,
                "category_names": self.category_names,
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.deployable_state(), path)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "Predictor":
        """From a file written by :meth:`save`."""
        from codetr import build_model
        from codetr.config import config_from_dict

        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != DEPLOYABLE_FORMAT:
            raise ValueError(f"{path} is not a {DEPLOYABLE_FORMAT} file")
        cfg = config_from_dict(state["config"])
        # for_inference(): a Co-DINO's deployable model has no denoising label embedding either
        model = build_model(cfg, num_classes=state["num_classes"]).for_inference()
        model.load_state_dict(state["model"])
        return cls(model, cfg, state["category_names"], device)

    # ------------------------------------------------------------------ inference

    @torch.inference_mode()
    def detect(self, image: Any, score_threshold: float = 0.0) -> dict[str, Any]:
        """Detections of one image (see :func:`to_image_tensor` for what an image may be)."""
        raw = to_image_tensor(image)
        height, width = int(raw.shape[1]), int(raw.shape[2])
        if height < 1 or width < 1:
            raise ValueError(f"an image must have pixels, got {height}x{width}")
        resized = self.transform(raw)                        # [3, h, w] float in [0, 1]
        det = self.model([resized.to(self.device)])[0]
        scale = torch.tensor([width / resized.shape[2], height / resized.shape[1]] * 2)
        keep = det["scores"].cpu() >= score_threshold
        labels = det["labels"].cpu()[keep]
        return {"boxes": det["boxes"].cpu()[keep] * scale, "scores": det["scores"].cpu()[keep], "labels": labels,
                "label_names": [self.label_name(int(i)) for i in labels]}

    def label_name(self, label: int) -> str:
        return self.category_names[label] if 0 <= label < len(self.category_names) else str(label)

    def __call__(self, images: Sequence[Any], score_threshold: float = 0.0) -> list[dict[str, Any]]:
        """Detections of every image of ``images``, one at a time (each keeps its own size)."""
        return [self.detect(image, score_threshold) for image in images]
