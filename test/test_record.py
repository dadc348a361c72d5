"""Recording the simulated world into rosbag2 bags (m2vae_fusion.ros.record.BagRecorder, `m2vae-fusion record`) with
real rclpy and rosbags, then extracting a data set from the recording (m2vae_fusion.data.from_bag): the bag holds
the published bytes (compared with what a probe received), QoS follows the publishers, the data set holds the
node's conversions of the published messages with the ground-truth labels, and the record command stops cleanly on
SIGTERM, SIGINT and a process-group Ctrl-C (also with a CPU hog running) with exit 0, no traceback and the bag
closed."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import rclpy  # noqa: E402  (a missing ROS install must fail, not skip)
import m2vae_fusion_msgs.msg  # noqa: E402,F401
import pybullet  # noqa: E402,F401
import rosbags  # noqa: E402,F401

import json  # noqa: E402

from m2vae_fusion_msgs.msg import TargetOfInterest  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.serialization import deserialize_message  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402
from sensor_msgs.msg import Image, LaserScan  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from m2vae_fusion import bags as bt  # noqa: E402
from m2vae_fusion.core import messages as conv  # noqa: E402
from m2vae_fusion.core.preprocess import resize_camera  # noqa: E402
from m2vae_fusion.data import from_bag as fb  # noqa: E402
from m2vae_fusion.data.classes import CLASS_NAMES  # noqa: E402
from m2vae_fusion.data.shards import load_split, read_metadata  # noqa: E402
from m2vae_fusion.ros.harness import NodeProcess, Probe  # noqa: E402
from m2vae_fusion.ros.record import BagRecorder  # noqa: E402

pytestmark = pytest.mark.ros
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
OBJECTS = ["red_cube_shiny", "green_cylinder_matte", "red_cylinder_matte"]
RIGS = {"agent0": ("camera", "lidar", "reflectance"), "agent1": ("camera", "lidar")}
TOPIC = {"camera": "camera/image_raw", "lidar": "scan", "reflectance": "reflectance"}
RECORD_S = 5.0
DEEP = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)  # the probe must not lose what the bag holds


def sensor_topics():
    return {f"/{a}/{TOPIC[m]}": (a, m) for a, rig in RIGS.items() for m in rig}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The simulated world (2 agents, 3 objects, short inspections) and a probe that receives everything."""
    logs = str(tmp_path_factory.mktemp("reclogs"))
    rclpy.init()
    probe = Probe("record_tester")
    for topic, (_, m) in sensor_topics().items():
        probe.subscribe(topic, Image if m == "camera" else LaserScan, DEEP)
    for a in RIGS:
        probe.subscribe(f"/{a}/target_of_interest", TargetOfInterest, QoSProfile(
            depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    probe.subscribe("/sim/ground_truth", String, LATCHED)
    sim = None
    try:
        sim = NodeProcess("m2vae_fusion.ros.sim_world_node", "", log_dir=logs, name="sim",
                          params_files=[os.path.join(ROOT, "config", "sim_world.yaml")],
                          params={"num_agents": 2, "sensors": ["+".join(r) for r in RIGS.values()],
                                  "objects": OBJECTS, "seed": 3, "inspect_duration": 1.5, "transit_duration": 0.5,
                                  "camera_width": 80, "camera_height": 60})
        yield probe, sim
    finally:
        if sim is not None:
            code = sim.stop()
            if code != 0:
                print(f"--- sim exit {code}:\n{sim.log()[-3000:]}")
        probe.close()
        rclpy.try_shutdown()


@pytest.fixture(scope="module")
def recorded(world, tmp_path_factory):
    """A bag recorded in-process by BagRecorder on the probe's node (which the probe spins)."""
    probe, sim = world
    bag = str(tmp_path_factory.mktemp("rec") / "bag")
    rec = BagRecorder(probe.node, bag, namespaces=["/agent0", "/agent1"])  # before the world publishes
    try:
        want = set(sensor_topics()) | {f"/{a}/target_of_interest" for a in RIGS} | {"/sim/ground_truth"}
        want |= {f"/{a}/camera/camera_info" for a, rig in RIGS.items() if "camera" in rig}  # sim_world sends K
        deadline = time.monotonic() + 40
        while not want <= set(rec.counts):
            assert sim.alive(), sim.log()[-3000:]
            assert time.monotonic() < deadline, (sorted(rec.counts), sim.log()[-3000:])
            time.sleep(0.1)
        time.sleep(RECORD_S)
        hashes = {t: str(probe.node.get_publishers_info_by_topic(t)[0].topic_type_hash) for t in want}
    finally:
        rec.close()
    assert sim.alive(), sim.log()[-3000:]
    return bag, rec, hashes


def bag_messages(bag):
    """topic -> [(bag time, raw bytes)], and the connections, read with rosbags."""
    out = {}
    with Reader(bag) as r:
        conns = {c.topic: c for c in r.connections}
        for c, t, raw in r.messages():
            out.setdefault(c.topic, []).append((t, bytes(raw)))
    return out, conns


def test_bag_holds_what_was_published(world, recorded):
    probe, _ = world
    bag, rec, hashes = recorded
    msgs, conns = bag_messages(bag)
    assert os.path.isfile(os.path.join(bag, "metadata.yaml")) and os.path.isfile(os.path.join(bag, "bag.mcap"))
    assert set(conns) == set(rec.counts) and sum(len(v) for v in msgs.values()) == rec.count
    assert {t for t in conns if "/latent" in t or "/belief" in t} == set()
    for topic, conn in conns.items():
        assert conn.digest == hashes[topic], topic  # our typestore's definitions are the nodes' definitions
    # QoS adapted to the publishers: sensors reliable + volatile, targets and ground truth transient-local
    assert rec.qos["/agent0/scan"].durability == DurabilityPolicy.VOLATILE
    assert rec.qos["/agent0/scan"].reliability == ReliabilityPolicy.RELIABLE
    for t in ("/agent0/target_of_interest", "/sim/ground_truth"):
        assert rec.qos[t].durability == DurabilityPolicy.TRANSIENT_LOCAL
        assert conns[t].ext.offered_qos_profiles[0].durability.name == "TRANSIENT_LOCAL"
    for topic in sensor_topics():
        cls = Image if "camera" in topic else LaserScan
        published = {conv.stamp_to_ns(m.header.stamp): content(m) for m in probe.messages(topic)}
        # read back independently of rosbags (rclpy); DDS and rclpy leave alignment padding uninitialised, so the
        # raw bytes are compared field by field
        in_bag = [deserialize_message(raw, cls) for _, raw in msgs[topic]]
        stamps = [conv.stamp_to_ns(m.header.stamp) for m in in_bag]
        assert len(in_bag) >= 10, (topic, len(in_bag))  # nominally 50-75; the simulator slows down under load
        assert all(published.get(s) == content(m) for s, m in zip(stamps, in_bag)), topic
        window = [s for s in published if min(stamps) <= s <= max(stamps)]
        assert len(in_bag) >= 0.9 * len(window), (topic, len(in_bag), len(window))  # nothing (much) lost
        times = [t for t, _ in msgs[topic]]
        assert times == sorted(times) and all(t >= s for t, s in zip(times, stamps))  # receive times


def content(msg):
    """Every field of an Image / LaserScan as comparable bytes and numbers."""
    if isinstance(msg, Image):
        return (msg.header.frame_id, msg.height, msg.width, msg.encoding, msg.step, bytes(msg.data))
    return (msg.header.frame_id, msg.angle_min, msg.angle_max, msg.angle_increment, msg.range_min, msg.range_max,
            np.asarray(msg.ranges, np.float32).tobytes(), np.asarray(msg.intensities, np.float32).tobytes())


def _modality_of(topic: str) -> str:
    return sensor_topics()[topic][1]


def test_extracted_data_set_matches_what_was_published(world, recorded, tmp_path):
    probe, _ = world
    bag, _, _ = recorded
    agents = [fb.AgentTopics(**{m: f"/{a}/{TOPIC[m]}" for m in rig}, target=f"/{a}/target_of_interest")
              for a, rig in RIGS.items()]
    out = str(tmp_path / "ds")
    ex = fb.extract_bags([bag], out, agents, max_dt=0.1, seed=1, progress=False)
    meta = read_metadata(out)
    assert meta["source"] == "rosbag" and meta["class_names"] == CLASS_NAMES
    # the simulator publishes only good messages; an IR ring that sees nothing (in transit) is refused as no object
    # observed, as the node refuses it
    assert {(_modality_of(t), r) for t, r in ex.dropped} <= {("reflectance", "no_return")}, ex.dropped
    # what was published, converted by the node's code
    sensors = meta["sensors"]
    expected = {}
    for topic, (a, m) in sensor_topics().items():
        for msg in probe.messages(topic):
            key = (topic, conv.stamp_to_ns(msg.header.stamp))
            if m == "camera":
                expected[key] = resize_camera(conv.image_to_rgb(msg), sensors["camera"])
            elif m == "lidar":
                expected[key] = conv.scan_to_ranges(msg, sensors["lidar"])
            elif np.isfinite(np.asarray(msg.ranges)).any():
                expected[key] = conv.reflectance_to_array(msg, 8)
    truth = {}
    for msg in probe.messages("/sim/ground_truth"):
        truth.update({k: v["class_name"] for k, v in json.loads(msg.data)["objects"].items()})
    assert set(truth.values()) == set(OBJECTS)
    timeline = {a: sorted({(conv.stamp_to_ns(m.header.stamp), m.target_id)
                           for m in probe.messages(f"/{a}/target_of_interest")}) for a in RIGS}

    def target_at(a, stamp):
        cur = None
        for s, tid in timeline[a]:
            if s <= stamp:
                cur = tid
        return cur or None

    parts = {s: load_split(out, s) for s in ("train", "val", "test")}
    n_present = {m: 0 for m in fb.MODALITIES}
    for split, arrays in parts.items():
        assert len(arrays["label"]) == len(ex.index[split])
        for row, info in enumerate(ex.index[split]):
            agent = list(RIGS)[info.agent]
            assert info.target == target_at(agent, min(info.stamps.values()))
            assert set(info.stamps) <= set(RIGS[agent])
            assert max(info.stamps.values()) - min(info.stamps.values()) <= 0.1e9
            for j, m in enumerate(fb.MODALITIES):
                assert arrays["present"][row, j] == (m in info.stamps)
                if m in info.stamps:
                    n_present[m] += 1
                    np.testing.assert_array_equal(arrays[m][row], expected[(info.topics[m], info.stamps[m])])
            assert arrays["label"][row] == CLASS_NAMES.index(truth[info.target])
    # every recorded observation that falls into a target's inspection is in exactly one sample
    msgs, _ = bag_messages(bag)
    store = bt.typestore()
    for m in fb.MODALITIES:
        count = 0
        for topic, (a, mod) in sensor_topics().items():
            if mod != m:
                continue
            typ = bt.IMAGE if m == "camera" else bt.SCAN
            for _, raw in msgs[topic]:
                msg = store.deserialize_cdr(raw, typ)
                stamp = conv.stamp_to_ns(msg.header.stamp)
                seen = m != "reflectance" or np.isfinite(np.asarray(msg.ranges)).any()  # else dropped: no_return
                count += target_at(a, stamp) is not None and seen
        assert n_present[m] == count, m
    assert ex.subsets.get("camera+lidar+reflectance", 0) > 0 and ex.subsets.get("camera+lidar", 0) > 0


def test_record_command_stops_cleanly_on_sigterm(world, tmp_path):
    """`m2vae-fusion record` in its own process (the test's ROS_DOMAIN_ID, inherited), restricted to a namespace,
    sqlite3 storage: SIGTERM closes the bag, the labels file comes from the ground truth, and the bag extracts."""
    _, sim = world
    bag = str(tmp_path / "cmdbag")
    labels = str(tmp_path / "labels.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "m2vae_fusion", "record", "--out", bag, "--storage", "sqlite3",
                             "--namespace", "agent1", "--labels-out", labels],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        seen = []
        while len([s for s in seen if s.startswith("recording ")]) < 4 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
        assert len([s for s in seen if s.startswith("recording ")]) == 4, "".join(seen)
        time.sleep(2.5)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    text = "".join(seen) + out
    assert proc.returncode == 0, text
    assert "bag " + bag + " closed" in text
    msgs, conns = bag_messages(bag)
    assert set(conns) == {"/agent1/camera/image_raw", "/agent1/camera/camera_info", "/agent1/scan",
                          "/agent1/target_of_interest", "/sim/ground_truth"}
    assert os.path.isfile(os.path.join(bag, "cmdbag.db3"))
    assert len(msgs["/agent1/camera/image_raw"]) >= 10
    lab = fb.load_labels(labels)
    assert sorted(lab.class_names[k] for k in lab.targets.values()) == sorted(OBJECTS)
    ex = fb.extract_bags([bag], str(tmp_path / "ds"), [fb.AgentTopics(
        camera="/agent1/camera/image_raw", lidar="/agent1/scan", target="/agent1/target_of_interest")],
        labels_path=labels, progress=False)
    assert ex.labelled == sum(ex.metadata["splits"].values()) > 0
    assert sim.alive()


def _start_record(bag, *extra):
    """`m2vae-fusion record` in its own process group, returned once it records (its output lines so far)."""
    proc = subprocess.Popen([sys.executable, "-m", "m2vae_fusion", "record", "--out", bag, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    deadline = time.monotonic() + 30
    while not any(s.startswith("recording ") for s in seen) and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
    return proc, seen


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "group-SIGINT", "group-SIGINT-twice"])
def test_record_command_stops_cleanly_under_load(world, tmp_path, how):
    """Each stop under load (the world publishing, plus a busy CPU hog): exit 0, no traceback, the bag closed and
    readable. ``group-SIGINT`` is Ctrl-C in a terminal / under a launcher (the whole process group gets SIGINT);
    ``-twice`` sends a second one right after (an impatient user), which must not interrupt closing the bag."""
    bag = str(tmp_path / "stopbag")
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    proc = None
    try:
        proc, seen = _start_record(bag, "--namespace", "agent0")
        assert any(s.startswith("recording ") for s in seen), "".join(seen)
        time.sleep(1.5)
        if how.startswith("group"):
            os.killpg(proc.pid, signal.SIGINT)
            if how.endswith("twice"):
                time.sleep(0.05)
                os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(getattr(signal, how))
        out, _ = proc.communicate(timeout=30)
    finally:
        hog.kill()
        hog.wait(5)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
    text = "".join(seen) + out
    assert proc.returncode == 0, text
    assert "Traceback" not in text and "failed to initialize wait set" not in text, text
    sig = "SIGTERM" if how == "SIGTERM" else "SIGINT"
    assert f"(stopped by {sig}); bag {bag} closed" in text, text
    msgs, conns = bag_messages(bag)
    assert set(conns) <= {"/agent0/camera/image_raw", "/agent0/camera/camera_info", "/agent0/scan",
                          "/agent0/reflectance", "/agent0/target_of_interest", "/sim/ground_truth"}
    assert sum(len(m) for m in msgs.values()) > 0
