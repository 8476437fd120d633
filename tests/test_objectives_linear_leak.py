"""The linear leak penalty on hand-made pooled features: it sees a linear sequence signal, only that."""

import pytest
import torch

from prism.objectives.base import PretrainStep
from prism.models.sequence_eraser import within_subject_residuals
from prism.objectives.linear_leak import LinearLeakPenalty


def _step(anatomy: torch.Tensor, sequence_id: torch.Tensor, num_views: int = 2) -> PretrainStep:
    """A PretrainStep carrying only what the penalty reads (views subject-major, two per subject)."""
    n = len(sequence_id)
    return PretrainStep(network=None, num_subjects=n // num_views, num_views=num_views, volumes=None, target=None,
                        view_present=torch.ones(n, dtype=torch.bool), sequence_id=sequence_id, acq_params=None,
                        acq_present=None, mask=None, ids_restore=None, grid=(1, 1, 1), features={"anatomy": anatomy},
                        prediction=None)


def _features(subjects: int, leak: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views per subject, same anatomy; channel 0 is shifted by ``leak`` x the sequence type."""
    anatomy = torch.randn(subjects, 1, 3, 8, generator=generator).expand(subjects, 2, 3, 8).clone()
    sequence_id = torch.stack([torch.randperm(4, generator=generator)[:2] for _ in range(subjects)])
    anatomy[..., 0] += leak * sequence_id[..., None].float()
    return anatomy.reshape(subjects * 2, 3, 8), sequence_id.reshape(-1)


def _filled(leak: float) -> LinearLeakPenalty:
    generator = torch.Generator().manual_seed(0)
    penalty = LinearLeakPenalty(anatomy_dim=8, bank_size=512, min_bank=32)
    for _ in range(32):
        penalty.compute(_step(*_features(8, leak, generator)))
    return penalty


def test_waits_for_the_bank_then_penalises_a_linear_leak():
    generator = torch.Generator().manual_seed(0)
    penalty = LinearLeakPenalty(anatomy_dim=8, bank_size=64, min_bank=32)
    assert penalty.compute(_step(*_features(8, 1.0, generator))) is None  # 16 of 32 vectors
    assert penalty.compute(_step(*_features(8, 1.0, generator))) is None  # probe fitted before this batch enters
    assert penalty.compute(_step(*_features(8, 1.0, generator))) > 0.05


def test_is_zero_without_a_sequence_difference_between_paired_views():
    penalty = _filled(leak=1.0)
    anatomy, sequence_id = _features(8, 0.0, torch.Generator().manual_seed(1))
    assert penalty.compute(_step(anatomy, sequence_id)).item() == pytest.approx(0.0, abs=1e-12)


def test_gradient_goes_to_the_leaking_channel():
    penalty = _filled(leak=1.0)
    anatomy, sequence_id = _features(8, 1.0, torch.Generator().manual_seed(2))
    anatomy.requires_grad_(True)
    penalty.compute(_step(anatomy, sequence_id)).backward()
    per_channel = anatomy.grad.abs().sum(dim=(0, 1))
    assert per_channel[0] > 5 * per_channel[1:].max()


def test_bank_is_saved_and_sizes_are_checked():
    assert set(LinearLeakPenalty(anatomy_dim=8).state_dict()) == {"bank.vectors", "bank.labels", "bank.next_row"}
    with pytest.raises(ValueError, match="min_bank"):
        LinearLeakPenalty(bank_size=16, min_bank=32)


def test_subject_centred_bank_sees_a_leak_that_drift_between_steps_hides():
    """Every step shifts all features by a large random offset (the encoder moving between steps): a probe
    fitted on raw bank vectors reads almost nothing, one fitted on within-subject residuals reads the leak."""
    values = {}
    for centred in (False, True):
        generator = torch.Generator().manual_seed(0)
        penalty = LinearLeakPenalty(anatomy_dim=8, bank_size=256, min_bank=64, subject_centred=centred)
        for _ in range(40):
            anatomy, sequence_id = _features(8, 0.2, generator)
            value = penalty.compute(_step(anatomy + 50.0 * torch.randn(1, 1, 8, generator=generator), sequence_id))
        values[centred] = float(value)
    assert values[True] > 10 * values[False]
    assert values[True] > 1e-3


def test_subject_residuals_drop_subjects_with_one_known_view():
    anatomy = torch.arange(4 * 3 * 2, dtype=torch.float).reshape(4, 3, 2)
    sequence_id = torch.tensor([0, 1, 2, -1])  # subject 1 has one known view
    known = sequence_id >= 0
    residuals, kept = within_subject_residuals(anatomy.mean(1), 2, known)
    assert kept.tolist() == [True, True, False, False]
    pooled = anatomy.mean(1)
    assert torch.allclose(residuals[0], (pooled[0] - pooled[1]) / 2)
