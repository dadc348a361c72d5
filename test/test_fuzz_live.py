"""Fuzz of two live fusion nodes (issue 13, item 7): hostile images, LaserScans, reflectance scans, PointCloud2s and
peer latents (finite extremes such as ``mean = [3e38] * Dz`` and 1e-38 included, bad stamps and ids; the catalogue
is m2vae_fusion.benchmarks.hostile) mixed with honest traffic, against a shipped bundle (models/amiro_easy, whose
latent bounds the node enforces).

The same honest sequence (announce a target, one camera image, one LaserScan, one reflectance scan, one peer latent
per target; one PointCloud2 per target on the cloud node) runs twice, first alone, then with the hostile messages
interleaved. The honest sensor data are synthetic (random images and scans), which the shipped hard-world bundle's
novelty calibration rightly flags as out of distribution, so the nodes run the easy-world bundle
(models/amiro_easy: latent bounds, no novelty block) and every honest message must be fused. The sensor subscriptions are reliable and deep here (node parameters), so every message reaches the
callback and the counters can be checked exactly. Asserted: both nodes live and log no traceback; every hostile
sensor message and every must-refuse latent is counted as ``dropped.<source>.<reason>`` (none as internal_error),
every honest one is processed; no published latent or belief is non-finite or non-normalised; the honest targets'
final beliefs and latents equal those of the run without the fuzz.
"""
import os
import time

import numpy as np
import pytest

import rclpy  # noqa: E402
import m2vae_fusion_msgs.msg  # noqa: E402,F401

from m2vae_fusion_msgs.msg import ClassBelief, LatentEmbedding, TargetOfInterest  # noqa: E402
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image, LaserScan, PointCloud2  # noqa: E402

from m2vae_fusion.benchmarks import hostile  # noqa: E402
from m2vae_fusion.core import messages as conv  # noqa: E402
from m2vae_fusion.core.bundle import read_manifest  # noqa: E402
from m2vae_fusion.paths import default_bundle_path  # noqa: E402
from m2vae_fusion.ros.harness import NodeProcess, Probe  # noqa: E402

pytestmark = pytest.mark.ros
MODULE = "m2vae_fusion.ros.fusion_node"
DEEP = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5000, reliability=ReliabilityPolicy.RELIABLE)
SHARED = {"fa": "/fuzz_a/latents", "fc": "/fuzz_c/latents"}
TRUSTED = ["honest_peer", "fuzz_peer", "fuzzer"]
TOPIC = {"camera": ("camera/image_raw", Image), "lidar": ("scan", LaserScan), "reflectance": ("reflectance", LaserScan),
         "cloud": ("scan", PointCloud2)}
N_TARGETS = 3
REPEAT = 2  # each hostile case this many times per honest target
# synthetic honest data: a bundle without novelty calibration (see the module docstring)
FUZZ_BUNDLE = os.path.join(os.path.dirname(default_bundle_path()), "amiro_easy")


@pytest.fixture(scope="module")
def manifest():
    return read_manifest(FUZZ_BUNDLE)


@pytest.fixture(scope="module")
def probe():
    rclpy.init()
    p = Probe("fuzzer")
    for ns in SHARED:
        p.subscribe(f"/{ns}/latent", LatentEmbedding, DEEP)
        p.subscribe(f"/{ns}/belief", ClassBelief, DEEP)
        p.subscribe(SHARED[ns], LatentEmbedding, DEEP)
    try:
        yield p
    finally:
        p.close()
        rclpy.try_shutdown()


@pytest.fixture(scope="module")
def nodes(probe, tmp_path_factory):
    logs = str(tmp_path_factory.mktemp("fuzz_logs"))
    common = {"model_dir": FUZZ_BUNDLE, "diagnostics_period": 0.2, "warn_throttle": 2.0,
              "sensor_qos_reliability": "reliable", "sensor_qos_depth": 5000, "peer_queue": 5000,
              "max_targets": 64, "belief_ttl": 600.0, "trusted_agents": TRUSTED, "shared_latent_rate": 0.0}
    specs = {"fa": {**common, "agent_id": "fa", "shared_latent_topic": SHARED["fa"]},
             "fc": {**common, "agent_id": "fc", "modalities": ["lidar"], "lidar_type": "PointCloud2",
                    "shared_latent_topic": SHARED["fc"]}}
    procs = {ns: NodeProcess(MODULE, f"/{ns}", params, logs) for ns, params in specs.items()}
    try:
        for ns, proc in procs.items():
            assert probe.diagnostics(f"/{ns}/fusion_node", timeout=60) is not None, \
                f"/{ns} did not come up:\n{proc.dump_stack()}"
        yield procs
    finally:
        for ns, p in procs.items():
            code = p.stop()
            if code != 0 or "Traceback" in p.log():
                print(f"--- /{ns} exit {code}:\n{p.log()[-4000:]}")


