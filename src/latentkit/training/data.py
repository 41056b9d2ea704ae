"""The trainer's stream of batches: endless, shuffled per epoch, sharded across processes,
and resumable at the exact batch (its position is part of every checkpoint)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from latentkit.training.distributed import DistributedInfo, ResumableSampler

__all__ = ["BatchStream"]


class BatchStream:
    """Batches of ``batch_size`` items of ``dataset`` (incomplete ones dropped), epoch after
    epoch; ``epoch`` and ``batch_in_epoch`` (batches of the current epoch consumed) say where
    it is, and setting them before iterating continues from there."""

    def __init__(
        self,
        dataset: torch.utils.data.Dataset[Any],
        *,
        batch_size: int,
        info: DistributedInfo,
        shuffle: bool,
        seed: int,
        num_workers: int,
        collate_fn: Callable[[list[Any]], Any],
        pin_memory: bool,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.info = info
        self.seed = seed
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.pin_memory = pin_memory
        self.sampler = ResumableSampler(dataset, info=info, shuffle=shuffle, seed=seed)
        self.epoch = 0
        self.batch_in_epoch = 0

    def __iter__(self) -> Iterator[Any]:
        while True:
            self.sampler.set_epoch(self.epoch, start=self.batch_in_epoch * self.batch_size)
            set_epoch = getattr(self.dataset, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(self.epoch)
            # A generator of its own, so creating the loader (which draws worker seeds) never
            # touches the global RNG: resuming mid-epoch leaves the RNG streams unchanged.
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            loader = DataLoader(
                self.dataset, batch_size=self.batch_size, sampler=self.sampler, drop_last=True,
                num_workers=self.num_workers, collate_fn=self.collate_fn, generator=gen,
                pin_memory=self.pin_memory,
            )
            started_at = self.batch_in_epoch
            for batch in loader:
                self.batch_in_epoch += 1
                yield batch
            if started_at == 0 and self.batch_in_epoch == 0:
                raise ValueError(
                    f"the dataset yields no full batch: {len(self.dataset)} items "  # type: ignore[arg-type]
                    f"for {self.info.world_size} process(es) at batch_size {self.batch_size}"
                )
            self.epoch += 1
            self.batch_in_epoch = 0
