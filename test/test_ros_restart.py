"""Restart identity and late joiners with real fusion-node processes (issue 13, items 3 and 4).

Agent ``ra`` (LiDAR) and agent ``rb`` (camera) exchange latents over DDS. ``ra`` is killed (SIGKILL: a crash, no
clean shutdown) and started again under the same ``agent_id``. Without waiting for any new observation, the new
``ra`` must get ``rb``'s belief back (``rb`` re-shares what it holds when a new reader matches its shared-topic
publisher), accept its own pre-crash LiDAR evidence in it (earlier incarnation, stamped before the restart), and drop
none of it as spoofed. A forged latent that claims evidence of the new process it never observed is still refused.
"""
import time

import numpy as np
import pytest

import rclpy  # noqa: E402  (a missing ROS install must fail, not skip)
from m2vae_fusion_msgs.msg import LatentEmbedding, TargetOfInterest  # noqa: E402
from sensor_msgs.msg import Image, LaserScan  # noqa: E402

from m2vae_fusion.core import messages as conv  # noqa: E402
from m2vae_fusion.core.bundle import Bundle  # noqa: E402
from m2vae_fusion.core.reasons import DropReason  # noqa: E402
from m2vae_fusion.ros.harness import RELIABLE_QOS, SENSOR_QOS, NodeProcess, Probe  # noqa: E402

pytestmark = pytest.mark.ros
MODULE = "m2vae_fusion.ros.fusion_node"
SHARED = "/m2vae/latents"


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    from linear_bundle import make_linear_bundle

    return make_linear_bundle(str(tmp_path_factory.mktemp("bundle")), 4, 4, seed=3)


@pytest.fixture(scope="module")
def probe():
    rclpy.init()
    p = Probe("restart_tester")
    for ns in ("ra", "rb"):
        p.subscribe(f"/{ns}/latent", LatentEmbedding)
    try:
        yield p
    finally:
        p.close()
        rclpy.try_shutdown()


def test_latent_conversion_carries_incarnations(bundle_dir):
    """Format 3 fields survive message round trips; format-2 content reads as unknown (0); bad lengths are refused."""
    bundle = Bundle.load(bundle_dir)
    z = np.zeros(bundle.latent_dim, np.float32)
    data = conv.LatentData("a", "t", bundle.model_id, 5, ("lidar", "camera"), (2, 5), ("a", "b"), ("a", "b"), z, z,
                           "map", 7, (11, 13))
    back = conv.latent_from_msg(conv.latent_to_msg(data), bundle.modalities, bundle.latent_dim)
    assert back.incarnation == 7
    assert back.modalities == ("camera", "lidar") and back.modality_source_incarnations == (13, 11)  # bundle order
    msg = conv.latent_to_msg(data)
    msg.format_version = 2
    msg.modality_source_incarnations = []
    msg.incarnation = 0
    old = conv.latent_from_msg(msg, bundle.modalities, bundle.latent_dim)
    assert old.incarnation == 0 and old.modality_source_incarnations == (0, 0)
    msg.modality_source_incarnations = [1, 2, 3]
    with pytest.raises(conv.ConversionError) as e:
        conv.latent_from_msg(msg, bundle.modalities, bundle.latent_dim)
    assert e.value.reason is DropReason.MISMATCH


def _scan(probe, bundle, stamp):
    cfg = bundle.input_config("lidar")
    r = np.random.default_rng(1).uniform(0.2, 3.0, int(cfg["beams"])).astype(np.float32)
    return conv.ranges_to_scan(r, cfg, stamp_ns=stamp)


def _image(stamp):
    rgb = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return conv.rgb_to_image(rgb, "rgb8", stamp_ns=stamp, frame_id="camera")


def _start(ns, bundle_dir, logs, modalities):
    params = {"model_dir": bundle_dir, "agent_id": ns, "modalities": modalities, "diagnostics_period": 0.2,
              "warn_throttle": 0.0}
    return NodeProcess(MODULE, f"/{ns}", params, logs, name=f"{ns}_{time.monotonic_ns()}")


