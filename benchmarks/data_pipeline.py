"""Real-data pipeline throughput per core: MONAI on-the-fly vs prism's store, same volumes, same run.

Volumes: the ICBM152 T1 template (nilearn's wheel) with Rician-like noise, written as int16
NIfTI.gz at 256x256x176 (like a 1 mm MPRAGE), half of them at 1 mm in LAS orientation
(reorientation only) and half at 0.9375 x 0.9375 x 1.2 mm (real resampling to 1 mm).

Rows:

* (a) MONAI ``LoadImaged -> EnsureChannelFirstd -> Orientationd(RAS) -> Spacingd(1 mm) ->
  ScaleIntensityRangePercentilesd -> RandSpatialCropd(96^3)``, one crop per pipeline call.
* (b) prism: random 96^3 crops read from the preprocessed raw float16 store (page cache),
  via ``ManifestBatchStream.make_batch`` (B=1, V=1: the full sampler incl. tensors) and via
  the bare memory-map copy; for the format choice the same crops from blosc2 (LZ4 + shuffle
  and ZSTD + bitshuffle, 32^3 chunks, 16^3 blocks) and zarr v3 (Blosc LZ4, 32^3 chunks),
  with their compression ratios, on the store as written and with its background zeroed.
* (c) ``prism preprocess`` volumes/s (reorient, resample to 1 mm, foreground crop,
  normalisation, float16 write) vs plain nibabel decode (``get_fdata``) of the same files.

Per core: rates per CPU-second of one process (``time.process_time``), ``torch.set_num_threads(1)``, one-thread BLAS / blosc2 / zarr. About 1-2 minutes on 2 shared cores.

    python benchmarks/data_pipeline.py [--volumes 6] [--monai-crops 8] [--crops 2000]
        [--out benchmarks/results/data.md]
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLOSC_NTHREADS", "NUMEXPR_MAX_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prism.data.manifest import validate_manifest  # noqa: E402
from prism.data.preprocess import PreprocessSettings, preprocess_manifest  # noqa: E402
from prism.data.sampler import ManifestBatchStream, build_table  # noqa: E402
from prism.data.store import VolumeStore, open_array  # noqa: E402
from prism.sequences import ACQUISITION_PARAMETERS  # noqa: E402

CROP = 96


def clock() -> float:
    """CPU seconds of this process (all threads): a per-core rate that other jobs on the shared cores do not dilute."""
    return time.process_time()


def make_volumes(folder: Path, count: int) -> list[Path]:
    """ICBM152 T1 + noise as int16 NIfTI.gz, 256x256x176; even: 1 mm LAS, odd: 0.9375x0.9375x1.2 mm RAS."""
    from nilearn.datasets import load_mni152_template
    from scipy import ndimage

    template = np.asarray(load_mni152_template(resolution=1).dataobj, dtype=np.float32)  # 197x233x189, 1 mm
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        spacing = (1.0, 1.0, 1.0) if i % 2 == 0 else (0.9375, 0.9375, 1.2)
        zoomed = ndimage.zoom(template, [1.0 / s for s in spacing], order=1) if i % 2 else template
        volume = np.zeros((256, 256, 176), np.float32)
        src = [slice(max(0, (n - m) // 2), max(0, (n - m) // 2) + min(n, m)) for n, m in zip(zoomed.shape, volume.shape)]
        dst = [slice(max(0, (m - n) // 2), max(0, (m - n) // 2) + min(n, m)) for n, m in zip(zoomed.shape, volume.shape)]
        volume[tuple(dst)] = zoomed[tuple(src)] * 3000.0
        noise = rng.normal(0, 40.0, (2, *volume.shape)).astype(np.float32)
        volume = np.sqrt((volume + noise[0]) ** 2 + noise[1] ** 2)  # Rician magnitude
        affine = np.diag([*spacing, 1.0])
        if i % 2 == 0:  # LAS: flip the first axis
            volume, affine[0, 0] = volume[::-1].copy(), -spacing[0]
        affine[:3, 3] = -affine[:3, :3] @ (np.array(volume.shape) / 2)
        path = folder / f"sub-{i:02d}_T1w.nii.gz"
        nib.save(nib.Nifti1Image(volume.astype(np.int16), affine), path)
        paths.append(path)
    return paths


def bench_monai(paths: list[Path], crops: int) -> float:
    from monai.transforms import (
        Compose, EnsureChannelFirstd, LoadImaged, Orientationd, RandSpatialCropd, ScaleIntensityRangePercentilesd, Spacingd,
    )

    pipeline = Compose([
        LoadImaged(keys="image", image_only=True), EnsureChannelFirstd(keys="image"),
        Orientationd(keys="image", axcodes="RAS"), Spacingd(keys="image", pixdim=(1.0, 1.0, 1.0), mode="bilinear"),
        ScaleIntensityRangePercentilesd(keys="image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True),
        RandSpatialCropd(keys="image", roi_size=(CROP,) * 3, random_size=False),
    ])
    pipeline.set_random_state(0)
    pipeline({"image": str(paths[0])})  # warm-up (imports, page cache)
    start = clock()
    for i in range(crops):
        out = pipeline({"image": str(paths[i % len(paths)])})
        assert tuple(out["image"].shape[1:]) == (CROP,) * 3
    return crops / (clock() - start)


def bench_nibabel(paths: list[Path]) -> float:
    start = clock()
    for path in paths:
        nib.load(path).get_fdata(dtype=np.float32)
    return len(paths) / (clock() - start)


def bench_preprocess(paths: list[Path], store: Path) -> float:
    manifest = validate_manifest(pd.DataFrame(
        [{"dataset": "bench", "subject": f"{i:02d}", "path": str(p), "sequence": "T1w"} for i, p in enumerate(paths)]
    ))
    start = clock()
    summary = preprocess_manifest(manifest, store, PreprocessSettings(spacing=(1.0, 1.0, 1.0)))
    seconds = clock() - start
    assert summary.processed == len(paths), summary
    return summary.processed / seconds


def store_table(store: Path):
    index = VolumeStore(store).read_index()
    volumes = index.assign(file=[str(store / f) for f in index["file"]], dataset="bench", sequence="T1w",
                           subject=[v.split("/")[-1] for v in index["volume_id"]], **{p: np.nan for p in ACQUISITION_PARAMETERS})
    return build_table(volumes)


def bench_sampler(table, crops: int) -> float:
    stream = ManifestBatchStream(table, batch_size=1, crop_size=(CROP,) * 3, num_views=1, seed=0)
    for k in range(20):  # warm-up: page cache + memory maps
        stream.make_batch(k, stream.generator_for(k))
    start = clock()
    for k in range(crops):
        stream.make_batch(k, stream.generator_for(k))
    return crops / (clock() - start)


def random_windows(shapes: list[tuple[int, ...]], count: int) -> list[tuple[int, tuple[slice, ...]]]:
    rng = np.random.default_rng(1)
    out = []
    for _ in range(count):
        v = int(rng.integers(len(shapes)))
        out.append((v, tuple(slice(s, s + CROP) for s in (int(rng.integers(0, n - CROP + 1)) for n in shapes[v]))))
    return out


def _timed_reads(read, windows: list[tuple[int, tuple[slice, ...]]]) -> float:
    for v, window in windows[:20]:
        read(v, window)  # warm-up (page cache, decoder state)
    start = clock()
    for v, window in windows:
        torch.from_numpy(np.ascontiguousarray(read(v, window))).float()
    return len(windows) / (clock() - start)


def zero_background(files: list[str], folder: Path) -> list[str]:
    """Copies of the store volumes with voxels below 5 % of the 99th percentile set to 0 (a skull-stripped or
    background-thresholded store: the best case for compression)."""
    folder.mkdir()
    out = []
    for i, f in enumerate(files):
        a = np.load(f)
        a[a < 0.05 * np.percentile(a[::4, ::4, ::4].astype(np.float32), 99)] = 0
        np.save(folder / f"{i}.npy", a)
        out.append(str(folder / f"{i}.npy"))
    return out


def bench_formats(files: list[str], workdir: Path, crops: int) -> dict[str, tuple[float, float]]:
    """Random 96^3 crops/s and compression ratio of the same volumes (``.npy`` files) in each candidate format."""
    workdir.mkdir()
    import blosc2
    import zarr
    from zarr.codecs import BloscCodec

    blosc2.set_nthreads(1)
    zarr.config.set({"threading.max_workers": 1})
    arrays = [open_array(f) for f in files]
    raw_bytes = sum(a.nbytes for a in arrays)
    windows = random_windows([a.shape for a in arrays], crops)
    few = windows[: max(50, crops // 10)]  # compressed formats are slower: fewer crops
    for a in arrays:
        np.asarray(a).sum(dtype=np.float64)  # page cache
    results = {"raw float16 .npy, memory-mapped (prism)": (_timed_reads(lambda v, w: arrays[v][w], windows), 1.0)}
    settings = {
        "blosc2 LZ4 level 5 + shuffle, 32^3 chunks / 16^3 blocks": blosc2.CParams(codec=blosc2.Codec.LZ4, clevel=5, filters=[blosc2.Filter.SHUFFLE], nthreads=1),
        "blosc2 ZSTD level 1 + bitshuffle, 32^3 chunks / 16^3 blocks": blosc2.CParams(codec=blosc2.Codec.ZSTD, clevel=1, filters=[blosc2.Filter.BITSHUFFLE], nthreads=1),
    }
    for name, cparams in settings.items():
        opened, packed = [], 0
        for i, a in enumerate(arrays):
            path = workdir / f"{len(results)}-{i}.b2nd"
            blosc2.asarray(np.asarray(a), urlpath=str(path), mode="w", chunks=(32, 32, 32), blocks=(16, 16, 16), cparams=cparams)
            packed += path.stat().st_size
            opened.append(blosc2.open(str(path), mode="r"))
        results[name] = (_timed_reads(lambda v, w: opened[v][w], few), raw_bytes / packed)
    opened, packed = [], 0
    for i, a in enumerate(arrays):
        path = workdir / f"zarr-{i}.zarr"
        z = zarr.create_array(str(path), shape=a.shape, dtype=a.dtype, chunks=(32, 32, 32),
                              compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")])
        z[...] = np.asarray(a)
        packed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        opened.append(zarr.open_array(str(path), mode="r"))
    results["zarr v3, Blosc LZ4 level 5 + shuffle, 32^3 chunks"] = (_timed_reads(lambda v, w: opened[v][w], few[: max(20, len(few) // 4)]), raw_bytes / packed)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=6)
    parser.add_argument("--monai-crops", type=int, default=8)
    parser.add_argument("--crops", type=int, default=2000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "data.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="prism-data-bench-") as tmp:
        work = Path(tmp)
        paths = make_volumes(work, args.volumes)
        nifti_mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
        nib_rate = max(bench_nibabel(paths) for _ in range(2))  # best of two passes (page cache)
        load_before = os.getloadavg()[0]
        pre_rate = max(bench_preprocess(paths, work / name) for name in ("store-0", "store"))  # best of two fresh stores
        table = store_table(work / "store")
        store_mb = sum(Path(f).stat().st_size for f in table.files) / len(table.files) / 1e6
        sampler_rate = bench_sampler(table, args.crops)
        noisy = bench_formats(table.files, work / "noisy", args.crops)
        clean = bench_formats(zero_background(table.files, work / "zeroed"), work / "clean", args.crops)
        monai_rate = bench_monai(paths, args.monai_crops)
        load_after = os.getloadavg()[0]
    raw_rate = noisy["raw float16 .npy, memory-mapped (prism)"][0]
    rows = [
        ("(a) MONAI on the fly: Load, Orientation, Spacing, percentiles, RandSpatialCrop 96^3", f"{monai_rate:.2f} crops/s", "1x"),
        ("(b) prism ManifestBatchStream.make_batch, B=1 V=1, 96^3, raw float16 store", f"{sampler_rate:.0f} crops/s", f"{sampler_rate / monai_rate:.0f}x (a)"),
        ("(b') bare memory-map read of a 96^3 float16 window, to a float32 tensor", f"{raw_rate:.0f} crops/s", f"{raw_rate / monai_rate:.0f}x (a)"),
        ("(c) prism preprocess (reorient, resample 1 mm, crop, normalise, float16 write)", f"{pre_rate:.2f} volumes/s", f"takes {nib_rate / pre_rate:.2f}x the decode time"),
        ("(c') nibabel decode (get_fdata) of the same NIfTI.gz files", f"{nib_rate:.2f} volumes/s", "1x"),
    ]
    verdict_b = sampler_rate >= 500 and sampler_rate >= 100 * monai_rate
    verdict_c = nib_rate / pre_rate <= 3.0
    lines = [
        "# Real-data pipeline throughput per core: prism store vs MONAI on the fly",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs (a pretraining run and 3-4 other "
        f"sessions), no GPU; one process, torch.set_num_threads(1), one-thread BLAS/blosc2/zarr; torch {torch.__version__}",
        f"- command: `python benchmarks/data_pipeline.py --volumes {args.volumes} --monai-crops {args.monai_crops} --crops {args.crops}`",
        f"- volumes: {args.volumes} x int16 NIfTI.gz 256x256x176 (ICBM152 T1 + Rician noise everywhere; half 1 mm LAS, half "
        f"0.9375x0.9375x1.2 mm), {nifti_mb:.1f} MB each on disk; in the store (1 mm, foreground-cropped, raw float16) "
        f"{store_mb:.1f} MB each. All reads from the page cache.",
        f"- rates are per CPU-second of the benchmark process (`time.process_time`), so that the other jobs on the shared "
        f"cores do not dilute them (load average {load_before:.1f} at the start, {load_after:.1f} at the end); "
        "preprocessing and nibabel decode: best of two passes",
        "",
        "| step | rate | ratio |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        f"Targets: (b) >= 500 crops/s per core and >= 100x (a): {'met' if verdict_b else 'NOT met'}; "
        f"(c) within 3x of nibabel decode time: {'met' if verdict_c else 'NOT met'} ({nib_rate / pre_rate:.2f}x).",
        "",
        "## Store format: the same store volumes, the same random 96^3 windows, converted to float32 tensors",
        "",
        "'noisy': the store as written (Rician noise in the background, like raw scans); 'zeroed': voxels below 5 % of the",
        "99th percentile set to 0 (skull-stripped or thresholded data: the best case for compression).",
        "",
        "| format | crops/s noisy | disk ratio noisy | crops/s zeroed | disk ratio zeroed | speed vs raw (noisy / zeroed) |",
        "|---|---|---|---|---|---|",
    ]
    raw_clean = clean["raw float16 .npy, memory-mapped (prism)"][0]
    for name, (rate, ratio) in noisy.items():
        rate_c, ratio_c = clean[name]
        lines.append(f"| {name} | {rate:.0f} | {ratio:.2f}x | {rate_c:.0f} | {ratio_c:.2f}x | {rate / raw_rate:.3f} / {rate_c / raw_clean:.3f} |")
    compressed = [name for name in noisy if not name.startswith("raw")]
    fastest = max(compressed, key=lambda name: noisy[name][0])
    best_ratio = max(compressed, key=lambda name: clean[name][1])
    lines += [
        "",
        "Choice: raw float16 `.npy` read through memory maps (`prism.data.store`). A crop is one strided copy out of",
        f"the page cache, with no decoding. The fastest compressed format here ({fastest}) reads "
        f"{raw_rate / noisy[fastest][0]:.1f}x (noisy) / {raw_clean / clean[fastest][0]:.1f}x (zeroed) slower. It saves only "
        f"{noisy[fastest][1]:.2f}x disk on noisy data and {clean[fastest][1]:.2f}x on zeroed data. The best ratio here "
        f"({best_ratio}, {clean[best_ratio][1]:.2f}x zeroed) costs {raw_clean / clean[best_ratio][0]:.1f}x in crop speed.",
        "Float16 noise mantissas do not compress, so on raw scans compression buys almost no disk. Where it would",
        "(skull-stripped data), a few times more disk is cheaper than the CPU cores needed to feed the GPUs at",
        "the slower rate. zarr's Python API adds per-chunk overhead on top of the same Blosc codec.",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
