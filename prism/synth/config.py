"""Every random range of the synthesis engine, validated in one place.

``SynthConfig.from_dict`` reads the nested groups of ``conf/data/synth.yaml``
(``deformation``, ``lesions``, ``contrast``, ``artefacts``, ``resolution``). Each
``[min, max]`` pair is checked (min <= max), each probability is checked to lie in
``[0, 1]``, and an unknown key is an error naming the key, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from prism.synth.recipes import RECIPES, get_recipe

Range = tuple[float, float]


@dataclass
class DeformationConfig:
    """Spatial randomisation (SynthSeg-like defaults, slightly milder scaling)."""

    rotation_deg: Range = (-15.0, 15.0)
    scaling: Range = (0.85, 1.15)
    shear: Range = (-0.012, 0.012)
    translation_mm: Range = (-8.0, 8.0)
    svf_std_mm: Range = (0.0, 3.0)
    svf_control_points: int = 8
    svf_integration_size: int = 24
    svf_steps: int = 6
    flip_probability: float = 0.5


@dataclass
class LesionConfig:
    """Synthetic lesions drawn into the anatomy (labels 4-7)."""

    wmh_probability: float = 0.3
    wmh_threshold: Range = (1.6, 2.6)
    wmh_periventricular_weight: Range = (0.0, 2.0)
    tumour_probability: float = 0.15
    tumour_radius_mm: Range = (8.0, 22.0)
    necrosis_fraction: Range = (0.0, 0.6)
    edema_margin_mm: Range = (0.0, 12.0)


@dataclass
class ContrastConfig:
    """Tissue physics and the optional SynthSeg-style random-GMM contrast."""

    field_strengths: tuple[float, ...] = (1.5, 3.0)
    tissue_relative_std: float = 0.10
    tissue_independent_std: float = 0.04
    flair_null_jitter: Range = (0.96, 1.04)
    texture_std: Range = (0.0, 0.04)
    texture_control_points: int = 12
    gmm_probability: float = 0.0
    gmm_mean: Range = (0.0, 1.0)
    gmm_std: Range = (0.0, 0.08)
    recipe_overrides: dict[str, dict[str, Range]] = field(default_factory=dict)


@dataclass
class ArtefactConfig:
    """Scanner effects applied to every rendered view."""

    bias_probability: float = 0.9
    bias_std: Range = (0.0, 0.35)
    bias_control_points: int = 4
    snr: Range = (12.0, 80.0)
    rician_probability: float = 0.8
    gamma_log_std: float = 0.15
    normalise_percentile: float = 99.5
    clip_max: float = 1.5


@dataclass
class ResolutionConfig:
    """Resolution randomisation: thick slices along a random axis, or coarse isotropic voxels."""

    probability: float = 0.5
    isotropic_probability: float = 0.2
    isotropic_mm: Range = (1.0, 3.0)
    slice_mm: Range = (1.0, 6.0)
    thickness_ratio: Range = (0.5, 1.0)
    partial_volume_sigma_vox: Range = (0.0, 0.5)


@dataclass
class SynthConfig:
    """The whole engine configuration."""

    sequences: tuple[str, ...] = ("T1w_MPRAGE", "T1w_SE", "T1w_GRE", "T2w", "PDw", "FLAIR", "STIR", "T2starw")
    deformation: DeformationConfig = field(default_factory=DeformationConfig)
    lesions: LesionConfig = field(default_factory=LesionConfig)
    contrast: ContrastConfig = field(default_factory=ContrastConfig)
    artefacts: ArtefactConfig = field(default_factory=ArtefactConfig)
    resolution: ResolutionConfig = field(default_factory=ResolutionConfig)

    @classmethod
    def from_dict(cls, sequences: Any = None, **groups: Any) -> "SynthConfig":
        """Build and validate a config from plain (or OmegaConf) mappings.

        Raises:
            ValueError: naming an unknown group or key, a min > max range, a probability
                outside [0, 1] or an unknown sequence recipe.
        """
        kwargs: dict[str, Any] = {}
        if sequences is not None:
            kwargs["sequences"] = tuple(str(s) for s in sequences)
        group_types = {f.name: f.default_factory for f in fields(cls) if f.name != "sequences"}
        for name, values in groups.items():
            if name not in group_types:
                raise ValueError(f"Unknown synthesis config group {name!r}; known groups: {sorted(group_types)}.")
            kwargs[name] = _build_group(name, group_types[name](), values)  # type: ignore[misc]
        config = cls(**kwargs)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid value."""
        if not self.sequences:
            raise ValueError("synth 'sequences' is empty; list at least one of " f"{list(RECIPES)}.")
        for name in self.sequences:
            get_recipe(name)
        for group in (self.deformation, self.lesions, self.contrast, self.artefacts, self.resolution):
            group_name = _GROUP_NAMES[type(group)]
            for f in fields(group):
                value = getattr(group, f.name)
                key = f"{group_name}.{f.name}"
                if f.type == "Range" or f.type is Range:
                    _check_range(key, value)
                elif f.name.endswith("probability"):
                    if not 0.0 <= float(value) <= 1.0:
                        raise ValueError(f"{key} = {value} is not a probability; use a value in [0, 1].")
                elif f.name.endswith(("_std", "points", "size", "steps")) and float(value) < 0:
                    raise ValueError(f"{key} = {value} must be >= 0.")
        for recipe, overrides in self.contrast.recipe_overrides.items():
            get_recipe(recipe)
            for parameter, value in overrides.items():
                _check_range(f"contrast.recipe_overrides.{recipe}.{parameter}", value)
        if not self.contrast.field_strengths:
            raise ValueError("contrast.field_strengths is empty; use e.g. [1.5, 3.0].")
        if self.deformation.svf_control_points < 2 or self.deformation.svf_integration_size < 2:
            raise ValueError("deformation.svf_control_points and svf_integration_size must be >= 2.")
        if not 50.0 <= self.artefacts.normalise_percentile <= 100.0:
            raise ValueError(f"artefacts.normalise_percentile = {self.artefacts.normalise_percentile}; use 50-100.")


_GROUP_NAMES = {
    DeformationConfig: "deformation",
    LesionConfig: "lesions",
    ContrastConfig: "contrast",
    ArtefactConfig: "artefacts",
    ResolutionConfig: "resolution",
}


def _check_range(key: str, value: Any) -> None:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a [min, max] pair of numbers, got {value!r}.") from None
    if low > high:
        raise ValueError(f"{key} has min {low} > max {high}; swap them (a range is [min, max]).")


def _build_group(name: str, default: Any, values: Mapping[str, Any] | None) -> Any:
    if values is None:
        return default
    if not isinstance(values, Mapping):
        values = dict(values)
    known = {f.name: f for f in fields(default)}
    updates: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"Unknown synthesis config key {name}.{key}; known keys: {sorted(known)}.")
        if isinstance(value, Mapping):
            value = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in value.items()}
        elif isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
            value = tuple(float(v) for v in value)
        updates[key] = value
    return dataclasses.replace(default, **updates)
