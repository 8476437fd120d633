"""Built-in fine-tuning tasks: batch contract, fixed and disjoint subject sets, per-sequence test
sets, targets against the engine's ground truth, contrast augmentation, bad input."""

from __future__ import annotations

import pytest
import torch

from prism.data.batch import validate_batch
from prism.data.stream import stream_seed
from prism.evaluation.held_out import EVALUATION_SEQUENCES, HELD_OUT_SEED
from prism.finetune.contrast_augmentation import ContrastAugmentation
from prism.finetune.task_subjects import SUBJECT_SETS, subject_generator_seed
from prism.finetune.tasks import TASKS, SynthTaskDataModule
from prism.sequences import sequence_id
from prism.synth.recipes import get_recipe
from prism.synth.tissues import TISSUE_LABELS

CROP = (32, 32, 32)


def make(task: str, **kwargs) -> SynthTaskDataModule:
    defaults = dict(train_subjects=3, val_subjects=1, test_subjects=2, crop_size=CROP, batch_size=2)
    defaults.update(kwargs)
    data = SynthTaskDataModule(task, **defaults)
    data.setup("fit")
    return data


@pytest.fixture(autouse=True, scope="module")
def fresh_cache():
    SUBJECT_SETS.clear()
    yield
    SUBJECT_SETS.clear()


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_yields_the_batch_contract_and_its_target(task):
    data = make(task)
    spec = data.task
    assert spec.kind == TASKS[task].kind
    loaders = {"train": data.train_dataloader(), "val": data.val_dataloader()}
    loaders.update(zip(data.test_set_names, data.test_dataloader()))
    for name, loader in loaders.items():
        batch = next(iter(loader))
        validate_batch(batch)
        b = batch["image"].shape[0]
        assert batch["image"].shape == (b, 1, *CROP), name
        if spec.kind == "segmentation":
            assert batch["labels"].shape == (b, *CROP) and batch["labels"].dtype == torch.int64
            assert 0 <= int(batch["labels"].min()) and int(batch["labels"].max()) < spec.num_outputs
        elif spec.kind == "classification":
            assert batch["target"].shape == (b,) and batch["target"].dtype == torch.int64
        else:
            assert batch["target"].shape == (b, spec.num_outputs) and batch["target"].dtype == torch.float32
        if spec.kind != "segmentation":  # the answer is not handed over in the metadata
            assert (batch["sequence_id"] == -1).all() and not batch["acq_present"].any()


def test_subject_sets_are_fixed_nested_and_the_same_in_every_run():
    data = make("tissue_segmentation", train_subjects=3)
    first = sorted(s for batch in data.train_dataloader() for s in batch["subject_id"])
    second = sorted(s for batch in data.train_dataloader() for s in batch["subject_id"])
    assert first == second and len(set(first)) == 3  # every epoch: the same 3 subjects, each once
    SUBJECT_SETS.clear()
    again = make("tissue_segmentation", train_subjects=3, seed=7)  # another run seed: same subjects
    assert torch.equal(again.subject_set("train").image, data.subject_set("train").image)
    fewer = make("tissue_segmentation", train_subjects=2)
    assert torch.equal(fewer.subject_set("train").labels, data.subject_set("train").labels[:2])
    other = make("tissue_segmentation", train_subjects=3, subject_seed=5)
    assert not torch.equal(other.subject_set("train").labels, data.subject_set("train").labels)


@pytest.mark.parametrize("subject_seed", [20_261_122, 42, HELD_OUT_SEED])
def test_task_subjects_never_share_a_seed_with_pretraining_evaluation_or_each_other(subject_seed):
    streams = (42, 42 + 1_000_003, HELD_OUT_SEED)  # pretraining train / val stream, held-out evaluation
    reserved = {stream_seed(s, rank, k) for s in streams for rank in range(2) for k in range(500)}
    per_split = {split: {subject_generator_seed(subject_seed, split, i) for i in range(200)} for split in ("train", "val", "test")}
    assert all(len(seeds) == 200 for seeds in per_split.values())
    assert not per_split["train"] & per_split["val"] and not per_split["train"] & per_split["test"]
    assert not per_split["val"] & per_split["test"]
    assert not set().union(*per_split.values()) & reserved


def test_splits_hold_different_subjects():
    data = make("tissue_segmentation")
    labels = {split: data.subject_set(split).labels for split in ("train", "val", "test")}
    for a in labels["train"]:
        assert all(not torch.equal(a, b) for b in (*labels["val"], *labels["test"]))


def test_segmentation_has_one_test_set_per_sequence_with_the_same_subjects():
    data = make("tissue_segmentation", test_subjects=2)
    assert data.test_set_names == list(EVALUATION_SEQUENCES)
    batches = [next(iter(loader)) for loader in data.test_dataloader()]
    for name, batch in zip(data.test_set_names, batches):
        assert (batch["sequence_id"] == sequence_id(get_recipe(name).sequence_type)).all()
        assert batch["subject_id"] == batches[0]["subject_id"]
        assert torch.equal(batch["labels"], batches[0]["labels"])  # same anatomy ...
    assert not torch.allclose(batches[0]["image"], batches[1]["image"])  # ... other contrast
    train = next(iter(data.train_dataloader()))
    assert (train["sequence_id"] == sequence_id("T1w")).all()


