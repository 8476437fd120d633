"""FSDP wrapping policy: shard (and optionally checkpoint) at transformer-block granularity."""

from __future__ import annotations

from timm.models.vision_transformer import Block


def block_wrap_policy() -> set[type]:
    """The module classes FSDP wraps as units: timm transformer blocks (encoder and decoder)."""
    return {Block}
