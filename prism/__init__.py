"""prism: pretraining multi-sequence MRI foundation models."""

__version__ = "0.1.0"
