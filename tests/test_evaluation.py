"""The separation measures give the expected verdict on hand-built features."""

import torch

from prism.evaluation.separation import separation_report, verdict


def synthetic_features(leak_sequence_into_anatomy: bool, subjects: int = 12, views: int = 4, tokens: int = 8, dim: int = 16):
    g = torch.Generator().manual_seed(0)
    subject = torch.arange(subjects).repeat_interleave(views)
    seq = torch.arange(views).repeat(subjects)
    anatomy_of_subject = torch.randn(subjects, tokens, dim, generator=g)
    style_of_sequence = torch.randn(views, tokens, dim, generator=g) * 3
    anatomy = anatomy_of_subject[subject] + 0.05 * torch.randn(len(subject), tokens, dim, generator=g)
    if leak_sequence_into_anatomy:
        anatomy = anatomy + style_of_sequence[seq]
    code = torch.nn.functional.one_hot(seq, 8).float() + 0.01 * torch.randn(len(seq), 8, generator=g)
    tr = torch.tensor([0.5, 4.0, 9.0, 3.0])[seq]
    te = torch.tensor([0.01, 0.1, 0.09, 0.012])[seq]
    acq = torch.zeros(len(seq), 5)
    acq[:, 0], acq[:, 1] = tr, te
    present = torch.zeros(len(seq), 5, dtype=torch.bool)
    present[:, :2] = True
    return {"anatomy": anatomy, "code": code, "sequence_id": seq, "acq_params": acq, "acq_present": present, "subject": subject}


def test_invariant_anatomy_gets_a_clean_verdict():
    report = separation_report(synthetic_features(leak_sequence_into_anatomy=False))
    assert report["sequence_acc_from_sequence"] == 1.0
    assert report["sequence_acc_from_anatomy"] <= report["sequence_chance"] + 0.15
    assert report["anatomy_similarity_gap"] > 0.5 and report["subject_retrieval"] == 1.0
    assert report["tr_error"] < 0.1 and report["te_error"] < 0.1
    assert all(verdict(report).values())


def test_sequence_leaking_anatomy_is_caught():
    report = separation_report(synthetic_features(leak_sequence_into_anatomy=True))
    assert report["sequence_acc_from_anatomy"] == 1.0
    checks = verdict(report)
    assert not checks["anatomy_part_blind_to_sequence"]
    assert not checks["anatomy_groups_by_subject"]
    assert checks["sequence_part_knows_sequence"]
