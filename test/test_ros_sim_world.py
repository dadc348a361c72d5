"""The simulated-world node with two fusion nodes, all started as processes from the installed parameter files
(config/sim_world.yaml, config/fusion.yaml) plus overrides: sensor topics per agent rig at their rates, targets of
interest consistent with the ground truth, and fusion of the simulated sensors into beliefs about the right objects,
shared between the agents."""
import json
import os
import time

import numpy as np
import pytest

import rclpy  # noqa: E402  (a missing ROS install must fail, not skip)
import m2vae_fusion_msgs.msg  # noqa: E402,F401
import pybullet  # noqa: E402,F401

from m2vae_fusion_msgs.msg import LatentEmbedding, TargetOfInterest  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image, LaserScan  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from m2vae_fusion.core import messages as conv  # noqa: E402
from m2vae_fusion.ros.harness import RELIABLE_QOS, SENSOR_QOS, NodeProcess, Probe  # noqa: E402

pytestmark = pytest.mark.ros
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
# every TargetOfInterest is kept (refreshes at each sensor tick): the tour timing below needs each change
TARGETS_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
OBJECTS = ["red_cube_shiny", "green_cylinder_matte"]
INSPECT, TRANSIT = 2.0, 0.5


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bundle"))
    try:
        from m2vae_fusion.training.export import export_untrained
    except ImportError:
        from linear_bundle import make_linear_bundle

        return make_linear_bundle(out, 4, 4, seed=3)
    return export_untrained(out, seed=0)


@pytest.fixture(scope="module")
def world(bundle_dir, tmp_path_factory):
    logs = str(tmp_path_factory.mktemp("simlogs"))
    rclpy.init()
    probe = Probe("sim_tester")
    for ns in ("agent0", "agent1"):
        probe.subscribe(f"/{ns}/latent", LatentEmbedding)
        probe.subscribe(f"/{ns}/target_of_interest", TargetOfInterest, TARGETS_QOS)
        probe.subscribe(f"/{ns}/camera/image_raw", Image, SENSOR_QOS)
        probe.subscribe(f"/{ns}/scan", LaserScan, SENSOR_QOS)
        probe.subscribe(f"/{ns}/reflectance", LaserScan, SENSOR_QOS)
    probe.subscribe("/sim/ground_truth", String, LATCHED)
    procs = {}
    try:
        procs["sim"] = NodeProcess(
            "m2vae_fusion.ros.sim_world_node", "", log_dir=logs, name="sim",
            params_files=[os.path.join(ROOT, "config", "sim_world.yaml")],
            params={"num_agents": 2, "sensors": ["all", "camera"], "objects": OBJECTS,
                    "inspect_duration": INSPECT, "transit_duration": TRANSIT})
        for ns, mods in (("agent0", ["camera", "lidar", "reflectance"]), ("agent1", ["camera"])):
            procs[ns] = NodeProcess("m2vae_fusion.ros.fusion_node", f"/{ns}", log_dir=logs,
                                    params_files=[os.path.join(ROOT, "config", "fusion.yaml")],
                                    params={"model_dir": bundle_dir, "modalities": mods, "diagnostics_period": 0.5})
        for ns in ("agent0", "agent1"):
            assert probe.diagnostics(f"/{ns}/fusion_node", timeout=30) is not None, procs[ns].dump_stack()
        # two full tours: each agent inspects both objects
        deadline = time.monotonic() + 4 * (INSPECT + TRANSIT) + 3
        while time.monotonic() < deadline:
            assert all(p.alive() for p in procs.values()), {k: p.log()[-3000:] for k, p in procs.items()}
            time.sleep(0.5)
        yield probe, procs
    finally:
        for p in procs.values():
            code = p.stop()
            if code != 0:
                print(f"--- {p.name} exit {code}:\n{p.log()[-3000:]}")
        probe.close()
        rclpy.try_shutdown()


def _rate(probe, topic):
    rec = probe.received[topic]
    if len(rec) < 3:
        return 0.0
    return (len(rec) - 1) / (rec[-1][0] - rec[0][0])


def test_sensor_topics_follow_each_agents_rig_at_realistic_rates(world):
    probe, procs = world
    for topic, hz in (("/agent0/camera/image_raw", 15), ("/agent1/camera/image_raw", 15),
                      ("/agent0/scan", 10), ("/agent0/reflectance", 10)):
        rate = _rate(probe, topic)
        assert 0.6 * hz < rate < 1.3 * hz, f"{topic} at {rate:.1f} Hz"
    assert not probe.received["/agent1/scan"] and not probe.received["/agent1/reflectance"]
    assert probe.node.count_publishers("/agent1/scan") == 0
    img = probe.received["/agent0/camera/image_raw"][-1][1]
    assert (img.width, img.height, img.encoding) == (160, 120, "rgb8")
    scan = probe.received["/agent0/reflectance"][-1][1]
    assert len(scan.ranges) == len(scan.intensities) == 8


