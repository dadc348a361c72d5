"""Sensor preprocessing shared by training and the ROS node (one implementation, see docs/formats.md).

Every function accepts one observation or a batch and returns a float32 batch ready for the β-VAE encoder of the
modality. Configs are plain dicts, stored in a data set's ``metadata.json["sensors"]`` and copied into the model
bundle's manifest (``inputs.<modality>.preprocessing``). No ROS and no torch here.
"""
from __future__ import annotations

from typing import Mapping

import cv2
import numpy as np

MODALITIES = ("camera", "lidar", "reflectance")

#: Defaults of the simulated AMiRo sensors; a data set's metadata overrides them.
DEFAULT_CONFIGS = {
    "camera": {"width": 64, "height": 64},
    "lidar": {"beams": 667, "angle_min": -2.0943951023931953, "angle_increment": 0.006289474781961547,
              "range_min": 0.02, "range_max": 5.6},
    "reflectance": {"beams": 8, "range_max": 0.8, "intensity_max": 1.0},
}


class PreprocessError(ValueError):
    """An observation that cannot be turned into a model input (wrong shape, dtype or too many invalid values)."""


def input_shape(modality: str, cfg: Mapping) -> tuple:
    """Shape of one preprocessed sample (without the batch axis) for ``modality`` under ``cfg``.

    Raises:
        KeyError: unknown modality.
    """
    if modality == "camera":
        return (3, int(cfg["height"]), int(cfg["width"]))
    if modality == "lidar":
        return (1, int(cfg["beams"]))
    if modality == "reflectance":
        return (2 * int(cfg["beams"]),)
    raise KeyError(f"unknown modality {modality!r}; expected one of {MODALITIES}")


