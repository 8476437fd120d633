"""Mix several data sources (e.g. real manifests and synthesis) in one resumable stream.

``MixedDataModule`` (``conf/data/mixed.yaml``) chooses, for batch ``k``, a source by a
draw seeded from ``(seed, rank, k)`` with probabilities proportional to ``weights``, and
yields that source's batch ``k`` (each source's batch ``k`` is itself a pure function of
``(seed, rank, k)``). So the mixture is deterministic, differs between ranks, is split
round-robin between dataloader workers like any :class:`~prism.data.stream.BatchStream`,
and resumes exactly from ``batches_consumed``. Every batch is whole and from one source,
so sources may carry extra keys (synthetic ``labels``); they must agree on ``num_views``
and ``crop_size`` (checked) because the model sees both.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch

from prism.data.stream import BatchStream, StreamDataModule, stream_seed

log = logging.getLogger(__name__)


class MixedStream(BatchStream):
    """Batch ``k`` = batch ``k`` of the source drawn for ``k``.

    Args:
        streams: source name -> its stream (built with the same seed, rank and start).
        weights: source name -> relative weight (> 0 for at least one).
        seed, rank, start, num_batches: see :class:`~prism.data.stream.BatchStream`.
        source_key: when set, each batch gets this key holding the source's name.
    """

    def __init__(
        self,
        streams: Mapping[str, BatchStream],
        weights: Mapping[str, float],
        seed: int = 0,
        rank: int = 0,
        start: int = 0,
        num_batches: int | None = None,
        source_key: str | None = "source",
    ):
        super().__init__(seed, rank, start, num_batches)
        self.names = sorted(streams)
        self.streams = dict(streams)
        self.probabilities = torch.tensor([float(weights[n]) for n in self.names], dtype=torch.float64)
        self.probabilities /= self.probabilities.sum()
        self.source_key = source_key

    def source_for(self, index: int) -> str:
        """The source of batch ``index`` (a pure function of seed, rank and index)."""
        generator = torch.Generator().manual_seed(stream_seed(self.seed, self.rank, index, salt="mixed-source"))
        return self.names[int(torch.multinomial(self.probabilities, 1, generator=generator))]

    def make_batch(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        name = self.source_for(index)
        stream = self.streams[name]
        batch = stream.make_batch(index, stream.generator_for(index))
        if self.source_key:
            batch[self.source_key] = name
        return batch


class MixedDataModule(StreamDataModule):
    """A weighted mixture of :class:`~prism.data.stream.StreamDataModule` sources.

    Args:
        sources: name -> datamodule (Hydra instantiates them from ``sources.<name>``).
        weights: name -> relative weight; sources missing here get weight 1; 0 disables.
        seed: run seed (the sources' own seeds are not used: every stream is built from this one).
        num_workers: dataloader worker processes.
        val_batches: validation batches per validation run.
        batch_size, crop_size, num_views: optional; when given, every source must use these values.
    """

    def __init__(
        self,
        sources: Mapping[str, StreamDataModule],
        weights: Mapping[str, float] | None = None,
        seed: int = 0,
        num_workers: int = 0,
        val_batches: int = 2,
        batch_size: int | None = None,
        crop_size: list[int] | tuple[int, int, int] | None = None,
        num_views: int | None = None,
    ):
        super().__init__(seed=seed, num_workers=num_workers, val_batches=val_batches)
        if not sources:
            raise ValueError("MixedDataModule needs at least one source under data.sources.")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(sources))
        if unknown:
            raise ValueError(f"data.weights names {unknown}, which are not sources; sources are {sorted(sources)}.")
        self.sources = {n: s for n, s in sources.items() if float(weights.get(n, 1.0)) > 0}
        self.weights = {n: float(weights.get(n, 1.0)) for n in self.sources}
        if not self.sources or any(w < 0 for w in weights.values()):
            raise ValueError(f"data.weights must be >= 0 with at least one > 0, got {weights}.")
        expected = {"batch_size": batch_size, "crop_size": None if crop_size is None else tuple(int(c) for c in crop_size), "num_views": num_views}
        for attribute, value in expected.items():
            found = {n: _attribute(s, attribute) for n, s in self.sources.items()}
            known = {n: v for n, v in found.items() if v is not None}
            if value is not None:
                known["mixed"] = value
            if len(set(known.values())) > 1:
                raise ValueError(f"Sources disagree on {attribute}: {known}. Set data.{attribute} once and interpolate it into each source.")
        self.batch_size = batch_size

    def prepare_data(self) -> None:
        for source in self.sources.values():
            source.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        for source in self.sources.values():
            source.trainer = self.trainer
            source.setup(stage)

    def build_stream(self, seed: int, rank: int, start: int, num_batches: int | None, split: str) -> MixedStream:
        streams = {n: s.build_stream(seed, rank, start, num_batches, split) for n, s in self.sources.items()}
        return MixedStream(streams, self.weights, seed=seed, rank=rank, start=start, num_batches=num_batches)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        batch = super().on_after_batch_transfer(batch, dataloader_idx)
        # sources that finish batches on the device (synthesis with generate_on=device) do it here
        name = batch.get("source") if isinstance(batch, dict) else None
        source = self.sources.get(name) if name else None
        if source is not None and type(source).on_after_batch_transfer is not StreamDataModule.on_after_batch_transfer:
            batches_consumed = source.batches_consumed
            batch = source.on_after_batch_transfer(batch, dataloader_idx)
            source.batches_consumed = batches_consumed  # the mixture counts batches, not its sources
        return batch


def _attribute(source: Any, name: str) -> Any:
    value = getattr(source, name, None)  # sources without the attribute are not checked
    if name == "crop_size" and value is not None:
        value = tuple(int(c) for c in value)
    return value
