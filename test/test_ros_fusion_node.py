"""The fusion node as real processes, driven over DDS from this process (rclpy pub/sub across processes).

Three nodes share the module: ``/a1`` (all sensors, LaserScan, trusts only b, c and tester, at most 4 beliefs,
8 s TTL), ``/b`` (camera only) and ``/c`` (LiDAR as PointCloud2 only). The bundle is exported from untrained
networks (m2vae_fusion.training.export.export_untrained), so class *accuracy* is not checked here, only sizes,
targets, stamps, convergence of two agents and the handling of bad input.
"""
import math
import os
import time

import numpy as np
import pytest

import rclpy  # noqa: E402  (a missing ROS install must fail, not skip)
import m2vae_fusion_msgs.msg  # noqa: E402,F401

from m2vae_fusion_msgs.msg import ClassBelief, LatentEmbedding, TargetOfInterest  # noqa: E402
from sensor_msgs.msg import Image, LaserScan, PointCloud2, PointField  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from m2vae_fusion.core.bundle import Bundle  # noqa: E402
from m2vae_fusion.core import messages as conv  # noqa: E402
from m2vae_fusion.ros.harness import RELIABLE_QOS, SENSOR_QOS, NodeProcess, Probe  # noqa: E402

pytestmark = pytest.mark.ros
MODULE = "m2vae_fusion.ros.fusion_node"
SHARED = "/m2vae/latents"


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bundle"))
    try:
        from m2vae_fusion.training.export import export_untrained
    except ImportError:  # training not available: the runtime's own linear test bundle
        from linear_bundle import make_linear_bundle

        return make_linear_bundle(out, 4, 4, seed=3)
    return export_untrained(out, seed=0)


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return Bundle.load(bundle_dir)


@pytest.fixture(scope="module")
def probe():
    rclpy.init()
    p = Probe("tester")
    for ns in ("a1", "b", "c"):
        p.subscribe(f"/{ns}/latent", LatentEmbedding)
        p.subscribe(f"/{ns}/belief", ClassBelief)
    p.subscribe(SHARED, LatentEmbedding)
    try:
        yield p
    finally:
        p.close()
        rclpy.try_shutdown()


@pytest.fixture(scope="module")
def nodes(bundle_dir, probe, tmp_path_factory):
    logs = str(tmp_path_factory.mktemp("logs"))
    common = {"model_dir": bundle_dir, "diagnostics_period": 0.2, "warn_throttle": 0.0}
    specs = {
        "a1": {**common, "agent_id": "a1", "trusted_agents": ["b", "c", "tester"], "max_targets": 4,
               "belief_ttl": 8.0},
        "b": {**common, "agent_id": "b", "modalities": ["camera"], "trusted_agents": []},
        "c": {**common, "agent_id": "c", "modalities": ["lidar"], "lidar_type": "PointCloud2"},
    }
    procs = {}
    try:
        for ns, params in specs.items():
            procs[ns] = NodeProcess(MODULE, f"/{ns}", params, logs)
        for ns, proc in procs.items():
            vals = probe.diagnostics(f"/{ns}/fusion_node", timeout=30)
            assert vals is not None, f"node /{ns} did not come up:\n{proc.dump_stack()}"
        yield procs
    finally:
        codes = {ns: p.stop() for ns, p in procs.items()}
        for ns, p in procs.items():
            if codes[ns] != 0 or "Traceback" in p.log():
                print(f"--- /{ns} exit {codes[ns]}:\n{p.log()[-4000:]}")


# -- helpers --------------------------------------------------------------------------------------------------------
def q(ns):
    """Stamp as the node stores it (seconds quantised to microseconds)."""
    return ns - ns % 1000


def image(probe, enc="rgb8", h=64, w=64, pad=0, seed=0, stamp=None):
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return conv.rgb_to_image(rgb, enc, stamp_ns=stamp or probe.now_ns(), frame_id="camera", row_padding=pad)


