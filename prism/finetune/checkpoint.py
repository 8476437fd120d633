"""Self-describing encoder checkpoints: ``prism export`` and loading for fine-tuning.

Three sources are accepted, none of which runs pickled code:

* a pretraining Lightning checkpoint (``.ckpt``, read with ``torch.load(weights_only=True)``;
  its ``prism`` block, written by ``PretrainModule.on_save_checkpoint``, describes it);
* a ``prism export`` folder: ``encoder.safetensors`` + ``prism_encoder.json`` (or the
  ``.safetensors`` file itself, with the JSON beside it);
* a foreign state dict (``.pt``/``.pth``/``.safetensors`` without the JSON), with the
  architecture given by the caller (``architecture=...``, ``model.encoder`` in the config).

Keys are adapted in one place (:func:`filter_encoder_state`, like timm's
``checkpoint_filter_fn``): known prefixes are stripped, the fixed sin-cos position table is
recomputed rather than loaded, and every key ends up in the :class:`LoadReport` as loaded,
missing or ignored. The encoder keeps its pretraining crop as the reference grid of its
position embedding and recomputes it for other input sizes at the same token pitch, centred on
that grid (``VisionTransformer3d.pos_embed_for``), so one export serves any crop size.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from prism.finetune.backbone import Backbone
from prism.models.vit3d import VisionTransformer3d
from prism.sequences import ACQUISITION_PARAMETERS, SEQUENCE_TYPES
from prism.training.checkpoint_io import safe_torch_load

log = logging.getLogger(__name__)

EXPORT_WEIGHTS = "encoder.safetensors"
EXPORT_METADATA = "prism_encoder.json"
FORMAT_VERSION = 1
ARCHITECTURE_KEYS = ("preset", "img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads")
# prefixes a foreign or wrapped checkpoint may put before the encoder's own names
ENCODER_PREFIXES = ("net.encoder.", "model.encoder.", "module.encoder.", "encoder.", "backbone.", "module.", "model.")
ANATOMY_PREFIXES = ("net.split.anatomy.", "split.anatomy.", "anatomy.")
# the latent split's sequence eraser (prism.models.sequence_eraser): folded into the anatomy projection
ERASER_BASIS_KEYS = ("net.split.eraser.basis", "split.eraser.basis")
ERASER_STATISTICS = ("class_means", "seen")  # its running statistics: not needed once folded
# anatomy = W x - U code (model.sequence_offset): depends on the sequence branch, which fine-tuning does not build
SEQUENCE_OFFSET_KEYS = ("net.split.sequence_offset.weight", "split.sequence_offset.weight")
RECOMPUTED_KEYS = ("pos_embed",)  # fixed sin-cos table: rebuilt for the grid, never loaded


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names the problem and the fix."""


