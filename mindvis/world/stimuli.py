"""The world's images: classes as sets of attributes, jittered renders of them, their low-level feature maps and
the fixed category embedding of their attributes (see :mod:`mindvis.world`)."""
from __future__ import annotations

import numpy as np

SHAPES = ("disc", "square", "triangle", "ring", "cross", "bar")
N_FEATURES = 8


def class_attributes(n_classes: int, rng: np.random.Generator) -> list[dict]:
    """Attributes of ``n_classes`` classes: shapes cycle, hues follow the golden ratio, the rest is random."""
    out = []
    for c in range(n_classes):
        hue = (0.618034 * c + rng.uniform(0, 0.05)) % 1.0
        out.append(dict(
            shape=int(c % len(SHAPES)),
            fg_hue=float(hue),
            fg_value=float(rng.uniform(0.6, 1.0)),
            bg_hue=float((hue + rng.uniform(0.25, 0.75)) % 1.0),
            bg_value=float(rng.uniform(0.1, 0.5)),
            orientation=float(rng.uniform(0, np.pi)),
            frequency=float(rng.choice([3.0, 6.0, 10.0])),
            size=float(rng.uniform(0.2, 0.35)),
            cx=float(rng.uniform(0.35, 0.65)),
            cy=float(rng.uniform(0.35, 0.65)),
        ))
    return out


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    name = SHAPES[shape]
    d = np.sqrt(u**2 + v**2)
    if name == "disc":
        return d < r
    if name == "square":
        return (np.abs(u) < r * 0.85) & (np.abs(v) < r * 0.85)
    if name == "triangle":
        return (v < r * 0.7) & (v > -r + 1.7 * np.abs(u))
    if name == "ring":
        return (d < r) & (d > r * 0.55)
    if name == "cross":
        return ((np.abs(u) < r * 0.3) | (np.abs(v) < r * 0.3)) & (np.abs(u) < r) & (np.abs(v) < r)
    return (np.abs(u) < r * 1.1) & (np.abs(v) < r * 0.35)  # bar


def render_image(attrs: dict, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """One jittered instance of a class: (size, size, 3) uint8."""
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    cx = attrs["cx"] + rng.normal(0, 0.06)
    cy = attrs["cy"] + rng.normal(0, 0.06)
    r = attrs["size"] * rng.uniform(0.85, 1.15)
    theta = attrs["orientation"] + rng.normal(0, 0.12)
    # the shape turns with the grating, so orientation is a property of the whole object
    u0, v0 = xx - cx, yy - cy
    u = np.cos(theta) * u0 + np.sin(theta) * v0
    v = -np.sin(theta) * u0 + np.cos(theta) * v0
    mask = _shape_mask(attrs["shape"], u, v, r)
    grating = np.sin(2 * np.pi * attrs["frequency"] * u / (2 * r) * 2 + rng.uniform(0, 2 * np.pi))
    fg = _hsv_to_rgb((attrs["fg_hue"] + rng.normal(0, 0.02)) % 1, 0.8, attrs["fg_value"])
    bg = _hsv_to_rgb((attrs["bg_hue"] + rng.normal(0, 0.02)) % 1, 0.5, attrs["bg_value"])
    shade = 1.0 + 0.15 * (yy - 0.5) * rng.normal()
    img = bg[None, None, :] * shade[..., None]
    img = np.where(mask[..., None], fg[None, None, :] * (0.75 + 0.25 * grating[..., None]), img)
    img = img + rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def image_features(images: np.ndarray, grid: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, grid*grid, 8) low-level feature maps (see module docstring)."""
    x = images.astype(np.float32) / 255.0
    n, h, w, _ = x.shape
    x = x.reshape(n, grid, h // grid, grid, w // grid, 3).mean(axis=(2, 4))  # (N, G, G, 3)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    lum = (r + g + b) / 3
    rg = r - g
    by = b - (r + g) / 2
    gy, gx = np.gradient(lum, axis=(1, 2))
    energies = [np.abs(np.cos(a) * gx + np.sin(a) * gy) for a in (0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)]
    contrast = np.abs(lum - lum.mean(axis=(1, 2), keepdims=True))
    feats = np.stack([lum, rg, by, *energies, contrast], axis=-1)  # (N, G, G, 8)
    return feats.reshape(n, grid * grid, N_FEATURES)


def category_embedding(attrs: list[dict], dim: int, seed: int) -> np.ndarray:
    """(n_classes, dim) fixed nonlinear embedding of class attributes: the 'semantic' signal."""
    rng = np.random.default_rng(seed + 7919)
    a = np.array([[*np.eye(len(SHAPES))[c["shape"]], np.cos(2 * np.pi * c["fg_hue"]), np.sin(2 * np.pi * c["fg_hue"]),
                   c["fg_value"], np.cos(2 * c["orientation"]), np.sin(2 * c["orientation"]), c["frequency"] / 10,
                   c["size"] * 3, c["bg_value"]] for c in attrs])
    w1 = rng.normal(0, 1, (a.shape[1], 64))
    w2 = rng.normal(0, 1 / 8, (64, dim))
    e = np.tanh(a @ w1) @ w2
    return (e - e.mean(0)) / (e.std(0) + 1e-8)
