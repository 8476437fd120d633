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


# what wandb accepts for WANDB_MODE (wandb.sdk.wandb_settings.Settings.mode)
WANDB_MODES = ("online", "offline", "shared", "disabled", "dryrun", "run")


def wandb_offline_from_environment() -> bool:
    """Offline unless ``WANDB_MODE`` asks for a networked mode, or is unset and credentials exist.

    An empty ``WANDB_MODE=`` counts as unset and is removed (wandb itself fails on it); a value wandb
    does not know is refused here, with the accepted ones, instead of deep inside wandb.
    """
    given = os.environ.get("WANDB_MODE")
    mode = (given or "").strip().lower()
    if not mode:
        os.environ.pop("WANDB_MODE", None)
        return not wandb_has_credentials()
    if mode not in WANDB_MODES:
        raise ValueError(f"WANDB_MODE={given!r} is not a wandb mode; use one of {', '.join(WANDB_MODES)} or unset it.")
    os.environ["WANDB_MODE"] = mode
    return mode in {"offline", "disabled", "dryrun"}


def _process_rank() -> int:
    for variable in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable])
    return 0


def wandb_logger(save_dir: str, project: str = "prism", name: str | None = None, offline: bool | None = None, **kwargs) -> WandbLogger:
    """A ``WandbLogger`` that runs offline unless credentials exist, and keeps one run id per run directory.

    The id is stored in ``save_dir/wandb_run_id`` on first launch and reused afterwards, so a
    resumed or requeued run continues the same wandb run instead of starting a new one.
    ``WANDB_MODE`` in the environment, when set, wins over the automatic choice
    (:func:`wandb_offline_from_environment`).
    """
    if offline is None:
        offline = wandb_offline_from_environment()
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
