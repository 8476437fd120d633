"""Which checkpoint a run continues from, decided before training starts.

* ``ckpt_path=<file>`` (or Lightning's ``last`` / ``hpc``) wins.
* ``resume=auto`` (default): the newest of ``checkpoints/hpc_ckpt_*.ckpt`` (written on
  preemption), ``checkpoints/last*.ckpt`` (periodic) and ``hpc_ckpt_*.ckpt`` (Lightning's own
  location) in this run's directory; none found: a fresh start. This is what makes a
  requeued SLURM job continue where it stopped (its run directory is stable, see
  ``conf/hydra/default.yaml``). Deciding here avoids ``ckpt_path="hpc"``, which raises on the
  very first run when no HPC checkpoint exists yet (Lightning issue 20347).
* ``resume=never``: always a fresh start.

Before resuming, :func:`check_same_experiment` compares the model, objectives and seed with
the ``config_resolved.yaml`` the run directory already holds, so a different experiment that
lands in the same directory (e.g. a second run in one ``salloc``) fails with a clear message
instead of loading foreign weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

RESUME_GLOBS = ("checkpoints/hpc_ckpt_*.ckpt", "checkpoints/last*.ckpt", "hpc_ckpt_*.ckpt")
RESUME_MODES = ("auto", "never")
CONFIG_FILE = "config_resolved.yaml"
IDENTITY_KEYS = ("seed", "model", "module.objectives")


def checkpoint_step(path: Path) -> int:
    """``global_step`` stored in a checkpoint file, read lazily (mmap: tensors are not loaded); -1 if unreadable."""
    if not path.is_file():
        return -1
    try:
        return int(torch.load(path, map_location="cpu", mmap=True, weights_only=True).get("global_step", -1))
    except Exception:  # foreign or partial file: rank it last, by modification time
        return -1


def newest_checkpoint(output_dir: str | Path) -> Path | None:
    """The resumable checkpoint in ``output_dir`` that is furthest along, or None.

    Ranked by stored ``global_step``; on a tie the preemption checkpoint wins, then the most
    recently written file (a periodic ``last.ckpt`` written at the same step holds the same state).
    """
    output_dir = Path(output_dir)
    found = {path for pattern in RESUME_GLOBS for path in output_dir.glob(pattern) if path.exists()}
    if not found:
        return None
    return max(found, key=lambda path: (checkpoint_step(path), path.name.startswith("hpc_ckpt_"), path.stat().st_mtime_ns))


def resume_mode(value: Any) -> str:
    """Normalise ``resume`` (``auto``/``never``; YAML booleans true/false are accepted too)."""
    if value is None or value is True:
        return "auto"
    if value is False:
        return "never"
    mode = str(value).lower()
    if mode not in RESUME_MODES:
        raise ValueError(f"resume={value!r} is not understood; use resume=auto or resume=never (or ckpt_path=<file>).")
    return mode


def resolve_ckpt_path(ckpt_path: str | None, resume: Any, output_dir: str | Path) -> str | None:
    """The ``ckpt_path`` to give ``trainer.fit``: explicit path, newest checkpoint here, or None (fresh start)."""
    if ckpt_path:
        return str(ckpt_path)
    if resume_mode(resume) == "never":
        return None
    newest = newest_checkpoint(output_dir)
    return str(newest) if newest is not None else None


def _select(container: dict[str, Any], dotted: str) -> Any:
    node: Any = container
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _resolved(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _differences(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for key in keys for d in _differences(old.get(key), new.get(key), f"{prefix}.{key}")]
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def check_same_experiment(cfg: DictConfig, output_dir: str | Path) -> None:
    """Refuse to auto-resume a checkpoint written by a different model / objectives / seed.

    Raises:
        ValueError: listing the differing keys and the three ways forward.
    """
    saved = Path(output_dir) / CONFIG_FILE
    if not saved.is_file():
        return
    old = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
    new = {key: _resolved(cfg, key) for key in IDENTITY_KEYS}
    differences = [d for key in IDENTITY_KEYS for d in _differences(_select(old, key), new[key], key)]
    if differences:
        shown = "; ".join(differences[:5]) + (f"; ... ({len(differences)} in all)" if len(differences) > 5 else "")
        raise ValueError(
            f"The run directory {output_dir} holds checkpoints of a different experiment ({shown}). "
            f"Start a new run directory (hydra.run.dir=... or PRISM_RUN_NAME=...), start over here with resume=never, "
            f"or load a checkpoint on purpose with ckpt_path=<file>."
        )
