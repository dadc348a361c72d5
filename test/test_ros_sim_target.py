"""The simulated world gives the fusion node what a perception pipeline would: each agent's TargetOfInterest position
in the agent's base frame (``base_link``, refreshed as the robot pans) and the rendered camera's CameraInfo, so that a
bundle whose preprocessing crops (the hard world's) crops on the target and never takes the fallback.

Real rclpy pub/sub between processes: the sim world node (hard world, one camera+LiDAR agent, two objects, no noise)
and a fusion node on a linear bundle with the hard world's crop configuration (no training). Checked here, with code
of its own: the published position against the ground truth's object position and robot pose (x forward, y left,
z up); the position projected through the published CameraInfo and the camera mount onto the rendered image lands on
the object, whose silhouette edges are where the cylinder's tangents from the camera put them; the fusion node crops
every camera image and LiDAR scan from the position (``crop_fallback.*`` stay 0)."""
import json
import math
import os
import time

import cv2
import numpy as np
import pytest

import rclpy  # noqa: E402  (a missing ROS install must fail, not skip)
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from m2vae_fusion.core import messages as conv  # noqa: E402
from m2vae_fusion.core.preprocess import DEFAULT_CONFIGS  # noqa: E402
from m2vae_fusion.ros.harness import RELIABLE_QOS, SENSOR_QOS, NodeProcess, Probe  # noqa: E402
from m2vae_fusion_msgs.msg import TargetOfInterest  # noqa: E402

pytestmark = pytest.mark.ros
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
OBJECTS = ["red_cylinder_matte", "yellow_cylinder_shiny"]  # cylinders: their silhouettes are known exactly
INSPECT, TRANSIT, JITTER = 1.6, 0.3, 0.15
NS = "agent0"


