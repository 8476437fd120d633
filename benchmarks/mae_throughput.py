"""Training-step throughput and peak memory: prism encoder + MAE vs MONAI's MaskedAutoEncoderViT.

Both models get the same width, depth, heads, MLP ratio, patch size, input size, mask
ratio and decoder size, the same AdamW step and the same loss (MSE on masked patches).
Each (model, setting) runs in a fresh subprocess so peak memory is its own; runs are
interleaved (prism, MONAI, prism, MONAI, ...) and the median is reported.

    python benchmarks/mae_throughput.py                       # CPU, 1 thread
    python benchmarks/mae_throughput.py --device cuda --bf16  # GPU: adds MFU
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import time
from datetime import date

SETTINGS = {
    # name: (width, depth, heads, img, patch, decoder width, decoder depth, decoder heads, batch)
    "S-384/6, 64^3, p16": (384, 6, 6, 64, 16, 384, 2, 8, 4),
    "ViT-B, 96^3, p16": (768, 12, 12, 96, 16, 384, 4, 12, 2),
}
GPU_PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def build(kind: str, width, depth, heads, img, patch, dec_width, dec_depth, dec_heads):
    import torch

    if kind == "monai":
        from monai.networks.nets import MaskedAutoEncoderViT

        model = MaskedAutoEncoderViT(
            in_channels=1, img_size=img, patch_size=patch, hidden_size=width, mlp_dim=4 * width, num_layers=depth,
            num_heads=heads, masking_ratio=0.75, decoder_hidden_size=dec_width, decoder_mlp_dim=4 * dec_width,
            decoder_num_layers=dec_depth, decoder_num_heads=dec_heads, qkv_bias=True,
        )

        def loss_fn(x):
            from prism.models.patches import patchify

            pred, mask = model(x)
            target = patchify(x, (patch,) * 3)
            return (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()

        return model, loss_fn
    from prism.models.masking import random_masking
    from prism.models.patches import patchify
    from prism.models.pretrain_network import PretrainNetwork
    from prism.models.vit3d import VisionTransformer3d
    from prism.objectives.masked_reconstruction import masked_patch_mse

    encoder = VisionTransformer3d("base", img_size=img, patch_size=patch, embed_dim=width, depth=depth, num_heads=heads)
    model = PretrainNetwork(encoder, anatomy_dim=width, sequence_dim=64, decoder_dim=dec_width, decoder_depth=dec_depth, decoder_heads=dec_heads)

    def loss_fn(x):
        ids_keep, mask, ids_restore = random_masking(x.shape[0], encoder.grid[0] * encoder.grid[1] * encoder.grid[2], 0.75, x.device)
        features = model.encode(x, ids_keep)
        pred = model.decode(features["anatomy"], features["sequence_code"], ids_restore, features["grid"])
        return masked_patch_mse(pred, patchify(x, encoder.patch_size), mask)

    return model, loss_fn


def worker(kind: str, setting: str, device: str, bf16: bool, steps: int, threads: int, compile_model: bool, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    width, depth, heads, img, patch, dw, dd, dh, batch = SETTINGS[setting]
    torch.manual_seed(0)
    model, loss_fn = build(kind, width, depth, heads, img, patch, dw, dd, dh)
    model.to(device).train()
    if compile_model:
        loss_fn = torch.compile(loss_fn)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, img, img, img, device=device)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(x)
        loss.backward()
        optimizer.step()

    for _ in range(3 if compile_model or device != "cpu" else 1):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    flops = None
    if device.startswith("cuda"):
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        # growth of the process's peak resident memory over what it held before the first step
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_rss) / 1024
    queue.put({"samples_per_s": batch * steps / elapsed, "peak_mb": peak_mb, "flops_per_step": flops, "batch": batch})


def measure(kind, setting, args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=worker, args=(kind, setting, args.device, args.bf16, args.steps, args.threads, args.compile, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile both loss functions")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS))
    parser.add_argument("--gpu-name", default="H100", help="peak-FLOPs table key for MFU")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    rows = []
    for setting in args.settings:
        runs = {"prism": [], "monai": []}
        for _ in range(args.repeats):
            for kind in ("prism", "monai"):
                runs[kind].append(measure(kind, setting, args))
        med = {k: statistics.median(r["samples_per_s"] for r in v) for k, v in runs.items()}
        mem = {k: max(r["peak_mb"] for r in v) for k, v in runs.items()}
        row = {"setting": setting, "batch": runs["prism"][0]["batch"], "prism_sps": med["prism"], "monai_sps": med["monai"],
               "ratio": med["prism"] / med["monai"], "prism_mb": mem["prism"], "monai_mb": mem["monai"]}
        flops = runs["prism"][0]["flops_per_step"]
        if flops:
            row["prism_mfu"] = flops * med["prism"] / row["batch"] / (GPU_PEAK_BF16_TFLOPS[args.gpu_name] * 1e12)
        rows.append(row)
        print(json.dumps(row), flush=True)

    memory = "peak GPU MiB" if args.device.startswith("cuda") else "peak RSS growth MiB"
    print(f"\n{date.today()} device={args.device} bf16={args.bf16} compile={args.compile} threads={args.threads} "
          f"steps={args.steps} repeats={args.repeats} ({platform.processor() or platform.machine()})")
    print(f"| setting | batch | prism samples/s | MONAI samples/s | ratio | prism {memory} | MONAI {memory} |" + (" prism MFU |" if rows and "prism_mfu" in rows[0] else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if rows and "prism_mfu" in rows[0] else ""))
    for r in rows:
        mfu = f" {r['prism_mfu']:.1%} |" if "prism_mfu" in r else ""
        print(f"| {r['setting']} | {r['batch']} | {r['prism_sps']:.2f} | {r['monai_sps']:.2f} | {r['ratio']:.2f} | {r['prism_mb']:.0f} | {r['monai_mb']:.0f} |{mfu}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
