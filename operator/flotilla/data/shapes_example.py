"""The detection example's data: synthetic shapes with boxes, one CVAT export per site.

Each 64x64 image holds one to three filled shapes (square, circle, triangle) of random
size and colour on a noisy background; the rectangles are the shapes' extents. Sites get
different mixes of shapes (a seeded Dirichlet over classes), the usual non-IID setting,
and `test/` is kept apart for the aggregator. Generated offline: nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from flotilla.data.cvat_writer import Box, BoxSample, write_cvat_detection_export

SHAPES = ("square", "circle", "triangle")
SIZE = 64
PARAMETERS_FILE = "flotilla-example.json"


@dataclass(frozen=True)
class ShapesExample:
    sites: dict[str, int]  # images per site
    boxes: dict[str, list[int]]  # per site: boxes of each shape
    test: int


def draw_shapes_image(rng: np.random.Generator, *, weights: Sequence[float]) -> BoxSample:
    """One image and its boxes; ``weights`` is the chance of each shape."""
    background = rng.integers(0, 60, size=(SIZE, SIZE, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    boxes: list[Box] = []
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.choice(len(SHAPES), p=np.asarray(weights) / np.sum(weights)))
        side = int(rng.integers(12, 29))
        x0, y0 = (int(v) for v in rng.integers(0, SIZE - side, size=2))
        x1, y1 = x0 + side - 1, y0 + side - 1
        colour = tuple(int(c) for c in rng.integers(110, 256, size=3))
        if kind == 0:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=colour)
        boxes.append((SHAPES[kind], float(x0), float(y0), float(x1 + 1), float(y1 + 1)))
    return np.asarray(image), boxes, None


def write_shapes_example(
    out_dir: Path,
    *,
    sites: Sequence[str],
    images_per_site: int = 200,
    test_images: int = 200,
    alpha: float = 1.0,
    seed: int = 0,
) -> ShapesExample:
    if not sites or len(set(sites)) != len(sites):
        raise ValueError(f"site names must be given and unique, got {list(sites)}")
    if images_per_site < 1 or test_images < 1 or alpha <= 0:
        raise ValueError(
            f"need images_per_site >= 1, test_images >= 1 and alpha > 0, got "
            f"{images_per_site}, {test_images}, {alpha}"
        )
    parameters = {
        "sites": list(sites),
        "images": images_per_site,
        "test": test_images,
        "alpha": alpha,
        "seed": seed,
        "kind": "shapes",
    }
    marker = out_dir / PARAMETERS_FILE
    if marker.exists():
        stored = json.loads(marker.read_text())
        if stored.get("parameters") == parameters:
            return ShapesExample(**stored["example"])
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = [(site, images_per_site, list(rng.dirichlet([alpha] * len(SHAPES)))) for site in sites]
    plan.append(("test", test_images, [1.0] * len(SHAPES)))
    counts = {
        name: _write_site(out_dir / name, rng, count, weights) for name, count, weights in plan
    }
    example = ShapesExample(
        sites={s: images_per_site for s in sites},
        boxes=counts,
        test=test_images,
    )
    marker.write_text(json.dumps({"parameters": parameters, "example": asdict(example)}))
    return example


def _write_site(
    out_dir: Path, rng: np.random.Generator, count: int, weights: Sequence[float]
) -> list[int]:
    """Write one site's export; returns its number of boxes of each shape."""
    samples = [draw_shapes_image(rng, weights=weights) for _ in range(count)]
    write_cvat_detection_export(
        out_dir, labels=SHAPES, samples=samples, task_name=f"shapes-{out_dir.name}"
    )
    return [sum(box[0] == shape for _, boxes, _ in samples for box in boxes) for shape in SHAPES]
