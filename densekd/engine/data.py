"""Data loading that resumes exactly: a sharded, resumable batch sampler and per-sample seeding.

Every sample is loaded under its own seed, derived from (run seed, epoch, position), so random
augmentations do not depend on the number of workers, on which worker loads a sample or on where a run was
resumed; the main process's RNG streams are left untouched.
"""
from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class SeededDataset(Dataset):
    """Wraps a dataset; items are requested as ``(index, seed)`` and loaded with python/numpy/torch seeded."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % (2**32))
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class ResumableBatchSampler(Sampler):
    """Batches of ``(index, seed)`` for one rank: each epoch a seeded permutation (as DistributedSampler:
    padded to a multiple of the world size, then every ``num_replicas``-th index), cut into full batches
    (``drop_last``). ``set_position(epoch, batch)`` starts the next iteration there."""

    def __init__(self, n: int, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True) -> None:
        self.n, self.batch_size = n, batch_size
        self.num_replicas, self.rank, self.seed, self.shuffle = num_replicas, rank, seed, shuffle
        self.per_rank = -(-n // num_replicas)
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return self.per_rank // self.batch_size

    def set_position(self, epoch: int, batch: int) -> None:
        self.epoch, self.start = epoch, batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist() if self.shuffle else list(range(self.n))
        total = self.per_rank * self.num_replicas
        order = (order * (total // max(self.n, 1) + 1))[:total]
        mine = order[self.rank : total : self.num_replicas]
        for b in range(self.start, len(self)):
            batch = []
            for j in range(b * self.batch_size, (b + 1) * self.batch_size):
                pos = j * self.num_replicas + self.rank  # position in the global epoch order
                batch.append((mine[j], (self.seed * 1_000_003 + self.epoch * 100_003 + pos) % (2**63)))
            yield batch


class ShardSampler(Sampler):
    """Evaluation: this rank's indices ``rank::world`` (no padding, so no duplicated images)."""

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.indices = list(range(rank, n, num_replicas))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)
