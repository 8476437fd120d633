"""Each objective on hand-made tensors: known values, zeros, where gradients flow, skipping."""

import logging
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import make_batch
from prism.objectives.adversarial_sequence import AdversarialSequence, confusion_loss, reverse_gradient, standardise_channels
from prism.objectives.base import PretrainStep
from prism.objectives.cross_sequence_invariance import CrossSequenceInvariance, covariance_penalty, variance_hinge
from prism.objectives.masked_reconstruction import masked_patch_mse, normalise_patches
from prism.objectives.sequence_head import SequenceHead, denormalise_acquisition, normalise_acquisition


def test_masked_mse_counts_only_masked_patches():
    pred = torch.zeros(1, 4, 3)
    target = torch.tensor([[[1.0] * 3, [2.0] * 3, [3.0] * 3, [4.0] * 3]])
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    assert masked_patch_mse(pred, target, mask).item() == pytest.approx((1 + 9) / 2)
    assert masked_patch_mse(pred, target, torch.zeros(1, 4)).item() == 0.0


def test_normalised_patches_have_zero_mean_unit_variance():
    patches = normalise_patches(torch.randn(2, 5, 64) * 7 + 3)
    assert torch.allclose(patches.mean(-1), torch.zeros(2, 5), atol=1e-5)
    assert torch.allclose(patches.var(-1), torch.ones(2, 5), atol=1e-3)


def test_acquisition_normalisation_roundtrip_and_absent_entries_are_zero():
    params = torch.tensor([[2.5, 0.09, 1.8, 90.0, 3.0]])
    present = torch.tensor([[True, True, False, True, True]])
    normalised = normalise_acquisition(params, present)
    assert normalised[0, 2] == 0
    back = denormalise_acquisition(normalised)
    assert torch.allclose(back[present], params[present], rtol=1e-5)


def test_sequence_head_present_mask_excludes_missing_parameters():
    head = SequenceHead(sequence_dim=8)
    code = torch.randn(4, 8, requires_grad=True)
    ids = torch.tensor([0, 1, 2, 3])
    present = torch.zeros(4, 5, dtype=torch.bool)
    present[:, 0] = True  # only TR known
    params = torch.rand(4, 5) + 0.1
    view_present = torch.ones(4, dtype=torch.bool)
    base = head.losses(code, ids, params, present, view_present)["parameters"]
    garbage = params.clone()
    garbage[:, 1:] = 1e6  # values that are not present must not matter
    assert torch.equal(head.losses(code, ids, garbage, present, view_present)["parameters"], base)
    none_present = head.losses(code, ids, params, torch.zeros_like(present), view_present)
    assert "parameters" not in none_present and "type" in none_present
    # gradient reaches only the TR output of the regressor
    _, predicted = head.predict(code)
    predicted.retain_grad()
    from prism.objectives.sequence_head import masked_mean

    loss = masked_mean(torch.nn.functional.smooth_l1_loss(predicted, normalise_acquisition(params, present), reduction="none"), present)
    loss.backward()
    assert torch.all(predicted.grad[:, 1:] == 0) and torch.any(predicted.grad[:, 0] != 0)


def test_sequence_head_unknown_sequence_ids_are_ignored():
    head = SequenceHead(sequence_dim=8)
    out = head.losses(torch.randn(2, 8), torch.tensor([-1, -1]), torch.ones(2, 5), torch.zeros(2, 5, dtype=torch.bool), torch.ones(2, dtype=torch.bool))
    assert out == {}


