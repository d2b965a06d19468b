"""Training batches of one orientation: mmdetection's (Distributed)GroupSampler.

Images are split into two groups, landscape (width > height) and the rest. Every epoch each group
is shuffled and padded (by repeating its own images) to a multiple of ``batch_size x
num_replicas``; the groups are concatenated, cut into blocks of ``batch_size``, the blocks
shuffled, and rank r takes the r-th contiguous share. Consecutive ``batch_size`` indices of a
rank therefore form a batch of one orientation, so padding to the batch's largest image wastes
little. Deterministic given (seed, epoch); ``set_epoch`` reshuffles.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def aspect_groups(sizes_hw: Sequence[tuple[int, int]]) -> list[int]:
    """Group id per image: 1 = landscape (w / h > 1), 0 = portrait or square."""
    return [1 if w / max(h, 1) > 1 else 0 for h, w in sizes_hw]


class GroupSampler(Sampler[int]):
    """Indices for ``DataLoader(batch_size=batch_size, sampler=this)``: batches of one aspect group.

    Args:
        groups: group id per dataset index (:func:`aspect_groups`).
        batch_size: images per batch and rank.
        num_replicas, rank: distributed workers (1, 0 without).
        seed: base seed; the epoch is added.
    """

    def __init__(self, groups: Sequence[int], batch_size: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.groups = list(groups)
        self.batch_size, self.num_replicas, self.rank, self.seed = batch_size, num_replicas, rank, seed
        self.epoch = 0
        block = batch_size * num_replicas
        self.group_sizes = [self.groups.count(g) for g in sorted(set(self.groups))]
        self.total_size = sum(math.ceil(n / block) * block for n in self.group_sizes)
        self.num_samples = self.total_size // num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        block = self.batch_size * self.num_replicas
        indices: list[int] = []
        for group in sorted(set(self.groups)):
            members = [i for i, x in enumerate(self.groups) if x == group]
            members = [members[j] for j in torch.randperm(len(members), generator=g).tolist()]
            padded = math.ceil(len(members) / block) * block
            indices += (members * math.ceil(padded / len(members)))[:padded]
        batches = [indices[k:k + self.batch_size] for k in range(0, len(indices), self.batch_size)]
        order = torch.randperm(len(batches), generator=g).tolist()
        indices = [i for b in order for i in batches[b]]
        start = self.num_samples * self.rank
        return iter(indices[start:start + self.num_samples])
