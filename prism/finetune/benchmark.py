"""``prism benchmark``: tasks x initialisations x seeds, each a Hydra fine-tuning run, in one table.

A suite (``conf/benchmark/<name>.yaml``) lists:

* ``tasks``: name -> ``experiment`` (a ``conf/experiment/finetune_*.yaml``) + Hydra overrides
  (which data, how many labelled subjects...) + optionally the ``inits`` to run (default all);
* ``inits``: name -> Hydra overrides (``scratch``, ``pretrained_mae``, ``pretrained_full``);
  they may interpolate ``${checkpoints.<name>}``, filled from ``--checkpoint NAME=PATH``;
* ``seeds``, ``overrides`` shared by every run, ``metrics`` shown in the Markdown table.

Every run composes the real training config exactly as ``python train.py +experiment=...``
would (``hydra.compose``), trains it with ``prism.training.run.build/train`` and tests it,
in its own folder ``<out>/runs/<task>/<init>/seed<k>``. A finished run leaves
``benchmark_result.json`` there and is skipped next time, so an interrupted benchmark
continues where it stopped (an unfinished run resumes from its own ``last.ckpt`` when the
experiment writes one). At the end ``<out>/benchmark.md`` and ``<out>/benchmark.csv`` hold
the mean and 95 % confidence interval over seeds (``prism.finetune.benchmark_table``).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from prism.finetune.benchmark_table import RunResult, markdown_table, summarise, write_csv

log = logging.getLogger(__name__)

RESULT_FILE = "benchmark_result.json"
METRICS_FILE = "metrics.json"
SUITE_KEYS = {"name", "description", "seeds", "checkpoints", "overrides", "inits", "tasks", "metrics"}
CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"


@dataclass(frozen=True)
class BenchmarkRun:
    """One fine-tuning run of a suite."""

    task: str
    init: str
    seed: int
    experiment: str
    overrides: tuple[str, ...]

    @property
    def relative_dir(self) -> Path:
        return Path("runs") / self.task / self.init / f"seed{self.seed}"


@dataclass
class Suite:
    """A parsed benchmark suite (see the module docstring)."""

    name: str
    seeds: list[int]
    tasks: dict[str, dict[str, Any]]
    inits: dict[str, list[str]]
    overrides: list[str] = field(default_factory=list)
    metrics: list[str] | None = None
    description: str = ""

    @classmethod
    def load(cls, path: str | Path, checkpoints: dict[str, str] | None = None) -> "Suite":
        """Read a suite file; ``checkpoints`` fill its ``checkpoints`` entries.

        Raises:
            FileNotFoundError: the suite or a checkpoint file does not exist.
            ValueError: unknown keys, an empty section, a task without ``experiment``, or a
                checkpoint the inits need that was not given.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Benchmark suite {path} does not exist; built-in suites are in conf/benchmark/.")
        raw = OmegaConf.load(path)
        unknown = set(raw.keys()) - SUITE_KEYS
        if unknown:
            raise ValueError(f"Suite {path}: unknown keys {sorted(unknown)}; a suite has {sorted(SUITE_KEYS)}.")
        given = dict(checkpoints or {})
        known = set(raw.get("checkpoints") or {})
        extra = set(given) - known
        if extra:
            raise ValueError(f"--checkpoint {sorted(extra)}: suite {path.name} only uses checkpoints {sorted(known)}.")
        for name, ckpt in given.items():
            if not Path(ckpt).exists():
                raise FileNotFoundError(f"--checkpoint {name}={ckpt}: no such file or export folder.")
            raw.checkpoints[name] = str(Path(ckpt).resolve())
        for key in ("seeds", "inits", "tasks"):
            if not raw.get(key):
                raise ValueError(f"Suite {path}: '{key}' is missing or empty.")
        tasks = {}
        for name, entry in raw.tasks.items():
            if not entry or "experiment" not in entry:
                raise ValueError(f"Suite {path.name}: task {name!r} needs an 'experiment' (a conf/experiment/finetune_*.yaml).")
            task_inits = [str(i) for i in entry.get("inits") or raw.inits.keys()]
            unknown_inits = set(task_inits) - set(raw.inits.keys())
            if unknown_inits:
                raise ValueError(f"Suite {path.name}: task {name!r} lists inits {sorted(unknown_inits)}; the suite has {list(raw.inits.keys())}.")
            tasks[str(name)] = {"experiment": str(entry.experiment), "overrides": [str(o) for o in entry.get("overrides") or []],
                                "inits": task_inits}
        try:
            inits = {name: [str(o) for o in overrides] for name, overrides in raw.inits.items()}
        except Exception as err:  # omegaconf MissingMandatoryValue for an unfilled ${checkpoints.x}
            missing = [k for k in known if OmegaConf.is_missing(raw.checkpoints, k)]
            raise ValueError(
                f"Suite {path.name} needs checkpoints {missing}: pass --checkpoint NAME=PATH for each "
                f"(e.g. --checkpoint {missing[0] if missing else 'pretrained_full'}=/path/to/last.ckpt)."
            ) from err
        metrics = raw.get("metrics")
        return cls(
            name=str(raw.get("name", path.stem)), seeds=[int(s) for s in raw.seeds], tasks=tasks, inits=inits,
            overrides=[str(o) for o in raw.get("overrides") or []], metrics=None if metrics is None else [str(m) for m in metrics],
            description=str(raw.get("description", "")),
        )

    def runs(self, only_tasks: list[str] | None = None, only_inits: list[str] | None = None) -> list[BenchmarkRun]:
        """Every run, task by task, seed by seed, init by init (so a stopped benchmark has whole seeds).

        ``only_tasks`` / ``only_inits`` restrict the plan (``--tasks`` / ``--inits``); names not in the suite raise.
        """
        for flag, chosen, known in (("--tasks", only_tasks, self.tasks), ("--inits", only_inits, self.inits)):
            unknown = set(chosen or ()) - set(known)
            if unknown:
                raise ValueError(f"{flag} {sorted(unknown)} are not in suite {self.name}; it has {list(known)}.")
        planned = []
        for task, entry in self.tasks.items():
            if only_tasks and task not in only_tasks:
                continue
            for seed in self.seeds:
                for init in entry["inits"]:
                    if only_inits and init not in only_inits:
                        continue
                    overrides = (*self.overrides, *entry["overrides"], *self.inits[init], f"seed={seed}")
                    planned.append(BenchmarkRun(task, init, seed, entry["experiment"], tuple(overrides)))
        return planned


