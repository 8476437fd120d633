"""Scanner effects on a batch of rendered views, each with its own random parameters.

All functions take ``image [N, d, h, w]`` (N = batch x views) and draw per-view
parameters, then act on the whole batch in a few tensor ops:

* :func:`bias_field`: smooth multiplicative field ``exp(field)``, coarse Gaussian lattice upsampled.
* :func:`resolution`: thick slices along a random axis (or coarse isotropic voxels):
  Gaussian slice profile, sampling on a coarse lattice and linear interpolation back,
  written as one ``[n, n]`` matrix per view and axis, so all views with different
  axes and factors go through three batched matrix products. Also the baseline
  partial-volume blur.
* :func:`add_noise`: Rician (magnitude of complex Gaussian) or Gaussian noise at a
  sampled SNR (mean foreground signal / sigma).
* :func:`robust_normalise`: divide by a high percentile of the foreground, clip.
* :func:`random_gamma`: ``x ** exp(N(0, s))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prism.synth.config import ArtefactConfig, ResolutionConfig


def _uniform(r: tuple[float, float], *shape: int, generator: torch.Generator) -> torch.Tensor:
    return r[0] + (r[1] - r[0]) * torch.rand(*shape, generator=generator)


def bias_field(image: torch.Tensor, config: ArtefactConfig, generator: torch.Generator) -> torch.Tensor:
    """Multiply each view by ``exp(f)``, f a smooth field of std ``U(bias_std)`` (p = bias_probability)."""
    n, *size = image.shape
    std = _uniform(config.bias_std, n, generator=generator)
    std = std * (torch.rand(n, generator=generator) < config.bias_probability)
    c = config.bias_control_points
    coarse = torch.randn(n, 1, c, c, c, generator=generator) * std.view(-1, 1, 1, 1, 1)
    field = F.interpolate(coarse.to(image.device), size=tuple(size), mode="trilinear", align_corners=True)
    return image * torch.exp(field[:, 0])


def _hat(positions: torch.Tensor, n: int) -> torch.Tensor:
    """Linear-interpolation weights ``[N, m, n]`` of fractional voxel ``positions [N, m]``."""
    j = torch.arange(n, dtype=positions.dtype, device=positions.device)
    return (1 - (positions[..., None] - j).abs()).clamp_min(0)


def resolution_matrices(
    n: int, factor: torch.Tensor, sigma: torch.Tensor, phase: torch.Tensor
) -> torch.Tensor:
    """Per-view operator along one axis: blur, sample every ``factor`` voxels, interpolate back.

    Args:
        n: axis length.
        factor: ``[N]`` slice spacing in voxels (1 = unchanged sampling).
        sigma: ``[N]`` Gaussian slice-profile sigma in voxels (0 = none).
        phase: ``[N]`` lattice offset in [0, 1) of a slice spacing.

    Returns:
        ``[N, n, n]`` matrices ``M`` with ``out = M @ in`` along the axis.
    """
    i = torch.arange(n, dtype=torch.float32)
    # Gaussian blur (rows normalised; sigma 0 gives the identity).
    diff = i[None, :, None] - i[None, None, :]
    s = sigma.clamp_min(1e-3).view(-1, 1, 1)
    blur = torch.exp(-0.5 * (diff / s) ** 2)
    blur = blur / blur.sum(-1, keepdim=True)
    # Output voxel i lies between lattice points k0 and k0 + 1 (lattice at (k + phase) * factor).
    f, ph = factor.view(-1, 1), phase.view(-1, 1)
    u = i[None] / f - ph
    k0 = torch.floor(u)
    w = u - k0
    last = torch.floor((n - 1) / f - ph)
    low = ((k0 + ph) * f).clamp(0, n - 1)
    high = ((torch.minimum(k0 + 1, last) + ph) * f).clamp(0, n - 1)
    resample = (1 - w)[..., None] * _hat(low, n) + w[..., None] * _hat(high, n)
    identity = (factor <= 1).view(-1, 1, 1)
    resample = torch.where(identity, torch.eye(n).expand_as(resample), resample)
    return resample @ blur


def resolution(
    image: torch.Tensor, spacing_mm: float, config: ResolutionConfig, generator: torch.Generator
) -> torch.Tensor:
    """Resolution randomisation and partial-volume blur of ``image [N, d, h, w]``.

    With probability ``config.probability`` a view is degraded: either coarse isotropic
    voxels ``U(isotropic_mm)`` (p = isotropic_probability) or thick slices ``U(slice_mm)``
    along one random axis. The slice profile is a Gaussian whose FWHM is the slice
    thickness (slice spacing x ``U(thickness_ratio)``; sigma = FWHM / 2.355); the view is
    then sampled on the coarse lattice (random phase) and linearly interpolated back.
    Every view also gets a baseline partial-volume blur ``U(partial_volume_sigma_vox)``.
    Spacings at or below ``spacing_mm`` leave an axis untouched.
    """
    n_views = image.shape[0]
    degrade = torch.rand(n_views, generator=generator) < config.probability
    isotropic = torch.rand(n_views, generator=generator) < config.isotropic_probability
    axis = torch.randint(0, 3, (n_views,), generator=generator)
    iso_mm = _uniform(config.isotropic_mm, n_views, generator=generator)
    slice_mm = _uniform(config.slice_mm, n_views, generator=generator)
    ratio = _uniform(config.thickness_ratio, n_views, generator=generator)
    base_sigma = _uniform(config.partial_volume_sigma_vox, n_views, 3, generator=generator)
    phase = torch.rand(n_views, 3, generator=generator)
    one_axis = torch.nn.functional.one_hot(axis, 3).bool()
    spacing = torch.where(isotropic[:, None], iso_mm[:, None].expand(-1, 3),
                          torch.where(one_axis, slice_mm[:, None], torch.full((n_views, 3), spacing_mm)))
    spacing = torch.where(degrade[:, None], spacing, torch.full((n_views, 3), spacing_mm))
    factor = (spacing / spacing_mm).clamp_min(1.0)
    thickness_vox = factor * torch.where(factor > 1, ratio[:, None].expand(-1, 3), torch.zeros(n_views, 3))
    sigma = torch.sqrt(base_sigma**2 + (thickness_vox / 2.355) ** 2)
    if bool((sigma < 0.05).all()) and bool((factor <= 1).all()):
        return image
    out = image
    equations = ("nij,njhw->nihw", "nij,ndjw->ndiw", "nij,ndhj->ndhi")
    for ax in range(3):
        if bool((sigma[:, ax] < 0.05).all()) and bool((factor[:, ax] <= 1).all()):
            continue
        matrix = resolution_matrices(image.shape[1 + ax], factor[:, ax], sigma[:, ax], phase[:, ax])
        out = torch.einsum(equations[ax], matrix.to(image.device, image.dtype), out)
    return out


def add_noise(
    image: torch.Tensor, foreground: torch.Tensor, config: ArtefactConfig, generator: torch.Generator,
    device_generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rician (p = rician_probability) or Gaussian noise, sigma = mean foreground signal / SNR.

    Args:
        image: ``[N, d, h, w]`` non-negative signal.
        foreground: bool/float ``[N, d, h, w]`` (brain) mask.
        device_generator: generator on ``image.device`` for the voxel-wise draws
            (defaults to ``generator`` on CPU).
    """
    n = image.shape[0]
    snr = _uniform(config.snr, n, generator=generator)
    rician = (torch.rand(n, generator=generator) < config.rician_probability).to(image.device).view(-1, 1, 1, 1)
    fg = foreground.float()
    level = (image * fg).flatten(1).sum(1) / fg.flatten(1).sum(1).clamp_min(1)
    sigma = (level / snr.to(image.device)).view(-1, 1, 1, 1)
    gen = device_generator if device_generator is not None else generator
    noise = torch.randn((2, *image.shape), generator=gen, device=image.device) * sigma
    magnitude = torch.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)
    return torch.where(rician, magnitude, image + noise[0])


def robust_normalise(
    image: torch.Tensor, foreground: torch.Tensor, percentile: float = 99.5, clip_max: float = 1.5
) -> torch.Tensor:
    """Divide each view by its ``percentile`` over the foreground and clip to ``[0, clip_max]``.

    The percentile is read from the top-k of the masked volume, so it costs one
    ``topk`` for the whole batch instead of a sort per view.
    """
    n = image.shape[0]
    flat = (image * foreground).flatten(1)
    count = foreground.flatten(1).sum(1)
    k = ((1 - percentile / 100) * count).ceil().long().clamp(1, flat.shape[1])
    top = flat.topk(int(k.max()), dim=1).values
    scale = top.gather(1, (k - 1).view(-1, 1)).clamp_min(1e-6)
    return (image / scale.view(n, 1, 1, 1)).clamp(0, clip_max)


def random_gamma(image: torch.Tensor, log_std: float, generator: torch.Generator) -> torch.Tensor:
    """``image ** exp(N(0, log_std))`` per view (on a non-negative image)."""
    gamma = torch.exp(log_std * torch.randn(image.shape[0], generator=generator)).to(image.device)
    return image.clamp_min(0) ** gamma.view(-1, 1, 1, 1)
