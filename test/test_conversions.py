"""Message <-> numpy conversion (m2vae_fusion.core.messages) and node statistics, without spinning a node.

Images: every colour encoding rosbags-image decodes, checked against pixels computed here (BT.601 YUV, flat Bayer
fields, 16-bit scaling, both byte orders), with row padding; colour-less encodings refused with their own reason.
Point clouds: the own reader with and without a (fake, faithfully faulty) ``sensor_msgs_py`` importable."""
import importlib.util
import math
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest

import rclpy  # noqa: E402,F401
import m2vae_fusion_msgs.msg  # noqa: E402,F401

from rosbags.image import image_to_cvimage  # noqa: E402
from sensor_msgs.msg import Image, LaserScan, PointCloud2, PointField  # noqa: E402

from m2vae_fusion.core import messages as conv  # noqa: E402
from m2vae_fusion.core.preprocess import DEFAULT_CONFIGS  # noqa: E402
from m2vae_fusion.core.reasons import DropReason  # noqa: E402
from m2vae_fusion.ros.stats import NodeStats, diagnostic_array, status_values  # noqa: E402

LIDAR = DEFAULT_CONFIGS["lidar"]
RNG = np.random.default_rng(0)


def _reason(exc_info):
    reason = exc_info.value.reason
    assert isinstance(reason, DropReason)  # typed, never message text
    return reason


def _raw_image(encoding, pixels, pad=0, big=False, garbage=0):
    """sensor_msgs/Image of ``pixels`` (H, W[, C], any dtype) in ``encoding`` with ``pad`` bytes after each row,
    filled with ``garbage``."""
    px = np.asarray(pixels)
    px = px.astype(px.dtype.newbyteorder(">" if big else "<"))
    h, w = px.shape[:2]
    rows = np.frombuffer(px.tobytes(), np.uint8).reshape(h, -1)
    rows = np.concatenate([rows, np.full((h, pad), garbage, np.uint8)], axis=1)
    return Image(height=h, width=w, encoding=encoding, is_bigendian=int(big), step=rows.shape[1],
                 data=rows.tobytes())


# -- camera -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("enc", ["rgb8", "bgr8", "rgba8", "bgra8"])
@pytest.mark.parametrize("shape,pad", [((64, 64), 0), ((3, 7), 5), ((1, 1), 0), ((48, 64), 3)])
def test_colour_encodings_round_trip_with_row_padding(enc, shape, pad):
    rgb = RNG.integers(0, 256, shape + (3,), dtype=np.uint8)
    msg = conv.rgb_to_image(rgb, enc, stamp_ns=5, row_padding=pad)
    assert msg.step == shape[1] * conv.IMAGE_ENCODINGS[enc] + pad
    out = conv.image_to_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == shape + (3,)
    np.testing.assert_array_equal(out, rgb)


def test_padding_bytes_are_not_read_as_pixels():
    rgb = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    msg = conv.rgb_to_image(rgb, "bgr8", row_padding=3)
    raw = bytearray(msg.data)
    for r in range(4):  # garbage in the padding
        raw[r * msg.step + 15: (r + 1) * msg.step] = b"\xff\xee\xdd"
    msg.data = bytes(raw)
    np.testing.assert_array_equal(conv.image_to_rgb(msg), rgb)


def test_the_library_reads_packed_rows_only():
    """rosbags-image ignores ``step``: on the packed rows this module hands it, it is exact; on the padded message
    itself it would misread, which is why the padding is dropped first."""
    rgb = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    padded = _raw_image("rgb8", rgb, pad=4, garbage=255)
    packed = _raw_image("rgb8", rgb)
    np.testing.assert_array_equal(image_to_cvimage(packed, "rgb8"), rgb)
    assert not np.array_equal(image_to_cvimage(padded, "rgb8"), rgb)
    np.testing.assert_array_equal(conv.image_to_rgb(padded), rgb)


def test_bgr_channel_order():
    msg = Image(height=1, width=1, encoding="bgr8", step=3, data=bytes([1, 2, 3]))
    np.testing.assert_array_equal(conv.image_to_rgb(msg)[0, 0], [3, 2, 1])
    msg = Image(height=1, width=1, encoding="bgra8", step=4, data=bytes([1, 2, 3, 4]))
    np.testing.assert_array_equal(conv.image_to_rgb(msg)[0, 0], [3, 2, 1])


def _bt601(y, u, v):
    """ITU-R BT.601 video-range YCbCr → RGB (the conversion OpenCV applies to YUV 4:2:2), rounded to uint8."""
    c, d, e = 1.164 * (y - 16.0), u - 128.0, v - 128.0
    rgb = np.stack([c + 1.596 * e, c - 0.391 * d - 0.813 * e, c + 2.018 * d], axis=-1)
    return np.clip(np.rint(rgb), 0, 255)


@pytest.mark.parametrize("enc,order", [("yuv422", "UYVY"), ("uyvy", "UYVY"), ("yuv422_yuy2", "YUYV"),
                                       ("yuyv", "YUYV")])
