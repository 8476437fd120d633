"""Segmentation on top of the ViT: a UNETR-style decoder and MONAI sliding-window inference.

UNETR (Hatamizadeh et al., 2022): token maps from evenly spaced encoder blocks are
upsampled by transposed convolutions to 1/2, 1/4, ... of the input resolution and fused,
coarse to fine, with the decoder path; a convolution of the raw input gives the
full-resolution skip. With a patch of ``2^k`` voxels the decoder has ``k`` upsampling
stages and reads ``k - 1`` intermediate blocks plus the final tokens (UNETR's 16^3 patches
and 12 blocks: blocks 3, 6, 9 and the last).

``skip_source="final_tokens"`` builds every skip from the final token map instead (no raw
image, no intermediate blocks). With ``feature_source: anatomy`` the decoder then sees only the
sequence-invariant anatomy part: the raw image and the early blocks carry the sequence, so a
decoder fed them on one sequence learns that sequence's intensities and fails on others.

Several sequences of a subject are encoded separately by the shared backbone and their
feature maps averaged over the present views at every level, so the decoder runs once and
a missing sequence is simply left out of the average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.inferers import sliding_window_inference
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from torch import nn

from prism.finetune.backbone import Backbone
from prism.finetune.task_spec import TaskSpec


def decoder_stages(patch_size: Sequence[int]) -> int:
    """Number of 2x upsampling stages from the token grid to voxels (``log2`` of the patch)."""
    sizes = set(patch_size)
    size = next(iter(sizes))
    if len(sizes) != 1 or size < 4 or size & (size - 1):
        raise ValueError(
            f"The segmentation decoder needs an isotropic power-of-two patch of at least 4 voxels, got {tuple(patch_size)}; "
            f"use an encoder with patch_size 8 or 16."
        )
    return int(math.log2(size))


def skip_layers(depth: int, stages: int) -> list[int]:
    """0-based encoder blocks feeding the ``stages - 1`` intermediate skips, evenly spaced (repeats in shallow encoders)."""
    return [max(0, depth * level // stages - 1) for level in range(1, stages)]


def masked_view_mean(maps: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Average ``[P, C, ...]`` maps of the present views into ``[B, C, ...]`` per subject."""
    b, v = present.shape
    full = maps.new_zeros(b, v, *maps.shape[1:])
    full[present] = maps
    weights = present.to(maps.dtype) / present.sum(dim=1, keepdim=True).to(maps.dtype)
    return torch.einsum("bv,bv...->b...", weights, full)


