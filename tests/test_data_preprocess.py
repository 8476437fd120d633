"""Preprocessing: geometry against nibabel, one grid per session, idempotence, crash and kill recovery, shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nibabel.processing import resample_from_to
from test_data_fixtures import by_id, data_tree, write_image  # noqa: F401

from prism.data import store as store_module
from prism.data.manifest import read_manifest, validate_manifest
from prism.data.preprocess import PreprocessSettings, parse_shard, preprocess_manifest
from prism.data.resample import canonical_grid, resample
from prism.data.store import VolumeStore, open_array

RAW = dict(normalize="none", crop_foreground=False)


def _stored(store_root: Path, volume_id: str) -> tuple[np.ndarray, np.ndarray, dict]:
    store = VolumeStore(store_root)
    meta = json.loads(store.metadata_path(volume_id).read_text())
    return np.asarray(open_array(store.root / meta["file"]), dtype=np.float32), np.array(meta["affine"]), meta


@pytest.mark.parametrize("align_to_world", [False, True])
def test_oblique_lps_volume_matches_nibabel_at_the_same_world_positions(tmp_path, align_to_world):
    source = write_image(tmp_path / "sub-01_T1w.nii.gz", (40, 36, 30), (1.2, 1.5, 2.0), "T1w", codes="LPS", rotation_deg=20.0, dtype=np.float32)
    assert nib.aff2axcodes(nib.load(source).affine) == ("L", "P", "S")
    manifest = validate_manifest(pd.DataFrame([{"dataset": "d", "subject": "01", "path": str(source), "sequence": "T1w"}]))
    preprocess_manifest(manifest, tmp_path / "store", PreprocessSettings(spacing=(1.7, 1.7, 1.7), align_to_world=align_to_world, **RAW))
    stored, affine, meta = _stored(tmp_path / "store", manifest["volume_id"][0])
    assert nib.aff2axcodes(affine) == ("R", "A", "S")  # canonical axes
    assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), 1.7) and meta["spacing"] == pytest.approx([1.7] * 3)
    if align_to_world:
        assert np.allclose(affine[:3, :3], np.diag([1.7] * 3))
    expected = resample_from_to(nib.load(source), (stored.shape, affine), order=1, cval=0.0).get_fdata()
    # compare where the source coordinate is strictly inside the source grid (scipy returns cval on its very edge)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in stored.shape], indexing="ij"), -1).reshape(-1, 3)
    source_ijk = nib.affines.apply_affine(np.linalg.inv(nib.load(source).affine) @ affine, ijk)
    inside = np.all((source_ijk > 0.01) & (source_ijk < np.array(nib.load(source).shape) - 1.01), axis=1).reshape(stored.shape)
    assert inside.sum() > 0.5 * stored.size
    error = np.abs(stored - expected)[inside]
    assert error.max() <= 1e-3 * np.abs(expected).max() + 0.5  # float16 storage of values up to ~1000


def test_separable_path_equals_general_resampling():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(20, 24, 18)).astype(np.float32)
    affine = np.diag([-1.3, 0.9, 2.1, 1.0])
    grid = canonical_grid(affine, data.shape, (1.0, 1.1, 0.8))
    fast = resample(data, affine, grid)
    perturbed = affine.copy()
    perturbed[0, 1] = 1e-5  # defeats the axis-aligned check: scipy path
    slow = resample(data, perturbed, grid)
    interior = (slice(2, -2),) * 3
    assert np.allclose(fast[interior], slow[interior], atol=1e-3)


def test_session_sequences_share_one_grid_and_stay_aligned(data_tree, tmp_path):
    manifest = read_manifest(data_tree["manifest"])
    preprocess_manifest(manifest, tmp_path / "store", PreprocessSettings(spacing=(2.0, 2.0, 2.0), normalize="none"))
    t1, t1_affine, t1_meta = _stored(tmp_path / "store", by_id(manifest, "sub-01_ses-1_T1w")["volume_id"])
    flair, flair_affine, flair_meta = _stored(tmp_path / "store", by_id(manifest, "sub-01_ses-1_FLAIR")["volume_id"])
    assert t1.shape == flair.shape and np.allclose(t1_affine, flair_affine)  # 4 mm FLAIR slices put on the T1 grid
    assert t1_meta["grid_id"] == flair_meta["grid_id"] and flair_meta["reference_volume_id"].endswith("_T1w")
    assert t1.shape[0] < 50 and t1.shape[2] < 44  # foreground crop
    head_t1, head_flair = t1 > 0.5 * t1.max() * 0.1, flair > 0.5 * flair.max() * 0.1
    assert (head_t1 & head_flair).sum() / (head_t1 | head_flair).sum() > 0.9  # same anatomy in the same voxels
    s2, s2_affine, _ = _stored(tmp_path / "store", by_id(manifest, "sub-02_T1w")["volume_id"])
    assert nib.aff2axcodes(s2_affine) == ("R", "A", "S")  # LPS input reoriented


def test_rerun_is_a_no_op_and_failures_are_recorded(data_tree, tmp_path):
    manifest = read_manifest(data_tree["manifest"])
    settings = PreprocessSettings(spacing=(2.0, 2.0, 2.0))
    first = preprocess_manifest(manifest, tmp_path / "store", settings)
    assert (first.processed, first.failed) == (9, 2)
    reasons = dict(first.failures)
    assert "4D image" in reasons[by_id(manifest, "sub-03_T1w")["volume_id"]]
    assert "corrupt or truncated" in reasons[by_id(manifest, "sub-03_T2w")["volume_id"]]
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "store" / "volumes").rglob("*") if p.is_file()}
    second = preprocess_manifest(manifest, tmp_path / "store", settings)
    assert (second.processed, second.skipped, second.failed) == (0, 9, 2)
    assert files == {p: p.stat().st_mtime_ns for p in (tmp_path / "store" / "volumes").rglob("*") if p.is_file()}
    index = VolumeStore(tmp_path / "store").read_index()
    assert index["status"].value_counts().to_dict() == {"done": 9, "failed": 2}
    with pytest.raises(ValueError, match="other preprocessing settings"):
        preprocess_manifest(manifest, tmp_path / "store", PreprocessSettings(spacing=(3.0, 3.0, 3.0)))


def test_crash_mid_write_leaves_no_valid_half_volume_and_resumes(data_tree, tmp_path, monkeypatch):
    manifest = read_manifest(data_tree["manifest"])
    settings = PreprocessSettings(spacing=(2.0, 2.0, 2.0))
    saved = []
    real_save = np.save

    def dying_save(path, array):
        saved.append(path)
        if len(saved) == 4:
            Path(path).write_bytes(b"\x93NUMPY half")  # the process dies while writing
            raise KeyboardInterrupt
        real_save(path, array)

    monkeypatch.setattr(store_module.np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        preprocess_manifest(manifest, tmp_path / "store", settings)
    store = VolumeStore(tmp_path / "store")
    assert len(list((tmp_path / "store" / "volumes").rglob(".*.tmp-*"))) == 1
    assert len(list((tmp_path / "store" / "volumes").rglob("*.json"))) == 3  # only finished volumes
    monkeypatch.setattr(store_module.np, "save", real_save)
    summary = preprocess_manifest(manifest, tmp_path / "store", settings)
    assert summary.processed + summary.skipped == 9
    assert not list((tmp_path / "store" / "volumes").rglob(".*.tmp-*"))
    for record in store.read_index().query("status == 'done'").itertuples():
        assert np.isfinite(np.asarray(open_array(store.root / record.file))).all()


def test_killed_process_resumes(data_tree, tmp_path):
    """SIGKILL a real preprocessing process between writing an array and its JSON, then resume."""
    manifest = read_manifest(data_tree["manifest"])
    script = f"""
