"""Synthetic data as a Lightning datamodule: an endless, resumable stream of prism batches.

``SynthDataModule`` (built by ``conf/data/synth.yaml``) yields exactly the batch
structure of real data (``prism.data.batch``), plus ``labels`` (tissue / lesion
labels, ``prism.synth.tissues.TISSUE_LABELS``) and ``recipe`` (the fine-grained
sequence names). Batch ``k`` is a pure function of ``(seed, rank, k)``
(``prism.data.stream``), so runs resume exactly and ranks / workers differ.

Two places to generate:

* ``generate_on="worker"``: dataloader workers generate on the CPU (default).
* ``generate_on="device"``: workers only yield a cheap descriptor (the batch seed);
  the heavy generation runs in ``on_after_batch_transfer`` on the device the batch was
  moved to (the GPU), fully batched.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from prism.data.stream import BatchStream, StreamDataModule
from prism.synth.anatomy import Anatomy, ICBM152Anatomy, LabelMapAnatomy
from prism.synth.config import SynthConfig
from prism.synth.generator import SynthGenerator

DESCRIPTOR_KEY = "synth_seed"
PREFIX_KEY = "synth_prefix"
GENERATE_ON = ("worker", "device")


class SynthStream(BatchStream):
    """Stream of synthetic batches (or of their seeds, when generation happens on the device).

    Args:
        generator: the batch generator.
        batch_size: subjects per batch (B).
        num_views: sequences per subject (V).
        descriptors_only: yield ``{"synth_seed": int64 [1], "subject_id": [...]}`` instead of images.
        seed, rank, start, num_batches: see ``prism.data.stream.BatchStream``.
    """

    def __init__(
        self,
        generator: SynthGenerator,
        batch_size: int,
        num_views: int,
        descriptors_only: bool = False,
        seed: int = 0,
        rank: int = 0,
        start: int = 0,
        num_batches: int | None = None,
    ):
        super().__init__(seed, rank, start, num_batches)
        self.generator, self.batch_size, self.num_views = generator, int(batch_size), int(num_views)
        self.descriptors_only = descriptors_only

    def subject_prefix(self, index: int) -> str:
        return f"synth-s{self.seed}-r{self.rank}-b{index}"

    def make_batch(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        if self.descriptors_only:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            return {DESCRIPTOR_KEY: torch.tensor([seed], dtype=torch.long), PREFIX_KEY: self.subject_prefix(index)}
        return self.generator.generate(
            self.batch_size, self.num_views, generator, "cpu", subject_prefix=self.subject_prefix(index)
        )


class SynthDataModule(StreamDataModule):
    """Endless synthetic multi-sequence MRI from real anatomy.

    Args:
        batch_size: subjects per batch (B).
        crop_size: output (D, H, W) voxels.
        num_views: sequences per subject (V), all of the same deformed subject at the same window.
        spacing_mm: working voxel size; 2.0 keeps the CPU demo fast, 1.0 is the real recipe
            (the template's native resolution).
        num_workers: dataloader worker processes.
        seed: run seed.
        val_batches: validation batches per validation run.
        sequences: recipe names to draw from (``prism.synth.recipes.RECIPES``); default all.
        generate_on: ``"worker"`` (CPU, in the dataloader) or ``"device"`` (in
            ``on_after_batch_transfer``, on the batch's device).
        anatomy: ``None`` / ``{"source": "icbm152"}`` for the nilearn template, or
            ``{"source": "label_map", "path": ..., "mapping": {label: tissue} | path}``.
        deformation, lesions, contrast, artefacts, resolution: randomisation groups
            (see ``prism.synth.config``); unknown keys and min > max ranges raise ``ValueError``.
    """

    def __init__(
        self,
        batch_size: int = 2,
        crop_size: tuple[int, int, int] | list[int] = (96, 96, 96),
        num_views: int = 2,
        spacing_mm: float = 2.0,
        num_workers: int = 0,
        seed: int = 0,
        val_batches: int = 2,
        sequences: list[str] | None = None,
        generate_on: str = "worker",
        anatomy: Mapping[str, Any] | None = None,
        deformation: Mapping[str, Any] | None = None,
        lesions: Mapping[str, Any] | None = None,
        contrast: Mapping[str, Any] | None = None,
        artefacts: Mapping[str, Any] | None = None,
        resolution: Mapping[str, Any] | None = None,
    ):
        super().__init__(seed=seed, num_workers=num_workers, val_batches=val_batches)
        if generate_on not in GENERATE_ON:
            raise ValueError(f"generate_on={generate_on!r}; use one of {list(GENERATE_ON)}.")
        if int(batch_size) < 1 or int(num_views) < 1:
            raise ValueError(f"batch_size and num_views must be >= 1, got {batch_size} and {num_views}.")
        crop = tuple(int(c) for c in crop_size)
        if len(crop) != 3:
            raise ValueError(f"crop_size must be a list of 3 ints, got {list(crop_size)}.")
        self.batch_size, self.num_views, self.generate_on = int(batch_size), int(num_views), generate_on
        self.crop_size, self.spacing_mm = crop, float(spacing_mm)
        self.config = SynthConfig.from_dict(
            sequences=sequences, deformation=deformation, lesions=lesions, contrast=contrast,
            artefacts=artefacts, resolution=resolution,
        )
        self.generator = SynthGenerator(self.config, crop, float(spacing_mm), build_anatomy(anatomy))

    def build_stream(self, seed: int, rank: int, start: int, num_batches: int | None, split: str) -> SynthStream:
        return SynthStream(
            self.generator, self.batch_size, self.num_views, self.generate_on == "device",
            seed=seed, rank=rank, start=start, num_batches=num_batches,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        batch = super().on_after_batch_transfer(batch, dataloader_idx)
        if isinstance(batch, dict) and DESCRIPTOR_KEY in batch:
            batch = self.generate_from_descriptor(batch)
        return batch

    def generate_from_descriptor(self, descriptor: dict[str, Any]) -> dict[str, Any]:
        """Turn a descriptor batch into the full batch, on the descriptor's device.

        Keys other than the descriptor's own (e.g. a mixture's ``source``) are kept.
        """
        seed_tensor = descriptor[DESCRIPTOR_KEY]
        generator = torch.Generator().manual_seed(int(seed_tensor.reshape(-1)[0].item()))
        batch = self.generator.generate(
            self.batch_size, self.num_views, generator, seed_tensor.device,
            subject_prefix=str(descriptor.get(PREFIX_KEY, "synth")),
        )
        batch.update({k: v for k, v in descriptor.items() if k not in (DESCRIPTOR_KEY, PREFIX_KEY)})
        return batch


def build_anatomy(spec: Mapping[str, Any] | None) -> Anatomy:
    """Anatomy from its config: ``None`` or ``source: icbm152``, or ``source: label_map`` + path + mapping."""
    if spec is None:
        return ICBM152Anatomy()
    spec = dict(spec)
    source = spec.pop("source", "icbm152")
    if source == "icbm152":
        if spec:
            raise ValueError(f"anatomy source icbm152 takes no options, got {sorted(spec)}.")
        return ICBM152Anatomy()
    if source == "label_map":
        unknown = set(spec) - {"path", "mapping"}
        if unknown or "path" not in spec or "mapping" not in spec:
            raise ValueError(f"anatomy source label_map needs exactly 'path' and 'mapping', got {sorted(spec)}.")
        mapping = spec["mapping"]
        mapping = dict(mapping) if isinstance(mapping, Mapping) else str(mapping)
        return LabelMapAnatomy(str(spec["path"]), mapping)
    raise ValueError(f"Unknown anatomy source {source!r}; use 'icbm152' or 'label_map'.")
