"""Logger factories: wandb that never prompts or hangs, resumable across requeues."""

from __future__ import annotations

import netrc
import os
import uuid
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger


def wandb_has_credentials() -> bool:
    """True when an API key is in the environment or ``~/.netrc`` (where ``wandb login`` writes it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _process_rank() -> int:
    for variable in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable])
    return 0


def wandb_logger(save_dir: str, project: str = "prism", name: str | None = None, offline: bool | None = None, **kwargs) -> WandbLogger:
    """A ``WandbLogger`` that runs offline unless credentials exist, and keeps one run id per run directory.

    The id is stored in ``save_dir/wandb_run_id`` on first launch and reused afterwards, so a
    resumed or requeued run continues the same wandb run instead of starting a new one.
    ``WANDB_MODE`` in the environment, when set, wins over the automatic choice.
    """
    if offline is None:
        offline = os.environ.get("WANDB_MODE", "").lower() in {"offline", "disabled", "dryrun"} or (
            "WANDB_MODE" not in os.environ and not wandb_has_credentials()
        )
    os.environ.setdefault("WANDB_SILENT", "true")
    id_file = Path(save_dir) / "wandb_run_id"
    id_file.parent.mkdir(parents=True, exist_ok=True)
    if id_file.exists():
        run_id = id_file.read_text().strip()
    elif _process_rank() == 0:
        run_id = uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
    else:  # other ranks never create a wandb run (Lightning logs on rank zero only)
        run_id = None
    return WandbLogger(save_dir=save_dir, project=project, name=name, offline=offline, id=run_id, resume="allow", **kwargs)
