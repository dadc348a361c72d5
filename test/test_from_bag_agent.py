"""The bag extraction (m2vae_fusion.data.from_bag) applies the fusion node's per-agent policy
(m2vae_fusion.core.agent): the same target for the same observation stamps as a core Agent that knows the bag's
announcements (before any target, after a target change, a target received late, a repeated announcement), the same drops with the same DropReason (stale, future,
bad encoding), and the node's target-centred preprocessing (crop position only in the base frame, CameraInfo.k)
recorded in the data set. Also the one definition of the modality list and of subset keys."""
import json

import numpy as np
import pytest

import m2vae_fusion_msgs.msg  # noqa: F401
from sensor_msgs.msg import CameraInfo

from linear_bundle import make_linear_bundle
from test_from_bag import CAM, LIDAR, SCAN, TOI, image, ns, scan, write_bag

from m2vae_fusion import bags as bt
from m2vae_fusion.core import messages as conv
from m2vae_fusion.core.agent import Agent, AgentConfig, Drop, ns_to_s
from m2vae_fusion.core.bundle import Bundle
from m2vae_fusion.core.fusion import FusionEngine
from m2vae_fusion.core.preprocess import DEFAULT_CONFIGS, preprocess
from m2vae_fusion.core.reasons import DropReason
from m2vae_fusion.data import from_bag as fb
from m2vae_fusion.data.shards import load_split, read_metadata
from m2vae_fusion.errors import UserError

INFO = "/r/camera/camera_info"


def target(tid, t, frame="", pos=None):
    return conv.target_msg(tid, ns(t), frame, pos)


def policy_scenario():
    """(topic, type, receive ns, message), one agent: camera + LiDAR + targets."""
    m = [(CAM, bt.IMAGE, ns(0.5), image(1, ns(0.5))),                     # before any target
         (TOI, bt.TARGET, ns(1.0), target("A", 1.0)),
         (CAM, bt.IMAGE, ns(1.21), image(2, ns(1.2))), (SCAN, bt.SCAN, ns(1.26), scan(2, ns(1.25))),
         (TOI, bt.TARGET, ns(2.0), target("A", 1.0)),                      # repeated announcement
         (TOI, bt.TARGET, ns(2.5), target("B", 2.5)),                      # target change
         (CAM, bt.IMAGE, ns(2.61), image(3, ns(2.6))), (SCAN, bt.SCAN, ns(2.63), scan(3, ns(2.62))),
         (TOI, bt.TARGET, ns(3.0), target("B", 3.0)),                      # re-stamped: the run continues
         (CAM, bt.IMAGE, ns(2.99), image(4, ns(2.98))), (SCAN, bt.SCAN, ns(3.03), scan(4, ns(3.02))),
         (TOI, bt.TARGET, ns(3.5), target("", 3.5)),                       # no target
         (CAM, bt.IMAGE, ns(3.61), image(5, ns(3.6))), (SCAN, bt.SCAN, ns(3.99), scan(5, ns(3.98))),
         (TOI, bt.TARGET, ns(4.0), target("A", 4.0)),                      # A again
         (CAM, bt.IMAGE, ns(4.06), image(6, ns(4.05)))]
    bad = image(7, ns(4.2))
    bad.encoding = "jpeg"
    m.append((CAM, bt.IMAGE, ns(4.21), bad))                               # the node drops it: bad_encoding
    m += [(CAM, bt.IMAGE, ns(5.12), image(8, ns(5.1))),                   # C is stamped before, received after it
          (TOI, bt.TARGET, ns(5.3), target("C", 5.0)),
          (CAM, bt.IMAGE, ns(5.41), image(9, ns(5.4))),
          (CAM, bt.IMAGE, ns(9.0), image(10, ns(6.0))),                    # 3 s old when received: stale
          (SCAN, bt.SCAN, ns(9.1), scan(11, ns(10.0)))]                    # 0.9 s in the future: future
    return m


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return Bundle.load(make_linear_bundle(str(tmp_path_factory.mktemp("fbagent")), 4, 4, seed=3))


