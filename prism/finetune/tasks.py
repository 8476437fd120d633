"""Built-in downstream tasks on synthetic subjects with known ground truth.

The synthesis engine (``prism.synth``) knows every voxel's tissue and every view's
sequence and TR/TE, so it makes downstream tasks whose answers are exact:

* ``tissue_segmentation``: background / CSF / GM / WM. Trained on one sequence
  (T1w_MPRAGE by default), tested on the same new subjects under each of T1w_MPRAGE, T2w,
  FLAIR and PDw, one test set per sequence: does a head trained on one contrast transfer?
* ``lesion_segmentation``: lesion (WMH, tumour, necrosis, oedema) vs the rest, trained on
  FLAIR, tested per sequence.
* ``sequence_identification``: which of T1w_MPRAGE / T2w / FLAIR / PDw a volume is.
* ``trte_regression``: log TR and log TE of a volume from any of the eight recipes
  (standardised with the training set's mean / std, which the task spec carries).

The batch carries no sequence metadata for the last two (``sequence_id`` -1,
``acq_present`` False): the answer must come from the pixels.

Every split is a FIXED finite set of subjects (``prism.finetune.task_subjects``), drawn
once per process and cached, from seeds disjoint from pretraining and evaluation;
``train_subjects`` 5 or 20 gives the few-label regimes. ``contrast_augmentation: true``
re-renders the training subjects under random sequences
(``prism.finetune.contrast_augmentation``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from prism.evaluation.held_out import EVALUATION_SEQUENCES
from prism.finetune.contrast_augmentation import ContrastAugmentation
from prism.finetune.task_spec import TaskSpec
from prism.finetune.task_subjects import SUBJECT_SETS, SubjectSet, all_recipes, distinct_recipes, render_subject_set
from prism.synth.config import SynthConfig
from prism.synth.generator import SynthGenerator
from prism.synth.recipes import RECIPES, get_recipe
from prism.synth.tissues import NUM_TISSUES, TISSUE_LABELS

TASK_SUBJECT_SEED = 20_261_122
"""Default base seed of the task subjects (salted per split, see ``prism.finetune.task_subjects``)."""

NO_LESIONS = {"wmh_probability": 0.0, "tumour_probability": 0.0}
LESIONS_EVERYWHERE = {"wmh_probability": 1.0, "wmh_threshold": [1.2, 2.0], "tumour_probability": 0.6}


@dataclass(frozen=True)
class TaskDefinition:
    """How a built-in task is made from synthetic subjects.

    Attributes:
        kind: ``segmentation`` | ``classification`` | ``regression``.
        train_sequences: default recipes of the training (and validation) views.
        test_sequences: default recipes of the test views.
        class_names: segmentation classes (index = class); classification classes come from
            the sequences, regression outputs from ``output_names``.
        label_of_tissue: segmentation only: class of each tissue label value.
        lesions: ``prism.synth.config.LesionConfig`` values of the task's subjects.
        output_names: regression targets.
    """

    kind: str
    train_sequences: tuple[str, ...]
    test_sequences: tuple[str, ...]
    class_names: tuple[str, ...] = ()
    label_of_tissue: tuple[int, ...] = ()
    lesions: dict[str, Any] = field(default_factory=lambda: dict(NO_LESIONS))
    output_names: tuple[str, ...] = ()

    @property
    def test_per_sequence(self) -> bool:
        return self.kind == "segmentation"


def _lookup(classes: dict[str, int]) -> tuple[int, ...]:
    """Class per tissue label value: ``classes`` maps tissue names to classes, the rest is 0."""
    table = [0] * NUM_TISSUES
    for tissue, cls in classes.items():
        table[TISSUE_LABELS[tissue]] = cls
    return tuple(table)


TASKS: dict[str, TaskDefinition] = {
    "tissue_segmentation": TaskDefinition(
        "segmentation", ("T1w_MPRAGE",), EVALUATION_SEQUENCES, ("background", "csf", "gm", "wm"),
        _lookup({"csf": 1, "gm": 2, "wm": 3}),
    ),
    "lesion_segmentation": TaskDefinition(
        "segmentation", ("FLAIR",), EVALUATION_SEQUENCES, ("background", "lesion"),
        _lookup({"lesion_wmh": 1, "tumour": 1, "necrosis": 1, "edema": 1}), dict(LESIONS_EVERYWHERE),
    ),
    "sequence_identification": TaskDefinition("classification", EVALUATION_SEQUENCES, EVALUATION_SEQUENCES),
    "trte_regression": TaskDefinition(
        "regression", tuple(RECIPES), tuple(RECIPES), output_names=("log_repetition_time", "log_echo_time"),
    ),
}
"""The built-in tasks by name."""

ALL_TEST_VIEWS = "all"
"""Name of the single test set of classification and regression tasks."""


class TaskDataset(Dataset):
    """Items of one split in the ``prism.data.batch`` layout (V = 1) plus the task's target.

    Args:
        views: the split's rendered subjects.
        definition: the task.
        targets: classification ``[N]`` int64 or standardised regression ``[N, K]``; ``None``
            for segmentation (the target is the label map).
        augmentation: re-renders a training subject's anatomy (segmentation only).
    """

    def __init__(
        self, views: SubjectSet, definition: TaskDefinition, targets: torch.Tensor | None = None,
        augmentation: ContrastAugmentation | None = None,
    ):
        self.views, self.definition, self.targets, self.augmentation = views, definition, targets, augmentation
        self.lookup = torch.tensor(definition.label_of_tissue, dtype=torch.long) if definition.label_of_tissue else None

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, index: int) -> dict[str, Any]:
        views, subject = self.views, int(self.views.subject_index[index])
        item = {
            "image": views.image[index],
            "view_present": torch.ones(1, dtype=torch.bool),
            "sequence_id": views.sequence_id[index],
            "acq_params": views.acq_params[index],
            "acq_present": views.acq_present[index],
            "subject_id": views.subject_ids[subject],
        }
        if self.definition.kind == "segmentation":
            item["labels"] = self.lookup[views.labels[subject].long()]
            if self.augmentation is not None and views.maps is not None:
                # Global RNG: seeded per worker and run by Lightning's seed_everything(workers=True).
                generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
                new_view = self.augmentation(views.maps[subject], views.tissue_ids[subject], generator)
                if new_view is not None:
                    item.update({k: new_view[k] for k in ("image", "sequence_id", "acq_params", "acq_present")})
        else:  # the answer must come from the pixels, not from the metadata
            item["sequence_id"] = torch.full_like(item["sequence_id"], -1)
            item["acq_params"] = torch.zeros_like(item["acq_params"])
            item["acq_present"] = torch.zeros_like(item["acq_present"])
            item["target"] = self.targets[index]
        return item


class SynthTaskDataModule(L.LightningDataModule):
    """A built-in downstream task (``conf/data/finetune_synth_<task>.yaml``).

    Args:
        task: one of ``TASKS`` (tissue_segmentation, lesion_segmentation,
            sequence_identification, trte_regression).
        train_subjects, val_subjects, test_subjects: subjects per split (train 5 / 20 = few labels).
        train_sequences: recipes of the training and validation views (default per task); for
            sequence identification these are the classes.
        test_sequences: recipes of the test views (default per task); segmentation tasks get
            one test set per sequence, named after it.
        crop_size: (D, H, W) voxels of every volume (the whole volume: no further cropping).
        spacing_mm: voxel size; use the pretraining spacing of the encoder.
        batch_size: items per batch.
        num_workers: dataloader workers.
        seed: run seed: shuffling and augmentation draws (not the subjects).
        subject_seed: base seed of the subjects (the same for every run of a benchmark).
        contrast_augmentation: re-render training subjects under random sequences
            (segmentation tasks).
        augmentation_sequences: recipes to re-render under (default all recipes).
        augmentation_probability: chance per item of a re-rendered view.
        renders_per_subject: trte_regression: distinct random recipes per subject.
    """

    def __init__(
        self,
        task: str,
        train_subjects: int = 20,
        val_subjects: int = 4,
        test_subjects: int = 8,
        train_sequences: Sequence[str] | None = None,
        test_sequences: Sequence[str] | None = None,
        crop_size: Sequence[int] = (64, 64, 64),
        spacing_mm: float = 2.0,
        batch_size: int = 2,
        num_workers: int = 0,
        seed: int = 0,
        subject_seed: int = TASK_SUBJECT_SEED,
        contrast_augmentation: bool = False,
        augmentation_sequences: Sequence[str] | None = None,
        augmentation_probability: float = 0.75,
        renders_per_subject: int = 4,
    ):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"Unknown fine-tuning task {task!r}; built-in tasks are {sorted(TASKS)} (data.task).")
        self.definition = TASKS[task]
        self.task_name = task
        crop = tuple(int(c) for c in crop_size)
        if len(crop) != 3 or min(crop) < 4:
            raise ValueError(f"crop_size must be 3 ints >= 4, got {list(crop_size)}.")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.train_sequences = self._recipes(train_sequences, self.definition.train_sequences, "train_sequences")
        self.test_sequences = self._recipes(test_sequences, self.definition.test_sequences, "test_sequences")
        if self.definition.kind == "classification" and not set(self.test_sequences) <= set(self.train_sequences):
            raise ValueError(
                f"sequence_identification: test_sequences {list(self.test_sequences)} include classes that are not in "
                f"train_sequences {list(self.train_sequences)}; a class missing from training cannot be predicted."
            )
        if contrast_augmentation and self.definition.kind != "segmentation":
            raise ValueError(
                f"contrast_augmentation changes the sequence, which is the target of {task}; use it for segmentation tasks only."
            )
        self.splits = {"train": int(train_subjects), "val": int(val_subjects), "test": int(test_subjects)}
        self.crop_size, self.spacing_mm = crop, float(spacing_mm)
        self.batch_size, self.num_workers, self.seed = int(batch_size), int(num_workers), int(seed)
        self.subject_seed, self.renders_per_subject = int(subject_seed), int(renders_per_subject)
        self.augmentation = (
            ContrastAugmentation(crop, self.spacing_mm, augmentation_sequences, augmentation_probability)
            if contrast_augmentation else None
        )
        config = SynthConfig.from_dict(sequences=sorted(set(self.train_sequences) | set(self.test_sequences)),
                                       lesions=self.definition.lesions)
        self.engine = SynthGenerator(config, crop, self.spacing_mm)
        self._datasets: dict[str, Any] | None = None

    @staticmethod
    def _recipes(given: Sequence[str] | None, default: tuple[str, ...], key: str) -> tuple[str, ...]:
        names = tuple(str(s) for s in given) if given else default
        if not names:
            raise ValueError(f"{key} is empty; list recipes from {list(RECIPES)}.")
        for name in names:
            get_recipe(name)
        return names

    # ----------------------------------------------------------------- the data
    def subject_set(self, split: str) -> SubjectSet:
        """The split's rendered subjects (generated on first use, then cached for the process)."""
        sequences = self.test_sequences if split == "test" else self.train_sequences
        if self.definition.kind == "regression":
            choose, recipe_key = distinct_recipes(sequences, self.renders_per_subject), ("distinct", self.renders_per_subject)
        else:
            choose, recipe_key = all_recipes(sequences), ("all",)
        keep_maps = split == "train" and self.augmentation is not None
        key = (self.task_name, split, self.splits[split], sequences, recipe_key, self.crop_size, self.spacing_mm,
               self.subject_seed, keep_maps)
        return SUBJECT_SETS.get(key, lambda: render_subject_set(
            self.engine, self.splits[split], choose, self.subject_seed, split, keep_maps))

    def _targets(self, views: SubjectSet, mean: torch.Tensor | None, std: torch.Tensor | None) -> torch.Tensor | None:
        kind = self.definition.kind
        if kind == "classification":
            return torch.tensor([self.train_sequences.index(r) for r in views.recipe], dtype=torch.long)
        if kind == "regression":
            return (self._log_trte(views) - mean) / std
        return None

    @staticmethod
    def _log_trte(views: SubjectSet) -> torch.Tensor:
        """``[N, 2]`` log RepetitionTime, log EchoTime (seconds)."""
        return views.acq_params[:, 0, :2].double().log().float()

    def build(self) -> dict[str, Any]:
        """Generate (or fetch) every split and wrap it as datasets; idempotent."""
        if self._datasets is not None:
            return self._datasets
        train, val, test = (self.subject_set(s) for s in ("train", "val", "test"))
        mean = std = None
        if self.definition.kind == "regression":
            raw = self._log_trte(train)
            mean = raw.mean(0)
            std = raw.std(0).clamp_min(1e-6) if len(raw) > 1 else torch.ones(raw.shape[1])
        definition = self.definition
        if definition.test_per_sequence:
            names = list(self.test_sequences)
            tests = [test.select(torch.tensor([r == name for r in test.recipe])) for name in names]
        else:
            names, tests = [ALL_TEST_VIEWS], [test]
        self._datasets = {
            "train": TaskDataset(train, definition, self._targets(train, mean, std), self.augmentation),
            "val": TaskDataset(val, definition, self._targets(val, mean, std)),
            "test": [TaskDataset(t, definition, self._targets(t, mean, std)) for t in tests],
            "test_names": names,
            "target_mean": None if mean is None else mean.tolist(),
            "target_std": None if std is None else std.tolist(),
        }
        return self._datasets

    @property
    def task(self) -> TaskSpec:
        """What the head predicts (regression statistics come from the training set)."""
        definition = self.definition
        if definition.kind == "segmentation":
            return TaskSpec(self.task_name, "segmentation", len(definition.class_names), list(definition.class_names))
        if definition.kind == "classification":
            return TaskSpec(self.task_name, "classification", len(self.train_sequences), list(self.train_sequences))
        data = self.build()
        return TaskSpec(self.task_name, "regression", len(definition.output_names), list(definition.output_names),
                        data["target_mean"], data["target_std"])

    @property
    def test_set_names(self) -> list[str]:
        return list(self.test_sequences) if self.definition.test_per_sequence else [ALL_TEST_VIEWS]

    # ---------------------------------------------------------- Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        self.build()

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            dataset, batch_size=self.batch_size, shuffle=shuffle, generator=generator,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.build()["train"], shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.build()["val"], shuffle=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(d, shuffle=False) for d in self.build()["test"]]