def test_invariance_is_zero_for_identical_spread_out_tokens_and_penalises_collapse():
    objective = CrossSequenceInvariance(variance_weight=1.0, covariance_weight=0.0)
    tokens = torch.randn(4, 16, 8) * 3
    terms = objective.terms(tokens, tokens.clone())
    assert terms["token"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["pooled"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["variance"].item() == pytest.approx(0.0, abs=1e-6)
    collapsed = torch.ones(4, 16, 8)
    assert objective.terms(collapsed, collapsed)["variance"].item() == pytest.approx(1.0, abs=0.02)
    opposite = objective.terms(tokens, -tokens)
    assert opposite["token"].item() == pytest.approx(2.0, abs=1e-5)


def test_invariance_position_centring_sees_through_position_only_tokens():
    torch.manual_seed(0)
    num_positions, kept, width = 32, 8, 6
    by_position = torch.randn(num_positions, width) * 3  # content that depends on the grid position only
    ids_keep = torch.stack([torch.randperm(num_positions)[:kept] for _ in range(6)])
    tokens = by_position[ids_keep]  # [6, 8, 6]: every sample, whatever it shows, carries just its positions
    plain = CrossSequenceInvariance(variance_weight=1.0)
    assert plain.terms(tokens, tokens.clone())["variance"].item() < 0.05  # the hinge is fooled
    objective = CrossSequenceInvariance(variance_weight=1.0, position_momentum=0.9)
    objective.update_position_mean(tokens, ids_keep, num_positions)
    centred = objective.position_centred(tokens, ids_keep, num_positions)
    assert centred.abs().max().item() < 1e-5  # nothing left once the position's mean is removed
    assert objective.terms(centred, centred.clone())["variance"].item() == pytest.approx(1.0, abs=0.02)  # collapse seen
    content = torch.randn(6, kept, width)
    mean_before = objective.position_mean.clone()
    assert torch.allclose(objective.position_centred(tokens + content, ids_keep, num_positions), content, atol=1e-5)
    assert torch.equal(objective.position_mean, mean_before)  # centring only reads the running mean
    objective.update_position_mean(tokens + content, ids_keep, num_positions)
    seen = objective.position_seen
    assert not torch.equal(objective.position_mean[seen], mean_before[seen])  # momentum update
    restored = CrossSequenceInvariance(variance_weight=1.0, position_momentum=0.9)
    restored.load_state_dict(objective.state_dict())  # sized from the checkpoint, then copied
    assert torch.equal(restored.position_mean, objective.position_mean) and torch.equal(restored.position_seen, seen)
    with pytest.raises(ValueError, match="position_momentum"):
        CrossSequenceInvariance(position_momentum=1.0)


def test_invariance_centred_cosine_and_mse_see_what_a_shared_component_hides():
    # two subjects' tokens share a large common component; the subject-specific parts are opposite
    common = torch.full((2, 16, 8), 10.0)
    specific = torch.randn(2, 16, 8)
    first, second = common + specific, common - specific
    plain = CrossSequenceInvariance().terms(first, second)
    centred = CrossSequenceInvariance(centre=True).terms(first, second)
    assert plain["token"].item() < 0.05  # the uncentred cosine is met by the shared part
    assert centred["token"].item() == pytest.approx(2.0, abs=0.05)  # centred: the specific parts disagree
    expected_mse = F.mse_loss(first, second) + F.mse_loss(first.mean(1), second.mean(1))
    assert centred["mse"].item() == pytest.approx(expected_mse.item())
    same = CrossSequenceInvariance(centre=True, mse_weight=1.0).terms(first, first.clone())
    assert same["mse"].item() == 0.0 and same["token"].item() == pytest.approx(0.0, abs=1e-6)


def test_invariance_mse_weight_zero_leaves_the_loss_unchanged():
    first, second = torch.randn(3, 8, 4), torch.randn(3, 8, 4)
    base = CrossSequenceInvariance().loss_from(first, second)
    with_mse = CrossSequenceInvariance(mse_weight=2.0).loss_from(first, second)
    mse = CrossSequenceInvariance().terms(first, second)["mse"]
    assert with_mse.item() == pytest.approx(base.item() + 2.0 * mse.item(), rel=1e-5)


def test_invariance_standardised_term_weighs_a_small_consistent_difference_like_a_probe():
    # channel 0 varies a lot between subjects; channel 1 barely, but differs between the views by 0.01
    torch.manual_seed(0)
    first = torch.zeros(4, 8, 2)
    first[:, :, 0] = torch.randn(4, 1) * 10
    second = first.clone()
    second[:, :, 1] += 0.01
    terms = CrossSequenceInvariance().terms(first, second)
    assert terms["mse"].item() < 1e-3  # invisible in raw units
    pooled = torch.cat([first.mean(1), second.mean(1)])
    expected = (0.01 / (pooled[:, 1].std() + 1e-3)) ** 2 / 2  # mean over 2 channels, channel 0 contributes 0
    assert terms["standardised"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert terms["standardised"].item() > 0.2
    assert CrossSequenceInvariance().terms(first, first.clone())["standardised"].item() == 0.0


def test_variance_and_covariance_terms_known_values():
    x = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])  # perfectly correlated, std sqrt(2)
    assert variance_hinge(x, std_target=1.0).item() == pytest.approx(0.0)
    assert covariance_penalty(x).item() == pytest.approx((2.0**2 * 2) / 2)


def test_gradient_reversal_flips_sign():
    x = torch.ones(3, requires_grad=True)
    reverse_gradient(x, 0.5).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -0.5))


