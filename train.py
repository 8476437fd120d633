"""Train with a Hydra config: ``python train.py +experiment=pretrain [overrides...]``.

See README.md for the experiments, config groups and the short CPU demo switch.
"""

from __future__ import annotations

import sys

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from prism.training.run import build, train  # imported here so `--help` and config errors stay fast

    try:  # configuration mistakes: one readable line, before any compute
        parts = build(cfg)
    except (ValueError, FileNotFoundError, InstantiationException) as err:
        cause = err
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        print(f"prism train: error: {cause}", file=sys.stderr)
        sys.exit(2)
    train(cfg, *parts)


if __name__ == "__main__":
    main()
