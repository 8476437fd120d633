"""Pictures to judge realism at a glance: a PNG grid, rows = sequences, columns = subjects.

:func:`synthesize_subjects` renders the SAME deformed subjects under every requested
recipe (exactly co-registered); :func:`save_grid` writes their mid slices.
Volumes are indexed (x, y, z) = (D, H, W) in RAS-like template order, so the mid axial
slice is ``volume[:, :, W // 2]``, shown with anterior up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prism.synth.generator import SynthGenerator, device_generator


@dataclass
class SubjectSet:
    """S subjects x R recipes, co-registered.

    Attributes:
        images: float32 ``[S, R, D, H, W]`` normalised images.
        labels: int64 ``[S, D, H, W]``.
        acq_params: ``[S, R, P]``; acq_present: bool ``[S, R, P]``.
        recipes: the R recipe names (``"GMM"`` never appears: physics only).
        field_strength: ``[S]`` tesla.
    """

    images: torch.Tensor
    labels: torch.Tensor
    acq_params: torch.Tensor
    acq_present: torch.Tensor
    recipes: list[str]
    field_strength: torch.Tensor


def synthesize_subjects(
    engine: SynthGenerator, num_subjects: int, recipes: list[str], generator: torch.Generator,
    device: torch.device | str = "cpu", chunk: int = 4,
) -> SubjectSet:
    """Draw ``num_subjects`` subjects and render each under every recipe (physics contrast).

    Subjects are drawn ``chunk`` at a time to bound memory at 1 mm.
    """
    if num_subjects < 1 or not recipes:
        raise ValueError("Need at least one subject and one recipe.")
    gmm = engine.config.contrast.gmm_probability
    engine.config.contrast.gmm_probability = 0.0  # named sequences only
    parts = []
    try:
        for start in range(0, num_subjects, chunk):
            n = min(chunk, num_subjects - start)
            dev_gen = device_generator(generator, device)
            subjects = engine.sampler.sample(n, generator, device)
            rendered, image = engine.render_views(subjects, [list(recipes)] * n, generator, dev_gen)
            r = len(recipes)
            parts.append((
                image.view(n, r, *image.shape[1:]).cpu(), subjects.labels.cpu(),
                rendered.acq_params.view(n, r, -1), rendered.acq_present.view(n, r, -1),
                subjects.field_strength.cpu(),
            ))
    finally:
        engine.config.contrast.gmm_probability = gmm
    images, labels, params, present, field = (torch.cat(x) for x in zip(*parts))
    return SubjectSet(images, labels, params, present, list(recipes), field)


def mid_axial(volume: torch.Tensor) -> np.ndarray:
    """Mid axial slice of a ``[D, H, W]`` (x, y, z) volume, oriented for display (anterior up)."""
    return volume[:, :, volume.shape[2] // 2].T.flip(0).numpy()


def save_grid(subjects: SubjectSet, path: str | Path, with_labels: bool = True) -> Path:
    """Write a PNG grid: rows = recipes (+ a label row), columns = subjects, mid axial slices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, r = subjects.images.shape[:2]
    rows = r + int(with_labels)
    fig, axes = plt.subplots(rows, s, figsize=(1.9 * s, 2.1 * rows), squeeze=False)
    for j in range(s):
        for i in range(r):
            ax = axes[i, j]
            ax.imshow(mid_axial(subjects.images[j, i]), cmap="gray", vmin=0, vmax=1.2)
            if j == 0:
                ax.set_ylabel(subjects.recipes[i], fontsize=9)
            if i == 0:
                ax.set_title(f"subject {j} ({float(subjects.field_strength[j]):.1f} T)", fontsize=8)
        if with_labels:
            axes[r, j].imshow(mid_axial(subjects.labels[j].float()), cmap="tab10", vmin=0, vmax=10, interpolation="nearest")
            if j == 0:
                axes[r, j].set_ylabel("labels", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
