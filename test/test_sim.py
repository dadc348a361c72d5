"""The simulated AMiRo world and its sensor models (real PyBullet, DIRECT mode)."""
import math

import cv2
import numpy as np
import pytest

from m2vae_fusion.data.classes import CLASS_NAMES, attributes_of, class_id, class_name
from m2vae_fusion.sim.generate import generate_samples, make_world, random_sample, sensor_metadata, shard_rng
from m2vae_fusion.sim.sensors import AMIRO_RADIUS, IRMaterial
from m2vae_fusion.sim.world import ObjectSpec, World


@pytest.fixture
def world():
    w = World(num_agents=2, seed=1, walls=False, clutter=0)
    yield w
    w.close()


def test_classes_follow_the_contract():
    assert CLASS_NAMES[0] == "red_cylinder_matte" and CLASS_NAMES[7] == "green_cube_shiny"
    assert class_id("green", "cylinder", "shiny") == 5 and class_name(1, 1, 0) == "green_cube_matte"
    assert all(class_id(*attributes_of(k)) == k for k in range(8))
    assert ObjectSpec("red", "cube", "shiny").class_name == "red_cube_shiny"
    with pytest.raises(ValueError):
        ObjectSpec("blue", "cube", "shiny")


def test_sensor_shapes_dtypes_and_info(world):
    oid = world.add_object(ObjectSpec("red", "cylinder", "shiny", 0.06, 0.05), 0.0, 0.0)
    world.inspect(0, oid, 0.3, 0.0, bearing=0.0)
    obs = world.observe(0)
    assert obs["camera"].shape == (240, 320, 3) and obs["camera"].dtype == np.uint8
    assert world.render_camera(0, 64, 64).shape == (64, 64, 3)
    assert obs["lidar"].shape == (667,) and obs["lidar"].dtype == np.float32
    assert obs["reflectance"].shape == (8, 2) and obs["reflectance"].dtype == np.float32
    info = world.lidar_info()
    assert info["beams"] == 667
    assert info["angle_min"] == pytest.approx(-math.radians(120)) and info["range_max"] == 5.6
    assert info["angle_increment"] == pytest.approx(math.radians(0.36), rel=0.002)
    assert info["angle_min"] + 666 * info["angle_increment"] == pytest.approx(info["angle_max"])
    assert np.all(obs["reflectance"][:, 1] >= 0)
    r = world.reflectance_info()
    assert r["beams"] == 8 and r["range_max"] > 0.55 and r["angles"][0] == 0.0


def test_lidar_geometry_and_rep117_inf(world):
    """Beams that hit nothing read +inf (REP 117); the object sits where it was put, on the correct side."""
    oid = world.add_object(ObjectSpec("green", "cube", "matte", 0.06, 0.05), 1.0, 1.0)
    world.inspect(0, oid, 0.4, heading_offset=-0.3, bearing=0.0)  # object appears at +0.3 rad (left)
    scan = world.lidar_scan(0, noise=False)
    angles = world.lidar.angles()
    hit = np.isfinite(scan)
    assert 5 < hit.sum() < 60 and np.all(np.isposinf(scan[~hit]))
    assert np.all(np.abs(angles[hit] - 0.3) < 0.1)
    assert scan[hit].min() == pytest.approx(0.4 - 0.025, abs=0.002)
    noisy = world.lidar_scan(0, rng=np.random.default_rng(0))
    assert np.all(np.isposinf(noisy[~hit])) and 0 < np.abs(noisy[hit] - scan[hit]).max() < 0.02


def test_own_body_is_invisible_other_agents_are_seen(world):
    world.set_agent_pose(0, 0.0, 0.0, 0.0)
    assert np.all(np.isposinf(world.lidar_scan(0, noise=False)))  # nothing but itself around
    world.set_agent_pose(1, 0.3, 0.0, math.pi)
    scan = world.lidar_scan(0, noise=False)
    assert np.nanmin(scan) == pytest.approx(0.3 - AMIRO_RADIUS, abs=0.002)
    assert world.reflectance_scan(0, noise=False)[0, 0] == pytest.approx(0.3 - 2 * AMIRO_RADIUS, abs=0.003)


def test_camera_training_render_matches_resized_published_image(world):
    oid = world.add_object(ObjectSpec("red", "cube", "matte", 0.07, 0.05), 0.0, 0.0, 0.4)
    world.inspect(0, oid, 0.25, 0.1, bearing=0.5)
    big = world.render_camera(0, noise=False)
    small = world.render_camera(0, 64, 64, noise=False)
    resized = cv2.resize(big, (64, 64), interpolation=cv2.INTER_AREA)
    assert np.abs(resized.astype(int) - small.astype(int)).mean() < 4.0
    red = (small[..., 0].astype(int) - small[..., 1]) > 60
    assert red.sum() > 50  # the object is in view, red


