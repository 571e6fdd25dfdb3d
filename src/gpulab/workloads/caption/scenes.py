"""Generated "shapes" scenes with several differently worded reference captions each.

1-3 objects (circle, square, triangle; six colours; small or large) on a plain background of a
varied shade, placed so that spatial relations (left of, right of, above, below) hold. Every
caption names each object's colour and shape, so a model must see them to score.
"""

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (140, 60, 180),
    "orange": (240, 140, 30),
}
CAPTIONS_PER_IMAGE = 5


@dataclass
class Thing:
    shape: str
    colour: str
    large: bool
    x: float  # centre, fraction of the width
    y: float

    def phrase(self, with_size: bool) -> str:
        size = ("large " if self.large else "small ") if with_size else ""
        return f"{size}{self.colour} {self.shape}"


def _place(rng: np.random.Generator, count: int) -> list[tuple[float, float]]:
    """Centres far enough apart that shapes do not overlap."""
    while True:
        spots = rng.uniform(0.22, 0.78, size=(count, 2))
        if (
            count == 1
            or min(np.linalg.norm(a - b) for i, a in enumerate(spots) for b in spots[i + 1 :])
            > 0.34
        ):
            return [tuple(map(float, s)) for s in spots]


def random_scene(rng: np.random.Generator) -> list[Thing]:
    count = int(rng.integers(1, 4))
    kinds = set()
    things = []
    for x, y in _place(rng, count):
        while True:  # no two objects of the same colour and shape: captions stay unambiguous
            kind = (SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))])
            if kind not in kinds:
                kinds.add(kind)
                break
        things.append(Thing(kind[0], kind[1], bool(rng.random() < 0.5), x, y))
    return things


def draw_scene(things: list[Thing], size: int, rng: np.random.Generator) -> Image.Image:
    shade = int(rng.integers(150, 240))
    img = Image.new("RGB", (size, size), (shade, shade, shade - int(rng.integers(0, 30))))
    draw = ImageDraw.Draw(img)
    for t in things:
        r = size * (0.14 if t.large else 0.08)
        cx, cy = t.x * size, t.y * size
        box = (cx - r, cy - r, cx + r, cy + r)
        colour = COLOURS[t.colour]
        if t.shape == "circle":
            draw.ellipse(box, fill=colour)
        elif t.shape == "square":
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return img


def relation(a: Thing, b: Thing) -> str:
    """Where a lies relative to b, along the axis they differ most."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def captions(things: list[Thing], rng: np.random.Generator) -> list[str]:
    """CAPTIONS_PER_IMAGE differently worded descriptions, each naming every object."""
    p = [t.phrase(False) for t in things]
    ps = [t.phrase(True) for t in things]
    if len(things) == 1:
        options = [
            f"a {p[0]}",
            f"a {ps[0]}",
            f"there is a {p[0]}",
            f"a {ps[0]} on a plain background",
            f"one {p[0]} in the picture",
            f"a single {ps[0]}",
        ]
    elif len(things) == 2:
        a, b = things
        options = [
            f"a {p[0]} {relation(a, b)} a {p[1]}",
            f"a {p[1]} {relation(b, a)} a {p[0]}",
            f"a {p[0]} and a {p[1]}",
            f"a {ps[0]} {relation(a, b)} a {ps[1]}",
            f"two shapes a {p[0]} and a {p[1]}",
            f"there is a {p[1]} and a {p[0]}",
        ]
    else:
        options = [
            f"a {p[0]} a {p[1]} and a {p[2]}",
            f"three shapes a {p[0]} a {p[1]} and a {p[2]}",
            f"a {p[2]} a {p[0]} and a {p[1]}",
            f"a {p[0]} {relation(things[0], things[1])} a {p[1]} and a {p[2]}",
            f"a {ps[1]} a {ps[2]} and a {ps[0]}",
            f"there are a {p[1]} a {p[2]} and a {p[0]}",
        ]
    order = rng.permutation(len(options))[:CAPTIONS_PER_IMAGE]
    return [re.sub(r"\ba (?=[aeiou])", "an ", options[i]) for i in sorted(order)]


def names_every_object(caption: str, things: list[Thing]) -> bool:
    """Whether the caption says 'colour shape' for every object of the scene."""
    text = f" {caption.lower()} "
    return all(f" {t.colour} {t.shape} " in text for t in things)
