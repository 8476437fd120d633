"""Held-out synthetic subjects for evaluation: every subject under several sequences, same window."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

EVALUATION_SEQUENCES = ("T1w_MPRAGE", "T2w", "FLAIR", "PDw")
HELD_OUT_SEED = 987_654_321  # never the training seed: these subjects are not trained on


def held_out_batches(
    crop_size: Sequence[int],
    spacing_mm: float,
    num_subjects: int = 16,
    batch_size: int = 4,
    sequences: Sequence[str] = EVALUATION_SEQUENCES,
    seed: int = HELD_OUT_SEED,
) -> list[dict[str, Any]]:
    """``num_subjects`` synthetic subjects (deformed ICBM152 anatomy), each rendered under every sequence in ``sequences``."""
    from prism.synth.datamodule import SynthDataModule

    data = SynthDataModule(
        batch_size=batch_size, crop_size=list(crop_size), num_views=len(sequences), spacing_mm=spacing_mm,
        seed=seed, sequences=list(sequences), lesions={"wmh_probability": 0.0, "tumour_probability": 0.0},
    )
    num_batches = -(-num_subjects // batch_size)
    return list(data.build_stream(seed, 0, 0, num_batches, "val"))
