"""``prism export`` (encoder -> safetensors + JSON), ``prism embed`` (cohort embeddings), ``prism benchmark``."""

from __future__ import annotations

import argparse
import json


def run_export(args: argparse.Namespace) -> int:
    from prism.finetune.checkpoint import EXPORT_METADATA, EXPORT_WEIGHTS, export_encoder

    out = export_encoder(args.checkpoint, args.out)
    description = json.loads((out / EXPORT_METADATA).read_text())
    encoder = description["encoder"]
    print(f"Exported {args.checkpoint} -> {out / EXPORT_WEIGHTS} + {out / EXPORT_METADATA}")
    print(f"  encoder: ViT-{encoder['preset']} embed {encoder['embed_dim']}, depth {encoder['depth']}, patch {encoder['patch_size']}; "
          f"input: crop {description['crop_size']} at {description['spacing_mm']} mm, {description['orientation']}, "
          f"normalization {description['normalization']}")
    return 0


def run_embed(args: argparse.Namespace) -> int:
    from prism.finetune.embed import embed_manifest

    table = embed_manifest(args.checkpoint, args.manifest, args.out, feature_source=args.features, data_root=args.data_root,
                           batch_size=args.batch_size, device=args.device)
    volumes = table[table["level"] == "volume"]
    failed = int((volumes["error"] != "").sum())
    print(f"Wrote {args.out}: {len(volumes) - failed} volume and {int((table['level'] == 'subject').sum())} subject embeddings"
          + (f"; {failed} volumes could not be embedded (see the 'error' column)" if failed else ""))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser("export", help="write a pretraining checkpoint's encoder as safetensors + a JSON self-description")
    export.add_argument("checkpoint", help="pretraining .ckpt (e.g. <run dir>/checkpoints/last.ckpt)")
    export.add_argument("out", help="output folder (gets encoder.safetensors and prism_encoder.json)")
    export.set_defaults(func=run_export)

    embed = subparsers.add_parser("embed", help="one embedding per volume and per subject of a manifest, as Parquet")
    embed.add_argument("checkpoint", help="pretraining .ckpt or `prism export` folder")
    embed.add_argument("--manifest", required=True, help="manifest (.parquet/.csv) from `prism manifest build`")
    embed.add_argument("--out", required=True, help="output .parquet")
    embed.add_argument("--features", choices=["encoder", "anatomy"], default="encoder",
                       help="encoder tokens (sequence included) or the sequence-invariant anatomy projection")
    embed.add_argument("--data-root", help="root for relative manifest paths (default: the manifest's folder)")
    embed.add_argument("--batch-size", type=int, default=4, help="windows per encoder pass")
    embed.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    embed.set_defaults(func=run_embed)

    try:  # `prism benchmark` lives with the benchmark suite
        from prism.finetune.benchmark import add_benchmark_command
    except ImportError:
        return
    add_benchmark_command(subparsers)
