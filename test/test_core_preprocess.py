"""Preprocessing shared by training and the node: shapes, dtypes, units, REP 117 special values, errors."""
import numpy as np
import pytest

from m2vae_fusion.core.preprocess import (DEFAULT_CONFIGS, PreprocessError, input_shape, preprocess,
                                          preprocess_camera, preprocess_lidar, preprocess_reflectance)

CAM, LID, REF = DEFAULT_CONFIGS["camera"], DEFAULT_CONFIGS["lidar"], DEFAULT_CONFIGS["reflectance"]


def test_camera_any_size_to_training_size():
    img = np.zeros((240, 320, 3), np.uint8)
    img[:, :160, 0] = 255  # left half red
    x = preprocess_camera(img, CAM)
    assert x.shape == (1, 3, 64, 64) and x.dtype == np.float32
    assert np.allclose(x[0, 0, :, :32], 1.0) and np.allclose(x[0, 0, :, 32:], 0.0)
    assert np.allclose(x[0, 1:], 0.0)
    batch = preprocess_camera(np.full((5, 64, 64, 3), 51, np.uint8), CAM)
    assert batch.shape == (5, 3, 64, 64) and np.allclose(batch, 0.2)


@pytest.mark.parametrize("bad", [np.zeros((64, 64, 3), np.float32), np.zeros((64, 64), np.uint8),
                                 np.zeros((0, 64, 3), np.uint8), np.zeros((64, 64, 4), np.uint8)])
def test_camera_rejects_bad_images(bad):
    with pytest.raises(PreprocessError):
        preprocess_camera(bad, CAM)


def test_lidar_rep117_special_values():
    r = np.full(LID["beams"], 2.8, np.float32)
    r[0], r[1], r[2], r[3] = np.inf, -np.inf, np.nan, 9.0
    x = preprocess_lidar(r, LID)
    assert x.shape == (1, 1, LID["beams"]) and x.dtype == np.float32
    assert x[0, 0, 0] == 1.0                                           # +inf: no return → range_max
    assert x[0, 0, 1] == pytest.approx(LID["range_min"] / LID["range_max"])  # -inf: too close → range_min
    assert x[0, 0, 2] == 1.0                                           # a single NaN: treated as no return
    assert x[0, 0, 3] == 1.0                                           # beyond range clipped
    assert x[0, 0, 4] == pytest.approx(0.5)
    assert np.all(np.isfinite(x))


def test_lidar_errors():
    with pytest.raises(PreprocessError, match="beams"):
        preprocess_lidar(np.ones(10, np.float32), LID)
    with pytest.raises(PreprocessError, match="NaN"):
        preprocess_lidar(np.full(LID["beams"], np.nan, np.float32), LID)


def test_reflectance_layout_and_errors():
    k = REF["beams"]
    s = np.stack([np.linspace(0.1, 0.3, k), np.linspace(0, 0.7, k)], axis=1).astype(np.float32)
    s[0, 0] = np.inf
    x = preprocess_reflectance(s, REF)
    assert x.shape == (1, 2 * k) and x.dtype == np.float32
    assert x[0, 0] == 1.0 and x[0, 1] == pytest.approx(s[1, 0] / REF["range_max"])
    assert np.allclose(x[0, k:], s[:, 1] / REF["intensity_max"])
    with pytest.raises(PreprocessError):
        preprocess_reflectance(np.ones((k + 1, 2), np.float32), REF)
    bad = s.copy()
    bad[2, 1] = np.nan
    with pytest.raises(PreprocessError, match="intensit"):
        preprocess_reflectance(bad, REF)


def test_dispatch_and_input_shapes():
    for m, raw in [("camera", np.zeros((8, 8, 3), np.uint8)), ("lidar", np.ones(LID["beams"])),
                   ("reflectance", np.ones((REF["beams"], 2)))]:
        assert preprocess(m, raw, DEFAULT_CONFIGS[m]).shape[1:] == input_shape(m, DEFAULT_CONFIGS[m])
    with pytest.raises(PreprocessError, match="unknown modality"):
        preprocess("sonar", np.ones(3), {})


# ------------------------------------------------------------------------------------- target-centred crops
from m2vae_fusion.core.preprocess import (PreprocessError as _PE, camera_intrinsics, crop_camera,  # noqa: E402
                                          input_shape as _shape, lidar_window, preprocess as _pre,
                                          project_to_image, salient_blob)

CROP_CAM = {"width": 64, "height": 64, "fov_deg": 45.0, "aspect": 4 / 3, "mount_forward": 0.0495, "mount_height": 0.045,
       "crop": {"enabled": True, "size": 32, "window_m": 0.25}}
CROP_LID = {"beams": 667, "angle_min": -2.0943951023931953, "angle_increment": 0.006289474781961547, "range_min": 0.02,
       "range_max": 5.6, "crop": {"enabled": True, "window_m": 0.3, "points": 64, "depth_m": 0.15}}


