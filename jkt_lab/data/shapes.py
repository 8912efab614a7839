"""The embedded datasets: generated coloured shapes (with ground-truth masks) and scikit-learn's digits."""
from __future__ import annotations

import numpy as np
import torch

from jkt_lab._checks import check_int

from .core import Raw, Request

SHAPE_CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "diamond", "ring",
    "frame", "plus", "x_cross", "horizontal_bar", "vertical_bar",
)


def _shape_masks(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    name = SHAPE_CLASSES[cls]
    if name == "circle":
        return u * u + v * v <= 1.0
    if name == "square":
        return np.maximum(au, av) <= 0.8
    if name == "triangle":  # apex up (v grows downwards)
        return (v <= 0.7) & (au <= 0.6 * (v + 0.9))
    if name == "diamond":
        return au + av <= 1.0
    if name == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55 ** 2)
    if name == "frame":
        m = np.maximum(au, av)
        return (m <= 0.85) & (m >= 0.5)
    if name == "plus":
        return ((au <= 0.25) & (av <= 1.0)) | ((av <= 0.25) & (au <= 1.0))
    if name == "x_cross":
        a, b = np.abs(u + v) * 0.70710678, np.abs(u - v) * 0.70710678
        return ((a <= 0.22) & (b <= 1.0)) | ((b <= 0.22) & (a <= 1.0))
    if name == "horizontal_bar":
        return (au <= 1.0) & (av <= 0.3)
    return (av <= 1.0) & (au <= 0.3)  # vertical_bar


def _shapes(n: int, rng: np.random.Generator, size: int):
    k, s = len(SHAPE_CLASSES), size
    labels = rng.permutation(np.arange(n) % k)
    r = rng.uniform(0.18, 0.32, n) * s                    # radius in pixels
    ax, ay = rng.uniform(0.85, 1.15, n), rng.uniform(0.85, 1.15, n)
    theta = np.deg2rad(rng.uniform(-15.0, 15.0, n))
    margin = 1.2 * r * np.maximum(ax, ay) + 0.5
    cx = margin + rng.uniform(0, 1, n) * np.maximum(s - 2 * margin, 0)
    cy = margin + rng.uniform(0, 1, n) * np.maximum(s - 2 * margin, 0)
    grid = (np.arange(s, dtype=np.float32) + 0.5)
    dx = grid[None, None, :] - cx[:, None, None].astype(np.float32)   # (n, 1, s)
    dy = grid[None, :, None] - cy[:, None, None].astype(np.float32)   # (n, s, 1)
    c, sn = np.cos(theta).astype(np.float32)[:, None, None], np.sin(theta).astype(np.float32)[:, None, None]
    u = (c * dx + sn * dy) / (r * ax).astype(np.float32)[:, None, None]
    v = (c * dy - sn * dx) / (r * ay).astype(np.float32)[:, None, None]
    masks = np.zeros((n, s, s), dtype=bool)
    for cls in range(k):
        idx = np.flatnonzero(labels == cls)
        if idx.size:
            masks[idx] = _shape_masks(cls, u[idx], v[idx])

    # textured background: base colour + coloured gradient + coloured stripes (+ pixel noise)
    g1 = grid / s - 0.5
    fg_col = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    bg_col = (fg_col + rng.uniform(0.3, 0.7, (n, 3))).astype(np.float32) % 1.0   # >= 0.3 apart per channel
    phi = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None]
    grad = np.cos(phi) * g1[None, None, :] + np.sin(phi) * g1[None, :, None]          # (n, s, s)
    grad_col = rng.uniform(-0.3, 0.3, (n, 3)).astype(np.float32)
    psi = rng.uniform(0, np.pi, n).astype(np.float32)[:, None, None]
    freq = rng.uniform(2.0, 6.0, n).astype(np.float32)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None]
    stripes = np.sin(2 * np.pi * freq * (np.cos(psi) * g1[None, None, :] + np.sin(psi) * g1[None, :, None]) + phase)
    stripe_col = rng.uniform(-0.15, 0.15, (n, 3)).astype(np.float32)
    noise_sigma = rng.uniform(0.02, 0.06, n).astype(np.float32)[:, None, None, None]

    shade = grad_col[:, :, None, None] * grad[:, None]
    bg = bg_col[:, :, None, None] + shade + stripe_col[:, :, None, None] * stripes[:, None]
    fg = fg_col[:, :, None, None] + 0.5 * shade
    img = np.where(masks[:, None], fg, bg)
    img += noise_sigma * rng.standard_normal(img.shape, dtype=np.float32)
    np.clip(img, 0.0, 1.0, out=img)
    return torch.from_numpy(img), torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(masks)


def make_shapes(n: int, seed: int = 0, size: int = 32):
    """``n`` coloured shapes (classes ``SHAPE_CLASSES``, balanced) at random position, scale,
    small rotation and colour on textured backgrounds. Shape, not colour, gives the class.

    Returns ``(images (n, 3, size, size) float32 in [0, 1], labels (n,) int64,
    masks (n, size, size) bool foreground)``; identical for the same ``seed``.
    """
    n = check_int(n, "n", minimum=1)
    seed = check_int(seed, "seed", minimum=0)
    size = check_int(size, "size", minimum=8)
    return _shapes(n, np.random.default_rng(seed), size)


def read_shapes(req: Request) -> Raw:
    """``n_train``/``n_test`` (default 10000/2000) shapes of ``image_size`` (default 32), generated
    from the seed (test images from their own stream)."""
    size = req.image_size or 32
    if size < 8:
        raise ValueError(f"image_size must be >= 8 for shapes, got {size}")
    xtr, ytr, mtr = _shapes(req.n_train or 10000, np.random.default_rng(req.seed), size)
    xte, yte, mte = _shapes(req.n_test or 2000, np.random.default_rng([req.seed, 1]), size)
    return Raw(list(SHAPE_CLASSES), xtr, ytr, xte, yte, masks={"train": mtr, "test": mte}, sized=True, resized=True)


def read_digits(req: Request) -> Raw:
    """scikit-learn's 8x8 digits, 16 grey levels; a stratified 20% test split drawn with the seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy((d.images / 16.0).astype(np.float32))[:, None]
    tr, te = train_test_split(np.arange(len(d.target)), test_size=0.2, stratify=d.target, random_state=req.seed)
    tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
    y = torch.from_numpy(d.target.astype(np.int64))
    return Raw([str(c) for c in d.target_names], x[tr], y[tr], x[te], y[te])
