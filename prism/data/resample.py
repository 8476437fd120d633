"""Geometry and intensity steps of preprocessing: canonical grids, resampling, cropping, scaling.

Conventions (stored with every volume, see :mod:`prism.data.store`):

* A stored array ``a[i, j, k]`` has its voxel axes in RAS+ order: ``i`` runs left -> Right,
  ``j`` posterior -> Anterior, ``k`` inferior -> Superior (nibabel's closest canonical).
  The volume's JSON holds the 4x4 voxel-to-world (mm) affine of the stored grid.
* ``align_to_world=False`` (default) keeps an oblique acquisition's rotation (like
  ``nibabel.as_closest_canonical`` followed by a spacing change): no rotation is
  interpolated into the data. ``True`` resamples onto world-aligned axes.
* Interpolation is trilinear; outside the source field of view the value is 0.
  Axis-aligned mappings (the common case: same rotation, other spacing, or a permutation)
  use a separable 1-D interpolation per axis, several times faster than
  ``scipy.ndimage.affine_transform``, which handles the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Grid:
    """A voxel grid in world space: ``affine`` (4x4, voxel index -> mm) and ``shape`` (3 ints)."""

    affine: np.ndarray
    shape: tuple[int, int, int]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    def corners(self) -> np.ndarray:
        """World positions of the 8 corner voxel centres, ``[8, 3]``."""
        return voxel_corners(self.affine, self.shape)

    def crop(self, box: tuple[slice, slice, slice]) -> "Grid":
        """The sub-grid ``box`` (slices with explicit start/stop) of this grid."""
        start = np.array([s.start for s in box], dtype=float)
        affine = self.affine.copy()
        affine[:3, 3] = self.affine[:3, :3] @ start + self.affine[:3, 3]
        return Grid(affine, tuple(int(s.stop - s.start) for s in box))  # type: ignore[arg-type]


def voxel_corners(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    ranges = [(0, n - 1) for n in shape[:3]]
    ijk = np.array(np.meshgrid(*ranges, indexing="ij")).reshape(3, -1).T
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def canonical_grid(affine: np.ndarray, shape: tuple[int, ...], spacing: tuple[float, float, float], align_to_world: bool = False) -> Grid:
    """The RAS+ grid at ``spacing`` (mm) covering the field of view of an image.

    Args:
        affine: the image's voxel-to-world affine.
        shape: the image's shape (first three axes used).
        spacing: target voxel size in mm along the output axes.
        align_to_world: use world axes instead of the image's own (rotation kept otherwise).
    """
    if align_to_world:
        rotation = np.eye(3)
    else:
        ornt = nib.orientations.io_orientation(affine)
        canonical = affine @ nib.orientations.inv_ornt_aff(ornt, shape[:3])
        u, _, vt = np.linalg.svd(canonical[:3, :3])
        rotation = u @ vt  # nearest orthonormal frame (removes shear and scaling)
    # Express the source corners in the output frame and cover them.
    frame = voxel_corners(affine, shape) @ rotation
    low, high = frame.min(axis=0), frame.max(axis=0)
    step = np.asarray(spacing, dtype=float)
    size = np.floor((high - low) / step + 1e-3).astype(int) + 1
    out = np.eye(4)
    out[:3, :3] = rotation @ np.diag(step)
    out[:3, 3] = rotation @ low
    return Grid(out, tuple(int(n) for n in size))  # type: ignore[arg-type]


def resample(data: np.ndarray, affine: np.ndarray, grid: Grid) -> np.ndarray:
    """Trilinear resampling of a 3D ``data`` (with ``affine``) onto ``grid``; float32, 0 outside."""
    data = np.asarray(data, dtype=np.float32)
    if data.flags.f_contiguous and not data.flags.c_contiguous:
        # NIfTI data decode in Fortran order: resample the C-ordered transposed view onto the
        # transposed grid, so every pass reads memory in order; the result is Fortran-ordered too
        reverse = np.eye(4)[[2, 1, 0, 3]]
        transposed = Grid(grid.affine @ reverse, grid.shape[::-1])  # type: ignore[arg-type]
        return resample(data.T, affine @ reverse, transposed).T
    mapping = np.linalg.inv(affine) @ grid.affine  # output voxel -> source voxel
    linear, offset = mapping[:3, :3], mapping[:3, 3]
    permutation = _axis_permutation(linear)
    if permutation is None:
        return ndimage.affine_transform(data, linear, offset=offset, output_shape=grid.shape, order=1, mode="constant", cval=0.0, prefilter=False)
    # output axis j reads source axis permutation[j] at coordinate scale * index + offset
    coordinates = [linear[s, j] * np.arange(grid.shape[j]) + offset[s] for j, s in enumerate(permutation)]
    return _separable(np.transpose(data, permutation), coordinates, grid.shape)


def _axis_permutation(linear: np.ndarray, tolerance: float = 1e-6) -> tuple[int, int, int] | None:
    """For a signed-permutation-times-diagonal matrix, the source axis of each output axis."""
    magnitude = np.abs(linear)
    source = magnitude.argmax(axis=0)
    if len(set(source.tolist())) != 3:
        return None
    off = magnitude.copy()
    off[source, np.arange(3)] = 0.0
    if off.max() > tolerance * magnitude.max():
        return None
    return tuple(int(s) for s in source)  # type: ignore[return-value]


def _separable(data: np.ndarray, coordinates: list[np.ndarray], shape: tuple[int, int, int]) -> np.ndarray:
    """Resample ``data`` (axes already matched to the output) axis by axis.

    Axes whose coordinates are integers (flips, shifts, integer strides) become slices of a
    view, at no cost; the remaining axes are interpolated linearly one after the other on a
    contiguous copy (two gathers per axis). Output voxels outside the source are 0.
    """
    out = np.zeros(shape, np.float32)
    index, placement, interpolate = [], [], []
    for axis, coords in enumerate(coordinates):
        n = data.shape[axis]
        valid = np.flatnonzero((coords >= -1e-4) & (coords <= n - 1 + 1e-4))
        if valid.size == 0:
            return out
        j0, j1 = int(valid[0]), int(valid[-1]) + 1
        placement.append(slice(j0, j1))
        coords = np.clip(coords[j0:j1], 0, n - 1)
        rounded = np.round(coords)
        step = rounded[1] - rounded[0] if coords.size > 1 else 1.0
        if np.allclose(coords, rounded, atol=1e-4) and step != 0 and np.allclose(np.diff(rounded), step):
            first, step = int(rounded[0]), int(step)
            stop = first + step * coords.size
            index.append(slice(first, stop if stop >= 0 else None, step))
        else:
            index.append(slice(None))
            interpolate.append((axis, coords))
    current = data[tuple(index)]
    if interpolate:
        current = np.ascontiguousarray(current)  # gathers along any axis of a C-ordered array copy whole runs
    for axis, coords in sorted(interpolate, key=lambda item: item[1].size / current.shape[item[0]]):  # shrinking axes first
        n = current.shape[axis]
        low = np.minimum(np.floor(coords).astype(np.intp), max(n - 2, 0))
        high = np.minimum(low + 1, n - 1)
        shape = [1, 1, 1]
        shape[axis] = -1
        weight = (coords - low).astype(np.float32).reshape(shape)
        result = np.take(current, low, axis=axis)
        step = np.take(current, high, axis=axis)
        step -= result
        step *= weight
        result += step  # low + (high - low) * weight, with one temporary
        current = result
    out[tuple(placement)] = current
    return out


def world_overlap(grid: Grid, affine: np.ndarray, shape: tuple[int, ...]) -> float:
    """Overlap of two fields of view (world bounding boxes) as a fraction of the smaller one."""
    a, b = grid.corners(), voxel_corners(affine, shape)
    low = np.maximum(a.min(0), b.min(0))
    high = np.minimum(a.max(0), b.max(0))
    intersection = np.prod(np.clip(high - low, 0, None))
    smaller = min(np.prod(a.max(0) - a.min(0)), np.prod(b.max(0) - b.min(0)))
    return float(intersection / smaller) if smaller > 0 else 0.0


def foreground_box(data: np.ndarray, margin_voxels: int = 4, threshold: float = 0.1) -> tuple[slice, slice, slice]:
    """Bounding box of the foreground: voxels above ``threshold`` x the 99th percentile.

    The mask is computed on 2x2x2 block means (halves the noise, 8x fewer voxels); slices
    whose foreground count is below 0.5 % of the fullest slice are treated as noise.
    """
    if data.flags.f_contiguous and not data.flags.c_contiguous:  # read memory in order
        return foreground_box(data.T, margin_voxels, threshold)[::-1]
    blocks = _block_mean(data)
    low, high = np.percentile(blocks[:: max(1, blocks.size // 200_000)], [0.0, 99.0]) if blocks.size else (0.0, 0.0)
    mask = blocks > low + threshold * (high - low)
    box = []
    for axis in range(3):
        profile = mask.sum(axis=tuple(a for a in range(3) if a != axis))
        keep = np.flatnonzero(profile >= max(1, 0.005 * profile.max()))
        if keep.size == 0:
            box.append(slice(0, data.shape[axis]))
            continue
        start = max(0, 2 * int(keep[0]) - margin_voxels)
        stop = min(data.shape[axis], 2 * int(keep[-1]) + 2 + margin_voxels)
        box.append(slice(start, stop))
    return tuple(box)  # type: ignore[return-value]


def _block_mean(data: np.ndarray) -> np.ndarray:
    """Means of 2x2x2 blocks (a trailing odd voxel is dropped), as a sum of 8 strided views."""
    size = [n // 2 * 2 for n in data.shape]
    if min(size) == 0:
        return data.astype(np.float32)
    total = np.zeros([n // 2 for n in size], np.float32)
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                total += data[i : size[0] : 2, j : size[1] : 2, k : size[2] : 2]
    return total * 0.125


NORMALIZATIONS = ("percentile", "zscore", "none")


def normalize_intensity(data: np.ndarray, mode: str = "percentile", percentile: float = 99.5, clip_max: float = 1.5) -> tuple[np.ndarray, dict[str, float]]:
    """Robust per-volume intensity scaling (in place on a float32 array).

    ``percentile`` (default, the same scaling as ``prism.synth``'s ``normalise_percentile``
    / ``clip_max``, so real and synthetic batches mix): divide by the foreground's
    ``percentile``-th percentile and clip to ``[0, clip_max]``. ``zscore``: clip to the
    foreground's 0.5-99.5 % range, subtract its mean, divide by its standard deviation.
    ``none``: unchanged. The foreground is every voxel above 10 % of the 99th percentile;
    statistics use a strided subsample of at most ~1M voxels.

    Returns:
        ``(data, stats)`` with the statistics used.
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalize={mode!r} unknown; use one of {list(NORMALIZATIONS)}.")
    if mode == "none":
        return data, {}
    flat = data.reshape(-1)
    sample = flat[:: max(1, flat.size // 1_000_000)]
    floor, top = np.percentile(sample, [0.0, 99.0])
    foreground = sample[sample > floor + 0.1 * (top - floor)]
    if foreground.size < 16:
        foreground = sample
    if mode == "percentile":
        high = float(np.percentile(foreground, percentile))
        np.multiply(data, 1.0 / high if high > 0 else 1.0, out=data)
        np.clip(data, 0.0, clip_max, out=data)
        return data, {"high": high}
    low, high = (float(v) for v in np.percentile(foreground, (0.5, 99.5)))
    clipped = np.clip(foreground, low, high)
    mean, std = float(clipped.mean()), float(clipped.std()) or 1.0
    np.clip(data, low, high, out=data)
    np.subtract(data, mean, out=data)
    np.divide(data, std, out=data)
    return data, {"low": low, "high": high, "mean": mean, "std": std}
