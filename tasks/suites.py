"""Task suites: names that stand for several tasks."""

from .base import Suite


class ShapesSuite(Suite):
    """Every shapes-world task: retrieval, zero-shot, linear probe, STS, compositionality,
    image-to-image and text-to-text retrieval, and geometry diagnostics."""

    dataset = "shapes-world"
    members = (
        "shapes-retrieval",
        "shapes-zeroshot",
        "shapes-linear",
        "shapes-sts",
        "shapes-compositionality",
        "shapes-i2i",
        "shapes-t2t",
        "shapes-geometry",
    )
