"""Single-sensor separability of a data set (``m2vae-fusion dataset --check``): the paper's setup (Sec. IV)
holds when each sensor alone determines its own attribute (camera → colour, LiDAR → shape, reflectance → material)
and all three together determine the class.

Easy world: own attribute ≥ 0.98, others ≤ 0.70, all three → class ≥ 0.98. Hard world (issue 10; the world's
ceilings): own attribute 0.82-0.93 from one observation, others ≤ 0.70, and > 0.97 from two observations of the
same object (every pair of views of each test object, posteriors multiplied: :func:`pair_accuracy`); its inputs are
the target-centred crops of :func:`target_features`.

One classifier family throughout: scikit-learn's ``ExtraTreesClassifier`` (500 trees, bootstrap, fixed
``random_state``), one model per (sensor, attribute) pair, trained on the train split and scored (accuracy) on the
test split. All sensors together: stacking — second-level models of the same family map the three sensors'
out-of-bag attribute posteriors (9 numbers) to colour, shape and material, class = 4c + 2s + m; nothing tells them
which sensor knows which attribute. (A single tree ensemble on the concatenated inputs
needs far more than a few thousand samples to learn the 8-class conjunction when 768 of ~830 inputs are pixels.)
The easy world's inputs are the raw arrays, lightly
summarised the same way whatever the attribute:

- camera: the 64x64 image area-averaged to 16x16x3, in [0, 1] (768 values);
- lidar: the scan segment around the nearest return within ±40 deg of forward (the usual segmentation at range
  jumps), as a depth profile across the segment scaled by its half width, plus half width, nearest range and beam
  count (28 values, see :func:`lidar_features`);
- reflectance: the (K, 2) scan flattened, ``+inf`` ranges replaced by ``range_max`` (2K values);

A stress test (JSON key ``stress``) repeats the camera rows on an object-centred, scale-normalised input — the
bounding box of strongly red-or-green pixels resized to 24x24, plus the box — the camera's counterpart of the
LiDAR's segment, so that a low camera → shape accuracy cannot just come from an uncentred input.
"""
from __future__ import annotations

import math
from typing import Dict

import numpy as np

from m2vae_fusion.core.modalities import MODALITIES
from m2vae_fusion.data.classes import ATTRIBUTE_NAMES, SENSOR_ATTRIBUTE

#: The easy world's thresholds (each sensor reads its own attribute; all three together the class).
OWN_MIN = 0.98
OTHER_MAX = 0.70
ALL_MIN = 0.98
#: The hard world's (issue 10): one observation reads its own attribute within [HARD_OWN_MIN, HARD_OWN_MAX], no
#: sensor reads another's attribute above OTHER_MAX, two observations of the same object above HARD_PAIR_MIN.
HARD_OWN_MIN = 0.82
HARD_OWN_MAX = 0.93
HARD_PAIR_MIN = 0.97


