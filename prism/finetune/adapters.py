"""Point at a dataset folder and fine-tune: adapters for three common public layouts.

* :class:`DecathlonDataModule`: Medical Segmentation Decathlon, ``dataset.json`` with
  ``modality`` (channel -> name), ``labels`` (value -> name) and ``training``
  (``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}``); multi-modal
  images are 4D with the modality last.
* :class:`BratsFolderDataModule`: one folder per case holding ``<case>_<suffix>.nii.gz``
  per sequence and ``<case>_seg.nii.gz`` (BraTS: t1, t1ce, t2, flair; labels 0, 1, 2, 4).
* :class:`CsvTaskDataModule`: a CSV with a subject column, one image-path column per
  sequence (empty cell = that sequence is missing) and the target: a class column, one or
  more regression columns, or a label-map path column; optional ``split`` column.

All three share :class:`~prism.finetune.volume_dataset.FolderTaskDataModule`: checked
shapes, seeded splits, every class present in training, the batch contract.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from prism.finetune.task_spec import TaskSpec
from prism.finetune.volume_dataset import AdapterError, Case, FolderTaskDataModule, Image

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _resolve(root: Path, path: str) -> str:
    return str((root / path).resolve()) if not Path(path).is_absolute() else path


def _required(value: str | None, key: str, example: str) -> Path:
    if not value:
        raise AdapterError(f"data.{key} is not set: add data.{key}={example} to the command line.")
    return Path(value)


def _lookup(values: list[int]) -> np.ndarray:
    """Label value -> class index (declared order); -1 for values not declared."""
    if min(values) < 0:
        raise AdapterError(f"label_values {values} must be non-negative integers.")
    lookup = np.full(max(values) + 1, -1, dtype=np.int64)
    lookup[values] = np.arange(len(values))
    return lookup


class DecathlonDataModule(FolderTaskDataModule):
    """Medical Segmentation Decathlon task folder (``dataset.json`` + ``imagesTr`` / ``labelsTr``).

    Args:
        root: the task folder (e.g. ``Task01_BrainTumour``).
        **kwargs: :class:`FolderTaskDataModule` options; ``sequences`` selects modalities by name.
    """

    def __init__(self, root: str | None, **kwargs):
        self.root = _required(root, "root", "/data/Task01_BrainTumour")
        super().__init__(**kwargs)

    def discover(self) -> tuple[list[Case], TaskSpec]:
        description_path = self.root / "dataset.json"
        if not description_path.is_file():
            raise AdapterError(f"{description_path} not found: a Decathlon task folder has dataset.json beside imagesTr/ and labelsTr/.")
        description = json.loads(description_path.read_text())
        for key in ("modality", "labels", "training"):
            if key not in description:
                raise AdapterError(f"{description_path} has no {key!r} entry; it does not follow the Decathlon layout.")
        modalities = {int(k): str(v) for k, v in description["modality"].items()}
        labels = {int(k): str(v) for k, v in description["labels"].items()}
        values = sorted(labels)
        self.label_lookup = _lookup(values)
        multi = len(modalities) > 1
        cases = []
        for entry in description["training"]:
            image, label = _resolve(self.root, entry["image"]), _resolve(self.root, entry["label"])
            name = Path(image).name
            for suffix in NIFTI_SUFFIXES:
                name = name.removesuffix(suffix)
            images = {modalities[c]: Image(image, c if multi else None) for c in sorted(modalities)}
            cases.append(Case(name, images, label_path=label))
        if not cases:
            raise AdapterError(f"{description_path} lists no training cases.")
        task = TaskSpec(str(description.get("name", self.root.name)), "segmentation", len(values), [labels[v] for v in values])
        return cases, task


class BratsFolderDataModule(FolderTaskDataModule):
    """BraTS-style folders: ``root/<case>/<case>_<suffix>.nii.gz`` per sequence + ``<case>_<label_suffix>.nii.gz``.

    Args:
        root: folder of case folders.
        sequence_suffixes: file suffix -> sequence name (e.g. ``{t1: T1w, t1ce: T1w_contrast, t2: T2w, flair: FLAIR}``).
        label_suffix: suffix of the label map.
        label_values: label values in class order (BraTS: ``[0, 1, 2, 4]``); None = the sorted values found.
        class_names: one name per class (default ``class_<value>``).
        **kwargs: :class:`FolderTaskDataModule` options.
    """

    def __init__(self, root: str | None, sequence_suffixes: dict[str, str], label_suffix: str = "seg",
                 label_values: list[int] | None = None, class_names: list[str] | None = None, **kwargs):
        self.root = _required(root, "root", "/data/BraTS2021")
        self.sequence_suffixes = dict(sequence_suffixes)
        self.label_suffix = label_suffix
        self.label_values, self.class_names = label_values, class_names
        super().__init__(**kwargs)

    def _file(self, folder: Path, suffix: str) -> str | None:
        for ending in NIFTI_SUFFIXES:
            path = folder / f"{folder.name}_{suffix}{ending}"
            if path.is_file():
                return str(path)
        return None

    def discover(self) -> tuple[list[Case], TaskSpec]:
        if not self.root.is_dir():
            raise AdapterError(f"{self.root} is not a folder of case folders (root/<case>/<case>_<sequence>.nii.gz).")
        cases = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            label = self._file(folder, self.label_suffix)
            images = {name: (Image(path) if (path := self._file(folder, suffix)) else None) for suffix, name in self.sequence_suffixes.items()}
            if label is None:
                raise AdapterError(f"Case folder {folder} has no {folder.name}_{self.label_suffix}.nii.gz label map; add it or remove the folder.")
            if not any(images.values()):
                raise AdapterError(f"Case folder {folder} has none of the sequences {[f'{folder.name}_{s}.nii.gz' for s in self.sequence_suffixes]}.")
            cases.append(Case(folder.name, images, label_path=label))
        if not cases:
            raise AdapterError(f"{self.root} has no case folders.")
        values = list(self.label_values) if self.label_values is not None else self._found_values(cases)
        self.label_lookup = _lookup([int(v) for v in values])
        names = list(self.class_names) if self.class_names else ["background" if v == 0 else f"class_{v}" for v in values]
        return cases, TaskSpec(self.root.name, "segmentation", len(values), names)

    @staticmethod
    def _found_values(cases: list[Case]) -> list[int]:
        import nibabel as nib

        found: set[int] = set()
        for case in cases:
            found |= {int(v) for v in np.unique(np.asarray(nib.load(case.label_path).dataobj))}
        return sorted(found | {0})


class CsvTaskDataModule(FolderTaskDataModule):
    """A CSV of image paths and targets (paths relative to the CSV's folder, or absolute).

    Args:
        csv: the table.
        kind: ``classification`` | ``regression`` | ``segmentation``.
        image_columns: one column per sequence, named after it (``T1w``, ``FLAIR``...).
        target_columns: classification: one class column; regression: one or more numeric
            columns; segmentation: one column of label-map paths.
        subject_column: subject id column.
        class_names: classification class order (default: the sorted values found).
        split_column: optional column of train / val / test (empty = assigned by fraction).
        **kwargs: :class:`FolderTaskDataModule` options.
    """

    def __init__(self, csv: str | None, kind: str, image_columns: list[str], target_columns: list[str], subject_column: str = "subject",
                 class_names: list[str] | None = None, split_column: str | None = "split", **kwargs):
        self.csv, self.kind = _required(csv, "csv", "/data/cohort.csv"), kind
        self.image_columns, self.target_columns = list(image_columns), list(target_columns)
        self.subject_column, self.class_names, self.split_column = subject_column, class_names, split_column
        super().__init__(**kwargs)

    def discover(self) -> tuple[list[Case], TaskSpec]:
        if not self.csv.is_file():
            raise AdapterError(f"CSV {self.csv} not found (data.csv=...).")
        table = pd.read_csv(self.csv, dtype=str, keep_default_na=False)
        wanted = [self.subject_column, *self.image_columns, *self.target_columns]
        missing = [c for c in wanted if c not in table.columns]
        if missing:
            raise AdapterError(f"CSV {self.csv} lacks columns {missing} (has {list(table.columns)}); fix data.image_columns / target_columns / subject_column.")
        if self.kind in ("classification", "segmentation") and len(self.target_columns) != 1:
            raise AdapterError(f"A {self.kind} CSV needs exactly one target column, got {self.target_columns}.")
        root = self.csv.parent
        cases = []
        for row in table.to_dict("records"):
            images = {c: Image(_resolve(root, row[c])) if row[c] else None for c in self.image_columns}
            if not any(images.values()):
                raise AdapterError(f"CSV {self.csv}: subject {row[self.subject_column]!r} has no image in {self.image_columns}.")
            split = row.get(self.split_column, "") if self.split_column else ""
            case = Case(row[self.subject_column], images, split=split.strip().lower())
            if self.kind == "segmentation":
                case.label_path = _resolve(root, row[self.target_columns[0]])
            else:
                case.target = [row[c] for c in self.target_columns]
            cases.append(case)
        return cases, self._task(cases)

    def _task(self, cases: list[Case]) -> TaskSpec:
        name = self.csv.stem
        if self.kind == "segmentation":
            values = sorted(BratsFolderDataModule._found_values(cases))
            self.label_lookup = _lookup(values)
            return TaskSpec(name, "segmentation", len(values), ["background" if v == 0 else f"class_{v}" for v in values])
        if self.kind == "classification":
            found = sorted({c.target[0] for c in cases})
            names = [str(n) for n in self.class_names] if self.class_names else found
            unknown = sorted(set(found) - set(names))
            if unknown:
                raise AdapterError(f"CSV {self.csv}: classes {unknown} are not in class_names {names}.")
            for case in cases:
                case.target = names.index(case.target[0])
            return TaskSpec(name, "classification", len(names), names)
        if self.kind != "regression":
            raise AdapterError(f"kind={self.kind!r}; use classification, regression or segmentation (data.kind).")
        for case in cases:
            try:
                case.target = [float(v) for v in case.target]
            except ValueError as err:
                raise AdapterError(f"CSV {self.csv}: subject {case.subject_id!r} has a non-numeric target in {self.target_columns} ({err}).") from err
        return TaskSpec(name, "regression", len(self.target_columns), list(self.target_columns))
