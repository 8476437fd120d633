"""Deterministic, resumable streams of whole batches, shared by every data source.

Pretraining data is an endless stream: synthetic subjects are drawn without end and
real subjects are re-sampled with random crops. prism makes batch number ``k`` of a
run a pure function of ``(seed, rank, k)``:

* the stream is the same on every restart, so a preempted run resumes at exactly the
  batch it stopped at (the datamodule checkpoints how many batches were consumed);
* ranks draw different batches (their seeds differ), and dataloader workers split the
  batch indices round-robin, which is the order ``DataLoader`` reads them back in;
* nothing depends on global RNG state.

A data source subclasses :class:`BatchStream` and implements ``make_batch``; its
datamodule subclasses :class:`StreamDataModule` and implements ``build_stream``.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Any, Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info


def stream_seed(seed: int, rank: int, index: int, salt: str = "") -> int:
    """A 63-bit seed for batch ``index`` of ``rank``: stable across runs and platforms."""
    digest = hashlib.blake2b(f"{seed}:{rank}:{index}:{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class BatchStream(IterableDataset, ABC):
    """An endless (or ``num_batches``-long) stream of whole batches.

    Args:
        seed: run seed.
        rank: global rank of this process (distinct ranks give distinct streams).
        start: index of the first batch to yield (set on resume).
        num_batches: stop after this index (exclusive); ``None`` streams forever.
    """

    def __init__(self, seed: int = 0, rank: int = 0, start: int = 0, num_batches: int | None = None):
        super().__init__()
        self.seed, self.rank, self.start, self.num_batches = int(seed), int(rank), int(start), num_batches

    @abstractmethod
    def make_batch(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        """Return batch ``index`` (see ``prism.data.batch``), drawing randomness only from ``generator``."""

    def generator_for(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(stream_seed(self.seed, self.rank, index))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        index = self.start + worker
        while self.num_batches is None or index < self.num_batches:
            yield self.make_batch(index, self.generator_for(index))
            index += workers


class StreamDataModule(L.LightningDataModule, ABC):
    """A datamodule over :class:`BatchStream` s that checkpoints its position.

    Lightning saves ``state_dict()`` in every checkpoint and calls ``load_state_dict``
    on resume, so the train stream restarts at the first batch not yet trained on.
    Validation streams always start at 0 with a fixed seed, so validation sees the
    same batches in every epoch and every run.

    Args:
        seed: run seed (the train stream's; validation uses ``seed + 1_000_003``).
        num_workers: dataloader worker processes.
        val_batches: number of validation batches per validation run (0 disables).
    """

    def __init__(self, seed: int = 0, num_workers: int = 0, val_batches: int = 2):
        super().__init__()
        self.seed, self.num_workers, self.val_batches = int(seed), int(num_workers), int(val_batches)
        self.batches_consumed = 0

    @abstractmethod
    def build_stream(self, seed: int, rank: int, start: int, num_batches: int | None, split: str) -> BatchStream:
        """Return the stream for ``split`` ("train" or "val")."""

    def _loader(self, stream: BatchStream) -> DataLoader:
        # batch_size=None: streams yield whole batches. persistent workers keep per-worker state alive.
        return DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )

    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.build_stream(self.seed, self.rank, self.batches_consumed, None, "train"))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.build_stream(self.seed + 1_000_003, self.rank, 0, self.val_batches, "val"))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training:
            self.batches_consumed += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"batches_consumed": self.batches_consumed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches_consumed = int(state_dict.get("batches_consumed", 0))