def scan(probe, bundle, seed=0, stamp=None, cfg=None):
    cfg = cfg or bundle.input_config("lidar")
    r = np.random.default_rng(seed).uniform(0.2, 3.0, int(cfg["beams"])).astype(np.float32)
    r[:20] = np.inf
    return conv.ranges_to_scan(r, cfg, stamp_ns=stamp or probe.now_ns())


def cloud(probe, bundle, seed=0, stamp=None):
    cfg = bundle.input_config("lidar")
    r = np.random.default_rng(seed).uniform(0.2, 3.0, int(cfg["beams"]))
    pts = conv.scan_to_points(r, cfg["angle_min"], cfg["angle_increment"])
    return conv.xyz_to_pointcloud2(pts, stamp_ns=stamp or probe.now_ns())


def reflectance(probe, bundle, seed=0, stamp=None):
    k = int(bundle.input_config("reflectance")["beams"])
    rng = np.random.default_rng(seed)
    return conv.ranges_to_scan(rng.uniform(0.05, 0.5, k), {"range_max": 0.6}, stamp_ns=stamp or probe.now_ns(),
                               intensities=rng.uniform(0, 1, k))


TOPIC = {"camera": ("camera/image_raw", Image), "lidar": ("scan", LaserScan), "cloud": ("scan", PointCloud2),
         "reflectance": ("reflectance", LaserScan)}


def set_target(probe, ns, target, stamp=None):
    msg = conv.target_msg(target, stamp if stamp is not None else probe.now_ns() - 1_000_000, "map", (1, 2, 0))
    topic = f"/{ns}/target_of_interest"
    assert probe.wait_subscribers(topic, TargetOfInterest, RELIABLE_QOS)
    probe.publish(topic, msg)
    return msg


def observe(probe, ns, target, kind, make, modality=None, timeout=10.0):
    """Announce ``target`` on /ns, send ``make()`` (fresh stamp each time) until /ns/latent reports it."""
    modality = modality or ("lidar" if kind == "cloud" else kind)
    toi = set_target(probe, ns, target)
    topic, mtype = TOPIC[kind]
    assert probe.wait_subscribers(f"/{ns}/{topic}", mtype, SENSOR_QOS)
    sent = []

    def poke():
        probe.publish(f"/{ns}/target_of_interest", toi)
        msg = make()
        sent.append(conv.stamp_to_ns(msg.header.stamp))
        probe.publish(f"/{ns}/{topic}", msg, SENSOR_QOS)

    t0 = time.monotonic()
    lat = probe.wait_for(f"/{ns}/latent", lambda m: m.target_id == target and modality in m.modalities,
                         timeout=timeout, since=t0, poke=poke, poke_period=0.3)
    assert lat is not None, f"no latent from /{ns} for {target} ({kind})"
    stamp = conv.stamp_to_ns(lat.header.stamp)
    assert stamp in {q(s) for s in sent}
    bel = probe.wait_for(f"/{ns}/belief", lambda m: m.target_id == target and conv.stamp_to_ns(m.header.stamp) == stamp,
                         timeout=5, since=t0)
    assert bel is not None, f"no class belief from /{ns} for {target}"
    return lat, bel


def check_sizes(bundle, lat, bel, ns, target):
    assert lat.agent_id == ns and lat.target_id == target and lat.model_id == bundle.model_id
    assert len(lat.mean) == bundle.latent_dim and len(lat.log_variance) == bundle.latent_dim
    assert np.all(np.isfinite(lat.mean)) and np.all(np.isfinite(lat.log_variance))
    assert len(lat.modality_stamps) == len(lat.modalities) == len(lat.modality_sources)
    assert bel.agent_id == ns and bel.target_id == target and bel.model_id == bundle.model_id
    assert list(bel.class_names) == list(bundle.class_names)
    assert len(bel.probabilities) == len(bundle.class_names)
    assert sum(bel.probabilities) == pytest.approx(1.0, abs=1e-4)
    assert list(bel.modalities) == list(lat.modalities)