def compose_run_config(run: BenchmarkRun, output_dir: Path, config_dir: Path = CONFIG_DIR) -> DictConfig:
    """The config ``python train.py +experiment=<experiment> <overrides>`` would run, writing into ``output_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose("train", overrides=[f"+experiment={run.experiment}", *run.overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} interpolations resolve as in a real run
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir / "logs")
        del cfg["hydra"]
    return cfg


def metrics_from_test_output(outputs: list[dict[str, float]], test_set_names: list[str]) -> dict[str, dict[str, float]]:
    """``trainer.test``'s list (one dict per test dataloader) as ``{test set: {metric: value}}``."""
    metrics: dict[str, dict[str, float]] = {}
    for index, logged in enumerate(outputs):
        name = test_set_names[index] if index < len(test_set_names) else f"test_set_{index}"
        for key, value in logged.items():
            metric = re.sub(r"/dataloader_idx_\d+$", "", key)
            metric = metric[len("test/"):] if metric.startswith("test/") else metric
            metrics.setdefault(name, {})[metric] = float(value)
    return metrics


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Keep the numeric scalars of ``{test set: {metric: value}}`` (nested per-class entries are dropped)."""
    return {
        str(test_set): {str(k): float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for test_set, values in metrics.items() if isinstance(values, dict)
    }


def execute_run(run: BenchmarkRun, output_dir: Path, config_dir: Path = CONFIG_DIR) -> dict[str, Any]:
    """Train and test one run; returns (and writes) its result record."""
    from prism.training.run import build, train, write_text_atomically

    started = time.time()
    cfg = compose_run_config(run, output_dir, config_dir)
    datamodule, module, trainer = build(cfg)
    metrics_file = output_dir / METRICS_FILE
    if metrics_file.exists():
        metrics_file.unlink()  # an interrupted earlier attempt's metrics must not pass for this one's
    train(cfg, datamodule, module, trainer)
    outputs = [] if metrics_file.is_file() else trainer.test(module, datamodule=datamodule, verbose=False)
    if metrics_file.is_file():  # FinetuneModule writes {test set: {metric: value}} after testing
        metrics = scalar_metrics(json.loads(metrics_file.read_text()))
    else:
        metrics = metrics_from_test_output(outputs, list(getattr(datamodule, "test_set_names", [])))
    if not metrics:
        raise RuntimeError(f"Run {run.relative_dir} finished without test metrics (no {METRICS_FILE}, nothing logged by trainer.test).")
    record = {
        "task": run.task, "init": run.init, "seed": run.seed, "experiment": run.experiment,
        "overrides": list(run.overrides), "steps": int(trainer.global_step),
        "seconds": round(time.time() - started, 1), "metrics": metrics,
    }
    write_text_atomically(output_dir / RESULT_FILE, json.dumps(record, indent=2))
    return record


def results_of(record: dict[str, Any]) -> list[RunResult]:
    return [
        RunResult(record["task"], record["init"], int(record["seed"]), test_set, metric, float(value))
        for test_set, values in record["metrics"].items() for metric, value in values.items()
    ]


def run_suite(
    suite: Suite, out: Path, config_dir: Path = CONFIG_DIR, only_tasks: list[str] | None = None, table_only: bool = False,
    only_inits: list[str] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Run (or skip, when finished) every planned run of ``suite``, then write the table; returns (records, failures).

    The table holds the planned runs only (``--seeds``, ``--tasks``, ``--inits``); runs of other seeds already
    in ``out`` are not read, so list every seed to aggregate (finished runs are skipped, not re-run).
    """
    out = Path(out)
    records, failures = [], []
    planned = suite.runs(only_tasks, only_inits)
    for run in planned:
        run_dir = out / run.relative_dir
        result = run_dir / RESULT_FILE
        if result.is_file():
            records.append(json.loads(result.read_text()))
            continue
        if table_only:
            continue
        log.info("benchmark %s: %s", suite.name, run.relative_dir)
        try:
            records.append(execute_run(run, run_dir, config_dir))
        except Exception as err:  # one broken run must not lose the others; it is listed in the table
            first_line = (str(err).strip().splitlines() or [""])[0]
            failures.append(f"{run.relative_dir}: {type(err).__name__}: {first_line}")
            log.exception("benchmark run %s failed", run.relative_dir)
        write_tables(suite, out, records, failures, len(planned))
    write_tables(suite, out, records, failures, len(planned))
    return records, failures


