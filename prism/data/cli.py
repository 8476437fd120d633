"""``prism manifest build|merge|filter|summary``, ``prism qc`` and ``prism preprocess``."""

from __future__ import annotations

import argparse
import logging
import os

import pandas as pd


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    manifest = subparsers.add_parser("manifest", help="build, merge, filter and summarise volume manifests")
    actions = manifest.add_subparsers(dest="manifest_command", metavar="ACTION", required=True)

    build = actions.add_parser("build", help="scan BIDS trees / NIfTI folders into a manifest (resumable)")
    build.add_argument("roots", nargs="+", metavar="ROOT", help="folders holding BIDS datasets and/or NIfTI files")
    build.add_argument("--out", required=True, help="output manifest (.parquet or .csv)")
    build.add_argument("--dataset", help="dataset name for every row (default: BIDS Name, else the root folder name)")
    build.add_argument("--datatypes", default="anat,dwi", help="BIDS datatype folders to include (default: anat,dwi)")
    build.add_argument("--body-part", default="", help="body part for rows whose sidecar does not name one (default: unknown)")
    build.add_argument("--workers", type=int, default=1, help="processes reading headers")
    build.add_argument("--relative-to", help="write paths relative to this root (read back with data_root=...)")
    build.add_argument("--overwrite", action="store_true", help="rebuild instead of updating an existing --out")
    build.set_defaults(func=_build)

    merge = actions.add_parser("merge", help="concatenate manifests (duplicates are kept and flagged by `prism qc`)")
    merge.add_argument("inputs", nargs="+", metavar="MANIFEST")
    merge.add_argument("--out", required=True)
    merge.set_defaults(func=_merge)

    select = actions.add_parser("filter", help="keep rows by dataset, sequence, body part and QC status")
    select.add_argument("input", metavar="MANIFEST")
    select.add_argument("--dataset", nargs="+", help="dataset names to keep")
    select.add_argument("--sequence", nargs="+", help="sequence types to keep (T1w ... other, or 'unknown')")
    select.add_argument("--body-part", nargs="+", help="body parts to keep")
    select.add_argument("--qc", nargs="+", help="QC statuses to keep: pass warn fail unchecked")
    select.add_argument("--out", required=True)
    select.set_defaults(func=_filter)

    summary = actions.add_parser("summary", help="print volumes per dataset x sequence and QC status")
    summary.add_argument("input", metavar="MANIFEST")
    summary.set_defaults(func=_summary)

    qc = subparsers.add_parser("qc", help="check every volume of a manifest; write qc_status/qc_reason and a report")
    qc.add_argument("manifest")
    qc.add_argument("--out", required=True, help="report folder (qc_report.csv, index.html, thumbnails/)")
    qc.add_argument("--manifest-out", help="where to write the manifest with QC columns (default: update MANIFEST in place)")
    qc.add_argument("--workers", type=int, default=1)
    qc.add_argument("--shard", default="0/1", help="i/n: check every n-th row starting at i (a SLURM array)")
    qc.add_argument("--sample", type=int, default=24, help="thumbnails of this many passing volumes (flagged ones always)")
    qc.add_argument("--data-root", help="root of the manifest's relative paths (default: its folder)")
    qc.set_defaults(func=_qc)

    pre = subparsers.add_parser("preprocess", help="reorient, resample, crop and normalise a manifest into a crop store")
    pre.add_argument("manifest")
    pre.add_argument("--out", required=True, help="store folder")
    pre.add_argument("--spacing", type=float, nargs=3, default=[1.0, 1.0, 1.0], metavar=("X", "Y", "Z"), help="target voxel size in mm")
    pre.add_argument("--dataset-spacing", nargs="+", default=[], metavar="NAME=X,Y,Z", help="per-dataset target spacing")
    pre.add_argument("--normalize", default="percentile", choices=["percentile", "zscore", "none"])
    pre.add_argument("--no-crop-foreground", action="store_true", help="keep the full field of view")
    pre.add_argument("--align-to-world", action="store_true", help="resample oblique scans onto world axes")
    pre.add_argument("--shard", default="0/1", help="i/n: this job's share of the sessions ($SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    pre.add_argument("--workers", type=int, default=1)
    pre.add_argument("--data-root", help="root of the manifest's relative paths (default: its folder)")
    pre.set_defaults(func=_preprocess)


def _logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _build(args: argparse.Namespace) -> int:
    from prism.data.scan import build_manifest

    _logging()
    manifest = build_manifest(
        args.roots, args.out, dataset=args.dataset, datatypes=tuple(d for d in args.datatypes.split(",") if d),
        body_part=args.body_part.lower(), workers=args.workers, overwrite=args.overwrite, relative_to=args.relative_to,
    )
    print(f"wrote {args.out}: {len(manifest)} volumes; skipped files listed in {args.out.rsplit('.', 1)[0]}.skipped.csv")
    print(summarize(manifest))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from prism.data.manifest import merge_manifests, read_manifest, stores_relative_paths, write_manifest

    _logging()
    merged = merge_manifests(read_manifest(path) for path in args.inputs)
    relative = all(stores_relative_paths(path) for path in args.inputs)
    write_manifest(merged, args.out, relative_to=os.path.dirname(os.path.abspath(args.out)) if relative else None)
    print(f"wrote {args.out}: {len(merged)} volumes from {len(args.inputs)} manifests")
    return 0


def _filter(args: argparse.Namespace) -> int:
    from prism.data.manifest import filter_manifest, read_manifest, stores_relative_paths, write_manifest

    _logging()
    frame = read_manifest(args.input)
    kept = filter_manifest(frame, datasets=args.dataset, sequences=args.sequence, body_parts=args.body_part, qc=args.qc)
    relative = stores_relative_paths(args.input)
    write_manifest(kept, args.out, relative_to=os.path.dirname(os.path.abspath(args.out)) if relative else None)
    print(f"wrote {args.out}: kept {len(kept)} of {len(frame)} volumes")
    return 0


def _summary(args: argparse.Namespace) -> int:
    from prism.data.manifest import read_manifest

    print(summarize(read_manifest(args.input)))
    return 0


def summarize(frame: pd.DataFrame) -> str:
    """Volumes per dataset x sequence, subjects per dataset, and QC status counts, as text."""
    if frame.empty:
        return "(empty manifest)"
    table = pd.crosstab(frame["dataset"], frame["sequence"].replace("", "unknown"))
    table["subjects"] = frame.groupby("dataset")["subject"].nunique()
    qc = frame["qc_status"].replace("", "unchecked").value_counts().to_dict()
    return f"{table.to_string()}\nQC: {qc}"


def _qc(args: argparse.Namespace) -> int:
    from prism.data.manifest import read_manifest, stores_relative_paths, write_manifest
    from prism.data.preprocess import parse_shard
    from prism.data.qc import run_qc

    _logging()
    shard = parse_shard(args.shard)
    frame = read_manifest(args.manifest, args.data_root)
    checked = run_qc(frame, args.out, workers=args.workers, shard=shard, sample_thumbnails=args.sample)
    if checked is None:
        print(f"checked shard {args.shard}; the report is written by the run that completes the last rows")
        return 0
    target = args.manifest_out or args.manifest
    relative_to = args.data_root or (os.path.dirname(os.path.abspath(target)) if stores_relative_paths(args.manifest) else None)
    write_manifest(checked, target, relative_to=relative_to)
    counts = checked["qc_status"].value_counts().to_dict()
    print(f"QC {counts}; report: {os.path.join(args.out, 'index.html')}; manifest with qc_status: {target}")
    return 0


def _preprocess(args: argparse.Namespace) -> int:
    from prism.data.manifest import read_manifest
    from prism.data.preprocess import PreprocessSettings, parse_shard, preprocess_manifest

    _logging()
    dataset_spacing = {}
    for item in args.dataset_spacing:
        name, _, values = item.partition("=")
        try:
            dataset_spacing[name] = tuple(float(v) for v in values.split(","))
        except ValueError:
            raise ValueError(f"--dataset-spacing {item!r} must look like NAME=1,1,1.5") from None
    settings = PreprocessSettings(
        spacing=tuple(args.spacing), dataset_spacing=dataset_spacing, crop_foreground=not args.no_crop_foreground,
        normalize=args.normalize, align_to_world=args.align_to_world,
    )
    summary = preprocess_manifest(read_manifest(args.manifest, args.data_root), args.out, settings, parse_shard(args.shard), args.workers)
    print(f"store {args.out}, shard {args.shard}: {summary}")
    for volume_id, reason in summary.failures[:20]:
        print(f"  failed: {volume_id}: {reason}")
    if len(summary.failures) > 20:
        print(f"  ... {len(summary.failures) - 20} more failures in {args.out}/index/")
    return 0
