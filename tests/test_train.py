"""Config composition, end-to-end training on the embedded data, resume, and bad-input errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
TINY = ["+debug=fast_dev_run", "logger=csv", "trainer.fast_dev_run=false", "trainer.max_steps=3",
        "trainer.val_check_interval=3", "data.val_batches=1", "callbacks.last_checkpoint.every_n_train_steps=2"]


def compose_cfg(overrides: list[str], tmp_path: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # so ${hydra:...} interpolations resolve as in a real run
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.log_dir = str(tmp_path / "logs")
        del cfg["hydra"]
    return cfg


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(experiment, tmp_path):
    cfg = compose_cfg([f"+experiment={experiment}"], tmp_path)
    assert cfg.task_name.startswith(experiment.split("_")[0])
    assert cfg.model.encoder.img_size == cfg.data.crop_size


@pytest.mark.parametrize("group", ["model", "trainer", "logger", "callbacks", "data", "module"])
def test_every_option_of_every_group_composes(group, tmp_path):
    for option in options(group):
        cfg = compose_cfg([f"{group}={option}"], tmp_path)
        assert group in cfg


@pytest.mark.parametrize("debug", options("debug"))
def test_debug_switches_apply_after_the_experiment(debug, tmp_path):
    cfg = compose_cfg(["+experiment=pretrain", f"+debug={debug}"], tmp_path)
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.model.encoder.preset == "tiny"


def test_pretrain_is_the_gpu_recipe_and_mae_turns_the_rest_off(tmp_path):
    full = compose_cfg(["+experiment=pretrain"], tmp_path)
    assert full.model.encoder.preset == "base" and list(full.data.crop_size) == [96, 96, 96]
    assert full.trainer.precision == "bf16-mixed"
    mae = compose_cfg(["+experiment=pretrain_mae"], tmp_path)
    weights = {k: v.weight for k, v in mae.module.objectives.items()}
    assert weights["masked_reconstruction"] > 0 and all(w == 0 for k, w in weights.items() if k != "masked_reconstruction")


def test_command_line_overrides(tmp_path):
    cfg = compose_cfg(["model=vit_base", "data.batch_size=4", "trainer.max_steps=100", "logger=csv"], tmp_path)
    assert cfg.data.batch_size == 4 and cfg.trainer.max_steps == 100 and "csv" in cfg.logger


def test_fast_dev_run_and_resume_continue_the_step_count(tmp_path):
    from prism.training.run import build, train

    separation = {"_target_": "prism.evaluation.separation_callback.SeparationEvaluation", "crop_size": [32, 32, 32],
                  "num_subjects": 4, "every_n_steps": 3, "out_file": str(tmp_path / "separation.jsonl")}
    cfg = compose_cfg(TINY, tmp_path)
    with open_dict(cfg):
        cfg.callbacks.separation = separation
    train(cfg, *build(cfg))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file() and (tmp_path / "config_resolved.yaml").is_file()
    assert list((tmp_path / "reconstructions").glob("*.png"))
    checkpoint = torch.load(last, weights_only=True)  # no pickled code needed
    assert checkpoint["global_step"] == 3
    consumed = checkpoint["SynthDataModule"]["batches_consumed"]
    assert consumed == 3

    resumed = compose_cfg(TINY + ["trainer.max_steps=5", f"ckpt_path={last}"], tmp_path)
    with open_dict(resumed):
        resumed.callbacks.separation = separation
    datamodule, module, trainer = build(resumed)
    train(resumed, datamodule, module, trainer)
    assert trainer.global_step == 5
    # evaluated at step 3 (period) and at the end of training (step 5), once each, logged to csv
    steps = [json.loads(line)["step"] for line in (tmp_path / "separation.jsonl").read_text().splitlines()]
    assert steps == [3, 5]
    assert datamodule.batches_consumed == 5
    assert torch.load(last, weights_only=True)["global_step"] == 5

    from prism.cli import main as prism_cli

    report = tmp_path / "separation.json"
    assert prism_cli(["evaluate", str(last), "--subjects", "4", "--out", str(report)]) == 0
    assert "sequence_acc_from_anatomy" in report.read_text()


def run_train(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides, f"paths.log_dir={cwd}"],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.batch_sizee=4"], "batch_sizee"),
        (["model=vit_huge"], "vit_huge"),
        (["model.encoder.preset=huge"], "Unknown ViT preset 'huge'"),
        (["data.crop_size=[60,64,64]"], "not divisible by patch size"),
        (["ckpt_path=/no/such/run/last.ckpt"], "ckpt_path=/no/such/run/last.ckpt does not exist"),
    ],
)
def test_bad_input_stops_early_with_a_readable_message(overrides, message, tmp_path):
    result = run_train("+debug=fast_dev_run", "logger=csv", *overrides, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_lightning_log_lines_go_through_the_root_logger_once():
    import logging

    from prism.training.run import log_lightning_through_root

    root, lightning_logger = logging.getLogger(), logging.getLogger("lightning")
    saved_root, saved = root.handlers[:], lightning_logger.handlers[:]
    try:
        root.handlers[:] = []
        lightning_logger.handlers[:] = [logging.StreamHandler()]
        log_lightning_through_root()  # no root handlers (no Hydra): Lightning keeps its console
        assert len(lightning_logger.handlers) == 1
        root.addHandler(logging.NullHandler())  # Hydra configured the root logger
        log_lightning_through_root()
        assert lightning_logger.handlers == [] and lightning_logger.propagate
    finally:
        root.handlers[:], lightning_logger.handlers[:] = saved_root, saved