def node_view(bundle, msgs):
    """What the core agent (the fusion node's policy) decides for each sensor message, fed in receive order:
    {(topic, stamp ns): target id, None (between targets) or the DropReason}."""
    # accumulation and novelty off: only the policy and the conversion decide here (the extraction has no model)
    agent = Agent(FusionEngine(bundle), AgentConfig(agent_id="a", max_message_age=2.0, future_tolerance=0.5,
                                                    forgetting_factor=0.0, novelty_threshold=-1.0), incarnation=1)
    out = {}
    for topic, _, t, msg in msgs:  # every announcement of the bag first (the extraction knows them all)
        if topic == TOI:
            pos = (msg.position.x, msg.position.y, msg.position.z) if msg.has_position else None
            agent.on_target(ns_to_s(conv.stamp_to_ns(msg.header.stamp)), msg.target_id, msg.header.frame_id, pos)
    for topic, _, t, msg in sorted(msgs, key=lambda x: x[2]):
        stamp = conv.stamp_to_ns(msg.header.stamp)
        if topic == TOI:
            continue
        modality = "camera" if topic == CAM else "lidar"
        try:
            tgt = agent.admit(modality, ns_to_s(stamp), ns_to_s(t))
            if tgt is not None:
                raw = (lambda m=msg: conv.image_to_rgb(m)) if topic == CAM else \
                    (lambda m=msg: conv.scan_to_ranges(m, bundle.input_config("lidar")))
                agent.observe(modality, ns_to_s(stamp), raw, tgt)
            out[(topic, stamp)] = None if tgt is None else tgt.target_id
        except Drop as exc:
            out[(topic, stamp)] = exc.reason
    return out


def test_extraction_and_agent_agree_on_targets_and_drops(bundle, tmp_path):
    msgs = policy_scenario()
    bag = write_bag(tmp_path / "bag", msgs)
    ex = fb.extract_bags([bag], str(tmp_path / "ds"), [fb.AgentTopics(CAM, SCAN, None, TOI)], progress=False,
                         max_dt=0.1, use_ground_truth=False)
    got = {}
    for info in ex.index["train"] + ex.index["val"] + ex.index["test"]:
        for m, stamp in info.stamps.items():
            got[(info.topics[m], stamp)] = info.target
    want = node_view(bundle, msgs)
    # the cases this test is about, spelled out (so a shared mistake of both sides still fails)
    assert want[(CAM, ns(0.5))] is None                       # before any target
    assert want[(CAM, ns(1.2))] == "A" and want[(CAM, ns(2.6))] == "B"
    assert want[(CAM, ns(3.6))] is None and want[(SCAN, ns(3.98))] is None
    assert want[(CAM, ns(4.05))] == "A"
    assert want[(CAM, ns(5.1))] == "C" == want[(CAM, ns(5.4))]   # C, stamped 5.0, was received only at 5.3
    assert want[(CAM, ns(4.2))] == DropReason.BAD_ENCODING
    assert want[(CAM, ns(6.0))] == DropReason.STALE and want[(SCAN, ns(10.0))] == DropReason.FUTURE
    # the extraction: every admitted observation under the same target, every other one left out for the same reason
    no_target, dropped = {CAM: 0, SCAN: 0}, {}
    for (topic, stamp), w in want.items():
        if isinstance(w, DropReason):
            dropped[(topic, str(w))] = dropped.get((topic, str(w)), 0) + 1
            assert (topic, stamp) not in got
        elif w is None:
            no_target[topic] += 1
            assert (topic, stamp) not in got
        else:
            assert got[(topic, stamp)] == w, (topic, stamp)
    assert ex.dropped == dropped
    assert dict(ex.no_target) == no_target
    # a re-stamped announcement of B continues its run: the pair around it is one sample
    assert any(i.stamps == {"camera": ns(2.98), "lidar": ns(3.02)} for i in
               ex.index["train"] + ex.index["val"] + ex.index["test"])
    assert "stale" in fb.format_summary(ex) and "future" in fb.format_summary(ex)
    meta = read_metadata(str(tmp_path / "ds"))
    assert meta["rosbag"]["preprocessing"]["stamp_checks"]["max_message_age"] == 2.0
    assert "target_position" not in load_split(str(tmp_path / "ds"), "train")  # no crop asked for