def counter(probe, ns, key, after=None):
    vals = probe.diagnostics(f"/{ns}/fusion_node", after=after if after is not None else time.monotonic(), timeout=5)
    assert vals is not None, f"no diagnostics from /{ns}"
    return vals.get(key, 0)


def wait_counter(probe, ns, key, above, poke=None, timeout=8.0):
    """Wait until diagnostic ``key`` of /ns exceeds ``above`` (re-sending with ``poke``); returns the value."""
    deadline = time.monotonic() + timeout
    value = above
    while time.monotonic() < deadline:
        if poke:
            poke()
        vals = probe.diagnostics(f"/{ns}/fusion_node", after=time.monotonic(), timeout=2)
        value = vals.get(key, 0) if vals else value
        if value > above:
            return value
    pytest.fail(f"/{ns} diagnostics {key} stayed at {value}")


# -- sensors ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("enc,h,w,pad", [("rgb8", 64, 64, 0), ("bgr8", 240, 320, 0), ("rgba8", 48, 64, 8),
                                         ("bgra8", 64, 64, 0), ("rgb8", 480, 640, 4)])
def test_every_image_encoding_gives_a_latent_and_belief(probe, nodes, bundle, enc, h, w, pad):
    target = f"img_{enc}_{h}x{w}"
    lat, bel = observe(probe, "a1", target, "camera", lambda: image(probe, enc, h, w, pad))
    check_sizes(bundle, lat, bel, "a1", target)
    assert list(lat.modalities) == ["camera"] and list(lat.contributors) == ["a1"]
    assert list(lat.modality_sources) == ["a1"]
    assert conv.stamp_to_ns(lat.modality_stamps[0]) == conv.stamp_to_ns(lat.header.stamp)


def test_laserscan_on_the_model_grid_and_resampled(probe, nodes, bundle):
    lat, bel = observe(probe, "a1", "scan_grid", "lidar", lambda: scan(probe, bundle))
    check_sizes(bundle, lat, bel, "a1", "scan_grid")
    assert list(lat.modalities) == ["lidar"]
    full = {"angle_min": -math.pi, "angle_increment": 2 * math.pi / 360, "range_max": 8.0, "beams": 360}
    lat, bel = observe(probe, "a1", "scan_360", "lidar", lambda: scan(probe, bundle, cfg=full))
    check_sizes(bundle, lat, bel, "a1", "scan_360")


def test_pointcloud2_lidar(probe, nodes, bundle):
    lat, bel = observe(probe, "c", "cloud_t", "cloud", lambda: cloud(probe, bundle))
    check_sizes(bundle, lat, bel, "c", "cloud_t")
    assert list(lat.modalities) == ["lidar"]


def test_reflectance(probe, nodes, bundle):
    lat, bel = observe(probe, "a1", "refl_t", "reflectance", lambda: reflectance(probe, bundle))
    check_sizes(bundle, lat, bel, "a1", "refl_t")
    assert list(lat.modalities) == ["reflectance"]


def test_three_sensors_fuse_into_one_belief_stamped_with_the_newest_evidence(probe, nodes, bundle):
    observe(probe, "a1", "multi", "camera", lambda: image(probe))
    observe(probe, "a1", "multi", "reflectance", lambda: reflectance(probe, bundle))
    lat, bel = observe(probe, "a1", "multi", "lidar", lambda: scan(probe, bundle))
    check_sizes(bundle, lat, bel, "a1", "multi")
    assert list(lat.modalities) == ["camera", "lidar", "reflectance"]
    stamps = [conv.stamp_to_ns(s) for s in lat.modality_stamps]
    assert conv.stamp_to_ns(lat.header.stamp) == max(stamps) == stamps[1]  # the LiDAR scan came last
    assert stamps[0] < stamps[2] < stamps[1]


