"""Build the fine-tuning network for a task from a checkpoint and a training mode.

``conf/model/finetune.yaml`` is a *partial* of :func:`build_finetune_network`: the task
(how many classes or targets) is only known once the datamodule exists, so
:class:`~prism.finetune.finetune_module.FinetuneModule` calls the partial with
``task=datamodule.task`` in ``setup``. In Python, call it directly::

    from prism.finetune.networks import build_finetune_network
    net = build_finetune_network(datamodule.task, checkpoint="export/", mode="linear_probe")

Modes:

* ``linear_probe``: pretrained encoder, frozen (eval mode, no gradients); only the head
  (or the segmentation decoder) trains.
* ``finetune``: pretrained encoder, trained with layer-wise learning-rate decay.
* ``scratch``: the same architecture (the checkpoint's, or ``encoder`` without one) at
  random initialisation, everything trained: the baseline pretraining must beat.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from prism.finetune.backbone import Backbone
from prism.finetune.checkpoint import load_backbone
from prism.finetune.heads import PredictionNetwork
from prism.finetune.segmentation_head import SegmentationNetwork
from prism.finetune.task_spec import TaskSpec

MODES = ("linear_probe", "finetune", "scratch")
NETWORK_OPTIONS = ("head", "segmentation")  # build options a fine-tuned checkpoint records to be rebuilt


def build_finetune_network(
    task: TaskSpec,
    checkpoint: str | None = None,
    mode: str = "finetune",
    feature_source: str = "encoder",
    encoder: Mapping[str, Any] | None = None,
    anatomy_dim: int | None = None,
    drop_path_rate: float = 0.0,
    head: Mapping[str, Any] | None = None,
    segmentation: Mapping[str, Any] | None = None,
    roi_size: Sequence[int] | None = None,
    backbone: Backbone | None = None,
) -> nn.Module:
    """A :class:`PredictionNetwork` or :class:`SegmentationNetwork` for ``task``.

    Args:
        task: what the datamodule asks for.
        checkpoint: pretraining ``.ckpt`` or ``prism export`` folder; None only for ``scratch``.
        mode: ``linear_probe`` | ``finetune`` | ``scratch``.
        feature_source: ``encoder`` or ``anatomy`` tokens (see :mod:`prism.finetune.backbone`).
        encoder: ``VisionTransformer3d`` arguments, used when the checkpoint does not
            describe itself or there is none; a prism checkpoint's own architecture wins
            (weights of another shape are an error naming the key).
        anatomy_dim: anatomy projection width for ``scratch`` without a checkpoint.
        drop_path_rate: stochastic depth of the encoder blocks while fine-tuning.
        head: :class:`PredictionNetwork` options (pooling, hidden_dim, dropout, view_dropout).
        segmentation: :class:`SegmentationNetwork` options (feature_size, norm_name, sw_batch_size, overlap).
        roi_size: sliding-window size for segmentation inference (the training crop).
        backbone: an already loaded :func:`backbone_for` result (FinetuneModule loads it at
            construction, so a bad checkpoint fails before any data is made); the six
            backbone arguments above are then not used.

    Raises:
        ValueError: unknown mode, or a mode that needs a checkpoint without one.
    """
    if backbone is None:
        backbone = backbone_for(checkpoint, mode, feature_source, encoder, anatomy_dim, drop_path_rate)
    if task.kind == "segmentation":
        network: nn.Module = SegmentationNetwork(backbone, task, roi_size=roi_size, **plain_options(segmentation))
    else:
        network = PredictionNetwork(backbone, task, **plain_options(head))
    network.mode = mode  # read by FinetuneModule (which layers train, layer decay or not)
    return network


BACKBONE_OPTIONS = ("checkpoint", "mode", "feature_source", "encoder", "anatomy_dim", "drop_path_rate")


def backbone_for(
    checkpoint: str | None = None,
    mode: str = "finetune",
    feature_source: str = "encoder",
    encoder: Mapping[str, Any] | None = None,
    anatomy_dim: int | None = None,
    drop_path_rate: float = 0.0,
) -> Backbone:
    """The backbone of :func:`build_finetune_network` (same arguments): loaded, frozen or random per ``mode``.

    Raises:
        ValueError: unknown mode, a mode that needs a checkpoint without one, a bad checkpoint.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; use one of {list(MODES)} (finetune.mode).")
    if checkpoint is None and mode != "scratch":
        raise ValueError(f"mode={mode} needs a pretrained encoder: set finetune.checkpoint=PATH (a .ckpt or a `prism export` folder), or use finetune.mode=scratch.")
    return load_backbone(
        checkpoint,
        feature_source=feature_source,
        frozen=mode == "linear_probe",
        random_init=mode == "scratch",
        architecture=plain_options(encoder),
        anatomy_dim=anatomy_dim,
        drop_path_rate=0.0 if mode == "linear_probe" else drop_path_rate,
    )


def load_finetuned_network(path: str | os.PathLike, device: str = "cpu") -> nn.Module:
    """Rebuild a fine-tuned network (head included) from a FinetuneModule checkpoint, in eval mode.

    The checkpoint's ``prism_finetune`` block records the task, the encoder architecture and the
    head options; weights are read with ``torch.load(weights_only=True)``.

    Raises:
        ValueError: not a fine-tuning checkpoint.
    """
    from prism.training.checkpoint_io import safe_torch_load

    checkpoint = safe_torch_load(path, map_location=device)
    description = checkpoint.get("prism_finetune")
    if not description:
        raise ValueError(f"{path} is not a fine-tuning checkpoint (no 'prism_finetune' block); for a pretraining checkpoint use load_backbone.")
    network = build_finetune_network(
        TaskSpec(**description["task"]), checkpoint=None, mode="scratch", feature_source=description["feature_source"],
        encoder=description["encoder"], anatomy_dim=description.get("anatomy_dim"), roi_size=description.get("roi_size"),
        **description.get("network_options", {}),
    )
    state = {k[len("net."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    network.load_state_dict(state)
    network.mode = description["mode"]
    return network.to(device).eval()


def plain_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Hydra DictConfig / dict / None -> a plain dict."""
    if options is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(options, DictConfig):
            return dict(OmegaConf.to_container(options, resolve=True))  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        pass
    return dict(options)
