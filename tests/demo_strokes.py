"""Pen strokes for the "Draw a digit" page's browser tests (tests/test_demo.py).

A stroke is a list of (x, y) points in canvas pixels (the pad is 280 x 280): the test
presses the mouse at the first point, moves through the others and releases.

- :data:`HAND_MADE`: a few digits drawn the way a person might, from lines and arcs;
- :func:`traced`: a real MNIST digit traced row by row: every horizontal run of ink
  above 0.5, scaled 10x, is drawn with the page's round 20 px brush (10 px rows, so
  neighbouring rows overlap and fill the shape).
"""

from __future__ import annotations

import math

import numpy as np

PAD = 280  # the pad's side in canvas pixels (site/demo.md)
SCALE = PAD // 28  # one MNIST pixel = 10 canvas pixels

Point = tuple[float, float]
Stroke = list[Point]


def line(*points: Point) -> Stroke:
    """A polyline through points given as fractions of the pad's side."""
    return [(x * PAD, y * PAD) for x, y in points]


def arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float) -> Stroke:
    """An elliptic arc (fractions of the pad), from angle ``start`` to ``end`` in degrees,
    clockwise on screen (y points down), one point every 10 degrees."""
    steps = max(2, math.ceil(abs(end - start) / 10))
    angles = np.radians(np.linspace(start, end, steps + 1))
    return [((cx + rx * math.cos(a)) * PAD, (cy + ry * math.sin(a)) * PAD) for a in angles]


HAND_MADE: dict[str, list[Stroke]] = {
    "1": [line((0.53, 0.15), (0.47, 0.85))],
    "7": [line((0.27, 0.2), (0.73, 0.2), (0.44, 0.85))],
    "0": [arc(0.5, 0.5, 0.2, 0.32, -90, 270)],
    # Two bumps to the right, drawn in one go: top arc from upper left round to the
    # middle, then the bottom arc from the middle round to lower left.
    "3": [arc(0.5, 0.33, 0.17, 0.16, 200, 450) + arc(0.5, 0.665, 0.19, 0.175, -90, 160)[1:]],
    # The open-topped 4: down and across, then the long stroke on the right.
    "4": [line((0.38, 0.15), (0.28, 0.58), (0.76, 0.58)), line((0.63, 0.3), (0.63, 0.88))],
}

# A 0 whose ink touches all four edges of the pad: the crop to the ink is the whole pad.
EDGE_TO_EDGE_ZERO: list[Stroke] = [arc(0.5, 0.5, 132 / PAD, 132 / PAD, -90, 270)]


def traced(digit: np.ndarray, level: float = 0.5) -> list[Stroke]:
    """Strokes that redraw a 28 x 28 MNIST digit (floats in [0, 1] or uint8) on the pad.

    Each row's runs of pixels above ``level`` are drawn from the centre of the run's first
    pixel to the centre of its last, so the 20 px brush widens the ink by half an MNIST
    pixel on every side. A run that overlaps a run of the row above continues that run's
    stroke, zigzagging like a pen filling a shape: the step between the two rows stays
    inside ink the brush covers anyway, and the test needs fewer, longer strokes.
    """
    ink = np.asarray(digit, dtype=np.float64)
    if ink.max() > 1:
        ink = ink / 255
    finished: list[Stroke] = []
    growing: list[tuple[Stroke, tuple[int, int]]] = []  # strokes ending in the row above
    for row in range(ink.shape[0]):
        y = (row + 0.5) * SCALE
        extended = []
        for a, b in _runs(ink[row] > level):
            above = next((g for g in growing if g[1][0] <= b and g[1][1] >= a), None)
            if above is None:
                stroke = [((a + 0.5) * SCALE, y), ((b + 0.5) * SCALE, y)]
            else:
                growing.remove(above)
                stroke, pen_x = above[0], above[0][-1][0] / SCALE - 0.5
                near, far = (a, b) if abs(a - pen_x) <= abs(b - pen_x) else (b, a)
                stroke += [((near + 0.5) * SCALE, y), ((far + 0.5) * SCALE, y)]
            extended.append((stroke, (a, b)))
        finished += [stroke for stroke, _ in growing]  # nothing below continues them
        growing = extended
    return finished + [stroke for stroke, _ in growing]


def _runs(on: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of each run of True in a 1-D boolean array."""
    padded = np.concatenate([[False], on, [False]])
    starts = np.flatnonzero(padded[1:] & ~padded[:-1])
    ends = np.flatnonzero(~padded[1:] & padded[:-1]) - 1
    return [(int(a), int(b)) for a, b in zip(starts, ends)]
