"""MixedDataModule (deterministic weighted mixture, exact resume) and the data configs under Hydra."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from test_data_fixtures import data_tree  # noqa: F401

from prism.data.batch import validate_batch
from prism.data.mixed import MixedDataModule
from prism.data.stream import BatchStream, StreamDataModule

CONF = str(Path(__file__).parents[1] / "conf")


class ConstantStream(BatchStream):
    def __init__(self, value: float, num_views: int, **kwargs):
        super().__init__(**kwargs)
        self.value, self.num_views = value, num_views

    def make_batch(self, index, generator):
        noise = torch.rand(1, generator=generator)
        return {"image": torch.full((1, self.num_views, 2, 2, 2), self.value) + noise, "index": index}


class ConstantSource(StreamDataModule):
    def __init__(self, value: float, num_views: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.value, self.num_views = value, num_views

    def build_stream(self, seed, rank, start, num_batches, split):
        return ConstantStream(self.value, self.num_views, seed=seed, rank=rank, start=start, num_batches=num_batches)


def _mixed(**kwargs) -> MixedDataModule:
    return MixedDataModule({"real": ConstantSource(100.0), "synth": ConstantSource(0.0)}, {"real": 1.0, "synth": 3.0}, seed=3, **kwargs)


def _take(loader, n):
    return [batch for _, batch in zip(range(n), loader)]


def test_sources_are_drawn_by_weight_and_batches_are_the_sources_own():
    batches = _take(_mixed().train_dataloader(), 400)
    real = [b for b in batches if b["source"] == "real"]
    assert 0.18 < len(real) / len(batches) < 0.32  # weight 1 of 4
    for k, batch in enumerate(batches):
        assert batch["index"] == k
        stream = ConstantSource(100.0 if batch["source"] == "real" else 0.0).build_stream(3, 0, 0, None, "train")
        assert torch.equal(batch["image"], stream.make_batch(k, stream.generator_for(k))["image"])


def test_mixture_is_deterministic_per_rank_and_resumes_exactly():
    reference = _take(_mixed().train_dataloader(), 12)
    again = _take(_mixed().train_dataloader(), 12)
    assert [b["source"] for b in reference] == [b["source"] for b in again]
    other_rank = _mixed().build_stream(3, 1, 0, None, "train")
    assert [other_rank.source_for(k) for k in range(12)] != [b["source"] for b in reference]
    resumed = _mixed()
    resumed.load_state_dict({"batches_consumed": 5})
    tail = _take(resumed.train_dataloader(), 7)
    for expected, got in zip(reference[5:], tail):
        assert expected["source"] == got["source"] and torch.equal(expected["image"], got["image"])
    assert _mixed().state_dict() == {"batches_consumed": 0}


def test_mixed_validation_and_errors():
    mixed = MixedDataModule({"a": ConstantSource(1.0), "b": ConstantSource(2.0)}, {"a": 1.0, "b": 0.0}, val_batches=3)
    assert {b["source"] for b in mixed.val_dataloader()} == {"a"}  # weight 0 disables a source
    with pytest.raises(ValueError, match="disagree on num_views"):
        MixedDataModule({"a": ConstantSource(1.0, num_views=2), "b": ConstantSource(2.0, num_views=3)})
    with pytest.raises(ValueError, match="not sources"):
        MixedDataModule({"a": ConstantSource(1.0)}, {"typo": 1.0})
    with pytest.raises(ValueError, match="at least one"):
        MixedDataModule({"a": ConstantSource(1.0)}, {"a": 0.0})


def test_manifest_config_composes_and_yields_batches(data_tree, tmp_path):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[
            "data=manifest", f"data.manifest={data_tree['manifest']}", f"paths.data_dir={tmp_path}", "paths.root_dir=.",
            "data.crop_size=[16,16,16]", "data.preprocess.spacing=[3.0,3.0,3.0]", "data.val_fraction=0.0",
        ])
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup()
    assert Path(dm.store.root) == tmp_path / "stores" / "manifest"
    batch = next(iter(dm.train_dataloader()))
    validate_batch(batch)
    assert batch["image"].shape == (2, 2, 16, 16, 16)


def test_mixed_config_composes_with_synth(data_tree, tmp_path):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[
            "data=mixed", f"data.sources.manifest.manifest={data_tree['manifest']}", f"paths.data_dir={tmp_path}",
            "paths.root_dir=.", "data.crop_size=[16,16,16]", "data.sources.manifest.preprocess.spacing=[3.0,3.0,3.0]",
            "data.sources.synth.spacing_mm=3.0",
        ])
    dm = instantiate(cfg.data)
    assert isinstance(dm, MixedDataModule) and set(dm.sources) == {"manifest", "synth"}
    dm.prepare_data()
    dm.setup()
    stream = dm.build_stream(0, 0, 0, None, "train")
    seen = set()
    for k in range(8):
        batch = stream.make_batch(k, stream.generator_for(k))
        validate_batch(batch)
        assert batch["image"].shape[1:] == (2, 16, 16, 16)
        seen.add(batch["source"])
        if len(seen) == 2:
            break
    assert seen == {"manifest", "synth"}


@pytest.mark.slow
def test_pretraining_runs_on_a_manifest_and_resumes(data_tree, tmp_path):
    """`python train.py +experiment=pretrain data=manifest data.manifest=...` in process, with a resume."""
    import torch
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from prism.training.run import build, train

    def config(*extra: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose("train", return_hydra_config=True, overrides=[
                "+experiment=pretrain", "+debug=fast_dev_run", "logger=csv", "trainer.fast_dev_run=false", "trainer.max_steps=2",
                "trainer.val_check_interval=2", "data=manifest", f"data.manifest={data_tree['manifest']}", f"paths.data_dir={tmp_path}",
                "data.crop_size=[16,16,16]", "data.preprocess.spacing=[3.0,3.0,3.0]", "data.val_batches=1", *extra,
            ])
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir, cfg.paths.log_dir = str(tmp_path / "run"), str(tmp_path / "logs")
            del cfg["hydra"]
        return cfg

    cfg = config()
    train(cfg, *build(cfg))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["ManifestDataModule"]["batches_consumed"] == 2
    resumed = config("trainer.max_steps=3", f"ckpt_path={last}")
    datamodule, module, trainer = build(resumed)
    train(resumed, datamodule, module, trainer)
    assert trainer.global_step == 3 and datamodule.batches_consumed == 3
