"""The fusion node's target-centred crop wiring and its newest-per-(peer, target) coalescing of peer latents, with
real rclpy pub/sub.

- crop: a node process on a linear bundle whose camera preprocessing crops around the target (docs/formats.md
  "Preprocessing"); the test publishes ``camera/camera_info`` and a TargetOfInterest with a position in the base
  frame, and checks that the published latent is exactly the one of the crop at that position through that K and
  the node's ``camera_to_base`` parameter (and not the fallback's); a target announced in another frame (no tf)
  gets the salient-blob fallback, counted as ``crop_fallback.camera``.
- peers: an in-process node that is not spinning gets peer latents queued in its subscription; one callback takes
  them all and merges only the newest per (peer, target), the others counted as ``superseded.peer``.
"""
import time

import numpy as np
import pytest

import rclpy  # noqa: E402  (a missing ROS install must fail, not skip)
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy

from m2vae_fusion_msgs.msg import LatentEmbedding, TargetOfInterest  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from m2vae_fusion.core import messages as conv  # noqa: E402
from m2vae_fusion.core.bundle import Bundle  # noqa: E402
from m2vae_fusion.core.fusion import FusionEngine  # noqa: E402
from m2vae_fusion.core.preprocess import DEFAULT_CONFIGS, preprocess_camera  # noqa: E402
from m2vae_fusion.ros.harness import RELIABLE_QOS, SENSOR_QOS, NodeProcess, Probe  # noqa: E402

pytestmark = pytest.mark.ros
MODULE = "m2vae_fusion.ros.fusion_node"
W, H = 320, 240
K = [300.0, 0.0, 150.0, 0.0, 300.0, 130.0, 0.0, 0.0, 1.0]   # deliberately not the config's K
CAMERA_TO_BASE = [0.05, 0.0, 0.04]
INFO_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)


@pytest.fixture(scope="module")
def crop_bundle(tmp_path_factory):
    from linear_bundle import make_linear_bundle

    cam = {"width": 64, "height": 64, "fov_deg": 45.0, "aspect": W / H,
           "crop": {"enabled": True, "size": 16, "window_m": 0.2}}
    configs = {**DEFAULT_CONFIGS, "camera": cam}
    return make_linear_bundle(str(tmp_path_factory.mktemp("crop_bundle")), 4, 4, seed=5, configs=configs)


@pytest.fixture(scope="module")
def probe():
    rclpy.init()
    p = Probe("crop_tester")
    p.subscribe("/k/latent", LatentEmbedding)
    try:
        yield p
    finally:
        p.close()
        rclpy.try_shutdown()


@pytest.fixture(scope="module")
def crop_node(crop_bundle, probe, tmp_path_factory):
    proc = NodeProcess(MODULE, "/k", {"model_dir": crop_bundle, "agent_id": "k", "modalities": ["camera"],
                                      "shared_latent_topic": "", "diagnostics_period": 0.2,
                                      "camera_to_base": CAMERA_TO_BASE, "max_message_age": 0.0},
                       str(tmp_path_factory.mktemp("logs")))
    try:
        assert probe.diagnostics("/k/fusion_node", timeout=30) is not None, proc.dump_stack()
        yield proc
    finally:
        code = proc.stop()
        if code != 0 or "Traceback" in proc.log():
            print(proc.log()[-4000:])


def _expected(bundle_dir, img, position, camera_k):
    """The latent mean of a new belief from this one camera image, computed here with the same public functions."""
    bundle = Bundle.load(bundle_dir)
    cfg = {**bundle.input_config("camera"), "camera_to_base": {"translation": CAMERA_TO_BASE}}
    x = preprocess_camera(img, cfg, target_position=position, camera_k=camera_k)
    feat, _ = bundle.encode_feature("camera", x)
    return FusionEngine(bundle).observe(None, "t", "camera", feat[0], 1.0, "k").mean


def _first_latent(probe, target, frame, position, img):
    info = CameraInfo(width=W, height=H, k=K)
    assert probe.wait_subscribers("/k/camera/camera_info", CameraInfo, INFO_QOS)
    assert probe.wait_subscribers("/k/camera/image_raw", Image, SENSOR_QOS)
    assert probe.wait_subscribers("/k/target_of_interest", TargetOfInterest, RELIABLE_QOS)
    for _ in range(5):  # the intrinsics are there before the image
        probe.publish("/k/camera/camera_info", info, INFO_QOS)
        time.sleep(0.05)
    toi = conv.target_msg(target, probe.now_ns() - 1_000_000, frame, position)
    probe.publish("/k/target_of_interest", toi)
    time.sleep(0.2)

    def poke():
        probe.publish("/k/camera/camera_info", info, INFO_QOS)
        probe.publish("/k/camera/image_raw", conv.rgb_to_image(img, "rgb8", probe.now_ns(), "camera"), SENSOR_QOS)

    lat = probe.wait_for("/k/latent", lambda m: m.target_id == target, timeout=10, since=time.monotonic(),
                         poke=poke, poke_period=0.3)
    assert lat is not None, f"no latent for {target}"
    return np.asarray(lat.mean, np.float32)


