"""Shared fixtures: a tiny network and hand-made batches that follow the batch contract."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def make_batch(b: int = 2, v: int = 2, size: int = 32, sequence_ids=None, seed: int = 0) -> dict:
    """A contract-valid batch of random volumes; views of one subject get different sequences."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor(sequence_ids) if sequence_ids is not None else torch.arange(v).repeat(b, 1)
    return {
        "image": torch.rand(b, v, size, size, size, generator=g),
        "view_present": torch.ones(b, v, dtype=torch.bool),
        "sequence_id": ids.reshape(b, v).long(),
        "acq_params": torch.tensor([2.0, 0.1, 0.0, 90.0, 3.0]).repeat(b, v, 1),
        "acq_present": torch.tensor([True, True, False, True, True]).repeat(b, v, 1),
        "subject_id": [f"sub-{i:03d}" for i in range(b)],
    }


def tiny_network(size: int = 32):
    from prism.models.pretrain_network import PretrainNetwork
    from prism.models.vit3d import VisionTransformer3d

    encoder = VisionTransformer3d("tiny", img_size=size, patch_size=8, depth=2)
    return PretrainNetwork(encoder, anatomy_dim=32, sequence_dim=16, decoder_dim=32, decoder_depth=1, decoder_heads=4)


@pytest.fixture
def tiny_module():
    """A PretrainModule over the tiny network with every objective on."""
    import functools

    from prism.objectives.adversarial_sequence import AdversarialSequence
    from prism.objectives.cross_sequence_invariance import CrossSequenceInvariance
    from prism.objectives.cross_sequence_swap import CrossSequenceSwap
    from prism.objectives.masked_reconstruction import MaskedReconstruction
    from prism.objectives.sequence_head import SequenceHead
    from prism.training.pretrain_module import PretrainModule

    torch.manual_seed(0)
    objectives = {
        "masked_reconstruction": MaskedReconstruction(),
        "sequence_head": SequenceHead(sequence_dim=16),
        "invariance": CrossSequenceInvariance(),
        "swap": CrossSequenceSwap(),
        "adversarial": AdversarialSequence(anatomy_dim=32),
    }
    return PretrainModule(tiny_network(), objectives, functools.partial(torch.optim.AdamW), mask_ratio=0.5)