def test_projection_through_k_and_the_camera_to_base_transform():
    k = camera_intrinsics(CROP_CAM, 64, 64)
    assert k[0, 2] == 32 and k[1, 2] == 32 and k[1, 1] == pytest.approx(32 / np.tan(np.radians(22.5)))
    assert k[0, 0] == pytest.approx(k[1, 1] / (4 / 3))
    u, v, d = project_to_image([[1.0, 0.0, 0.045], [1.0, 0.1, 0.045], [1.0, 0.0, 0.1]], CROP_CAM, 64, 64)
    assert (u[0], v[0]) == (pytest.approx(32), pytest.approx(32)) and d[0] == pytest.approx(1 - 0.0495)
    assert u[1] < 32 and v[2] < 32                     # left of the robot → left in the image; higher → up
    # an explicit K (CameraInfo.k of a 320x240 image) wins over the config's
    k2 = camera_intrinsics(CROP_CAM, 320, 240, camera_k=[200, 0, 160, 0, 200, 120, 0, 0, 1])
    assert k2[0, 0] == 200 and k2[1, 2] == 120
    # the config's K (of the training size) is scaled to another image size
    k3 = camera_intrinsics(dict(CROP_CAM, K=list(k.reshape(-1))), 320, 240)
    assert k3[0, 2] == pytest.approx(160) and k3[1, 1] == pytest.approx(k[1, 1] * 240 / 64)
    with pytest.raises(_PE):
        camera_intrinsics(CROP_CAM, 64, 64, camera_k=[0, 0, 0])


def _scene(u0, v0, rgb=(200, 30, 30)):
    img = np.full((64, 64, 3), 110, np.uint8)
    img[v0 - 4:v0 + 4, u0 - 4:u0 + 4] = rgb
    return img


def test_camera_crop_centres_the_target_and_falls_back_to_the_salient_blob():
    target = np.array([0.6, 0.08, 0.045])
    u, v, _ = project_to_image(target[None], CROP_CAM, 64, 64)
    img = _scene(int(u[0]), int(v[0]))
    img[40:48, 4:12] = (30, 30, 200)                    # a smaller salient distractor (an L of 48 pixels)
    img[40:44, 4:8] = 110
    crop = crop_camera(img, CROP_CAM, target)
    assert crop.shape == (1, 32, 32, 3) and tuple(crop[0, 16, 16]) == (200, 30, 30)
    assert tuple(crop[0, 0, 0]) == (110, 110, 110)
    # no position: the largest saturated blob (the 8x8 red square, not the 48-pixel blue L)
    blob = salient_blob(img)
    assert blob is not None and abs(blob[0] - int(u[0])) <= 1 and blob[2] == 8
    nan = crop_camera(img, CROP_CAM, np.full(3, np.nan))
    assert tuple(nan[0, 16, 16]) == (200, 30, 30)
    assert np.array_equal(crop_camera(img, CROP_CAM, None), nan)
    # nothing salient: the whole image
    grey = np.full((64, 64, 3), 90, np.uint8)
    assert salient_blob(grey) is None and np.all(crop_camera(grey, CROP_CAM, None) == 90)
    x = _pre("camera", np.stack([img, img]), CROP_CAM, target_position=np.stack([target, target]))
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.float32 and _shape("camera", CROP_CAM) == (3, 32, 32)
    assert x[0, 0, 16, 16] == pytest.approx(200 / 255)
    with pytest.raises(_PE, match="target_position"):
        _pre("camera", img, CROP_CAM, target_position=np.zeros((2, 3)))


def test_camera_crop_agrees_with_opencv_blur_then_warp_to_one_grey_level(monkeypatch):
    """The anti-aliased crop is one separable linear map per axis (a speed-up): within one grey level of
    ``cv2.GaussianBlur`` of the whole image followed by ``cv2.warpAffine`` (which round the blurred image to 8 bits
    and work in fixed point), for windows inside, across and beyond the image border, near and far, 64x64 to
    640x480, without a bias."""
    import cv2

    from m2vae_fusion.core import preprocess as pp

    rng = np.random.default_rng(0)
    cases = []
    for w, h in ((64, 64), (160, 120), (320, 240), (640, 480)):
        for _ in range(40):
            img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 2)
            cases.append((img, (rng.uniform(0.05, 1.2), rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.3))))
    fast = np.stack([crop_camera(img, CROP_CAM, pos) for img, pos in cases]).astype(int)
    calls = []

    def opencv(src, m, size, sigma):
        calls.append(sigma)
        return cv2.warpAffine(cv2.GaussianBlur(src, (0, 0), sigma), m, (size, size),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)

    monkeypatch.setattr(pp, "_blurred_crop", opencv)
    ref = np.stack([crop_camera(img, CROP_CAM, pos) for img, pos in cases]).astype(int)
    assert len(calls) > 100  # most windows shrink enough to need the blur
    diff = fast - ref
    assert np.abs(diff).max() <= 1
    assert np.mean(diff != 0) < 0.15 and abs(diff.mean()) < 0.02


