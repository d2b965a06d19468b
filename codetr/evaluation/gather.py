"""Collecting per-image results from every worker (torch.distributed when initialised)."""
from __future__ import annotations

from typing import Any, Generic, TypeVar

import torch.distributed as dist

V = TypeVar("V")


def distributed_rank_and_size() -> tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` without torch.distributed). A collective call.

    With the NCCL backend the current CUDA device must be set (``torch.cuda.set_device``).
    """
    _, world_size = distributed_rank_and_size()
    if world_size == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def merge_per_image(parts: list[dict[int, V]]) -> dict[int, V]:
    """Union of per-rank ``{image_id: result}`` dicts; an image seen on several ranks (the padding
    a DistributedSampler adds) is kept once, from the lowest rank. Sorted by image id."""
    merged: dict[int, V] = {}
    for part in parts:
        for image_id, value in part.items():
            merged.setdefault(int(image_id), value)
    return dict(sorted(merged.items()))


class PerImageGather(Generic[V]):
    """Per-image results recorded on each rank in ``self._per_image`` (``{image_id: result}``), gathered
    from every rank by :meth:`synchronize`. Subclasses start with :meth:`_start_gather`."""

    _per_image: dict[int, V]
    _synchronized: bool

    def _start_gather(self) -> None:
        """An empty record, not gathered yet."""
        self._per_image = {}
        self._synchronized = False

    def synchronize(self) -> None:
        """Gather every rank's images (a collective call the first time when torch.distributed is
        initialised; idempotent). Images seen on several ranks (DistributedSampler padding) are kept once."""
        if self._synchronized:
            return
        self._per_image = merge_per_image(all_gather_objects(self._per_image))
        self._synchronized = True
