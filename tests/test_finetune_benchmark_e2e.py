"""prism benchmark end to end: the quick suite on a tiny pretraining checkpoint, then a resume that trains nothing."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from prism.finetune import benchmark

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def tiny_checkpoint(tmp_path: Path) -> Path:
    from test_train import TINY, compose_cfg

    from prism.training.run import build, train

    cfg = compose_cfg(TINY + ["callbacks.separation=null", "callbacks.reconstruction_preview=null"], tmp_path / "pretrain")
    train(cfg, *build(cfg))
    return tmp_path / "pretrain" / "checkpoints" / "last.ckpt"


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    benchmark.add_benchmark_command(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.slow
def test_quick_suite_runs_tasks_x_inits_x_seeds_and_resumes_without_training(tmp_path, monkeypatch):
    ckpt = tiny_checkpoint(tmp_path)
    out = tmp_path / "bench"
    argv = ["benchmark", "--suite", str(ROOT / "conf/benchmark/quick.yaml"), "--out", str(out),
            "--checkpoint", f"pretrained_full={ckpt}", "--checkpoint", f"pretrained_mae={ckpt}"]
    assert run_cli(argv) == 0
    results = sorted(out.glob("runs/*/*/seed*/benchmark_result.json"))
    assert len(results) == 3 * 2
    record = json.loads(results[0].read_text())
    assert set(record["metrics"]) == {"T1w_MPRAGE", "T2w", "FLAIR", "PDw"} and record["steps"] == 2
    assert all(0.0 <= values["dice"] <= 1.0 for values in record["metrics"].values())
    table = (out / "benchmark.md").read_text()
    assert "6 of 6 planned runs finished" in table and "Failed runs" not in table
    rows = [line for line in table.splitlines() if line.startswith("| tissue_segmentation_2")]
    assert len(rows) == 4 and all(line.count("±") == 3 for line in rows)
    csv_lines = (out / "benchmark.csv").read_text().splitlines()
    assert any(",scratch,T2w,dice,2," in line for line in csv_lines)

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(benchmark, "execute_run", must_not_train)
    assert run_cli(argv) == 0
    assert (out / "benchmark.md").read_text() == table
