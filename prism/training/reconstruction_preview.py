"""Callback: a PNG of what the model reconstructs, at every validation, logged to every logger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from prism.models.patches import unpatchify
from prism.objectives.base import PretrainStep
from prism.sequences import SEQUENCE_TYPES
from prism.visualization import mid_slice, save_image_grid


AXIAL = 2  # volumes are RAS (axis 2 = inferior-superior): slicing it gives axial images


def reconstruction_panels(step: PretrainStep, norm_pix: bool, max_volumes: int = 4) -> tuple[list[list[np.ndarray]], list[str], list[str]]:
    """Rows = volumes; columns = input, masked input, reconstruction, reconstruction pasted into visible input,
    and (with two or more views) the swap: view 0's anatomy rendered with view 1's sequence code, next to view 1."""
    from prism.objectives.masked_reconstruction import MaskedReconstruction

    patch = step.network.patch_size
    n = min(max_volumes, step.volumes.shape[0])
    pred = step.prediction[:n].detach().float()
    target = step.target[:n].float()
    if norm_pix:
        pred = MaskedReconstruction(norm_pix_loss=True).to_image_space(pred, target)
    mask = step.mask[:n].unsqueeze(-1).expand_as(target)
    to_volume = lambda p: unpatchify(p, step.grid, patch)[:, 0].cpu().numpy()  # noqa: E731
    inputs, masked, recon = to_volume(target), to_volume(target * (1 - mask)), to_volume(pred)
    pasted = to_volume(target * (1 - mask) + pred * mask)
    rows, labels = [], []
    for i in range(n):
        rows.append([mid_slice(v[i], axis=AXIAL) for v in (inputs, masked, recon, pasted)])
        seq = int(step.sequence_id[i])
        labels.append(f"subject {i // step.num_views}, {SEQUENCE_TYPES[seq] if seq >= 0 else '?'}")
    columns = ["input", "masked", "reconstruction", "recon + visible"]
    if step.num_views >= 2:
        with torch.no_grad():
            anatomy, code = step.features["anatomy"], step.features["sequence_code"]
            swap = step.network.decode(anatomy[0:1], code[1:2], step.ids_restore[0:1], step.grid).float()
            if norm_pix:
                swap = MaskedReconstruction(norm_pix_loss=True).to_image_space(swap, step.target[1:2].float())
        rows.append([mid_slice(inputs[0], axis=AXIAL), None, mid_slice(to_volume(swap)[0], axis=AXIAL), mid_slice(inputs[1], axis=AXIAL)])
        labels.append("swap: row 1 anatomy\n+ row 2 sequence")
    return rows, labels, columns


class ReconstructionPreview(L.Callback):
    """Write ``reconstructions/step_XXXXXXX.png`` from the first validation batch and log it as an image.

    Args:
        out_dir: folder for the PNGs (``${paths.output_dir}/reconstructions``).
        max_volumes: volumes (rows) shown.
    """

    def __init__(self, out_dir: str, max_volumes: int = 4):
        super().__init__()
        self.out_dir, self.max_volumes = Path(out_dir), max_volumes

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        step = outputs.get("step") if isinstance(outputs, dict) else None
        if step is None or not trainer.is_global_zero or trainer.sanity_checking:
            return
        objective = pl_module.objectives["masked_reconstruction"] if "masked_reconstruction" in pl_module.objectives else None
        rows, labels, columns = reconstruction_panels(step, bool(getattr(objective, "norm_pix_loss", False)), self.max_volumes)
        path = save_image_grid(rows, self.out_dir / f"step_{trainer.global_step:07d}.png", labels, columns,
                               title=f"step {trainer.global_step}: mid axial slices (swap row: 4th column is the target)")
        for logger in trainer.loggers:
            log_image = getattr(logger, "log_image", None)  # WandbLogger
            if callable(log_image):
                log_image(key="val/reconstruction", images=[str(path)], step=trainer.global_step)
            elif hasattr(getattr(logger, "experiment", None), "add_image"):  # TensorBoardLogger
                from PIL import Image

                logger.experiment.add_image("val/reconstruction", np.asarray(Image.open(path).convert("RGB")), trainer.global_step, dataformats="HWC")
