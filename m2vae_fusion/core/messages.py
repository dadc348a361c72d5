"""ROS 2 messages <-> numpy: pure functions, no node, no spinning, no rclpy import.

The readers (message → numpy) take any object with the attributes of the ROS message: rclpy messages and messages
deserialised by ``rosbags`` alike (the fusion node and ``m2vae-fusion dataset --from-bag`` read with the same code).
They validate what they read and raise :class:`ConversionError`, whose ``reason`` is a
:class:`~m2vae_fusion.core.reasons.DropReason` (the key counted in /diagnostics). The writers (numpy → message)
build the rclpy messages the simulator, the benchmarks and the tests publish; they import the message classes when
called. Conventions: REP 103 (x forward, y left, angles counter-clockwise), REP 117 (``+inf`` = no return within
range, ``-inf`` = too close, NaN = erroneous reading), sensor_msgs/Image row padding in ``step``, sensor_msgs/PointCloud2
row padding in ``row_step``.

Images are decoded by ``rosbags-image`` (:func:`rosbags.image.image_to_cvimage`: colour conversion with OpenCV,
byte order, 16 → 8 bit) after this module drops the row padding, which that library does not honour.
Point clouds are always read by this module's own reader (never ``sensor_msgs_py.point_cloud2``, which ignores
``row_step`` and misreads clouds with padded rows).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Mapping, Sequence

import numpy as np

from m2vae_fusion.core.reasons import DropReason

#: sensor_msgs/Image encodings that :func:`rgb_to_image` writes, with their channel count.
IMAGE_ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
#: colour encodings :func:`image_to_rgb` reads (decoded by rosbags-image; case-insensitive).
COLOUR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "rgb16", "bgr16", "rgba16", "bgra16",
                    "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8",
                    "bayer_rggb16", "bayer_bggr16", "bayer_gbrg16", "bayer_grbg16",
                    "yuv422", "uyvy", "yuv422_yuy2", "yuyv")
#: planar YUV 4:2:0 encodings: rosbags-image 0.10.4 views them as H x W (the chroma rows beyond ``height`` are lost
#: and the result has 2/3 of the rows), so they are refused with ``bad_encoding``.
MISREAD_ENCODINGS = ("nv12", "nv21")
TWO_PI = 2.0 * math.pi
# sensor_msgs/PointField datatype constants → numpy type codes
_PF_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}


class ConversionError(ValueError):
    """A message that cannot be converted. ``reason`` is a :class:`DropReason` (a string given is converted, an
    unknown one raises ValueError)."""

    def __init__(self, reason: DropReason | str, message: str):
        super().__init__(message)
        self.reason = DropReason(reason)


# -- time ---------------------------------------------------------------------------------------------------------
def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time (any object with ``sec`` and ``nanosec``) → integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int):
    """Integer nanoseconds (negative values clamp to 0) → builtin_interfaces/Time."""
    from builtin_interfaces.msg import Time

    ns = max(0, int(ns))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def make_header(stamp_ns: int, frame_id: str):
    """std_msgs/Header from nanoseconds and a frame id."""
    from std_msgs.msg import Header

    return Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)


# -- camera -------------------------------------------------------------------------------------------------------
def _image_layout(encoding: str):
    """(name as rosbags-image knows it, bytes per pixel, colour-less?) of a sensor_msgs/Image encoding.

    Raises:
        ConversionError: ``bad_encoding`` for encodings rosbags-image does not know, misreads
            (:data:`MISREAD_ENCODINGS`) or cannot give a colour order for (``8UC3``-style generic encodings).
    """
    from rosbags.image.image import Format, ImageFormatError, to_cvtype

    enc = encoding.strip()
    name = enc.lower() if enc.lower() in COLOUR_ENCODINGS + MISREAD_ENCODINGS + ("mono8", "mono16") else enc
    supported = ", ".join(COLOUR_ENCODINGS)
    if name in MISREAD_ENCODINGS:
        raise ConversionError(DropReason.BAD_ENCODING, f"image encoding {encoding!r} (planar YUV 4:2:0) is not "
                                                       f"supported; supported: {supported}")
    try:
        depth, fmt, _, channels = to_cvtype(name)
    except (ImageFormatError, KeyError):
        raise ConversionError(DropReason.BAD_ENCODING, f"unsupported image encoding {encoding!r}; "
                                                       f"supported: {supported}") from None
    colourless = fmt == Format.GRAY or (fmt == Format.GENERIC and channels == 1)
    if fmt == Format.GENERIC and not colourless:
        raise ConversionError(DropReason.BAD_ENCODING, f"image encoding {encoding!r} has no colour order; "
                                                       f"supported: {supported}")
    return name, depth // 8 * channels, colourless


def image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/Image → uint8 RGB array (H, W, 3) for the colour camera model.

    Reads every colour encoding of :data:`COLOUR_ENCODINGS` (8 and 16 bit RGB/BGR with or without alpha, Bayer
    mosaics demosaiced, YUV 4:2:2 as ``yuv422``/``uyvy`` and ``yuv422_yuy2``/``yuyv``), any size; rows may be padded
    (``step`` > width · bytes per pixel): the padding is skipped; 16-bit data honours ``is_bigendian`` and is scaled
    to 8 bit. Decoding: rosbags-image (:func:`rosbags.image.image_to_cvimage`, OpenCV colour conversions).

    Raises:
        ConversionError: ``colourless`` (``mono8``, ``mono16``, single-channel depth/generic encodings such as
            ``16UC1`` and ``32FC1``: no colour evidence for a colour model), ``bad_encoding`` (unknown encoding, no
            colour order such as ``8UC3``, or :data:`MISREAD_ENCODINGS`), ``empty`` (zero width or height),
            ``truncated`` (``step`` smaller than a row, or ``data`` shorter than the rows it declares),
            ``mismatch`` (a size the encoding cannot have, e.g. an odd width in YUV 4:2:2).
    """
    import cv2
    from rosbags.image import ImageError, image_to_cvimage

    name, bpp, colourless = _image_layout(str(msg.encoding))
    if colourless:
        raise ConversionError(DropReason.COLOURLESS, f"image encoding {msg.encoding!r} carries no colour; the camera "
                                                     "model needs a colour image")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ConversionError(DropReason.EMPTY, f"image is empty ({w}x{h})")
    row = w * bpp
    if step < row:
        raise ConversionError(DropReason.TRUNCATED, f"image step {step} is smaller than a row "
                                                    f"({w} px x {bpp} B = {row} B)")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size < step * (h - 1) + row:
        raise ConversionError(DropReason.TRUNCATED, f"image data has {buf.size} B, expected step x height = "
                                                    f"{step * h} B")
    if step == row:
        packed = buf[: row * h]
    else:  # rosbags-image reads the data as packed rows: drop the padding first
        packed = np.ascontiguousarray(np.lib.stride_tricks.as_strided(buf, (h, row), (step, 1), writeable=False))
    view = SimpleNamespace(encoding=name, height=h, width=w, step=row, is_bigendian=bool(msg.is_bigendian),
                           data=packed)
    try:
        rgb = image_to_cvimage(view, "rgb8")
    except (ImageError, ValueError, TypeError, cv2.error) as exc:  # cv2.error: a size the conversion refuses
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConversionError(DropReason.MISMATCH, f"image {w}x{h} {msg.encoding!r} cannot be decoded: "
                              f"{first}") from None
    rgb = np.asarray(rgb)
    if rgb.shape != (h, w, 3) or rgb.dtype != np.uint8:  # validate the library's output, not only the input
        raise ConversionError(DropReason.MISMATCH, f"image {w}x{h} {msg.encoding!r} decoded to {rgb.shape} "
                                                   f"{rgb.dtype}, expected ({h}, {w}, 3) uint8")
    return np.ascontiguousarray(rgb)


