"""The one batch structure every prism data source yields.

Synthetic data (``prism.synth``) and real data (``prism.data``) both produce this
structure, so pretraining can mix them and every objective reads the same keys.

A batch is a ``dict`` with:

``image``          float32 ``[B, V, D, H, W]``: V views (sequences) of one subject,
                   cropped at the SAME spatial window, so views are voxel-aligned.
``view_present``   bool ``[B, V]``: False where a subject had fewer than V sequences
                   (that view's image is zeros and must not contribute to any loss).
``sequence_id``    int64 ``[B, V]``: index into ``prism.sequences.SEQUENCE_TYPES``; -1 unknown.
``acq_params``     float32 ``[B, V, P]``: ``prism.sequences.ACQUISITION_PARAMETERS``
                   in seconds / degrees / tesla; 0 where not present (never read there).
``acq_present``    bool ``[B, V, P]``: True only where the value is known.
``subject_id``     list[str] of length B.
``labels``         optional int64 ``[B, D, H, W]`` (tissue / lesion labels, synthetic data).

``validate_batch`` checks this contract; tests of every data source call it.
"""

from __future__ import annotations

from typing import Any

import torch

from prism.sequences import NUM_ACQUISITION_PARAMETERS

REQUIRED_KEYS = ("image", "view_present", "sequence_id", "acq_params", "acq_present", "subject_id")


def validate_batch(batch: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first way ``batch`` breaks the batch contract."""
    missing = [k for k in REQUIRED_KEYS if k not in batch]
    if missing:
        raise ValueError(f"Batch is missing keys {missing}; a prism batch needs {list(REQUIRED_KEYS)}.")
    image = batch["image"]
    if not torch.is_tensor(image) or image.ndim != 5 or not image.is_floating_point():
        raise ValueError(f"batch['image'] must be a float tensor [B, V, D, H, W], got {_describe(image)}.")
    b, v = image.shape[:2]
    expected = {
        "view_present": ((b, v), torch.bool),
        "sequence_id": ((b, v), torch.int64),
        "acq_params": ((b, v, NUM_ACQUISITION_PARAMETERS), torch.float32),
        "acq_present": ((b, v, NUM_ACQUISITION_PARAMETERS), torch.bool),
    }
    for key, (shape, dtype) in expected.items():
        value = batch[key]
        if not torch.is_tensor(value) or tuple(value.shape) != shape or value.dtype != dtype:
            raise ValueError(f"batch[{key!r}] must be {dtype} of shape {shape}, got {_describe(value)}.")
    if len(batch["subject_id"]) != b:
        raise ValueError(f"batch['subject_id'] has {len(batch['subject_id'])} entries for a batch of {b}.")
    labels = batch.get("labels")
    if labels is not None and tuple(labels.shape) != (b, *image.shape[2:]):
        raise ValueError(f"batch['labels'] must be [B, D, H, W] = {(b, *image.shape[2:])}, got {_describe(labels)}.")


def _describe(value: Any) -> str:
    if torch.is_tensor(value):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