def test_full_objective_step_gradients_reach_where_intended(tiny_module):
    step = tiny_module.forward_step(make_batch())
    total, losses = tiny_module.compute_losses(step)
    assert set(losses) == {"masked_reconstruction", "sequence_head", "invariance", "swap", "adversarial"}
    total.backward()
    missing = [n for n, p in tiny_module.named_parameters() if p.grad is None]
    assert missing == []


def _adversarial_step(anatomy: torch.Tensor, sequence_id: torch.Tensor) -> SimpleNamespace:
    """The fields of a PretrainStep that the adversarial objective reads."""
    return SimpleNamespace(features={"anatomy": anatomy}, sequence_id=sequence_id,
                           view_present=torch.ones(len(sequence_id), dtype=torch.bool))


def _adversary_after_one_backward(mode: str, reversal_scale: float):
    """A small adversary, its anatomy input and targets, after one backward pass of its loss."""
    torch.manual_seed(0)
    adversary = AdversarialSequence(anatomy_dim=8, hidden_dim=16, mode=mode, reversal_scale=reversal_scale)
    anatomy = torch.randn(6, 5, 8, requires_grad=True)
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    adversary.compute(_adversarial_step(anatomy, target)).backward()
    return adversary, anatomy, target


def test_adversary_reversal_mode_pushes_encoder_against_its_classifier():
    adversary, anatomy, target = _adversary_after_one_backward("reversal", 0.5)
    plain = anatomy.detach().requires_grad_(True)
    adversary._cross_entropy(*adversary.logits(plain), target).backward()
    assert torch.allclose(anatomy.grad, -0.5 * plain.grad, atol=1e-6)


def test_adversary_confusion_mode_splits_the_gradients():
    """The classifier learns only from its cross-entropy; the encoder only from the confusion term."""
    adversary, anatomy, target = _adversary_after_one_backward("confusion", 0.3)
    classifier_grad = [p.grad.clone() for p in adversary.classifier.parameters()]
    adversary.zero_grad()
    adversary._cross_entropy(*adversary.logits(anatomy.detach()), target).backward()
    assert all(torch.allclose(a, p.grad) for a, p in zip(classifier_grad, adversary.classifier.parameters()))
    plain = anatomy.detach().requires_grad_(True)
    pooled, tokens = adversary.logits(plain)
    classes = target.unique()
    (0.3 * 0.5 * (confusion_loss(pooled, classes) + confusion_loss(tokens, classes))).backward()
    assert torch.allclose(anatomy.grad, plain.grad, atol=1e-6)


def test_confusion_is_minimal_at_uniform_and_cannot_be_won_by_relabelling():
    classes = torch.tensor([0, 1, 2, 3])
    uniform = torch.zeros(4, 6)
    confident_wrong = torch.full((4, 6), -10.0)
    confident_wrong[torch.arange(4), (torch.arange(4) + 1) % 4] = 10.0  # every sample predicted as the next class
    assert confusion_loss(uniform[:, :4], classes).item() == pytest.approx(math.log(4), abs=1e-6)
    assert confusion_loss(confident_wrong, classes) > confusion_loss(uniform, classes) + 1.0


def test_standardised_adversary_sees_a_small_consistent_difference_at_any_scale():
    """Like the benchmark's probe: scaling the features leaves its input unchanged, and a tiny offset
    that is consistent for one sequence becomes a full-size signal."""
    torch.manual_seed(0)
    anatomy = torch.randn(8, 5, 4)
    anatomy[:4, :, 0] = 0.01 * torch.randn(4, 5) + 0.05    # sequence 0: a small consistent offset
    anatomy[4:, :, 0] = 0.01 * torch.randn(4, 5) - 0.05    # sequence 1
    standardised = AdversarialSequence(anatomy_dim=4, hidden_dim=8, standardise_input=True)
    plain = AdversarialSequence(anatomy_dim=4, hidden_dim=8)
    pooled, tokens = standardised.logits(anatomy)
    pooled_small, tokens_small = standardised.logits(0.1 * anatomy)
    assert torch.allclose(pooled, pooled_small, atol=1e-3) and torch.allclose(tokens, tokens_small, atol=1e-3)
    assert not torch.allclose(plain.logits(anatomy)[0], plain.logits(0.1 * anatomy)[0], atol=1e-3)
    channel0 = standardise_channels(anatomy.mean(dim=1))[:, 0]
    assert channel0[:4].min() > 0.5 and channel0[4:].max() < -0.5


