"""DDP scaling efficiency on CPU (gloo): samples/s per process with 1 and 2 processes.

Each measurement is a fresh ``python benchmarks/ddp_scaling.py --worker ...`` run of
Lightning's Trainer with prism's PretrainModule (all objectives) on the tiny network of
``+debug=fast_dev_run`` (from the real Hydra config), one thread per process, the same
per-process batch in every setting, and one fixed in-memory batch (so data generation is
not measured). Settings:

* ``single``: 1 process, no DDP (the reference);
* ``ddp1``: 1 process inside DDP (gloo): the wrapper's own overhead;
* ``ddp2``: 2 processes, gloo all-reduce of the gradients every step.

Settings are interleaved within each repeat (single, ddp1, ddp2, single, ...) so drift in
the load of a shared machine hits all of them alike; the median over repeats is reported.

    python benchmarks/ddp_scaling.py --repeats 3 --steps 40 --out benchmarks/results/scaling.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"single": (1, False), "ddp1": (1, True), "ddp2": (2, True)}
MODEL_OVERRIDES = ["+debug=fast_dev_run", "model.encoder.depth=4", "data.crop_size=[48,48,48]"]


def fixed_batch(batch_size: int, crop: int, views: int = 2) -> dict:
    """One contract-valid batch (prism.data.batch): random volumes, two sequences per subject."""
    import torch

    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.rand(batch_size, views, crop, crop, crop, generator=g),
        "view_present": torch.ones(batch_size, views, dtype=torch.bool),
        "sequence_id": torch.arange(views).repeat(batch_size, 1),
        "acq_params": torch.tensor([2.0, 0.1, 0.0, 90.0, 3.0]).repeat(batch_size, views, 1),
        "acq_present": torch.tensor([True, True, False, True, True]).repeat(batch_size, views, 1),
        "subject_id": [f"sub-{i:03d}" for i in range(batch_size)],
    }


def worker(setting: str, steps: int, warmup: int, batch_size: int) -> None:
    """Train ``steps`` steps in one setting; rank zero prints one JSON line with samples/s per process."""
    import lightning as L
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.strategies import DDPStrategy
    from torch.utils.data import DataLoader, IterableDataset

    torch.set_num_threads(1)
    world, use_ddp = SETTINGS[setting]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=MODEL_OVERRIDES + [f"data.batch_size={batch_size}"])
    crop = int(cfg.data.crop_size[0])

    class RepeatBatch(IterableDataset):
        def __iter__(self):
            batch = fixed_batch(batch_size, crop)
            while True:
                yield batch

    class StepTimes(Callback):
        def __init__(self):
            self.times: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.times.append(time.perf_counter())

    L.seed_everything(0)
    net = instantiate(cfg.model)
    module = instantiate(cfg.module, net=net, scheduler=None)
    timer = StepTimes()
    trainer = L.Trainer(
        accelerator="cpu", devices=world, num_nodes=1, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        strategy=DDPStrategy(process_group_backend="gloo", find_unused_parameters=False) if use_ddp else "auto",
        callbacks=[timer],
    )
    trainer.fit(module, train_dataloaders=DataLoader(RepeatBatch(), batch_size=None))
    if trainer.is_global_zero:
        timed = timer.times[warmup:]
        per_process = batch_size * (len(timed) - 1) / (timed[-1] - timed[0])
        print("RESULT " + json.dumps({"setting": setting, "world": world, "samples_per_s_per_process": per_process}), flush=True)


def measure(setting: str, steps: int, warmup: int, batch_size: int) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # not a SLURM job, even inside one
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="disabled")
    result = subprocess.run(
        [sys.executable, __file__, "--worker", setting, "--steps", str(steps), "--warmup", str(warmup), "--batch-size", str(batch_size)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{setting} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])["samples_per_s_per_process"]


def report(results: dict[str, list[float]], args: argparse.Namespace, command: str, load: list[float]) -> str:
    median = {name: statistics.median(values) for name, values in results.items()}
    efficiency = median["ddp2"] / median["single"]
    overhead = 1 - median["ddp1"] / median["single"]
    rows = "\n".join(
        f"| {name} | {SETTINGS[name][0]} | {'gloo DDP' if SETTINGS[name][1] else 'none'} | {median[name]:.2f} | "
        f"{', '.join(f'{v:.2f}' for v in values)} | {median[name] / median['single']:.2f} |"
        for name, values in results.items()
    )
    return f"""# DDP scaling on CPU (gloo)