def test_observation_goes_to_the_target_active_at_its_stamp(probe, nodes, bundle):
    time.sleep(1.1)  # every earlier announcement is older than t0
    t0 = probe.now_ns() - 1_000_000_000
    set_target(probe, "a1", "hist_old", stamp=t0)
    set_target(probe, "a1", "hist_new", stamp=t0 + 500_000_000)
    time.sleep(0.3)
    since = time.monotonic()
    stamp = t0 + 250_000_000  # between the two announcements

    def poke():
        probe.publish("/a1/camera/image_raw", image(probe, stamp=stamp), SENSOR_QOS)

    lat = probe.wait_for("/a1/latent", lambda m: m.target_id.startswith("hist_"), timeout=10, since=since, poke=poke)
    assert lat is not None and lat.target_id == "hist_old"
    assert conv.stamp_to_ns(lat.header.stamp) == q(stamp)


def test_latest_only_processing_builds_no_backlog(probe, nodes, bundle):
    """A camera sending 320x240 frames at up to 1 kHz, much faster than the node fuses them: the node skips to the
    newest frame (best-effort depth-1 subscription: DDS keeps only the newest frame while one is processed), so the last
    frame is answered promptly.
    (Frames stay under Fast DDS's default 512 KiB shared-memory segment, so the transport itself keeps up.)"""
    set_target(probe, "b", "flood")
    assert probe.wait_subscribers("/b/camera/image_raw", Image, SENSOR_QOS)
    time.sleep(0.2)
    before = counter(probe, "b", "processed.camera")
    msg = image(probe, "rgb8", 240, 320)
    sent, t_end = [], time.monotonic() + 1.5
    while time.monotonic() < t_end:
        stamp = probe.now_ns()
        msg.header.stamp = conv.ns_to_stamp(stamp)
        probe.publish("/b/camera/image_raw", msg, SENSOR_QOS)
        sent.append(stamp)
        time.sleep(0.001)
    last = time.monotonic()
    final = probe.now_ns()  # one more frame, re-sent until answered (best effort may lose a sample)
    msg.header.stamp = conv.ns_to_stamp(final)
    lat = probe.wait_for("/b/latent", lambda m: m.target_id == "flood" and conv.stamp_to_ns(m.header.stamp) == q(final),
                         timeout=5, poke=lambda: probe.publish("/b/camera/image_raw", msg, SENSOR_QOS))
    assert lat is not None, "the newest frame was never fused"
    delay = time.monotonic() - last
    after = counter(probe, "b", "processed.camera")
    print(f"\nflood: {len(sent)} frames in 1.5 s, {after - before} fused, newest "
          f"answered {delay * 1e3:.0f} ms after the last publish")
    assert after - before < len(sent)
    assert delay < 1.0


# -- two agents --------------------------------------------------------------------------------------------------------
def test_two_single_sensor_agents_converge_after_exchanging_latents(probe, nodes, bundle):
    target = "conv"
    since = time.monotonic()
    observe(probe, "b", target, "camera", lambda: image(probe, seed=5))
    observe(probe, "c", target, "cloud", lambda: cloud(probe, bundle, seed=5))

    def both(m):
        return m.target_id == target and list(m.modalities) == ["camera", "lidar"]

    assert probe.wait_for("/b/latent", both, timeout=10, since=since) is not None, "b did not merge c's latent"
    assert probe.wait_for("/c/latent", both, timeout=10, since=since) is not None, "c did not merge b's latent"
    time.sleep(1.0)  # let any further exchange happen, then compare the newest beliefs
    lb = probe.messages("/b/latent", lambda m: m.target_id == target)[-1]
    lc = probe.messages("/c/latent", lambda m: m.target_id == target)[-1]
    for lat in (lb, lc):
        assert list(lat.modalities) == ["camera", "lidar"]
        assert list(lat.contributors) == ["b", "c"] and list(lat.modality_sources) == ["b", "c"]
    assert [conv.stamp_to_ns(s) for s in lb.modality_stamps] == [conv.stamp_to_ns(s) for s in lc.modality_stamps]
    bb = probe.messages("/b/belief", lambda m: m.target_id == target)[-1]
    bc = probe.messages("/c/belief", lambda m: m.target_id == target)[-1]
    assert list(bb.modalities) == list(bc.modalities) == ["camera", "lidar"]
    assert int(np.argmax(bb.probabilities)) == int(np.argmax(bc.probabilities))
    # the exchange has stopped: once both hold the same slots, nothing new about the target is shared. A node
    # still re-shares what it holds for late joiners (new readers of the shared topic: 0.5, 2 and 5 s after they
    # appear; README "Reliability and threat model") and sends a throttled share when due, so whatever comes now
    # must be the converged belief itself
    held = {"b": lb, "c": lc}  # the converged beliefs each node published on its own latent topic
    n = len(probe.messages(SHARED, lambda m: m.target_id == target))
    time.sleep(1.0)
    for m in probe.messages(SHARED, lambda m: m.target_id == target)[n:]:
        assert [conv.stamp_to_ns(s) for s in m.modality_stamps] == \
            [conv.stamp_to_ns(s) for s in lb.modality_stamps], f"new evidence shared by {m.agent_id} after convergence"
        if m.agent_id in held:  # b and c: exactly their converged belief (other nodes of the module may relay it)
            before = held[m.agent_id]
            assert list(m.mean) == list(before.mean) and list(m.contributors) == list(before.contributors)


