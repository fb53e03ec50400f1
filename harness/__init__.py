"""A benchmark harness for contrastive learning objectives."""

__version__ = "0.1.0"