Date: 2026-11-22. Machine: {os.cpu_count()}-core CPU VM, no GPU, **shared with other sessions and a running
pretraining job** (load varies; settings are interleaved within each repeat and the median is reported).
1-minute load average before and after the measurement: {load[0]:.1f} and {load[1]:.1f} (on {os.cpu_count()} cores).
Python {platform.python_version()}, torch {__import__('torch').__version__}, lightning {__import__('lightning').__version__}.

Command:

    {command}

What is compared: prism's PretrainModule (all objectives) on the `+debug=fast_dev_run` network with
`{' '.join(MODEL_OVERRIDES[1:])}`, per-process batch {args.batch_size} subjects x 2 views, one thread per
process, one fixed in-memory batch (no data generation), {args.steps} steps of which the first {args.warmup} are
not timed, {args.repeats} interleaved repeats. Samples/s **per process**; the reference is `single` (1 process,
no DDP) measured in the same run.

| setting | processes | wrapper | median samples/s per process | repeats | ratio to single |
|---|---|---|---|---|---|
{rows}

- Scaling efficiency 1 -> 2 processes (ddp2 / single, per process): **{efficiency:.2f}**.
- DDP wrapper overhead at 1 process (1 - ddp1 / single): **{overhead * 100:.1f} %**.

Caveats: `ddp2` needs both cores for itself. With a load average above the core count (see
above), the two processes share them with other jobs, so the measured efficiency mostly reflects
the contention, not DDP: it is a lower bound for an idle 2-core machine, and the spread between
repeats shows how much the load moved. gloo all-reduces over shared memory here.

## 8 GPUs: an estimate, not a measurement

No GPU was available to this session, so the GPU measurement the issue asks for (single-GPU
throughput with DDP vs without, target overhead < 5 %) is **blocked**; run
`python benchmarks/ddp_scaling.py` on a GPU node after adding a GPU setting, or compare
`trainer=gpu` with `trainer=ddp trainer.devices=1` on the same node.
Estimate for one 8-GPU node with NCCL (reasoning, nothing here was measured): DDP all-reduces the
gradients in buckets while the backward pass still runs (`gradient_as_bucket_view`), so only the
last bucket is exposed. ViT-Base with the decoder has on the order of 10^8 parameters, i.e. a few
hundred MB of fp32 gradients per step; a ring all-reduce over NVLink moves that in milliseconds,
small next to a bf16 forward/backward of a batch of 96^3 multi-view crops. Expect roughly 0.9 or
better per GPU (about 7x one GPU or more on a node) and confirm it with the GPU measurement above;
across nodes it depends on the interconnect (InfiniBand vs Ethernet) and must be measured on the
site. The CPU numbers above do not transfer to GPUs (gloo on shared memory vs NCCL on NVLink).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown report here")
    parser.add_argument("--worker", choices=sorted(SETTINGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup + 2 > args.steps:
        parser.error("--steps must exceed --warmup by at least 2")
    if args.worker:
        worker(args.worker, args.steps, args.warmup, args.batch_size)
        return
    load = [os.getloadavg()[0]]
    results: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for repeat in range(args.repeats):
        for name in SETTINGS:
            results[name].append(measure(name, args.steps, args.warmup, args.batch_size))
            print(f"repeat {repeat + 1}/{args.repeats} {name}: {results[name][-1]:.2f} samples/s per process", flush=True)
    command = "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    load.append(os.getloadavg()[0])
    text = report(results, args, command, load)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
