"""Anatomy/sequence separation of pretraining checkpoints, side by side on the same held-out subjects.

    python benchmarks/separation.py --checkpoint full=RUN/checkpoints/last.ckpt \
        --checkpoint mae_only=MAE_RUN/checkpoints/last.ckpt --subjects 48 --out benchmarks/results/separation.md

Every checkpoint is evaluated by ``prism.evaluation.separation`` on the same held-out synthetic
subjects (a seed never used for training), each rendered under T1w_MPRAGE, T2w, FLAIR and PDw at
the same window. The page lists, per measure, which direction is better and which checkpoint wins.
With ``--splits K`` (K >= 2) each probe-based cell also gives the mean ± standard deviation over K random
halves of the subjects training the probes (``split_spread``), and the winner is picked on that mean:
differences smaller than that spread are not differences.
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


def evaluate(checkpoint: str, subjects: int, splits: int = 1) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """(the fixed-split report, {probe measure: (mean, std) over ``splits`` random splits} or {} when splits < 2)."""
    from prism.evaluation.cli import load_pretrain_network
    from prism.evaluation.held_out import held_out_batches
    from prism.evaluation.separation import collect_features, separation_report, split_spread

    network, config = load_pretrain_network(checkpoint)
    data = config.get("data", {})
    batches = held_out_batches(data.get("crop_size", [64, 64, 64]), float(data.get("spacing_mm", 2.0)), subjects)
    features = collect_features(network, batches)
    return separation_report(features), (split_spread(features, splits) if splits >= 2 else {})


def table(reports: dict[str, dict[str, float]], spreads: dict[str, dict[str, tuple[float, float]]] | None = None) -> str:
    """Markdown table, a column per checkpoint; with ``spreads`` probe cells read "fixed (mean ± sd)"."""
    spreads = spreads or {}
    names = list(reports)
    lines = ["| measure | better | " + " | ".join(names) + " | best |", "|---|---|" + "---|" * len(names) + "---|"]
    first = reports[names[0]]
    lines.append("| chance (sequence probe / retrieval) | | " + " | ".join(
        f"{r['sequence_chance']:.3f} / {r['subject_retrieval_chance']:.3f}" for r in reports.values()) + " | |")
    for key, (label, higher) in MEASURES.items():
        if key not in first:
            continue
        values = {name: reports[name].get(key, float("nan")) for name in names}
        cells = {name: f"{values[name]:.3f}" for name in names}
        for name in names:
            if key in spreads.get(name, {}):
                mean, std = spreads[name][key]
                values[name], cells[name] = mean, f"{cells[name]} ({mean:.3f} ± {std:.3f})"
        best = max(values, key=values.get) if higher else min(values, key=values.get)
        lines.append(f"| {label} | {'higher' if higher else 'lower'} | "
                     + " | ".join(cells[n] for n in names) + f" | {best} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--subjects", type=int, default=48, help="held-out subjects (half train the probes, half test them)")
    parser.add_argument("--out", default=None, help="write the Markdown page here")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--splits", type=int, default=1, help="K >= 2: also mean ± sd of the probe measures over K random subject halves")
    args = parser.parse_args(argv)

    import torch

    from prism.finetune.benchmark import parse_checkpoints

    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoints = parse_checkpoints(args.checkpoint)
    evaluated = {name: evaluate(path, args.subjects, args.splits) for name, path in checkpoints.items()}
    reports = {name: report for name, (report, _) in evaluated.items()}
    spreads = {name: spread for name, (_, spread) in evaluated.items()}
    split_note = (f" Probe cells: the fixed split (first half of the subjects trains the probes), then the mean ± sd over "
                  f"{args.splits} random halves; the best column uses that mean." if args.splits >= 2 else "")
    page = (
        f"# Anatomy/sequence separation: {', '.join(reports)}\n\n"
        f"Date: {datetime.date.today().isoformat()}. Command:\n\n```\n"
        f"{shlex.join(['python', *sys.argv])}\n```\n\n"
        f"{args.subjects} held-out synthetic subjects x 4 sequences; machine: {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}.{split_note}\n\n{table(reports, spreads)}\n"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(page)
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
