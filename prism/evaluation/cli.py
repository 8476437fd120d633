"""``prism evaluate CKPT``: anatomy/sequence separation of a pretraining checkpoint, as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load_pretrain_network(checkpoint_path: str):
    """Rebuild the ``PretrainNetwork`` a pretraining checkpoint was trained with (no pickled code is run)."""
    from hydra.utils import instantiate

    from prism.cli import UserError
    from prism.training.checkpoint_io import safe_torch_load

    checkpoint = safe_torch_load(checkpoint_path)
    meta = checkpoint.get("prism")
    if not meta:
        raise UserError(f"{checkpoint_path} is not a prism pretraining checkpoint (no 'prism' metadata).")
    config = json.loads(meta["config_json"])
    network = instantiate(config["model"])
    state = {k[len("net."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    network.load_state_dict(state)
    return network, config


def run_evaluate(args: argparse.Namespace) -> int:
    from prism.evaluation.held_out import held_out_batches
    from prism.evaluation.separation import collect_features, separation_report, verdict

    network, config = load_pretrain_network(args.checkpoint)
    data = config.get("data", {})
    batches = held_out_batches(data.get("crop_size", [64, 64, 64]), float(data.get("spacing_mm", 2.0)), args.subjects)
    report = separation_report(collect_features(network, batches))
    result = {"checkpoint": str(args.checkpoint), "subjects": args.subjects, **report, "verdict": verdict(report)}
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="anatomy/sequence separation of a pretraining checkpoint")
    parser.add_argument("checkpoint", help="a pretraining .ckpt (e.g. <run dir>/checkpoints/last.ckpt)")
    parser.add_argument("--subjects", type=int, default=24, help="held-out synthetic subjects (each under 4 sequences)")
    parser.add_argument("--out", help="also write the JSON report here")
    parser.set_defaults(func=run_evaluate)
