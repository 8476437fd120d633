"""Diagnostic for the downstream benchmark: how much tissue does a FROZEN encoder's token carry, per sequence?

For each encoder (the checkpoint's architecture at random init, the MAE-only checkpoint, the
full-objective checkpoint) and feature source (encoder tokens, the latent split's anatomy
projection), a ridge classifier maps each frozen patch token to its patch's majority tissue
(background / CSF / GM / WM). It is fitted on the T1w_MPRAGE views of the built-in task's training
subjects and scored (balanced accuracy over patches) on new subjects under T1w_MPRAGE, T2w, FLAIR
and PDw, at the pretraining crop. No decoder, no fine-tuning: what pretraining put into the
tokens, and whether it survives a change of sequence.

    python benchmarks/finetune_token_probe.py --checkpoint pretrained_full=full.ckpt \
        --checkpoint pretrained_mae=mae.ckpt [--train-subjects 5 20] [--crop 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from prism.evaluation.held_out import EVALUATION_SEQUENCES
from prism.finetune.checkpoint import load_backbone
from prism.finetune.tasks import TASKS, SynthTaskDataModule

CLASSES = 4  # background, CSF, GM, WM


def patch_labels(labels: torch.Tensor, patch: int) -> torch.Tensor:
    """Majority class per patch: ``[S, D, H, W]`` tissue classes -> ``[S, L]``."""
    one_hot = F.one_hot(labels.long(), CLASSES).permute(0, 4, 1, 2, 3).float()
    fractions = F.avg_pool3d(one_hot, patch)  # [S, C, d, h, w]
    return fractions.flatten(2).argmax(1)


@torch.no_grad()
def tokens_of(backbone, images: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """Frozen tokens ``[N, L, F]`` of volumes ``[N, 1, D, H, W]``."""
    return torch.cat([backbone(images[i:i + batch])["tokens"] for i in range(0, len(images), batch)])


def fit_ridge(features: torch.Tensor, classes: torch.Tensor, penalty: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ridge regression onto one-hot classes of standardised features; returns (mean, std, weights)."""
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    x = (features - mean) / std
    x = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    y = F.one_hot(classes, CLASSES).double()
    gram = x.T @ x + penalty * len(x) * torch.eye(x.shape[1], dtype=torch.float64)
    return mean, std, torch.linalg.solve(gram, x.T @ y)


def predict(features: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    x = torch.cat([(features - mean) / std, torch.ones(len(features), 1)], 1).double()
    return (x @ weights).argmax(1)


def balanced_accuracy(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    recalls = [float((predicted[truth == c] == c).float().mean()) for c in range(CLASSES) if bool((truth == c).any())]
    return sum(recalls) / len(recalls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--train-subjects", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--test-subjects", type=int, default=6)
    parser.add_argument("--crop", type=int, default=64, help="cubic crop in voxels (the pretraining crop)")
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--penalty", type=float, default=1e-2, help="ridge penalty x number of patches")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    reference = next(iter(checkpoints.values()))
    torch.manual_seed(0)
    encoders = {"random init": (reference, True)} | {name: (path, False) for name, path in checkpoints.items()}
    lookup = torch.tensor(TASKS["tissue_segmentation"].label_of_tissue)
    started = time.time()
    print(f"| encoder | features | train subjects (T1w) | {' | '.join(EVALUATION_SEQUENCES)} |")
    print("|---|---|---|" + "---|" * len(EVALUATION_SEQUENCES))
    for count in args.train_subjects:
        data = SynthTaskDataModule("tissue_segmentation", train_subjects=count, val_subjects=1, test_subjects=args.test_subjects,
                                   crop_size=[args.crop] * 3, spacing_mm=args.spacing)
        train, test = data.subject_set("train"), data.subject_set("test")
        for name, (path, random_init) in encoders.items():
            for source in ("encoder", "anatomy"):
                backbone = load_backbone(path, feature_source=source, frozen=True, random_init=random_init)
                patch = backbone.patch_size[0]
                train_y = patch_labels(lookup[train.labels.long()][train.subject_index], patch).flatten()
                train_x = tokens_of(backbone, train.image)
                model = fit_ridge(train_x.flatten(0, 1), train_y, args.penalty)
                scores = []
                for sequence in EVALUATION_SEQUENCES:
                    keep = torch.tensor([r == sequence for r in test.recipe])
                    views = test.select(keep)
                    truth = patch_labels(lookup[views.labels.long()][views.subject_index], patch).flatten()
                    scores.append(balanced_accuracy(predict(tokens_of(backbone, views.image).flatten(0, 1), *model), truth))
                print(f"| {name} | {source} | {count} | " + " | ".join(f"{s:.3f}" for s in scores) + " |", flush=True)
    print(f"\nPatch-level balanced accuracy (4 classes, chance 0.25) of a ridge classifier on frozen tokens; "
          f"{args.crop}^3 at {args.spacing} mm, {args.test_subjects} test subjects; {time.time() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
