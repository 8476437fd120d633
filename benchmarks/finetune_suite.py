"""Run a downstream benchmark suite and write its results page (command, machine, date, table).

    python benchmarks/finetune_suite.py --out runs/bench_builtin \
        --checkpoint pretrained_full=PATH/full.ckpt --checkpoint pretrained_mae=PATH/mae.ckpt \
        [--suite conf/benchmark/builtin.yaml] [--results benchmarks/results/finetune.md] [--threads 2]

Without ``--results`` the page goes to ``<out>/RESULTS.md``, so a partial run (``--seeds``, ``--tasks``)
never overwrites a committed results page.

Everything is measured in this process: ``prism.finetune.benchmark.run_suite`` trains and tests
every run of the suite (skipping runs already finished in ``--out``), then this script writes
``--results`` with the exact command, the machine (CPU count, torch threads, load average
before and after: the machine may be shared), the date and the suite's table.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"{platform.system()} {platform.release()}")


def sharing(load_before: tuple[float, ...], load_after: tuple[float, ...]) -> str:
    """What the load averages say about the timings (a 1-minute load of 0.5 or more: other jobs ran too)."""
    if max(load_before[0], load_after[0]) >= 0.5:
        return ": other jobs shared the machine, so timings are indicative only"
    return " (the machine was otherwise idle when this invocation started and ended)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=str(ROOT / "conf" / "benchmark" / "builtin.yaml"))
    parser.add_argument("--out", required=True, help="benchmark folder (runs/, benchmark.md, benchmark.csv); re-run to resume")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--results", help="results page to write (default: <out>/RESULTS.md)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--tasks", nargs="+", help="run only these tasks of the suite")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the suite's seeds (as prism benchmark --seeds)")
    parser.add_argument("--inits", nargs="+", help="run only these initialisations of the suite (as prism benchmark --inits)")
    args = parser.parse_args(argv)

    import torch

    from prism.finetune.benchmark import Suite, parse_checkpoints, run_suite

    if args.threads:
        torch.set_num_threads(args.threads)
    suite = Suite.load(args.suite, parse_checkpoints(args.checkpoint))
    if args.seeds:
        suite.seeds = list(args.seeds)
    load_before, started = os.getloadavg(), time.time()
    records, failures = run_suite(suite, Path(args.out), only_tasks=args.tasks, only_inits=args.inits)
    load_after, minutes = os.getloadavg(), (time.time() - started) / 60
    table = (Path(args.out) / "benchmark.md").read_text()
    suite_path = Path(args.suite).resolve()
    per_task: dict[str, list[float]] = {}
    for record in records:
        per_task.setdefault(record["task"], []).append(float(record.get("seconds", 0.0)))
    timing = "\n".join(f"- {task}: {len(s)} runs, {sum(s) / len(s):.0f} s per run on average" for task, s in per_task.items())
    page = f"""# Downstream benchmark: suite `{suite.name}`

Date: {datetime.date.today().isoformat()}. Measured by:

```
{shlex.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}
```

Machine: {machine()}. Load average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in load_before)} at the start,
{'/'.join(f'{x:.1f}' for x in load_after)} at the end{sharing(load_before, load_after)}. This invocation took {minutes:.1f} min (runs finished earlier in
`{args.out}` are read back, not re-run).

Suite file: `{suite_path.relative_to(ROOT) if suite_path.is_relative_to(ROOT) else suite_path}`
(every run's full config is in its run folder, `config_resolved.yaml`).

{table}
Run time per task (train + test, one process):

{timing}
"""
    results = Path(args.results) if args.results else Path(args.out) / "RESULTS.md"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(page)
    print(page)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
