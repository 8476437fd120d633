"""Does the encoder separate anatomy from sequence? Measured on held-out multi-sequence subjects.

From one batch stream of subjects, each rendered under several sequences at the same
window, encode every view without masking and report:

* ``sequence_acc_from_sequence``: linear-probe accuracy of the sequence type from the
  sequence code (should be high) and ``sequence_acc_from_anatomy`` from pooled anatomy
  tokens (should fall to ``sequence_chance``), probes trained and tested on disjoint subjects;
* ``anatomy_cos_same_subject``: token-wise cosine of (channel-centred) anatomy features between two
  sequences of ONE subject, vs ``anatomy_cos_same_sequence``: between two subjects under
  the SAME sequence. Sequence-invariant anatomy has the first above the second;
* ``subject_retrieval``: for each view, is its nearest neighbour (anatomy tokens, cosine)
  another sequence of the same subject? (chance = (V-1)/(N-1));
* ``tr_error`` / ``te_error``: median relative error of RepetitionTime / EchoTime from a
  ridge probe on the sequence code (subject-disjoint split).

The probe-based measures depend on which subjects train the probes; ``split_spread`` repeats them over
random subject halves (mean, standard deviation), so two checkpoints are compared against that noise.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from prism.evaluation.probes import majority_rate, probe_accuracy, ridge_fit_predict
from prism.sequences import ACQUISITION_PARAMETERS, NUM_SEQUENCE_TYPES


@torch.no_grad()
def collect_features(network: torch.nn.Module, batches: Iterable[dict[str, Any]], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Encode every present view of every batch (no masking); anatomy tokens, codes and targets, flattened."""
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("anatomy", "code", "sequence_id", "acq_params", "acq_present", "subject")}
    subject_offset = 0
    was_training = network.training
    network.eval()
    for batch in batches:
        image = batch["image"].to(device)
        b, v, *spatial = image.shape
        features = network.encode(image.reshape(b * v, 1, *spatial))
        present = batch["view_present"].reshape(-1).cpu()
        out["anatomy"].append(features["anatomy"].float().cpu()[present])
        out["code"].append(features["sequence_code"].float().cpu()[present])
        out["sequence_id"].append(batch["sequence_id"].reshape(-1)[present].cpu())
        out["acq_params"].append(batch["acq_params"].reshape(b * v, -1)[present].cpu())
        out["acq_present"].append(batch["acq_present"].reshape(b * v, -1)[present].cpu())
        out["subject"].append((torch.arange(b).repeat_interleave(v) + subject_offset)[present])
        subject_offset += b
    network.train(was_training)
    return {k: torch.cat(v) for k, v in out.items()}


def _mean_offdiagonal_cosine(a: torch.Tensor, b: torch.Tensor, pairs: torch.Tensor) -> float:
    if not bool(pairs.any()):
        return float("nan")
    sim = torch.einsum("ikc,jkc->ij", F.normalize(a, dim=-1), F.normalize(b, dim=-1)) / a.shape[1]
    return float(sim[pairs].mean())


