"""Fine-tuning data from NIfTI files: cases, loading, cropping, and the datamodule every folder adapter shares.

A :class:`Case` is one subject: its sequences (files, or channels of one 4D file) and
its target (a label-map file, a class index, or regression values). Loading follows the
encoder's input conventions (what ``prism export`` records): RAS+ voxel axes, resampling
to ``spacing_mm`` (trilinear for images, nearest for label maps), per-volume percentile
intensity scaling. Training items are random ``crop_size`` windows (segmentation: half of
them centred on a foreground voxel); evaluation items are whole volumes for segmentation
(sliding-window inference) and a centred ``crop_size`` window otherwise.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import nibabel as nib
import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset

from prism.data.manifest import normalize_sequence_name
from prism.data.resample import canonical_grid, normalize_intensity, resample
from prism.finetune.task_spec import TaskSpec
from prism.sequences import NUM_ACQUISITION_PARAMETERS, SEQUENCE_TYPES

SPLITS = ("train", "val", "test")


class AdapterError(ValueError):
    """A dataset folder / table that cannot be used; the message names the case and the fix."""


@dataclass
class Image:
    """One sequence of a case: a NIfTI path and, for 4D files, the channel (Decathlon multi-modal)."""

    path: str
    channel: int | None = None


@dataclass
class Case:
    """One subject: sequence name -> :class:`Image` (None = absent), and its target."""

    subject_id: str
    images: dict[str, Image | None]
    label_path: str | None = None
    target: Any = None
    split: str = ""
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


def sequence_index(name: str) -> int:
    """Vocabulary id of a sequence name or alias (``t1ce`` etc. that are not in it: -1)."""
    canonical, _ = normalize_sequence_name(name)
    return SEQUENCE_TYPES.index(canonical) if canonical else -1


def header_shape(image: Image) -> tuple[int, ...]:
    """Spatial shape from the header (no voxels read)."""
    try:
        shape = nib.load(image.path).shape
    except FileNotFoundError as err:
        raise AdapterError(f"{image.path} does not exist (listed for this case); fix the path or remove the case.") from err
    return tuple(int(s) for s in shape[:3])


def check_case_shapes(case: Case) -> None:
    """Every image of a case and its label map must share one voxel grid.

    Raises:
        AdapterError: naming the case, the files and their shapes.
    """
    shapes = {name: header_shape(img) for name, img in case.images.items() if img is not None}
    if case.label_path is not None:
        shapes["label"] = header_shape(Image(case.label_path))
    if len(set(shapes.values())) > 1:
        detail = ", ".join(f"{name} {'x'.join(map(str, s))}" for name, s in shapes.items())
        raise AdapterError(
            f"Case {case.subject_id!r}: images and label have different shapes ({detail}). "
            f"Resample them onto one grid (e.g. the label's) before fine-tuning, or remove the case."
        )
    case.shapes = shapes


def assign_splits(cases: list[Case], val_fraction: float, test_fraction: float, seed: int) -> None:
    """Give cases without a split one, by a seeded hash of the subject id (stable when cases are added)."""
    free = sorted((c for c in cases if not c.split), key=lambda c: hashlib.sha256(f"{seed}:{c.subject_id}".encode()).hexdigest())
    n = len(free)
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 and n >= 3 else 0
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 and n >= 3 else 0
    for index, case in enumerate(free):
        case.split = "test" if index < n_test else "val" if index < n_test + n_val else "train"
    bad = sorted({c.split for c in cases} - set(SPLITS))
    if bad:
        raise AdapterError(f"Unknown split values {bad}; a split column may only hold {list(SPLITS)}.")
    if not any(c.split == "train" for c in cases):
        raise AdapterError(f"No training cases among {len(cases)}; lower val_fraction / test_fraction or add cases.")


def load_case(case: Case, sequences: list[str], spacing_mm: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(image [V, D, H, W] float32, present [V] bool, labels [D, H, W] int64 or None)`` in RAS+ at ``spacing_mm``."""
    reference = next(img for img in case.images.values() if img is not None)
    affine, shape = nib.load(reference.path).affine, header_shape(reference)
    spacing = (spacing_mm,) * 3 if spacing_mm else tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    grid = canonical_grid(affine, shape, spacing)
    views, present = [], []
    for name in sequences:
        image = case.images.get(name)
        if image is None:
            views.append(np.zeros(grid.shape, np.float32))
            present.append(False)
            continue
        nifti = nib.load(image.path)
        data = np.asarray(nifti.dataobj, dtype=np.float32)
        data = data[..., image.channel] if image.channel is not None else data.reshape(data.shape[:3])
        volume = resample(np.nan_to_num(data), nifti.affine, grid)
        views.append(normalize_intensity(volume)[0])
        present.append(True)
    labels = None
    if case.label_path is not None:
        nifti = nib.load(case.label_path)
        mapping = np.linalg.inv(nifti.affine) @ grid.affine
        data = np.asarray(nifti.dataobj).reshape(nifti.shape[:3])
        labels = ndimage.affine_transform(data, mapping[:3, :3], offset=mapping[:3, 3], output_shape=grid.shape, order=0, mode="constant", cval=0)
        labels = np.rint(labels).astype(np.int64)
    return np.stack(views), np.asarray(present), labels