class SegmentationNetwork(nn.Module):
    """Backbone + UNETR decoder: ``[B, V, D, H, W]`` -> logits ``[B, num_classes, D, H, W]``.

    Args:
        backbone: the (pretrained) :class:`Backbone`.
        task: a ``segmentation`` :class:`TaskSpec` (``num_outputs`` classes, background included).
        feature_size: channels of the full-resolution stage (doubling per coarser stage, as UNETR).
        norm_name: MONAI norm of the decoder convolutions (``instance``, ``batch``, ``group``...).
        roi_size: window of sliding-window inference (the training crop); None = whole input at once.
        sw_batch_size, overlap: sliding-window settings (MONAI).
        skip_source: ``encoder`` (UNETR: raw-input convolution + intermediate blocks) or
            ``final_tokens`` (every skip upsampled from the final token map; see the module docstring).
    """

    SKIP_SOURCES = ("encoder", "final_tokens")

    def __init__(
        self,
        backbone: Backbone,
        task: TaskSpec,
        feature_size: int = 16,
        norm_name: str = "instance",
        roi_size: Sequence[int] | None = None,
        sw_batch_size: int = 2,
        overlap: float = 0.25,
        skip_source: str = "encoder",
    ):
        super().__init__()
        if task.kind != "segmentation":
            raise ValueError(f"Task {task.name!r} is a {task.kind} task; SegmentationNetwork is for segmentation.")
        if skip_source not in self.SKIP_SOURCES:
            raise ValueError(f"skip_source={skip_source!r} is not one of {self.SKIP_SOURCES} (model.segmentation.skip_source).")
        self.skip_source = skip_source
        self.backbone = backbone
        self.task = task
        self.stages = decoder_stages(backbone.patch_size)
        self.skip_layers = skip_layers(backbone.depth, self.stages)
        self.roi_size = list(roi_size) if roi_size is not None else None
        self.sw_batch_size, self.overlap = sw_batch_size, overlap
        width = lambda level: feature_size * 2 ** min(level, 3)  # noqa: E731 - channels at 1/2^level
        from_final = skip_source == "final_tokens"
        skip_dim = backbone.feature_dim if from_final else backbone.embed_dim
        if from_final:  # the full-resolution skip too is upsampled from the tokens (the name is UNETR's)
            self.input_skip = UnetrPrUpBlock(3, skip_dim, width(0), num_layer=self.stages - 1, kernel_size=3, stride=1,
                                             upsample_kernel_size=2, norm_name=norm_name, conv_block=True, res_block=True)
        else:
            self.input_skip = UnetrBasicBlock(3, 1, width(0), kernel_size=3, stride=1, norm_name=norm_name, res_block=True)
        self.token_skips = nn.ModuleList(
            UnetrPrUpBlock(3, skip_dim, width(level), num_layer=self.stages - level - 1, kernel_size=3, stride=1,
                           upsample_kernel_size=2, norm_name=norm_name, conv_block=True, res_block=True)
            for level in range(1, self.stages)
        )
        self.up = nn.ModuleList(
            UnetrUpBlock(3, backbone.feature_dim if level == self.stages - 1 else width(level + 1), width(level),
                         kernel_size=3, upsample_kernel_size=2, norm_name=norm_name, res_block=True)
            for level in range(self.stages)
        )
        self.out = UnetOutBlock(3, width(0), task.num_outputs)

    @staticmethod
    def token_map(tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """``[N, L, C]`` tokens -> ``[N, C, gd, gh, gw]`` feature map."""
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)

    def forward(self, image: torch.Tensor, view_present: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for a batch whose spatial size is divisible by the patch size."""
        from_final = self.skip_source == "final_tokens"
        requested = [] if from_final else sorted(set(self.skip_layers))
        features, present = self.backbone.encode_views(image, view_present, return_layers=requested)
        final = self.token_map(features["tokens"], features["grid"])
        if from_final:
            sources = [final] * self.stages
        else:
            blocks_out = [features["intermediate"][requested.index(layer)] for layer in self.skip_layers]
            sources = [image[present].unsqueeze(1), *(self.token_map(t, features["grid"]) for t in blocks_out)]
        blocks = [self.input_skip, *self.token_skips]
        skips = [masked_view_mean(block(source), present) for block, source in zip(blocks, sources)]
        x = masked_view_mean(final, present)
        for level in reversed(range(self.stages)):
            x = self.up[level](x, skips[level])
        return self.out(x)

    @torch.no_grad()
    def predict_volume(self, image: torch.Tensor, view_present: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for whole volumes of any size: MONAI sliding windows of ``roi_size`` (padded as needed).

        Args:
            image: ``[B, V, D, H, W]``; subjects are processed one at a time.
            view_present: bool ``[B, V]``.
        """
        if self.roi_size is None:
            return self.forward(image, view_present)
        present = torch.ones(image.shape[:2], dtype=torch.bool, device=image.device) if view_present is None else view_present.bool()
        outputs = []
        for subject in range(image.shape[0]):
            mask = present[subject : subject + 1]

            def predictor(windows: torch.Tensor) -> torch.Tensor:
                return self.forward(windows, mask.expand(windows.shape[0], -1))

            outputs.append(sliding_window_inference(image[subject : subject + 1], self.roi_size, self.sw_batch_size, predictor,
                                                    overlap=self.overlap, mode="gaussian"))
        return torch.cat(outputs)