def camera_features(camera: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) with H, W divisible by 4 → float32 (N, H/4 * W/4 * 3) area means in [0, 1]."""
    n, h, w, _ = camera.shape
    x = camera.reshape(n, h // 4, 4, w // 4, 4, 3).astype(np.float32).mean(axis=(2, 4)) / 255.0
    return x.reshape(n, -1)


def camera_crop_features(camera: np.ndarray, size: int = 24, threshold: int = 30) -> np.ndarray:
    """Object-centred camera input: bounding box of pixels with |R - G| > ``threshold`` resized (INTER_AREA) to
    ``size`` x ``size`` in [0, 1], plus the box (y0, y1, x0, x1) / image size; zeros when no such pixel."""
    import cv2

    n, h, w, _ = camera.shape
    out = np.zeros((n, size * size * 3 + 4), np.float32)
    for i in range(n):
        f = camera[i].astype(np.int16)
        ys, xs = np.nonzero(np.abs(f[:, :, 0] - f[:, :, 1]) > threshold)
        if len(ys) == 0:
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        crop = cv2.resize(np.ascontiguousarray(camera[i, y0:y1, x0:x1]), (size, size), interpolation=cv2.INTER_AREA)
        out[i, :-4] = crop.reshape(-1) / 255.0
        out[i, -4:] = (y0 / h, y1 / h, x0 / w, x1 / w)
    return out


def lidar_features(lidar: np.ndarray, angle_min: float, angle_increment: float, range_max: float,
                   points: int = 25, jump: float = 0.03, front: float = math.radians(40.0)) -> np.ndarray:
    """float32 (N, B) scans → float32 (N, points + 3): the segment around the nearest return within ±``front`` rad
    of forward (consecutive beams differing by < ``jump`` m; ranges smoothed over 3 beams, not across jumps > 2 cm)
    in Cartesian coordinates along the nearest beam, its depth profile (m behind its nearest point) sampled at
    ``points`` lateral positions spread evenly over the segment and divided by the segment's half width; then the
    half width (m), the nearest range (m) and the number of beams in the segment. ``+inf`` → ``range_max``."""
    scans = np.where(np.isfinite(lidar), lidar, range_max).astype(np.float64)
    scans = np.where(scans < 0, 0.0, scans)  # -inf (too close) → 0
    n, b = scans.shape
    theta = angle_min + angle_increment * np.arange(b)
    sm = scans.copy()
    sm[:, 1:-1] = (scans[:, :-2] + scans[:, 1:-1] + scans[:, 2:]) / 3.0
    sm = np.where(np.abs(sm - scans) > 0.02, scans, sm)
    nearest = np.argmin(np.where((np.abs(theta) <= front)[None, :], sm, np.inf), axis=1)
    u = np.linspace(-1.0, 1.0, points)
    out = np.zeros((n, points + 3), np.float32)
    for k in range(n):
        i0, r = nearest[k], sm[k]
        lo = hi = i0
        while lo > 0 and abs(r[lo - 1] - r[lo]) < jump:
            lo -= 1
        while hi < b - 1 and abs(r[hi + 1] - r[hi]) < jump:
            hi += 1
        t = theta[lo:hi + 1] - theta[i0]
        x, y = r[lo:hi + 1] * np.cos(t), r[lo:hi + 1] * np.sin(t)
        half = max((y.max() - y.min()) / 2.0, 1e-3)
        order = np.argsort(y, kind="stable")
        depth = np.interp((y.max() + y.min()) / 2.0 + u * half, y[order], x[order]) - x.min()
        out[k, :points] = depth / half
        out[k, points:] = (half, r[i0], hi - lo + 1)
    return out


def reflectance_features(reflectance: np.ndarray, range_max: float) -> np.ndarray:
    """float32 (N, K, 2) → (N, 2K): ranges with ``+inf`` → ``range_max``, then intensities."""
    r = np.where(np.isfinite(reflectance[..., 0]), reflectance[..., 0], range_max)
    return np.concatenate([r, reflectance[..., 1]], axis=1).astype(np.float32)


def target_features(arrays: Dict[str, np.ndarray], sensors: dict) -> Dict[str, np.ndarray]:
    """Target-centred classifier inputs (the hard world, samples with ``target_position``), through the one
    implementation of :mod:`m2vae_fusion.core.preprocess`:

    - camera: the crop around the target's projection (0.2 m window) at 16x16x3, in [0, 1] (768 values);
    - lidar: the window across the line of sight to the target (0.24 m, 64 points), plus the target's range;
    - reflectance: the (K, 2) ring starting at the beam facing the target, flattened (``+inf`` → ``range_max``),
      plus the target's position (x, y).
    """
    from m2vae_fusion.core.preprocess import crop_camera, lidar_window

    pos = arrays["target_position"]
    cam_cfg = dict(sensors["camera"])
    cam_cfg["crop"] = dict(cam_cfg.get("crop") or {"window_m": 0.2}, enabled=True, size=16)
    lid_cfg = dict(sensors["lidar"])
    lid_cfg["crop"] = dict(lid_cfg.get("crop") or {"window_m": 0.24, "points": 64, "depth_m": 0.15}, enabled=True)
    cam = crop_camera(arrays["camera"], cam_cfg, pos).reshape(len(pos), -1).astype(np.float32) / 255.0
    lid = np.concatenate([lidar_window(arrays["lidar"], lid_cfg, pos),
                          np.hypot(pos[:, 0], pos[:, 1])[:, None]], axis=1).astype(np.float32)
    refl = arrays["reflectance"]
    k = refl.shape[1]
    angles = np.asarray(sensors["reflectance"].get("angles", 2 * np.pi * np.arange(k) / k))
    bearing = np.arctan2(pos[:, 1], pos[:, 0])
    first = np.argmin(np.abs(np.angle(np.exp(1j * (angles[None, :] - bearing[:, None])))), axis=1)
    order = (first[:, None] + np.arange(k)[None, :]) % k                   # the ring from the beam facing the target
    rolled = np.take_along_axis(refl, order[:, :, None], axis=1)
    ref = np.concatenate([reflectance_features(rolled, sensors["reflectance"]["range_max"]),
                          pos[:, :2]], axis=1).astype(np.float32)
    return {"camera": cam, "lidar": lid, "reflectance": ref}


def features(arrays: Dict[str, np.ndarray], sensors: dict) -> Dict[str, np.ndarray]:
    """Per-modality classifier inputs of a split (``sensors`` = ``metadata["sensors"]``): target-centred
    (:func:`target_features`) when the split has target positions, else the whole-frame inputs of the easy world."""
    if "target_position" in arrays and np.all(np.isfinite(arrays["target_position"])):
        return target_features(arrays, sensors)
    lid = sensors["lidar"]
    return {
        "camera": camera_features(arrays["camera"]),
        "lidar": lidar_features(arrays["lidar"], lid["angle_min"], lid["angle_increment"], lid["range_max"]),
        "reflectance": reflectance_features(arrays["reflectance"], sensors["reflectance"]["range_max"]),
    }


TREES = 300


def _classifier(seed: int):
    from sklearn.ensemble import ExtraTreesClassifier

    return ExtraTreesClassifier(n_estimators=TREES, bootstrap=True, oob_score=True, random_state=seed, n_jobs=2)


def _attribute_targets(arrays) -> np.ndarray:
    return np.stack([arrays[a] for a in ATTRIBUTE_NAMES], axis=1)


def _full_proba(classes, proba, n_values: int) -> np.ndarray:
    """(M, n_values) probabilities of attribute ids 0..n_values-1 from one output's class list and columns."""
    out = np.zeros((len(proba), n_values))
    for j, c in enumerate(classes):
        if 0 <= int(c) < n_values:
            out[:, int(c)] = proba[:, j]
    return out