def test_restarted_agent_gets_its_evidence_back_without_spoof_drops(bundle_dir, probe, tmp_path):
    bundle = Bundle.load(bundle_dir)
    logs = str(tmp_path)
    procs = {"ra": _start("ra", bundle_dir, logs, ["lidar"]), "rb": _start("rb", bundle_dir, logs, ["camera"])}
    try:
        for ns, proc in procs.items():
            assert probe.diagnostics(f"/{ns}/fusion_node", timeout=30) is not None, proc.log()
            assert probe.wait_subscribers(f"/{ns}/target_of_interest", TargetOfInterest, RELIABLE_QOS)
        t0 = probe.now_ns()
        for ns in ("ra", "rb"):
            probe.publish(f"/{ns}/target_of_interest", conv.target_msg("obj", t0 - 10**9, "map"))
        time.sleep(0.3)
        # ra observes the object; rb observes it and merges ra's evidence: rb's belief holds both slots
        stamp_ra = probe.now_ns()
        got = probe.wait_for("/rb/latent", lambda m: list(m.modalities) == ["camera", "lidar"], timeout=15,
                             poke=lambda: (probe.publish("/ra/scan", _scan(probe, bundle, stamp_ra), SENSOR_QOS),
                                           probe.publish("/rb/camera/image_raw", _image(probe.now_ns()),
                                                         SENSOR_QOS)),
                             poke_period=0.5)
        assert got is not None, procs["ra"].log()[-3000:] + procs["rb"].log()[-3000:]
        # ra's first latent about the target may hold only rb's camera slot (merged before its own scan was
        # processed); the one that carries its own LiDAR evidence is the one to check
        ra_first = probe.wait_for("/ra/latent", lambda m: m.target_id == "obj" and "lidar" in m.modalities,
                                  timeout=5)
        assert ra_first is not None, procs["ra"].log()[-3000:]
        inc1 = ra_first.incarnation
        assert inc1 > 0
        assert ra_first.modality_source_incarnations[list(ra_first.modalities).index("lidar")] == inc1
        lidar_slot = list(got.modalities).index("lidar")
        assert got.modality_sources[lidar_slot] == "ra" and got.modality_source_incarnations[lidar_slot] == inc1

        resync0 = probe.diagnostics("/rb/fusion_node", after=time.monotonic(), timeout=5).get("shared.resync", 0)
        # crash: SIGKILL, then the same agent id again (nothing observed by the new process)
        procs["ra"].proc.kill()
        procs["ra"].proc.wait(5)
        procs["ra"].stop()
        probe.clear("/ra/latent")
        t_restart = time.monotonic()
        procs["ra"] = _start("ra", bundle_dir, logs, ["lidar"])
        assert probe.diagnostics("/ra/fusion_node", after=t_restart, timeout=30) is not None, procs["ra"].log()
        t_up = time.monotonic()
        back = probe.wait_for("/ra/latent", lambda m: m.target_id == "obj" and "camera" in m.modalities,
                              timeout=10)
        assert back is not None, procs["ra"].log()[-3000:] + procs["rb"].log()[-3000:]
        rejoin_s = time.monotonic() - t_up
        inc2 = back.incarnation
        assert inc2 > inc1
        slots = dict(zip(back.modalities, zip(back.modality_sources, back.modality_source_incarnations)))
        assert slots["lidar"] == ("ra", inc1)  # its own pre-crash evidence, still marked as the earlier process's
        assert slots["camera"][0] == "rb"
        vals = probe.diagnostics("/ra/fusion_node", after=time.monotonic(), timeout=5)
        assert vals.get("provenance.earlier_incarnation", 0) >= 1
        assert vals.get(f"dropped.peer.{DropReason.SPOOFED}", 0) == 0, procs["ra"].log()[-3000:]
        assert vals.get("incarnation") == inc2 and vals.get("peers", 0) >= 1
        # the peer-evidence age is about the current target: none is announced to the new process yet; once it is,
        # the age of rb's evidence about it (held since the re-share) is reported
        assert "peer_evidence.age_s" not in vals
        probe.publish("/ra/target_of_interest", conv.target_msg("obj", t0 - 10**9, "map"))
        vals = probe.diagnostics("/ra/fusion_node", after=time.monotonic(), timeout=10,
                                 predicate=lambda v: "peer_evidence.age_s" in v)
        assert vals is not None and 0 <= vals["peer_evidence.age_s"] < 60
        # rb re-shared its belief for the new reader, and twice more (its peers' subscriptions are best effort)
        rb_vals = probe.diagnostics("/rb/fusion_node", after=time.monotonic(), timeout=10,
                                    predicate=lambda v: v.get("shared.resync", 0) >= resync0 + 3)
        assert rb_vals is not None, "rb did not repeat its re-share for the new reader"
        print(f"restarted agent had its peer's belief {rejoin_s:.2f} s after it was up")

        # a forged relay claiming LiDAR evidence of the new process, newer than anything it observed: refused
        now = probe.now_ns()
        z = np.zeros(bundle.latent_dim, np.float32)
        forged = conv.latent_to_msg(conv.LatentData("rb", "obj", bundle.model_id, now, ("lidar",), (now,), ("ra",),
                                                    ("ra", "rb"), z, z, "map", 1, (inc2,)))
        key = f"dropped.peer.{DropReason.SPOOFED}"
        vals = None
        deadline = time.monotonic() + 10
        while vals is None and time.monotonic() < deadline:
            probe.publish(SHARED, forged)
            vals = probe.diagnostics("/ra/fusion_node", after=time.monotonic(), timeout=1,
                                     predicate=lambda v: v.get(key, 0) >= 1)
        assert vals is not None and vals[key] >= 1
    finally:
        codes = {ns: p.stop() for ns, p in procs.items()}
        for ns, p in procs.items():
            if codes[ns] != 0 or "Traceback" in p.log():
                print(f"--- /{ns} exit {codes[ns]}:\n{p.log()[-4000:]}")
    assert codes == {"ra": 0, "rb": 0}
