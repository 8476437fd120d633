"""Fixed, finite sets of synthetic subjects for the built-in fine-tuning tasks.

Pretraining draws subjects without end; a downstream task needs the opposite: a small
labelled set that stays the same every epoch and in every run, a validation set and test
sets of new subjects. :func:`render_subject_set` draws ``num_subjects`` subjects, renders
each under the sequences it is asked for (all views of a subject share its anatomy,
physics and window), and keeps everything in memory.

Subject ``i`` of a split is a pure function of ``(subject_seed, split, i)`` through
``prism.data.stream.stream_seed`` with a salt naming the split. The salt makes the sets
disjoint from the pretraining stream (``stream_seed(seed, rank, k)``, no salt) and from the
held-out evaluation subjects (``prism.evaluation.held_out``) whatever the seeds; subject
``i`` is also the same subject whether the split holds 5 or 20 of them, so the few-label
sets are nested.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from prism.data.stream import stream_seed
from prism.synth.generator import SynthGenerator, device_generator

RecipeChooser = Callable[[int, torch.Generator], list[str]]
"""``(subject index, generator) -> recipe names`` to render that subject under."""


@dataclass
class SubjectSet:
    """N views of S subjects (V = 1 view per item), on the CPU.

    Attributes:
        image: float32 ``[N, 1, D, H, W]``.
        sequence_id: int64 ``[N, 1]``.
        acq_params: float32 ``[N, 1, P]``.
        acq_present: bool ``[N, 1, P]``.
        recipe: recipe name of each view (length N).
        subject_index: int64 ``[N]``: which subject each view shows.
        labels: uint8 ``[S, D, H, W]`` tissue labels (``prism.synth.tissues.TISSUE_LABELS``).
        maps: float16 ``[S, C, D, H, W]`` soft tissue maps (for re-rendering) or ``None``.
        tissue_ids: label of each channel of ``maps`` (per subject: lesions add channels).
        subject_ids: S names.
    """

    image: torch.Tensor
    sequence_id: torch.Tensor
    acq_params: torch.Tensor
    acq_present: torch.Tensor
    recipe: list[str]
    subject_index: torch.Tensor
    labels: torch.Tensor
    maps: list[torch.Tensor] | None
    tissue_ids: list[tuple[int, ...]]
    subject_ids: list[str]

    def __len__(self) -> int:
        return self.image.shape[0]

    @property
    def num_subjects(self) -> int:
        return self.labels.shape[0]

    def select(self, keep: torch.Tensor) -> "SubjectSet":
        """The views where bool ``keep [N]`` is True (subjects are kept whole)."""
        index = keep.nonzero()[:, 0]
        return SubjectSet(
            self.image[index], self.sequence_id[index], self.acq_params[index], self.acq_present[index],
            [self.recipe[int(i)] for i in index], self.subject_index[index], self.labels, self.maps,
            self.tissue_ids, self.subject_ids,
        )


def subject_generator_seed(subject_seed: int, split: str, index: int) -> int:
    """Seed of the generator that draws subject ``index`` of ``split``."""
    return stream_seed(subject_seed, 0, index, salt=f"finetune-task:{split}")


def render_subject_set(
    engine: SynthGenerator,
    num_subjects: int,
    choose_recipes: RecipeChooser,
    subject_seed: int,
    split: str,
    keep_maps: bool = False,
) -> SubjectSet:
    """Draw and render ``num_subjects`` subjects (one at a time, so subject ``i`` never depends on N).

    Args:
        engine: the synthesis engine (anatomy, lesions, physics, artefacts).
        num_subjects: S.
        choose_recipes: which recipes to render subject ``i`` under.
        subject_seed: base seed of the task's subjects.
        split: ``train`` / ``val`` / ``test`` (salted into every seed).
        keep_maps: keep the soft tissue maps (contrast augmentation re-renders them).
    """
    if num_subjects < 1:
        raise ValueError(f"The {split} split needs at least 1 subject, got {num_subjects}.")
    images, sequence_ids, params, present, recipes, owners = [], [], [], [], [], []
    labels, maps, tissue_ids, names = [], [], [], []
    for i in range(num_subjects):
        generator = torch.Generator().manual_seed(subject_generator_seed(subject_seed, split, i))
        subject = engine.sampler.sample(1, generator)
        chosen = list(choose_recipes(i, generator))
        rendered, image = engine.render_views(subject, [chosen], generator, device_generator(generator, "cpu"))
        images.append(image.float()[:, None])
        sequence_ids.append(rendered.sequence_id.long()[:, None])
        params.append(rendered.acq_params.float()[:, None])
        present.append(rendered.acq_present.bool()[:, None])
        recipes.extend(chosen)
        owners.extend([i] * len(chosen))
        labels.append(subject.labels[0].to(torch.uint8))
        if keep_maps:
            maps.append(subject.tissue_maps[0].half())
        tissue_ids.append(tuple(subject.tissue_ids))
        names.append(f"{split}-{subject_seed}-{i:03d}")
    return SubjectSet(
        torch.cat(images), torch.cat(sequence_ids), torch.cat(params), torch.cat(present), recipes,
        torch.tensor(owners, dtype=torch.long), torch.stack(labels), maps if keep_maps else None, tissue_ids, names,
    )


class SubjectSetCache:
    """Keeps the last few generated subject sets in memory: a benchmark re-uses one set across inits and seeds."""

    def __init__(self, capacity: int = 6):
        self.capacity = int(capacity)
        self._sets: OrderedDict[tuple, SubjectSet] = OrderedDict()

    def get(self, key: tuple, make: Callable[[], SubjectSet]) -> SubjectSet:
        if key in self._sets:
            self._sets.move_to_end(key)
            return self._sets[key]
        made = make()
        self._sets[key] = made
        while len(self._sets) > self.capacity:
            self._sets.popitem(last=False)
        return made

    def clear(self) -> None:
        self._sets.clear()


SUBJECT_SETS = SubjectSetCache()
"""Process-wide cache used by ``prism.finetune.tasks``."""


def distinct_recipes(names: Sequence[str], count: int) -> RecipeChooser:
    """A chooser drawing ``count`` distinct recipes of ``names`` per subject (all of them when count >= len)."""
    names = list(names)

    def choose(index: int, generator: torch.Generator) -> list[str]:
        order = torch.randperm(len(names), generator=generator)[: min(count, len(names))]
        return [names[int(j)] for j in order]

    return choose


def all_recipes(names: Sequence[str]) -> RecipeChooser:
    """A chooser rendering every subject under every recipe of ``names``, in that order."""
    names = list(names)
    return lambda index, generator: list(names)
