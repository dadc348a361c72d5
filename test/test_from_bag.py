"""Data sets from rosbag2 bags (m2vae_fusion.data.from_bag, `m2vae-fusion dataset --from-bag`): bags written here with
rosbags (sqlite3 and mcap) holding good and broken messages; grouping of modalities per target and time window,
exact drops by reason, labels from /sim/ground_truth, a labels file or none, PointCloud2 LiDAR, and the command
line's one-line errors (exit status 2) naming the bag, topic or label."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import rosbags  # noqa: E402,F401
import m2vae_fusion_msgs.msg  # noqa: E402,F401

from rclpy.serialization import serialize_message  # noqa: E402
from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from m2vae_fusion import bags as bt  # noqa: E402
from m2vae_fusion.cli import main as cli_main  # noqa: E402
from m2vae_fusion.core.preprocess import DEFAULT_CONFIGS, resize_camera  # noqa: E402
from m2vae_fusion.data import from_bag as fb  # noqa: E402
from m2vae_fusion.data.classes import CLASS_NAMES  # noqa: E402
from m2vae_fusion.data.shards import load_split, read_metadata  # noqa: E402
from m2vae_fusion.errors import UserError  # noqa: E402
from m2vae_fusion.core import messages as conv  # noqa: E402

T0 = 1_700_000_000 * 10 ** 9
LIDAR = {k: DEFAULT_CONFIGS["lidar"][k] for k in ("beams", "angle_min", "angle_increment", "range_min", "range_max")}
REFL = {"angle_min": 0.0, "angle_increment": 2 * np.pi / 8, "range_min": 0.0, "range_max": 0.8}
CAM, SCAN, RFL, TOI = "/r/camera/image_raw", "/r/scan", "/r/reflectance", "/r/target_of_interest"
GT = "/sim/ground_truth"
TOPICS = ["--camera-topic", CAM, "--lidar-topic", SCAN, "--reflectance-topic", RFL, "--target-topic", TOI]
TRUTH = {"object_0": "red_cube_shiny", "object_1": "green_cylinder_matte"}


def ns(t: float) -> int:
    return T0 + int(round(t * 1e9))


def image(k: int, stamp: int):
    rng = np.random.default_rng(k)
    return conv.rgb_to_image(rng.integers(0, 256, (12, 16, 3)).astype(np.uint8), "bgr8", stamp, "cam", row_padding=2)


def scan(k: int, stamp: int, nan_fraction: float = 0.0):
    r = np.random.default_rng(100 + k).uniform(0.1, 5.0, LIDAR["beams"]).astype(np.float32)
    r[:: 7] = np.inf
    r[: int(nan_fraction * r.size)] = np.nan
    return conv.ranges_to_scan(r, LIDAR, stamp, "laser")


def refl(k: int, stamp: int, bad: bool = False):
    rng = np.random.default_rng(200 + k)
    inten = rng.uniform(0, 1, 8)
    if bad:
        inten[3] = -1.0
    return conv.ranges_to_scan(rng.uniform(0.05, 0.8, 8), REFL, stamp, "ir", intensities=inten)


def truth_msg():
    return String(data=json.dumps({"class_names": CLASS_NAMES, "objects": {
        k: {"class_name": v, "class_id": CLASS_NAMES.index(v)} for k, v in TRUTH.items()}}))


def scenario():
    """(topic, type, bag time ns, message or raw bytes) of one agent; see the expected groups in test_groups_*."""
    msgs = [(GT, bt.STRING, ns(0.0), truth_msg()),
            (TOI, bt.TARGET, ns(1.0), conv.target_msg("object_0", ns(1.0))),
            (TOI, bt.TARGET, ns(2.0), conv.target_msg("object_0", ns(1.0))),  # a repeated announcement
            (TOI, bt.TARGET, ns(3.0), conv.target_msg("", ns(3.0))),
            (TOI, bt.TARGET, ns(4.0), conv.target_msg("object_1", ns(4.0)))]
    msgs.append((CAM, bt.IMAGE, ns(0.5), image(99, ns(0.5))))  # before any target
    for k in range(10):
        t = ns(1.05 + 0.2 * k)
        m = image(k, t)
        if k == 3:
            m.encoding = "jpeg"  # unsupported encoding
            mono = conv.rgb_to_image(np.full((12, 16, 3), 90, np.uint8), "mono8", t + 10_000_000, "cam")
            msgs.append((CAM, bt.IMAGE, t + 10_001_000, mono))  # no colour: refused for the camera model
        if k == 5:
            m.encoding = "yuv422"  # the same bytes read as YUV 4:2:2 (16 px x 2 B per row, 2 B padding)
        if k == 7:
            m.data = bytes(m.data)[:100]  # truncated
        msgs.append((CAM, bt.IMAGE, t + 1000, m))
        t = ns(1.07 + 0.2 * k)
        msgs.append((SCAN, bt.SCAN, t + 1000, scan(k, t, nan_fraction={5: 1.0, 6: 0.6}.get(k, 0.0))))
    for k in range(5):
        t = ns(1.10 + 0.4 * k)
        msgs.append((RFL, bt.SCAN, t + 1000, refl(k, t, bad=(k == 2))))
    for topic, typ, mk in ((CAM, bt.IMAGE, lambda t: image(50, t)), (SCAN, bt.SCAN, lambda t: scan(50, t)),
                           (RFL, bt.SCAN, lambda t: refl(50, t))):
        msgs.append((topic, typ, ns(3.5), mk(ns(3.5))))  # between targets
    msgs.append((SCAN, bt.SCAN, ns(3.9), b"\x00\x01\x00\x00garbage"))  # not deserialisable
    msgs += [(CAM, bt.IMAGE, ns(4.05), image(60, ns(4.05))), (SCAN, bt.SCAN, ns(4.06), scan(60, ns(4.06))),
             (RFL, bt.SCAN, ns(4.07), refl(60, ns(4.07)))]
    return msgs


def write_bag(path, msgs, storage="mcap"):
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    store = bt.typestore()
    with Writer(path, version=9, storage_plugin=plugin) as w:
        conns = {}
        for topic, typ, t, m in sorted(msgs, key=lambda x: x[2]):
            if topic not in conns:
                conns[topic] = w.add_connection(topic, typ, typestore=store)
            w.write(conns[topic], t, m if isinstance(m, bytes) else serialize_message(m))
    return str(path)


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    d = tmp_path_factory.mktemp("bags")
    msgs = scenario()
    return {s: write_bag(d / f"bag_{s}", msgs, s) for s in ("mcap", "sqlite3")}


def everything(out):
    parts = [load_split(out, s) for s in ("train", "val", "test")]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def extract(bags, out, **kw):
    agents = [fb.AgentTopics(CAM, SCAN, RFL, TOI)]
    return fb.extract_bags(bags, str(out), agents, progress=False, **kw)


def test_groups_drops_and_arrays(bags, tmp_path):
    ex = extract([bags["mcap"]], tmp_path / "ds")
    assert ex.dropped == {(CAM, "bad_encoding"): 1, (CAM, "colourless"): 1, (CAM, "truncated"): 1,
                          (SCAN, "non_finite"): 1, (SCAN, "preprocess"): 1, (RFL, "non_finite"): 1,
                          (SCAN, "deserialize"): 1}
    assert ex.no_target == {CAM: 2, SCAN: 1, RFL: 1}
    assert ex.read == {CAM: 14, SCAN: 13, RFL: 7, TOI: 4}
    # object_0: 3 triples, camera+lidar 3, camera+reflectance 1, camera 1, lidar 2; object_1: one triple
    assert ex.subsets == {"camera+lidar+reflectance": 4, "camera+lidar": 3, "camera+reflectance": 1, "camera": 1,
                          "lidar": 2}
    assert ex.partial == 7
    meta = read_metadata(str(tmp_path / "ds"))
    assert meta["source"] == "rosbag" and meta["class_names"] == CLASS_NAMES
    assert meta["splits"] == {"train": 9, "val": 1, "test": 1}
    assert meta["sensors"]["lidar"]["beams"] == LIDAR["beams"] and meta["sensors"]["reflectance"]["beams"] == 8
    data = everything(str(tmp_path / "ds"))
    infos = ex.index["train"] + ex.index["val"] + ex.index["test"]
    # expected arrays straight from the generating rclpy messages (the node's conversion code; the extraction read
    # the rosbags-deserialised ones, so both message kinds give the same arrays, the yuv422 frame included)
    want = {}
    for topic, _, _, m in scenario():
        if isinstance(m, bytes) or topic in (TOI, GT):
            continue
        stamp = conv.stamp_to_ns(m.header.stamp)
        try:
            if topic == CAM:
                want[(topic, stamp)] = resize_camera(conv.image_to_rgb(m), {"width": 64, "height": 64})
            elif topic == SCAN:
                r = conv.scan_to_ranges(m, meta["sensors"]["lidar"])
                want[(topic, stamp)] = np.where(np.isnan(r), np.inf, r)
            else:
                want[(topic, stamp)] = conv.reflectance_to_array(m, 8)
        except conv.ConversionError:
            pass
    for row, info in enumerate(infos):
        assert max(info.stamps.values()) - min(info.stamps.values()) <= 0.1e9
        for j, mod in enumerate(fb.MODALITIES):
            assert data["present"][row, j] == (mod in info.stamps)
            if mod in info.stamps:
                np.testing.assert_array_equal(data[mod][row], want[(info.topics[mod], info.stamps[mod])])
            else:
                assert not np.any(data[mod][row])
        label = CLASS_NAMES.index(TRUTH[info.target])
        assert data["label"][row] == label
        assert (data["colour"][row], data["shape"][row], data["material"][row]) == (label // 4, label // 2 % 2,
                                                                                     label % 2)
    assert sorted(i.target for i in infos).count("object_1") == 1
    # the pair with the dropped 60 %-NaN scan became camera+reflectance, the lone camera follows the all-NaN scan
    assert {tuple(sorted(i.stamps)) for i in infos if min(i.stamps.values()) == ns(2.25)} == \
        {("camera", "reflectance")}
    text = fb.format_summary(ex)
    for word in ("bad_encoding", "colourless", "truncated", "non_finite", "preprocess", "deserialize", "partial samples",
                 "outside any target"):
        assert word in text


def test_sqlite3_and_mcap_give_identical_data_sets(bags, tmp_path):
    a = extract([bags["mcap"]], tmp_path / "a", seed=3)
    b = extract([bags["sqlite3"]], tmp_path / "b", seed=3)
    assert [e["sha256"] for e in a.metadata["shards"]] == [e["sha256"] for e in b.metadata["shards"]]
    assert b.dropped == a.dropped
    # both bags at once: twice the samples, reproducible split for a seed
    c = extract([bags["mcap"], bags["sqlite3"]], tmp_path / "c", seed=3)
    assert sum(c.metadata["splits"].values()) == 2 * sum(a.metadata["splits"].values())
    d = extract([bags["mcap"], bags["sqlite3"]], tmp_path / "d", seed=3)
    assert [e["sha256"] for e in c.metadata["shards"]] == [e["sha256"] for e in d.metadata["shards"]]


def test_labels_file_time_ranges_and_unlabelled(bags, tmp_path):
    lab = tmp_path / "labels.yaml"
    lab.write_text("class_names: [ball, box]\ntargets: {object_0: box}\n"
                   "times:\n  - {start: 3.95, end: 5.0, class: ball}\n")
    ex = extract([bags["mcap"]], tmp_path / "ds", labels_path=str(lab))
    data = everything(str(tmp_path / "ds"))
    infos = ex.index["train"] + ex.index["val"] + ex.index["test"]
    assert read_metadata(str(tmp_path / "ds"))["class_names"] == ["ball", "box"]
    for row, info in enumerate(infos):  # times are seconds since the bag's first message (the ground truth at 0 s)
        assert data["label"][row] == (0 if info.target == "object_1" else 1)
        assert data["colour"][row] == -1  # custom classes carry no attributes
    # no labels at all: class_names null, label -1
    ex = extract([bags["mcap"]], tmp_path / "u", use_ground_truth=False)
    assert read_metadata(str(tmp_path / "u"))["class_names"] is None
    assert np.all(everything(str(tmp_path / "u"))["label"] == -1) and ex.labelled == 0
    # the labels derived from the ground truth, written and read back
    extract([bags["mcap"]], tmp_path / "w", write_labels=str(tmp_path / "gt.yaml"))
    back = fb.load_labels(str(tmp_path / "gt.yaml"))
    assert {t: back.class_names[k] for t, k in back.targets.items()} == TRUTH


def test_pointcloud_lidar_without_target_topic(tmp_path):
    pts = conv.scan_to_points(np.linspace(0.3, 3.0, 360), -np.pi, 2 * np.pi / 360)
    msgs = []
    for k in range(4):
        t = ns(1.0 + 0.5 * k)
        msgs.append(("/pc", bt.CLOUD, t, conv.xyz_to_pointcloud2(pts[k:], t, "laser")))
        msgs.append(("/img", bt.IMAGE, t, image(k, t + 20_000_000)))
    bag = write_bag(tmp_path / "pc", msgs, "sqlite3")
    ex = fb.extract_bags([bag], str(tmp_path / "ds"), [fb.AgentTopics(camera="/img", lidar="/pc")], progress=False)
    assert ex.subsets == {"camera+lidar": 4} and ex.partial == 0 and ex.labelled == 0
    meta = read_metadata(str(tmp_path / "ds"))
    assert meta["class_names"] is None and meta["sensors"]["lidar"]["beams"] == DEFAULT_CONFIGS["lidar"]["beams"]
    data = everything(str(tmp_path / "ds"))
    infos = ex.index["train"] + ex.index["val"] + ex.index["test"]
    for row, info in enumerate(infos):
        k = int(round((info.stamps["lidar"] - ns(1.0)) / 0.5e9))
        np.testing.assert_array_equal(data["lidar"][row], conv.xyz_to_scan(pts[k:], meta["sensors"]["lidar"],
                                                                           -0.1, 0.1))


def test_group_is_closest_first_and_bounded():
    ms = 1_000_000
    ev = [(0, "camera", 0), (40 * ms, "lidar", 0), (60 * ms, "camera", 1), (130 * ms, "reflectance", 0)]
    groups = fb.group(ev, 100 * ms)
    # lidar pairs with the closer camera (20 ms) ; reflectance is 70 ms from that camera -> joins (span 70 ms)
    assert groups == [{"camera": 0}, {"lidar": 0, "camera": 1, "reflectance": 0}]
    assert fb.group(ev, 10 * ms) == [{"camera": 0}, {"lidar": 0}, {"camera": 1}, {"reflectance": 0}]


def test_agents_from_options():
    a = fb.agents_from_options(["/a/cam", "-"], None, ["a/r", "/b/r"], ["/t"])
    assert [x.sensors() for x in a] == [{"camera": "/a/cam", "reflectance": "/a/r"}, {"reflectance": "/b/r"}]
    assert a[0].target == a[1].target == "/t"
    with pytest.raises(UserError, match="--lidar-topic is given 1 time"):
        fb.agents_from_options(["/a", "/b"], ["/l"])
    with pytest.raises(UserError, match="at least one of"):
        fb.agents_from_options()


# ------------------------------------------------------------------------------------------------ command line
def run_cli(capsys, *argv):
    code = cli_main(["dataset", *argv])
    return code, capsys.readouterr().err


def test_cli_extracts(bags, tmp_path, capsys):
    code = cli_main(["dataset", "--from-bag", bags["sqlite3"], "--out", str(tmp_path / "ds"), *TOPICS,
                     "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "samples written: 11" in out and "messages dropped" in out and "labelled samples 11 of 11" in out


@pytest.mark.parametrize("case", ["missing_bag", "corrupt_bag", "truncated_mcap", "missing_topic", "wrong_type",
                                  "unknown_class", "bad_labels_file"])
def test_cli_errors_exit_2(bags, tmp_path, capsys, case):
    out = str(tmp_path / "ds")
    args = ["--from-bag", bags["mcap"], "--out", out, "--no-progress", *TOPICS]
    if case == "missing_bag":
        args[1], expect = str(tmp_path / "nope"), [str(tmp_path / "nope"), "does not exist"]
    elif case == "corrupt_bag":
        bad = tmp_path / "corrupt"
        bad.mkdir()
        (bad / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 9\n")
        args[1], expect = str(bad), [str(bad), "cannot be read"]
    elif case == "truncated_mcap":
        raw = open(os.path.join(bags["mcap"], "bag_mcap.mcap"), "rb").read()
        bad = tmp_path / "trunc.mcap"
        bad.write_bytes(raw[: len(raw) // 2])
        args[1], expect = str(bad), [str(bad)]
    elif case == "missing_topic":
        args = ["--from-bag", bags["mcap"], "--out", out, "--no-progress", "--camera-topic", "/other/camera",
                "--lidar-topic", SCAN]
        expect = [bags["mcap"], "/other/camera", CAM]
    elif case == "wrong_type":
        args = ["--from-bag", bags["mcap"], "--out", out, "--no-progress", "--camera-topic", CAM,
                "--lidar-topic", TOI]
        expect = [bags["mcap"], TOI, "TargetOfInterest", "LaserScan"]
    elif case == "unknown_class":
        lab = tmp_path / "labels.yaml"
        lab.write_text("object_0: red_cube_shiny\nobject_1: purple_sphere_velvet\n")
        args += ["--labels", str(lab)]
        expect = [str(lab), "object_1", "purple_sphere_velvet"]
    else:
        lab = tmp_path / "labels.yaml"
        lab.write_text("targets: [1, 2\n")
        args += ["--labels", str(lab)]
        expect = [str(lab)]
    code, err = run_cli(capsys, *args)
    assert code == 2, err
    line = err.strip().splitlines()
    assert len(line) == 1 and line[0].startswith("m2vae-fusion dataset: error:"), err
    for word in expect:
        assert word in line[0], (word, line[0])
    assert not os.path.exists(os.path.join(out, "metadata.json"))


def test_cli_error_exit_status_in_a_process(tmp_path):
    """The same through the installed entry point: a one-line message and exit status 2."""
    proc = subprocess.run([sys.executable, "-m", "m2vae_fusion", "dataset", "--from-bag", str(tmp_path / "none"),
                           "--out", str(tmp_path / "ds"), "--camera-topic", CAM],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert str(tmp_path / "none") in proc.stderr and "does not exist" in proc.stderr
