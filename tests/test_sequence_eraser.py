"""The sequence eraser: it removes a linear sequence offset, passes gradients, updates only from the pretraining
step, and the fine-tuning loader folds it into the anatomy projection."""

from __future__ import annotations

import pytest
import torch

from prism.evaluation.probes import probe_accuracy
from prism.models.sequence_eraser import SequenceEraser, within_subject_residuals


def _pairs(subjects: int, offsets: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views per subject: large subject content + a per-sequence offset + a little noise."""
    content = 3.0 * torch.randn(subjects, 1, offsets.shape[1], generator=generator)
    sequence_id = torch.stack([torch.randperm(len(offsets), generator=generator)[:2] for _ in range(subjects)])
    views = content + offsets[sequence_id] + 0.05 * torch.randn(subjects, 2, offsets.shape[1], generator=generator)
    return views.reshape(-1, offsets.shape[1]), sequence_id.reshape(-1)


def test_erasure_takes_a_linear_probe_to_chance():
    generator = torch.Generator().manual_seed(0)
    offsets = 0.8 * torch.randn(4, 16, generator=generator)
    eraser = SequenceEraser(16, num_sequence_types=9, momentum=0.9)
    assert torch.equal(eraser(offsets), offsets)  # nothing seen yet: identity
    for _ in range(50):
        views, sequence_id = _pairs(8, offsets, generator)
        residuals, kept = within_subject_residuals(views, 2, torch.ones_like(sequence_id, dtype=torch.bool))
        eraser.update(residuals[kept], sequence_id[kept])
    views, sequence_id = _pairs(200, offsets, generator)
    train = torch.arange(len(sequence_id)) < len(sequence_id) // 2
    raw = probe_accuracy(views[train], sequence_id[train], views[~train], sequence_id[~train], 9)
    erased = eraser(views)
    after = probe_accuracy(erased[train], sequence_id[train], erased[~train], sequence_id[~train], 9)
    assert raw > 0.5 and after < 0.35, (raw, after)
    assert int((eraser.basis.norm(dim=1) > 0).sum()) <= 4  # at most one direction per sequence type seen


def test_gradient_flows_through_the_projection_and_not_along_erased_directions():
    eraser = SequenceEraser(4, num_sequence_types=2)
    eraser.update(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]), torch.tensor([0, 1]))
    x = torch.randn(3, 4, requires_grad=True)
    eraser(x).sum().backward()
    assert torch.allclose(x.grad[:, 0], torch.zeros(3)) and torch.allclose(x.grad[:, 1:], torch.ones(3, 3))


def test_bad_momentum_is_named():
    with pytest.raises(ValueError, match="momentum"):
        SequenceEraser(4, 2, momentum=1.0)


def test_pretraining_updates_the_eraser_and_the_loader_folds_it(tmp_path):
    from prism.evaluation.cli import load_pretrain_network
    from prism.finetune.checkpoint import load_backbone
    from prism.training.run import build, train
    from test_finetune_core import SIZE, compose_cfg

    cfg = compose_cfg(["+debug=fast_dev_run", "logger=csv", "trainer.fast_dev_run=false", "trainer.max_steps=2",
                       "+trainer.limit_val_batches=0", "callbacks.last_checkpoint.every_n_train_steps=2",
                       "callbacks.reconstruction_preview=null", "callbacks.best_checkpoint=null", "model.anatomy_dim=48",
                       "++model.erase_sequence=true"], tmp_path)
    train(cfg, *build(cfg))
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    network, _ = load_pretrain_network(str(checkpoint))
    assert int(network.split.eraser.seen.sum()) >= 2 and float(network.split.eraser.basis.norm()) > 0
    volumes = torch.rand(2, 1, SIZE, SIZE, SIZE)
    with torch.no_grad():
        reference = network.eval().encode(volumes)["anatomy"]
        folded = load_backbone(checkpoint, feature_source="anatomy").eval()(volumes)["tokens"]
    assert torch.allclose(folded, reference, atol=1e-5)
