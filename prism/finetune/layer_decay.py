"""Layer-wise learning-rate decay for fine-tuning a ViT (BEiT, MAE fine-tuning; timm ``param_groups_layer_decay``).

Layer ids: the stem (patch embedding, class token) is 0, block ``i`` is ``i + 1``, the rest
of the backbone (final norm, anatomy projection) shares the last block's id ``depth``, and
everything outside the backbone (heads, decoder) is ``depth + 1``. A parameter of layer ``l`` trains at ``lr * layer_decay ** (depth + 1 - l)``:
the head at the full rate, the early blocks at a small fraction of it. ``layer_decay=1``
is plain fine-tuning; a small value (e.g. 0.3) keeps the pretrained encoder close to where
it started, which is what preserves sequence invariance when fine-tuning on one sequence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

BLOCK_PATTERN = re.compile(r"(?:^|\.)encoder\.blocks\.(\d+)\.")
STEM_PATTERN = re.compile(r"(?:^|\.)encoder\.(patch_embed|cls_token|pos_embed)")
BACKBONE_PREFIX = "backbone."


def layer_id(name: str, depth: int) -> int:
    """Layer id of a parameter name (see the module docstring)."""
    block = BLOCK_PATTERN.search(name)
    if block:
        return int(block.group(1)) + 1
    if STEM_PATTERN.search(name):
        return 0
    if name.startswith(BACKBONE_PREFIX):
        return depth
    return depth + 1


def param_groups_layer_decay(
    named_params: Iterable[tuple[str, nn.Parameter]],
    depth: int,
    weight_decay: float,
    layer_decay: float,
    no_weight_decay: Iterable[str] = (),
) -> list[dict]:
    """Optimizer groups ``{params, weight_decay, lr_scale, layer}`` per (layer, decay) pair.

    Biases, norms, 1-D parameters and names in ``no_weight_decay`` get no weight decay;
    frozen parameters are left out. Multiply each group's ``lr_scale`` into its learning rate.

    Raises:
        ValueError: ``layer_decay`` outside (0, 1].
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay={layer_decay} must be in (0, 1] (module.layer_decay); 1 = no decay.")
    skip = set(no_weight_decay)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in named_params:
        if not param.requires_grad:
            continue
        decays = not (param.ndim <= 1 or name.endswith(".bias") or name in skip or name.split(".")[-1] in skip)
        layer = layer_id(name, depth)
        group = groups.setdefault((layer, decays), {
            "params": [], "weight_decay": weight_decay if decays else 0.0,
            "lr_scale": layer_decay ** (depth + 1 - layer), "layer": layer,
        })
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]