def _q(ns):
    return ns - ns % 1000


def _pub(probe, topic, msg):
    probe.publisher(topic, type(msg), DEEP).publish(msg)


def _counters(probe, ns):
    vals = probe.diagnostics(f"/{ns}/fusion_node", after=time.monotonic(), timeout=5)
    assert vals is not None, f"no diagnostics from /{ns}"
    return vals


def _delta(after, before, prefix):
    keys = {k for k in (*after, *before) if k.startswith(prefix) and isinstance(after.get(k, 0), int)}
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys if after.get(k, 0) != before.get(k, 0)}


def _wait_out(probe, ns, pred, since, what):
    got = probe.wait_for(f"/{ns}/latent", pred, timeout=20, since=since)
    assert got is not None, f"/{ns}: no latent for {what}"
    return got


def _honest_sequence(probe, manifest, phase, fuzz):
    """Run the honest sequence of ``phase`` (target ids h<phase>_<j>), with hostile messages before every honest
    one when ``fuzz``. Returns (honest counts per node and source, hostile counts per node and source,
    number of must-refuse peer latents per node)."""
    lidar_cfg = dict(manifest["inputs"]["lidar"]["preprocessing"])
    k = int(manifest["inputs"]["reflectance"]["preprocessing"]["beams"])
    dim = int(manifest["latent_dim"])
    mid = manifest["model_id"]
    sensors = {c.source: [] for c in hostile.sensor_cases(lidar_cfg, k)}
    for c in hostile.sensor_cases(lidar_cfg, k):
        sensors[c.source].append(c)
    honest = {"fa": {"camera": 0, "lidar": 0, "reflectance": 0, "peer": 0}, "fc": {"lidar": 0, "peer": 0}}
    sent = {"fa": {}, "fc": {}}
    may = {"fa": {}, "fc": {}}  # hostile messages a node may accept (finite extremes it saturates)
    must_refuse = {"fa": 0, "fc": 0}
    rng = np.random.default_rng(100)  # same honest data in every phase

    def attack(ns, source, target, fz_target):
        if not fuzz:
            return
        topic = TOPIC[source][0]
        for _ in range(REPEAT):
            for c in sensors[source]:
                if not c.must_refuse:  # would go into the honest target's belief: sent apart, below
                    continue
                _pub(probe, f"/{ns}/{topic}", c.make(probe.now_ns()))
                key = c.counter_source
                sent[ns][key] = sent[ns].get(key, 0) + 1
            for c in hostile.latent_cases(mid, dim, victim=ns):
                _pub(probe, SHARED[ns], c.make(probe.now_ns(), target if c.must_refuse else fz_target))
                sent[ns]["peer"] = sent[ns].get("peer", 0) + 1
                must_refuse[ns] += int(c.must_refuse)
                if not c.must_refuse:
                    may[ns]["peer"] = may[ns].get("peer", 0) + 1

    for j in range(N_TARGETS):
        target, fz = f"h{phase}_{j}", f"fz{phase}_{j}"
        rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        ranges = rng.uniform(0.3, 3.0, int(lidar_cfg["beams"])).astype(np.float32)
        refl_r, refl_i = rng.uniform(0.05, 0.5, k), rng.uniform(0, 1, k)
        cloud_r = rng.uniform(0.3, 3.0, int(lidar_cfg["beams"]))
        peer_mean = rng.uniform(-0.3, 0.3, dim).astype(np.float32)
        for ns in SHARED:
            _pub(probe, f"/{ns}/target_of_interest", conv.target_msg(target, probe.now_ns() - 1_000_000, "map"))
        time.sleep(0.05)
        steps = [("fa", "camera", lambda s: conv.rgb_to_image(rgb, "rgb8", stamp_ns=s, frame_id="camera")),
                 ("fa", "lidar", lambda s: conv.ranges_to_scan(ranges, lidar_cfg, stamp_ns=s)),
                 ("fa", "reflectance", lambda s: conv.ranges_to_scan(refl_r, {"range_max": 0.8}, stamp_ns=s,
                                                                     intensities=refl_i)),
                 ("fc", "cloud", lambda s: conv.xyz_to_pointcloud2(
                     conv.scan_to_points(cloud_r, lidar_cfg["angle_min"], lidar_cfg["angle_increment"]),
                     stamp_ns=s))]
        for ns, source, make in steps:
            attack(ns, source, target, fz)
            since, stamp = time.monotonic(), probe.now_ns()
            _pub(probe, f"/{ns}/{TOPIC[source][0]}", make(stamp))
            mod = "lidar" if source == "cloud" else source
            honest[ns][mod] += 1
            _wait_out(probe, ns, lambda m: m.target_id == target and mod in m.modalities and _q(stamp) in
                      [conv.stamp_to_ns(s) for s in m.modality_stamps], since, f"{target} {source}")
        for ns in SHARED:  # an honest peer's latent about the target, newer than what the node holds
            attack(ns, "lidar" if ns == "fa" else "cloud", target, fz)
            stamp = probe.now_ns()
            data = conv.LatentData(agent_id="honest_peer", target_id=target, model_id=mid, stamp_ns=stamp,
                                   modalities=("camera",), modality_stamps_ns=(stamp,),
                                   modality_sources=("honest_peer",), contributors=("honest_peer",),
                                   mean=peer_mean, log_variance=np.full(dim, -1.0, np.float32), frame_id="map")
            since = time.monotonic()
            _pub(probe, SHARED[ns], conv.latent_to_msg(data))
            honest[ns]["peer"] += 1
            _wait_out(probe, ns, lambda m: m.target_id == target and "honest_peer" in m.modality_sources, since,
                      f"{target} peer")
    if fuzz:  # the sensor cases a node may accept, about a target of their own
        for ns in SHARED:
            _pub(probe, f"/{ns}/target_of_interest", conv.target_msg(f"fz{phase}_sensors", probe.now_ns() - 1_000_000,
                                                                      "map"))
        time.sleep(0.05)
        for c in hostile.sensor_cases(lidar_cfg, k):
            ns = "fc" if c.source == "cloud" else "fa"
            if c.must_refuse:
                continue
            _pub(probe, f"/{ns}/{TOPIC[c.source][0]}", c.make(probe.now_ns()))
            sent[ns][c.counter_source] = sent[ns].get(c.counter_source, 0) + 1
            may[ns][c.counter_source] = may[ns].get(c.counter_source, 0) + 1
    return honest, sent, must_refuse, may