def _hard_configs():
    from m2vae_fusion.sim.hard import sensor_metadata

    meta = sensor_metadata()
    return {**DEFAULT_CONFIGS, "camera": meta["camera"], "lidar": meta["lidar"], "reflectance": meta["reflectance"]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from linear_bundle import make_linear_bundle

    bundle = make_linear_bundle(str(tmp_path_factory.mktemp("hard_crop_bundle")), 4, 4, seed=11,
                                configs=_hard_configs())
    logs = str(tmp_path_factory.mktemp("logs"))
    rclpy.init()
    probe = Probe("sim_target_tester")
    probe.subscribe(f"/{NS}/target_of_interest", TargetOfInterest, RELIABLE_QOS)
    probe.subscribe(f"/{NS}/camera/image_raw", Image, SENSOR_QOS)
    probe.subscribe(f"/{NS}/camera/camera_info", CameraInfo, SENSOR_QOS)
    probe.subscribe("/sim/ground_truth", String, LATCHED)
    procs = {}
    try:
        procs["fusion"] = NodeProcess("m2vae_fusion.ros.fusion_node", f"/{NS}", log_dir=logs,
                                      params_files=[os.path.join(ROOT, "config", "fusion.yaml")],
                                      params={"model_dir": bundle, "agent_id": NS, "modalities": ["camera", "lidar"],
                                              "shared_latent_topic": "", "diagnostics_period": 0.5})
        assert probe.diagnostics(f"/{NS}/fusion_node", timeout=30) is not None, procs["fusion"].log()[-3000:]
        procs["sim"] = NodeProcess(
            "m2vae_fusion.ros.sim_world_node", "", log_dir=logs, name="sim",
            params_files=[os.path.join(ROOT, "config", "sim_world.yaml")],
            params={"num_agents": 1, "sensors": ["camera+lidar"], "world": "hard", "objects": OBJECTS,
                    "noise": False, "inspect_duration": INSPECT, "transit_duration": TRANSIT,
                    "heading_jitter": JITTER, "target_refresh_distance": 0.0})
        assert probe.wait_for("/sim/ground_truth", timeout=30) is not None, procs["sim"].log()[-3000:]
        deadline = time.monotonic() + 2 * (INSPECT + TRANSIT) + 1.0  # one tour: both objects inspected
        while time.monotonic() < deadline:
            assert all(p.alive() for p in procs.values()), {k: p.log()[-3000:] for k, p in procs.items()}
            time.sleep(0.25)
        diag = probe.diagnostics(f"/{NS}/fusion_node", after=time.monotonic(), timeout=5)
        yield probe, diag
    finally:
        for p in procs.values():
            code = p.stop()
            if code != 0:
                print(f"--- {p.name} exit {code}:\n{p.log()[-3000:]}")
        probe.close()
        rclpy.try_shutdown()


def _targets(probe):
    return [m for m in probe.messages(f"/{NS}/target_of_interest") if m.target_id]


def _base(pose, point):
    """World point → base frame of a robot at (x, y, yaw), written out here (not the node's helper)."""
    x, y, yaw = pose
    dx, dy = point[0] - x, point[1] - y
    return np.array([dx * math.cos(yaw) + dy * math.sin(yaw), dy * math.cos(yaw) - dx * math.sin(yaw), point[2]])


def test_target_position_is_in_the_base_frame_and_follows_the_robot(run):
    probe, _ = run
    msgs = _targets(probe)
    assert {m.target_id for m in msgs} == {"object_0", "object_1"}
    assert all(m.header.frame_id == "base_link" and m.has_position for m in msgs), \
        {(m.header.frame_id, m.has_position, m.target_id) for m in msgs}
    for tid in ("object_0", "object_1"):
        pos = np.array([[m.position.x, m.position.y, m.position.z] for m in msgs if m.target_id == tid])
        # in front of the robot, at an inspection distance, within the pan of its heading
        assert np.all(pos[:, 0] > 0.05) and np.all(np.hypot(pos[:, 0], pos[:, 1]) < 0.4), pos
        bearing = np.arctan2(pos[:, 1], pos[:, 0])
        assert np.all(np.abs(bearing) <= JITTER + 1e-3) and np.ptp(bearing) > 0.05, bearing
        assert len(np.unique(pos[:, 1])) > 5, "the position is refreshed while the robot pans"
    # the ground truth's object position and robot pose give the published position
    checked = 0
    stamps = {conv.stamp_to_ns(m.header.stamp): m for m in msgs}
    for _, s in probe.received["/sim/ground_truth"]:
        truth = json.loads(s.data)
        agent = truth["agents"][NS]
        if "target_position" not in agent:
            continue
        obj = truth["objects"][agent["target_id"]]
        expected = _base(agent["target_pose"], [*obj["position"][:2], obj["height"] / 2])
        np.testing.assert_allclose(agent["target_position"], expected, atol=1e-6)
        m = stamps.get(agent["target_stamp_ns"])
        if m is not None:
            np.testing.assert_allclose([m.position.x, m.position.y, m.position.z], expected, atol=1e-6)
            checked += 1
    assert checked >= 2


def test_position_projects_onto_the_object_through_camera_info(run):
    from m2vae_fusion.core.preprocess import camera_translation, project_to_image

    probe, _ = run
    infos = {conv.stamp_to_ns(m.header.stamp): m for m in probe.messages(f"/{NS}/camera/camera_info")}
    images = probe.messages(f"/{NS}/camera/image_raw")
    assert images and infos
    info = next(iter(infos.values()))
    t = math.tan(math.radians(45.0) / 2)
    np.testing.assert_allclose(info.k, [80 / (4 / 3 * t), 0, 80, 0, 60 / t, 60, 0, 0, 1], rtol=1e-9)
    assert (info.width, info.height) == (160, 120)
    truth = json.loads(probe.received["/sim/ground_truth"][-1][1].data)
    radius = {tid: o["width"] / 2 for tid, o in truth["objects"].items()}
    msgs = _targets(probe)
    cam_cfg = _hard_configs()["camera"]
    edges = []
    for img in images:
        s = conv.stamp_to_ns(img.header.stamp)
        if s not in infos:
            continue
        assert list(infos[s].k) == list(info.k) and infos[s].header.frame_id == img.header.frame_id
        same = [m for m in msgs if conv.stamp_to_ns(m.header.stamp) == s]  # refreshed at this image's pose
        if not same:
            continue
        p, k = same[0].position, infos[s].k
        u, v, _ = project_to_image([[p.x, p.y, p.z]], cam_cfg, img.width, img.height, camera_k=k)
        u, v = float(u[0]), float(v[0])
        sat = cv2.cvtColor(conv.image_to_rgb(img), cv2.COLOR_RGB2HSV)[:, :, 1] >= 0.35 * 255
        row, col = sat[int(v)], int(u)
        assert row[col], f"the projected target centre ({u:.1f}, {v:.1f}) is not on the object"
        left, right = col, col + 1  # pixel edges of the object's run of saturated pixels in that row
        while left > 0 and row[left - 1]:
            left -= 1
        while right < img.width and row[right]:
            right += 1
        # the cylinder's silhouette: tangents from the optical centre (x forward, y left) at bearing ± asin(r / d)
        x, y = p.x - camera_translation(cam_cfg)[0], p.y - camera_translation(cam_cfg)[1]
        bearing, half = math.atan2(y, x), math.asin(radius[same[0].target_id] / math.hypot(x, y))
        if left > 0:
            edges.append(left - (k[2] - k[0] * math.tan(bearing + half)))
        if right < img.width:
            edges.append(right - (k[2] - k[0] * math.tan(bearing - half)))
    assert len(edges) >= 10, len(edges)
    assert np.max(np.abs(edges)) < 1.5, np.round(edges, 2)


def test_fusion_node_crops_from_the_target_position(run):
    _, diag = run
    assert diag is not None
    assert diag.get("processed.camera", 0) > 10 and diag.get("processed.lidar", 0) > 5, diag
    assert diag.get("crop_fallback.camera", 0) == 0 and diag.get("crop_fallback.lidar", 0) == 0, \
        {k: v for k, v in diag.items() if k.startswith(("crop", "processed", "dropped", "no_target"))}
    assert diag.get("dropped.total", 0) == 0
