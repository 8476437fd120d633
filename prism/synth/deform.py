"""Random smooth diffeomorphic deformations, batched: affine + stationary velocity field.

A subject is the template seen through ``phi o A``: output voxel ``x`` (mm, crop
centred) is first mapped by a random affine ``A`` (rotation, per-axis scaling, shear,
plus the crop centre) into template millimetres, then by the diffeomorphism
``phi = exp(v)`` of a stationary velocity field ``v``, integrated by scaling and
squaring (Arsigny et al. 2006; SynthSeg's recipe: a coarse Gaussian field upsampled,
integrated, sampled). ``exp(-v)`` is the inverse, so deformations are invertible up to
interpolation error (tested).

Fields live in the template's normalised coordinates (``[-1, 1]`` per axis,
``align_corners=True``), axis order (D, H, W); ``to_grid_sample`` flips to the
(x, y, z) = (W, H, D) order ``torch.nn.functional.grid_sample`` expects. Every function
takes a batch and runs as a handful of tensor ops, no loop over samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_grid_sample(points: torch.Tensor) -> torch.Tensor:
    """Reorder the last axis from (D, H, W) to grid_sample's (x, y, z)."""
    return points.flip(-1)


def sample(volume: torch.Tensor, points: torch.Tensor, mode: str = "bilinear", padding: str = "zeros") -> torch.Tensor:
    """Sample ``volume [N, C, D, H, W]`` at normalised ``points [N, d, h, w, 3]`` (D, H, W order)."""
    return F.grid_sample(volume, to_grid_sample(points), mode=mode, padding_mode=padding, align_corners=True)