def _peer_latent(bundle, probe, agent="tester", target="peer_t", modalities=("lidar",), model_id=None, dim=None,
                 mean=None, stamp=None):
    dim = dim or bundle.latent_dim
    stamp = stamp or probe.now_ns()
    data = conv.LatentData(agent_id=agent, target_id=target, model_id=model_id or bundle.model_id, stamp_ns=stamp,
                           modalities=tuple(modalities), modality_stamps_ns=tuple(stamp for _ in modalities),
                           modality_sources=tuple(agent for _ in modalities), contributors=(agent,),
                           mean=np.zeros(dim, np.float32) if mean is None else mean,
                           log_variance=-np.ones(dim, np.float32), frame_id="map")
    return conv.latent_to_msg(data)


def test_peer_latent_is_merged_once(probe, nodes, bundle):
    observe(probe, "a1", "peer_t", "camera", lambda: image(probe, seed=9))
    peer = _peer_latent(bundle, probe, mean=np.linspace(-1, 1, bundle.latent_dim).astype(np.float32))
    since = time.monotonic()
    probe.publish(SHARED, peer)
    lat = probe.wait_for("/a1/latent", lambda m: m.target_id == "peer_t" and len(m.modalities) == 2, since=since)
    assert lat is not None
    assert list(lat.modalities) == ["camera", "lidar"] and list(lat.contributors) == ["a1", "tester"]
    assert list(lat.modality_sources) == ["a1", "tester"]
    # the same latent again adds nothing: counted as redundant, not re-published
    before = counter(probe, "a1", "redundant.peer")
    since = time.monotonic()
    probe.publish(SHARED, peer)
    wait_counter(probe, "a1", "redundant.peer", before)
    assert not probe.messages("/a1/latent", lambda m: m.target_id == "peer_t" and len(m.modalities) == 2)[1:]
    assert probe.wait_for("/a1/latent", lambda m: m.target_id == "peer_t", timeout=0.5, since=since) is None


def test_a_late_reader_gets_the_held_beliefs(probe, nodes, bundle):
    """Outputs are not built while nobody reads them: a reader that matches later (a restarted consumer) gets every
    held belief without waiting for the next observation."""
    observe(probe, "b", "late_t", "camera", lambda: image(probe, seed=4))
    got = []
    # a second reader of the same topic (left in place: destroying it while the probe spins races the executor)
    probe.node.create_subscription(LatentEmbedding, "/b/latent", got.append, 10)
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and not any(m.target_id == "late_t" for m in got):
        time.sleep(0.1)
    assert any(m.target_id == "late_t" and list(m.modalities) == ["camera"] for m in got), got
    assert counter(probe, "b", "republished") >= 1


