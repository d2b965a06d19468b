"""Drawing of the synthetic shapes: signed distances, colours, backgrounds (numpy only).

Every shape is given by an approximate signed distance ``d`` in pixels (negative inside)
evaluated on rotated local coordinates ``(u, v)``; its coverage is ``clip(0.5 - d, 0, 1)``,
a one-pixel anti-aliased edge. Shapes differ in outline (corners, curvature, holes, arms,
points) so that they stay distinguishable at ~15 px, whatever their colour or rotation.
"""
from __future__ import annotations

import numpy as np


def _rectangle(u: np.ndarray, v: np.ndarray, a: float, b: float, rng: np.random.Generator) -> np.ndarray:
    return np.maximum(np.abs(u) - a, np.abs(v) - b)


def _ellipse(u: np.ndarray, v: np.ndarray, a: float, b: float, rng: np.random.Generator) -> np.ndarray:
    return (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1.0) * min(a, b)


def _ring(u: np.ndarray, v: np.ndarray, a: float, b: float, rng: np.random.Generator) -> np.ndarray:
    t = rng.uniform(0.45, 0.65)  # inner / outer radius
    outer = _ellipse(u, v, a, b, rng)
    inner = _ellipse(u, v, a * t, b * t, rng)
    return np.maximum(outer, -inner)


def _triangle(u: np.ndarray, v: np.ndarray, a: float, b: float, rng: np.random.Generator) -> np.ndarray:
    # isosceles: base from (-a, b) to (a, b), apex (0, -b); max of the three edges' outward distances
    vertices = np.array([[-a, b], [0.0, -b], [a, b]])
    d = np.full(u.shape, -np.inf)
    for i in range(3):
        p, q = vertices[i], vertices[(i + 1) % 3]
        edge = q - p
        normal = np.array([edge[1], -edge[0]]) / np.hypot(*edge)   # outward for this vertex order
        if normal @ (np.zeros(2) - p) > 0:                           # centroid side: flip to outward
            normal = -normal
        d = np.maximum(d, normal[0] * (u - p[0]) + normal[1] * (v - p[1]))
    return d


def _cross(u: np.ndarray, v: np.ndarray, a: float, b: float, rng: np.random.Generator) -> np.ndarray:
    w = a * rng.uniform(0.22, 0.34)  # half-width of the two bars
    bar1 = np.maximum(np.abs(u) - a, np.abs(v) - w)
    bar2 = np.maximum(np.abs(u) - w, np.abs(v) - b)
    return np.minimum(bar1, bar2)


def _star(u: np.ndarray, v: np.ndarray, a: float, b: float, rng: np.random.Generator) -> np.ndarray:
    inner = rng.uniform(0.38, 0.5)   # inner / outer radius
    rho = np.sqrt(u ** 2 + (v * a / b) ** 2)
    phase = (np.arctan2(v, u) * 5.0 / (2 * np.pi)) % 1.0
    tri = np.abs(phase - 0.5) * 2.0   # 1 at the 5 points, 0 between them
    radius = a * (inner + (1.0 - inner) * tri)
    return (rho - radius) * 0.7


SHAPE_FUNCTIONS = {
    "rectangle": _rectangle,
    "ellipse": _ellipse,
    "triangle": _triangle,
    "cross": _cross,
    "ring": _ring,
    "star": _star,
}

# aspect (short / long half-extent) ranges per shape: plus and star stay close to square
ASPECT_RANGE = {"rectangle": (0.35, 1.0), "ellipse": (0.4, 1.0), "triangle": (0.6, 1.1),
                "cross": (0.8, 1.0), "ring": (0.6, 1.0), "star": (0.85, 1.0)}


def shape_coverage(shape: str, height: int, width: int, cx: float, cy: float, half_long: float,
                   aspect: float, angle: float, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    """Anti-aliased coverage of one shape on its local window.

    Returns (``[h, w]`` float32 coverage in [0, 1], (top, left) of the window in the image);
    the window is the shape's bounding square clipped to the ``height`` x ``width`` image.
    """
    radius = half_long * 1.05 + 2.0
    top, bottom = max(int(cy - radius), 0), min(int(cy + radius) + 1, height)
    left, right = max(int(cx - radius), 0), min(int(cx + radius) + 1, width)
    ys = np.arange(top, bottom, dtype=np.float32)[:, None] + 0.5 - cy
    xs = np.arange(left, right, dtype=np.float32)[None, :] + 0.5 - cx
    cos, sin = np.cos(angle), np.sin(angle)
    u = cos * xs + sin * ys     # rotate image offsets into the shape's frame
    v = -sin * xs + cos * ys
    d = SHAPE_FUNCTIONS[shape](u, v, half_long, half_long * aspect, rng)
    return np.clip(0.5 - d, 0.0, 1.0).astype(np.float32), (top, left)


def _interp_matrix(out_len: int, in_len: int) -> np.ndarray:
    """[out_len, in_len] linear-interpolation weights (align-corners) for upsampling a 1-D grid."""
    pos = np.linspace(0, in_len - 1, out_len)
    lo = np.floor(pos).astype(int).clip(0, in_len - 2)
    frac = pos - lo
    m = np.zeros((out_len, in_len), np.float32)
    m[np.arange(out_len), lo] = 1 - frac
    m[np.arange(out_len), lo + 1] = frac
    return m


def background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A textured ``[H, W, 3]`` float32 background (0-255): colour field, smooth blobs, stripes or checks."""
    base = rng.uniform(40, 215, size=3)
    gh, gw = rng.integers(3, 9, size=2)
    grid = rng.normal(0, rng.uniform(10, 35), size=(gh, gw, 3)).astype(np.float32)
    rows, cols = _interp_matrix(height, gh), _interp_matrix(width, gw)
    field = np.stack([rows @ grid[..., c] @ cols.T for c in range(3)], axis=-1)   # [H, W, 3]
    img = (base.astype(np.float32) + field).astype(np.float32)
    kind = rng.integers(0, 3)
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    if kind == 1:    # stripes
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 24)
        wave = np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period)
        img = img + (wave * rng.uniform(6, 18))[..., None] * rng.uniform(0.3, 1.0, size=3)
    elif kind == 2:  # checks
        cell = rng.uniform(8, 32)
        check = ((np.floor(xs / cell) + np.floor(ys / cell)) % 2) * 2 - 1
        img = img + (check * rng.uniform(5, 14))[..., None]
    return img.astype(np.float32)


def object_colour(bg_mean: np.ndarray, rng: np.random.Generator, min_distance: float = 80.0) -> np.ndarray:
    """A random RGB colour at least ``min_distance`` (0-255 L2) from ``bg_mean`` when possible."""
    best, best_dist = None, -1.0
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3)
        dist = float(np.linalg.norm(colour - bg_mean))
        if dist >= min_distance:
            return colour
        if dist > best_dist:
            best, best_dist = colour, dist
    return best
