"""Shapes-world rendering speed: scenes, captions and hard negatives for N scenes, timed.

    python bench/render_speed.py [--scenes 50000] [--image-size 32] [--tiny]

Prints the seconds for the sampling + rasterisation + caption stages (the issue's goal: 50,000 scenes
in under 10 s on a 2-core machine) and the scenes/s rate. ``--tiny`` renders 500 scenes (unless
``--scenes`` is given): the test suite's check that the benchmark still runs.
"""

import argparse
import time

from harness.data.shapes import ShapesSpec, _captions, _sample_scenes, render


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=None, help="(default 50000; tiny 500)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--tiny", action="store_true", help="500 scenes: checks that the benchmark runs")
    a = p.parse_args(argv)
    if a.scenes is None:
        a.scenes = 500 if a.tiny else 50000
    spec = ShapesSpec(n_train=a.scenes, image_size=a.image_size)
    t0 = time.perf_counter()
    scenes, rng = _sample_scenes(spec, "train", a.scenes)
    t1 = time.perf_counter()
    images = render(scenes, spec.image_size)
    t2 = time.perf_counter()
    _captions(spec, "train", scenes, rng)
    t3 = time.perf_counter()
    total = t3 - t0
    print(
        f"{a.scenes} scenes at {a.image_size}px: sample {t1 - t0:.2f}s, render {t2 - t1:.2f}s, "
        f"captions+negatives {t3 - t2:.2f}s, total {total:.2f}s ({a.scenes / total:,.0f} scenes/s); "
        f"images {images.nbytes / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    main()
