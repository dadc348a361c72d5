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