def test_camera_crop_is_centred_on_the_target_position_through_camera_info(crop_bundle, crop_node, probe):
    img = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    img[100:140, 40:90] = (255, 0, 0)   # a saturated blob away from the target: the fallback would crop it
    pos = (0.6, -0.1, 0.05)             # base frame (x forward, y left, z up): right of the image centre
    got = _first_latent(probe, "t_pos", "base_link", pos, img)
    with_pos = _expected(crop_bundle, img, pos, K)
    fallback = _expected(crop_bundle, img, None, K)
    config_k = _expected(crop_bundle, img, pos, None)
    assert not np.allclose(with_pos, fallback, atol=1e-3) and not np.allclose(with_pos, config_k, atol=1e-3)
    np.testing.assert_allclose(got, with_pos, atol=1e-4)


def test_position_in_another_frame_falls_back_and_is_counted(crop_bundle, crop_node, probe):
    img = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    img[100:140, 40:90] = (0, 0, 255)
    before = probe.diagnostics("/k/fusion_node", after=time.monotonic(), timeout=5).get("crop_fallback.camera", 0)
    got = _first_latent(probe, "t_map", "map", (0.6, -0.1, 0.05), img)  # no tf here: the position is not used
    np.testing.assert_allclose(got, _expected(crop_bundle, img, None, K), atol=1e-4)
    after = probe.diagnostics("/k/fusion_node", after=time.monotonic(), timeout=5).get("crop_fallback.camera", 0)
    assert after > before


def test_waiting_peer_latents_are_coalesced_newest_per_peer_and_target(crop_bundle, probe):
    from m2vae_fusion.ros.fusion_node import FusionNode

    topic = "/m2vae/latents_coalesce"
    node = FusionNode("fusion_node", namespace="/co", parameter_overrides=[
        Parameter("model_dir", value=crop_bundle), Parameter("agent_id", value="co"),
        Parameter("shared_latent_topic", value=topic), Parameter("max_latent_age", value=-1.0)])
    try:
        node.start()
        bundle = node.bundle
        assert probe.wait_subscribers(topic, LatentEmbedding, RELIABLE_QOS)
        t0 = probe.now_ns() - 5_000_000_000
        rng = np.random.default_rng(2)

        def peer(agent, target, i):
            data = conv.LatentData(agent_id=agent, target_id=target, model_id=bundle.model_id,
                                   stamp_ns=t0 + i * 1_000_000, modalities=("lidar",),
                                   modality_stamps_ns=(t0 + i * 1_000_000,), modality_sources=(agent,),
                                   contributors=(agent,), mean=rng.normal(0, 0.3, bundle.latent_dim),
                                   log_variance=np.full(bundle.latent_dim, -1.0))
            return conv.latent_to_msg(data)

        first = peer("p", "tp", 0)
        queued = [peer("p", "tp", i) for i in range(1, 6)] + [peer("q", "tq", i) for i in range(1, 4)]
        newest = {("p", "tp"): queued[4], ("q", "tq"): queued[7]}
        for m in queued:
            probe.publish(topic, m)
        time.sleep(1.0)  # delivered into the node's subscription (the node is not spinning)
        node._on_latent(first)
        assert node.stats.get("received.peer") == 9
        assert node.stats.get("superseded.peer") == 7
        assert node.stats.get("processed.peer") == 2
        for (agent, target), m in newest.items():
            belief = node.agent.store.get(target)
            assert belief is not None
            np.testing.assert_allclose(belief.mean, np.asarray(m.mean, np.float32), atol=1e-6)
            assert abs(belief.slots["lidar"].stamp - conv.stamp_to_ns(m.header.stamp) * 1e-9) < 2e-6
    finally:
        node.close()
        node.destroy_node()


def test_configure_limits_opencv_and_blas_threads_to_ort_threads(crop_bundle):
    """The preprocessing's libraries run on ``ort_threads`` threads: their one-per-core defaults made a camera crop's
    matrix product spin numpy's BLAS threads (57 % of a core per agent instead of 25 % in ``bench runtime``)."""
    import cv2
    from threadpoolctl import threadpool_info, threadpool_limits

    from m2vae_fusion.ros.fusion_node import FusionNode

    def blas_threads():
        return sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})

    saved_cv2, saved_blas = cv2.getNumThreads(), threadpool_info()
    cv2.setNumThreads(2)
    threadpool_limits(limits=2, user_api="blas")
    node = FusionNode("fusion_node", namespace="/thr", parameter_overrides=[
        Parameter("model_dir", value=crop_bundle), Parameter("agent_id", value="thr"), Parameter("ort_threads", value=1),
        Parameter("shared_latent_topic", value="")])
    try:
        node.start()
        assert cv2.getNumThreads() == 1
        assert blas_threads() == [1]
    finally:
        node.close()
        node.destroy_node()
        cv2.setNumThreads(saved_cv2)
        threadpool_limits(limits={p["prefix"]: p["num_threads"] for p in saved_blas})
