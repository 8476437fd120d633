"""The separation measures give the expected verdict on hand-built features."""

import importlib.util
from pathlib import Path

import pytest
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


def test_split_spread_measures_how_much_the_probe_split_matters():
    from prism.evaluation.separation import split_spread

    clean = synthetic_features(leak_sequence_into_anatomy=False)
    first_half = clean["subject"].unique()[:6]
    assert separation_report(clean, train_subjects=first_half) == separation_report(clean)
    spread = split_spread(clean, splits=5)
    assert spread["sequence_acc_from_sequence"] == (1.0, 0.0)  # a perfect probe on every split

    noisy = dict(clean, code=clean["code"] + 0.8 * torch.randn(clean["code"].shape, generator=torch.Generator().manual_seed(1)))
    per_split = [separation_report(noisy, train_subjects=torch.randperm(12, generator=torch.Generator().manual_seed(s))[:6])
                 ["sequence_acc_from_sequence"] for s in range(5)]
    assert len(set(per_split)) > 1  # the fixture really depends on the split
    mean, std = split_spread(noisy, splits=8)["sequence_acc_from_sequence"]
    assert 0.25 < mean < 1.0 and std > 0
    assert "anatomy_cos_same_subject" not in split_spread(noisy, splits=2)  # split-free measures are not repeated
    with pytest.raises(ValueError, match="at least 2 splits"):
        split_spread(noisy, splits=1)


def test_benchmark_table_shows_the_spread_and_picks_the_winner_on_its_mean():
    spec = importlib.util.spec_from_file_location("separation_benchmark", Path(__file__).parents[1] / "benchmarks" / "separation.py")
    page = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(page)
    reports = {name: {"sequence_chance": 0.25, "subject_retrieval_chance": 0.01, "te_error": value}
               for name, value in (("a", 0.70), ("b", 0.75))}
    spreads = {"a": {"te_error": (0.80, 0.03)}, "b": {"te_error": (0.76, 0.02)}}
    row = next(line for line in page.table(reports, spreads).splitlines() if line.startswith("| EchoTime"))
    assert "0.700 (0.800 ± 0.030)" in row and "0.750 (0.760 ± 0.020)" in row
    assert row.endswith("| b |")  # lower mean over splits wins, though a's fixed split is lower
    assert page.table(reports).splitlines()[-1].endswith("| a |")


@pytest.mark.parametrize("content", [b"not a checkpoint", b"c\x87~e-\xd0\x01w" + bytes(range(256)) * 8], ids=["text", "random-bytes"])
def test_corrupt_checkpoint_gets_a_clear_error(tmp_path, content):
    from prism.training.checkpoint_io import safe_torch_load

    (tmp_path / "bad.ckpt").write_bytes(content)
    with pytest.raises(ValueError, match="cannot be read with torch.load\\(weights_only=True\\).*corrupt or truncated"):
        safe_torch_load(tmp_path / "bad.ckpt")