def crop_window(shape: tuple[int, ...], size: tuple[int, int, int], rng: np.random.Generator | None, centre: np.ndarray | None = None) -> list[slice]:
    """A ``size`` window: random (``rng``), around ``centre``, or centred; centred with padding on axes shorter than it."""
    window = []
    for axis, (length, want) in enumerate(zip(shape, size)):
        if length <= want:
            start = (length - want) // 2
        else:
            if centre is not None:
                start = int(centre[axis]) - want // 2
            elif rng is not None:
                start = int(rng.integers(0, length - want + 1))
            else:
                start = (length - want) // 2
            start = min(max(start, 0), length - want)
        window.append(slice(start, start + want))
    return window


def take(array: np.ndarray, window: list[slice]) -> np.ndarray:
    """``array[..., window]`` with zero padding where the window leaves the volume."""
    spatial = array.shape[-3:]
    out = np.zeros(array.shape[:-3] + tuple(s.stop - s.start for s in window), array.dtype)
    src = tuple(slice(max(s.start, 0), min(s.stop, n)) for s, n in zip(window, spatial))
    dst = tuple(slice(a.start - s.start, a.stop - s.start) for a, s in zip(src, window))
    out[(..., *dst)] = array[(..., *src)]
    return out


class CaseDataset(Dataset):
    """Items of the batch contract from :class:`Case` s (loaded volumes are cached in memory)."""

    def __init__(self, cases: list[Case], task: TaskSpec, sequences: list[str], crop_size: tuple[int, int, int],
                 spacing_mm: float | None, train: bool, label_lookup: np.ndarray | None = None):
        self.cases, self.task, self.sequences = cases, task, sequences
        self.crop_size, self.spacing_mm, self.train = crop_size, spacing_mm, train
        self.label_lookup = label_lookup
        self._rng: np.random.Generator | None = None
        self.cache: dict[int, tuple] = {}
        self.sequence_ids = torch.tensor([sequence_index(s) for s in sequences], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.cases)

    def volumes(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        if index not in self.cache:
            image, present, labels = load_case(self.cases[index], self.sequences, self.spacing_mm)
            if labels is not None and self.label_lookup is not None:
                labels = remap_labels(labels, self.label_lookup, self.cases[index].subject_id)
            self.cache[index] = (image, present, labels)
        return self.cache[index]

    @property
    def rng(self) -> np.random.Generator:
        """Crop randomness, seeded from torch's seed (distinct per dataloader worker under seed_everything)."""
        if self._rng is None:
            self._rng = np.random.default_rng(torch.initial_seed() % 2**63)
        return self._rng

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, present, labels = self.volumes(index)
        whole = not self.train and self.task.kind == "segmentation"
        if not whole:
            centre = None
            if self.train and labels is not None and self.rng.random() < 0.5 and (labels > 0).any():
                foreground = np.argwhere(labels > 0)
                centre = foreground[self.rng.integers(len(foreground))]
            window = crop_window(image.shape[1:], self.crop_size, self.rng if self.train else None, centre)
            image = take(image, window)
            labels = take(labels, window) if labels is not None else None
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "view_present": torch.from_numpy(present.copy()),
            "sequence_id": torch.where(torch.from_numpy(present.copy()), self.sequence_ids, -1),
            "acq_params": torch.zeros(len(self.sequences), NUM_ACQUISITION_PARAMETERS),
            "acq_present": torch.zeros(len(self.sequences), NUM_ACQUISITION_PARAMETERS, dtype=torch.bool),
            "subject_id": self.cases[index].subject_id,
        }
        if self.task.kind == "segmentation":
            item["labels"] = torch.from_numpy(np.ascontiguousarray(labels))
        elif self.task.kind == "classification":
            item["target"] = torch.tensor(int(self.cases[index].target), dtype=torch.int64)
        else:
            mean, std = np.asarray(self.task.target_mean), np.asarray(self.task.target_std)
            item["target"] = torch.tensor((np.asarray(self.cases[index].target, float) - mean) / std, dtype=torch.float32)
        return item


def remap_labels(labels: np.ndarray, lookup: np.ndarray, subject_id: str) -> np.ndarray:
    """Label values -> class indices through ``lookup`` (-1 = value not declared)."""
    if labels.min() < 0 or labels.max() >= len(lookup) or (lookup[labels] < 0).any():
        found = sorted(int(v) for v in np.unique(labels))
        declared = [int(v) for v in np.flatnonzero(lookup >= 0)]
        raise AdapterError(f"Case {subject_id!r}: label values {found} include values outside the declared {declared}; "
                           f"list every value in label_values (data.label_values).")
    return lookup[labels]