def _fit_predict(xtr, ytr, xte, seed, n_values):
    """One single-output classifier per column of ``ytr`` (N, A) (attribute j has ``n_values[j]`` values). Returns
    test predictions (M, A), out-of-bag posteriors on the training samples and posteriors on the test samples (lists
    of (N, n_values[j]) / (M, n_values[j]) arrays, one per attribute)."""
    import warnings

    preds, p_trs, p_tes = [], [], []
    for j in range(ytr.shape[1]):
        with warnings.catch_warnings():  # a sample never out of bag only gives a NaN, replaced by uniform below
            warnings.simplefilter("ignore")
            clf = _classifier(seed).fit(xtr, ytr[:, j])
        nv = n_values[j]
        p_te = _full_proba(clf.classes_, clf.predict_proba(xte), nv)
        p_tr = _full_proba(clf.classes_, np.asarray(clf.oob_decision_function_), nv)
        preds.append(clf.predict(xte).astype(np.int64))
        p_tes.append(p_te)
        p_trs.append(np.where(np.isfinite(p_tr), p_tr, 1.0 / nv))
    return np.stack(preds, axis=1), p_trs, p_tes


def view_pairs(object_id: np.ndarray) -> np.ndarray:
    """(P, 2) index pairs of distinct samples with the same ``object_id`` (every pair of views of every object;
    ids < 0 are unknown and never paired)."""
    pairs = []
    order = np.argsort(object_id, kind="stable")
    ids = object_id[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    for a, b in zip(starts, ends):
        if ids[a] < 0 or b - a < 2:
            continue
        members = order[a:b]
        for i in range(len(members)):
            for k in range(i + 1, len(members)):
                pairs.append((members[i], members[k]))
    return np.asarray(pairs, np.int64).reshape(-1, 2)


def pair_accuracy(proba: np.ndarray, truth: np.ndarray, pairs: np.ndarray, eps: float = 1e-3) -> float:
    """Accuracy of fusing two observations of one object: argmax of the sum of the two posteriors' log
    probabilities (independent observations, Bayes' rule with a uniform prior), over every pair in ``pairs``."""
    if len(pairs) == 0:
        return float("nan")
    lp = np.log(proba + eps)
    fused = lp[pairs[:, 0]] + lp[pairs[:, 1]]
    return float(np.mean(np.argmax(fused, axis=1) == truth[pairs[:, 0]]))


def separability(train: Dict[str, np.ndarray], test: Dict[str, np.ndarray], sensors: dict, seed: int = 0,
                 stress: bool = True, progress=None, attributes: dict = None, world: str = "easy") -> dict:
    """Accuracies on ``test`` of classifiers trained on ``train`` (dicts of shard arrays with known labels).

    ``attributes``: the data set's ``metadata["attributes"]`` (value names per attribute; default the easy world's);
    ``world``: ``"easy"`` or ``"hard"``, which thresholds apply. With ``object_id`` in ``test``, also the accuracy of
    two observations of the same object (``second_observation``: every pair of views, posteriors multiplied).

    Returns:
        ``{"per_sensor": {sensor: {attribute: acc}}, "all_sensors_class_accuracy": acc,
        "all_sensors_attribute_accuracy": {attribute: acc}, "second_observation": {sensor: acc, "pairs": n},
        "stress": {"camera_object_crop": {attribute: acc}}, "thresholds": {...}, "passed": bool, "failures": [..],
        "classifier": str, "train_samples": n, "test_samples": n, "world": str}``.
    """
    from m2vae_fusion.data.classes import classes_of

    attributes = attributes or classes_of("easy").attributes
    n_values = [len(attributes[a]) for a in ATTRIBUTE_NAMES]
    ftr, fte = features(train, sensors), features(test, sensors)
    ytr, yte = _attribute_targets(train), _attribute_targets(test)
    out = {"per_sensor": {}, "world": world,
           "classifier": f"sklearn ExtraTreesClassifier({TREES} trees) per sensor and attribute; "
                         "all sensors: stacked on their out-of-bag posteriors",
           "features": "target-centred crops (core.preprocess)" if "target_position" in test else "whole frame",
           "train_samples": int(len(ytr)), "test_samples": int(len(yte))}
    pairs = view_pairs(test["object_id"]) if "object_id" in test else np.zeros((0, 2), np.int64)
    second = {}
    stack_tr, stack_te = [], []
    for m in MODALITIES:
        pred, p_tr, p_te = _fit_predict(ftr[m], ytr, fte[m], seed, n_values)
        out["per_sensor"][m] = {a: float(np.mean(pred[:, j] == yte[:, j])) for j, a in enumerate(ATTRIBUTE_NAMES)}
        if len(pairs):
            j = ATTRIBUTE_NAMES.index(SENSOR_ATTRIBUTE[m])
            second[m] = pair_accuracy(p_te[j], yte[:, j], pairs)
        stack_tr.append(np.concatenate(p_tr, axis=1))
        stack_te.append(np.concatenate(p_te, axis=1))
        if progress:
            progress()
    fused, _, p_fused = _fit_predict(np.concatenate(stack_tr, axis=1), ytr, np.concatenate(stack_te, axis=1), seed,
                                     n_values)
    out["all_sensors_attribute_accuracy"] = {a: float(np.mean(fused[:, j] == yte[:, j]))
                                             for j, a in enumerate(ATTRIBUTE_NAMES)}
    fused_class = (fused[:, 0] * n_values[1] + fused[:, 1]) * n_values[2] + fused[:, 2]
    out["all_sensors_class_accuracy"] = float(np.mean(fused_class == test["label"]))
    if len(pairs):
        second["pairs"] = int(len(pairs))
        out["second_observation"] = second
    if stress:
        pred, _, _ = _fit_predict(camera_crop_features(train["camera"]), ytr, camera_crop_features(test["camera"]),
                                  seed, n_values)
        out["stress"] = {"camera_object_crop": {a: float(np.mean(pred[:, j] == yte[:, j]))
                                                for j, a in enumerate(ATTRIBUTE_NAMES)}}
        if progress:
            progress()
    failures = []
    hard = world == "hard"
    for m in MODALITIES:
        for a, acc in out["per_sensor"][m].items():
            own = SENSOR_ATTRIBUTE[m] == a
            if own and acc < (HARD_OWN_MIN if hard else OWN_MIN):
                failures.append(f"{m}→{a} {acc:.3f} < {HARD_OWN_MIN if hard else OWN_MIN}")
            if own and hard and acc > HARD_OWN_MAX:
                failures.append(f"{m}→{a} {acc:.3f} > {HARD_OWN_MAX}")
            if not own and acc > OTHER_MAX:
                failures.append(f"{m}→{a} {acc:.3f} > {OTHER_MAX}")
    if hard:
        for m in MODALITIES:
            acc = second.get(m)
            if acc is None:
                failures.append(f"{m}: no two views of one object in the test split (make it with --views >= 2)")
            elif acc <= HARD_PAIR_MIN:
                failures.append(f"{m}→{SENSOR_ATTRIBUTE[m]} with a second observation {acc:.3f} <= {HARD_PAIR_MIN}")
    elif out["all_sensors_class_accuracy"] < ALL_MIN:
        failures.append(f"all→class {out['all_sensors_class_accuracy']:.3f} < {ALL_MIN}")
    if hard:
        out["thresholds"] = {"own_attribute_min": HARD_OWN_MIN, "own_attribute_max": HARD_OWN_MAX,
                             "other_attribute_max": OTHER_MAX, "second_observation_min": HARD_PAIR_MIN}
    else:
        out["thresholds"] = {"own_attribute_min": OWN_MIN, "other_attribute_max": OTHER_MAX,
                             "all_sensors_min": ALL_MIN}
    out["failures"] = failures
    out["passed"] = not failures
    return out


def format_table(result: dict) -> str:
    """The printed table: one row per sensor, one column per attribute (own attribute marked with *)."""
    attrs = list(ATTRIBUTE_NAMES)
    hard = result.get("world") == "hard"
    lines = [f"{'sensor':<22}" + "".join(f"{a:>11}" for a in attrs) + ("  2nd observation" if hard else "")]
    for m in MODALITIES:
        row = result["per_sensor"][m]
        cells = "".join(f"{(('*' if SENSOR_ATTRIBUTE[m] == a else ' ') + f'{row[a]:.3f}'):>11}" for a in attrs)
        sec = result.get("second_observation", {}).get(m)
        lines.append(f"{m:<22}{cells}" + (f"{sec:>17.3f}" if sec is not None else ""))
    if "stress" in result:
        row = result["stress"]["camera_object_crop"]
        lines.append(f"{'camera (object crop)':<22}" + "".join(f"{row[a]:>11.3f}" for a in attrs))
    fa = result["all_sensors_attribute_accuracy"]
    lines.append(f"{'all sensors (fused)':<22}" + "".join(f"{fa[a]:>11.3f}" for a in attrs))
    lines.append(f"{'all sensors → class':<22}{result['all_sensors_class_accuracy']:>11.3f}")
    if hard:
        pairs = result.get("second_observation", {}).get("pairs", 0)
        lines.append(f"(* own attribute; hard world: need own in [{HARD_OWN_MIN}, {HARD_OWN_MAX}], others <= "
                     f"{OTHER_MAX}, own with a 2nd observation of the same object > {HARD_PAIR_MIN} ({pairs} pairs of "
                     f"views); {result['train_samples']} train / {result['test_samples']} test samples, "
                     f"{result['features']}, {result['classifier']})")
    else:
        lines.append(f"(* own attribute; need own >= {OWN_MIN}, others <= {OTHER_MAX}, all >= {ALL_MIN}; "
                     f"{result['train_samples']} train / {result['test_samples']} test samples, "
                     f"{result['classifier']})")
    lines.append("PASS" if result["passed"] else "FAIL: " + "; ".join(result["failures"]))
    return "\n".join(lines)
