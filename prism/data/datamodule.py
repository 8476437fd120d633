"""Real data as a Lightning datamodule: ``ManifestDataModule`` (``conf/data/manifest.yaml``).

The manifest chooses the volumes (filter it with ``prism manifest filter``), the store
holds them preprocessed (``prism preprocess``), and :mod:`prism.data.sampler` draws
batches with the same structure as ``prism.synth`` (``prism.data.batch``), so a config
can mix both (``conf/data/mixed.yaml``). Acquisition parameters come from the manifest:
they are present only where the manifest knows them.

``prepare_data`` (run once, on global rank 0, before training) preprocesses the volumes
the store does not have yet when ``preprocess_missing`` is true, which is handy for small
collections; for large ones run ``prism preprocess`` (a SLURM array) beforehand.
Subjects are split into train / validation by a stable hash of their name
(``val_fraction``), never by volume, so no subject is in both.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from prism.data.manifest import read_manifest, usable_rows
from prism.data.preprocess import PreprocessSettings, preprocess_manifest
from prism.data.sampler import ManifestBatchStream, SamplingTable, build_table, split_subjects
from prism.data.store import VolumeStore
from prism.data.stream import StreamDataModule

log = logging.getLogger(__name__)


class ManifestDataModule(StreamDataModule):
    """Aligned multi-sequence crops of real subjects, from a manifest and its store.

    Args:
        manifest: manifest file (``.parquet`` / ``.csv``) made by ``prism manifest build``.
        store: store folder; default ``<store_dir>/<manifest name>``.
        store_dir: where default stores live (default: next to the manifest).
        data_root: root of the manifest's relative paths (default: the manifest's folder).
        batch_size: subjects per batch (B).
        crop_size: crop (D, H, W) in voxels of the store's spacing.
        num_views: sequences per subject (V); subjects with fewer get empty views.
        num_workers: dataloader worker processes.
        seed: run seed.
        val_batches: validation batches per validation run.
        dataset_alpha: dataset weight exponent: weight = n_subjects ** alpha.
        val_fraction: fraction of subjects held out for validation (by name hash).
        preprocess_missing: preprocess volumes missing from the store in ``prepare_data``.
        preprocess: :class:`prism.data.preprocess.PreprocessSettings` fields (spacing,
            crop_foreground, normalize, ...) used when preprocessing here.
        preprocess_workers: processes for that preprocessing.
    """

    def __init__(
        self,
        manifest: str,
        store: str | None = None,
        store_dir: str | None = None,
        data_root: str | None = None,
        batch_size: int = 2,
        crop_size: tuple[int, int, int] | list[int] = (96, 96, 96),
        num_views: int = 2,
        num_workers: int = 0,
        seed: int = 0,
        val_batches: int = 2,
        dataset_alpha: float = 0.5,
        val_fraction: float = 0.05,
        preprocess_missing: bool = True,
        preprocess: Mapping[str, Any] | None = None,
        preprocess_workers: int = 1,
    ):
        super().__init__(seed=seed, num_workers=num_workers, val_batches=val_batches)
        if manifest in (None, "", "???"):
            raise ValueError("data.manifest is required: pass data.manifest=PATH (build one with `prism manifest build DATA_ROOT --out PATH`).")
        crop = tuple(int(c) for c in crop_size)
        if len(crop) != 3 or min(crop) < 1 or int(batch_size) < 1 or int(num_views) < 1:
            raise ValueError(f"crop_size must be 3 positive ints and batch_size, num_views >= 1; got {list(crop_size)}, {batch_size}, {num_views}.")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
        self.manifest_path = Path(manifest)
        if not self.manifest_path.is_file():
            raise FileNotFoundError(
                f"data.manifest={self.manifest_path} does not exist. Build it with "
                f"`prism manifest build DATA_ROOT --out {self.manifest_path}` (then optionally `prism qc`)."
            )
        default_dir = Path(store_dir) if store_dir else self.manifest_path.parent
        self.store = VolumeStore(store if store else default_dir / self.manifest_path.name.rsplit(".", 1)[0])
        self.data_root = data_root
        self.batch_size, self.crop_size, self.num_views = int(batch_size), crop, int(num_views)
        self.dataset_alpha, self.val_fraction = float(dataset_alpha), float(val_fraction)
        self.preprocess_missing, self.preprocess_workers = bool(preprocess_missing), int(preprocess_workers)
        self.settings = PreprocessSettings.from_dict(dict(preprocess or {}))
        self.prepare_data_per_node = False  # the store is shared: preprocess on global rank 0 only
        self.tables: dict[str, SamplingTable] = {}

    def _manifest(self) -> pd.DataFrame:
        return usable_rows(read_manifest(self.manifest_path, self.data_root))

    def _missing(self, manifest: pd.DataFrame) -> pd.DataFrame:
        index = self.store.read_index()
        return manifest[~manifest["volume_id"].isin(set(index["volume_id"]))]

    def prepare_data(self) -> None:
        """Preprocess the manifest's volumes that the store lacks (if ``preprocess_missing``)."""
        manifest = self._manifest()
        missing = self._missing(manifest)
        if missing.empty:
            return
        if not self.preprocess_missing:
            raise FileNotFoundError(self._missing_message(len(missing), len(manifest)))
        log.info("preprocessing %d volumes missing from store %s", len(missing), self.store.root)
        absent = [p for p in missing["path"] if not os.path.exists(p)]
        if len(absent) == len(missing):
            root = self.data_root or self.manifest_path.parent
            raise FileNotFoundError(
                f"None of the {len(missing)} images of {self.manifest_path} that the store lacks exist (e.g. {absent[0]}). "
                f"Relative manifest paths are resolved against {root}: set data.data_root, or create the data "
                "(demo data: see data_manifests/README.md)."
            )
        sessions = missing[["dataset", "subject", "session"]].drop_duplicates()
        todo = manifest.merge(sessions, on=["dataset", "subject", "session"])  # whole sessions share a grid
        summary = preprocess_manifest(todo, self.store.root, self.settings, workers=self.preprocess_workers)
        log.info("preprocessing: %s", summary)

    def _missing_message(self, missing: int, total: int) -> str:
        return (
            f"Store {self.store.root} lacks {missing} of the {total} volumes of {self.manifest_path}. Run "
            f"`prism preprocess {self.manifest_path} --out {self.store.root}` (or set data.preprocess_missing=true)."
        )

    def setup(self, stage: str | None = None) -> None:
        """Join manifest and store index; build the train / validation sampling tables."""
        if self.tables:
            return
        manifest = self._manifest()
        index = self.store.read_index()
        stored_settings = self.store.settings()
        if stored_settings is None:
            raise FileNotFoundError(self._missing_message(len(manifest), len(manifest)))
        if stored_settings != self.settings.to_dict():
            log.warning(
                "store %s was preprocessed with other settings than data.preprocess (spacing %s mm vs %s): the store's are used; "
                "crop_size is in voxels of its spacing (match a synthetic source's spacing_mm to it)",
                self.store.root, stored_settings.get("spacing"), list(self.settings.spacing),
            )
        stored = index[["volume_id", "status", "file", "shape", "grid_id", "reason"]]
        joined = manifest.drop(columns=["shape"]).merge(stored, on="volume_id", how="left")  # shape: the stored grid
        not_stored = joined["status"].isna()
        failed = joined["status"].eq("failed")
        if not_stored.all():
            raise FileNotFoundError(self._missing_message(len(manifest), len(manifest)))
        if not_stored.any():
            log.warning("%d manifest volumes are not in store %s and are left out (run `prism preprocess`)", int(not_stored.sum()), self.store.root)
        if failed.any():
            log.warning("%d volumes failed preprocessing and are left out, e.g. %s: %s", int(failed.sum()), joined["volume_id"][failed].iloc[0], joined["reason"][failed].iloc[0])
        volumes = joined[joined["status"].eq("done")].copy()
        volumes["file"] = [os.path.join(self.store.root, f) for f in volumes["file"]]
        names = (volumes["dataset"] + "/" + volumes["subject"]).tolist()
        is_val = split_subjects(names, self.val_fraction)
        if is_val.any() and not is_val.all():
            self.tables = {"train": build_table(volumes[~is_val]), "val": build_table(volumes[is_val])}
        else:
            log.info("validation uses the training subjects (val_fraction=%g selects %s of them)", self.val_fraction, "all" if is_val.all() else "none")
            table = build_table(volumes)
            self.tables = {"train": table, "val": table}
        train = self.tables["train"]
        log.info(
            "ManifestDataModule: %d volumes of %d subjects in %d datasets (weights %s) for training",
            len(train), len(train.subject_names), len(train.dataset_names),
            {n: round(float(w), 3) for n, w in zip(train.dataset_names, train.dataset_weights(self.dataset_alpha))},
        )

    def build_stream(self, seed: int, rank: int, start: int, num_batches: int | None, split: str) -> ManifestBatchStream:
        self.setup()
        return ManifestBatchStream(
            self.tables[split], self.batch_size, self.crop_size, self.num_views, self.dataset_alpha,
            seed=seed, rank=rank, start=start, num_batches=num_batches,
        )