# -- bad input ----------------------------------------------------------------------------------------------------------
def _img(**kw):
    def make(probe, bundle):
        msg = Image(encoding="rgb8", height=8, width=8, step=24)
        msg.header.stamp = conv.ns_to_stamp(probe.now_ns())
        msg.data = bytes(8 * 24)
        for k, v in kw.items():
            setattr(msg, k, v)
        return msg
    return make


def _scan(ranges=None, **kw):
    def make(probe, bundle):
        msg = scan(probe, bundle)
        if ranges is not None:
            msg.ranges = np.asarray(ranges(len(msg.ranges)), np.float32)
        for k, v in kw.items():
            setattr(msg, k, v)
        return msg
    return make


def _refl(fn):
    def make(probe, bundle):
        msg = reflectance(probe, bundle)
        fn(msg)
        return msg
    return make


def _cloud_no_z(probe, bundle):
    msg = cloud(probe, bundle)
    msg.fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate("xyw")]
    return msg


def _stale(make):
    def wrapped(probe, bundle):
        msg = make(probe, bundle)
        msg.header.stamp = conv.ns_to_stamp(probe.now_ns() - 60_000_000_000)
        return msg
    return wrapped


BAD_SENSOR = [
    ("a1", "camera", _img(encoding="16UC1", step=16), "dropped.camera.colourless"),
    ("a1", "camera", _img(encoding="mono8", step=8), "dropped.camera.colourless"),
    ("a1", "camera", _img(encoding="jpeg"), "dropped.camera.bad_encoding"),
    ("a1", "camera", _img(height=0, data=b""), "dropped.camera.empty"),
    ("a1", "camera", _img(data=bytes(100)), "dropped.camera.truncated"),
    ("a1", "camera", _img(step=20), "dropped.camera.truncated"),
    ("a1", "camera", _stale(lambda p, b: image(p)), "dropped.camera.stale"),
    ("a1", "lidar", _scan(lambda n: np.full(n, np.nan)), "dropped.lidar.non_finite"),
    ("a1", "lidar", _scan(lambda n: np.full(n, np.inf)), "dropped.lidar.no_return"),
    ("a1", "lidar", _scan(lambda n: np.zeros(0)), "dropped.lidar.empty"),
    ("a1", "lidar", _scan(angle_increment=math.inf), "dropped.lidar.non_finite"),
    ("a1", "lidar", _scan(angle_increment=0.0), "dropped.lidar.mismatch"),
    ("a1", "lidar", _scan(lambda n: np.where(np.arange(n) % 3, np.nan, 1.0)), "dropped.lidar.preprocess"),
    ("a1", "reflectance", _refl(lambda m: setattr(m, "ranges", m.ranges[:5])), "dropped.reflectance.mismatch"),
    ("a1", "reflectance", _refl(lambda m: setattr(m, "intensities", [])), "dropped.reflectance.mismatch"),
    ("a1", "reflectance", _refl(lambda m: setattr(m, "intensities", [math.inf] * len(m.ranges))),
     "dropped.reflectance.non_finite"),
    ("a1", "reflectance", _refl(lambda m: (setattr(m, "ranges", []), setattr(m, "intensities", []))),
     "dropped.reflectance.empty"),
    ("c", "cloud", _cloud_no_z, "dropped.lidar.no_xyz"),
]


@pytest.mark.parametrize("ns,kind,make,key", BAD_SENSOR,
                         ids=[f"{i}-{kind}-{key.split('.')[-1]}" for i, (_, kind, _, key) in enumerate(BAD_SENSOR)])
def test_bad_sensor_input_is_dropped_and_counted(probe, nodes, bundle, ns, kind, make, key):
    target = f"bad_{ns}"
    set_target(probe, ns, target)
    time.sleep(0.05)
    topic, mtype = TOPIC[kind]
    before = counter(probe, ns, key)
    since = time.monotonic()
    wait_counter(probe, ns, key, before,
                 poke=lambda: probe.publish(f"/{ns}/{topic}", make(probe, bundle), SENSOR_QOS))
    assert probe.wait_for(f"/{ns}/latent", lambda m: m.target_id == target, timeout=0.2, since=since) is None
    assert nodes[ns].alive()