import time
from prism.data import store
from prism.data.manifest import read_manifest
from prism.data.preprocess import PreprocessSettings, preprocess_manifest
real = store._atomic_write_text
def slow(path, text):
    if path.name.endswith('.json') and 'volumes' in str(path):
        time.sleep(30)  # killed here: the array is on disk, its completion marker is not
    real(path, text)
store._atomic_write_text = slow
preprocess_manifest(read_manifest({str(data_tree['manifest'])!r}), {str(tmp_path / 'store')!r}, PreprocessSettings(spacing=(2.0, 2.0, 2.0)))
"""
    process = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    deadline = time.time() + 60
    while not list((tmp_path / "store").rglob("*.npy")) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert list((tmp_path / "store").rglob("*.npy")) and not list((tmp_path / "store" / "volumes").rglob("*.json"))
    summary = preprocess_manifest(manifest, tmp_path / "store", PreprocessSettings(spacing=(2.0, 2.0, 2.0)))
    assert (summary.processed, summary.failed) == (9, 2)
    assert len(VolumeStore(tmp_path / "store").read_index().query("status == 'done'")) == 9


def test_shards_split_sessions_without_overlap(data_tree, tmp_path):
    manifest = read_manifest(data_tree["manifest"])
    settings = PreprocessSettings(spacing=(3.0, 3.0, 3.0), dataset_spacing={"plain": (4.0, 4.0, 4.0)})
    parts = [preprocess_manifest(manifest, tmp_path / "store", settings, shard=(i, 3)) for i in range(3)]
    assert sum(p.sessions for p in parts) == 5 and sum(p.processed for p in parts) == 9
    index = VolumeStore(tmp_path / "store").read_index()
    assert len(index) == 11 and len(list((tmp_path / "store" / "index").glob("shard-*-of-00003.parquet"))) == 3
    spacing = dict(zip(index["volume_id"], index["spacing"]))
    assert spacing[by_id(manifest, "patient_B/FLAIR")["volume_id"]] == "4x4x4"
    assert spacing[by_id(manifest, "sub-02_T1w")["volume_id"]] == "3x3x3"
    assert parse_shard("2/5") == (2, 5)
    with pytest.raises(ValueError, match="i/n"):
        parse_shard("5")
    with pytest.raises(ValueError, match="0 <= i < n"):
        parse_shard("5/5")


@pytest.mark.parametrize(
    "diagonal, shift, shape",
    [
        ((-1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (20, 24, 18)),  # flip only: pure slicing
        ((2.0, 1.0, -2.0), (1.0, -3.0, 0.0), (12, 30, 10)),  # integer strides and shifts, partly outside
        ((2.0, 0.7, 1.0), (0.5, 2.25, -4.0), (11, 40, 26)),  # slicing on some axes, interpolation on others
    ],
)
@pytest.mark.parametrize("order", ["C", "F"])  # F: how nibabel decodes NIfTI (resampled through the transposed view)
def test_separable_resampling_matches_trilinear_reference(diagonal, shift, shape, order):
    from scipy import ndimage

    from prism.data.resample import Grid

    rng = np.random.default_rng(1)
    data = rng.normal(size=(20, 24, 18)).astype(np.float32)
    affine = np.eye(4)
    mapping = np.eye(4)  # output voxel -> source voxel
    mapping[:3, :3] = np.diag(diagonal)
    mapping[:3, 3] = [s if d > 0 else n - 1 + s for d, s, n in zip(diagonal, shift, data.shape)]
    fast = resample(np.asarray(data, order=order), affine, Grid(mapping, shape))
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), 0).reshape(3, -1)
    coords = mapping[:3, :3] @ ijk + mapping[:3, 3:]
    inside = np.all((coords >= -1e-4) & (coords <= np.array(data.shape)[:, None] - 1 + 1e-4), axis=0)
    reference = np.where(inside, ndimage.map_coordinates(data, coords, order=1, mode="nearest"), 0.0).reshape(shape)
    assert fast.dtype == np.float32 and fast.shape == shape
    assert np.allclose(fast, reference, atol=1e-5)


def test_foreground_box_is_the_same_in_either_memory_order():
    from prism.data.resample import foreground_box

    data = np.random.default_rng(2).normal(0.0, 0.01, (40, 36, 30)).astype(np.float32)
    data[10:25, 5:20, 12:28] += 1.0
    box = foreground_box(data, margin_voxels=0)
    assert box == foreground_box(np.asfortranarray(data), margin_voxels=0)
    assert [(s.start, s.stop) for s in box] == [(10, 26), (4, 20), (12, 28)]  # block means: even-aligned edges
