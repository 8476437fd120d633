"""The pretrained part of a fine-tuning network: the ViT encoder and, optionally, its anatomy projection.

``feature_source`` picks what heads read:

* ``encoder``: the encoder's final patch tokens (width E). Everything the encoder saw,
  sequence included: the choice for sequence identification or TR/TE regression.
* ``anatomy``: the pretraining latent split's anatomy projection of those tokens (width A).
  Pretraining with the invariance objectives makes this part the same whatever the
  sequence, so a head trained on one sequence transfers to others (see
  ``shared/reference/findings.md``: frozen anatomy features are sequence-invariant).

A frozen backbone (``mode=linear_probe``) has no trainable parameters, stays in eval mode
and runs without autograd.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prism.models.vit3d import VisionTransformer3d

FEATURE_SOURCES = ("encoder", "anatomy")


class Backbone(nn.Module):
    """Encoder (+ anatomy projection) that turns volumes into tokens and pooled features.

    Args:
        encoder: the 3D ViT.
        anatomy: the anatomy projection ``Linear(E, A)`` of the latent split, needed for
            ``feature_source="anatomy"``.
        feature_source: ``encoder`` or ``anatomy`` (see the module docstring).
        frozen: freeze every parameter (linear probe).
    """

    def __init__(
        self,
        encoder: VisionTransformer3d,
        anatomy: nn.Linear | None = None,
        feature_source: str = "encoder",
        frozen: bool = False,
    ):
        super().__init__()
        if feature_source not in FEATURE_SOURCES:
            raise ValueError(f"feature_source={feature_source!r}; use one of {list(FEATURE_SOURCES)} (finetune.feature_source).")
        if feature_source == "anatomy" and anatomy is None:
            raise ValueError("feature_source=anatomy needs the anatomy projection of a pretraining checkpoint; none was given.")
        self.encoder = encoder
        self.anatomy = anatomy
        self.feature_source = feature_source
        self.frozen = frozen
        self.load_report: Any = None  # set by build_backbone: what was loaded from the checkpoint
        self.metadata: dict[str, Any] = {}  # the checkpoint's self-description (export JSON)
        if frozen:
            self.requires_grad_(False)

    @property
    def feature_dim(self) -> int:
        """Width F of ``tokens`` / ``pooled``."""
        return self.anatomy.out_features if self.feature_source == "anatomy" else self.encoder.embed_dim

    @property
    def embed_dim(self) -> int:
        """Width E of the encoder's (intermediate) tokens."""
        return self.encoder.embed_dim

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return self.encoder.patch_size

    @property
    def depth(self) -> int:
        return self.encoder.depth

    def train(self, mode: bool = True) -> "Backbone":
        """A frozen backbone stays in eval mode (no dropout / drop-path) whatever the caller asks."""
        return super().train(mode and not self.frozen)

    def forward(self, volumes: torch.Tensor, return_layers: Sequence[int] = ()) -> dict[str, Any]:
        """Encode volumes.

        Args:
            volumes: ``[N, 1, D, H, W]``, each size divisible by the patch size.
            return_layers: encoder block indices whose (normed) tokens are returned too.

        Returns:
            dict with ``tokens`` ``[N, L, F]``, ``pooled`` ``[N, F]`` (token mean),
            ``grid`` (token grid), ``intermediate`` (list of ``[N, L, E]``).
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            features = self.encoder.forward_features(volumes, return_layers=return_layers)
            tokens = features["patch"]
            if self.feature_source == "anatomy":
                tokens = self.anatomy(tokens)
        return {"tokens": tokens, "pooled": tokens.mean(dim=1), "grid": features["grid"], "intermediate": features["intermediate"]}

    def encode_views(
        self, image: torch.Tensor, view_present: torch.Tensor | None = None, return_layers: Sequence[int] = ()
    ) -> tuple[dict[str, Any], torch.Tensor]:
        """Encode the present views of a multi-sequence batch with the shared encoder.

        Args:
            image: ``[B, V, D, H, W]``.
            view_present: bool ``[B, V]`` (default: all present). Absent views are not encoded.

        Returns:
            ``(features, present)``: :meth:`forward` output over the ``P`` present views
            (row order = ``present.nonzero()``), and the bool ``[B, V]`` mask used.

        Raises:
            ValueError: a subject with no present view (named by its batch index).
        """
        if image.ndim != 5:
            raise ValueError(f"Expected image [B, V, D, H, W], got shape {tuple(image.shape)}.")
        b, v = image.shape[:2]
        present = torch.ones(b, v, dtype=torch.bool, device=image.device) if view_present is None else view_present.bool()
        empty = (~present.any(dim=1)).nonzero()[:, 0].tolist()
        if empty:
            raise ValueError(f"Subjects at batch index {empty} have no present sequence (view_present all False); drop them.")
        return self.forward(image[present].unsqueeze(1), return_layers), present
