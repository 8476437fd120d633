"""Diffeomorphic deformations and subject sampling of prism.synth."""

from __future__ import annotations

import torch

from prism.synth import deform
from prism.synth.config import DeformationConfig, LesionConfig
from prism.synth.subjects import SubjectBatch, SubjectSampler
from prism.synth.tissues import NUM_TISSUES


def _velocity(seed: int, std_mm: float = 4.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    half_extent = torch.tensor([96.0, 116.0, 94.0])
    return deform.random_velocity(3, 8, 32, (std_mm, std_mm), half_extent, g)


def test_exp_of_minus_v_inverts_exp_of_v():
    v = _velocity(0)
    forward, backward = deform.integrate_velocity(v), deform.integrate_velocity(-v)
    # interior points (the field is border-clamped outside [-1, 1], so the boundary is not invertible)
    points = 0.7 * deform.identity_points((20, 20, 20))[None].expand(3, -1, -1, -1, -1)
    moved = (deform.displace(points, forward) - points).abs()
    error = (deform.displace(deform.displace(points, forward), backward) - points).abs()
    assert moved.amax() > 0.05  # the warp really moves points (normalised units: about 5 mm)
    assert error.amax() < 0.1 * moved.amax()  # its inverse undoes it up to interpolation error
    assert error.mean() < 0.05 * moved.mean()


def test_warps_are_diffeomorphic_positive_jacobian():
    disp = deform.integrate_velocity(_velocity(1, std_mm=6.0))
    assert bool((deform.jacobian_determinant(disp) > 0).all())


def test_identity_when_no_velocity():
    zero = torch.zeros(2, 3, 8, 8, 8)
    assert torch.equal(deform.integrate_velocity(zero), zero)


def test_random_affine_has_the_requested_rotation_and_scale():
    g = torch.Generator().manual_seed(0)
    rot = deform.random_affine(64, (-15, 15), (1, 1), (0, 0), g)
    identity = torch.eye(3).expand(64, 3, 3)
    assert torch.allclose(rot @ rot.transpose(1, 2), identity, atol=1e-5)  # pure rotations
    scaled = deform.random_affine(64, (0, 0), (0.8, 1.2), (0, 0), g)
    diagonal = torch.diagonal(scaled, dim1=1, dim2=2)
    assert diagonal.min() >= 0.8 and diagonal.max() <= 1.2


def test_nearest_warp_of_labels_keeps_integer_values():
    labels = torch.randint(0, 4, (2, 1, 16, 16, 16)).float()
    disp = deform.integrate_velocity(_velocity(2)[:2])
    points = deform.displace(deform.identity_points((16, 16, 16))[None].expand(2, -1, -1, -1, -1), disp)
    warped = deform.sample(labels, points, mode="nearest")
    assert torch.equal(warped, warped.round())
    assert set(warped.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}


def test_sampler_gives_integer_labels_soft_maps_and_is_deterministic():
    sampler = SubjectSampler(spacing_mm=4.0, crop_size=(24, 28, 24), lesions=LesionConfig(1.0, tumour_probability=1.0))
    a = sampler.sample(2, torch.Generator().manual_seed(5))
    b = sampler.sample(2, torch.Generator().manual_seed(5))
    c = sampler.sample(2, torch.Generator().manual_seed(6))
    assert torch.equal(a.tissue_maps, b.tissue_maps) and not torch.equal(a.tissue_maps, c.tissue_maps)
    assert a.tissue_maps.shape == (2, 8, 24, 28, 24)
    assert torch.allclose(a.tissue_maps.sum(1), torch.ones(2, 24, 28, 24), atol=1e-4)
    labels = a.labels
    assert labels.dtype == torch.int64 and labels.shape == (2, 24, 28, 24)
    assert set(labels.unique().tolist()) <= set(range(NUM_TISSUES))
    assert {1, 2, 3} <= set(labels.unique().tolist())  # CSF, GM, WM present
    assert (labels == 5).any() or (labels == 6).any()  # a tumour was drawn (p = 1)
    assert a.tissue_params.shape == (2, NUM_TISSUES, 4)


def test_flip_mirrors_the_first_axis():
    no_warp = dict(rotation_deg=(0, 0), scaling=(1, 1), shear=(0, 0), translation_mm=(0, 0), svf_std_mm=(0, 0))
    plain = SubjectSampler(spacing_mm=4.0, crop_size=(32, 32, 32), deformation=DeformationConfig(**no_warp, flip_probability=0.0))
    flipped = SubjectSampler(spacing_mm=4.0, crop_size=(32, 32, 32), deformation=DeformationConfig(**no_warp, flip_probability=1.0))
    a = plain.sample(1, torch.Generator().manual_seed(0)).tissue_maps
    b = flipped.sample(1, torch.Generator().manual_seed(0)).tissue_maps
    assert torch.allclose(a.flip(2), b, atol=1e-4)


def test_from_labels_wraps_label_maps_as_hard_tissue_maps():
    labels = torch.tensor([0, 1, 2, 3]).repeat(1, 4, 4, 1)
    subjects = SubjectBatch.from_labels(labels, torch.Generator().manual_seed(0))
    assert subjects.tissue_ids == (0, 1, 2, 3)
    assert torch.equal(subjects.labels, labels)