def camera_info_k(msg) -> tuple | None:
    """``((width, height), k)`` of a sensor_msgs/CameraInfo (``k``: 9 floats, row-major, for images of ``width`` x
    ``height`` pixels) when the camera crop accepts its ``k``
    (:func:`m2vae_fusion.core.preprocess.camera_intrinsics`: 9 finite numbers with positive ``fx``, ``fy``), else None:
    an uncalibrated camera (``k`` all zeros) or a malformed ``k``, for which the crop uses the config's K. Raises
    nothing for a bad ``k`` (None is the answer); the fusion node and ``dataset --from-bag`` read CameraInfo with it."""
    from m2vae_fusion.core.preprocess import PreprocessError, camera_intrinsics

    k = tuple(float(v) for v in msg.k)
    width, height = int(msg.width), int(msg.height)
    try:
        camera_intrinsics({}, width, height, k)
    except PreprocessError:
        return None
    return (width, height), k


def rgb_to_image(rgb: np.ndarray, encoding: str = "rgb8", stamp_ns: int = 0, frame_id: str = "camera",
                 row_padding: int = 0):
    """uint8 RGB array (H, W, 3) → sensor_msgs/Image in ``encoding`` (one of :data:`IMAGE_ENCODINGS`).

    ``row_padding`` extra bytes (zeros) are appended to each row, as some drivers do (``step`` grows accordingly).
    ``mono8`` uses the ITU-R BT.601 luma of the RGB image.
    """
    from sensor_msgs.msg import Image

    rgb = np.asarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be (H, W, 3), got {rgb.shape}")
    enc = encoding.lower()
    if enc == "rgb8":
        px = rgb
    elif enc == "bgr8":
        px = rgb[:, :, ::-1]
    elif enc == "rgba8":
        px = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    elif enc == "bgra8":
        px = np.concatenate([rgb[:, :, ::-1], np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    elif enc == "mono8":
        y = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        px = np.clip(np.rint(y), 0, 255).astype(np.uint8)[:, :, None]
    else:
        raise ValueError(f"unsupported encoding {encoding!r}")
    h, w, ch = px.shape
    rows = px.reshape(h, w * ch)
    if row_padding:
        rows = np.concatenate([rows, np.zeros((h, int(row_padding)), np.uint8)], axis=1)
    msg = Image(header=make_header(stamp_ns, frame_id), height=h, width=w, encoding=enc, is_bigendian=0,
                step=int(rows.shape[1]))
    msg.data = np.ascontiguousarray(rows).tobytes()
    return msg


# -- planar scans -------------------------------------------------------------------------------------------------
#: sane |angle_increment| range of a LaserScan (rad). Below 1e-5 rad (628,000 beams per turn) no planar sensor exists
#: and tiny increments only serve to overflow beam indices; above pi the bearing of a beam is ambiguous modulo 2 pi.
#: A negative increment is a legitimate clockwise scan (REP 103: angles counter-clockwise, so the scan runs
#: backwards) and is read as such, never flipped or refused.
ANGLE_INCREMENT_RANGE = (1e-5, math.pi)
#: largest |angle_min| / |angle_max| (rad) accepted: two turns either way (scans reported 0…2 pi or -pi…pi alike).
#: It also bounds a scan's span to 8 pi.
ANGLE_LIMIT = 4.0 * math.pi
#: beam-count tolerance: a scan has B beams with |B - ((angle_max - angle_min) / angle_increment + 1)| <= 1 +
#: BEAM_COUNT_REL_TOL * B (one beam for drivers that give angle_max one step past the last beam, plus float32
#: rounding of the angles).
BEAM_COUNT_REL_TOL = 1e-3
#: default largest fraction of a scan's beams with a finite range outside the scan's own [range_min, range_max].
MAX_INVALID_FRACTION = 0.5


def _check_scan_header(msg) -> None:
    """Finite header values: angle_min, angle_max, angle_increment, range_min, range_max (``non_finite``)."""
    vals = (msg.angle_min, msg.angle_max, msg.angle_increment, msg.range_min, msg.range_max)
    if not all(math.isfinite(v) for v in vals):
        raise ConversionError(DropReason.NON_FINITE, "scan has a non-finite angle_min, angle_max, angle_increment, "
                                                     "range_min or range_max")


def _check_range_limits(msg, what: str = "scan") -> tuple[float, float]:
    """(range_min, range_max) of a scan, finite with 0 <= range_min < range_max (``non_finite``,
    ``bad_range_limits``)."""
    rmin, rmax = float(msg.range_min), float(msg.range_max)
    if not (math.isfinite(rmin) and math.isfinite(rmax)):
        raise ConversionError(DropReason.NON_FINITE, f"{what} has a non-finite range_min or range_max")
    if rmin < 0.0 or rmax <= rmin:
        raise ConversionError(DropReason.BAD_RANGE_LIMITS, f"{what} range limits [{rmin:g}, {rmax:g}] m: need "
                                                           "0 <= range_min < range_max")
    return rmin, rmax


def check_scan_angles(n: int, angle_min: float, angle_max: float, angle_increment: float) -> None:
    """Sanity of a LaserScan's angular grid for ``n`` beams (sensor_msgs/LaserScan, REP 103).

    Beam i lies at ``angle_min + i * angle_increment``; ``angle_max`` is the last beam's angle, so a scan has
    ``(angle_max - angle_min) / angle_increment + 1`` beams (within :data:`BEAM_COUNT_REL_TOL`). An increment of 0
    is accepted for a single beam only (the caller substitutes the model's increment).

    Raises:
        ConversionError: ``non_finite`` (a non-finite angle), ``mismatch`` (increment 0 with more than one beam),
            ``bad_angles`` (|angle_increment| outside :data:`ANGLE_INCREMENT_RANGE`, |angle_min| or |angle_max|
            above :data:`ANGLE_LIMIT`), ``beam_count`` (``n`` disagrees with the angles).
    """
    a0, a1, inc = float(angle_min), float(angle_max), float(angle_increment)
    if not all(math.isfinite(v) for v in (a0, a1, inc)):
        raise ConversionError(DropReason.NON_FINITE, "scan has a non-finite angle_min, angle_max or angle_increment")
    if inc == 0.0:
        if n > 1:
            raise ConversionError(DropReason.MISMATCH, "scan has angle_increment 0")
        return
    lo, hi = ANGLE_INCREMENT_RANGE
    if not lo <= abs(inc) <= hi:
        raise ConversionError(DropReason.BAD_ANGLES, f"scan angle_increment {inc:g} rad: |angle_increment| must lie "
                                                     f"in [{lo:g}, {hi:g}] rad")
    if abs(a0) > ANGLE_LIMIT or abs(a1) > ANGLE_LIMIT:
        raise ConversionError(DropReason.BAD_ANGLES, f"scan angles [{a0:g}, {a1:g}] rad exceed ±{ANGLE_LIMIT:g} rad")
    expected = (a1 - a0) / inc + 1.0  # bounded: |a1 - a0| <= 8 pi and |inc| >= 1e-5
    if abs(n - expected) > 1.0 + BEAM_COUNT_REL_TOL * n:
        raise ConversionError(DropReason.BEAM_COUNT, f"scan has {n} beams, its angles [{a0:g}, {a1:g}] rad at "
                                                     f"{inc:g} rad give {expected:.1f}")


def check_laser_scan(msg) -> None:
    """Every header check :func:`scan_to_ranges` makes, without reading the ranges (e.g. to choose a bag's first
    usable LiDAR message as the data set's beam grid).

    Raises:
        ConversionError: ``non_finite``, ``empty``, ``mismatch`` (increment 0 with more than one beam),
            ``bad_angles``, ``beam_count``, ``bad_range_limits``.
    """
    _check_scan_header(msg)
    if len(msg.ranges) == 0:
        raise ConversionError(DropReason.EMPTY, "scan has no ranges")
    check_scan_angles(len(msg.ranges), msg.angle_min, msg.angle_max, msg.angle_increment)
    _check_range_limits(msg)


def _invalid_to_nan(ranges: np.ndarray, range_min: float, range_max: float, max_invalid: float,
                    what: str = "scan") -> tuple[np.ndarray, np.ndarray]:
    """(copy with finite ranges outside [range_min, range_max] set to NaN, mask of those beams).

    Such a reading contradicts the sensor's own limits; REP 117 tells consumers to discard it, so it becomes NaN
    (an erroneous reading, which preprocessing treats as no return). ±inf and NaN are kept (REP 117 meanings).

    Raises:
        ConversionError: ``too_many_invalid`` when more than ``max_invalid`` of the beams are such readings.
    """
    r = np.array(ranges, dtype=np.float32, copy=True)
    with np.errstate(invalid="ignore"):
        bad = np.isfinite(r) & ((r < np.float32(range_min)) | (r > np.float32(range_max)))
    frac = float(bad.mean()) if r.size else 0.0
    if frac > max_invalid:
        raise ConversionError(DropReason.TOO_MANY_INVALID, f"{what} has {frac:.0%} of its beams outside its own "
                                                           f"range limits [{range_min:g}, {range_max:g}] m "
                                                           f"(limit {max_invalid:.0%})")
    r[bad] = np.nan
    return r, bad


def resample_scan(ranges: np.ndarray, angle_min: float, angle_increment: float, cfg: Mapping) -> np.ndarray:
    """Planar scan on any angular grid → the bundle's grid (``cfg``: beams, angle_min, angle_increment).

    Each target beam takes the range of the nearest source beam (angles compared modulo 2π, so a 0…2π scan serves a
    −120°…+120° model); target beams outside the source's coverage get NaN (unobserved). A scan already on the
    target grid is returned unchanged. A negative ``angle_increment`` is a clockwise scan. Beam positions are computed
    in float64 and clipped to the scan before any integer cast, so no increment can overflow an index.

    Args:
        ranges: float (N,) metres.
        angle_min, angle_increment: the source grid (rad); ``angle_increment`` finite and non-zero.

    Returns:
        float32 (beams,).

    Raises:
        ConversionError: ``bad_angles`` for a non-finite or zero ``angle_increment`` or non-finite ``angle_min``.
    """
    r = np.asarray(ranges, dtype=np.float32)
    n = r.shape[0]
    beams = int(cfg["beams"])
    b0, db = float(cfg["angle_min"]), float(cfg["angle_increment"])
    if not (math.isfinite(angle_increment) and math.isfinite(angle_min)) or angle_increment == 0.0:
        raise ConversionError(DropReason.BAD_ANGLES, f"cannot resample a scan with angle_min {angle_min:g}, "
                                                     f"angle_increment {angle_increment:g}")
    if n == beams and abs(angle_min - b0) < 0.25 * abs(db) and abs(angle_increment - db) * beams < 0.25 * abs(db):
        return r
    step = abs(angle_increment)
    theta = b0 + db * np.arange(beams, dtype=np.float64)
    t = np.mod((theta - angle_min) * math.copysign(1.0, angle_increment), TWO_PI)  # distance along the scan
    # t / step is computed in float64 (at worst +inf for a denormal step) and clipped to n (one past the last
    # beam) before the integer cast
    with np.errstate(over="ignore"):
        idx = np.minimum(np.rint(t / step), float(n)).astype(np.int64)
    full_circle = step * n >= TWO_PI - 0.5 * step
    if full_circle:
        idx %= n
        valid = np.ones(beams, bool)
    else:
        before_start = (TWO_PI - t) <= 0.5 * step  # just before the first beam, within half a step
        idx[before_start] = 0
        valid = before_start | (idx <= n - 1)
    out = np.full(beams, np.nan, np.float32)
    out[valid] = r[idx[valid]]
    return out


def scan_to_ranges(msg, cfg: Mapping, max_invalid: float = MAX_INVALID_FRACTION) -> np.ndarray:
    """LiDAR sensor_msgs/LaserScan → float32 ranges (B,) on the bundle's grid (see :func:`resample_scan`).

    Checks, in this order: finite header, beams present, the angular grid (:func:`check_scan_angles`: sane
    increment and angles, beam count consistent with them; a negative increment is a clockwise scan), range limits
    (0 <= range_min < range_max), then the ranges (REP 117): ``+inf`` (no return) and ``-inf`` (too close) are kept, a
    finite range outside the scan's own [range_min, range_max] becomes NaN (erroneous, treated as no return by
    preprocessing), and more than ``max_invalid`` of such beams refuse the scan.

    Raises:
        ConversionError: ``non_finite`` (non-finite angles or range limits; or no beam with a finite range and
            some NaN), ``empty`` (no beams), ``mismatch`` (zero angle increment with more than one beam, or no finite
            range within the model's field of view), ``bad_angles``, ``beam_count`` (see
            :func:`check_scan_angles`), ``bad_range_limits``, ``too_many_invalid``, ``no_return`` when every beam is
            ±inf (nothing observed).
    """
    check_laser_scan(msg)
    ranges = np.frombuffer(msg.ranges, dtype=np.float32)
    rmin, rmax = float(msg.range_min), float(msg.range_max)
    ranges, _ = _invalid_to_nan(ranges, rmin, rmax, max_invalid)
    inc = float(msg.angle_increment) if msg.angle_increment != 0.0 else float(cfg["angle_increment"])
    if not np.any(np.isfinite(ranges)):
        if np.any(np.isnan(ranges)):
            raise ConversionError(DropReason.NON_FINITE, "scan has no finite range (NaN: erroneous readings)")
        raise ConversionError(DropReason.NO_RETURN, "scan has no finite range (nothing observed)")
    out = resample_scan(ranges, float(msg.angle_min), inc, cfg)
    if not np.any(np.isfinite(out)):
        raise ConversionError(DropReason.MISMATCH, "scan does not cover the model's field of view")
    return out


def reflectance_to_array(msg, beams: int, max_invalid: float = MAX_INVALID_FRACTION) -> np.ndarray:
    """Few-beam reflectance sensor_msgs/LaserScan (ranges + intensities) → float32 (K, 2) (range, intensity).

    The beams are read by index (beam k of the message is sensor k of the model); the angles are not used. Range
    limits must be finite with 0 <= range_min < range_max. A beam whose finite range lies outside the scan's own
    [range_min, range_max] (e.g. negative) is no return: range NaN (erroneous, REP 117; preprocessing reads it as
    range_max) and intensity 0; more than ``max_invalid`` of such beams refuse the scan. ``+inf``, ``-inf`` and NaN
    ranges keep their REP 117 meanings.

    Raises:
        ConversionError: ``empty`` (no beams), ``mismatch`` (K differs from ``beams`` or intensities missing / of
            another length), ``non_finite`` (non-finite range limits, non-finite or negative intensities),
            ``bad_range_limits``, ``too_many_invalid``, ``no_return`` when no beam has a return (every range +inf or
            erroneous: a ring that sees nothing has observed no object).
    """
    n = len(msg.ranges)
    if n == 0:
        raise ConversionError(DropReason.EMPTY, "reflectance scan has no ranges")
    if n != int(beams):
        raise ConversionError(DropReason.MISMATCH, f"reflectance scan has {n} beams, the model expects {beams}")
    if len(msg.intensities) != n:
        raise ConversionError(DropReason.MISMATCH, f"reflectance scan has {len(msg.intensities)} intensities for {n} ranges")
    rmin, rmax = _check_range_limits(msg, "reflectance scan")
    r = np.frombuffer(msg.ranges, dtype=np.float32)
    i = np.array(np.frombuffer(msg.intensities, dtype=np.float32))
    if not np.all(np.isfinite(i)) or np.any(i < 0):
        raise ConversionError(DropReason.NON_FINITE, "reflectance intensities must be finite and non-negative")
    r, bad = _invalid_to_nan(r, rmin, rmax, max_invalid, "reflectance scan")
    if not np.any(np.isfinite(r) | (r == -np.inf)):  # -inf: something closer than range_min (REP 117)
        raise ConversionError(DropReason.NO_RETURN, "reflectance scan has no return (nothing observed)")
    i[bad] = 0.0
    return np.stack([r, i], axis=1)


def ranges_to_scan(ranges: np.ndarray, cfg: Mapping, stamp_ns: int = 0, frame_id: str = "laser",
                   intensities: np.ndarray | None = None, scan_time: float = 0.1):
    """float ranges (B,) on the grid of ``cfg`` (beams, angle_min, angle_increment, range_min, range_max) → LaserScan.

    ``cfg`` may omit ``angle_min``/``angle_increment`` (then the beams are spread evenly over a full circle).
    """
    from sensor_msgs.msg import LaserScan

    r = np.asarray(ranges, dtype=np.float32).ravel()
    n = r.size
    inc = float(cfg.get("angle_increment", TWO_PI / max(n, 1)))
    a0 = float(cfg.get("angle_min", -math.pi))
    msg = LaserScan(header=make_header(stamp_ns, frame_id), angle_min=a0, angle_max=a0 + inc * max(n - 1, 0),
                    angle_increment=inc, time_increment=0.0, scan_time=float(scan_time),
                    range_min=float(cfg.get("range_min", 0.0)), range_max=float(cfg["range_max"]))
    msg.ranges = r
    if intensities is not None:
        msg.intensities = np.asarray(intensities, dtype=np.float32).ravel()
    return msg


# -- point clouds -------------------------------------------------------------------------------------------------
def pointcloud2_to_xyz(msg) -> np.ndarray:
    """sensor_msgs/PointCloud2 → float32 (N, 3) x, y, z (all points, non-finite ones included).

    Reads the fields with numpy: any numeric x/y/z field type (sensor_msgs/PointField datatypes 1-8), either byte
    order, padded points (``point_step``) and padded rows (``row_step`` > ``point_step`` · width). This reader is used
    for every cloud; ``sensor_msgs_py.point_cloud2.read_points`` is never called (it ignores ``row_step`` and
    misreads clouds with padded rows).

    Raises:
        ConversionError: ``no_xyz`` (a field x, y or z is missing), ``empty`` (no points), ``truncated`` (``data``
            shorter than the declared layout, or fields beyond ``point_step``).

    Memory use is proportional to the points read (``point_step`` · width · height), whatever ``row_step`` claims.
    """
    fields = {f.name: f for f in msg.fields}
    missing = [c for c in "xyz" if c not in fields]
    if missing:
        raise ConversionError(DropReason.NO_XYZ, f"point cloud has no field(s) {', '.join(missing)}")
    h, w = int(msg.height), int(msg.width)
    n = h * w
    if n == 0:
        raise ConversionError(DropReason.EMPTY, "point cloud has no points")
    ps, rs = int(msg.point_step), int(msg.row_step)
    endian = ">" if msg.is_bigendian else "<"
    for c in "xyz":
        f = fields[c]
        if f.datatype not in _PF_DTYPES:
            raise ConversionError(DropReason.NO_XYZ, f"point cloud field {c} has unknown datatype {f.datatype}")
        if f.offset + np.dtype(_PF_DTYPES[f.datatype]).itemsize > ps:
            raise ConversionError(DropReason.TRUNCATED, f"point cloud field {c} lies beyond point_step {ps}")
    if rs < ps * w:
        raise ConversionError(DropReason.TRUNCATED, f"point cloud row_step {rs} < point_step x width = {ps * w}")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size < rs * (h - 1) + ps * w:
        raise ConversionError(DropReason.TRUNCATED, f"point cloud data has {buf.size} B, layout needs {rs * h} B")
    dtype = np.dtype({"names": ["x", "y", "z"],
                      "formats": [endian + _PF_DTYPES[fields[c].datatype] for c in "xyz"],
                      "offsets": [fields[c].offset for c in "xyz"], "itemsize": ps})
    # a strided view of the rows' points (in bounds: checked above), copied to (h, ps * w): memory follows the points,
    # never row_step (a hostile row_step of 2^32 - 1 padded a copy to 8 GiB before)
    rows = np.lib.stride_tricks.as_strided(buf, (h, ps * w), (rs, 1), writeable=False)
    pts = np.ascontiguousarray(rows).view(dtype).reshape(-1)
    return np.stack([pts["x"], pts["y"], pts["z"]], axis=1).astype(np.float32, copy=False)


def xyz_to_scan(points: np.ndarray, cfg: Mapping, z_min: float = -math.inf, z_max: float = math.inf) -> np.ndarray:
    """Points (N, 3) in the sensor frame → planar ranges (B,) on the bundle's grid (``cfg``).

    Keeps finite points with ``z_min ≤ z ≤ z_max`` and a planar range in ``[range_min, range_max]``; each beam takes
    the nearest point whose bearing rounds to it; beams without a point are ``+inf`` (no return, REP 117).

    Raises:
        ConversionError: ``no_return`` when no point qualifies.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    beams = int(cfg["beams"])
    b0, db = float(cfg["angle_min"]), float(cfg["angle_increment"])
    rmin, rmax = float(cfg.get("range_min", 0.0)), float(cfg["range_max"])
    ok = np.all(np.isfinite(p), axis=1) & (p[:, 2] >= z_min) & (p[:, 2] <= z_max)
    p = p[ok]
    rng = np.hypot(p[:, 0], p[:, 1])
    ang = np.arctan2(p[:, 1], p[:, 0])
    ok = (rng >= rmin) & (rng <= rmax)
    rng, ang = rng[ok], ang[ok]
    idx = np.floor(np.mod(ang - b0 + 0.5 * db, TWO_PI) / db).astype(np.int64)
    ok = (idx >= 0) & (idx < beams)
    out = np.full(beams, np.inf, np.float64)
    np.minimum.at(out, idx[ok], rng[ok])
    if not np.any(np.isfinite(out)):
        raise ConversionError(DropReason.NO_RETURN, "point cloud has no finite point within range and height band")
    return out.astype(np.float32)


def xyz_to_pointcloud2(points: np.ndarray, stamp_ns: int = 0, frame_id: str = "laser"):
    """float (N, 3) → unorganised sensor_msgs/PointCloud2 with float32 fields x, y, z (little endian)."""
    from sensor_msgs.msg import PointCloud2, PointField

    p = np.ascontiguousarray(np.asarray(points, dtype=np.float32).reshape(-1, 3))
    fields = [PointField(name=c, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, c in enumerate("xyz")]
    msg = PointCloud2(header=make_header(stamp_ns, frame_id), height=1, width=p.shape[0], fields=fields,
                      is_bigendian=False, point_step=12, row_step=12 * p.shape[0], is_dense=bool(np.isfinite(p).all()))
    msg.data = p.astype("<f4").tobytes()
    return msg


def scan_to_points(ranges: np.ndarray, angle_min: float, angle_increment: float) -> np.ndarray:
    """Planar ranges → (N, 3) points in the sensor plane (z = 0); non-finite ranges give non-finite points."""
    r = np.asarray(ranges, dtype=np.float64).ravel()
    a = angle_min + angle_increment * np.arange(r.size)
    with np.errstate(invalid="ignore"):
        return np.stack([r * np.cos(a), r * np.sin(a), np.zeros_like(r)], axis=1).astype(np.float32)


# -- latent embeddings --------------------------------------------------------------------------------------------
@dataclass
class LatentData:
    """The content of a LatentEmbedding message, as numpy and plain Python values."""

    agent_id: str
    target_id: str
    model_id: str
    stamp_ns: int
    modalities: tuple
    modality_stamps_ns: tuple
    modality_sources: tuple
    contributors: tuple
    mean: np.ndarray
    log_variance: np.ndarray
    frame_id: str = ""
    #: format 3: start stamp (int ns) of the publisher's process (0: unknown, format 2)
    incarnation: int = 0
    #: format 3: per slot (same order as ``modalities``), the start stamp (int ns) of the source's process (0: unknown)
    modality_source_incarnations: tuple = ()
    #: format 3 (docs/formats.md): provenance per contribution, parallel tuples (modality, source agent, stamp
    #: ns); empty for a format-2 message (each slot is then the one observation its stamp and source name)
    contribution_modalities: tuple = ()
    contribution_sources: tuple = ()
    contribution_stamps_ns: tuple = ()
    #: format 3: float32 (len(modalities), D*) accumulated β-VAE feature and precision per slot, in the order of
    #: ``modalities`` (a NaN row: that slot holds none), or None when not sent
    slot_features: np.ndarray | None = None
    slot_precisions: np.ndarray | None = None
    #: format 4: float32 (len(modalities), C) class evidence per slot (summed unimodal class log-posteriors, a NaN
    #: row: none), in the order of ``modalities``, or None when not sent
    slot_class_evidence: np.ndarray | None = None


def _class_evidence(msg, mods: tuple, num_classes: int | None):
    """The format-4 ``slot_class_evidence`` of a LatentEmbedding, validated: None when empty / absent."""
    ev = np.asarray(getattr(msg, "slot_class_evidence", ()) or (), np.float32).reshape(-1)
    if not ev.size:
        return None
    per = num_classes if num_classes is not None else ev.size // len(mods)
    if per < 1 or ev.size != len(mods) * per:
        raise ConversionError(DropReason.MISMATCH, f"latent has {ev.size} slot class-evidence values for "
                                                   f"{len(mods)} slots of {num_classes} classes")
    ev = ev.reshape(len(mods), per)
    if np.isinf(ev).any():
        raise ConversionError(DropReason.NON_FINITE, "latent slot class evidence is infinite")
    return ev


def _contributions(msg, mods: tuple, stamps: tuple, sources: tuple, feature_dim: int | None):
    """The format-3 fields of a LatentEmbedding, validated (see :func:`latent_from_msg`)."""
    cm = tuple(getattr(msg, "contribution_modalities", ()) or ())
    cs = tuple(getattr(msg, "contribution_sources", ()) or ())
    ct = tuple(stamp_to_ns(t) for t in (getattr(msg, "contribution_stamps", ()) or ()))
    if not (len(cm) == len(cs) == len(ct)):
        raise ConversionError(DropReason.MISMATCH, f"latent has {len(cm)}/{len(cs)}/{len(ct)} contribution "
                                                   "modalities/sources/stamps")
    if cm:
        bad = sorted(set(cm).difference(mods))
        if bad:
            raise ConversionError(DropReason.MISMATCH, f"latent lists contributions of modalities {bad} it holds "
                                                       "no slot for")
        for m, t, src in zip(mods, stamps, sources):
            mine = [(a, s) for cmod, a, s in zip(cm, cs, ct) if cmod == m]
            if not mine or max(s for _, s in mine) != t or len(set(mine)) != len(mine):
                raise ConversionError(DropReason.MISMATCH, f"latent's {m} contributions do not end at its slot stamp "
                                                           "or repeat one")
    feats = precs = None
    sf = np.asarray(getattr(msg, "slot_features", ()) or (), np.float32).reshape(-1)
    sp = np.asarray(getattr(msg, "slot_precisions", ()) or (), np.float32).reshape(-1)
    if sf.size or sp.size:
        if feature_dim is None or sf.size != len(mods) * feature_dim or sp.size != sf.size:
            raise ConversionError(DropReason.MISMATCH, f"latent has {sf.size}/{sp.size} slot feature/precision "
                                                       f"values for {len(mods)} slots of D*={feature_dim}")
        feats, precs = sf.reshape(len(mods), -1), sp.reshape(len(mods), -1)
        with np.errstate(invalid="ignore"):
            if np.isinf(feats).any() or np.isinf(precs).any() or (precs <= 0).any():
                raise ConversionError(DropReason.NON_FINITE, "latent slot features / precisions are infinite or "
                                                             "not positive")
    return cm, cs, ct, feats, precs


def latent_from_msg(msg, modality_order: Sequence[str], latent_dim: int,
                    feature_dim: int | None = None, num_classes: int | None = None) -> LatentData:
    """m2vae_fusion_msgs/LatentEmbedding (format 2, 3 or 4) → :class:`LatentData`, validated against the bundle.

    Format 4 adds ``slot_class_evidence``: empty or ``len(modalities) · num_classes`` values (a NaN row: none for that
    slot; ``num_classes`` None: any whole number per slot).

    Format 3 fields (docs/formats.md): the contribution lists must have one length, name only modalities the
    latent holds, and per slot end at the slot's stamp without repeats; ``slot_features`` / ``slot_precisions`` are
    empty or hold ``len(modalities) · feature_dim`` values each (a NaN row: no accumulated feature for that slot).

    Raises:
        ConversionError: ``empty`` (no agent, target or modality), ``mismatch`` (wrong vector size, unknown or
            repeated modality, per-slot lists of another length, inconsistent contributions), ``non_finite``
            (NaN / inf in mean or log-variance, inf or non-positive slot precisions).

    ``incarnation`` and ``modality_source_incarnations`` (format 3) are read as 0 (unknown) where absent or empty
    (format 2).
    """
    if not msg.agent_id or not msg.target_id:
        raise ConversionError(DropReason.EMPTY, "latent without agent_id or target_id")
    mods = tuple(msg.modalities)
    if not mods:
        raise ConversionError(DropReason.EMPTY, "latent without modalities")
    unknown = [m for m in mods if m not in modality_order]
    if unknown or len(set(mods)) != len(mods):
        raise ConversionError(DropReason.MISMATCH, f"latent modalities {list(mods)} are not distinct members of "
                                          f"{list(modality_order)}")
    if len(msg.modality_stamps) != len(mods):
        raise ConversionError(DropReason.MISMATCH, f"latent has {len(msg.modality_stamps)} modality stamps for "
                                          f"{len(mods)} modalities")
    sources = tuple(msg.modality_sources)
    if sources and len(sources) != len(mods):
        raise ConversionError(DropReason.MISMATCH, f"latent has {len(sources)} modality sources for {len(mods)} modalities")
    incs = tuple(int(i) for i in getattr(msg, "modality_source_incarnations", ()))  # absent before format 3
    if incs and len(incs) != len(mods):
        raise ConversionError(DropReason.MISMATCH, f"latent has {len(incs)} modality source incarnations for "
                                                   f"{len(mods)} modalities")
    if len(msg.mean) != latent_dim or len(msg.log_variance) != latent_dim:
        raise ConversionError(DropReason.MISMATCH, f"latent sizes {len(msg.mean)}/{len(msg.log_variance)}, "
                                          f"the model's latent_dim is {latent_dim}")
    mean = np.array(msg.mean, dtype=np.float32)
    logvar = np.array(msg.log_variance, dtype=np.float32)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(logvar))):
        raise ConversionError(DropReason.NON_FINITE, "latent mean or log-variance is not finite")
    stamps = tuple(stamp_to_ns(s) for s in msg.modality_stamps)
    cm, cs, ct, feats, precs = _contributions(msg, mods, stamps, sources or tuple(msg.agent_id for _ in mods),
                                              feature_dim)
    evid = _class_evidence(msg, mods, num_classes)
    # canonical slot order
    order = sorted(range(len(mods)), key=lambda i: list(modality_order).index(mods[i]))
    return LatentData(
        contribution_modalities=cm, contribution_sources=cs, contribution_stamps_ns=ct,
        slot_features=None if feats is None else feats[order], slot_precisions=None if precs is None else precs[order],
        slot_class_evidence=None if evid is None else evid[order],
        agent_id=msg.agent_id, target_id=msg.target_id, model_id=msg.model_id,
        stamp_ns=stamp_to_ns(msg.header.stamp), frame_id=msg.header.frame_id,
        modalities=tuple(mods[i] for i in order), modality_stamps_ns=tuple(stamps[i] for i in order),
        modality_sources=tuple(sources[i] for i in order) if sources else tuple(msg.agent_id for _ in order),
        contributors=tuple(sorted(set(msg.contributors) | {msg.agent_id})), mean=mean, log_variance=logvar,
        incarnation=int(getattr(msg, "incarnation", 0)),
        modality_source_incarnations=tuple(incs[i] for i in order) if incs else tuple(0 for _ in order))


def latent_to_msg(data: LatentData):
    """:class:`LatentData` → m2vae_fusion_msgs/LatentEmbedding."""
    from m2vae_fusion_msgs.msg import LatentEmbedding

    msg = LatentEmbedding(header=make_header(data.stamp_ns, data.frame_id), agent_id=data.agent_id,
                          target_id=data.target_id, model_id=data.model_id, modalities=list(data.modalities),
                          modality_stamps=[ns_to_stamp(s) for s in data.modality_stamps_ns],
                          modality_sources=list(data.modality_sources), contributors=list(data.contributors))
    msg.incarnation = int(data.incarnation)
    msg.modality_source_incarnations = [int(i) for i in data.modality_source_incarnations]
    msg.mean = np.asarray(data.mean, dtype=np.float32).ravel()
    msg.log_variance = np.asarray(data.log_variance, dtype=np.float32).ravel()
    if hasattr(msg, "contribution_modalities"):  # format 3 interfaces
        msg.contribution_modalities = list(data.contribution_modalities)
        msg.contribution_sources = list(data.contribution_sources)
        msg.contribution_stamps = [ns_to_stamp(s) for s in data.contribution_stamps_ns]
        if data.slot_features is not None and data.slot_precisions is not None:
            msg.slot_features = np.asarray(data.slot_features, dtype=np.float32).ravel()
            msg.slot_precisions = np.asarray(data.slot_precisions, dtype=np.float32).ravel()
    if hasattr(msg, "slot_class_evidence") and data.slot_class_evidence is not None:  # format 4 interfaces
        msg.slot_class_evidence = np.asarray(data.slot_class_evidence, dtype=np.float32).ravel()
    return msg


def class_belief_msg(data: LatentData, class_names: Sequence[str], probabilities: np.ndarray):
    """Class-belief head output for a latent → m2vae_fusion_msgs/ClassBelief (same header, ids and modalities)."""
    from m2vae_fusion_msgs.msg import ClassBelief

    msg = ClassBelief(header=make_header(data.stamp_ns, data.frame_id), agent_id=data.agent_id,
                      target_id=data.target_id, model_id=data.model_id, modalities=list(data.modalities),
                      contributors=list(data.contributors), class_names=list(class_names))
    msg.probabilities = np.asarray(probabilities, dtype=np.float32).ravel()
    return msg


def target_msg(target_id: str, stamp_ns: int, frame_id: str = "map", position: Sequence[float] | None = None):
    """m2vae_fusion_msgs/TargetOfInterest; ``position`` (x, y, z) is optional."""
    from geometry_msgs.msg import Point
    from m2vae_fusion_msgs.msg import TargetOfInterest

    msg = TargetOfInterest(header=make_header(stamp_ns, frame_id), target_id=target_id,
                           has_position=position is not None)
    if position is not None:
        msg.position = Point(x=float(position[0]), y=float(position[1]), z=float(position[2]))
    return msg
