"""Sensor models of the simulated AMiRo: forward RGB camera, planar LiDAR and a ring of infrared proximity sensors.

All functions take a PyBullet client id, a sensor config and the agent pose ``(x, y, yaw)`` (m, rad, world frame);
noise is drawn from the ``numpy.random.Generator`` passed in, so a seeded generator makes every reading repeatable.

Sources: Hokuyo URG-04LX data sheet (240 deg, 0.36 deg, 20-5600 mm, accuracy ±10 mm / 1 %); REP 117 (``+inf`` for
"no return within range_max", ``-inf`` for "too close"); REP 103 (frames); AMiRo (Herbrechtsmeier et al., ICSTCC 2016:
body diameter 99 mm, a ring of 8 IR proximity sensors).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Tuple

import numpy as np
import pybullet as pb

AMIRO_RADIUS = 0.0495


@dataclass(frozen=True)
class IRMaterial:
    """Infrared reflectance of a surface for a co-located emitter/receiver: returned signal per unit illumination
    ``diffuse * cos(theta) + specular * cos(theta) ** exponent`` (Lambert + Phong lobe, theta = incidence angle).
    Independent of the visible colour."""

    diffuse: float
    specular: float = 0.0
    exponent: float = 1.0


@dataclass
class CameraConfig:
    """Forward RGB camera at body height.

    Attributes:
        width, height: published image size in pixels (default 320x240, rgb8).
        fov_deg: vertical field of view in degrees of the published image (45 deg; horizontal ≈ 57.8 deg at 4:3).
        aspect: width/height of the published image; any rendered size keeps this projection.
        near, far: clipping planes (m).
        mount_height: optical centre height above the floor (m); below the smallest object (0.05 m), so object tops
            are never seen and both shapes show upright silhouettes.
        mount_forward: optical centre ahead of the robot centre (m), on the body rim.
        noise_std: Gaussian read noise (digital numbers, 0-255 scale).
        train_width, train_height: training image size (64x64).
    """

    width: int = 320
    height: int = 240
    fov_deg: float = 45.0
    aspect: float = 4.0 / 3.0
    near: float = 0.01
    far: float = 6.0
    mount_height: float = 0.045
    mount_forward: float = AMIRO_RADIUS
    noise_std: float = 3.0
    train_width: int = 64
    train_height: int = 64

    def info(self) -> dict:
        """The ``metadata.json["sensors"]["camera"]`` block: preprocessing keys ``width``/``height`` (training size)
        plus the model parameters."""
        return {"width": self.train_width, "height": self.train_height, "encoding": "rgb8",
                "published_width": self.width, "published_height": self.height, "fov_deg": self.fov_deg,
                "aspect": self.aspect, "near": self.near, "far": self.far, "mount_height": self.mount_height,
                "mount_forward": self.mount_forward, "noise_std": self.noise_std,
                "renderer": "pybullet ER_TINY_RENDERER"}


@dataclass
class LidarConfig:
    """Hokuyo URG-04LX-like planar scanner at the objects' mid height.

    Attributes:
        beams: number of beams B (667: 240 deg at ≈0.36 deg).
        angle_min, angle_max: first and last beam angles (rad, agent frame, counter-clockwise).
        range_min, range_max: valid range (m).
        noise_std: Gaussian range noise (m), 0.002 m (the data sheet's ±10 mm accuracy also covers systematic,
            surface-dependent errors; with 1 cm random noise the shape of a 4-7 cm object at 0.5 m is no longer
            determinable from one scan).
        resolution: reported range quantum (m), 1 mm like the device.
        mount_height: scan plane height (m).
    """

    beams: int = 667
    angle_min: float = -math.radians(120.0)
    angle_max: float = math.radians(120.0)
    range_min: float = 0.02
    range_max: float = 5.6
    noise_std: float = 0.002
    resolution: float = 0.001
    mount_height: float = 0.03

    @property
    def angle_increment(self) -> float:
        return (self.angle_max - self.angle_min) / (self.beams - 1)

    def angles(self) -> np.ndarray:
        """float64 (B,) beam angles in rad."""
        return self.angle_min + self.angle_increment * np.arange(self.beams)

    def info(self) -> dict:
        """The ``metadata.json["sensors"]["lidar"]`` block (``beams``, ``angle_min``, ``angle_max``,
        ``angle_increment`` in rad, ``range_min``, ``range_max`` in m, plus model parameters)."""
        return {"beams": self.beams, "angle_min": self.angle_min, "angle_max": self.angle_max,
                "angle_increment": self.angle_increment, "range_min": self.range_min, "range_max": self.range_max,
                "noise_std": self.noise_std, "resolution": self.resolution, "mount_height": self.mount_height,
                "out_of_range": "+inf (REP 117)"}


@dataclass
class ReflectanceConfig:
    """Ring of K infrared time-of-flight proximity sensors (AMiRo-like), beam k pointing at ``k * 360/K`` deg.

    Each sensor samples its field of view (``half_angle``) with ``rays`` rays in the horizontal plane and reports
    the strongest return: its range and its intensity ``w(alpha) * f(theta) / (1 + (d / falloff) ** 2)``
    (``f`` the surface's :class:`IRMaterial` response at incidence ``theta``, ``w`` the angular sensitivity
    ``1 - sensitivity_drop * (alpha / half_angle) ** 2``, ``d`` the range). Returns with intensity below
    ``detection_threshold`` or beyond ``range_max`` read ``(+inf, 0)``.

    Attributes:
        beams: K (8). half_angle: rad (15 deg). rays: rays per beam. range_max: m (0.8, so that objects at the
        data set's 0.12-0.50 m are always in range). falloff: m. range_noise: (a, b) sigma = a + b * d in m.
        intensity_noise: (relative, absolute) sigmas. intensity_max: normalisation constant for preprocessing.
        mount_height: m.
    """

    beams: int = 8
    half_angle: float = math.radians(15.0)
    rays: int = 11
    range_max: float = 0.8
    falloff: float = 0.3
    sensitivity_drop: float = 0.25
    range_noise: Tuple[float, float] = (0.003, 0.01)
    intensity_noise: Tuple[float, float] = (0.03, 0.002)
    detection_threshold: float = 0.004
    intensity_max: float = 1.0
    mount_height: float = 0.02

    def angles(self) -> np.ndarray:
        """float64 (K,) beam directions in rad (agent frame), wrapped to (-pi, pi]."""
        a = 2 * math.pi * np.arange(self.beams) / self.beams
        return np.where(a > math.pi, a - 2 * math.pi, a)

    def info(self) -> dict:
        """The ``metadata.json["sensors"]["reflectance"]`` block (``beams``, ``range_max``, ``intensity_max`` plus
        the model parameters)."""
        d = asdict(self)
        d["angles"] = [float(a) for a in self.angles()]
        d["range_noise"] = list(self.range_noise)
        d["intensity_noise"] = list(self.intensity_noise)
        d["columns"] = ["range_m", "intensity"]
        d["out_of_range"] = "+inf range, 0 intensity"
        return d


# ---------------------------------------------------------------------------------------------------- camera
def _camera_matrices(cfg: CameraConfig, pose):
    x, y, yaw = pose
    c, s = math.cos(yaw), math.sin(yaw)
    eye = (x + cfg.mount_forward * c, y + cfg.mount_forward * s, cfg.mount_height)
    target = (eye[0] + c, eye[1] + s, cfg.mount_height)
    view = pb.computeViewMatrix(eye, target, (0.0, 0.0, 1.0))
    proj = pb.computeProjectionMatrixFOV(cfg.fov_deg, cfg.aspect, cfg.near, cfg.far)
    return view, proj


def render_camera(client: int, cfg: CameraConfig, pose, width: int, height: int, light: dict,
                  rng: np.random.Generator, noise: bool = True) -> np.ndarray:
    """Render the forward camera with TinyRenderer: uint8 (height, width, 3) rgb8.

    The projection is always the published one (``cfg.fov_deg``, ``cfg.aspect``) whatever ``width``/``height``, so a
    64x64 render equals (up to aliasing) an INTER_AREA resize of the 320x240 one. ``light``: ``direction``,
    ``colour``, ``ambient``, ``diffuse``, ``specular`` (see ``World.set_lighting``). Adds Gaussian read noise of
    ``cfg.noise_std`` DN from ``rng`` when ``noise``.
    """
    if width <= 0 or height <= 0:
        raise ValueError("camera width and height must be positive")
    view, proj = _camera_matrices(cfg, pose)
    out = pb.getCameraImage(width, height, view, proj, lightDirection=light["direction"],
                            lightColor=light["colour"], shadow=0, lightAmbientCoeff=light["ambient"],
                            lightDiffuseCoeff=light["diffuse"], lightSpecularCoeff=light["specular"],
                            renderer=pb.ER_TINY_RENDERER, flags=pb.ER_NO_SEGMENTATION_MASK,
                            physicsClientId=client)
    rgb = np.asarray(out[2], dtype=np.uint8).reshape(height, width, 4)[:, :, :3]
    if noise and cfg.noise_std > 0:
        img = rgb.astype(np.float32) + rng.normal(0.0, cfg.noise_std, size=rgb.shape).astype(np.float32)
        rgb = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def render_segmentation(client: int, cfg: CameraConfig, pose, width: int, height: int) -> np.ndarray:
    """Which body each pixel of the forward camera shows: int32 (height, width) pybullet body unique ids, −1 for
    background, with the projection and pose of :func:`render_camera` (TinyRenderer's segmentation mask)."""
    if width <= 0 or height <= 0:
        raise ValueError("camera width and height must be positive")
    view, proj = _camera_matrices(cfg, pose)
    out = pb.getCameraImage(width, height, view, proj, shadow=0, renderer=pb.ER_TINY_RENDERER,
                            physicsClientId=client)
    # without ER_SEGMENTATION_MASK_OBJECT_AND_LINKINDEX the mask holds the body unique id (−1: nothing)
    return np.asarray(out[4], dtype=np.int32).reshape(height, width)


# ---------------------------------------------------------------------------------------------------- lidar
def _cast(client: int, origins: np.ndarray, ends: np.ndarray, mask: int = -1, normals: bool = True):
    res = pb.rayTestBatch(origins.tolist(), ends.tolist(), numThreads=1, collisionFilterMask=mask,
                          physicsClientId=client)
    body = np.array([r[0] for r in res], dtype=np.int64)
    frac = np.array([r[2] for r in res], dtype=np.float64)
    normal = np.array([r[4] for r in res], dtype=np.float64).reshape(len(res), 3) if normals else None
    return body, frac, normal


def lidar_scan(client: int, cfg: LidarConfig, pose, rng: np.random.Generator, noise: bool = True,
               mask: int = -1) -> np.ndarray:
    """Planar scan: float32 (B,) ranges in m from the robot centre, beam i at ``angle_min + i * angle_increment``.

    Rays start just outside the AMiRo body (so the robot never sees itself). No return within ``range_max`` →
    ``+inf``; a (noisy) reading below ``range_min`` → ``-inf`` (REP 117). Gaussian noise ``cfg.noise_std`` (m) from
    ``rng``, then quantised to ``cfg.resolution``. ``mask``: PyBullet collision filter mask of the rays.
    """
    x, y, yaw = pose
    ang = yaw + cfg.angles()
    d = np.stack([np.cos(ang), np.sin(ang), np.zeros_like(ang)], axis=1)
    r0 = AMIRO_RADIUS + 0.001
    base = np.array([x, y, cfg.mount_height])
    body, frac, _ = _cast(client, base + r0 * d, base + cfg.range_max * d, mask, normals=False)
    hit = body >= 0
    rng_m = r0 + frac * (cfg.range_max - r0)
    if noise and cfg.noise_std > 0:
        rng_m = rng_m + rng.normal(0.0, cfg.noise_std, size=rng_m.shape)
    if cfg.resolution > 0:
        rng_m = np.round(rng_m / cfg.resolution) * cfg.resolution
    out = np.where(hit & (rng_m <= cfg.range_max), rng_m, np.inf)
    out = np.where(out < cfg.range_min, -np.inf, out)
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------------- IR ring
def reflectance_scan(client: int, cfg: ReflectanceConfig, pose, materials: Dict[int, "IRMaterial"],
                     default: IRMaterial, rng: np.random.Generator, noise: bool = True,
                     mask: int = -1) -> np.ndarray:
    """IR proximity ring: float32 (K, 2), column 0 range in m (``+inf`` when nothing is detected within
    ``range_max``), column 1 intensity (unitless, >= 0; 0 when nothing is detected). ``materials`` maps PyBullet body
    ids to their :class:`IRMaterial` (others use ``default``). Noise from ``rng`` when ``noise``."""
    x, y, yaw = pose
    k, n = cfg.beams, cfg.rays
    beam = cfg.angles()
    alpha = np.linspace(-cfg.half_angle, cfg.half_angle, n) if n > 1 else np.zeros(1)
    ang = (yaw + beam)[:, None] + alpha[None, :]                        # (K, n)
    d = np.stack([np.cos(ang), np.sin(ang), np.zeros_like(ang)], axis=-1).reshape(-1, 3)
    so = np.stack([x + AMIRO_RADIUS * np.cos(yaw + beam), y + AMIRO_RADIUS * np.sin(yaw + beam),
                   np.full(k, cfg.mount_height)], axis=1)                # sensor origins on the rim (K, 3)
    origins = np.repeat(so, n, axis=0) + 0.001 * d
    body, frac, normal = _cast(client, origins, origins + cfg.range_max * d, mask)
    dist = 0.001 + frac * cfg.range_max
    cos_t = np.clip(-(normal * d).sum(axis=1), 0.0, 1.0)
    diff = np.zeros(k * n)
    spec = np.zeros(k * n)
    expo = np.ones(k * n)
    for i, b in enumerate(body):
        if b >= 0:
            m = materials.get(int(b), default)
            diff[i], spec[i], expo[i] = m.diffuse, m.specular, m.exponent
    f = diff * cos_t + spec * cos_t ** expo
    w = np.tile(1.0 - cfg.sensitivity_drop * (alpha / max(cfg.half_angle, 1e-9)) ** 2, k)
    signal = np.where(body >= 0, w * f / (1.0 + (dist / cfg.falloff) ** 2), 0.0).reshape(k, n)
    dist = dist.reshape(k, n)
    best = np.argmax(signal, axis=1)
    s = signal[np.arange(k), best]
    r = dist[np.arange(k), best]
    if noise:
        r = r + rng.normal(0.0, 1.0, size=k) * (cfg.range_noise[0] + cfg.range_noise[1] * r)
        s = s * (1.0 + cfg.intensity_noise[0] * rng.normal(0.0, 1.0, size=k)) \
            + cfg.intensity_noise[1] * rng.normal(0.0, 1.0, size=k)
    detected = (s >= cfg.detection_threshold) & (r <= cfg.range_max)
    out = np.empty((k, 2), dtype=np.float32)
    out[:, 0] = np.where(detected, np.maximum(r, 0.0), np.inf)
    out[:, 1] = np.where(detected, np.maximum(s, 0.0), 0.0)
    return out