def test_stamp_checks_follow_the_options(tmp_path):
    bag = write_bag(tmp_path / "bag", policy_scenario())
    ex = fb.extract_bags([bag], str(tmp_path / "ds"), [fb.AgentTopics(CAM, SCAN, None, TOI)], progress=False,
                         use_ground_truth=False, max_message_age=0.0, future_tolerance=float("inf"))
    assert not any(r in ("stale", "future") for _, r in ex.dropped)
    stamps = {s for i in ex.index["train"] + ex.index["val"] + ex.index["test"] for s in i.stamps.values()}
    assert ns(6.0) in stamps and ns(10.0) in stamps


def crop_source(path):
    """A data set directory whose sensors enable the hard world's crops (what --crop-like reads)."""
    cam = {"width": 64, "height": 64, "K": [40.0, 0, 32, 0, 40.0, 32, 0, 0, 1],
           "camera_to_base": {"translation": [0.05, 0.0, 0.045]},
           "crop": {"enabled": True, "size": 16, "window_m": 0.06}}
    lid = dict(DEFAULT_CONFIGS["lidar"], crop={"enabled": True, "window_m": 0.3, "points": 64, "depth_m": 0.15})
    path.mkdir()
    (path / "metadata.json").write_text(json.dumps({"sensors": {"camera": cam, "lidar": lid,
                                                                "reflectance": DEFAULT_CONFIGS["reflectance"]}}))
    return str(path)


def camera_info(t, k):
    m = CameraInfo()
    m.header.stamp.sec, m.header.stamp.nanosec = divmod(ns(t), 10 ** 9)
    m.width, m.height, m.k = 16, 12, [float(v) for v in k]
    return m


def test_target_centred_preprocessing_is_recorded(tmp_path):
    k = [20.0, 0.0, 8.0, 0.0, 21.0, 6.0, 0.0, 0.0, 1.0]
    msgs = [(INFO, "sensor_msgs/msg/CameraInfo", ns(0.9), camera_info(0.9, k)),
            (TOI, bt.TARGET, ns(1.0), target("A", 1.0, "base_link", (0.4, 0.05, 0.03))),
            (CAM, bt.IMAGE, ns(1.11), image(1, ns(1.1))), (SCAN, bt.SCAN, ns(1.12), scan(1, ns(1.11))),
            (TOI, bt.TARGET, ns(2.0), target("B", 2.0, "map", (3.0, 1.0, 0.0))),  # not the base frame: fallback
            (CAM, bt.IMAGE, ns(2.11), image(2, ns(2.1))), (SCAN, bt.SCAN, ns(2.12), scan(2, ns(2.11))),
            (SCAN, bt.SCAN, ns(2.61), scan(3, ns(2.6)))]
    bag = write_bag(tmp_path / "bag", msgs)
    src = crop_source(tmp_path / "src")
    out = tmp_path / "ds"
    ex = fb.extract_bags([bag], str(out), [fb.AgentTopics(CAM, SCAN, None, TOI)], progress=False,
                         use_ground_truth=False, crop_like=src, val_fraction=0.0, test_fraction=0.0)
    meta = read_metadata(str(out))
    cam, lid = meta["sensors"]["camera"], meta["sensors"]["lidar"]
    assert cam["crop"] == {"enabled": True, "size": 16, "window_m": 0.06} and lid["crop"]["points"] == 64
    np.testing.assert_allclose(cam["K"], [20 * 4, 0, 8 * 4, 0, 21 * 64 / 12, 6 * 64 / 12, 0, 0, 1])  # 16x12 → 64
    assert cam["camera_to_base"] == {"translation": [0.05, 0.0, 0.045]}
    pre = meta["rosbag"]["preprocessing"]
    assert pre["samples_with_target_position"] == 1 and pre["base_frame"] == "base_link"
    assert INFO in pre["target_centred"]["camera_K"]
    data = load_split(str(out), "train")
    infos = ex.index["train"]
    assert len(infos) == 3
    for row, info in enumerate(infos):
        p = data["target_position"][row]
        if info.target == "A":
            np.testing.assert_allclose(p, [0.4, 0.05, 0.03], rtol=1e-6)
        else:
            assert np.all(np.isnan(p))
    # training's preprocessing of the stored arrays gives the bundle's target-centred input shapes
    x = preprocess("camera", data["camera"], cam, target_position=data["target_position"])
    y = preprocess("lidar", data["lidar"], lid, target_position=data["target_position"])
    assert x.shape == (3, 3, 16, 16) and y.shape == (3, 1, 64)
    assert "target-centred" in fb.format_summary(ex)
    # --camera-to-base wins over the source's
    ex2 = fb.extract_bags([bag], str(tmp_path / "ds2"), [fb.AgentTopics(CAM, SCAN, None, TOI)], progress=False,
                          use_ground_truth=False, crop_like=src, camera_to_base=(0.1, 0.0, 0.2))
    assert ex2.metadata["sensors"]["camera"]["camera_to_base"] == {"translation": [0.1, 0.0, 0.2]}


