"""The two query heads: Deformable-DETR (:mod:`.deformable_detr`, two-stage, iterative box refinement,
mixed query selection) and DINO (:mod:`.dino`, with contrastive denoising queries from :mod:`.denoising`).
Both take the neck's maps and return the decoder's per-layer outputs; the shared encoder / decoder layers
are in :mod:`codetr.models.transformer`."""
from __future__ import annotations

from codetr.models.query_heads.deformable_detr import QueryHead, QueryHeadOutput
from codetr.models.query_heads.dino import DINOQueryHead

__all__ = ["DINOQueryHead", "QueryHead", "QueryHeadOutput"]