def test_adversary_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        AdversarialSequence(mode="gan")


def test_pair_objectives_skip_single_sequence_batches_with_one_warning(tiny_module, caplog):
    batch = make_batch(b=2, v=1, sequence_ids=[[0], [1]])
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            total, losses = tiny_module.compute_losses(tiny_module.forward_step(batch))
    assert "invariance" not in losses and "swap" not in losses
    assert {"masked_reconstruction", "sequence_head", "adversarial"} <= set(losses)
    warnings = [r for r in caplog.records if "needs two sequences" in r.message]
    assert len(warnings) == 2  # one per pair objective, not one per batch
    assert torch.isfinite(total)


def test_same_sequence_twice_is_not_a_pair(tiny_module):
    step = tiny_module.forward_step(make_batch(b=2, v=2, sequence_ids=[[1, 1], [2, 2]]))
    assert not step.pair_mask().any()


def test_nan_loss_names_the_subjects(tiny_module):
    batch = make_batch()
    batch["image"][1, 0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"sub-000.*sub-001|sub-001"):
        tiny_module._shared_step(batch, "train")


def test_invariance_forward_updates_the_running_mean_every_training_step_and_never_in_eval():
    torch.manual_seed(0)
    grid, kept, width = (2, 2, 2), 4, 6

    def step(num_views: int, sequence_id: list[int]) -> PretrainStep:
        n = len(sequence_id)
        return PretrainStep(network=None, num_subjects=n // num_views, num_views=num_views, volumes=None, target=None,
                            view_present=torch.ones(n, dtype=torch.bool), sequence_id=torch.tensor(sequence_id),
                            acq_params=None, acq_present=None, mask=None, ids_restore=None, grid=grid,
                            features={"anatomy": torch.randn(n, kept, width)}, prediction=None,
                            ids_keep=torch.stack([torch.randperm(8)[:kept] for _ in range(n)]))

    objective = CrossSequenceInvariance(position_momentum=0.5)
    assert objective(step(2, [0, 1, 2, 3])) is not None  # pairs: the loss, and the mean takes the batch
    after_pairs = objective.position_mean.clone()
    assert objective(step(1, [0, 1])) is None  # no pairs: no loss, but the mean still moves (DDP lockstep)
    assert not torch.equal(objective.position_mean, after_pairs)
    objective.eval()
    before_eval = objective.position_mean.clone()
    objective(step(2, [0, 1, 2, 3]))
    assert torch.equal(objective.position_mean, before_eval)


def test_position_share_measures_the_position_only_content_and_needs_the_running_mean():
    torch.manual_seed(0)
    num_positions, kept, width = 32, 8, 6
    by_position = torch.randn(num_positions, width) * 3
    ids_keep = torch.stack([torch.randperm(num_positions)[:kept] for _ in range(6)])
    objective = CrossSequenceInvariance(position_momentum=0.5, position_weight=1.0)
    objective.update_position_mean(by_position[ids_keep], ids_keep, num_positions)  # running mean = by_position
    assert objective.position_share(by_position[ids_keep], ids_keep).item() == pytest.approx(1.0, abs=1e-4)
    subject_only = torch.randn(6, kept, width) * 3 + objective.position_mean[objective.position_seen].mean(0)
    assert objective.position_share(subject_only, ids_keep).item() < 0.4  # ~1/width for unrelated content
    mixed = (by_position[ids_keep] + torch.randn(6, kept, width)).requires_grad_(True)
    share = objective.position_share(mixed, ids_keep)
    share.backward()
    assert objective.position_share((mixed - 0.5 * mixed.grad).detach(), ids_keep) < share.detach()
    with pytest.raises(ValueError, match="position_weight"):
        CrossSequenceInvariance(position_weight=1.0)
