"""Fine-tuning core: export / load, heads, layer decay, training modes, metrics, bad checkpoints.

A tiny pretraining run (1 step, ViT depth 2, 32^3) made once per module gives a real checkpoint.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from prism.finetune.checkpoint import CheckpointError, export_encoder, load_backbone
from prism.finetune.finetune_module import FinetuneModule
from prism.finetune.heads import AttentionPooling, PredictionNetwork, drop_views
from prism.finetune.layer_decay import param_groups_layer_decay
from prism.finetune.metrics import TaskMetrics
from prism.finetune.networks import build_finetune_network, load_finetuned_network
from prism.finetune.segmentation_head import SegmentationNetwork
from prism.finetune.task_spec import TaskSpec

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
SEG = TaskSpec("tissue", "segmentation", 3, ["background", "a", "b"])
CLS = TaskSpec("kind", "classification", 3)
REG = TaskSpec("trte", "regression", 2, ["TR", "TE"], [1.0, 0.05], [0.5, 0.02])


def compose_cfg(overrides: list[str], output_dir: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir / "logs")
        del cfg["hydra"]
    return cfg


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory) -> Path:
    """A real (1-step) pretraining checkpoint with every objective: ViT depth 2, patch 8, 32^3, anatomy 48.

    Made once per test session and shared by the fine-tuning test modules (they import this fixture).
    """
    from prism.training.run import build, train

    out = tmp_path_factory.getbasetemp() / "finetune_pretrained"
    if (out / "checkpoints" / "last.ckpt").is_file():
        return out / "checkpoints" / "last.ckpt"
    cfg = compose_cfg(["+debug=fast_dev_run", "logger=csv", "trainer.fast_dev_run=false", "trainer.max_steps=1",
                       "+trainer.limit_val_batches=0", "callbacks.last_checkpoint.every_n_train_steps=1",
                       "callbacks.reconstruction_preview=null", "callbacks.best_checkpoint=null", "model.anatomy_dim=48"], out)
    train(cfg, *build(cfg))
    return out / "checkpoints" / "last.ckpt"


# ------------------------------------------------------------------------------------------ export / load
def test_export_then_load_gives_the_pretrained_encoder_outputs(pretrained, tmp_path):
    from prism.evaluation.cli import load_pretrain_network

    out = export_encoder(pretrained, tmp_path / "export")
    description = json.loads((out / "prism_encoder.json").read_text())
    assert description["encoder"]["depth"] == 2 and description["crop_size"] == [SIZE] * 3 and description["spacing_mm"] == 2.0
    assert description["orientation"] == "RAS" and description["normalization"]["clip_max"] == 1.5
    assert description["sequence_types"][0] == "T1w" and len(description["config_hash"]) == 16
    assert all(k.startswith(("encoder.", "anatomy.")) for k in load_file(out / "encoder.safetensors"))

    network, _ = load_pretrain_network(str(pretrained))
    volumes = torch.rand(2, 1, SIZE, SIZE, SIZE)
    with torch.no_grad():
        reference = network.eval().encode(volumes)
        for source in (pretrained, out):
            backbone = load_backbone(source, feature_source="anatomy").eval()
            assert torch.equal(backbone(volumes)["tokens"], reference["anatomy"])
            assert torch.equal(load_backbone(source).eval()(volumes)["tokens"], reference["patch"])
    report = load_backbone(pretrained).load_report
    assert len(report.loaded) > 0 and not report.missing and any(k.startswith("net.decoder.") for k in report.ignored)


def test_loading_into_another_input_size_recomputes_positions(pretrained):
    backbone = load_backbone(pretrained).eval()
    with torch.no_grad():
        features = backbone(torch.rand(1, 1, 48, 40, 24))
    assert features["grid"] == (6, 5, 3) and features["tokens"].shape == (1, 90, 192)
    assert torch.isfinite(features["tokens"]).all()
    table = backbone.encoder.pos_embed_for((6, 5, 3))
    assert table.shape == (90, 192) and not torch.equal(table[:5], backbone.encoder.pos_embed[:5])


def test_scratch_copies_the_architecture_with_random_weights(pretrained):
    pretrained_backbone = load_backbone(pretrained)
    scratch = load_backbone(pretrained, random_init=True)
    assert scratch.encoder.config() == pretrained_backbone.encoder.config()
    assert not torch.equal(scratch.encoder.blocks[0].attn.qkv.weight, pretrained_backbone.encoder.blocks[0].attn.qkv.weight)


def test_foreign_state_dict_prefixes_are_stripped_and_reported(pretrained, tmp_path):
    encoder = load_backbone(pretrained).encoder
    foreign = {f"module.encoder.{k}": v for k, v in encoder.state_dict().items()} | {"module.fc.weight": torch.zeros(2, 2)}
    torch.save(foreign, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="does not describe its architecture"):
        load_backbone(tmp_path / "foreign.pt")
    backbone = load_backbone(tmp_path / "foreign.pt", architecture=encoder.config())
    assert backbone.load_report.ignored == ["module.fc.weight"] and not backbone.load_report.missing
    assert torch.equal(backbone.encoder.blocks[1].mlp.fc2.weight, encoder.blocks[1].mlp.fc2.weight)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda sd: {k: v for k, v in sd.items() if not k.startswith("blocks.1.")}, "lacks encoder weights \\['blocks.1"),
        (lambda sd: sd | {"patch_embed.proj.weight": torch.zeros(192, 3 * 16 * 16)}, "another architecture.*patch_embed.proj.weight"),
        (lambda sd: {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 64)}, "no encoder weights"),
        (lambda sd: {"state_dict": sd, "hyper": functools.partial(print)}, "pickled objects other than tensors"),
        (lambda sd: sd | {"split.sequence_offset.weight": torch.zeros(8, 4)}, "pretrained with model.sequence_offset"),
    ],
    ids=["truncated", "other-architecture", "not-an-encoder", "pickled-code", "sequence-offset"],
)
def test_bad_checkpoints_are_named(pretrained, tmp_path, make, message):
    encoder = load_backbone(pretrained).encoder
    torch.save(make(encoder.state_dict()), tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=message):
        load_backbone(tmp_path / "bad.pt", architecture=encoder.config())


def test_anatomy_features_need_the_anatomy_projection(pretrained, tmp_path):
    encoder = load_backbone(pretrained).encoder
    torch.save(encoder.state_dict(), tmp_path / "encoder_only.pt")
    with pytest.raises(CheckpointError, match="no anatomy projection"):
        load_backbone(tmp_path / "encoder_only.pt", feature_source="anatomy", architecture=encoder.config())


def test_mode_without_checkpoint_is_explained():
    with pytest.raises(ValueError, match="mode=finetune needs a pretrained encoder.*finetune.checkpoint"):
        build_finetune_network(CLS, checkpoint=None, mode="finetune")
    with pytest.raises(ValueError, match="mode='probe'"):
        build_finetune_network(CLS, checkpoint=None, mode="probe")


# ------------------------------------------------------------------------------------------ heads
def small_backbone(feature_source="encoder"):
    return load_backbone(None, feature_source=feature_source, architecture={"preset": "tiny", "img_size": 16, "patch_size": 8, "depth": 2,
                                                                             "embed_dim": 48, "num_heads": 2}, anatomy_dim=24)


@pytest.mark.parametrize("task", [CLS, REG], ids=["classification", "regression"])
def test_prediction_head_shapes_gradients_and_missing_views(task):
    torch.manual_seed(0)
    network = PredictionNetwork(small_backbone("anatomy"), task, view_dropout=0.5)
    image = torch.rand(3, 2, 16, 16, 16)
    present = torch.tensor([[True, True], [True, False], [False, True]])
    outputs = network(image, present)
    assert outputs.shape == (3, task.num_outputs)
    outputs.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in network.parameters())
    network.eval()  # a subject with one present view = that view alone
    with torch.no_grad():
        assert torch.allclose(network(image, present)[1], network(image[1:2, :1])[0], atol=1e-5)
        assert torch.allclose(network(image, present)[2], network(image[2:3, 1:])[0], atol=1e-5)


def test_attention_pooling_ignores_absent_views_and_view_dropout_keeps_one():
    pool = AttentionPooling(8)
    views = torch.randn(2, 3, 8)
    present = torch.tensor([[True, False, True], [False, False, True]])
    weights = pool.weights(views, present)
    assert torch.allclose(weights.sum(1), torch.ones(2)) and (weights[~present] == 0).all()
    changed = views.clone()
    changed[~present] = 1e6  # whatever sits in an absent view does not matter
    assert torch.allclose(pool(views, present), pool(changed, present))
    dropped = drop_views(torch.ones(500, 4, dtype=torch.bool), 0.9, torch.Generator().manual_seed(0))
    assert dropped.any(1).all() and 0.1 < dropped.float().mean() < 0.4


def test_segmentation_head_shapes_gradients_and_sliding_windows():
    torch.manual_seed(0)
    network = SegmentationNetwork(small_backbone(), SEG, feature_size=8, roi_size=[16, 16, 16])
    logits = network(torch.rand(2, 2, 16, 16, 16), torch.tensor([[True, False], [True, True]]))
    assert logits.shape == (2, 3, 16, 16, 16)
    logits.square().mean().backward()
    assert all(p.grad is not None for p in network.parameters())
    network.eval()
    whole = network.predict_volume(torch.rand(1, 2, 20, 16, 13), torch.tensor([[True, False]]))  # not a multiple of the patch
    assert whole.shape == (1, 3, 20, 16, 13) and torch.isfinite(whole).all()
    with pytest.raises(ValueError, match="isotropic power-of-two patch"):
        SegmentationNetwork(load_backbone(None, architecture={"preset": "tiny", "img_size": 12, "patch_size": 6, "depth": 1,
                                                              "embed_dim": 48, "num_heads": 2}), SEG)


def test_segmentation_skip_source_final_tokens_reads_nothing_but_the_final_tokens(monkeypatch):
    torch.manual_seed(0)
    image, other_image = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    outputs = {}
    for source in ("encoder", "final_tokens"):
        network = SegmentationNetwork(small_backbone(), SEG, feature_size=8, skip_source=source).eval()
        fixed, present = network.backbone.encode_views(image, None, return_layers=sorted(set(network.skip_layers)))
        # the backbone now returns image's features whatever it is given: only the decoder's own inputs differ
        monkeypatch.setattr(network.backbone, "encode_views", lambda *args, **kwargs: (fixed, present))
        with torch.no_grad():
            outputs[source] = network(image), network(other_image)
        logits = network(image)
        logits.square().mean().backward()
        assert logits.shape == (1, 3, 16, 16, 16)
    assert not torch.allclose(*outputs["encoder"])  # UNETR's raw-input skip sees the image itself
    assert torch.allclose(*outputs["final_tokens"])
    with pytest.raises(ValueError, match="skip_source"):
        SegmentationNetwork(small_backbone(), SEG, skip_source="image")


def test_layer_decay_scales_the_encoder_and_leaves_the_head_at_full_rate():
    network = PredictionNetwork(small_backbone(), CLS)
    groups = param_groups_layer_decay(network.named_parameters(), depth=2, weight_decay=0.05, layer_decay=0.5)
    scale = {(g["layer"], g["weight_decay"] > 0): g["lr_scale"] for g in groups}
    assert scale[(0, True)] == 0.125 and scale[(1, True)] == 0.25 and scale[(2, True)] == 0.5 and scale[(3, True)] == 1.0
    names = {id(p): n for n, p in network.named_parameters()}
    head_group = next(g for g in groups if any(names[id(p)] == "head.2.weight" for p in g["params"]))
    assert head_group["lr_scale"] == 1.0
    norm_group = next(g for g in groups if any(names[id(p)] == "backbone.encoder.norm.weight" for p in g["params"]))
    assert norm_group["lr_scale"] == 0.5 and norm_group["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="layer_decay=0"):
        param_groups_layer_decay(network.named_parameters(), 2, 0.05, 0.0)


def test_segmentation_loss_comes_from_config(tmp_path):
    from hydra.utils import instantiate
    from monai.losses import DiceCELoss, DiceFocalLoss

    cfg = compose_cfg(["+experiment=finetune_seg", "module.segmentation_loss._target_=monai.losses.DiceFocalLoss",
                       "++module.segmentation_loss.include_background=false"], tmp_path)
    configured = instantiate(cfg.module.segmentation_loss)
    assert isinstance(configured, DiceFocalLoss) and not configured.dice.include_background
    logits = torch.randn(2, 3, 4, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4, 4))
    batch = {"labels": labels}
    default = FinetuneModule(torch.nn.Identity(), optimizer=torch.optim.AdamW, task=SEG)
    chosen = FinetuneModule(torch.nn.Identity(), optimizer=torch.optim.AdamW, task=SEG, segmentation_loss=configured)
    assert torch.allclose(default.loss(logits, batch), DiceCELoss(to_onehot_y=True, softmax=True)(logits, labels.unsqueeze(1)))
    assert torch.allclose(chosen.loss(logits, batch), configured(logits, labels.unsqueeze(1)))
    assert not torch.allclose(chosen.loss(logits, batch), default.loss(logits, batch))


# ------------------------------------------------------------------------------------------ training modes
class RandomTask(Dataset):
    """Learnable toy items: the class / targets / labels follow the image brightness."""

    def __init__(self, task: TaskSpec, n: int = 4, size: int = SIZE):
        self.task, self.n, self.size = task, n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(index)
        image = torch.rand(1, self.size, self.size, self.size, generator=g) * (1 + index % 3)
        item = {"image": image, "view_present": torch.ones(1, dtype=torch.bool), "sequence_id": torch.zeros(1, dtype=torch.int64),
                "acq_params": torch.zeros(1, 5), "acq_present": torch.zeros(1, 5, dtype=torch.bool), "subject_id": f"s{index}"}
        if self.task.kind == "segmentation":
            item["labels"] = (image[0] * 3).long().clamp(0, self.task.num_outputs - 1)
        elif self.task.kind == "classification":
            item["target"] = torch.tensor(index % self.task.num_outputs)
        else:
            item["target"] = torch.tensor([index / 4.0, -index / 4.0])
        return item


class RandomTaskDataModule(L.LightningDataModule):
    def __init__(self, task: TaskSpec, size: int):
        super().__init__()
        self.task, self.size, self.crop_size, self.spacing_mm = task, size, (size,) * 3, 2.0
        self.test_set_names = ["T1w", "T2w"]

    def train_dataloader(self):
        return DataLoader(RandomTask(self.task, 4, self.size), batch_size=2)

    def val_dataloader(self):
        return DataLoader(RandomTask(self.task, 2, self.size), batch_size=2)

    def test_dataloader(self):
        return [DataLoader(RandomTask(self.task, 2, self.size), batch_size=2), DataLoader(RandomTask(self.task, 3, self.size), batch_size=2)]


def fit_and_test(pretrained: Path, task: TaskSpec, mode: str, out: Path, steps: int = 2, test: bool = True):
    factory = functools.partial(build_finetune_network, checkpoint=str(pretrained), mode=mode, segmentation={"feature_size": 8})
    module = FinetuneModule(factory, optimizer=functools.partial(torch.optim.AdamW), lr=1e-2, output_dir=str(out))
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1)
    datamodule = RandomTaskDataModule(task, 16)  # a 32^3 encoder on 16^3 inputs (positions recomputed for the smaller grid)
    trainer.fit(module, datamodule=datamodule)
    if not test:
        return module, []
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    trainer.save_checkpoint(out / "finetuned.ckpt")
    return module, results


def test_linear_probe_leaves_the_encoder_unchanged_and_finetune_changes_it(pretrained, tmp_path):
    before = load_backbone(pretrained).encoder.state_dict()
    probe, _ = fit_and_test(pretrained, CLS, "linear_probe", tmp_path / "probe", test=False)
    assert all(torch.equal(v, before[k]) for k, v in probe.net.backbone.encoder.state_dict().items())
    assert not any(p.requires_grad for p in probe.net.backbone.parameters()) and not probe.net.backbone.training
    tuned, _ = fit_and_test(pretrained, CLS, "finetune", tmp_path / "tuned", test=False)
    changed = [k for k, v in tuned.net.backbone.encoder.state_dict().items() if not torch.equal(v, before[k])]
    assert "blocks.1.attn.qkv.weight" in changed


@pytest.mark.parametrize("task", [pytest.param(SEG, marks=pytest.mark.slow), REG], ids=["segmentation", "regression"])
def test_fit_then_test_writes_metrics_per_test_set(pretrained, tmp_path, task):
    module, results = fit_and_test(pretrained, task, "finetune", tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert sorted(metrics) == ["T1w", "T2w"]
    key = "dice" if task.kind == "segmentation" else "mae_TE"
    assert all(key in values for values in metrics.values())
    assert any(f"test/T2w/{key}" in r for r in results)
    assert (tmp_path / "metrics.csv").is_file()
    rebuilt = load_finetuned_network(tmp_path / "finetuned.ckpt")  # head included, from weights_only data
    batch = next(iter(RandomTaskDataModule(task, 16).test_dataloader()[0]))
    module.net.eval()
    with torch.no_grad():
        assert torch.allclose(rebuilt(batch["image"], batch["view_present"]), module.net(batch["image"], batch["view_present"]), atol=1e-5)


# ------------------------------------------------------------------------------------------ metrics
def test_metrics_on_known_answers():
    labels = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    labels[0, 2:6, 2:6, 2:6] = 1
    perfect = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).float()
    seg = TaskMetrics(SEG, spacing_mm=2.0)
    seg.update(perfect, labels)
    shifted = torch.roll(perfect, shifts=2, dims=2)
    seg.update(shifted, labels)
    result = seg.compute()
    assert result["dice_a"] == pytest.approx((1.0 + 0.5) / 2) and result["hd95_a"] == pytest.approx((0.0 + 4.0) / 2)
    cls = TaskMetrics(TaskSpec("b", "classification", 2))
    cls.update(torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0, 0, 1]))
    assert cls.compute() == {"accuracy": 1.0, "balanced_accuracy": 1.0, "auroc": 1.0}
    cls.reset()
    cls.update(torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 0, 0, 1]))
    assert cls.compute()["balanced_accuracy"] == pytest.approx(0.5) and cls.compute()["accuracy"] == pytest.approx(0.75)
    reg = TaskMetrics(REG)
    reg.update(torch.tensor([[0.0, 0.0], [2.0, 1.0]]), torch.tensor([[0.0, 1.0], [2.0, 1.0]]))
    result = reg.compute()
    assert result["mae_TR"] == 0.0 and result["mae_TE"] == pytest.approx(0.02 * 0.5) and result["r2_TR"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "data,spacing,mode",
    [
        ({"crop_size": [64] * 3, "spacing_mm": 2.0, "artefacts": {"normalise_percentile": 99.0}}, 2.0, "percentile"),
        ({"crop_size": [96] * 3, "preprocess": {"spacing": [1.0, 1.0, 1.0], "normalize": "zscore"}}, 1.0, "zscore"),
        ({"crop_size": [96] * 3, "sources": {"manifest": {"preprocess": {"spacing": [0.5, 0.5, 3.0]}}, "synth": {"spacing_mm": 1.0}}}, [0.5, 0.5, 3.0], "percentile"),
    ],
    ids=["synth", "manifest", "mixed"],
)
def test_exported_preprocessing_reads_every_data_layout(data, spacing, mode):
    from prism.finetune.checkpoint import preprocessing_from_config

    described = preprocessing_from_config({"data": data})
    assert described["spacing_mm"] == spacing
    assert described["normalization"]["mode"] == mode
    assert described["crop_size"] == data["crop_size"]
