"""Which world the demo and the simulator run: the bundle's (manifest), the hard world's drawn tour, and the
simulator node built in the hard world (in process, real rclpy, no DDS traffic needed)."""
import json
import math

import numpy as np
import pytest

from m2vae_fusion.data.classes import WORLDS
from m2vae_fusion.errors import UserError
from m2vae_fusion.ros.demo import DemoConfig, bundle_world, resolve_world
from m2vae_fusion.ros.sim_world_node import tour_classes


def test_bundle_world_from_the_manifest_else_the_class_names_else_easy():
    assert bundle_world({"training": {"dataset": {"world": "hard"}}, "class_names": None}) == "hard"
    assert bundle_world({"training": {"dataset": {"seed": 7}}, "class_names": WORLDS["easy"].class_names}) == "easy"
    assert bundle_world({"class_names": WORLDS["hard"].class_names}) == "hard"
    assert bundle_world({"training": {"dataset": None}, "class_names": None}) == "easy"


def test_shipped_bundle_tours_the_hard_world_and_the_easy_bundle_the_easy_one():
    import os

    from m2vae_fusion.core.bundle import read_manifest

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    man = read_manifest(os.path.join(root, "models", "amiro"))
    cfg = resolve_world(DemoConfig(), man)
    assert cfg.world == "hard" and len(cfg.objects) == 10 and set(cfg.objects) <= set(WORLDS["hard"].class_names)
    assert man["class_names"] == list(WORLDS["hard"].class_names)
    easy = read_manifest(os.path.join(root, "models", "amiro_easy"))
    cfg = resolve_world(DemoConfig(), easy)
    assert cfg.world == "easy" and cfg.objects == WORLDS["easy"].class_names


def test_hard_tour_is_drawn_by_the_seed_from_all_27_classes():
    hard_manifest = {"training": {"dataset": {"world": "hard"}}}
    cfg = resolve_world(DemoConfig(seed=3), hard_manifest)
    assert cfg.world == "hard" and len(cfg.objects) == 10 and len(set(cfg.objects)) == 10
    assert all(o in WORLDS["hard"].class_names for o in cfg.objects)
    assert resolve_world(DemoConfig(seed=3), hard_manifest).objects == cfg.objects
    assert resolve_world(DemoConfig(seed=4), hard_manifest).objects != cfg.objects
    assert sorted(tour_classes(0, 27)) == list(range(27)) and len(tour_classes(0, 30)) == 30
    assert len(resolve_world(DemoConfig(num_objects=4), hard_manifest).objects) == 4
    with pytest.raises(UserError, match="red_cube_shiny"):  # an easy class name in the hard world
        resolve_world(DemoConfig(objects=["red_cube_shiny"]), hard_manifest)
    with pytest.raises(UserError, match="world"):
        resolve_world(DemoConfig(world="medium"), hard_manifest)


def test_sim_world_node_in_the_hard_world():
    import rclpy
    from rclpy.parameter import Parameter

    from m2vae_fusion.ros.sim_world_node import SimWorldNode

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=44)
    node = None
    try:
        node = SimWorldNode(context=ctx, parameter_overrides=[
            Parameter("world", value="hard"), Parameter("num_objects", value=4), Parameter("num_agents", value=1),
            Parameter("camera_rate", value=0.0), Parameter("lidar_rate", value=0.0),
            Parameter("reflectance_rate", value=0.0)])
        names = [spec.class_name for _, _, spec, _, _ in node.objects]
        assert len(names) == 4 and all(n in WORLDS["hard"].class_names for n in names)
        assert all(spec.world == "hard" and spec.width > 0.09 for _, _, spec, _, _ in node.objects)
        assert node.world.lidar.noise_std == pytest.approx(0.01)
        img = node._hard_camera(0, 2.0, True)
        assert img.shape == (120, 160, 3) and img.dtype == np.uint8 and img.std() > 1
        # while inspecting, the target of interest is the object, positioned at its centre (z = half its height)
        t_inspect = node.p["transit_duration"] + 0.1
        tid, _ = node.target(0, t_inspect)
        assert tid == node.objects[node.tours[0].phase(t_inspect).obj][0]
        # every visit's inspection pose keeps the camera (on the rim) clear of the object, as the data set does
        from m2vae_fusion.sim import hard
        from m2vae_fusion.sim.sensors import AMIRO_RADIUS

        gaps = []
        for visit in range(node.distances.shape[1]):
            for obj, (_, _, spec, (ox, oy), _) in enumerate(node.objects):
                x, y, _ = node._inspect_pose(0, visit, obj)
                gaps.append(math.hypot(ox - x, oy - y) - AMIRO_RADIUS - hard.bounding_radius(spec))
        assert min(gaps) >= hard.SCENE["min_clearance"] - 1e-9 and max(gaps) > 0.1
        sent = []
        node.pub_truth.publish = lambda msg: sent.append(json.loads(msg.data))
        node._publish_truth(0)
        assert sent[-1]["world"] == "hard" and len(sent[-1]["class_names"]) == 27
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.shutdown(context=ctx)