def _final(probe, ns, phase):
    """Per honest target: the last latent's mean, log-variance, modalities and the probabilities of the belief
    published with it (same header), or None when that belief did not reach the probe (the node's reliable
    KEEP_LAST 10 writers may drop a sample under the fuzz burst before the probe acknowledged it)."""
    out = {}
    for j in range(N_TARGETS):
        lat = probe.messages(f"/{ns}/latent", lambda m: m.target_id == f"h{phase}_{j}")[-1]
        bel = probe.messages(f"/{ns}/belief", lambda m: m.target_id == f"h{phase}_{j}"
                             and (m.header.stamp.sec, m.header.stamp.nanosec) == (lat.header.stamp.sec,
                                                                                  lat.header.stamp.nanosec)
                             and tuple(m.modalities) == tuple(lat.modalities))
        out[j] = (np.asarray(lat.mean), np.asarray(lat.log_variance),
                  np.asarray(bel[-1].probabilities) if bel else None, tuple(lat.modalities))
    return out


def _settle(probe, ns, before, sent_total, timeout=30.0):
    """Diagnostics once every sent message has been received by /ns (received.* counters)."""
    deadline = time.monotonic() + timeout
    while True:
        vals = _counters(probe, ns)
        got = sum(_delta(vals, before, "received.").get(k, 0) for k in _delta(vals, before, "received."))
        if got >= sent_total or time.monotonic() > deadline:
            return vals
        time.sleep(0.2)


