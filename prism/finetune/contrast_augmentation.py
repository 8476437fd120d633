"""Synthetic-contrast augmentation: show a segmentation head its training subjects under many sequences.

Fine-tuning a whole encoder on one sequence (say T1w) teaches it that sequence only: on a
small CPU probe the Dice on T2w fell to scratch level after full fine-tuning on T1w
(``shared/reference/findings.md``). The synthesis engine knows the anatomy of every
training subject, so during fine-tuning it can re-render that anatomy under another,
randomly drawn sequence with fresh tissue physics and fresh scanner artefacts. The labels
stay exactly right (same voxels, same anatomy), the contrast changes: the recipe that keeps
the sequence invariance a pretrained encoder brings.

:class:`ContrastAugmentation` takes a subject's soft tissue maps (partial volume kept) or
its hard label map, and returns a new view in the ``prism.data.batch`` layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from prism.synth.config import SynthConfig
from prism.synth.generator import SynthGenerator, device_generator
from prism.synth.physics import sample_tissue_parameters
from prism.synth.recipes import RECIPES, get_recipe
from prism.synth.subjects import SubjectBatch, sample_field_strength
from prism.synth.tissues import NUM_TISSUES


class ContrastAugmentation:
    """Re-render a subject's anatomy under a random sequence of ``sequences``.

    Args:
        crop_size: (D, H, W) of the maps it will be given.
        spacing_mm: their voxel size.
        sequences: recipe names to draw from (``prism.synth.recipes.RECIPES``); default all.
        probability: chance that a call re-renders (otherwise it returns ``None`` and the
            caller keeps its original image).
        config: the engine's contrast / artefact / resolution ranges (default
            ``SynthConfig()``); its ``sequences`` are replaced by ``sequences``.
    """

    def __init__(
        self,
        crop_size: Sequence[int],
        spacing_mm: float,
        sequences: Sequence[str] | None = None,
        probability: float = 0.75,
        config: SynthConfig | None = None,
    ):
        if not 0.0 <= float(probability) <= 1.0:
            raise ValueError(f"contrast augmentation probability={probability}; use a value in [0, 1].")
        names = tuple(sequences) if sequences else tuple(RECIPES)
        for name in names:
            get_recipe(name)  # raises naming the unknown recipe
        config = dataclasses.replace(config or SynthConfig(), sequences=names)
        self.sequences, self.probability = names, float(probability)
        self.engine = SynthGenerator(config, tuple(int(c) for c in crop_size), float(spacing_mm))

    def subject_from(
        self, anatomy: torch.Tensor, tissue_ids: Sequence[int] | None, generator: torch.Generator
    ) -> SubjectBatch:
        """A one-subject :class:`SubjectBatch` with freshly drawn field strength and tissue physics.

        Args:
            anatomy: soft tissue maps ``[C, D, H, W]`` (with ``tissue_ids``) or an integer
                label map ``[D, H, W]`` of ``prism.synth.tissues.TISSUE_LABELS`` values.
            tissue_ids: label value of each channel of soft maps; ``None`` for a label map.
        """
        contrast = self.engine.config.contrast
        spacing = self.engine.spacing_mm
        if not anatomy.is_floating_point():
            if anatomy.ndim != 3:
                raise ValueError(f"A label map must be [D, H, W], got shape {tuple(anatomy.shape)}.")
            return SubjectBatch.from_labels(
                anatomy[None].long(), generator, spacing, tuple(contrast.field_strengths),
                contrast.tissue_relative_std, contrast.tissue_independent_std,
            )
        if anatomy.ndim != 4 or tissue_ids is None or len(tissue_ids) != anatomy.shape[0]:
            raise ValueError(
                f"Soft tissue maps must be [C, D, H, W] with one tissue id per channel; got shape "
                f"{tuple(anatomy.shape)} and tissue_ids={tissue_ids}."
            )
        if max(tissue_ids) >= NUM_TISSUES or min(tissue_ids) < 0:
            raise ValueError(f"tissue_ids={list(tissue_ids)} are outside the tissue table 0..{NUM_TISSUES - 1}.")
        field = sample_field_strength(1, tuple(contrast.field_strengths), generator)
        params = sample_tissue_parameters(field, contrast.tissue_relative_std, generator, contrast.tissue_independent_std)
        return SubjectBatch(anatomy[None].float(), tuple(int(i) for i in tissue_ids), field, params, spacing)

    def render(
        self, anatomy: torch.Tensor, tissue_ids: Sequence[int] | None, generator: torch.Generator
    ) -> dict[str, Any]:
        """Always re-render (ignores ``probability``).

        Returns:
            ``{"image": [1, D, H, W], "sequence_id": [1], "acq_params": [1, P], "acq_present": [1, P],
            "recipe": str}``: one view, robustly normalised like the engine's own output.
        """
        subject = self.subject_from(anatomy, tissue_ids, generator)
        recipe = self.sequences[int(torch.randint(0, len(self.sequences), (1,), generator=generator))]
        rendered, image = self.engine.render_views(subject, [[recipe]], generator, device_generator(generator, anatomy.device))
        return {
            "image": image.float(),
            "sequence_id": rendered.sequence_id.long(),
            "acq_params": rendered.acq_params.float(),
            "acq_present": rendered.acq_present.bool(),
            "recipe": recipe,
        }

    def __call__(
        self, anatomy: torch.Tensor, tissue_ids: Sequence[int] | None, generator: torch.Generator
    ) -> dict[str, Any] | None:
        """Re-render with chance ``probability``; ``None`` means "keep the original view"."""
        if float(torch.rand(1, generator=generator)) >= self.probability:
            return None
        return self.render(anatomy, tissue_ids, generator)