@pytest.mark.parametrize("pad", [0, 6])
def test_yuv422_against_bt601(enc, order, pad):
    h, w = 4, 6
    y = RNG.integers(16, 236, (h, w)).astype(np.uint8)
    u = RNG.integers(16, 241, (h, w // 2)).astype(np.uint8)
    v = RNG.integers(16, 241, (h, w // 2)).astype(np.uint8)
    chans = {"U": u, "V": v}
    quads = []
    for k, ch in enumerate(order):  # macro-pixel of 2 px in 4 bytes
        quads.append(chans[ch] if ch in chans else y[:, 0::2] if order.index("Y") == k else y[:, 1::2])
    out = conv.image_to_rgb(_raw_image(enc, np.stack(quads, -1).reshape(h, w, 2), pad=pad, garbage=200))
    want = _bt601(y.astype(float), np.repeat(u, 2, axis=1).astype(float), np.repeat(v, 2, axis=1).astype(float))
    assert out.shape == (h, w, 3)
    assert np.max(np.abs(out.astype(int) - want)) <= 1  # fixed-point rounding in OpenCV


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_mosaics_of_a_flat_colour(pattern, bits):
    colour = np.array([200, 100, 40])
    h, w = 8, 10
    mosaic = np.zeros((h, w), np.uint16 if bits == 16 else np.uint8)
    for (dy, dx), c in zip([(0, 0), (0, 1), (1, 0), (1, 1)], pattern):
        mosaic[dy::2, dx::2] = colour["rgb".index(c)] * (257 if bits == 16 else 1)
    out = conv.image_to_rgb(_raw_image(f"bayer_{pattern}{bits}", mosaic, pad=2, garbage=7, big=(bits == 16)))
    assert out.shape == (h, w, 3)
    np.testing.assert_array_equal(out[2:-2, 2:-2].reshape(-1, 3), np.tile(colour, ((h - 4) * (w - 4), 1)))


@pytest.mark.parametrize("enc", ["rgb16", "bgr16", "rgba16", "bgra16"])
@pytest.mark.parametrize("big", [False, True])
def test_16_bit_colour_both_byte_orders(enc, big):
    rgb = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    px = rgb.astype(np.uint16) * 257  # full-scale 16 bit: exactly rgb after scaling
    if enc.startswith("bgr"):
        px = px[..., ::-1]
    if "a" in enc[3:]:
        px = np.concatenate([px, np.full((5, 7, 1), 65535, np.uint16)], axis=2)
    np.testing.assert_array_equal(conv.image_to_rgb(_raw_image(enc, px, pad=4, big=big)), rgb)


def test_rosbags_messages_read_like_rclpy_messages():
    """A rosbags-deserialised Image (numpy data, plain attributes) gives the same array as the rclpy message."""
    rgb = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    msg = conv.rgb_to_image(rgb, "bgra8", row_padding=2)
    other = SimpleNamespace(height=msg.height, width=msg.width, encoding=msg.encoding, is_bigendian=msg.is_bigendian,
                            step=msg.step, data=np.frombuffer(bytes(msg.data), np.uint8))
    np.testing.assert_array_equal(conv.image_to_rgb(other), conv.image_to_rgb(msg))


@pytest.mark.parametrize("enc,dtype", [("mono8", np.uint8), ("mono16", np.uint16), ("16UC1", np.uint16),
                                       ("32FC1", np.float32), ("8UC1", np.uint8), ("MONO8", np.uint8)])
def test_colourless_images_are_refused_for_the_camera(enc, dtype):
    msg = _raw_image(enc, np.ones((4, 6), dtype), pad=2)
    with pytest.raises(conv.ConversionError) as e:
        conv.image_to_rgb(msg)
    assert _reason(e) is DropReason.COLOURLESS and str(e.value.reason) == "colourless"


@pytest.mark.parametrize("kw,reason", [
    (dict(encoding="jpeg", height=2, width=2, step=4, data=bytes(8)), DropReason.BAD_ENCODING),
    (dict(encoding="8UC3", height=2, width=2, step=6, data=bytes(12)), DropReason.BAD_ENCODING),  # no colour order
    (dict(encoding="nv12", height=2, width=2, step=2, data=bytes(6)), DropReason.BAD_ENCODING),  # misread by the lib
    (dict(encoding="rgb8", height=0, width=4, step=12, data=b""), DropReason.EMPTY),
    (dict(encoding="rgb8", height=4, width=0, step=0, data=b""), DropReason.EMPTY),
    (dict(encoding="rgb8", height=2, width=2, step=6, data=bytes(11)), DropReason.TRUNCATED),
    (dict(encoding="rgb8", height=2, width=2, step=5, data=bytes(10)), DropReason.TRUNCATED),
    (dict(encoding="rgba8", height=2, width=2, step=8, data=bytes(15)), DropReason.TRUNCATED),
    (dict(encoding="rgb16", height=2, width=2, step=12, data=bytes(23)), DropReason.TRUNCATED),
    (dict(encoding="yuv422", height=2, width=3, step=6, data=bytes(12)), DropReason.MISMATCH),  # odd width
])
def test_bad_images(kw, reason):
    with pytest.raises(conv.ConversionError) as e:
        conv.image_to_rgb(Image(**kw))
    assert _reason(e) is reason


def test_conversion_error_reasons_are_typed():
    assert conv.ConversionError("empty", "x").reason is DropReason.EMPTY
    with pytest.raises(ValueError):
        conv.ConversionError("no such reason", "x")


# -- planar scans -------------------------------------------------------------------------------------------------
def test_scan_on_the_model_grid_is_unchanged():
    r = RNG.uniform(0.1, 5, LIDAR["beams"]).astype(np.float32)
    r[::7] = np.inf
    msg = conv.ranges_to_scan(r, LIDAR, stamp_ns=1)
    np.testing.assert_array_equal(conv.scan_to_ranges(msg, LIDAR), r)


def test_full_circle_scan_is_resampled_to_the_model_grid():
    n = 360
    inc = 2 * math.pi / n
    ang = inc * np.arange(n)
    r = (1.0 + 0.5 * np.sin(ang)).astype(np.float32)  # ranges as a smooth function of the angle
    msg = conv.ranges_to_scan(r, {"angle_min": 0.0, "angle_increment": inc, "range_max": 6.0})
    out = conv.scan_to_ranges(msg, LIDAR)
    theta = LIDAR["angle_min"] + LIDAR["angle_increment"] * np.arange(LIDAR["beams"])
    assert out.shape == (LIDAR["beams"],)
    np.testing.assert_allclose(out, 1.0 + 0.5 * np.sin(theta), atol=0.5 * inc + 1e-6)


def test_reversed_and_partial_scans():
    n = 200
    inc = -0.01  # clockwise scan from +1 rad
    r = np.linspace(1, 2, n).astype(np.float32)
    msg = conv.ranges_to_scan(r, {"angle_min": 1.0, "angle_increment": inc, "range_max": 6.0})
    out = conv.scan_to_ranges(msg, LIDAR)
    theta = LIDAR["angle_min"] + LIDAR["angle_increment"] * np.arange(LIDAR["beams"])
    covered = (theta <= 1.0 + 0.005) & (theta >= 1.0 + inc * (n - 1) - 0.005)
    assert np.all(np.isnan(out[~covered])) and np.all(np.isfinite(out[covered]))
    i = np.argmin(np.abs(theta - 0.5))  # 0.5 rad is source beam 50
    assert out[i] == pytest.approx(r[50], abs=1e-3)


@pytest.mark.parametrize("ranges,kw,reason", [
    ([], {}, "empty"),
    ([math.nan] * 10, {}, "non_finite"),
    ([math.inf] * 10, {}, "no_return"),
    ([1.0] * 10, {"angle_increment": math.inf}, "non_finite"),
    ([1.0] * 10, {"range_max": math.nan}, "non_finite"),
    ([1.0] * 10, {"angle_increment": 0.0}, "mismatch"),
    ([1.0] * 10, {"angle_min": 3.0, "angle_max": 3.009, "angle_increment": 0.001}, "mismatch"),  # behind the FOV
])
def test_bad_scans(ranges, kw, reason):
    msg = LaserScan(angle_min=-0.5, angle_max=0.5, angle_increment=0.1, range_min=0.0, range_max=5.0)
    for k, v in kw.items():
        setattr(msg, k, v)
    msg.ranges = np.asarray(ranges, np.float32)
    with pytest.raises(conv.ConversionError) as e:
        conv.scan_to_ranges(msg, LIDAR)
    assert _reason(e) == reason


# hostile scans found from outside (issue 13): each refused with its own reason, never an exception of another type
def _hostile(n=10, **kw):
    """n beams of 1 m at 0.1 rad from -0.5 rad (angle_max consistent), with the fields of ``kw`` set."""
    msg = LaserScan(angle_min=-0.5, angle_max=-0.5 + 0.1 * (n - 1), angle_increment=0.1, range_min=0.0,
                    range_max=5.0)
    msg.ranges = np.full(n, 1.0, np.float32)
    for k, v in kw.items():
        setattr(msg, k, v)
    return msg


@pytest.mark.parametrize("kw,reason", [
    (dict(angle_increment=1e-30), DropReason.BAD_ANGLES),   # overflowed an int64 beam index before (IndexError)
    (dict(angle_increment=-1e-30), DropReason.BAD_ANGLES),
    (dict(angle_increment=1e-45), DropReason.BAD_ANGLES),   # a float32 denormal
    (dict(angle_increment=1e30), DropReason.BAD_ANGLES),    # was fused into beliefs
    (dict(angle_increment=-1e30), DropReason.BAD_ANGLES),
    (dict(angle_increment=4.0), DropReason.BAD_ANGLES),     # beams more than half a turn apart
    (dict(angle_min=1e30, angle_max=1e30), DropReason.BAD_ANGLES),
    (dict(angle_min=-0.5, angle_max=100.0), DropReason.BAD_ANGLES),
    (dict(n=30, angle_max=0.5), DropReason.BEAM_COUNT),  # 30 beams, the angles give 11
    (dict(range_min=-5.0), DropReason.BAD_RANGE_LIMITS),
    (dict(range_min=2.0, range_max=1.0), DropReason.BAD_RANGE_LIMITS),
    (dict(range_min=math.inf), DropReason.NON_FINITE),
    (dict(angle_max=math.nan), DropReason.NON_FINITE),
])
def test_hostile_scan_headers_are_refused(kw, reason):
    msg = _hostile(**kw)
    with pytest.raises(conv.ConversionError) as e:
        conv.scan_to_ranges(msg, LIDAR)
    assert _reason(e) is reason
    with pytest.raises(conv.ConversionError) as e:
        conv.check_laser_scan(msg)  # the header check alone gives the same reason
    assert _reason(e) is reason
    conv.check_laser_scan(_hostile())


def test_beam_count_claiming_240_degrees_is_refused():
    # 5000 beams at the model's increment, angle_max claiming +120° (667 beams): refused, not resampled
    inc = LIDAR["angle_increment"]
    msg = _hostile(n=5000, angle_min=-math.radians(120), angle_max=math.radians(120), angle_increment=inc)
    with pytest.raises(conv.ConversionError) as e:
        conv.scan_to_ranges(msg, LIDAR)
    assert _reason(e) is DropReason.BEAM_COUNT
    # the tolerance: one beam (angle_max one step past the last beam) is accepted, five are not
    for n, ok in [(667, True), (666, True), (668, True), (662, False), (672, False)]:
        msg = _hostile(n=n, angle_min=LIDAR["angle_min"], angle_increment=inc,
                       angle_max=LIDAR["angle_min"] + inc * 666, range_max=5.6)
        if ok:
            assert conv.scan_to_ranges(msg, LIDAR).shape == (LIDAR["beams"],)
        else:
            with pytest.raises(conv.ConversionError) as e:
                conv.scan_to_ranges(msg, LIDAR)
            assert _reason(e) is DropReason.BEAM_COUNT


def test_ranges_outside_the_scan_limits():
    # all -1 m: was fused into beliefs; now more than half the beams contradict range_min
    msg = conv.ranges_to_scan(np.full(LIDAR["beams"], -1.0), LIDAR)
    with pytest.raises(conv.ConversionError) as e:
        conv.scan_to_ranges(msg, LIDAR)
    assert _reason(e) is DropReason.TOO_MANY_INVALID
    # a few invalid beams (below range_min, above range_max) are no return (NaN), the rest is kept
    r = RNG.uniform(0.5, 5, LIDAR["beams"]).astype(np.float32)
    r[:10], r[10:20], r[20:30], r[30:40] = -1.0, 9.0, np.inf, -np.inf
    out = conv.scan_to_ranges(conv.ranges_to_scan(r, LIDAR), LIDAR)
    assert np.all(np.isnan(out[:20]))
    np.testing.assert_array_equal(out[20:], r[20:])  # ±inf keep their REP 117 meaning
    # the limit: exactly half invalid passes, one beam more does not; max_invalid is a parameter
    n = LIDAR["beams"]
    half = np.where(np.arange(n) < n // 2, -1.0, 1.0).astype(np.float32)
    assert np.isnan(conv.scan_to_ranges(conv.ranges_to_scan(half, LIDAR), LIDAR)).sum() == n // 2
    half[n // 2] = -1.0
    with pytest.raises(conv.ConversionError) as e:
        conv.scan_to_ranges(conv.ranges_to_scan(half, LIDAR), LIDAR)
    assert _reason(e) is DropReason.TOO_MANY_INVALID
    with pytest.raises(conv.ConversionError) as e:
        conv.scan_to_ranges(conv.ranges_to_scan(r, LIDAR), LIDAR, max_invalid=0.01)
    assert _reason(e) is DropReason.TOO_MANY_INVALID


def test_resample_never_overflows_an_index():
    r = np.ones(10, np.float32)
    for inc in (1e-30, -1e-30, 1e-45, 5e-324, 1e30, -1e30):
        out = conv.resample_scan(r, -0.5, inc, LIDAR)  # called directly: no header check in front
        assert out.shape == (LIDAR["beams"],) and np.all(np.isnan(out) | (out == 1.0))
    for inc in (0.0, math.nan, math.inf):
        with pytest.raises(conv.ConversionError) as e:
            conv.resample_scan(r, -0.5, inc, LIDAR)
        assert _reason(e) is DropReason.BAD_ANGLES


def test_random_hostile_scans_are_refused_or_give_finite_model_inputs():
    """2,000 scans with header fields and ranges drawn from hostile values (seeded): every one either is refused with
    a ConversionError / PreprocessError or gives a finite model input in [0, 1]; nothing else is raised."""
    from m2vae_fusion.core.preprocess import PreprocessError, preprocess

    rng = np.random.default_rng(13)
    palette = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-30, -1e-30, 1e-5, 0.0063, -0.0063, 0.1, 1.0, math.pi, 4.0, 100.0,
                        1e30, -1e30, 3e38, -3e38, -1.0, 5.6, math.inf, -math.inf, math.nan], np.float64)
    refused = converted = 0
    fields = ("angle_min", "angle_max", "angle_increment", "range_min", "range_max")
    for _ in range(2000):
        n = int(rng.choice([1, 2, 10, 667, 5000]))
        inc = float(rng.choice([-1, 1]) * rng.uniform(0.3, 1.0) * 2 * math.pi / max(n, 10))
        a0 = float(rng.uniform(-math.pi, math.pi))
        msg = LaserScan(angle_min=a0, angle_max=a0 + inc * (n - 1), angle_increment=inc, range_min=0.02,
                        range_max=5.6)
        for f in rng.choice(fields, size=int(rng.choice([0, 0, 1, 2])), replace=False):  # 0-2 hostile fields
            setattr(msg, str(f), float(rng.choice(palette)))
        r = rng.uniform(0.0, 6.0, n)
        k = rng.random(n) < rng.random()
        r[k] = rng.choice(palette, size=int(k.sum()))
        msg.ranges = r.astype(np.float32)
        try:
            x = preprocess("lidar", conv.scan_to_ranges(msg, LIDAR), LIDAR)
        except (conv.ConversionError, PreprocessError):
            refused += 1
            continue
        converted += 1
        assert x.shape == (1, 1, LIDAR["beams"]) and np.all(np.isfinite(x)) and np.all((x >= 0) & (x <= 1))
    print(f"hostile scans: {refused} refused, {converted} converted")
    assert refused > 100 and converted > 100  # both paths exercised


def _nearest_beam_oracle(ranges, a0, inc, cfg):
    """Brute force: every target beam takes the source beam at the smallest angular distance (mod 2π) if it lies
    within half a step of it (or the scan covers the whole circle), else NaN."""
    n = len(ranges)
    src = a0 + inc * np.arange(n)
    theta = cfg["angle_min"] + cfg["angle_increment"] * np.arange(cfg["beams"])
    d = np.abs(np.mod(theta[:, None] - src[None, :] + math.pi, 2 * math.pi) - math.pi)
    k = np.argmin(d, axis=1)
    ok = d[np.arange(len(theta)), k] <= 0.5 * abs(inc) + 1e-12
    if abs(inc) * n >= 2 * math.pi - 0.5 * abs(inc):
        ok[:] = True
    return np.where(ok, np.asarray(ranges, np.float32)[k], np.nan).astype(np.float32)


def test_honest_sim_scans_convert_as_before():
    """Scans of the simulated AMiRo (the sim_world node's writer) on the model grid come back unchanged; on other
    grids (full circle, reversed, partial, off-grid start) they equal the nearest-beam oracle."""
    from m2vae_fusion.sim.world import ObjectSpec, World

    w = World(num_agents=1, seed=3, walls=False, clutter=2)
    try:
        for x, y in [(0.3, 0.1), (-0.6, 0.4), (0.1, -0.7), (-0.4, -0.5)]:
            w.add_object(ObjectSpec("red", "cube", "shiny", 0.06, 0.05), x, y)
        scans, refl = [], []
        for k in range(4):
            w.set_agent_pose(0, 0.2 * k - 0.3, -0.2, 0.7 * k)
            scans.append(w.lidar_scan(0))
            refl.append(w.reflectance_scan(0))
        info, rinfo = w.lidar_info(), w.reflectance_info()
    finally:
        w.close()
    checked = checked_outside = 0
    for r in scans:
        assert np.any(np.isinf(r)) and np.any(np.isfinite(r))  # honest scans with no-return beams
        msg = conv.ranges_to_scan(r, info)
        np.testing.assert_array_equal(conv.scan_to_ranges(msg, LIDAR), r)
        for a0, inc in [(0.0, 2 * math.pi / len(r)), (-math.pi + 1e-3, 2 * math.pi / len(r)), (1.3, -0.0071),
                        (-1.0, 0.0043), (2 * math.pi - 0.2, 0.0023)]:
            msg = conv.ranges_to_scan(r, {"angle_min": a0, "angle_increment": inc, "range_min": 0.02,
                                          "range_max": 5.6})
            want = _nearest_beam_oracle(r, a0, inc, LIDAR)
            if np.any(np.isfinite(want)):
                np.testing.assert_array_equal(conv.scan_to_ranges(msg, LIDAR), want)
            else:  # the objects lie outside the model's field of view on this grid
                with pytest.raises(conv.ConversionError) as e:
                    conv.scan_to_ranges(msg, LIDAR)
                assert _reason(e) is DropReason.MISMATCH
                checked_outside += 1
            checked += 1
    assert checked_outside < checked / 2
    refl_cfg = {"angle_min": 0.0, "angle_increment": 2 * math.pi / rinfo["beams"], "range_min": 0.0,
                "range_max": rinfo["range_max"]}  # as the sim_world node writes it
    for s in refl:
        msg = conv.ranges_to_scan(s[:, 0], refl_cfg, intensities=s[:, 1])
        np.testing.assert_array_equal(conv.reflectance_to_array(msg, rinfo["beams"]), s)


def test_reflectance_scans():
    r = np.array([0.1, np.inf, 0.3, 0.2, np.inf, 0.5, 0.6, 0.7], np.float32)
    i = np.linspace(0, 1, 8).astype(np.float32)
    msg = conv.ranges_to_scan(r, {"range_max": 0.8}, intensities=i)
    out = conv.reflectance_to_array(msg, 8)
    assert out.shape == (8, 2)
    np.testing.assert_array_equal(out[:, 0], r)
    np.testing.assert_array_equal(out[:, 1], i)
    for rr, ii, reason in [(r[:5], i[:5], "mismatch"), (r, None, "mismatch"), (r, i[:7], "mismatch"),
                           (r, np.where(np.arange(8) == 3, np.inf, i), "non_finite"),
                           (r, np.where(np.arange(8) == 3, np.nan, i), "non_finite"),
                           (r, -i - 1, "non_finite"), (r[:0], i[:0], "empty"),
                           (np.full(8, -1.0), i, "too_many_invalid"),  # negative ranges: were fused into beliefs
                           (np.full(8, 5.0), i, "too_many_invalid"),   # beyond range_max
                           (np.where(np.arange(8) < 5, -0.2, r), i, "too_many_invalid"),
                           (np.full(8, np.inf), i, "no_return")]:      # the ring sees nothing: no object observed
        with pytest.raises(conv.ConversionError) as e:
            conv.reflectance_to_array(conv.ranges_to_scan(rr, {"range_max": 0.8}, intensities=ii), 8)
        assert _reason(e) == reason
    # up to half of the beams out of limits: no return (range NaN, intensity 0), the others unchanged
    rr = np.where(np.arange(8) % 2 == 0, -0.3, r).astype(np.float32)
    out = conv.reflectance_to_array(conv.ranges_to_scan(rr, {"range_max": 0.8}, intensities=i), 8)
    assert np.all(np.isnan(out[::2, 0])) and np.all(out[::2, 1] == 0)
    np.testing.assert_array_equal(out[1::2], np.stack([r, i], axis=1)[1::2])
    touching = conv.reflectance_to_array(conv.ranges_to_scan(np.full(8, -np.inf), {"range_max": 0.8}, intensities=i), 8)
    assert np.all(touching[:, 0] == -np.inf)  # closer than range_min is a return (REP 117), not "nothing observed"
    for kw, reason in [(dict(range_min=-1.0), DropReason.BAD_RANGE_LIMITS), (dict(range_max=0.0),
                       DropReason.BAD_RANGE_LIMITS), (dict(range_max=math.nan), DropReason.NON_FINITE)]:
        msg = conv.ranges_to_scan(r, {"range_max": 0.8}, intensities=i)
        for k, v in kw.items():
            setattr(msg, k, v)
        with pytest.raises(conv.ConversionError) as e:
            conv.reflectance_to_array(msg, 8)
        assert _reason(e) is reason


# -- point clouds -------------------------------------------------------------------------------------------------
def test_cloud_round_trip_and_planar_scan():
    r = RNG.uniform(0.2, 5, LIDAR["beams"]).astype(np.float32)
    r[100:150] = np.inf
    pts = conv.scan_to_points(r, LIDAR["angle_min"], LIDAR["angle_increment"])
    msg = conv.xyz_to_pointcloud2(pts, stamp_ns=3, frame_id="laser")
    back = conv.pointcloud2_to_xyz(msg)
    np.testing.assert_array_equal(back, pts)
    scan = conv.xyz_to_scan(back, LIDAR, -0.1, 0.1)
    np.testing.assert_allclose(scan, r, rtol=1e-5)  # inf stays inf: no point in those beams


def test_cloud_height_band_and_range_limits():
    pts = np.array([[1.0, 0.0, 0.0], [0.5, 0.0, 0.5], [0.0, 2.0, 0.0], [0.0, -9.0, 0.0], [np.nan, 0, 0]], np.float32)
    scan = conv.xyz_to_scan(pts, LIDAR, -0.1, 0.1)
    theta = LIDAR["angle_min"] + LIDAR["angle_increment"] * np.arange(LIDAR["beams"])
    assert scan[np.argmin(np.abs(theta))] == pytest.approx(1.0)  # the point above the band is ignored
    assert scan[np.argmin(np.abs(theta - math.pi / 2))] == pytest.approx(2.0)
    assert np.isfinite(scan).sum() == 2  # beyond range_max (9 m) and NaN points are ignored
    with pytest.raises(conv.ConversionError) as e:
        conv.xyz_to_scan(pts, LIDAR, 1.0, 2.0)
    assert _reason(e) == "no_return"


def _cloud(points, datatype=PointField.FLOAT64, big=False, pad=4, rows=1, row_pad=0, names="xyz"):
    """A cloud with another layout than the writer's: other field type, byte order, padding, organised rows."""
    size = {PointField.FLOAT32: 4, PointField.FLOAT64: 8}[datatype]
    ps = 3 * size + pad
    pts = np.asarray(points, np.float64).reshape(rows, -1, 3)
    h, w = pts.shape[:2]
    dt = np.dtype({"names": list(names), "formats": [(">" if big else "<") + ("f8" if size == 8 else "f4")] * 3,
                   "offsets": [pad, pad + size, pad + 2 * size], "itemsize": ps})
    arr = np.zeros((h, w), dt)
    for k, c in enumerate(names):
        arr[c] = pts[..., k]
    data = b"".join(arr[i].tobytes() + bytes(row_pad) for i in range(h))
    fields = [PointField(name=c, offset=pad + k * size, datatype=datatype, count=1) for k, c in enumerate(names)]
    return PointCloud2(height=h, width=w, fields=fields, is_bigendian=big, point_step=ps, row_step=ps * w + row_pad,
                       data=data, is_dense=True)


@pytest.mark.parametrize("datatype", [PointField.FLOAT32, PointField.FLOAT64])
@pytest.mark.parametrize("big", [False, True])
def test_cloud_layouts(datatype, big):
    pts = RNG.normal(size=(2, 5, 3))
    msg = _cloud(pts, datatype=datatype, big=big, rows=2, row_pad=6)
    np.testing.assert_allclose(conv.pointcloud2_to_xyz(msg), pts.reshape(-1, 3), rtol=1e-6)


def test_cloud_with_a_huge_row_step_reads_without_a_huge_copy():
    import tracemalloc

    pts = RNG.normal(size=(4, 3)).astype(np.float32)
    msg = conv.xyz_to_pointcloud2(pts)
    msg.row_step = 2 ** 32 - 1  # one row: the data holds its points, row_step claims 4 GiB
    tracemalloc.start()
    try:
        out = conv.pointcloud2_to_xyz(msg)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(out, pts)
    assert peak < 1 << 20  # it padded a copy to 8 GiB before
    msg.height, msg.width = 2, 2  # two rows 4 GiB apart: the data cannot hold them
    with pytest.raises(conv.ConversionError) as e:
        conv.pointcloud2_to_xyz(msg)
    assert _reason(e) is DropReason.TRUNCATED


def _fake_sensor_msgs_py(calls):
    """A stand-in for ``sensor_msgs_py`` (not on PyPI) with its documented ``point_cloud2.read_points`` /
    ``read_points_numpy`` behaviour, faults included: the points are viewed as ``width × height`` consecutive records
    of ``point_step`` bytes, so ``row_step`` padding is read as points (every row after the first is shifted)."""
    from numpy.lib.recfunctions import structured_to_unstructured

    pf = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}

    def read_points(cloud, field_names=None, skip_nans=False, uvs=None, reshape_organized_cloud=False):
        calls.append(("read_points", cloud.row_step, cloud.point_step * cloud.width))
        order = ">" if cloud.is_bigendian else "<"
        dtype = np.dtype({"names": [f.name for f in cloud.fields],
                          "formats": [order + pf[f.datatype] for f in cloud.fields],
                          "offsets": [f.offset for f in cloud.fields], "itemsize": cloud.point_step})
        points = np.ndarray(shape=(cloud.width * cloud.height,), dtype=dtype, buffer=bytes(cloud.data))
        if field_names is not None:
            points = points[list(field_names)]
        if skip_nans:
            points = points[~np.isnan(structured_to_unstructured(points)).any(axis=1)]
        return points

    def read_points_numpy(cloud, field_names=None, skip_nans=False, uvs=None, reshape_organized_cloud=False):
        return structured_to_unstructured(read_points(cloud, field_names, skip_nans, uvs, reshape_organized_cloud))

    pkg = types.ModuleType("sensor_msgs_py")
    mod = types.ModuleType("sensor_msgs_py.point_cloud2")
    mod.read_points, mod.read_points_numpy = read_points, read_points_numpy
    pkg.point_cloud2 = mod
    return pkg, mod


def _fresh_messages_module(monkeypatch, sensor_msgs_py):
    """A private copy of m2vae_fusion.core.messages imported while ``sensor_msgs_py`` is importable (a module) or
    not (None blocks the import)."""
    monkeypatch.setitem(sys.modules, "sensor_msgs_py", sensor_msgs_py)
    monkeypatch.setitem(sys.modules, "sensor_msgs_py.point_cloud2",
                        None if sensor_msgs_py is None else sensor_msgs_py.point_cloud2)
    spec = importlib.util.spec_from_file_location("_messages_copy", conv.__file__)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "_messages_copy", mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("installed", [False, True])
def test_clouds_with_and_without_sensor_msgs_py(monkeypatch, installed):
    calls = []
    pkg, fake = _fake_sensor_msgs_py(calls)
    pts = RNG.normal(size=(3, 4, 3))
    padded = _cloud(pts, datatype=PointField.FLOAT32, rows=3, row_pad=8)
    dense = _cloud(pts, datatype=PointField.FLOAT32, rows=3, row_pad=0)
    # the stand-in is faithful: it misreads the padded cloud and reads the dense one
    assert not np.allclose(fake.read_points_numpy(padded, ("x", "y", "z")), pts.reshape(-1, 3), rtol=1e-6)
    np.testing.assert_allclose(fake.read_points_numpy(dense, ("x", "y", "z")), pts.reshape(-1, 3), rtol=1e-6)
    calls.clear()
    mod = _fresh_messages_module(monkeypatch, pkg if installed else None)
    if installed:
        assert importlib.import_module("sensor_msgs_py.point_cloud2") is fake
    else:
        with pytest.raises(ImportError):
            importlib.import_module("sensor_msgs_py.point_cloud2")
    for msg in (padded, dense, _cloud(pts, datatype=PointField.FLOAT64, big=True, rows=3, row_pad=5)):
        np.testing.assert_allclose(mod.pointcloud2_to_xyz(msg), pts.reshape(-1, 3), rtol=1e-6)
    assert calls == []  # the own reader read every cloud; sensor_msgs_py was never handed one


def test_bad_clouds():
    pts = RNG.normal(size=(4, 3))
    with pytest.raises(conv.ConversionError) as e:
        conv.pointcloud2_to_xyz(_cloud(pts, names="xyw"))
    assert _reason(e) == "no_xyz"
    msg = _cloud(pts)
    msg.data = bytes(msg.data)[:-5]
    with pytest.raises(conv.ConversionError) as e:
        conv.pointcloud2_to_xyz(msg)
    assert _reason(e) == "truncated"
    msg = _cloud(pts)
    msg.point_step = 8  # fields beyond the point
    with pytest.raises(conv.ConversionError) as e:
        conv.pointcloud2_to_xyz(msg)
    assert _reason(e) == "truncated"
    with pytest.raises(conv.ConversionError) as e:
        conv.pointcloud2_to_xyz(conv.xyz_to_pointcloud2(np.zeros((0, 3))))
    assert _reason(e) == "empty"


# -- latents, stamps ----------------------------------------------------------------------------------------------
ORDER = ("camera", "lidar", "reflectance")


def _latent(**kw):
    d = dict(agent_id="a", target_id="t", model_id="m", stamp_ns=2_000_000_123, modalities=("camera", "lidar"),
             modality_stamps_ns=(1_000_000_000, 2_000_000_123), modality_sources=("a", "b"), contributors=("a", "b"),
             mean=np.arange(4, dtype=np.float32), log_variance=-np.ones(4, np.float32), frame_id="map")
    d.update(kw)
    return conv.LatentData(**d)


def test_latent_round_trip_and_canonical_order():
    msg = conv.latent_to_msg(_latent())
    back = conv.latent_from_msg(msg, ORDER, 4)
    assert back.modalities == ("camera", "lidar") and back.modality_stamps_ns == (1_000_000_000, 2_000_000_123)
    assert back.modality_sources == ("a", "b") and back.contributors == ("a", "b") and back.stamp_ns == 2_000_000_123
    np.testing.assert_array_equal(back.mean, np.arange(4))
    msg = conv.latent_to_msg(_latent(modalities=("lidar", "camera"), modality_sources=("b", "a"),
                                     modality_stamps_ns=(2, 1)))
    back = conv.latent_from_msg(msg, ORDER, 4)
    assert back.modalities == ("camera", "lidar") and back.modality_sources == ("a", "b")
    assert back.modality_stamps_ns == (1, 2)
    msg.modality_sources = []  # optional: the sender's evidence then
    assert conv.latent_from_msg(msg, ORDER, 4).modality_sources == ("a", "a")
    belief = conv.class_belief_msg(_latent(), ["x", "y"], np.array([0.25, 0.75]))
    assert list(belief.class_names) == ["x", "y"] and belief.target_id == "t" and len(belief.probabilities) == 2


@pytest.mark.parametrize("kw,dim,reason", [
    (dict(mean=np.arange(5, dtype=np.float32)), 4, "mismatch"),
    (dict(), 8, "mismatch"),
    (dict(mean=np.array([0, np.nan, 0, 0], np.float32)), 4, "non_finite"),
    (dict(log_variance=np.array([0, 0, np.inf, 0], np.float32)), 4, "non_finite"),
    (dict(modalities=("camera", "sonar")), 4, "mismatch"),
    (dict(modalities=("camera", "camera")), 4, "mismatch"),
    (dict(modalities=("camera",), modality_sources=("a",)), 4, "mismatch"),  # 2 stamps for 1 modality
    (dict(modalities=(), modality_stamps_ns=(), modality_sources=()), 4, "empty"),
    (dict(agent_id=""), 4, "empty"),
    (dict(target_id=""), 4, "empty"),
])
def test_bad_latents(kw, dim, reason):
    with pytest.raises(conv.ConversionError) as e:
        conv.latent_from_msg(conv.latent_to_msg(_latent(**kw)), ORDER, dim)
    assert _reason(e) == reason


def test_stamps_and_targets():
    for ns in [0, 1, 999_999_999, 1_795_299_633_278_221_294, 2**62]:
        assert conv.stamp_to_ns(conv.ns_to_stamp(ns)) == ns
    assert conv.stamp_to_ns(conv.ns_to_stamp(-5)) == 0
    msg = conv.target_msg("obj", 5, "map", (1, 2, 3))
    assert msg.has_position and msg.position.y == 2.0
    assert not conv.target_msg("obj", 5).has_position


def test_quantised_seconds():
    from m2vae_fusion.ros.fusion_node import ns_to_s, s_to_ns

    for ns in RNG.integers(1_700_000_000 * 10**9, 1_900_000_000 * 10**9, 2000):
        s = ns_to_s(int(ns))
        q = s_to_ns(s)
        assert abs(q - int(ns)) < 1000 and ns_to_s(q) == s and s_to_ns(ns_to_s(q)) == q  # exact after one step


def test_stats_and_diagnostics_round_trip():
    st = NodeStats(latency_window=100)
    for i in range(200):
        st.latency("camera", i * 1e-3)
    st.inc("processed.camera", 5)
    st.inc("dropped.camera.bad_encoding")
    values = st.snapshot()
    assert values["latency_ms.camera.window"] == 100
    assert values["latency_ms.camera.p50"] == pytest.approx(149.5)
    assert values["latency_ms.camera.max"] == pytest.approx(199.0)
    arr = diagnostic_array(conv.ns_to_stamp(0), "n: fusion", "a", values, {"agent_id": "a"})
    got = status_values(arr, "n: fusion")
    assert got["agent_id"] == "a" and got["processed.camera"] == 5 and got["dropped.camera.bad_encoding"] == 1
    assert got["latency_ms.camera.p99"] == pytest.approx(values["latency_ms.camera.p99"], abs=1e-3)
    assert status_values(arr, "other") == {}