def test_fuzz_mixed_with_honest_traffic(probe, nodes, manifest):
    for ns in SHARED:
        for topic, mtype in [(f"/{ns}/target_of_interest", TargetOfInterest), (SHARED[ns], LatentEmbedding)] + \
                [(f"/{ns}/{TOPIC[s][0]}", TOPIC[s][1]) for s in (["camera", "lidar", "reflectance"] if ns == "fa"
                                                                 else ["cloud"])]:
            assert probe.wait_subscribers(topic, mtype, DEEP, timeout=20), topic

    # phase 0: honest traffic alone
    honest0, _, _, _ = _honest_sequence(probe, manifest, 0, fuzz=False)
    clean = {ns: _final(probe, ns, 0) for ns in SHARED}

    # phase 1: the same honest traffic with hostile messages before every honest one
    before = {ns: _counters(probe, ns) for ns in SHARED}
    honest, sent, must_refuse, may = _honest_sequence(probe, manifest, 1, fuzz=True)
    assert honest == honest0
    total = {ns: sum(sent[ns].values()) + sum(honest[ns].values()) + N_TARGETS + 1 for ns in SHARED}
    assert sum(sum(s.values()) for s in sent.values()) > 500
    after = {ns: _settle(probe, ns, before[ns], total[ns]) for ns in SHARED}

    for ns, proc in nodes.items():
        assert proc.alive(), proc.log()[-3000:]
        assert "Traceback" not in proc.log(), proc.log()[-3000:]
        received = _delta(after[ns], before[ns], "received.")
        dropped = _delta(after[ns], before[ns], "dropped.")
        processed = _delta(after[ns], before[ns], "processed.")
        redundant = _delta(after[ns], before[ns], "redundant.")
        superseded = _delta(after[ns], before[ns], "superseded.")
        detail = f"/{ns}: sent {sent[ns]} honest {honest[ns]} received {received} dropped {dropped} " \
                 f"processed {processed} redundant {redundant} superseded {superseded}"
        assert not [k for k in dropped if k.endswith(".internal_error")], detail
        for source, n_hostile in sent[ns].items():
            n_honest = honest[ns].get(source, 0)
            assert received.get(f"received.{source}", 0) == n_hostile + n_honest, detail
            n_dropped = sum(v for k, v in dropped.items() if k.startswith(f"dropped.{source}."))
            n_processed = processed.get(f"processed.{source}", 0)
            n_may = may[ns].get(source, 0)
            if source == "peer":  # every latent dropped (reason counted), redundant (counted), superseded by a newer
                # one of its (peer, target) that was merged (counted), or merged
                n_redundant = redundant.get("redundant.peer", 0) + superseded.get("superseded.peer", 0)
                assert n_dropped + n_processed + n_redundant == n_hostile + n_honest, detail
                # no must-refuse latent merged: only honest ones and those that may be accepted
                assert n_honest <= n_processed <= n_honest + n_may, detail
                assert n_dropped + n_redundant >= must_refuse[ns], detail
            else:  # every must-refuse sensor message dropped with its reason, every honest one fused
                assert n_dropped + n_processed == n_hostile + n_honest, detail
                assert n_honest <= n_processed <= n_honest + n_may, detail
                assert n_dropped >= n_hostile - n_may, detail

    # nothing corrupt was published, on any output topic, in either phase
    for topic, msgs in [(t, probe.messages(t, lambda m: m.agent_id in SHARED)) for ns in SHARED
                        for t in (f"/{ns}/latent", SHARED[ns])]:  # (the shared topics also carry the fuzz)
        assert msgs, topic
        bad = [r for r in map(hostile.bad_latent_output, msgs) if r]
        assert not bad, (topic, bad[:5])
    for ns in SHARED:
        msgs = probe.messages(f"/{ns}/belief")
        bad = [r for r in map(hostile.bad_belief_output, msgs) if r]
        assert msgs and not bad, (ns, bad[:5])
        # the finite extremes that may be accepted were sent about fz targets: whatever came of them is finite
        assert probe.messages(f"/{ns}/belief", lambda m: m.target_id.startswith("fz1_")), ns

    # the honest targets end exactly where they ended without the fuzz
    for ns in SHARED:
        fuzzed = _final(probe, ns, 1)
        for j in range(N_TARGETS):
            m0, v0, p0, mods0 = clean[ns][j]
            m1, v1, p1, mods1 = fuzzed[j]
            assert mods0 == mods1, (ns, j)
            np.testing.assert_allclose(m1, m0, rtol=0, atol=1e-5, err_msg=f"/{ns} target {j} mean")
            np.testing.assert_allclose(v1, v0, rtol=0, atol=1e-5, err_msg=f"/{ns} target {j} log-variance")
            if p0 is not None and p1 is not None:
                np.testing.assert_allclose(p1, p0, rtol=0, atol=1e-5, err_msg=f"/{ns} target {j} belief")
        # the class beliefs of the final latents were compared for most targets (a belief is the head of its mean)
        assert sum(clean[ns][j][2] is not None and fuzzed[j][2] is not None for j in range(N_TARGETS)) \
            >= N_TARGETS - 1, ns