def test_reflectance_depends_on_material_distance_not_colour(world):
    def front(colour, material, dist):
        world.clear_objects()
        oid = world.add_object(ObjectSpec(colour, "cylinder", material, 0.06, 0.05), 0.0, 0.0)
        world.inspect(0, oid, dist, 0.0, bearing=0.0)
        return world.reflectance_scan(0, noise=False)[0]

    shiny, matte = front("red", "shiny", 0.3), front("red", "matte", 0.3)
    assert shiny[1] > 3 * matte[1] > 0
    assert shiny[0] == pytest.approx(0.3 - AMIRO_RADIUS - 0.025, abs=0.003)
    assert front("green", "shiny", 0.3)[1] == pytest.approx(shiny[1])  # IR does not see visible colour
    assert front("red", "shiny", 0.5)[1] < shiny[1]
    # beyond range_max: (+inf, 0)
    far = front("red", "shiny", 2.0)
    assert np.isposinf(far[0]) and far[1] == 0.0
    spec = IRMaterial(0.5, 0.3, 4.0)
    assert spec.diffuse == 0.5


def test_random_sample_is_deterministic_per_seed():
    with make_world() as w1, make_world() as w2:
        a = random_sample(w1, np.random.default_rng(42))
        random_sample(w2, np.random.default_rng(0))  # a different history must not matter
        b = random_sample(w2, np.random.default_rng(42))
        c = random_sample(w2, np.random.default_rng(43))
    for k in ("camera", "lidar", "reflectance"):
        assert np.array_equal(a[k], b[k])
    assert a["label"] == b["label"]
    assert not np.array_equal(a["lidar"], c["lidar"])


def test_generated_samples_ranges_and_units():
    d = generate_samples(40, shard_rng(5, "train", 0))
    assert d["camera"].shape == (40, 64, 64, 3) and d["camera"].dtype == np.uint8
    assert d["lidar"].dtype == np.float32 and d["reflectance"].shape == (40, 8, 2)
    assert d["present"].all() and d["label"].dtype == np.int64
    assert np.array_equal(d["label"], 4 * d["colour"] + 2 * d["shape"] + d["material"])
    finite = d["lidar"][np.isfinite(d["lidar"])]
    assert finite.min() > 0.02 and finite.max() <= 5.6 and not np.isnan(d["lidar"]).any()
    # the object is the nearest thing in front, 0.10-0.50 m from the rim (+ robot radius, - object half width)
    front = d["lidar"][:, 333 - 100:333 + 101].min(axis=1)
    assert front.min() > AMIRO_RADIUS + 0.10 - 0.045 and front.max() < AMIRO_RADIUS + 0.50
    ref = d["reflectance"]
    assert np.all(ref[..., 1] >= 0) and np.all(np.isposinf(ref[..., 0]) == (ref[..., 1] == 0))
    assert np.all(np.isfinite(ref[:, 0, 0]))  # the front IR sensor always sees the object
    meta = sensor_metadata()
    assert {"width", "height"} <= set(meta["camera"]) and meta["camera"]["width"] == 64
    assert {"beams", "angle_min", "angle_increment", "range_min", "range_max"} <= set(meta["lidar"])
    assert {"beams", "range_max", "intensity_max"} <= set(meta["reflectance"])


# ------------------------------------------------------------------------------------------------ the hard world
def test_hard_world_classes():
    from m2vae_fusion.data.classes import WORLDS, classes_of, world_of_class_names

    cs = classes_of("hard")
    assert cs.num_classes == 27 and len(set(cs.class_names)) == 27
    assert cs.class_names[0] == "red_cylinder_matte" and cs.class_names[26] == "yellow_rounded_box_shiny"
    assert cs.class_id("orange", "hexagonal_prism", "satin") == 9 + 3 + 1
    assert all(cs.class_id(*cs.attributes_of(k)) == k for k in range(27))
    assert world_of_class_names(cs.class_names) == "hard" and world_of_class_names(CLASS_NAMES) == "easy"
    assert WORLDS["easy"].class_names == CLASS_NAMES
    with pytest.raises(ValueError):
        cs.attributes_of(27)
    with pytest.raises(ValueError):
        classes_of("medium")
    spec = ObjectSpec("yellow", "rounded_box", "satin", 0.07, 0.12, world="hard")
    assert spec.class_id == 26 - 1 and spec.class_name == "yellow_rounded_box_satin"
    with pytest.raises(ValueError):
        ObjectSpec("yellow", "cube", "satin", world="hard")


def test_hard_shapes_seen_by_the_lidar(world):
    """Without noise, a rounded box seen face-on shows a flat face, a cylinder an arc, a hexagonal prism seen
    corner-on a wedge: what the LiDAR reads the shape from."""
    from m2vae_fusion.core.preprocess import lidar_window
    from m2vae_fusion.sim.hard import sensor_metadata

    cfg = sensor_metadata(world)["lidar"]
    profiles = {}
    for shape, yaw in (("rounded_box", 0.0), ("cylinder", 0.0), ("hexagonal_prism", math.pi / 6)):
        world.clear_objects()
        oid = world.add_object(ObjectSpec("red", shape, "matte", 0.08, 0.13, world="hard"), 0.0, 0.0, yaw)
        world.inspect(0, oid, 0.3, 0.0, bearing=0.0)
        scan = world.lidar_scan(0, noise=False)
        profiles[shape] = lidar_window(scan, cfg, np.array([0.3, 0.0, 0.04]))[0] * 0.3 - 0.15  # metres
    c = slice(28, 36)                                   # the central 3.75 cm
    assert np.ptp(profiles["rounded_box"][c]) < 0.002   # flat face
    assert 0.001 < np.ptp(profiles["cylinder"][c]) < 0.006
    assert profiles["hexagonal_prism"][32] < profiles["hexagonal_prism"][28] - 0.003  # a corner towards the robot


