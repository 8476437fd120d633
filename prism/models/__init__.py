"""Networks: the 3D ViT encoder, the masked-reconstruction decoder and the latent split."""

from prism.models.vit3d import VIT_PRESETS, VisionTransformer3d

__all__ = ["VIT_PRESETS", "VisionTransformer3d"]