def write_tables(suite: Suite, out: Path, records: list[dict[str, Any]], failures: list[str], planned: int) -> None:
    """``benchmark.csv`` (every cell, every metric) and ``benchmark.md`` (the suite's metrics)."""
    cells = summarise(r for record in records for r in results_of(record))
    write_csv(cells, out / "benchmark.csv")
    seconds = sum(float(r.get("seconds", 0.0)) for r in records)
    lines = [
        f"# Benchmark suite `{suite.name}`", "",
        suite.description.strip(), "",
        f"{len(records)} of {planned} planned runs finished (tasks x inits x seeds {list(suite.seeds)}), "
        f"{seconds / 60:.1f} min of run time in total.", "",
        markdown_table(cells, list(suite.inits), suite.metrics),
    ]
    if failures:
        lines += ["## Failed runs", "", *[f"- {f}" for f in failures], ""]
    (out / "benchmark.md").write_text("\n".join(lines))


def parse_checkpoints(items: list[str]) -> dict[str, str]:
    checkpoints = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--checkpoint {item!r}: use NAME=PATH, e.g. --checkpoint pretrained_full=runs/x/last.ckpt.")
        checkpoints[name] = path
    return checkpoints


def benchmark_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    suite = Suite.load(args.suite, parse_checkpoints(args.checkpoint))
    if args.seeds:
        suite.seeds = list(args.seeds)
    records, failures = run_suite(suite, Path(args.out), Path(args.config_dir), args.tasks, args.table_only, args.inits)
    print((Path(args.out) / "benchmark.md").read_text())
    return 1 if failures else 0


def add_benchmark_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``prism benchmark`` (called from ``prism.finetune.cli``)."""
    parser = subparsers.add_parser(
        "benchmark", help="Fine-tune tasks x {scratch, pretrained} x seeds and write a table with confidence intervals.",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--suite", required=True, help="suite file, e.g. conf/benchmark/builtin.yaml")
    parser.add_argument("--out", required=True, help="output folder (runs/, benchmark.md, benchmark.csv); re-run to resume")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="fill the suite's checkpoints, e.g. pretrained_full=last.ckpt (repeat per checkpoint)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the suite's seeds")
    parser.add_argument("--tasks", nargs="+", help="run only these tasks of the suite")
    parser.add_argument("--inits", nargs="+", help="run only these initialisations of the suite, e.g. scratch pretrained_full")
    parser.add_argument("--table-only", action="store_true", help="only rebuild the table from finished runs")
    parser.add_argument("--config-dir", default=str(CONFIG_DIR), help="Hydra config folder (default: the repository's conf/)")
    parser.set_defaults(func=benchmark_command)