BAD_LATENT = [
    (dict(model_id="0123456789abcdef"), "dropped.peer.model_id"),
    (dict(dim=3), "dropped.peer.mismatch"),
    (dict(modalities=("sonar",)), "dropped.peer.mismatch"),
    (dict(mean="nan"), "dropped.peer.non_finite"),
    (dict(stamp="stale"), "dropped.peer.stale"),
    (dict(stamp="future"), "dropped.peer.future"),
    (dict(agent="mallory"), "dropped.peer.untrusted"),
]


@pytest.mark.parametrize("kw,key", BAD_LATENT, ids=[k.split(".")[-1] for _, k in BAD_LATENT])
def test_bad_peer_latents_are_dropped_and_beliefs_unchanged(probe, nodes, bundle, kw, key):
    if not probe.messages("/a1/latent", lambda m: m.target_id == "victim"):
        observe(probe, "a1", "victim", "camera", lambda: image(probe, seed=11))
    kw = dict(kw)
    if kw.get("mean") == "nan":
        kw["mean"] = np.full(bundle.latent_dim, np.nan, np.float32)
    if kw.get("stamp") == "stale":
        kw["stamp"] = probe.now_ns() - 3600 * 10**9
    if kw.get("stamp") == "future":
        kw["stamp"] = probe.now_ns() + 3600 * 10**9
    msg = _peer_latent(bundle, probe, target="victim", **kw)
    before = counter(probe, "a1", key)
    since = time.monotonic()
    wait_counter(probe, "a1", key, before, poke=lambda: probe.publish(SHARED, msg))
    got = probe.wait_for("/a1/latent", lambda m: m.target_id == "victim", timeout=0.3, since=since)
    assert got is None, (got.modalities, got.contributors, got.modality_sources, got.modality_stamps)
    assert nodes["a1"].alive()


def test_own_latents_are_not_taken_back(probe, nodes, bundle):
    """A latent carrying a1's own agent_id never reaches a1's fusion: kept out by the DDS content filter (or, on a
    middleware without one, ignored first thing in the callback)."""
    before = probe.diagnostics("/a1/fusion_node", after=time.monotonic())
    assert before["own_filter"] in ("content_filter", "callback")
    since = time.monotonic()
    for _ in range(5):
        probe.publish(SHARED, _peer_latent(bundle, probe, agent="a1", target="own_t"))
        time.sleep(0.1)
    time.sleep(0.5)
    after = probe.diagnostics("/a1/fusion_node", after=time.monotonic())
    assert probe.wait_for("/a1/latent", lambda m: m.target_id == "own_t", timeout=0.3, since=since) is None
    assert after["dropped.total"] == before["dropped.total"]
    if before["own_filter"] == "callback":
        assert after["ignored.own"] >= before.get("ignored.own", 0) + 5
    else:
        assert after.get("ignored.own", 0) == before.get("ignored.own", 0)
    # the node's own latents on the shared topic (a1 shares what it fuses) did not come back either
    observe(probe, "a1", "own_t2", "camera", lambda: image(probe, seed=12))
    vals = probe.diagnostics("/a1/fusion_node", after=time.monotonic())
    assert vals.get("processed.peer", 0) == after.get("processed.peer", 0) or before["own_filter"] == "callback"


def test_node_keeps_answering_after_bad_input(probe, nodes, bundle):
    lat, bel = observe(probe, "a1", "after_bad", "camera", lambda: image(probe, seed=4))
    check_sizes(bundle, lat, bel, "a1", "after_bad")
    lat, bel = observe(probe, "c", "after_bad", "cloud", lambda: cloud(probe, bundle, seed=4))
    check_sizes(bundle, lat, bel, "c", "after_bad")
    vals = probe.diagnostics("/a1/fusion_node", after=time.monotonic())
    assert vals["dropped.total"] >= len([b for b in BAD_SENSOR if b[0] == "a1"]) + len(BAD_LATENT)
    assert vals.get("dropped.camera.internal_error", 0) == 0 and vals.get("dropped.peer.internal_error", 0) == 0
    assert all(p.alive() for p in nodes.values())


