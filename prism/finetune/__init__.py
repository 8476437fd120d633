"""Fine-tuning: load a pretrained encoder, train heads on it, benchmark it, embed cohorts.

Public API (submodules are imported by their users; importing this package is cheap):

* :func:`prism.finetune.checkpoint.load_backbone`: encoder (+ anatomy projection) from a
  pretraining ``.ckpt``, a ``prism export`` folder or a foreign state dict, with a report of
  loaded / missing / ignored keys; random with the same architecture for ``mode=scratch``.
* :func:`prism.finetune.checkpoint.export_encoder`: ``prism export`` (safetensors + JSON).
* :class:`prism.finetune.task_spec.TaskSpec`: what a task predicts (every datamodule has one).
* :func:`prism.finetune.networks.build_finetune_network`: the network for a task and a mode
  (``linear_probe`` | ``finetune`` | ``scratch``):
  :class:`prism.finetune.heads.PredictionNetwork` (classification / regression, attention
  pooling over a subject's sequences) or
  :class:`prism.finetune.segmentation_head.SegmentationNetwork` (UNETR-style decoder,
  MONAI sliding-window inference).
* :class:`prism.finetune.finetune_module.FinetuneModule`: the LightningModule (layer-wise lr
  decay from :mod:`prism.finetune.layer_decay`, metrics from :mod:`prism.finetune.metrics`,
  ``metrics.json`` per test set).
* :mod:`prism.finetune.adapters`: Decathlon, BraTS-style and CSV datasets as datamodules
  (shared body in :mod:`prism.finetune.volume_dataset`); :mod:`prism.finetune.tasks`:
  built-in synthetic tasks; :mod:`prism.finetune.benchmark`: ``prism benchmark``.
* :func:`prism.finetune.embed.embed_manifest`: ``prism embed`` (per volume and per subject).
"""
