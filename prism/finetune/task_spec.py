"""What a fine-tuning task predicts: the contract between datamodules, networks and metrics.

Every fine-tuning datamodule exposes ``task: TaskSpec``; the network builds its head from it
(``num_outputs``), the module picks its loss and metrics from ``kind``, and regression metrics
are reported in real units through ``target_mean`` / ``target_std`` (the datamodule yields
standardised targets).
"""

from __future__ import annotations

from dataclasses import dataclass, field

TASK_KINDS = ("segmentation", "classification", "regression")


@dataclass(frozen=True)
class TaskSpec:
    """A fine-tuning task.

    Args:
        name: short name (``tissue_segmentation``, ``sequence_identification``...).
        kind: ``segmentation`` | ``classification`` | ``regression``.
        num_outputs: classes (background included) for segmentation and classification,
            targets K for regression.
        output_names: one name per output (class names or regression targets).
        target_mean: regression only: per-target mean used to standardise the targets.
        target_std: regression only: per-target standard deviation used likewise.
    """

    name: str
    kind: str
    num_outputs: int
    output_names: list[str] = field(default_factory=list)
    target_mean: list[float] | None = None
    target_std: list[float] | None = None

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"TaskSpec {self.name!r}: kind={self.kind!r}; use one of {list(TASK_KINDS)}.")
        minimum = 1 if self.kind == "regression" else 2
        if self.num_outputs < minimum:
            raise ValueError(
                f"TaskSpec {self.name!r}: num_outputs={self.num_outputs}; a {self.kind} task needs at least {minimum}"
                + (" (background counts as a class)." if self.kind == "segmentation" else ".")
            )
        if self.output_names and len(self.output_names) != self.num_outputs:
            raise ValueError(
                f"TaskSpec {self.name!r}: {len(self.output_names)} output_names for num_outputs={self.num_outputs}; give one name per output."
            )
        if not self.output_names:
            object.__setattr__(self, "output_names", [f"{'target' if self.kind == 'regression' else 'class'}_{i}" for i in range(self.num_outputs)])
        for key in ("target_mean", "target_std"):
            value = getattr(self, key)
            if value is None:
                continue
            if self.kind != "regression":
                raise ValueError(f"TaskSpec {self.name!r}: {key} is for regression tasks only (kind={self.kind!r}).")
            if len(value) != self.num_outputs:
                raise ValueError(f"TaskSpec {self.name!r}: {key} has {len(value)} values for {self.num_outputs} targets.")
            object.__setattr__(self, key, [float(v) for v in value])
        if self.target_std is not None and any(s <= 0 for s in self.target_std):
            raise ValueError(f"TaskSpec {self.name!r}: target_std={self.target_std} must be positive.")

    def to_real_units(self, standardised):
        """Map standardised regression values ``[..., K]`` (tensor or array) back to real units."""
        if self.kind != "regression" or self.target_mean is None or self.target_std is None:
            return standardised
        import torch

        mean = torch.as_tensor(self.target_mean, dtype=standardised.dtype, device=standardised.device)
        std = torch.as_tensor(self.target_std, dtype=standardised.dtype, device=standardised.device)
        return standardised * std + mean