# -- store, service, diagnostics ------------------------------------------------------------------------------------------
def test_store_is_bounded_and_beliefs_expire(probe, nodes):
    vals = probe.diagnostics("/a1/fusion_node", after=time.monotonic())
    assert vals["beliefs"] <= 4 and vals["beliefs.evicted"] >= 1
    observe(probe, "a1", "ttl_t", "camera", lambda: image(probe))
    vals = probe.diagnostics("/a1/fusion_node", timeout=15,
                             predicate=lambda v: v.get("beliefs", 99) == 0 and v["beliefs.expired"] >= 1)
    assert vals is not None, "beliefs did not expire after belief_ttl (8 s)"


def test_reset_service_clears_beliefs(probe, nodes):
    observe(probe, "b", "reset_t", "camera", lambda: image(probe))
    assert probe.diagnostics("/b/fusion_node", predicate=lambda v: v["beliefs"] >= 1, after=time.monotonic())
    client = probe.node.create_client(Trigger, "/b/fusion_node/reset")
    assert client.wait_for_service(timeout_sec=10)
    fut = client.call_async(Trigger.Request())
    deadline = time.monotonic() + 10
    while not fut.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fut.done() and fut.result().success, "reset failed"
    vals = probe.diagnostics("/b/fusion_node", after=time.monotonic(), predicate=lambda v: v["beliefs"] == 0)
    assert vals is not None and vals["resets"] == 1
    probe.node.destroy_client(client)


def test_diagnostics_report_latency_rates_and_identity(probe, nodes, bundle):
    vals = probe.diagnostics("/a1/fusion_node", after=time.monotonic())
    assert vals["agent_id"] == "a1" and vals["model_id"] == bundle.model_id
    assert vals["model_dir"] == os.path.abspath(bundle.path) and "CPUExecutionProvider" in vals["providers"]
    for src in ("camera", "lidar", "reflectance", "peer"):
        assert vals[f"latency_ms.{src}.p50"] > 0 and vals[f"latency_ms.{src}.p99"] >= vals[f"latency_ms.{src}.p50"]
    assert vals["processed.camera"] >= 6 and "rate_hz.processed.camera" in vals


def test_node_processes_do_not_load_torch(nodes):
    for ns, proc in nodes.items():
        with open(f"/proc/{proc.pid}/maps") as f:
            maps = f.read()
        assert "libtorch" not in maps and "/torch/" not in maps, f"/{ns} loaded torch"
        assert "onnxruntime" in maps


def test_shared_topic_is_rate_limited_and_ends_with_the_newest_belief(probe, nodes, bundle):
    """/b shares at most shared_latent_rate (default 10 Hz) latents per target; the newest one always goes out."""
    target = "rate_t"
    toi = set_target(probe, "b", target)
    assert probe.wait_subscribers("/b/camera/image_raw", Image, SENSOR_QOS)
    mine = lambda m: m.agent_id == "b" and m.target_id == target  # noqa: E731
    t0 = time.monotonic()
    for i in range(40):  # ~80 Hz for 0.5 s
        probe.publish("/b/target_of_interest", toi)
        probe.publish("/b/camera/image_raw", image(probe, seed=100 + i), SENSOR_QOS)
        time.sleep(0.0125)
    sent_s = time.monotonic() - t0
    time.sleep(0.6)  # the waiting shared latent is flushed within one period
    own = probe.messages("/b/latent", mine)
    shared = probe.messages(SHARED, mine)
    assert len(own) >= 8, f"only {len(own)} observations fused"
    assert 1 <= len(shared) <= int(sent_s * 10) + 3 and len(shared) < len(own)
    assert list(shared[-1].mean) == list(own[-1].mean)  # the newest belief is the last one shared