def test_ground_truth_and_targets_of_interest(world):
    probe, _ = world
    truth = json.loads(probe.received["/sim/ground_truth"][-1][1].data)
    assert [truth["objects"][f"object_{j}"]["class_name"] for j in range(2)] == OBJECTS
    assert truth["agents"]["agent1"]["sensors"] == ["camera"]
    for ns in ("agent0", "agent1"):
        seq = []
        for _, m in probe.received[f"/{ns}/target_of_interest"]:
            if not seq or seq[-1][0] != m.target_id:
                seq.append((m.target_id, conv.stamp_to_ns(m.header.stamp)))
        inspected = [t for t, _ in seq if t]
        assert set(inspected) == {"object_0", "object_1"}, seq
        assert all(a != b for a, b in zip(inspected, inspected[1:])), "agents inspect the objects in turn"
        # the first segment's first message may be a position refresh (the latched history holds the newest),
        # so its start is not the announcement: timed from the second segment on
        durations = [(b - a) * 1e-9 for (ta, a), (_, b) in zip(seq[1:], seq[2:]) if ta]
        assert durations
        assert all(abs(d - INSPECT) < 0.05 for d in durations), durations


def _target_at(probe, ns, stamp_ns):
    best = None
    for _, m in probe.received[f"/{ns}/target_of_interest"]:
        s = conv.stamp_to_ns(m.header.stamp)
        if s <= stamp_ns and (best is None or s >= best[0]):
            best = (s, m.target_id)
    return best[1] if best else None


RACE_S = 0.25


def _since_change(probe, ns, stamp_ns):
    """Seconds from the newest change of target id announced at or before ``stamp_ns`` (inf: none seen)."""
    seq = sorted((conv.stamp_to_ns(m.header.stamp), m.target_id)
                 for _, m in probe.received[f"/{ns}/target_of_interest"])
    last_change = None
    for k, (s, t) in enumerate(seq):
        if s > stamp_ns:
            break
        if k == 0 or seq[k - 1][1] != t:
            last_change = s
    return float("inf") if last_change is None else (stamp_ns - last_change) * 1e-9


def test_agents_fuse_what_they_inspect_and_share_it(world):
    probe, procs = world
    for ns, own in (("agent0", {"camera", "lidar", "reflectance"}), ("agent1", {"camera"})):
        latents = probe.messages(f"/{ns}/latent")
        assert latents, f"{ns} published no latent"
        checked = 0
        for lat in latents:
            assert lat.target_id in ("object_0", "object_1")
            stamps = [conv.stamp_to_ns(s) for s in lat.modality_stamps]
            newest = int(np.argmax(stamps))
            if lat.modality_sources[newest] == ns:  # the agent's own newest observation: the target at its stamp
                expected = _target_at(probe, ns, stamps[newest])
                if expected is None:  # before the first announcement this probe received (discovery still running)
                    continue
                if _since_change(probe, ns, stamps[newest]) < RACE_S:
                    # the node assigns targets in receive order: an announcement delivered after a frame stamped just
                    # after it leaves that frame with the previous target (documented race; under load)
                    continue
                assert expected == lat.target_id
                checked += 1
        assert checked >= 5
        own_mods = {m for lat in latents for m, src in zip(lat.modalities, lat.modality_sources) if src == ns}
        assert own_mods == own
    # agent1 (camera only) holds agent0's LiDAR and reflectance evidence about the objects both inspected
    merged = probe.messages("/agent1/latent", lambda m: list(m.modalities) == ["camera", "lidar", "reflectance"])
    assert merged, "agent1 never merged agent0's latents"
    assert [m for m in merged if list(m.modality_sources) == ["agent1", "agent0", "agent0"]
            and list(m.contributors) == ["agent0", "agent1"]], "agent1 never fused its camera with agent0's evidence"
    for ns in ("agent0", "agent1"):
        vals = probe.diagnostics(f"/{ns}/fusion_node", after=time.monotonic())
        assert vals.get("dropped.total", 0) == 0, {k: v for k, v in vals.items() if k.startswith("dropped")}
        assert vals["processed.camera"] > 20 and vals.get("no_target.camera", 0) > 0
        assert vals.get("processed.peer", 0) > 0
    vals = probe.diagnostics("/agent0/fusion_node", after=time.monotonic())
    report = {src: (vals[f"latency_ms.{src}.p50"], vals[f"latency_ms.{src}.p99"], vals[f"latency_ms.{src}.window"])
              for src in ("camera", "lidar", "reflectance", "peer") if f"latency_ms.{src}.p50" in vals}
    print("\nagent0 receive->publish latency ms (p50, p99, n):", report)