@dataclass
class LoadReport:
    """What loading did with each key: printed in the log and kept on ``Backbone.load_report``."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    recomputed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded from {self.source}"]
        if self.missing:
            parts.append(f"missing (left at random init): {self.missing}")
        if self.ignored:
            shown = self.ignored[:8] + ([f"... {len(self.ignored) - 8} more"] if len(self.ignored) > 8 else [])
            parts.append(f"ignored (not part of the encoder): {shown}")
        if self.recomputed:
            parts.append(f"recomputed (fixed sin-cos): {self.recomputed}")
        return "; ".join(parts)


@dataclass
class EncoderCheckpoint:
    """Weights and self-description read from any accepted source."""

    encoder_state: dict[str, torch.Tensor]
    anatomy_state: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    report: LoadReport


# ----------------------------------------------------------------------------- reading
def read_checkpoint(source: str | os.PathLike, architecture: dict[str, Any] | None = None) -> EncoderCheckpoint:
    """Read encoder (+ anatomy projection) weights and metadata from a checkpoint or export.

    Args:
        source: ``.ckpt`` of a pretraining run, an export folder, or a state-dict file.
        architecture: encoder config (``VisionTransformer3d`` arguments) for sources that do
            not describe themselves (ignored for those that do: their weights define it).

    Raises:
        FileNotFoundError: no such file or folder.
        CheckpointError: not an encoder checkpoint, or no architecture for a foreign one.
    """
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint not found: {path}. Give a pretraining .ckpt or a `prism export` folder (finetune.checkpoint=...).")
    if path.is_dir():
        weights, meta_path = path / EXPORT_WEIGHTS, path / EXPORT_METADATA
        if not weights.is_file():
            raise CheckpointError(f"{path} is a folder without {EXPORT_WEIGHTS}; make one with `prism export CKPT {path}`.")
        state, metadata = load_file(weights), _read_json(meta_path)
    elif path.suffix == ".safetensors":
        state = load_file(path)
        meta_path = path.with_name(EXPORT_METADATA)
        metadata = _read_json(meta_path) if meta_path.is_file() else {}
    else:
        try:
            raw = safe_torch_load(path)
        except ValueError as err:  # unreadable or unsafe: safe_torch_load's message names the problem and the fix
            raise CheckpointError(str(err)) from err
        metadata = dict(raw.get("prism") or {}) if isinstance(raw, dict) else {}
        state = raw.get("state_dict", raw.get("model", raw)) if isinstance(raw, dict) else raw
        if metadata.get("config_json"):
            metadata.update(preprocessing_from_config(json.loads(metadata["config_json"])))
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors; give a pretraining .ckpt or a `prism export` folder.")
    metadata = _with_architecture(metadata, architecture, path)
    encoder_state, anatomy_state, report = filter_encoder_state(state, str(path))
    if not encoder_state:
        raise CheckpointError(
            f"{path} has no encoder weights (first keys: {list(state)[:5]}). It is not a prism encoder checkpoint; "
            f"expected keys like 'net.encoder.blocks.0.attn.qkv.weight' or 'blocks.0.attn.qkv.weight'."
        )
    return EncoderCheckpoint(encoder_state, anatomy_state, metadata, report)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: an export folder needs {EXPORT_WEIGHTS} and {EXPORT_METADATA} (re-run `prism export`).")
    return json.loads(path.read_text())


def _with_architecture(metadata: dict[str, Any], architecture: dict[str, Any] | None, path: Path) -> dict[str, Any]:
    """Use the checkpoint's own architecture; ``architecture`` only fills in for sources without one."""
    if metadata.get("encoder") is not None:
        return metadata
    given = {k: v for k, v in (architecture or {}).items() if k in ARCHITECTURE_KEYS and v is not None}
    if not given:
        raise CheckpointError(
            f"{path} does not describe its architecture (no prism metadata). Pass the encoder config "
            f"(architecture=... in Python, model.encoder.* in the config), or use a pretraining .ckpt / `prism export` folder."
        )
    return {**metadata, "encoder": given}


def filter_encoder_state(state: dict[str, torch.Tensor], source: str) -> tuple[dict, dict, LoadReport]:
    """Split a state dict into encoder and anatomy-projection weights; everything else is reported as ignored."""
    report = LoadReport(source=source)
    encoder_state: dict[str, torch.Tensor] = {}
    anatomy_state: dict[str, torch.Tensor] = {}
    eraser_basis = None
    for key, value in state.items():
        if key in SEQUENCE_OFFSET_KEYS:
            raise CheckpointError(
                f"{source} was pretrained with model.sequence_offset (anatomy tokens minus a map of the sequence code); "
                "fine-tuning builds the anatomy projection alone and would give other features. "
                "Fine-tune a checkpoint pretrained with model.sequence_offset=off."
            )
        if key in ERASER_BASIS_KEYS:
            eraser_basis = value
            continue
        if key.rsplit(".", 1)[-1] in ERASER_STATISTICS and ".eraser." in key:
            continue
        anatomy_key = _strip(key, ANATOMY_PREFIXES)
        if anatomy_key is not None and anatomy_key in ("weight", "bias"):
            anatomy_state[anatomy_key] = value
            continue
        name = _strip(key, ENCODER_PREFIXES)
        name = key if name is None else name
        if name.split(".")[0] in RECOMPUTED_KEYS:
            report.recomputed.append(key)
        elif name.split(".")[0] in ("patch_embed", "cls_token", "blocks", "norm"):
            encoder_state[name] = value
        else:
            report.ignored.append(key)
    if eraser_basis is not None and "weight" in anatomy_state:
        anatomy_state = fold_eraser(anatomy_state, eraser_basis)
        log.info("Folded the sequence eraser (%d directions) into the anatomy projection.", int((eraser_basis.norm(dim=1) > 0).sum()))
    return encoder_state, anatomy_state, report