def identity_points(shape: tuple[int, int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalised coordinates ``[d, h, w, 3]`` of a voxel grid spanning ``[-1, 1]`` per axis."""
    axes = [torch.linspace(-1, 1, n, device=device) if n > 1 else torch.zeros(1, device=device) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def random_affine(
    batch: int,
    rotation_deg: tuple[float, float],
    scaling: tuple[float, float],
    shear: tuple[float, float],
    generator: torch.Generator,
) -> torch.Tensor:
    """Random linear maps ``[B, 3, 3]`` = rotation (x, y, z Euler) @ scaling @ shear, in mm space."""
    u = lambda r, *s: r[0] + (r[1] - r[0]) * torch.rand(*s, generator=generator)  # noqa: E731
    angles = torch.deg2rad(u(rotation_deg, batch, 3))
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones(batch), torch.zeros(batch)
    rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], -1).view(batch, 3, 3)
    ry = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], -1).view(batch, 3, 3)
    rz = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], -1).view(batch, 3, 3)
    scale = torch.diag_embed(u(scaling, batch, 3))
    shear_m = torch.eye(3).repeat(batch, 1, 1)
    off = u(shear, batch, 6)
    shear_m[:, 0, 1], shear_m[:, 0, 2], shear_m[:, 1, 0] = off[:, 0], off[:, 1], off[:, 2]
    shear_m[:, 1, 2], shear_m[:, 2, 0], shear_m[:, 2, 1] = off[:, 3], off[:, 4], off[:, 5]
    return rx @ ry @ rz @ scale @ shear_m


def random_velocity(
    batch: int,
    control_points: int,
    integration_size: int,
    std_mm: tuple[float, float],
    half_extent_mm: torch.Tensor,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A smooth random stationary velocity field in normalised units.

    Gaussian values ``N(0, s)`` with ``s ~ U(std_mm)`` per sample on a
    ``control_points^3`` lattice, upsampled trilinearly to ``integration_size^3``.

    Args:
        half_extent_mm: ``[3]`` half extent of the template box (mm), to convert mm to
            normalised units per axis.

    Returns:
        ``[B, 3, n, n, n]`` velocity (channels in D, H, W order), normalised units.
    """
    std = std_mm[0] + (std_mm[1] - std_mm[0]) * torch.rand(batch, generator=generator)
    coarse = torch.randn(batch, 3, control_points, control_points, control_points, generator=generator)
    coarse = coarse * std.view(-1, 1, 1, 1, 1) / half_extent_mm.view(1, 3, 1, 1, 1)
    size = (integration_size,) * 3
    return F.interpolate(coarse.to(device), size=size, mode="trilinear", align_corners=True)


def integrate_velocity(velocity: torch.Tensor, steps: int = 6) -> torch.Tensor:
    """Displacement ``u`` of ``phi = exp(v) = id + u`` by scaling and squaring.

    Args:
        velocity: ``[B, 3, n, n, n]`` normalised units.
        steps: number of squarings (``v / 2^steps`` must be small against a voxel).

    Returns:
        ``[B, 3, n, n, n]`` displacement on the same lattice.
    """
    disp = velocity / (2**steps)
    ident = identity_points(tuple(velocity.shape[2:]), velocity.device)[None]
    for _ in range(steps):
        moved = ident + disp.permute(0, 2, 3, 4, 1)
        disp = disp + sample(disp, moved, padding="border")
    return disp


def displace(points: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """Apply ``id + u`` to normalised ``points [B, d, h, w, 3]``; ``u [B, 3, n, n, n]``."""
    return points + sample(displacement, points, padding="border").permute(0, 2, 3, 4, 1)


def crop_points(
    crop_size: tuple[int, int, int],
    spacing_mm: float | list[float],
    linear: torch.Tensor,
    centre_mm: torch.Tensor,
    half_extent_mm: torch.Tensor,
    flip: torch.Tensor,
) -> torch.Tensor:
    """Template-normalised coordinates of every output voxel before the nonlinear warp.

    Args:
        crop_size: output (d, h, w).
        spacing_mm: output voxel size (one value or one per axis).
        linear: ``[B, 3, 3]`` affine linear part (mm -> mm).
        centre_mm: ``[B, 3]`` crop centre in template mm (relative to the template centre).
        half_extent_mm: ``[3]`` template half extent, ``(n - 1) / 2 * spacing``.
        flip: bool ``[B]``: mirror the first (left-right) axis.

    Returns:
        ``[B, d, h, w, 3]`` normalised points (D, H, W order).
    """
    device = linear.device
    spacing = list(spacing_mm) if isinstance(spacing_mm, (list, tuple)) else [spacing_mm] * 3
    axes = [(torch.arange(n, device=device) - (n - 1) / 2) * s for n, s in zip(crop_size, spacing)]
    local = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # [d, h, w, 3] mm
    sign = torch.ones(linear.shape[0], 3, device=device)
    sign[:, 0] = torch.where(flip.to(device), -1.0, 1.0)
    local = local[None] * sign.view(-1, 1, 1, 1, 3)
    mapped = torch.einsum("bij,bdhwj->bdhwi", linear, local) + centre_mm.view(-1, 1, 1, 1, 3)
    return mapped / half_extent_mm.to(device)


def random_crop_centre(
    batch: int,
    crop_size: tuple[int, int, int],
    spacing_mm: float,
    foreground_box_mm: torch.Tensor,
    translation_mm: tuple[float, float],
    generator: torch.Generator,
) -> torch.Tensor:
    """Crop centres ``[B, 3]`` (mm): uniform where the window stays inside the foreground box, plus jitter."""
    half = torch.tensor(crop_size, dtype=torch.float32) * spacing_mm / 2
    low, high = foreground_box_mm[0] + half, foreground_box_mm[1] - half
    middle = (foreground_box_mm[0] + foreground_box_mm[1]) / 2
    low, high = torch.where(low > high, middle, low), torch.where(low > high, middle, high)
    centre = low + (high - low) * torch.rand(batch, 3, generator=generator)
    jitter = translation_mm[0] + (translation_mm[1] - translation_mm[0]) * torch.rand(batch, 3, generator=generator)
    return centre + jitter


def jacobian_determinant(displacement: torch.Tensor) -> torch.Tensor:
    """Central-difference Jacobian determinant of ``id + u`` on the interior of its lattice.

    Args:
        displacement: ``[B, 3, n1, n2, n3]`` normalised units (D, H, W order).

    Returns:
        ``[B, n1 - 2, n2 - 2, n3 - 2]``; positive everywhere for a diffeomorphism.
    """
    sizes = displacement.shape[2:]
    columns = []
    for axis in range(3):
        forward, backward = [slice(1, -1)] * 3, [slice(1, -1)] * 3
        forward[axis], backward[axis] = slice(2, None), slice(None, -2)
        step = 2.0 / (sizes[axis] - 1)
        columns.append((displacement[(..., *forward)] - displacement[(..., *backward)]) / (2 * step))
    jac = torch.stack(columns, dim=-1).permute(0, 2, 3, 4, 1, 5)
    return torch.linalg.det(jac + torch.eye(3, device=displacement.device))
