"""The pretraining network: 3D ViT encoder + latent split + sequence-conditioned MAE decoder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prism.models.latent_split import LatentSplit
from prism.models.mae_decoder import MAEDecoder3d
from prism.models.vit3d import VisionTransformer3d


class PretrainNetwork(nn.Module):
    """Everything with weights that pretraining needs; objective heads live with their losses.

    Args:
        encoder: the 3D ViT to pretrain (the part that is exported for fine-tuning).
        anatomy_dim, sequence_dim: widths of the two latent parts.
        decoder_dim, decoder_depth, decoder_heads: MAE decoder size.
        sequence_pool: where the sequence code is read from (see :class:`LatentSplit`).
        sequence_conditioning: how the decoder reads the code (see :class:`MAEDecoder3d`).
        standardise_pooled: running per-channel standardisation before the sequence projection (see :class:`LatentSplit`).
        erase_sequence: linear erasure of the sequence from anatomy tokens (see :class:`LatentSplit`).
        sequence_offset: anatomy tokens minus a linear map of the sequence code (see :class:`LatentSplit`).
    """

    def __init__(
        self,
        encoder: VisionTransformer3d,
        anatomy_dim: int = 192,
        sequence_dim: int = 64,
        decoder_dim: int = 256,
        decoder_depth: int = 4,
        decoder_heads: int = 8,
        sequence_pool: str = "cls_and_patches",
        sequence_conditioning: str = "token",
        standardise_pooled: bool = False,
        erase_sequence: bool = False,
        sequence_offset: str = "off",
    ):
        super().__init__()
        self.encoder = encoder
        self.split = LatentSplit(encoder.embed_dim, anatomy_dim, sequence_dim, sequence_pool, standardise_pooled, erase_sequence,
                                 sequence_offset)
        patch_voxels = int(torch.tensor(encoder.patch_size).prod()) * encoder.in_chans
        self.decoder = MAEDecoder3d(
            anatomy_dim, sequence_dim, encoder.grid, patch_voxels, decoder_dim, decoder_depth, decoder_heads,
            sequence_conditioning=sequence_conditioning,
        )

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return self.encoder.patch_size

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | {
            f"decoder.{n}" for n in self.decoder.no_weight_decay()
        }

    def encode(self, volumes: torch.Tensor, ids_keep: torch.Tensor | None = None, return_layers: Sequence[int] = ()) -> dict[str, Any]:
        """Encoder pass plus latent split: adds ``anatomy`` ``[N, K, A]`` and ``sequence_code`` ``[N, S]``."""
        features = self.encoder.forward_features(volumes, ids_keep=ids_keep, return_layers=return_layers)
        features["anatomy"], features["sequence_code"] = self.split(features["patch"], features["cls"])
        return features

    def decode(self, anatomy: torch.Tensor, sequence_code: torch.Tensor, ids_restore: torch.Tensor | None, grid) -> torch.Tensor:
        """Patch predictions ``[N, L, P]`` from anatomy tokens and a (possibly foreign) sequence code."""
        return self.decoder(anatomy, sequence_code, ids_restore, grid)