def fold_eraser(anatomy_state: dict[str, torch.Tensor], basis: torch.Tensor) -> dict[str, torch.Tensor]:
    """Anatomy ``Linear`` weights with the eraser's projection ``P = I - B^T B`` applied after it, as one ``Linear``."""
    projection = torch.eye(basis.shape[1], dtype=torch.float64) - basis.double().T @ basis.double()
    folded = {"weight": (projection @ anatomy_state["weight"].double()).to(anatomy_state["weight"].dtype)}
    if "bias" in anatomy_state:
        folded["bias"] = (anatomy_state["bias"].double() @ projection).to(anatomy_state["bias"].dtype)
    return folded


def _strip(key: str, prefixes: tuple[str, ...]) -> str | None:
    for prefix in prefixes:
        if key.startswith(prefix):
            return key[len(prefix):]
    return None


def preprocessing_from_config(config: dict[str, Any]) -> dict[str, Any]:
    """The input conventions a pretraining run used (what a user must reproduce to feed the encoder).

    Reads the synthetic layout (``data.spacing_mm``, ``data.artefacts``), the manifest layout
    (``data.preprocess``) and the mixed layout (``data.sources.manifest.preprocess``; a real
    store defines the conventions there, the synthetic source is set to match it).
    """
    data = config.get("data") or {}
    sources = data.get("sources") or {}
    real = sources.get("manifest") or (data if "preprocess" in data else {})
    synth = sources.get("synth") or (data if "preprocess" not in data else {})
    preprocess = real.get("preprocess") or {}
    artefacts = synth.get("artefacts") or {}
    spacing = preprocess.get("spacing")
    if spacing is not None:
        spacing = [float(s) for s in spacing]
        spacing = spacing[0] if len(set(spacing)) == 1 else spacing
    else:
        spacing = synth.get("spacing_mm")
    return {
        "crop_size": data.get("crop_size"),
        "spacing_mm": spacing,
        "orientation": "RAS",
        "normalization": {
            "mode": preprocess.get("normalize", "percentile"),
            "percentile": preprocess.get("percentile", artefacts.get("normalise_percentile", 99.5)),
            "clip_max": preprocess.get("clip_max", artefacts.get("clip_max", 1.5)),
        },
    }


# ----------------------------------------------------------------------------- building
def encoder_from_metadata(metadata: dict[str, Any], drop_path_rate: float = 0.0) -> VisionTransformer3d:
    """A randomly initialised encoder of the architecture a checkpoint describes."""
    config = {k: v for k, v in metadata["encoder"].items() if k in ARCHITECTURE_KEYS}
    return VisionTransformer3d(**config, drop_path_rate=drop_path_rate)


def load_encoder_weights(module: nn.Module, state: dict[str, torch.Tensor], report: LoadReport, prefix: str = "") -> None:
    """Copy ``state`` into ``module``; shape mismatches are an error naming the key, missing keys go to the report."""
    own = module.state_dict()
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise CheckpointError(
            f"{report.source} is from another architecture: {mismatched[:4]}. Use a checkpoint of this encoder, "
            f"or let the checkpoint's own metadata define the architecture (no model.encoder override)."
        )
    report.ignored += [prefix + k for k in state if k not in own]
    report.missing += [prefix + k for k in own if k not in state]
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    report.loaded += [prefix + k for k in state if k in own]


