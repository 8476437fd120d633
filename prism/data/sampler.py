"""Multi-sequence subject sampling from a preprocessed store.

Each batch element is drawn in four steps, all from the batch's ``torch.Generator``:

1. a dataset, with probability proportional to ``n_subjects ** alpha`` (alpha = 1: every
   subject equally likely, huge studies dominate; alpha = 0: every dataset equally likely;
   default 0.5 balances small studies against huge ones);
2. a subject of that dataset, uniformly; then one of its grids (a session's co-registered
   volumes), uniformly;
3. up to V of that grid's volumes in random order, distinct sequence types first; missing
   views are zeros with ``view_present`` False;
4. one crop window, shared by the views: the crop is voxel-aligned across sequences.
   Windows larger than the volume are zero-padded at a random offset.

Distributed training needs no sampler: rank ``r`` draws batch ``k`` from the seed
``(seed, r, k)`` (:mod:`prism.data.stream`), so ranks see independent random draws.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from prism.data.store import open_array
from prism.data.stream import BatchStream
from prism.sequences import ACQUISITION_PARAMETERS, SEQUENCE_TYPES

log = logging.getLogger(__name__)


@dataclass
class SamplingTable:
    """Everything the sampler needs, as plain arrays (cheap to send to dataloader workers).

    Attributes:
        files: absolute ``.npy`` path per volume (N).
        shapes: int64 ``[N, 3]`` stored shape per volume.
        sequence_ids: int64 ``[N]`` (-1 unknown).
        acq_params: float32 ``[N, P]`` (0 where unknown); acq_present: bool ``[N, P]``.
        groups: per grid, the int64 indices of its volumes (same shape, voxel-aligned).
        subject_groups: per subject, the indices of its grids.
        subject_names: per subject, ``'<dataset>/<subject>'``.
        dataset_names: per dataset, its name; dataset_subjects: per dataset, its subject indices.
    """

    files: list[str]
    shapes: np.ndarray
    sequence_ids: np.ndarray
    acq_params: np.ndarray
    acq_present: np.ndarray
    groups: list[np.ndarray]
    subject_groups: list[np.ndarray]
    subject_names: list[str]
    dataset_names: list[str]
    dataset_subjects: list[np.ndarray]

    def dataset_weights(self, alpha: float) -> np.ndarray:
        """Probability of each dataset: ``n_subjects ** alpha``, normalised."""
        counts = np.array([len(s) for s in self.dataset_subjects], dtype=np.float64)
        weights = counts**alpha
        return weights / weights.sum()

    def __len__(self) -> int:
        return len(self.files)


def build_table(volumes: pd.DataFrame) -> SamplingTable:
    """Group store volumes into grids, subjects and datasets.

    Args:
        volumes: one row per stored volume with columns ``file`` (absolute), ``shape``
            ('XxYxZ'), ``grid_id``, ``dataset``, ``subject``, ``sequence`` and the
            acquisition parameter columns (NaN unknown).

    Raises:
        ValueError: no volumes, or a grid whose volumes differ in shape (a corrupt store).
    """
    if volumes.empty:
        raise ValueError("No preprocessed volumes to sample from: the manifest selects none, or all failed QC / preprocessing.")
    volumes = volumes.sort_values(["dataset", "subject", "grid_id", "volume_id"]).reset_index(drop=True)
    shapes = np.array([[int(n) for n in s.split("x")] for s in volumes["shape"]], dtype=np.int64)
    acq = volumes[list(ACQUISITION_PARAMETERS)].to_numpy(dtype=np.float64)
    present = np.isfinite(acq)
    groups, subject_groups, subject_names, dataset_names, dataset_subjects = [], [], [], [], []
    for dataset, by_dataset in volumes.groupby("dataset", sort=True):
        subjects = []
        for subject, by_subject in by_dataset.groupby("subject", sort=True):
            grids = []
            for grid_id, by_grid in by_subject.groupby("grid_id", sort=True):
                index = by_grid.index.to_numpy(dtype=np.int64)
                if len({tuple(s) for s in shapes[index]}) != 1:
                    raise ValueError(f"Volumes of grid {grid_id} have different shapes; re-run `prism preprocess` on this store.")
                grids.append(len(groups))
                groups.append(index)
            subjects.append(len(subject_names))
            subject_groups.append(np.array(grids, dtype=np.int64))
            subject_names.append(f"{dataset}/{subject}")
        dataset_names.append(str(dataset))
        dataset_subjects.append(np.array(subjects, dtype=np.int64))
    return SamplingTable(
        files=list(volumes["file"]),
        shapes=shapes,
        sequence_ids=np.array([SEQUENCE_TYPES.index(s) if s in SEQUENCE_TYPES else -1 for s in volumes["sequence"]], dtype=np.int64),
        acq_params=np.where(present, acq, 0.0).astype(np.float32),
        acq_present=present,
        groups=groups,
        subject_groups=subject_groups,
        subject_names=subject_names,
        dataset_names=dataset_names,
        dataset_subjects=dataset_subjects,
    )


def split_subjects(names: list[str], val_fraction: float) -> np.ndarray:
    """Boolean mask of validation subjects: a stable hash of the name below ``val_fraction``."""
    values = [int.from_bytes(hashlib.blake2b(n.encode(), digest_size=8).digest(), "little") / 2**64 for n in names]
    return np.array(values) < val_fraction


class ManifestBatchStream(BatchStream):
    """Batches of aligned multi-sequence crops from a store (see module docstring).

    Args:
        table: the volumes to sample.
        batch_size: B. crop_size: (D, H, W) voxels. num_views: V.
        dataset_alpha: dataset weight exponent (weight = n_subjects ** alpha).
        seed, rank, start, num_batches: see :class:`prism.data.stream.BatchStream`.
        max_open_files: memory maps kept open per worker.
    """

    def __init__(
        self,
        table: SamplingTable,
        batch_size: int,
        crop_size: tuple[int, int, int],
        num_views: int,
        dataset_alpha: float = 0.5,
        seed: int = 0,
        rank: int = 0,
        start: int = 0,
        num_batches: int | None = None,
        max_open_files: int = 256,
    ):
        super().__init__(seed, rank, start, num_batches)
        self.table, self.batch_size, self.num_views = table, int(batch_size), int(num_views)
        self.crop_size = tuple(int(c) for c in crop_size)
        self.weights = torch.as_tensor(table.dataset_weights(dataset_alpha))
        self._cumulative = torch.cumsum(self.weights, 0)  # inverse-CDF draw: cheaper than torch.multinomial per element
        self.max_open_files = max_open_files
        self._arrays: OrderedDict[str, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"] = OrderedDict()  # memory maps are reopened in each worker
        return state

    def _array(self, volume: int) -> np.ndarray:
        path = self.table.files[volume]
        array = self._arrays.get(path)
        if array is None:
            array = open_array(path)
            self._arrays[path] = array
            if len(self._arrays) > self.max_open_files:
                self._arrays.popitem(last=False)
        else:
            self._arrays.move_to_end(path)
        return array

    def _randint(self, high: int, generator: torch.Generator) -> int:
        return int(torch.randint(high, (1,), generator=generator)) if high > 1 else 0

    def draw(self, generator: torch.Generator) -> tuple[int, list[int], tuple[int, int, int]]:
        """One element's draw: ``(subject index, volume indices, crop start)`` (start may be negative = padding)."""
        table = self.table
        dataset = min(int(torch.searchsorted(self._cumulative, torch.rand(1, dtype=torch.float64, generator=generator), right=True)), len(self.weights) - 1)
        subjects = table.dataset_subjects[dataset]
        subject = int(subjects[self._randint(len(subjects), generator)])
        grids = table.subject_groups[subject]
        group = table.groups[int(grids[self._randint(len(grids), generator)])]
        volumes = self._distinct_first([int(group[i]) for i in torch.randperm(len(group), generator=generator)])[: self.num_views]
        shape = table.shapes[volumes[0]]
        start = []
        for size, crop in zip(shape, self.crop_size):
            slack = int(size) - crop
            start.append(self._randint(slack + 1, generator) if slack >= 0 else -self._randint(-slack + 1, generator))
        return subject, volumes, tuple(start)  # type: ignore[return-value]

    def _distinct_first(self, volumes: list[int]) -> list[int]:
        """Reorder so that the first views have distinct sequence types (unknown ones count as distinct)."""
        seen: set[int] = set()
        first, repeats = [], []
        for volume in volumes:
            sequence = int(self.table.sequence_ids[volume])
            (repeats if sequence in seen else first).append(volume)
            if sequence >= 0:
                seen.add(sequence)
        return first + repeats

    def read_crop(self, volume: int, start: tuple[int, int, int], out: torch.Tensor) -> None:
        """Copy the window at ``start`` of ``volume`` into ``out`` (float32 ``[D, H, W]``, zeros outside).

        The float16 window is copied as is and converted by torch (numpy's float16 -> float32
        cast is several times slower).
        """
        array = self._array(volume)
        source, target = [], []
        for begin, crop, size in zip(start, self.crop_size, array.shape):
            low, high = max(begin, 0), min(begin + crop, size)
            source.append(slice(low, high))
            target.append(slice(low - begin, high - begin))
        window = torch.from_numpy(np.array(array[tuple(source)], order="C"))  # one copy out of the memory map
        if tuple(window.shape) != self.crop_size:
            out.zero_()  # padding around a window larger than the volume
        out[tuple(target)].copy_(window)

    def make_batch(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        """Batch ``index``: ``image [B, V, D, H, W]`` and the rest of the batch contract."""
        b, v, p = self.batch_size, self.num_views, len(ACQUISITION_PARAMETERS)
        image = torch.empty(b, v, *self.crop_size)
        view_present = torch.zeros(b, v, dtype=torch.bool)
        sequence_id = torch.full((b, v), -1, dtype=torch.int64)
        acq_params = torch.zeros(b, v, p)
        acq_present = torch.zeros(b, v, p, dtype=torch.bool)
        subject_ids = []
        for i in range(b):
            subject, volumes, start = self.draw(generator)
            subject_ids.append(self.table.subject_names[subject])
            image[i, len(volumes) :].zero_()  # absent views
            for j, volume in enumerate(volumes):
                self.read_crop(volume, start, image[i, j])
                view_present[i, j] = True
                sequence_id[i, j] = int(self.table.sequence_ids[volume])
                acq_params[i, j] = torch.from_numpy(self.table.acq_params[volume])
                acq_present[i, j] = torch.from_numpy(self.table.acq_present[volume])
        return {
            "image": image,
            "view_present": view_present,
            "sequence_id": sequence_id,
            "acq_params": acq_params,
            "acq_present": acq_present,
            "subject_id": subject_ids,
        }