def preprocess_camera(image: np.ndarray, cfg: Mapping) -> np.ndarray:
    """RGB image(s) → network input.

    Args:
        image: uint8 RGB, shape (H, W, 3) or (N, H, W, 3), any H, W ≥ 1.
        cfg: ``{"width": w, "height": h}`` (training size, default 64×64).

    Returns:
        float32 (N, 3, h, w) in [0, 1]. Resized with cv2 INTER_AREA (aspect ratio not kept; the simulator renders
        the training size with the published camera's projection, so the two agree).

    Raises:
        PreprocessError: wrong dtype, rank, channel count or an empty image.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise PreprocessError(f"camera image must be uint8, got {img.dtype}")
    if img.ndim == 3:
        img = img[None]
    if img.ndim != 4 or img.shape[-1] != 3:
        raise PreprocessError(f"camera image must be (H, W, 3) or (N, H, W, 3) RGB, got shape {image.shape}")
    n, h, w, _ = img.shape
    if h == 0 or w == 0:
        raise PreprocessError(f"camera image is empty ({h}x{w})")
    out = np.stack([resize_camera(img[i], cfg) for i in range(n)]) if (h, w) != (int(cfg["height"]),
                                                                           int(cfg["width"])) else img
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=np.float32) * np.float32(1.0 / 255.0)


def resize_camera(image: np.ndarray, cfg: Mapping) -> np.ndarray:
    """One RGB image uint8 (H, W, 3) → uint8 (h, w, 3) at the training size of ``cfg`` (cv2 INTER_AREA).

    This is the image a data set stores; :func:`preprocess_camera` applies it before scaling to [0, 1].
    """
    tw, th = int(cfg["width"]), int(cfg["height"])
    if image.shape[:2] == (th, tw):
        return np.ascontiguousarray(image)
    return cv2.resize(np.ascontiguousarray(image), (tw, th), interpolation=cv2.INTER_AREA)


def clean_ranges(ranges: np.ndarray, range_min: float, range_max: float, nan_limit: float = 0.5) -> np.ndarray:
    """Map a scan's special values to metres following REP 117 and clip to ``[range_min, range_max]``.

    ``+inf`` (no return within range) → ``range_max``; ``-inf`` (too close) → ``range_min``; NaN (erroneous reading)
    → ``range_max`` (treated as no return) unless more than ``nan_limit`` of the beams of a scan are NaN.

    Args:
        ranges: float (..., B) metres.

    Returns:
        float32 array of the same shape, all finite.

    Raises:
        PreprocessError: a scan with more than ``nan_limit`` NaN beams, or with no beams.

    Source: REP 117 (Informational Distance Measurements).
    """
    r = np.array(ranges, dtype=np.float32, copy=True)
    if r.shape[-1] == 0:
        raise PreprocessError("scan has no beams")
    nan = np.isnan(r)
    if nan.any():
        frac = nan.mean(axis=-1)
        if np.any(frac > nan_limit):
            raise PreprocessError(f"scan has {float(np.max(frac)):.0%} NaN beams (limit {nan_limit:.0%})")
        r[nan] = range_max
    r[np.isposinf(r)] = range_max
    r[np.isneginf(r)] = range_min
    return np.clip(r, range_min, range_max, out=r)


def preprocess_lidar(ranges: np.ndarray, cfg: Mapping) -> np.ndarray:
    """Planar LiDAR scan(s) → network input.

    Args:
        ranges: float (B,) or (N, B), metres, REP 117 special values allowed (see :func:`clean_ranges`).
        cfg: ``{"beams": B, "range_min": m, "range_max": m, ...}``.

    Returns:
        float32 (N, 1, B) in [0, 1]: range / range_max.

    Raises:
        PreprocessError: beam count differs from ``cfg["beams"]``, or too many NaN beams.
    """
    r = np.asarray(ranges)
    if r.ndim == 1:
        r = r[None]
    beams = int(cfg["beams"])
    if r.ndim != 2 or r.shape[1] != beams:
        raise PreprocessError(f"lidar scan must have {beams} beams, got shape {np.shape(ranges)}")
    rmax = float(cfg["range_max"])
    r = clean_ranges(r, float(cfg["range_min"]), rmax)
    return (r / np.float32(rmax))[:, None, :]


def preprocess_reflectance(scan: np.ndarray, cfg: Mapping) -> np.ndarray:
    """Few-beam infrared reflectance scan(s) → network input.

    Args:
        scan: float (K, 2) or (N, K, 2): per beam range (m; ``+inf`` when nothing is within range) and intensity
            (unitless, ≥ 0; NaN or negative values are invalid).
        cfg: ``{"beams": K, "range_max": m, "intensity_max": float}``.

    Returns:
        float32 (N, 2K): the K ranges / range_max, then the K intensities / intensity_max clipped to [0, 1.5].

    Raises:
        PreprocessError: wrong shape, or non-finite / negative intensities.
    """
    s = np.asarray(scan, dtype=np.float32)
    if s.ndim == 2:
        s = s[None]
    k = int(cfg["beams"])
    if s.ndim != 3 or s.shape[1:] != (k, 2):
        raise PreprocessError(f"reflectance scan must be ({k}, 2) (range, intensity), got shape {np.shape(scan)}")
    inten = s[:, :, 1]
    if not np.all(np.isfinite(inten)) or np.any(inten < 0):
        raise PreprocessError("reflectance intensities must be finite and non-negative")
    rmax = float(cfg["range_max"])
    r = clean_ranges(s[:, :, 0], 0.0, rmax) / np.float32(rmax)
    i = np.clip(inten / np.float32(cfg["intensity_max"]), 0.0, 1.5)
    return np.concatenate([r, i], axis=1).astype(np.float32, copy=False)


PREPROCESSORS = {"camera": preprocess_camera, "lidar": preprocess_lidar, "reflectance": preprocess_reflectance}


def preprocess(modality: str, raw: np.ndarray, cfg: Mapping) -> np.ndarray:
    """Dispatch to the preprocessing of ``modality`` (see the per-modality functions for shapes and errors)."""
    try:
        fn = PREPROCESSORS[modality]
    except KeyError:
        raise PreprocessError(f"unknown modality {modality!r}; expected one of {MODALITIES}") from None
    return fn(raw, cfg)
