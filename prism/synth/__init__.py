"""Synthesis engine: domain-randomised multi-sequence MRI from real anatomy, batched on any device.

Public API:

* :class:`prism.synth.subjects.SubjectSampler`: deformed subjects (+ lesions) from an anatomy.
* :func:`prism.synth.render.render`: re-render subjects / label maps under a sequence recipe.
* :class:`prism.synth.generator.SynthGenerator`: seed -> finished prism batch.
* :class:`prism.synth.datamodule.SynthDataModule`: the Lightning datamodule (``data=synth``).
* ``prism.synth.tissues.TISSUE_LABELS``: the label table of ``batch["labels"]``.
* ``prism.synth.recipes.RECIPES``: the sequence recipes.

Submodules are imported lazily by their users; importing this package is cheap.
"""
