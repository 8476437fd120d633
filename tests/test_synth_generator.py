"""Batched generation, the render API, artefacts and the SynthDataModule of prism.synth."""

from __future__ import annotations

import pytest
import torch

from prism.data.batch import validate_batch
from prism.sequences import ACQUISITION_PARAMETERS
from prism.synth import artefacts
from prism.synth.config import ArtefactConfig, ResolutionConfig, SynthConfig
from prism.synth.datamodule import SynthDataModule
from prism.synth.generator import SynthGenerator
from prism.synth.render import render
from prism.synth.subjects import SubjectSampler
from prism.synth.tissues import TISSUE_LABELS

SMALL = dict(crop_size=(24, 24, 24), spacing_mm=4.0)
TI = ACQUISITION_PARAMETERS.index("InversionTime")


@pytest.fixture(scope="module")
def engine() -> SynthGenerator:
    return SynthGenerator(SynthConfig(), **SMALL)


def test_batch_follows_the_contract(engine):
    batch = engine.generate(3, 2, torch.Generator().manual_seed(0))
    validate_batch(batch)
    image = batch["image"]
    assert image.shape == (3, 2, 24, 24, 24) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1.5
    background = batch["labels"][:, None].expand_as(image) == 0
    assert image[background].median() < 0.1  # background about 0
    assert batch["labels"].dtype == torch.int64
    for b in range(3):
        assert batch["recipe"][b][0] != batch["recipe"][b][1]  # two different sequences per subject
    ir = [[r in ("FLAIR", "STIR", "T1w_MPRAGE") for r in row] for row in batch["recipe"]]
    assert torch.equal(batch["acq_present"][..., TI], torch.tensor(ir))


def test_same_seed_same_batch_different_seed_different_batch(engine):
    a = engine.generate(2, 2, torch.Generator().manual_seed(1))
    b = engine.generate(2, 2, torch.Generator().manual_seed(1))
    c = engine.generate(2, 2, torch.Generator().manual_seed(2))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["acq_params"], b["acq_params"])
    assert not torch.equal(a["image"], c["image"])


