"""Tiny synthetic sensor data in the shard layout (docs/formats.md), for fast tests of training, export and eval.

Not a simulator: each sample is a class (colour, shape, material) rendered crudely so that the camera sees colour
and roughly the shape, the LiDAR sees the shape (flat face vs arc) and the reflectance sensor sees the material
(intensity), as in the paper's closed-world AMiRo setup (Sec. IV). Use :mod:`m2vae_fusion.sim` for real data.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np


def make_arrays(n: int, seed: int = 0, sensors: Optional[Mapping] = None,
                missing_rate: float = 0.0) -> Dict[str, np.ndarray]:
    """``n`` samples as shard arrays (``camera``, ``lidar``, ``reflectance``, ``present``, ``label``, attributes).

    Args:
        sensors: sensor configs (default :data:`m2vae_fusion.core.preprocess.DEFAULT_CONFIGS`).
        missing_rate: probability that each modality of a sample is missing (at least one is kept).
    """
    from m2vae_fusion.core.preprocess import DEFAULT_CONFIGS

    cfg = dict(DEFAULT_CONFIGS, **(sensors or {}))
    rng = np.random.default_rng(seed)
    colour = rng.integers(0, 2, n)
    shape = rng.integers(0, 2, n)
    material = rng.integers(0, 2, n)
    label = 4 * colour + 2 * shape + material
    h, w = int(cfg["camera"]["height"]), int(cfg["camera"]["width"])
    cam = np.full((n, h, w, 3), 90, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    b = int(cfg["lidar"]["beams"])
    lid = np.full((n, b), np.inf, np.float32)
    k = int(cfg["reflectance"]["beams"])
    ref = np.zeros((n, k, 2), np.float32)
    ref[:, :, 0] = np.inf
    for i in range(n):
        cx = w / 2 + rng.normal(0, w / 16)
        cy = h / 2 + rng.normal(0, h / 16)
        r = (0.18 + rng.uniform(-0.03, 0.03)) * w
        if shape[i] == 0:
            inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        else:
            inside = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
        rgb = np.array([200, 40, 40]) if colour[i] == 0 else np.array([40, 190, 40])
        cam[i][inside] = np.clip(rgb + rng.normal(0, 12, 3), 0, 255).astype(np.uint8)
        cam[i] = np.clip(cam[i].astype(np.int16) + rng.integers(-6, 7, (h, w, 3)), 0, 255).astype(np.uint8)
        # LiDAR: object in front, 0.4-0.8 m; a cube shows a flat face, a cylinder an arc
        d = rng.uniform(0.4, 0.8)
        half = 0.05
        ang = cfg["lidar"]["angle_min"] + cfg["lidar"]["angle_increment"] * np.arange(b)
        off = rng.normal(0, 0.02)
        x = np.tan(ang - off) * d
        hit = np.abs(ang - off) < np.arctan(half / d)
        if shape[i] == 0:
            rr = d - np.sqrt(np.clip(half ** 2 - x ** 2, 0, None)) + half
        else:
            rr = d / np.cos(ang - off)
        lid[i, hit] = (rr[hit] + rng.normal(0, 0.005, hit.sum())).astype(np.float32)
        lid[i, np.abs(ang) > 1.6] = 2.0 + rng.normal(0, 0.01)
        # reflectance: 8 beams, the middle ones see the object at ~0.3 m, intensity by material
        seen = np.abs(np.arange(k) - (k - 1) / 2) < 2.5
        ref[i, seen, 0] = 0.3 + rng.normal(0, 0.02, seen.sum())
        ref[i, seen, 1] = (0.8 if material[i] else 0.25) + rng.normal(0, 0.05, seen.sum())
        ref[i, :, 1] = np.clip(ref[i, :, 1], 0, None)
    present = np.ones((n, 3), bool)
    if missing_rate > 0:
        present = rng.uniform(size=(n, 3)) >= missing_rate
        none = ~present.any(1)
        present[none, rng.integers(0, 3, int(none.sum()))] = True
        cam[~present[:, 0]] = 0
        lid[~present[:, 1]] = 0
        ref[~present[:, 2]] = 0
    return {"camera": cam, "lidar": lid, "reflectance": ref, "present": present, "label": label.astype(np.int64),
            "colour": colour.astype(np.int64), "shape": shape.astype(np.int64), "material": material.astype(np.int64)}