def test_hard_samples_views_and_determinism():
    from m2vae_fusion.sim import hard

    a = hard.generate_samples(6, np.random.default_rng(3), views=3, object_offset=100)
    b = hard.generate_samples(6, np.random.default_rng(3), views=3, object_offset=100)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert a["camera"].shape == (6, 64, 64, 3) and a["lidar"].shape == (6, 667) and a["reflectance"].shape == (6, 8, 2)
    assert list(a["object_id"]) == [100, 100, 100, 101, 101, 101]
    assert len(set(a["label"][:3])) == 1 and len(set(a["label"][3:])) == 1
    assert np.all(a["label"] < 27) and a["target_position"].dtype == np.float32
    # views of one object differ (pose, light, noise), the target stays in front and within the inspection range
    assert not np.array_equal(a["camera"][0], a["camera"][1])
    d = np.hypot(a["target_position"][:, 0], a["target_position"][:, 1])
    assert np.all((d > 0.09) & (d < 0.65)) and np.all(np.abs(np.arctan2(a["target_position"][:, 1],
                                                                          a["target_position"][:, 0])) < 0.26)
    assert hard.kelvin_rgb(2000)[2] < 0.3 and np.allclose(hard.kelvin_rgb(6500), 1.0, atol=0.03)


def test_hard_views_keep_the_camera_clear_of_the_target():
    """The robot is never placed so close that its rim (where the camera sits) is within ``min_clearance`` of the
    target's bounding circle: closer, the renderer's 1 cm near plane clipped the target out of the image. The clamp
    draws nothing, so views that did not need it are unchanged; clamped views see their target."""
    from m2vae_fusion.sim import hard

    w = hard.make_world()
    clamped = 0
    try:
        scene = hard.HardScene(w)
        rng = np.random.default_rng(11)
        for i in range(160):
            if i % 4 == 0:
                scene.set_object(hard.draw_object(rng), rng)
            view = scene.observe(rng)
            floor = AMIRO_RADIUS + scene._radius(scene.target) + hard.SCENE["min_clearance"]
            assert view["scene"]["distance"] >= floor - 1e-12, i
            if view["scene"]["distance"] == floor:
                clamped += 1
                if view["scene"]["occluded_fraction"] == 0:
                    assert (w.camera_segmentation(0, 64, 64) == scene.target).mean() > 0.2, i
    finally:
        w.close()
    assert 3 <= clamped <= 40  # the draws that needed it (about one near view in ten)


def test_hard_static_views_are_fused_by_the_shipped_bundle():
    """``bench runtime`` feeds the node these: one object, one pose, new sensor noise per observation, with the
    target's position. The shipped hard bundle must fuse every one of them (none novel, none held back) - with
    the earlier synthetic blobs it refused most, so the benchmark timed a node that published almost nothing."""
    import json
    import os

    from m2vae_fusion.benchmarks.inference import CorePath, make_observations
    from m2vae_fusion.core.agent import Drop
    from m2vae_fusion.sim import hard

    a = hard.static_views(3, np.random.default_rng(5), sizes=((320, 240),), label=4)
    assert a["camera_320x240"].shape == (3, 240, 320, 3) and a["lidar"].shape == (3, 667)
    assert a["reflectance"].shape == (3, 8, 2) and a["target_position"].shape == (3,) and int(a["label"]) == 4
    assert not np.array_equal(a["camera_320x240"][0], a["camera_320x240"][1])  # new noise per observation
    bundle = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "amiro")
    with open(os.path.join(bundle, "manifest.json")) as f:
        manifest = json.load(f)
    obs = make_observations(manifest, 4, seed=1)
    assert str(obs["source"]).startswith("simulated hard world") and obs["camera_640x480"].shape == (4, 480, 640, 3)
    core = CorePath(bundle, manifest, 1, obs)
    crop = core.agent.crop_position(core.target)
    assert crop is not None and np.allclose(crop, obs["target_position"])
    assert core.agent.novelty_threshold > 0  # the default: the bundle's calibrated threshold is in force
    drops = []
    for m, kind in (("camera", "camera_320x240"), ("lidar", "lidar"), ("reflectance", "reflectance")):
        for i in range(4):
            stamp = core._next()
            try:
                core.agent.observe(m, stamp, obs[kind][i], core.agent.admit(m, stamp, stamp))
            except Drop as exc:
                drops.append((m, exc.reason.name))
    assert drops == []