def test_batched_generation_matches_per_sample_generation_statistically():
    config = SynthConfig.from_dict(sequences=["T1w_MPRAGE"], lesions={"wmh_probability": 0, "tumour_probability": 0})
    engine = SynthGenerator(config, crop_size=(20, 20, 20), spacing_mm=5.0)
    batched = engine.generate(24, 1, torch.Generator().manual_seed(0))
    singles = [engine.generate(1, 1, torch.Generator().manual_seed(100 + i)) for i in range(24)]

    def stats(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        gm, wm = labels == TISSUE_LABELS["gm"], labels == TISSUE_LABELS["wm"]
        return torch.stack([images[gm].mean(), images[wm].mean(), (labels > 0).float().mean()])

    s_batch = stats(batched["image"][:, 0], batched["labels"])
    s_single = stats(torch.cat([s["image"][:, 0] for s in singles]), torch.cat([s["labels"] for s in singles]))
    assert torch.allclose(s_batch, s_single, atol=0.08), (s_batch, s_single)
    assert s_batch[1] > s_batch[0] and s_single[1] > s_single[0]  # WM brighter than GM on MPRAGE in both


def test_render_given_labels_under_another_sequence():
    labels = torch.zeros(2, 12, 12, 12, dtype=torch.long)
    labels[:, 2:10, 2:10, 2:10] = TISSUE_LABELS["wm"]
    labels[:, 4:8, 4:8, 4:8] = TISSUE_LABELS["csf"]
    g = torch.Generator().manual_seed(0)
    t2 = render(labels, "T2w", g)
    assert t2.image.shape == (2, 12, 12, 12)
    assert (t2.image[:, 5, 5, 5] > t2.image[:, 3, 3, 3]).all()  # CSF brighter than WM on T2w
    flair = render(labels, "FLAIR", g)
    assert (flair.image[:, 5, 5, 5] < 0.2 * flair.image[:, 3, 3, 3]).all()  # CSF nulled
    assert (flair.acq_params[:, TI] > 1.5).all() and flair.acq_present[:, TI].all()
    fixed = torch.tensor([[4.0, 0.1, 0.0, 90.0, 3.0]]).repeat(2, 1)
    given = render(labels, "T2w", g, params=fixed)
    assert torch.equal(given.acq_params, fixed)


def test_sampler_and_render_compose_as_a_fine_tuning_augmentation():
    sampler = SubjectSampler(spacing_mm=4.0, crop_size=(16, 16, 16))
    subjects = sampler.sample(2, torch.Generator().manual_seed(0))
    views = render(subjects, ["T1w_GRE", "FLAIR"], torch.Generator().manual_seed(1))
    assert views.image.shape == (2, 16, 16, 16) and views.recipes == ["T1w_GRE", "FLAIR"]


def test_resolution_operator_is_identity_without_degradation_and_preserves_constants():
    one = torch.ones(3)
    identity = artefacts.resolution_matrices(10, one, torch.zeros(3), torch.zeros(3))
    assert torch.allclose(identity, torch.eye(10).expand(3, 10, 10), atol=1e-5)
    thick = artefacts.resolution_matrices(20, torch.tensor([3.0, 2.5]), torch.tensor([1.0, 0.5]), torch.tensor([0.3, 0.0]))
    assert torch.allclose(thick.sum(-1), torch.ones(2, 20), atol=1e-5)  # a constant stays constant


def test_thick_slices_blur_only_their_axis():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(8, 16, 16, 16, generator=g)
    config = ResolutionConfig(probability=1.0, isotropic_probability=0.0, slice_mm=(4.0, 4.0),
                              thickness_ratio=(1.0, 1.0), partial_volume_sigma_vox=(0.0, 0.0))
    out = artefacts.resolution(image, 1.0, config, g)
    roughness = [(out.diff(dim=ax + 1).abs().mean((1, 2, 3))) for ax in range(3)]
    smooth_axis = torch.stack(roughness).argmin(0)
    assert (torch.stack(roughness).min(0).values < 0.5 * torch.stack(roughness).max(0).values).all()
    assert smooth_axis.unique().numel() > 1  # the axis is random per view


def test_noise_and_normalisation():
    g = torch.Generator().manual_seed(0)
    image = torch.zeros(2, 16, 16, 16)
    image[:, 4:12, 4:12, 4:12] = 10.0
    foreground = image > 0
    noisy = artefacts.add_noise(image, foreground, ArtefactConfig(snr=(20.0, 20.0), rician_probability=0.0), g)
    assert (noisy - image)[foreground].std() == pytest.approx(0.5, rel=0.15)  # sigma = 10 / 20
    rician = artefacts.add_noise(image, foreground, ArtefactConfig(snr=(20.0, 20.0), rician_probability=1.0), g)
    assert (rician >= 0).all() and rician[~foreground].mean() > 0.3  # Rician floor in the background
    normalised = artefacts.robust_normalise(image * torch.tensor([1.0, 7.0]).view(2, 1, 1, 1), foreground)
    assert torch.allclose(normalised[foreground], torch.ones_like(normalised[foreground]))


def test_datamodule_streams_resume_and_differ_per_rank():
    dm = SynthDataModule(batch_size=2, crop_size=[16, 16, 16], spacing_mm=5.0, seed=3, val_batches=1)
    first = next(iter(dm.train_dataloader()))
    validate_batch(first)
    stream = dm.build_stream(3, 0, 0, None, "train")
    again = stream.make_batch(0, stream.generator_for(0))
    assert torch.equal(first["image"], again["image"])
    other_rank = dm.build_stream(3, 1, 0, None, "train")
    assert not torch.equal(first["image"], other_rank.make_batch(0, other_rank.generator_for(0))["image"])
    val = list(dm.val_dataloader())
    assert len(val) == 1
    validate_batch(val[0])


def test_generate_on_device_yields_descriptors_then_full_batches():
    dm = SynthDataModule(batch_size=2, crop_size=[16, 16, 16], spacing_mm=5.0, seed=3, generate_on="device")
    descriptor = next(iter(dm.train_dataloader()))
    assert "image" not in descriptor and descriptor["synth_seed"].shape == (1,)
    batch = dm.on_after_batch_transfer(descriptor, 0)
    validate_batch(batch)
    assert torch.equal(batch["image"], dm.on_after_batch_transfer(descriptor, 0)["image"])
    with pytest.raises(ValueError, match="generate_on='gpu'"):
        SynthDataModule(generate_on="gpu")


def test_hydra_config_builds_the_datamodule():
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).parents[1] / "conf" / "data" / "synth.yaml")
    for key in ("batch_size", "crop_size", "num_views", "num_workers", "seed", "val_batches", "spacing_mm", "generate_on"):
        assert key in cfg
    cfg.seed, cfg.crop_size, cfg.spacing_mm = 0, [16, 16, 16], 5.0
    dm = instantiate(cfg)
    assert isinstance(dm, SynthDataModule) and dm.batch_size == 2 and dm.num_views == 2
    validate_batch(next(iter(dm.train_dataloader())))


def test_gmm_views_have_unknown_sequence_and_no_parameters():
    config = SynthConfig.from_dict(contrast={"gmm_probability": 1.0})
    batch = SynthGenerator(config, **SMALL).generate(2, 2, torch.Generator().manual_seed(0))
    validate_batch(batch)
    assert (batch["sequence_id"] == -1).all() and not batch["acq_present"].any()