def test_segmentation_targets_match_the_engine_ground_truth():
    tissue = make("tissue_segmentation", train_subjects=2)
    views = tissue.subject_set("train")
    regenerated = tissue.engine.sampler.sample(1, torch.Generator().manual_seed(subject_generator_seed(tissue.subject_seed, "train", 1)))
    assert torch.equal(regenerated.labels[0].to(torch.uint8), views.labels[1])
    item = tissue.build()["train"][int((views.subject_index == 1).nonzero()[0])]
    assert torch.equal(item["labels"], regenerated.labels[0])  # tissue labels 0-3 are the classes
    lesion = make("lesion_segmentation", train_subjects=2)
    truth = lesion.subject_set("train").labels.long()
    is_lesion = (truth >= TISSUE_LABELS["lesion_wmh"]) & (truth <= TISSUE_LABELS["edema"])
    targets = torch.stack([lesion.build()["train"][i]["labels"] for i in range(2)])
    assert torch.equal(targets, is_lesion.long()) and int(targets.sum()) > 0


def test_classification_targets_name_the_rendered_sequence():
    data = make("sequence_identification", test_subjects=2)
    views = data.subject_set("test")
    dataset = data.build()["test"][0]
    assert len(dataset) == 2 * len(EVALUATION_SEQUENCES)
    for i in range(len(dataset)):
        name = data.task.output_names[int(dataset[i]["target"])]
        assert name == views.recipe[i]
        assert sequence_id(get_recipe(name).sequence_type) == int(views.sequence_id[i, 0])  # the engine's own id


def test_regression_targets_are_standardised_log_tr_te_within_the_recipe_ranges():
    data = make("trte_regression", train_subjects=3)
    spec, train = data.task, data.build()["train"]
    targets = torch.stack([train[i]["target"] for i in range(len(train))])
    assert torch.allclose(targets.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(targets.std(0), torch.ones(2), atol=1e-4)
    real = spec.to_real_units(targets).exp()
    views = data.subject_set("train")
    for (tr, te), recipe, field in zip(real.tolist(), views.recipe, views.acq_params[:, 0, 4].tolist()):
        ranges = get_recipe(recipe).ranges[field]
        assert ranges["RepetitionTime"][0] * 0.999 <= tr <= ranges["RepetitionTime"][1] * 1.001
        assert ranges["EchoTime"][0] * 0.999 <= te <= ranges["EchoTime"][1] * 1.001
    assert len(set(views.recipe)) > 1


def mean_by_label(image: torch.Tensor, labels: torch.Tensor, tissue: str) -> float:
    return float(image[labels == TISSUE_LABELS[tissue]].mean())


@pytest.mark.parametrize("recipe,brighter,darker", [("T2w", "csf", "wm"), ("T1w_MPRAGE", "wm", "csf")])
def test_contrast_augmentation_renders_the_same_anatomy_with_the_new_sequence_physics(recipe, brighter, darker):
    data = make("tissue_segmentation", train_subjects=1)
    views = data.subject_set("train")
    labels = views.labels[0].long()
    soft = data.engine.sampler.sample(1, torch.Generator().manual_seed(3))
    augment = ContrastAugmentation(CROP, 2.0, [recipe], probability=1.0)
    for anatomy, ids, truth in ((labels, None, labels), (soft.tissue_maps[0], soft.tissue_ids, soft.labels[0])):
        view = augment(anatomy, ids, torch.Generator().manual_seed(0))
        assert view["image"].shape == (1, *CROP) and view["recipe"] == recipe
        assert int(view["sequence_id"]) == sequence_id(get_recipe(recipe).sequence_type)
        assert mean_by_label(view["image"][0], truth, brighter) > 1.3 * mean_by_label(view["image"][0], truth, darker)
    again = augment(labels, None, torch.Generator().manual_seed(0))
    assert torch.equal(again["image"], augment(labels, None, torch.Generator().manual_seed(0))["image"])
    assert ContrastAugmentation(CROP, 2.0, probability=0.0)(labels, None, torch.Generator()) is None


def test_training_with_contrast_augmentation_shows_many_sequences_with_unchanged_labels():
    torch.manual_seed(0)
    data = make("tissue_segmentation", train_subjects=1, contrast_augmentation=True, augmentation_probability=1.0)
    dataset = data.build()["train"]
    draws = [dataset[0] for _ in range(8)]
    assert len({int(d["sequence_id"]) for d in draws}) >= 3
    assert all(torch.equal(d["labels"], draws[0]["labels"]) for d in draws)
    assert data.build()["val"].augmentation is None and all(t.augmentation is None for t in data.build()["test"])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(task="tumour_grading"), "Unknown fine-tuning task 'tumour_grading'"),
        (dict(task="tissue_segmentation", train_sequences=["T3w"]), "Unknown synthetic sequence recipe 'T3w'"),
        (dict(task="sequence_identification", contrast_augmentation=True), "for segmentation tasks only"),
        (dict(task="sequence_identification", train_sequences=["T2w", "FLAIR"]), "missing from training"),
        (dict(task="tissue_segmentation", crop_size=[32, 32]), "crop_size must be 3 ints"),
        (dict(task="tissue_segmentation", train_subjects=0), "at least 1 subject"),
        (dict(task="tissue_segmentation", contrast_augmentation=True, augmentation_probability=2.0), "use a value in [0, 1]"),
    ],
)
def test_bad_input_names_the_problem(kwargs, message):
    with pytest.raises(ValueError) as error:
        data = SynthTaskDataModule(**{"crop_size": CROP, **kwargs})
        data.setup("fit")
    assert message in str(error.value)