class FolderTaskDataModule(L.LightningDataModule):
    """Shared body of the folder adapters: splits, checks, datasets and loaders.

    Subclasses implement :meth:`discover` returning the cases (with ``split`` where the
    layout fixes it) and the :class:`TaskSpec`.

    Args:
        crop_size: training window (and the sliding window of segmentation inference).
        spacing_mm: resample to this voxel size (use the encoder's, see ``prism export``); None keeps the files'.
        sequences: sequence names in view order (default: every sequence the layout has).
        batch_size, num_workers: loader settings (segmentation evaluation uses batch 1: whole volumes differ in size).
        val_fraction, test_fraction: share of cases without a fixed split.
        seed: split and cropping seed.
        contrast_augmentation: accepted so that recipes setting it (``finetune_seg_invariant``) fail with a clear
            message: re-rendering under new sequences needs synthetic tissue maps, which a folder of scans lacks.
    """

    def __init__(self, crop_size=(64, 64, 64), spacing_mm: float | None = 2.0, sequences: list[str] | None = None,
                 batch_size: int = 2, num_workers: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
                 contrast_augmentation: bool = False):
        super().__init__()
        if contrast_augmentation:
            raise AdapterError(
                "data.contrast_augmentation=true re-renders training subjects from synthetic tissue maps, which a folder "
                "of real scans does not have. Drop it for this dataset: add ~data.contrast_augmentation to the command."
            )
        self.crop_size = tuple(int(c) for c in crop_size)
        self.spacing_mm = float(spacing_mm) if spacing_mm else None
        self.requested_sequences = list(sequences) if sequences else None
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.test_set_names = ["test"]
        self.label_lookup: np.ndarray | None = None
        self.cases, self.task = self.discover()
        available = sorted({s for c in self.cases for s in c.images})
        self.sequences = self.requested_sequences or available
        unknown = sorted(set(self.sequences) - set(available))
        if unknown:
            raise AdapterError(f"data.sequences {unknown} are not in this dataset; it has {available}.")
        for case in self.cases:
            case.images = {name: case.images.get(name) for name in self.sequences}
            if not any(case.images.values()):
                raise AdapterError(f"Case {case.subject_id!r} has none of the sequences {self.sequences}; remove it or add one.")
            check_case_shapes(case)
        assign_splits(self.cases, val_fraction, test_fraction, seed)
        self.check_training_classes()
        self.standardise_targets()
        self.datasets = {split: CaseDataset([c for c in self.cases if c.split == split], self.task, self.sequences, self.crop_size,
                                            self.spacing_mm, train=split == "train", label_lookup=self.label_lookup)
                         for split in SPLITS}

    def discover(self) -> tuple[list[Case], TaskSpec]:
        raise NotImplementedError

    def check_training_classes(self) -> None:
        """Every class must occur in the training split (a class never seen cannot be learned)."""
        train = [c for c in self.cases if c.split == "train"]
        if self.task.kind == "classification":
            seen = {int(c.target) for c in train}
        elif self.task.kind == "segmentation":
            seen = set()
            for case in train:
                values = np.unique(np.asarray(nib.load(case.label_path).dataobj)).astype(int)
                seen |= {int(self.label_lookup[v]) if self.label_lookup is not None and 0 <= v < len(self.label_lookup) else int(v) for v in values}
        else:
            return
        missing = ", ".join(f"{self.task.output_names[i]!r} ({i})" for i in range(self.task.num_outputs) if i not in seen)
        if missing:
            raise AdapterError(
                f"Task {self.task.name!r}: classes [{missing}] have no example in the training split ({len(train)} cases). "
                f"Add training cases with them, change the split (seed, val_fraction, test_fraction, split column), or drop those classes."
            )

    def standardise_targets(self) -> None:
        """Regression: targets are standardised with the training split's mean / std, recorded in the task."""
        if self.task.kind != "regression":
            return
        values = np.asarray([c.target for c in self.cases if c.split == "train"], float).reshape(-1, self.task.num_outputs)
        std = values.std(axis=0)
        std[std == 0] = 1.0
        self.task = TaskSpec(self.task.name, "regression", self.task.num_outputs, self.task.output_names, values.mean(axis=0).tolist(), std.tolist())

    def _loader(self, split: str) -> DataLoader:
        whole = split != "train" and self.task.kind == "segmentation"
        generator = torch.Generator().manual_seed(self.seed) if split == "train" else None
        return DataLoader(self.datasets[split], batch_size=1 if whole else self.batch_size, shuffle=split == "train",
                          generator=generator, num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader("test")]
