"""Anatomy/sequence separation of pretraining checkpoints, side by side on the same held-out subjects.

    python benchmarks/separation.py --checkpoint full=RUN/checkpoints/last.ckpt \
        --checkpoint mae_only=MAE_RUN/checkpoints/last.ckpt --subjects 48 --out benchmarks/results/separation.md

Every checkpoint is evaluated by ``prism.evaluation.separation`` on the same held-out synthetic
subjects (a seed never used for training), each rendered under T1w_MPRAGE, T2w, FLAIR and PDw at
the same window. The page lists, per measure, which direction is better and which checkpoint wins.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
from pathlib import Path

# measure -> (label, True when higher is better)
MEASURES = {
    "sequence_acc_from_sequence": ("sequence type from the sequence part (linear probe)", True),
    "sequence_acc_from_anatomy": ("sequence type from pooled anatomy tokens (linear probe)", False),
    "anatomy_cos_same_subject": ("anatomy cosine, same subject, other sequence", True),
    "anatomy_cos_same_sequence": ("anatomy cosine, other subject, same sequence", False),
    "anatomy_similarity_gap": ("gap: same subject minus same sequence", True),
    "subject_retrieval": ("nearest neighbour is the same subject", True),
    "tr_error": ("RepetitionTime median relative error (ridge on the code)", False),
    "te_error": ("EchoTime median relative error (ridge on the code)", False),
}


def evaluate(checkpoint: str, subjects: int) -> dict[str, float]:
    from prism.evaluation.cli import load_pretrain_network
    from prism.evaluation.held_out import held_out_batches
    from prism.evaluation.separation import collect_features, separation_report

    network, config = load_pretrain_network(checkpoint)
    data = config.get("data", {})
    batches = held_out_batches(data.get("crop_size", [64, 64, 64]), float(data.get("spacing_mm", 2.0)), subjects)
    return separation_report(collect_features(network, batches))


def table(reports: dict[str, dict[str, float]]) -> str:
    names = list(reports)
    lines = ["| measure | better | " + " | ".join(names) + " | best |", "|---|---|" + "---|" * len(names) + "---|"]
    first = reports[names[0]]
    lines.append("| chance (sequence probe / retrieval) | | " + " | ".join(
        f"{r['sequence_chance']:.3f} / {r['subject_retrieval_chance']:.3f}" for r in reports.values()) + " | |")
    for key, (label, higher) in MEASURES.items():
        if key not in first:
            continue
        values = {name: reports[name].get(key, float("nan")) for name in names}
        best = max(values, key=values.get) if higher else min(values, key=values.get)
        lines.append(f"| {label} | {'higher' if higher else 'lower'} | "
                     + " | ".join(f"{values[n]:.3f}" for n in names) + f" | {best} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--subjects", type=int, default=48, help="held-out subjects (half train the probes, half test them)")
    parser.add_argument("--out", default=None, help="write the Markdown page here")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    reports = {name: evaluate(path, args.subjects) for name, path in checkpoints.items()}
    page = (
        f"# Anatomy/sequence separation: {', '.join(reports)}\n\n"
        f"Date: {datetime.date.today().isoformat()}. Command:\n\n```\n"
        f"{shlex.join(['python', *sys.argv])}\n```\n\n"
        f"{args.subjects} held-out synthetic subjects x 4 sequences; machine: {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}.\n\n{table(reports)}\n"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(page)
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
