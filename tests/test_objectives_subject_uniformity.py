"""Subject uniformity on hand-made pooled features: known value, spreads subjects, never splits views."""

import math

import pytest
import torch
import torch.nn.functional as F

from prism.objectives.base import PretrainStep
from prism.objectives.feature_bank import FeatureBank
from prism.objectives.subject_uniformity import SubjectUniformity, uniformity


def _step(anatomy: torch.Tensor, num_views: int = 2, present: torch.Tensor | None = None) -> PretrainStep:
    n = anatomy.shape[0]
    present = torch.ones(n, dtype=torch.bool) if present is None else present
    return PretrainStep(network=None, num_subjects=n // num_views, num_views=num_views, volumes=None, target=None,
                        view_present=present, sequence_id=torch.zeros(n, dtype=torch.long), acq_params=None,
                        acq_present=None, mask=None, ids_restore=None, grid=(1, 1, 1), features={"anatomy": anatomy},
                        prediction=None)


def test_known_value_for_orthogonal_and_identical_points():
    points = torch.eye(3)
    valid = ~torch.eye(3, dtype=torch.bool)
    assert uniformity(points, points, valid, 2.0).item() == pytest.approx(-4.0)  # |p - q|^2 = 2 for all pairs
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert uniformity(same, same, ~torch.eye(2, dtype=torch.bool), 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_views_of_one_subject_are_not_negatives():
    # two subjects, two identical views each, subjects orthogonal: only cross-subject pairs count
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    anatomy = torch.stack([a, a, b, b])[:, None, :].repeat(1, 3, 1)
    loss = SubjectUniformity(anatomy_dim=2, bank_size=0).compute(_step(anatomy))
    assert loss.item() == pytest.approx(-4.0)


def test_gradient_spreads_subjects_and_leaves_view_agreement_alone():
    torch.manual_seed(0)
    shared = torch.tensor([5.0, 0.0, 0.0, 0.0])
    subjects = shared + 0.3 * torch.randn(4, 4)
    anatomy = subjects.repeat_interleave(2, dim=0)[:, None, :].repeat(1, 2, 1).requires_grad_(True)
    objective = SubjectUniformity(anatomy_dim=4, bank_size=0)
    before = objective.compute(_step(anatomy))
    before.backward()
    stepped = (anatomy - 0.5 * anatomy.grad).detach()
    assert objective.compute(_step(stepped)).item() < before.item()
    pooled = F.normalize(stepped.mean(1), dim=-1)
    assert torch.allclose(pooled[0::2], pooled[1::2], atol=1e-6)  # identical views stay identical
    cosine = lambda x: (F.normalize(x.mean(1), dim=-1)[0::2] @ F.normalize(x.mean(1), dim=-1)[0::2].T)
    off = ~torch.eye(4, dtype=torch.bool)
    assert cosine(stepped)[off].mean() < cosine(anatomy.detach())[off].mean()


def test_bank_supplies_negatives_after_the_first_batch_and_absent_views_are_ignored():
    objective = SubjectUniformity(anatomy_dim=2, bank_size=8)
    single = torch.tensor([[1.0, 0.0], [0.0, 1.0]])[:, None, :]  # one subject, two views: no negatives yet
    assert objective.compute(_step(single)) is None
    assert len(objective.bank) == 2
    loss = objective.compute(_step(single))  # now the previous batch is in the bank
    expected = math.log((2 * math.exp(0.0) + 2 * math.exp(-4.0)) / 4)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    nan_view = torch.tensor([[1.0, 0.0], [float("nan"), 0.0]])[:, None, :]
    fresh = SubjectUniformity(anatomy_dim=2, bank_size=0)
    two = torch.cat([nan_view, single])
    assert torch.isfinite(fresh.compute(_step(two, present=torch.tensor([True, False, True, True]))))


def test_feature_bank_overwrites_the_oldest_and_resumes_from_its_state_dict():
    bank = FeatureBank(size=3, dim=1)
    bank.add(torch.tensor([[1.0], [2.0]]), torch.tensor([0, 0]))
    bank.add(torch.tensor([[3.0], [4.0]]), torch.tensor([1, 1]))
    vectors, labels = bank.filled()
    assert sorted(vectors.flatten().tolist()) == [2.0, 3.0, 4.0] and len(bank) == 3
    restored = FeatureBank(size=3, dim=1)
    restored.load_state_dict(bank.state_dict())
    for same in (bank, restored):  # the next write replaces the same (oldest) row in both
        same.add(torch.tensor([[5.0]]), torch.tensor([2]))
    assert sorted(restored.filled()[0].flatten().tolist()) == sorted(bank.filled()[0].flatten().tolist()) == [3.0, 4.0, 5.0]
    with pytest.raises(ValueError, match="temperature"):
        SubjectUniformity(temperature=0.0)
