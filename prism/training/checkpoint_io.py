"""Checkpoint IO that never leaves a half-written file and never executes pickled code.

Writes go to a temporary file in the target directory, are flushed to disk, then
``os.replace`` d onto the final name (atomic on POSIX): a run killed mid-save keeps its
previous checkpoint intact. Reads use ``torch.load(weights_only=True)``, which only
rebuilds tensors and plain containers.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint without executing pickled code; clear errors when the file is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}. Check the path (ckpt_path=... or finetune.checkpoint=...).")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, UnicodeDecodeError) as err:  # random bytes can decode as a pickled string
        raise ValueError(
            f"{path} cannot be read with torch.load(weights_only=True) ({type(err).__name__}): it holds pickled objects "
            f"other than tensors (prism never runs pickled code) or is corrupt or truncated (an interrupted copy?). "
            f"Re-save its state_dict, or use `prism export`."
        ) from err


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` using :func:`atomic_torch_save` and :func:`safe_torch_load`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options.")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return safe_torch_load(path, map_location=map_location if map_location is not None else "cpu")