def separation_report(features: dict[str, torch.Tensor], train_subjects: torch.Tensor | None = None) -> dict[str, float]:
    """All measures from :func:`collect_features` output (needs >= 4 subjects with >= 2 sequences).

    The probes are fitted on ``train_subjects`` (default: the first half of the subjects) and tested on
    the others; :func:`split_spread` repeats that over random halves to show how much they vary.
    """
    anatomy, subject = centred_anatomy(features), features["subject"]
    subjects = subject.unique()
    if len(subjects) < 4:
        raise ValueError(f"separation_report needs at least 4 held-out subjects, got {len(subjects)}.")
    train = torch.isin(subject, subjects[: len(subjects) // 2] if train_subjects is None else train_subjects)
    report = probe_measures(features, anatomy, train)
    seq = features["sequence_id"]
    same_subject = subject.unsqueeze(0) == subject.unsqueeze(1)
    same_sequence = seq.unsqueeze(0) == seq.unsqueeze(1)
    report["anatomy_cos_same_subject"] = _mean_offdiagonal_cosine(anatomy, anatomy, same_subject & ~same_sequence)
    report["anatomy_cos_same_sequence"] = _mean_offdiagonal_cosine(anatomy, anatomy, ~same_subject & same_sequence)
    report["anatomy_similarity_gap"] = report["anatomy_cos_same_subject"] - report["anatomy_cos_same_sequence"]
    flat = F.normalize(anatomy.reshape(anatomy.shape[0], -1), dim=-1)
    sim = flat @ flat.T
    sim.fill_diagonal_(-float("inf"))
    report["subject_retrieval"] = float((subject[sim.argmax(1)] == subject).double().mean())
    views = torch.bincount(subject).float()
    report["subject_retrieval_chance"] = float(((views[subject] - 1) / (len(subject) - 1)).mean())
    return report


def centred_anatomy(features: dict[str, torch.Tensor]) -> torch.Tensor:
    """Anatomy tokens centred per channel: a component shared by every token says nothing about subject or sequence."""
    anatomy = features["anatomy"]
    return anatomy - anatomy.mean(dim=(0, 1), keepdim=True)


def probe_measures(features: dict[str, torch.Tensor], anatomy: torch.Tensor, train: torch.Tensor) -> dict[str, float]:
    """The measures that fit a probe on the ``train`` views and test it on the rest (subject-disjoint)."""
    code, seq = features["code"], features["sequence_id"]
    test, known = ~train, seq >= 0
    pooled = anatomy.mean(1)
    report = {
        "sequence_chance": majority_rate(seq[train & known], seq[test & known]),
        "sequence_acc_from_sequence": probe_accuracy(code[train & known], seq[train & known], code[test & known], seq[test & known], NUM_SEQUENCE_TYPES),
        "sequence_acc_from_anatomy": probe_accuracy(pooled[train & known], seq[train & known], pooled[test & known], seq[test & known], NUM_SEQUENCE_TYPES),
    }
    for name, key in (("RepetitionTime", "tr_error"), ("EchoTime", "te_error")):
        p = ACQUISITION_PARAMETERS.index(name)
        rows = features["acq_present"][:, p]
        if bool((rows & train).sum() > 2) and bool((rows & test).any()):
            target = features["acq_params"][:, p].clamp_min(1e-6).log()
            predicted = ridge_fit_predict(code[rows & train], target[rows & train].unsqueeze(1), code[rows & test], l2=1e-2)[:, 0]
            report[key] = float(((predicted.exp() - target[rows & test].exp()).abs() / target[rows & test].exp()).median())
    return report


def split_spread(features: dict[str, torch.Tensor], splits: int, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation of the probe measures over ``splits`` random subject halves.

    The probe-based numbers depend on which held-out subjects train the probe; this says how much
    (the similarity and retrieval measures use every subject and do not depend on a split).
    """
    if splits < 2:
        raise ValueError(f"split_spread needs at least 2 splits to measure a spread, got {splits}.")
    anatomy, subject = centred_anatomy(features), features["subject"]
    subjects = subject.unique()
    generator = torch.Generator().manual_seed(seed)
    reports = []
    for _ in range(splits):
        half = subjects[torch.randperm(len(subjects), generator=generator)[: len(subjects) // 2]]
        reports.append(probe_measures(features, anatomy, torch.isin(subject, half)))
    spread = {}
    for key in reports[0]:
        values = torch.tensor([r[key] for r in reports if key in r], dtype=torch.float64)
        spread[key] = (float(values.mean()), float(values.std()))
    return spread


def verdict(report: dict[str, float], margin: float = 0.15) -> dict[str, bool]:
    """Plain-language checks: the sequence part knows the sequence; the anatomy part does not and groups by subject."""
    return {
        "sequence_part_knows_sequence": report["sequence_acc_from_sequence"] >= report["sequence_chance"] + 2 * margin,
        "anatomy_part_blind_to_sequence": report["sequence_acc_from_anatomy"] <= report["sequence_chance"] + margin,
        "anatomy_groups_by_subject": report["anatomy_similarity_gap"] > 0,
    }