def load_backbone(
    source: str | os.PathLike | None,
    feature_source: str = "encoder",
    frozen: bool = False,
    random_init: bool = False,
    architecture: dict[str, Any] | None = None,
    anatomy_dim: int | None = None,
    drop_path_rate: float = 0.0,
) -> Backbone:
    """A :class:`Backbone` from a checkpoint, an export, or nothing (random).

    Args:
        source: checkpoint / export path; None builds ``architecture`` at random.
        feature_source: ``encoder`` or ``anatomy`` (see :mod:`prism.finetune.backbone`).
        frozen: freeze the backbone (linear probe).
        random_init: same architecture as ``source`` but random weights (``mode=scratch``).
        architecture: encoder config for sources without metadata, or with ``source=None``.
        anatomy_dim: anatomy projection width when there is no checkpoint to read it from.
        drop_path_rate: stochastic depth during fine-tuning.

    Raises:
        CheckpointError: another architecture, missing weights that are needed, bad source.
    """
    if source is None:
        if not architecture:
            raise CheckpointError("No checkpoint and no architecture: set finetune.checkpoint=PATH, or model.encoder.* for mode=scratch.")
        checkpoint = EncoderCheckpoint({}, {}, {"encoder": dict(architecture), "anatomy_dim": anatomy_dim}, LoadReport("random init"))
    else:
        checkpoint = read_checkpoint(source, architecture)
    encoder = encoder_from_metadata(checkpoint.metadata, drop_path_rate)
    width = checkpoint.metadata.get("anatomy_dim") or anatomy_dim or (checkpoint.anatomy_state["weight"].shape[0] if checkpoint.anatomy_state else None)
    anatomy = nn.Linear(encoder.embed_dim, int(width)) if width else None
    report = checkpoint.report
    if source is not None and not random_init:
        load_encoder_weights(encoder, checkpoint.encoder_state, report)
        if anatomy is not None and checkpoint.anatomy_state:
            load_encoder_weights(anatomy, checkpoint.anatomy_state, report, prefix="anatomy.")
        elif feature_source == "anatomy":
            raise CheckpointError(f"{source} has no anatomy projection; use finetune.feature_source=encoder with it.")
        if report.missing:
            raise CheckpointError(f"{source} lacks encoder weights {report.missing[:6]}: it is from another architecture or truncated.")
        log.info("Backbone: %s", report.summary())
    elif random_init:
        report = LoadReport(source=f"random init (architecture of {source})")
    backbone = Backbone(encoder, anatomy if feature_source == "anatomy" else None, feature_source, frozen)
    backbone.load_report = report
    backbone.metadata = checkpoint.metadata
    return backbone


# ----------------------------------------------------------------------------- export
def export_encoder(source: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """``prism export``: write ``encoder.safetensors`` + ``prism_encoder.json`` into ``out_dir``.

    The JSON holds the architecture, the input conventions (crop, spacing, orientation,
    normalisation), the sequence vocabulary, the objectives and the training config hash.
    """
    checkpoint = read_checkpoint(source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"encoder.{k}": v.contiguous() for k, v in checkpoint.encoder_state.items()}
    tensors.update({f"anatomy.{k}": v.contiguous() for k, v in checkpoint.anatomy_state.items()})
    save_file(tensors, str(out / EXPORT_WEIGHTS))
    meta = checkpoint.metadata
    description = {
        "format": "prism-encoder",
        "format_version": FORMAT_VERSION,
        "encoder": meta["encoder"],
        "anatomy_dim": meta.get("anatomy_dim"),
        "sequence_dim": meta.get("sequence_dim"),
        "crop_size": meta.get("crop_size"),
        "spacing_mm": meta.get("spacing_mm"),
        "orientation": meta.get("orientation", "RAS"),
        "normalization": meta.get("normalization"),
        "sequence_types": meta.get("sequence_types", list(SEQUENCE_TYPES)),
        "acquisition_parameters": meta.get("acquisition_parameters", list(ACQUISITION_PARAMETERS)),
        "objectives": meta.get("objectives"),
        "config_hash": meta.get("config_hash"),
        "source": os.path.basename(str(source)),
    }
    (out / EXPORT_METADATA).write_text(json.dumps(description, indent=2))
    return out
