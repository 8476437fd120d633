"""Fine-tuning end to end: Hydra experiments on adapter fixture trees, `prism export`, `prism embed`."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from prism.cli import main as prism_cli
from test_finetune_adapters import brats_tree, csv_tree
from test_finetune_core import ROOT, compose_cfg, pretrained  # noqa: F401 - module fixture

FAST = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false", "data.crop_size=[16,16,16]", "callbacks.last_checkpoint=null",
        "callbacks.best_checkpoint=null", "callbacks.lr_monitor=null"]


def run_experiment(overrides: list[str], out: Path) -> dict:
    from prism.training.run import build, train

    cfg = compose_cfg(overrides + FAST, out)
    train(cfg, *build(cfg))
    return json.loads((out / "metrics.json").read_text())


def test_every_finetune_experiment_composes(tmp_path):
    for experiment in sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("finetune_*.yaml")):
        cfg = compose_cfg([f"+experiment={experiment}", "finetune.checkpoint=/some/ckpt"], tmp_path)
        assert cfg.test_after_fit and cfg.model.checkpoint == "/some/ckpt" and cfg.module._target_.endswith("FinetuneModule")
    invariant = compose_cfg(["+experiment=finetune_seg_invariant"], tmp_path)
    assert invariant.model.feature_source == "anatomy" and invariant.module.layer_decay == 0.3 and invariant.data.contrast_augmentation


def test_segmentation_experiment_on_brats_folders(pretrained, tmp_path):  # noqa: F811
    root = brats_tree(tmp_path / "brats")
    metrics = run_experiment(["+experiment=finetune_seg", "data=finetune_folder_brats", f"data.root={root}", "data.sequences=[FLAIR,T1w]",
                              "data.val_fraction=0.25", "data.test_fraction=0.25", f"finetune.checkpoint={pretrained}",
                              "model.segmentation.feature_size=8"], tmp_path / "run")
    assert set(metrics["test"]) >= {"dice", "hd95", "dice_enhancing"}


@pytest.mark.parametrize("kind,column,mode,metric", [("classification", "label", "linear_probe", "auroc"), ("regression", "age", "scratch", "r2_age")])
def test_classification_and_regression_experiments_on_a_csv(pretrained, tmp_path, kind, column, mode, metric):  # noqa: F811
    values = ["a", "b", "a", "b", "a", "b"] if kind == "classification" else [30, 40, 50, 60, 70, 80]
    rows = [f"subject,T1w,FLAIR,{column},split"] + [
        f"s{i},s{i}/t1.nii.gz,s{i}/flair.nii.gz,{values[i]},{'test' if i >= 4 else 'train'}" for i in range(6)
    ]
    csv = csv_tree(tmp_path / "cohort", rows)
    experiment = "finetune_cls" if kind == "classification" else "finetune_reg"
    metrics = run_experiment([f"+experiment={experiment}", "data=finetune_folder_csv", f"data.csv={csv}", f"data.kind={kind}",
                              "data.image_columns=[T1w,FLAIR]", f"data.target_columns=[{column}]", f"finetune.mode={mode}",
                              f"finetune.checkpoint={pretrained}"], tmp_path / "run")
    assert metric in metrics["test"]


def test_prism_export_cli(pretrained, tmp_path, capsys):  # noqa: F811
    assert prism_cli(["export", str(pretrained), str(tmp_path / "export")]) == 0
    assert "encoder.safetensors" in capsys.readouterr().out
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert prism_cli(["export", str(tmp_path / "notes.txt"), str(tmp_path / "x")]) == 2
    assert "cannot be read with torch.load(weights_only=True)" in capsys.readouterr().err
    assert prism_cli(["export", str(tmp_path / "missing.ckpt"), str(tmp_path / "x")]) == 2
    assert "Checkpoint not found" in capsys.readouterr().err


def test_prism_embed_writes_volume_and_subject_embeddings(pretrained, tmp_path, capsys):  # noqa: F811
    from prism.data.manifest import write_manifest

    rng = np.random.default_rng(0)
    rows = []
    for subject in ("01", "02"):
        for sequence in ("T1w", "FLAIR"):
            path = tmp_path / "data" / f"sub-{subject}_{sequence}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            data = np.zeros((40, 36, 30), np.float32)
            data[8:32, 6:30, 5:25] = rng.uniform(100, 200, (24, 24, 20))
            nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 1.5, 1.0])), str(path))
            rows.append({"dataset": "toy", "subject": subject, "sequence": sequence, "path": str(path),
                         "volume_id": f"toy/sub-{subject}_{sequence}"})
    broken = tmp_path / "data" / "sub-02_T2w.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.float32), np.eye(4)), str(broken))
    rows.append({"dataset": "toy", "subject": "02", "sequence": "T2w", "path": str(broken), "volume_id": "toy/sub-02_T2w"})
    manifest = write_manifest(pd.DataFrame(rows), tmp_path / "manifest.parquet")
    out = tmp_path / "embeddings.parquet"
    assert prism_cli(["embed", str(pretrained), "--manifest", str(manifest), "--out", str(out), "--features", "anatomy"]) == 0
    assert "4 volume and 2 subject embeddings; 1 volumes could not be embedded" in capsys.readouterr().out
    table = pd.read_parquet(out)
    volumes, subjects = table[table.level == "volume"], table[table.level == "subject"]
    assert len(volumes) == 5 and list(subjects.subject) == ["01", "02"] and list(subjects.num_volumes) == [2, 2]
    assert "empty volume" in volumes.set_index("volume_id").loc["toy/sub-02_T2w", "error"]
    first = np.stack(volumes[volumes.subject == "01"].embedding.tolist())
    assert first.shape == (2, 48) and np.allclose(subjects.iloc[0].embedding, first.mean(axis=0), atol=1e-6)
    assert prism_cli(["embed", str(pretrained), "--manifest", str(manifest), "--out", str(tmp_path / "e.csv")]) == 2


@pytest.mark.parametrize(
    "overrides,error,message",
    [
        (["+experiment=finetune_seg", "finetune.checkpoint=/no/such.ckpt"], FileNotFoundError, "Checkpoint not found: /no/such.ckpt"),
        (["+experiment=finetune_cls"], ValueError, "mode=finetune needs a pretrained encoder"),
        (["+experiment=finetune_seg", "data=finetune_folder_brats", "finetune.mode=scratch"], ValueError, "data.root is not set"),
    ],
    ids=["missing-checkpoint", "no-checkpoint", "no-folder"],
)
def test_bad_finetune_configs_fail_while_building(tmp_path, overrides, error, message):
    from hydra.errors import InstantiationException

    from prism.training.run import build

    with pytest.raises((error, InstantiationException), match=message):
        build(compose_cfg(overrides, tmp_path))
