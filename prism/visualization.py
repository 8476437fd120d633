"""PNG figures of volumes: labelled grids of mid-slices, for people to look at."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def mid_slice(volume: np.ndarray, axis: int = 0) -> np.ndarray:
    """The middle 2D slice of a ``[D, H, W]`` volume along ``axis``, oriented for display."""
    index = volume.shape[axis] // 2
    return np.rot90(np.take(volume, index, axis=axis))


def save_image_grid(
    images: Sequence[Sequence[np.ndarray | None]],
    path: str | Path,
    row_labels: Sequence[str] = (),
    col_labels: Sequence[str] = (),
    title: str | None = None,
    cell_inches: float = 1.8,
    robust_range: bool = True,
) -> Path:
    """Save a grid of 2D grey images (``images[row][col]``; ``None`` leaves a cell blank) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(images), max(len(r) for r in images)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell_inches, rows * cell_inches), squeeze=False)
    for r, row in enumerate(images):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            image = row[c] if c < len(row) else None
            if image is not None:
                lo, hi = (np.percentile(image, [0.5, 99.5]) if robust_range else (image.min(), image.max()))
                ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
            if r == 0 and c < len(col_labels):
                ax.set_title(col_labels[c], fontsize=8)
            if c == 0 and r < len(row_labels):
                ax.set_ylabel(row_labels[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
