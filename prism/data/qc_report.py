"""The QC report: ``qc_report.csv``, ``index.html`` and mid-slice PNG thumbnails."""

from __future__ import annotations

import html
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image

THUMBNAIL_HEIGHT = 128
REPORT_COLUMNS = ("volume_id", "dataset", "subject", "session", "sequence", "path", "qc_status", "qc_reason", "thumbnail")


def save_thumbnail(volume: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> None:
    """Save sagittal, coronal and axial mid-slices side by side as a grey PNG.

    Args:
        volume: 3D array ``[X, Y, Z]`` in the file's voxel order.
        affine: its voxel-to-world affine (used to show every volume in RAS+ orientation
            with superior / anterior up and true voxel proportions).
    """
    ornt = nib.orientations.io_orientation(affine)
    data = nib.orientations.apply_orientation(volume, ornt)
    zooms = np.empty(3)
    zooms[ornt[:, 0].astype(int)] = np.linalg.norm(affine[:3, :3], axis=0)
    flat = data.reshape(-1)
    low, high = np.percentile(flat[:: max(1, flat.size // 500_000)], [1.0, 99.0])
    scale = 255.0 / (high - low) if high > low else 0.0
    nx, ny, nz = data.shape
    slices = [
        (data[nx // 2, :, :], (zooms[1], zooms[2])),  # sagittal: anterior right, superior up
        (data[:, ny // 2, :], (zooms[0], zooms[2])),  # coronal: right to the right, superior up
        (data[:, :, nz // 2], (zooms[0], zooms[1])),  # axial: anterior up
    ]
    tiles = []
    for plane, (width_mm, height_mm) in slices:
        pixels = np.clip((np.rot90(plane) - low) * scale, 0, 255).astype(np.uint8)
        aspect = (plane.shape[0] * width_mm) / max(plane.shape[1] * height_mm, 1e-6)
        size = (max(1, int(round(THUMBNAIL_HEIGHT * aspect))), THUMBNAIL_HEIGHT)
        tiles.append(Image.fromarray(pixels).resize(size, Image.BILINEAR))
    canvas = Image.new("L", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), THUMBNAIL_HEIGHT))
    x = 0
    for tile in tiles:
        canvas.paste(tile, (x, 0))
        x += tile.width + 4
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def write_report(checked: pd.DataFrame, thumbnails: list[str], out_dir: str | os.PathLike) -> None:
    """Write ``qc_report.csv`` (every row) and ``index.html`` (flagged rows + sampled passes)."""
    out_dir = Path(out_dir)
    report = checked.assign(thumbnail=thumbnails)[list(REPORT_COLUMNS)]
    report.to_csv(out_dir / "qc_report.csv", index=False)
    counts = report["qc_status"].value_counts().to_dict()
    flagged = report[report["qc_status"] != "pass"].sort_values(["qc_status", "volume_id"])
    passed = report[(report["qc_status"] == "pass") & (report["thumbnail"] != "")]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>prism QC report</title>",
        "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px;vertical-align:top;font-size:13px}.fail{background:#fdd}.warn{background:#ffd}.pass{background:#dfd}"
        "img{image-rendering:pixelated}</style></head><body>",
        f"<h1>QC report: {len(report)} volumes</h1>",
        "<p>" + ", ".join(f"<b>{html.escape(str(k))}</b>: {v}" for k, v in sorted(counts.items())) + "</p>",
        "<p>Thumbnails: sagittal, coronal, axial mid-slices in RAS+ orientation. Rows marked 'fail' are excluded "
        "by <code>prism preprocess</code> and the samplers; full list in <code>qc_report.csv</code>.</p>",
        f"<h2>Flagged ({len(flagged)})</h2>",
        _table(flagged),
        f"<h2>Sample of passing volumes ({len(passed)})</h2>",
        _table(passed),
        "</body></html>",
    ]
    (out_dir / "index.html").write_text("\n".join(parts), encoding="utf-8")


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p>none</p>"
    rows = ["<table><tr><th>status</th><th>volume</th><th>sequence</th><th>findings</th><th>mid-slices</th></tr>"]
    for record in frame.to_dict("records"):
        image = f"<img src='{html.escape(record['thumbnail'])}' height='{THUMBNAIL_HEIGHT}'>" if record["thumbnail"] else ""
        findings = "<br>".join(html.escape(f) for f in record["qc_reason"].split("; ") if f)
        rows.append(
            f"<tr class='{record['qc_status']}'><td>{record['qc_status']}</td><td>{html.escape(record['volume_id'])}"
            f"<br><small>{html.escape(record['path'])}</small></td><td>{html.escape(record['sequence'] or '?')}</td>"
            f"<td>{findings}</td><td>{image}</td></tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)
