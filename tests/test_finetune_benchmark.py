"""prism benchmark: confidence intervals, the table, suite files, run planning, resume, bad input."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from prism.finetune import benchmark
from prism.finetune.benchmark import Suite, metrics_from_test_output, run_suite, scalar_metrics
from prism.finetune.benchmark_table import RunResult, confidence_interval, markdown_table, summarise, write_csv

ROOT = Path(__file__).resolve().parents[1]


def test_confidence_interval_matches_the_t_table():
    mean, std, half = confidence_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and std == pytest.approx(1.0)
    assert half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)  # t_{0.975, 2} = 4.3027
    mean, std, half = confidence_interval([0.5, 0.7])
    assert half == pytest.approx(12.706205 * std / math.sqrt(2), rel=1e-5)  # t_{0.975, 1}
    assert math.isnan(confidence_interval([0.4])[2])
    assert confidence_interval([0.3] * 5)[2] == 0.0
    with pytest.raises(ValueError, match="at least one value"):
        confidence_interval([])


def results(values: dict[str, list[float]], task="tissue", test_set="T2w", metric="dice") -> list[RunResult]:
    return [RunResult(task, init, seed, test_set, metric, v) for init, vs in values.items() for seed, v in enumerate(vs)]


def test_summary_groups_by_task_init_test_set_metric_and_marks_the_best():
    rows = results({"scratch": [0.2, 0.3, 0.25], "pretrained_full": [0.5, 0.6, 0.55]})
    rows += results({"scratch": [5.0, 6.0, 7.0], "pretrained_full": [9.0, 8.0, 10.0]}, metric="hd95")
    rows.append(RunResult("tissue", "scratch", 3, "T2w", "dice", float("nan")))  # dropped, not averaged
    cells = summarise(rows)
    assert len(cells) == 4
    cell = next(c for c in cells if c.init == "pretrained_full" and c.metric == "dice")
    assert cell.n == 3 and cell.mean == pytest.approx(0.55) and cell.seeds == (0, 1, 2)
    assert cell.ci_low < 0.55 < cell.ci_high
    table = markdown_table(cells, ["scratch", "pretrained_full"])
    dice_row = next(line for line in table.splitlines() if "dice" in line)
    hd95_row = next(line for line in table.splitlines() if "hd95" in line)
    assert "**0.550 ±" in dice_row and "**0.250" not in dice_row  # higher Dice wins
    assert "**6.000 ±" in hd95_row  # lower HD95 wins
    only_dice = markdown_table(cells, ["scratch", "pretrained_full"], metrics=["dice"])
    assert "hd95" not in only_dice


def test_csv_has_every_cell_with_its_interval(tmp_path):
    cells = summarise(results({"scratch": [0.1, 0.3]}))
    write_csv(cells, tmp_path / "t.csv")
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0].startswith("task,init,test_set,metric,n,mean,std,ci_half_width,ci_low,ci_high")
    values = dict(zip(lines[0].split(","), lines[1].split(",")))
    assert float(values["mean"]) == pytest.approx(0.2) and values["n"] == "2" and values["seeds"] == "0 1"
    assert float(values["ci_high"]) - float(values["ci_low"]) == pytest.approx(2 * float(values["ci_half_width"]))


def test_test_outputs_are_named_by_test_set():
    outputs = [{"test/dice/dataloader_idx_0": 0.5, "test/hd95/dataloader_idx_0": 3.0}, {"test/dice/dataloader_idx_1": 0.4}]
    assert metrics_from_test_output(outputs, ["T1w_MPRAGE", "T2w"]) == {
        "T1w_MPRAGE": {"dice": 0.5, "hd95": 3.0}, "T2w": {"dice": 0.4}}
    assert scalar_metrics({"all": {"auroc": 0.9, "per_class": [0.1, 0.2], "flag": True}}) == {"all": {"auroc": 0.9}}


def write_suite(path: Path, **changes) -> Path:
    suite = {
        "name": "toy", "seeds": [0, 1],
        "checkpoints": {"pretrained_full": "???"},
        "overrides": ["logger=csv"],
        "inits": {"scratch": ["finetune.mode=scratch"], "pretrained_full": ["finetune.checkpoint=${checkpoints.pretrained_full}"]},
        "tasks": {"tissue_5": {"experiment": "finetune_seg", "overrides": ["data.train_subjects=5"]}},
        "metrics": ["dice"],
    }
    suite.update(changes)
    path.write_text(json.dumps(suite))  # JSON is valid YAML
    return path


def test_suite_plans_tasks_x_seeds_x_inits_with_checkpoints_filled_in(tmp_path):
    ckpt = tmp_path / "full.ckpt"
    ckpt.write_bytes(b"x")
    suite = Suite.load(write_suite(tmp_path / "s.yaml"), {"pretrained_full": str(ckpt)})
    runs = suite.runs()
    assert [(r.task, r.seed, r.init) for r in runs] == [
        ("tissue_5", 0, "scratch"), ("tissue_5", 0, "pretrained_full"), ("tissue_5", 1, "scratch"), ("tissue_5", 1, "pretrained_full")]
    assert runs[1].overrides == ("logger=csv", "data.train_subjects=5", f"finetune.checkpoint={ckpt.resolve()}", "seed=0")
    assert runs[3].relative_dir == Path("runs/tissue_5/pretrained_full/seed1")
    tasks = {"tissue_5": {"experiment": "finetune_seg"}, "frozen": {"experiment": "finetune_seg", "inits": ["pretrained_full"]}}
    subset = Suite.load(write_suite(tmp_path / "s.yaml", tasks=tasks), {"pretrained_full": str(ckpt)})
    assert [(r.task, r.init) for r in subset.runs(["frozen"])] == [("frozen", "pretrained_full")] * 2
    assert [(r.task, r.seed, r.init) for r in suite.runs(only_inits=["scratch"])] == [("tissue_5", 0, "scratch"), ("tissue_5", 1, "scratch")]
    with pytest.raises(ValueError, match=r"--inits \['imagenet'\] are not in suite toy; it has \['scratch', 'pretrained_full'\]"):
        suite.runs(only_inits=["imagenet"])
    with pytest.raises(ValueError, match=r"--tasks \['tissue'\] are not in suite toy"):
        suite.runs(["tissue"])


@pytest.mark.parametrize(
    "changes,checkpoints,error,message",
    [
        ({}, {}, ValueError, "--checkpoint pretrained_full=/path"),
        ({}, {"pretrained_full": "/no/such.ckpt"}, FileNotFoundError, "/no/such.ckpt"),
        ({}, {"pretrained_mea": "x"}, ValueError, "only uses checkpoints ['pretrained_full']"),
        ({"seed": [0]}, {}, ValueError, "unknown keys ['seed']"),
        ({"tasks": {"t": {"overrides": []}}}, {}, ValueError, "needs an 'experiment'"),
        ({"seeds": []}, {}, ValueError, "'seeds' is missing or empty"),
        ({"tasks": {"t": {"experiment": "finetune_seg", "inits": ["imagenet"]}}}, {}, ValueError, "lists inits ['imagenet']"),
    ],
)
def test_bad_suites_name_the_problem(tmp_path, changes, checkpoints, error, message):
    with pytest.raises(error) as raised:
        Suite.load(write_suite(tmp_path / "s.yaml", **changes), checkpoints).runs()
    assert message in str(raised.value)


def test_finished_runs_are_skipped_and_failures_listed_without_losing_the_rest(tmp_path, monkeypatch):
    suite = Suite.load(write_suite(tmp_path / "s.yaml", inits={"scratch": ["finetune.mode=scratch"]}))
    executed = []

    def fake_execute(run, output_dir, config_dir):
        executed.append(run.seed)
        if run.seed == 1:
            raise RuntimeError("diverged")
        record = {"task": run.task, "init": run.init, "seed": run.seed, "seconds": 1.0,
                  "metrics": {"T2w": {"dice": 0.5 + run.seed}}}
        output_dir.mkdir(parents=True)
        (output_dir / benchmark.RESULT_FILE).write_text(json.dumps(record))
        return record

    monkeypatch.setattr(benchmark, "execute_run", fake_execute)
    records, failures = run_suite(suite, tmp_path / "out")
    assert executed == [0, 1] and len(records) == 1 and "seed1: RuntimeError: diverged" in failures[0]
    assert "Failed runs" in (tmp_path / "out" / "benchmark.md").read_text()
    executed.clear()
    records, failures = run_suite(suite, tmp_path / "out")
    assert executed == [1]  # seed 0 finished: skipped
    table = (tmp_path / "out" / "benchmark.md").read_text()
    assert "0.500 (n=1)" in table
    assert "1 of 2 planned runs finished" in table


def test_run_suite_runs_only_the_chosen_inits(tmp_path, monkeypatch):
    suite = Suite.load(write_suite(tmp_path / "s.yaml"), {"pretrained_full": str(tmp_path / "s.yaml")})
    executed = []

    def fake_execute(run, output_dir, config_dir):
        executed.append((run.init, run.seed))
        return {"task": run.task, "init": run.init, "seed": run.seed, "seconds": 1.0, "metrics": {"T2w": {"dice": 0.5}}}

    monkeypatch.setattr(benchmark, "execute_run", fake_execute)
    run_suite(suite, tmp_path / "out", only_inits=["pretrained_full"])
    assert executed == [("pretrained_full", 0), ("pretrained_full", 1)]
    assert "2 of 2 planned runs finished" in (tmp_path / "out" / "benchmark.md").read_text()


def test_built_in_suites_parse_and_the_cli_registers(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    ckpt.write_bytes(b"x")
    for path in sorted((ROOT / "conf" / "benchmark").glob("*.yaml")):
        needed = OmegaConf.load(path).checkpoints.keys()
        suite = Suite.load(path, {name: str(ckpt) for name in needed})
        assert "scratch" in suite.inits and "pretrained_full" in suite.inits, path.name  # scratch vs pretrained
        assert all(run.experiment.startswith("finetune_") for run in suite.runs()), path.name
    parser = argparse.ArgumentParser()
    benchmark.add_benchmark_command(parser.add_subparsers())
    args = parser.parse_args(["benchmark", "--suite", "s.yaml", "--out", "o", "--checkpoint", "a=b", "--inits", "scratch"])
    assert args.func is benchmark.benchmark_command and args.checkpoint == ["a=b"] and args.inits == ["scratch"]
    with pytest.raises(ValueError, match="use NAME=PATH"):
        benchmark.parse_checkpoints(["pretrained_full"])
