"""A catalogue of hostile messages for fault tests of live fusion nodes (test/test_fuzz_live.py and
``m2vae-fusion bench reliability``): malformed or absurd images, LaserScans, reflectance scans, PointCloud2s and
peer LatentEmbeddings, finite extremes included (``mean = [3e38] * Dz``, 1e-38, ±1e30 log-variances), bad stamps
and ids.

Each case is ``Case(source, name, make, must_refuse, victim_only)``: ``source`` is the node's drop-counter source
(``camera``, ``lidar``, ``reflectance``, ``peer``; ``cloud`` cases count as ``lidar`` on a node with ``lidar_type:
PointCloud2``), ``make(now_ns, target_id)`` builds a fresh message, and ``must_refuse`` says the node has to drop it
(counted as ``dropped.<source>.<reason>`` in /diagnostics). Cases that are not ``must_refuse`` are finite but unusual
inputs a node may accept (a belief built from them must still be finite and normalised); send them about targets of
their own, never about targets whose beliefs are compared. ``victim_only`` cases are must-refuse for the victim
only: a latent from a trusted peer relaying fabricated evidence attributed to the victim is spoofed for the victim,
but every other agent merges it as a relay (the consistency checks cannot tell it from a real one: README,
"Reliability and threat model"); on a topic others read too, send them about targets of their own as well.

rclpy message types only (no torch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

SENSOR_SOURCES = ("camera", "lidar", "reflectance", "cloud")


@dataclass(frozen=True)
class Case:
    source: str
    name: str
    make: Callable
    must_refuse: bool = True
    #: refused by the victim only (it names the victim as the source of evidence the victim never produced); to any
    #: other receiver of the shared topic it is a valid relay by a trusted peer, which it merges: a target of its own
    victim_only: bool = False

    @property
    def counter_source(self) -> str:
        return "lidar" if self.source == "cloud" else self.source


def _stamp(ns: int):
    from builtin_interfaces.msg import Time

    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


# -- sensors ----------------------------------------------------------------------------------------------------------
def _image(now, enc="rgb8", h=8, w=8, step=None, data=None, stamp=None):
    from sensor_msgs.msg import Image

    msg = Image(encoding=enc, height=h, width=w, step=step if step is not None else w * 3)
    msg.header.stamp = _stamp(now if stamp is None else stamp)
    msg.header.frame_id = "camera"
    msg.data = bytes(msg.step * h) if data is None else data
    return msg


def _good_image(now, stamp=None):
    from m2vae_fusion.core import messages as conv

    rgb = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return conv.rgb_to_image(rgb, "rgb8", stamp_ns=now if stamp is None else stamp, frame_id="camera")


def _scan(now, cfg, ranges=None, stamp=None, **fields):
    from m2vae_fusion.core import messages as conv

    n = int(cfg["beams"])
    r = np.random.default_rng(2).uniform(0.3, 3.0, n).astype(np.float32) if ranges is None else ranges
    msg = conv.ranges_to_scan(np.asarray(r, np.float32), cfg, stamp_ns=now if stamp is None else stamp)
    for k, v in fields.items():
        setattr(msg, k, v)
    return msg


def _refl(now, beams, ranges=None, intens=None, stamp=None, **fields):
    from m2vae_fusion.core import messages as conv

    rng = np.random.default_rng(3)
    r = rng.uniform(0.05, 0.5, beams) if ranges is None else ranges
    i = rng.uniform(0, 1, beams) if intens is None else intens
    msg = conv.ranges_to_scan(np.asarray(r, np.float32), {"range_max": 0.8}, stamp_ns=now if stamp is None else stamp,
                              intensities=np.asarray(i, np.float32))
    for k, v in fields.items():
        setattr(msg, k, v)
    return msg


def _cloud(now, cfg, fields=None, points=None, stamp=None, **attrs):
    from sensor_msgs.msg import PointField

    from m2vae_fusion.core import messages as conv

    if points is None:
        r = np.random.default_rng(4).uniform(0.3, 3.0, int(cfg["beams"]))
        points = conv.scan_to_points(r, cfg["angle_min"], cfg["angle_increment"])
    msg = conv.xyz_to_pointcloud2(np.asarray(points, np.float32), stamp_ns=now if stamp is None else stamp)
    if fields is not None:
        msg.fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                      for i, n in enumerate(fields)]
    for k, v in attrs.items():
        setattr(msg, k, v)
    return msg


def sensor_cases(lidar_cfg: dict, reflectance_beams: int, cloud: bool = True) -> list:
    """Hostile sensor messages; a fusion node must drop every ``must_refuse`` one. ``lidar_cfg``: the bundle's LiDAR input
    config (beams, angle_min, angle_max, angle_increment, range_min, range_max)."""
    c, k = dict(lidar_cfg), int(reflectance_beams)
    n = int(c["beams"])
    H = 3_600_000_000_000  # one hour in ns
    cases = [
        # images
        Case("camera", "jpeg_encoding", lambda t, _=None: _image(t, enc="jpeg")),
        Case("camera", "empty_encoding", lambda t, _=None: _image(t, enc="")),
        Case("camera", "mono16", lambda t, _=None: _image(t, enc="16UC1", step=16)),
        Case("camera", "mono8", lambda t, _=None: _image(t, enc="mono8", step=8)),
        Case("camera", "zero_size", lambda t, _=None: _image(t, h=0, w=0, data=b"")),
        Case("camera", "truncated", lambda t, _=None: _image(t, data=bytes(100))),
        Case("camera", "short_step", lambda t, _=None: _image(t, step=20)),
        Case("camera", "huge_claimed", lambda t, _=None: _image(t, h=1_000_000, w=1_000_000, step=3_000_000,
                                                                  data=bytes(64))),
        Case("camera", "step_overflow", lambda t, _=None: _image(t, step=2 ** 32 - 1, data=bytes(192))),
        Case("camera", "stale_stamp", lambda t, _=None: _good_image(t, stamp=t - H)),
        Case("camera", "future_stamp", lambda t, _=None: _good_image(t, stamp=t + H)),
        Case("camera", "zero_stamp", lambda t, _=None: _good_image(t, stamp=0)),
        Case("camera", "negative_stamp", lambda t, _=None: _good_image(t, stamp=-5 * 10 ** 9)),
        # LaserScans
        Case("lidar", "nan_ranges", lambda t, _=None: _scan(t, c, np.full(n, np.nan))),
        Case("lidar", "all_inf", lambda t, _=None: _scan(t, c, np.full(n, np.inf))),
        Case("lidar", "no_beams", lambda t, _=None: _scan(t, c, np.zeros(0))),
        Case("lidar", "all_minus_one", lambda t, _=None: _scan(t, c, np.full(n, -1.0))),
        Case("lidar", "all_3e38", lambda t, _=None: _scan(t, c, np.full(n, 3e38))),
        Case("lidar", "inc_inf", lambda t, _=None: _scan(t, c, angle_increment=math.inf)),
        Case("lidar", "inc_nan", lambda t, _=None: _scan(t, c, angle_increment=math.nan)),
        Case("lidar", "inc_zero", lambda t, _=None: _scan(t, c, angle_increment=0.0)),
        Case("lidar", "inc_1e-30", lambda t, _=None: _scan(t, c, angle_increment=1e-30)),
        Case("lidar", "inc_-1e-30", lambda t, _=None: _scan(t, c, angle_increment=-1e-30)),
        Case("lidar", "inc_1e-45", lambda t, _=None: _scan(t, c, angle_increment=1e-45)),
        Case("lidar", "inc_1e30", lambda t, _=None: _scan(t, c, angle_increment=1e30)),
        Case("lidar", "angle_min_1e30", lambda t, _=None: _scan(t, c, angle_min=-1e30)),
        Case("lidar", "5000_beams_240deg", lambda t, _=None: _scan(
            t, c, np.full(5000, 1.0), angle_min=-2.0944, angle_max=2.0944, angle_increment=0.00628)),
        Case("lidar", "range_min_negative", lambda t, _=None: _scan(t, c, range_min=-1.0)),
        Case("lidar", "range_max_below_min", lambda t, _=None: _scan(t, c, range_min=2.0, range_max=1.0)),
        Case("lidar", "range_max_nan", lambda t, _=None: _scan(t, c, range_max=math.nan)),
        Case("lidar", "every_third_nan", lambda t, _=None: _scan(
            t, c, np.where(np.arange(n) % 3, np.nan, 1.0))),
        Case("lidar", "stale_stamp", lambda t, _=None: _scan(t, c, stamp=t - H)),
        Case("lidar", "future_stamp", lambda t, _=None: _scan(t, c, stamp=t + H)),
        # reflectance
        Case("reflectance", "few_ranges", lambda t, _=None: _refl(t, k, ranges=np.full(max(1, k - 3), 0.2),
                                                                  intens=np.full(max(1, k - 3), 0.5))),
        Case("reflectance", "no_intensities", lambda t, _=None: _refl(t, k, intensities=[])),
        Case("reflectance", "inf_intensity", lambda t, _=None: _refl(t, k, intens=np.full(k, np.inf))),
        Case("reflectance", "nan_intensity", lambda t, _=None: _refl(t, k, intens=np.full(k, np.nan))),
        Case("reflectance", "empty", lambda t, _=None: _refl(t, k, ranges=np.zeros(0), intens=np.zeros(0))),
        Case("reflectance", "negative_ranges", lambda t, _=None: _refl(t, k, ranges=np.full(k, -0.3))),
        # saturated, not refused: preprocessing clips intensities to [0, 1.5] x intensity_max
        Case("reflectance", "3e38_intensity", lambda t, _=None: _refl(t, k, intens=np.full(k, 3e38)),
             must_refuse=False),
        Case("camera", "huge_image", lambda t, _=None: _image(t, h=1080, w=1920,
                                                               data=bytes(range(256)) * (1080 * 1920 * 3 // 256)),
             must_refuse=False),
        Case("reflectance", "stale_stamp", lambda t, _=None: _refl(t, k, stamp=t - H)),
        Case("reflectance", "future_stamp", lambda t, _=None: _refl(t, k, stamp=t + H)),
    ]
    if cloud:
        cases += [
            Case("cloud", "no_z_field", lambda t, _=None: _cloud(t, c, fields="xyw")),
            Case("cloud", "no_points", lambda t, _=None: _cloud(t, c, points=np.zeros((0, 3)))),
            Case("cloud", "nan_points", lambda t, _=None: _cloud(t, c, points=np.full((50, 3), np.nan))),
            Case("cloud", "truncated_data", lambda t, _=None: _cloud(t, c, width=10_000)),
            Case("cloud", "stale_stamp", lambda t, _=None: _cloud(t, c, stamp=t - H)),
        ]
    return cases


# -- peer latents -----------------------------------------------------------------------------------------------------
def _latent(now, target, model_id, dim, agent="fuzz_peer", modalities=("lidar",), mean=None, logvar=None,
            stamp=None, sources=None, contributors=None, fmt=None, stamps=None):
    from m2vae_fusion_msgs.msg import LatentEmbedding

    s = now - 50_000_000 if stamp is None else stamp
    msg = LatentEmbedding(agent_id=agent, target_id=target, model_id=model_id, modalities=list(modalities),
                          modality_stamps=[_stamp(x) for x in (stamps or [s] * len(modalities))],
                          modality_sources=list(sources if sources is not None else [agent] * len(modalities)),
                          contributors=list(contributors if contributors is not None else [agent]))
    msg.header.stamp = _stamp(s)
    msg.header.frame_id = "map"
    if fmt is not None:
        msg.format_version = fmt
    msg.mean = np.asarray(np.zeros(dim) if mean is None else mean, np.float32).ravel()
    msg.log_variance = np.asarray(-np.ones(dim) if logvar is None else logvar, np.float32).ravel()
    return msg


def latent_cases(model_id: str, dim: int, victim: str, peer: str = "fuzz_peer", untrusted: str = "mallory") -> list:
    """Hostile peer LatentEmbeddings. ``victim``: the id of the agent under attack (for spoofed evidence); ``peer``:
    an agent the victim trusts; ``untrusted``: one it does not trust (the victim's ``trusted_agents`` must name
    ``peer`` but not ``untrusted``)."""
    H = 3_600_000_000_000
    D = int(dim)
    f = np.float32

    def L(agent=peer, **kw):
        return lambda t, target: _latent(t, target, model_id, D, agent=agent, **kw)

    cases = [
        Case("peer", "mean_3e38", L(mean=np.full(D, 3e38, f))),
        Case("peer", "mean_-3e38", L(mean=np.full(D, -3e38, f))),
        Case("peer", "mean_1e30_one_dim", L(mean=np.r_[np.full(1, 1e30), np.zeros(D - 1)])),
        Case("peer", "mean_nan", L(mean=np.full(D, np.nan, f))),
        Case("peer", "mean_inf", L(mean=np.full(D, np.inf, f))),
        Case("peer", "logvar_nan", L(logvar=np.full(D, np.nan, f))),
        Case("peer", "logvar_-inf", L(logvar=np.full(D, -np.inf, f))),
        Case("peer", "mean_100", L(mean=np.full(D, 100.0, f))),
        Case("peer", "wrong_model_id", lambda t, target: _latent(t, target, "0123456789abcdef", D, agent=peer)),
        Case("peer", "empty_model_id", lambda t, target: _latent(t, target, "", D, agent=peer)),
        Case("peer", "dim_short", lambda t, target: _latent(t, target, model_id, max(1, D - 3), agent=peer)),
        Case("peer", "dim_long", lambda t, target: _latent(t, target, model_id, D + 100, agent=peer)),
        Case("peer", "dim_zero", lambda t, target: _latent(t, target, model_id, 0, agent=peer)),
        Case("peer", "unknown_modality", L(modalities=("sonar",))),
        Case("peer", "repeated_modality", L(modalities=("lidar", "lidar"))),
        Case("peer", "no_modalities", L(modalities=())),
        Case("peer", "stamps_short", L(modalities=("camera", "lidar"), stamps=[0])),
        Case("peer", "sources_long", L(sources=[peer, peer, peer])),
        Case("peer", "stale", L(stamp=0)),
        Case("peer", "stale_hour", lambda t, target: _latent(t, target, model_id, D, agent=peer, stamp=t - H)),
        Case("peer", "future_hour", lambda t, target: _latent(t, target, model_id, D, agent=peer, stamp=t + H)),
        Case("peer", "negative_stamp", L(stamp=-10 ** 9)),
        Case("peer", "untrusted_agent", L(agent=untrusted)),
        Case("peer", "untrusted_relay", L(sources=[untrusted])),
        Case("peer", "empty_agent_id", L(agent="")),
        Case("peer", "huge_agent_id", L(agent="x" * 10_000)),
        Case("peer", "empty_target_id", lambda t, target: _latent(t, "", model_id, D, agent=peer)),
        Case("peer", "unknown_format", L(fmt=250)),
        Case("peer", "spoofed_own_evidence", lambda t, target: _latent(t, target, model_id, D, agent=peer,
                                                                        sources=[victim], contributors=[peer, victim],
                                                                        stamp=t + 200_000_000), victim_only=True),
        # finite extremes a node may accept (capped): about fuzz targets only; outputs must stay finite
        Case("peer", "mean_1e-38", L(mean=np.full(D, 1e-38, f)), must_refuse=False),
        Case("peer", "logvar_-1e30", L(logvar=np.full(D, -1e30, f)), must_refuse=False),
        Case("peer", "logvar_1e30", L(logvar=np.full(D, 1e30, f)), must_refuse=False),
        Case("peer", "logvar_-80", L(logvar=np.full(D, -80.0, f)), must_refuse=False),
        Case("peer", "huge_target_id", lambda t, target: _latent(t, target + "_" + "t" * 5000, model_id, D,
                                                                  agent=peer), must_refuse=False),
    ]
    return cases


# -- output checks ----------------------------------------------------------------------------------------------------
def bad_latent_output(msg) -> str | None:
    """Why a published LatentEmbedding is corrupt (non-finite mean / log-variance), or None."""
    m = np.asarray(msg.mean, np.float64)
    v = np.asarray(msg.log_variance, np.float64)
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(v))):
        return f"non-finite latent from {msg.agent_id} about {msg.target_id[:40]}"
    return None


def bad_belief_output(msg, tol: float = 1e-3) -> str | None:
    """Why a published ClassBelief is corrupt (non-finite, outside [0, 1] or not summing to 1 within ``tol``), or
    None."""
    p = np.asarray(msg.probabilities, np.float64)
    if p.size == 0 or not np.all(np.isfinite(p)):
        return f"non-finite belief from {msg.agent_id} about {msg.target_id[:40]}"
    if np.any(p < 0) or np.any(p > 1) or abs(p.sum() - 1.0) > tol:
        return f"non-normalised belief from {msg.agent_id} about {msg.target_id[:40]} (sum {p.sum():.6f})"
    return None