def _flat_face(x_face=0.5, half=0.05):
    th = CROP_LID["angle_min"] + CROP_LID["angle_increment"] * np.arange(667)
    r = np.full(667, np.inf, np.float32)
    y = x_face * np.tan(th)
    on = (np.abs(th) < 1.2) & (np.abs(y) <= half)
    r[on] = x_face / np.cos(th[on])
    return r


def test_lidar_window_on_the_target_and_the_nearest_return_fallback():
    scan = _flat_face()
    w = lidar_window(scan, CROP_LID, np.array([0.52, 0.0, 0.03]))
    assert w.shape == (1, 64) and w.dtype == np.float32
    centre = w[0, 24:40]                                 # |u| < 0.0375 m: the face, 2 cm in front of the centre
    assert np.allclose(centre, (-0.02 / 0.15 + 1) / 2, atol=2e-3)
    assert np.all(w[0, :5] == 1.0) and np.all(w[0, -5:] == 1.0)  # background clipped at +depth_m
    fb = lidar_window(scan, CROP_LID, None)                   # nearest return + 0.03 m
    assert np.allclose(fb[0, 24:40], (-0.03 / 0.15 + 1) / 2, atol=2e-3)
    # a clutter object nearer than the target, off to the side, does not move the window
    clutter = scan.copy()
    th = CROP_LID["angle_min"] + CROP_LID["angle_increment"] * np.arange(667)
    clutter[np.abs(th - 0.6) < 0.05] = 0.2
    assert np.allclose(lidar_window(clutter, CROP_LID, np.array([0.52, 0.0, 0.03])), w)
    assert not np.allclose(lidar_window(clutter, CROP_LID, None), fb)  # the fallback is captured by the clutter
    x = _pre("lidar", np.stack([scan, scan]), CROP_LID, target_position=np.array([0.52, 0.0, 0.03]))
    assert x.shape == (2, 1, 64) and _shape("lidar", CROP_LID) == (1, 64)
    # crop disabled: the whole scan as before
    off = dict(CROP_LID, crop={"enabled": False})
    assert _pre("lidar", scan, off).shape == (1, 1, 667) and _shape("lidar", off) == (1, 667)


def test_registered_lidar_window_does_not_move_with_a_position_a_few_cm_off():
    """Crop option ``register``: the window centres on the target's own silhouette (middle of the surface run around
    the nearest return), so positions 3-20 mm off give the same window, and a round target's range is its front
    plus half its width; without the option the window moves with the position."""
    from m2vae_fusion.core.preprocess import register_on_surface

    th = CROP_LID["angle_min"] + CROP_LID["angle_increment"] * np.arange(667)
    # a cylinder of radius 0.07 m centred 0.3 m ahead, 0.02 m to the left; background at 2 m
    cx, cy, rad = 0.3, 0.02, 0.07
    b = cx * np.cos(th) + cy * np.sin(th)
    disc = b ** 2 - (cx ** 2 + cy ** 2 - rad ** 2)
    scan = np.where(disc > 0, b - np.sqrt(np.maximum(disc, 0.0)), 2.0).astype(np.float32)
    reg = dict(CROP_LID, crop=dict(CROP_LID["crop"], register=True))
    exact = np.array([cx, cy, 0.03])
    w = lidar_window(scan, reg, exact)
    for dy in (0.003, -0.01, 0.02):
        assert np.allclose(lidar_window(scan, reg, exact + [0.0, dy, 0.0]), w), dy
        assert not np.allclose(lidar_window(scan, CROP_LID, exact + [0.0, dy, 0.0]), lidar_window(scan, CROP_LID, exact))
    bearing, xt = register_on_surface(scan[None].astype(np.float64), th, np.array([0.1]), np.array([0.31]))
    assert abs(bearing[0] - np.arctan2(cy, cx)) < 2 * CROP_LID["angle_increment"]
    assert abs(xt[0] - np.hypot(cx, cy)) < 0.01  # front (0.231 m) + half the silhouette width
    # nothing near the position: unchanged
    empty = np.full(667, np.nan)[None]
    assert register_on_surface(empty, th, np.array([0.1]), np.array([0.31])) == (np.array([0.1]), np.array([0.31]))


def test_registration_median_equals_numpy_nanmedian_over_5_beams():
    """The registration's 5-beam median (one sort instead of numpy's masked-array nanmedian) gives numpy's values
    exactly: odd and even counts of beams with a value, all-NaN windows, the padded scan ends."""
    import warnings

    from numpy.lib.stride_tricks import sliding_window_view

    from m2vae_fusion.core.preprocess import _nanmedian5

    rng = np.random.default_rng(3)
    x = rng.uniform(0.02, 5.6, (40, 667))
    x[rng.random(x.shape) < np.linspace(0.0, 0.9, 40)[:, None]] = np.nan
    x[0, :7] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = np.nanmedian(sliding_window_view(np.pad(x, ((0, 0), (2, 2)), mode="edge"), 5, axis=1), axis=2)
    got = _nanmedian5(x)
    assert np.isnan(ref).any() and np.array_equal(got, ref, equal_nan=True)