def test_crop_like_errors(tmp_path):
    bag = write_bag(tmp_path / "bag", [(TOI, bt.TARGET, ns(1.0), target("A", 1.0)),
                                       (CAM, bt.IMAGE, ns(1.11), image(1, ns(1.1)))])
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "metadata.json").write_text(json.dumps({"sensors": {"camera": {"width": 64, "height": 64}}}))
    agents = [fb.AgentTopics(CAM, None, None, TOI)]
    with pytest.raises(UserError, match="no enabled camera or lidar crop"):
        fb.extract_bags([bag], str(tmp_path / "a"), agents, progress=False, crop_like=str(plain))
    with pytest.raises(UserError, match="neither a bundle"):
        fb.extract_bags([bag], str(tmp_path / "b"), agents, progress=False, crop_like=str(tmp_path))
    nok = tmp_path / "nok"
    nok.mkdir()
    (nok / "metadata.json").write_text(json.dumps({"sensors": {"camera": {
        "width": 64, "height": 64, "crop": {"enabled": True, "size": 16, "window_m": 0.06}}}}))
    with pytest.raises(UserError, match="intrinsics"):
        fb.extract_bags([bag], str(tmp_path / "c"), agents, progress=False, crop_like=str(nok))


def test_one_modality_list_and_subset_key():
    from m2vae_fusion.core import bundle, modalities
    from m2vae_fusion.data import classes, shards
    from m2vae_fusion.training import networks

    assert classes.MODALITIES is modalities.MODALITIES and shards.MODALITIES is modalities.MODALITIES
    assert fb.MODALITIES is modalities.MODALITIES
    assert bundle.subset_key is modalities.subset_key and networks.subset_key is modalities.subset_key
    key = modalities.subset_key
    assert key(("camera", "lidar")) == "camera+lidar" == key(("lidar", "camera"), modalities.MODALITIES)
    assert [key(s) for s in networks.subsets_of(("camera", "reflectance"))] == \
        ["camera", "reflectance", "camera+reflectance"]
    with pytest.raises(KeyError):
        key(("camera", "sonar"), modalities.MODALITIES)
    with pytest.raises(ValueError):
        key(("camera", "camera"))


def test_cli_crop_like_and_stamp_options(tmp_path, capsys):
    from m2vae_fusion.cli import main as cli_main

    bag = write_bag(tmp_path / "bag", [(TOI, bt.TARGET, ns(1.0), target("A", 1.0, "base_link", (0.4, 0.0, 0.03))),
                                       (CAM, bt.IMAGE, ns(1.11), image(1, ns(1.1))),
                                       (CAM, bt.IMAGE, ns(4.0), image(2, ns(1.2)))])  # 2.8 s old when received
    src = crop_source(tmp_path / "src")
    argv = ["dataset", "--from-bag", bag, "--camera-topic", CAM, "--target-topic", TOI, "--no-progress",
            "--crop-like", src, "--camera-to-base", "0.1", "0", "0.2"]
    assert cli_main([*argv, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "stale" in out and "samples written: 1" in out and "target-centred preprocessing" in out
    meta = read_metadata(str(tmp_path / "a"))
    assert meta["sensors"]["camera"]["camera_to_base"] == {"translation": [0.1, 0.0, 0.2]}
    assert meta["sensors"]["camera"]["K"] == [40.0, 0, 32, 0, 40.0, 32, 0, 0, 1]  # no CameraInfo: the source's K
    assert cli_main([*argv, "--out", str(tmp_path / "b"), "--max-message-age", "5"]) == 0
    assert "samples written: 2" in capsys.readouterr().out
    assert cli_main([*argv[:-4], "--out", str(tmp_path / "c"), "--crop-like", str(tmp_path)]) == 2
    assert "neither a bundle" in capsys.readouterr().err
